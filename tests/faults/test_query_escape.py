"""The query service reads the hive's tables and nothing else.

Escape statements (file and network readers, ``EXPLAIN ANALYZE`` of a write, settings,
checkpoints, extensions, attachments, SQL hidden in strings) are sent through the real entry
point (``python -m hive query``) both to a live ``hive materialize`` subprocess (``--nats``) and
to a snapshot file (``--db``): each is refused with a clear message and a non-zero exit and has
no effect; afterwards the materializer is still locked down, ingests, snapshots and answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

import streams

from ..conftest import CHILD_ENV, Proc, db_rows
from ..spine_helpers import finished

SECRET = "s3cret-password-do-not-leak"
"""What the fake credentials file holds: it must never appear in any answer."""
SETTINGS_SQL = (
    "SELECT current_setting('threads')::VARCHAR, current_setting('enable_external_access')::VARCHAR, "
    "current_setting('lock_configuration')::VARCHAR"
)


@dataclass
class Hive:
    """A live materializer on a real nats-server, its data, and a copied snapshot to query offline."""

    url: str
    db: Path
    snap: Path
    tmp: Path
    secret: Path
    proc: Proc


async def _publish(url: str, start: int, n: int) -> None:
    """Publish ``n`` finished experiments numbered from ``start`` and wait for their acks."""
    nc = await streams.connect(url, name="escape-test")
    try:
        await streams.ensure_stream(nc.jetstream())
        await streams.Publisher(nc.jetstream()).publish_many([finished(i) for i in range(start, start + n)])
    finally:
        await nc.close()


async def _remote(url: str, sql: str) -> list[list[Any]]:
    """Rows of ``sql`` from the live query service (in-process client; for checks, not attacks)."""
    nc = await streams.connect(url, name="escape-check")
    try:
        return (await streams.remote_query(nc, sql, timeout_s=20)).rows
    finally:
        await nc.close()


async def _request(url: str, payload: bytes) -> dict[str, Any]:
    """Send a raw request body to the query service and return the decoded reply."""
    nc = await streams.connect(url, name="escape-raw")
    try:
        reply = await nc.request(streams.QUERY_SUBJECT, payload, timeout=30)
        out: dict[str, Any] = orjson.loads(reply.data)
        return out
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def hive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hive]:
    """One nats-server and one ``hive materialize`` child shared by the module (stopped by PID)."""
    tmp = tmp_path_factory.mktemp("escape")
    creds = tmp / "credentials"
    creds.mkdir(mode=0o700)
    secret = creds / "materializer.json"
    secret.write_text(json.dumps({"role": "materializer", "user": "materializer", "password": SECRET}) + "\n")
    srv = streams.EmbeddedServer(store_dir=tmp / "nats", http_port=0)
    srv.start()
    try:
        asyncio.run(_publish(srv.url, 0, 50))
        db = tmp / "hive.duckdb"
        proc = Proc(["materialize", "--nats", srv.url, "--db", str(db), "--snapshot-every", "0.5"],
                    log=tmp / "materialize.log")  # fmt: skip
        try:
            live_snap = db.with_name("hive.snapshot.duckdb")
            deadline = time.monotonic() + 90
            while True:
                assert proc.p.poll() is None, f"materializer exited: {proc.output()[-3000:]}"
                with contextlib.suppress(Exception):
                    live = asyncio.run(_remote(srv.url, "SELECT count(*) FROM experiments"))[0][0]
                    if live == 50 and db_rows(live_snap, "SELECT count(*) FROM experiments")[0][0] == 50:
                        break
                assert time.monotonic() < deadline, f"materializer never caught up: {proc.output()[-3000:]}"
                time.sleep(0.3)
            snap = tmp / "copy.duckdb"
            shutil.copyfile(live_snap, snap)
            yield Hive(srv.url, db, snap, tmp, secret, proc)
        finally:
            proc.stop(20)
    finally:
        srv.stop()


async def _hive_query(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run ``python -m hive query ARGS`` to completion: (exit code, stdout, stderr); killed by PID
    if it outlives ``timeout`` (then the exit code is -9)."""
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hive", "query", *args,
        env={**CHILD_ENV, **(env or {})},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(p.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
        out, err = await p.communicate()
    assert p.returncode is not None
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


# Each case: statements sent in both modes. Every case holds at least one statement the old
# SELECT/EXPLAIN check let through; the plain forms sit beside their EXPLAIN ANALYZE wrappers.
# {secret} is the fake credentials file, {out} a directory where nothing may appear.
CASES: dict[str, tuple[str, ...]] = {
    "read_text-credentials": ("SELECT content FROM read_text('{secret}')",),
    "read_csv-passwd": ("SELECT * FROM read_csv('/etc/passwd', header = false)",),
    "read_blob-environ": ("SELECT content FROM read_blob('/proc/self/environ')",),
    "glob-root": ("SELECT * FROM glob('/*')",),
    "read_parquet-credentials": ("SELECT * FROM read_parquet('{secret}')", "SELECT * FROM '{secret}'"),
    "sql-in-a-string": ("SELECT * FROM query('SELECT content FROM read_text(''{secret}'')')",),
    "copy": ("EXPLAIN ANALYZE COPY (SELECT 1) TO '{out}/x.csv'", "COPY experiments TO '{out}/y.csv'"),
    "checkpoint": ("EXPLAIN ANALYZE CHECKPOINT", "CHECKPOINT", "SELECT * FROM checkpoint()"),
    "settings": (
        "EXPLAIN ANALYZE SET GLOBAL threads = 1",
        "SET GLOBAL threads = 1",
        "SET enable_external_access = true",
    ),
    "extensions": ("EXPLAIN ANALYZE LOAD json", "LOAD json", "INSTALL httpfs"),
    "attach": ("ATTACH '{out}/other.duckdb' AS o", "SELECT * FROM read_duckdb('{secret}')"),
    "pragma-call": ("EXPLAIN ANALYZE CALL checkpoint()", "CALL checkpoint()", "PRAGMA version"),
    "explain": ("EXPLAIN ANALYZE SELECT count(*) FROM experiments",),
    "secrets-and-env": ("SELECT * FROM duckdb_secrets()", "SELECT getenv('HOME')"),
    "several-statements": ("SELECT 1; DELETE FROM agents", "EXPLAIN ANALYZE DELETE FROM agents"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
async def test_escape_statement_is_refused_and_has_no_effect(hive: Hive, case: str) -> None:
    """Every statement of the case, via `hive query --nats` (the live materializer) and `hive query
    --db` (a snapshot file), exits non-zero with a "refused" message, leaks no file content,
    writes no file, leaves the materializer's settings as they were and the materializer alive."""
    out = hive.tmp / f"out-{case}"
    out.mkdir()
    before = await _remote(hive.url, SETTINGS_SQL)
    statements = [s.format(secret=hive.secret, out=out) for s in CASES[case]]
    runs = [(m, s) for s in statements for m in (("--nats", hive.url), ("--db", str(hive.snap)))]
    gate = asyncio.Semaphore(4)

    async def one(mode: tuple[str, str], sql: str) -> tuple[int, str, str]:
        async with gate:
            return await _hive_query(*mode, "--timeout", "20", sql)

    results = await asyncio.gather(*(one(m, s) for m, s in runs))
    for (mode, sql), (rc, stdout, stderr) in zip(runs, results, strict=True):
        where = f"{mode[0]} {sql!r}: rc={rc} stdout={stdout[-500:]!r} stderr={stderr[-1500:]!r}"
        assert rc != 0, where
        assert "refused" in stderr.lower(), where
        assert "Traceback" not in stderr, where
        for leak in (SECRET, "root:", "PATH="):
            assert leak not in stdout + stderr, where
    assert sorted(out.iterdir()) == [], "an escape statement wrote a file"
    assert await _remote(hive.url, SETTINGS_SQL) == before
    assert hive.proc.p.poll() is None, hive.proc.output()[-3000:]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b'{"sql": "SELECT 1", "timeout_s": "ten"}', "timeout_s"),
        (b'{"sql": "SELECT 1", "timeout_s": -1}', "timeout_s"),
        (b'{"sql": "SELECT 1", "timeout_s": 1e300}', "timeout_s"),
        (b'{"sql": "SELECT 1", "timeout_s": true}', "timeout_s"),
        (b'{"sql": "SELECT 1", "max_rows": -5}', "max_rows"),
        (b'{"sql": "SELECT 1", "max_rows": 2.5}', "max_rows"),
        (b'{"sql": "SELECT 1", "max_rows": [1]}', "max_rows"),
        (b'{"sql": "SELECT ?", "params": [{"a": 1}]}', "params"),
        (orjson.dumps({"sql": "SELECT ?", "params": list(range(100_000))}), "params"),
        (orjson.dumps({"sql": "SELECT 1 " + " " * 300_000}), "sql"),
    ],
    ids=["timeout-text", "timeout-negative", "timeout-huge", "timeout-bool", "max_rows-negative",
         "max_rows-float", "max_rows-list", "params-nested", "params-huge", "sql-huge"],
)  # fmt: skip
async def test_untrusted_request_bounds_get_a_clear_error(hive: Hive, payload: bytes, field: str) -> None:
    """A request whose timeout_s, max_rows, params or sql has the wrong type or range gets an
    error reply that names the field, and the service keeps answering."""
    reply = await _request(hive.url, payload)
    assert "error" in reply and field in reply["error"], reply
    assert "Error:" not in reply["error"], reply  # a validation message, not a leaked exception
    assert (await _remote(hive.url, "SELECT 41 + 1"))[0][0] == 42


