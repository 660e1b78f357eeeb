"""``hive up --secure``: the local swarm locked down with the compose configuration — per-role
users and per-agent identities generated in ``<data>/credentials``, an embedded server that
admits nobody else."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import streams
from streams import _auth as auth

from .conftest import CHILD_ENV, db_rows, pid_alive


async def _refused(url: str, **opts: Any) -> str:
    """Try to connect (and use) ``url`` with ``opts``; the error text if refused, else ''."""
    import nats.errors

    try:
        nc = await streams.connect(
            url, allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=3, **opts
        )
    except (nats.errors.Error, OSError, TimeoutError) as e:
        return str(e) or type(e).__name__
    try:
        await streams.remote_query(nc, "SELECT 1", timeout_s=3)
    except Exception as e:
        return str(e) or type(e).__name__
    finally:
        await nc.close()
    return ""


async def _wait_file(path: Path, proc: subprocess.Popen[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        assert proc.poll() is None, f"hive up exited early: {proc.communicate()[1][-3000:]}"
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} not written within {timeout}s")


@pytest.fixture
def up_proc() -> Any:
    """Holder for the ``hive up`` child; stopped by PID (with its swarm) at teardown."""
    holder: list[subprocess.Popen[str]] = []
    try:
        yield holder
    finally:
        for p in holder:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


async def test_hive_up_secure_locks_the_server_and_runs_the_swarm(tmp_path: Path, up_proc: Any) -> None:
    """`hive up --secure`: credentials and signing keys appear in DATA/credentials; while it runs
    an unauthenticated client (or a wrong password) cannot connect, the admin file can; agents
    publish as pool identities and their traces land in DuckDB; a second run reuses the files."""
    data = tmp_path / "data"
    env = {k: v for k, v in CHILD_ENV.items() if not k.startswith("HIVE_NATS")}
    args = [sys.executable, "-m", "hive", "up", "--secure", "--duration", "15", "--port", "0",
            "--http-port", "0", "--no-distill", "--data", str(data)]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    up_proc.append(proc)
    url = await _wait_file(data / "nats.url", proc, timeout=60)
    creds = data / "credentials"

    no_login = await _refused(url)
    assert no_login, "an unauthenticated client connected to the --secure server"
    assert "authorization" in no_login.lower(), no_login
    admin = auth.load_credentials(creds / "admin.json")
    wrong = await _refused(url, user="admin", password="not-the-password", inbox_prefix="_INBOX_admin")
    assert "authorization" in wrong.lower(), wrong
    nc = await streams.connect(url, allow_reconnect=False, **auth.connect_options(admin))
    try:
        deadline = time.monotonic() + 30
        while True:  # the admin may query (once the materializer answers)
            try:
                res = await streams.remote_query(nc, "SELECT count(*) FROM experiments", timeout_s=3)
                break
            except streams.QueryError:
                assert time.monotonic() < deadline, "the query service never answered the admin"
                await asyncio.sleep(0.5)
        assert res.rows[0][0] >= 0
    finally:
        await nc.close()

    _, err = await asyncio.to_thread(proc.communicate, timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "auth on" in err and "stopped; state kept in" in err

    names = {p.name for p in creds.iterdir()}
    assert names >= {"admin.json", "materializer.json", "distiller.json", "auth.conf", "distiller.key",
                     "distiller.pub", "agents-researcher.json", "agents-deployer.json", "agents-analyst.json",
                     ".gitignore"}  # fmt: skip
    assert creds.stat().st_mode & 0o077 == 0
    pools = {t: {c.agent_id for c in auth.load_pool(creds / f"agents-{t}.json")} for t in
             ("researcher", "deployer", "analyst")}  # fmt: skip
    db = data / "hive.duckdb"
    agents = dict(db_rows(db, "SELECT agent_id, agent_type FROM agents"))
    assert len(agents) == 4  # --agents 4 over researcher, deployer, analyst (round-robin)
    assert all(a in pools[t] for a, t in agents.items()), agents
    traced = {r[0] for r in db_rows(db, "SELECT DISTINCT agent_id FROM experiments")}
    assert len(traced) == 2 and traced <= pools["researcher"], traced
    assert db_rows(db, "SELECT count(*) FROM deployments")[0][0] > 0
    assert db_rows(db, "SELECT count(*) FROM dead_letters")[0][0] == 0
    pids = json.loads((data / "up.pids").read_text())
    assert not [n for n, pid in pids.items() if pid_alive(pid)]

    # a second run reuses the credentials and the signing key (no new passwords)
    before = {n: (creds / n).read_bytes() for n in ("admin.json", "auth.conf", "distiller.key")}
    again = await asyncio.to_thread(
        subprocess.run, [*args[:6], "3", *args[7:]], env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert {n: (creds / n).read_bytes() for n in before} == before


def test_hive_up_secure_refuses_an_external_server(tmp_path: Path) -> None:
    """`--secure` configures the server it starts, so it cannot be combined with `--nats`."""
    out = subprocess.run(
        [sys.executable, "-m", "hive", "up", "--secure", "--nats", "nats://127.0.0.1:1", "--data",
         str(tmp_path / "d")],
        env=CHILD_ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0 and "--secure" in out.stderr