async def test_materializer_stays_locked_down_ingests_and_snapshots(hive: Hive) -> None:
    """After the escape attempts the live materializer runs with external access off and its
    configuration locked, still answers a plain SELECT through the CLI, ingests new events and
    writes its snapshot under the lock-down."""
    threads, external, locked = (await _remote(hive.url, SETTINGS_SQL))[0]
    assert (external, locked) == ("false", "true")
    assert int(threads) >= 1
    await _publish(hive.url, 1000, 10)
    live_snap = hive.db.with_name("hive.snapshot.duckdb")
    deadline = time.monotonic() + 60
    while True:
        rc, stdout, stderr = await _hive_query("--nats", hive.url, "--format", "csv",
                                               "SELECT count(*) AS n FROM experiments")  # fmt: skip
        assert rc == 0, stderr
        snap_n = await asyncio.to_thread(db_rows, live_snap, "SELECT count(*) FROM experiments")
        if stdout.split() == ["n", "60"] and snap_n[0][0] == 60:
            break
        assert time.monotonic() < deadline, (stdout, snap_n, hive.proc.output()[-3000:])
        await asyncio.sleep(0.5)
    assert hive.proc.p.poll() is None


async def test_db_query_is_cut_off_at_its_timeout(hive: Hive) -> None:
    """`hive query --db SNAP --timeout 2` on a huge cross join stops with a "cut off" error
    within seconds instead of running on."""
    t0 = time.monotonic()
    rc, _, stderr = await _hive_query(
        "--db", str(hive.snap), "--timeout", "2",
        "SELECT count(*) FROM range(1000000000) a, range(1000000000) b", timeout=40,
    )  # fmt: skip
    took = time.monotonic() - t0
    assert rc not in (0, -9), (rc, stderr)
    assert "cut off" in stderr, stderr
    assert took < 25, took


@pytest.mark.faults_full
async def test_agent_identity_cannot_read_credentials_under_secure_up(tmp_path: Path) -> None:
    """Under `hive up --secure`, an agent identity (a researcher from the pool) asking the query
    service for `read_text('<credentials>/materializer.json')` or the signing key is refused and
    learns nothing of them, while its plain SELECT is answered."""
    data = tmp_path / "data"
    env = {k: v for k, v in CHILD_ENV.items() if not k.startswith("HIVE_NATS")}
    args = [sys.executable, "-m", "hive", "up", "--secure", "--duration", "60", "--agents", "2",
            "--port", "0", "--http-port", "0", "--no-distill", "--data", str(data)]  # fmt: skip
    up = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url_file = data / "nats.url"
        deadline = time.monotonic() + 90
        while not (url_file.exists() and url_file.read_text().strip()):
            assert up.poll() is None, "hive up exited early"
            assert time.monotonic() < deadline, "hive up never wrote nats.url"
            await asyncio.sleep(0.2)
        url = url_file.read_text().strip()
        creds = data / "credentials"
        from streams import _auth as auth

        ident = auth.load_pool(creds / "agents-researcher.json")[-1]
        ident_file = tmp_path / "researcher.json"
        ident_file.write_text(ident.model_dump_json())
        agent_env = {**env, auth.ENV_CREDENTIALS: str(ident_file)}
        while True:  # the identity may query once the materializer answers
            rc, stdout, stderr = await _hive_query("--nats", url, "SELECT count(*) FROM experiments",
                                                   env=agent_env)  # fmt: skip
            if rc == 0:
                break
            assert time.monotonic() < deadline + 60, stderr
            await asyncio.sleep(0.5)
        materializer_password = auth.load_credentials(creds / "materializer.json").password.get_secret_value()
        for target in ("materializer.json", "distiller.key", "auth.conf"):
            for sql in (f"SELECT content FROM read_text('{creds / target}')",
                        f"SELECT content FROM read_blob('{creds / target}')"):  # fmt: skip
                rc, stdout, stderr = await _hive_query("--nats", url, sql, env=agent_env)
                assert rc != 0 and "refused" in stderr.lower(), (sql, stdout, stderr)
                assert materializer_password not in stdout + stderr
                assert "PRIVATE KEY" not in stdout + stderr
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
