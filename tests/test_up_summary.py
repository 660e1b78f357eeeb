"""What one ``hive up --duration N`` (the real entry point, as a subprocess) leaves behind and says:
a final summary read after its agents stopped, the plots in ``--data``, the monitoring endpoint
``hive status`` finds while it runs, and a private legacy key directory."""

from __future__ import annotations

import os
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

from .conftest import CHILD_ENV, db_rows

AGENTS = 2
DURATION_S = 45
"""Long enough for both agents to start and work on a loaded two-core machine."""


@dataclass
class UpRun:
    """A finished ``hive up`` run: its data directory, exit code, output, and what `hive status
    --data` said while it ran."""

    data: Path
    returncode: int
    stderr: str
    status_json: subprocess.CompletedProcess[str]
    status_text: subprocess.CompletedProcess[str]


def _status(data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in CHILD_ENV.items() if k != "HIVE_NATS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "hive", "status", "--data", str(data), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.fixture(scope="module")
def up_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpRun]:
    """One `hive up --agents 2 --no-distill --sync always --http-port 0 --duration 45`; `hive status
    --data DATA` is asked (JSON until both agents are in the state, then the table) while it runs.
    The child is stopped by PID at teardown."""
    data = tmp_path_factory.mktemp("up") / "data"
    env = {k: v for k, v in CHILD_ENV.items() if k not in ("HIVE_NATS_URL", "HIVE_SIGNING_KEY")}
    args = [sys.executable, "-m", "hive", "up", "--agents", str(AGENTS), "--types", "researcher,deployer",
            "--task", "branin/0", "--no-distill", "--port", "0", "--http-port", "0", "--sync", "always",
            "--duration", str(DURATION_S), "--data", str(data)]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not (data / "up.pids").exists() or len(orjson.loads((data / "up.pids").read_text())) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        status_json = _status(data, "--json")  # until both agents are in the state
        while (
            status_json.returncode == 0
            and orjson.loads(status_json.stdout).get("counts", {}).get("agents") != AGENTS
        ):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(1)
            status_json = _status(data, "--json")
        status_text = _status(data)
        _, err = proc.communicate(timeout=240)
        yield UpRun(data, proc.returncode, err, status_json, status_text)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_final_summary_counts_the_stopped_agents(up_run: UpRun) -> None:
    """The final summary comes from the state after the agents stopped: all of them stopped, none
    alive (it said "2 alive, 0 dead, 0 stopped"), as `agent_liveness` says."""
    assert up_run.returncode == 0, up_run.stderr[-3000:]
    final = [ln for ln in up_run.stderr.splitlines() if ln.startswith("hive up: final:")]
    assert len(final) == 1, up_run.stderr[-3000:]
    assert f"agents: 0 alive, 0 dead, {AGENTS} stopped" in final[0], final[0]
    liveness = dict(
        db_rows(up_run.data / "hive.duckdb", "SELECT liveness, count(*) FROM agent_liveness GROUP BY ALL")
    )
    assert liveness == {"stopped": AGENTS}


def test_plots_are_written_into_the_data_directory(up_run: UpRun) -> None:
    """At the end `hive up` writes the PNG plots into DATA/plots and prints their paths."""
    plots = sorted((up_run.data / "plots").glob("*.png"))
    assert {p.name for p in plots} == {"best_so_far.png", "proposer_share.png", "deployment_success.png"}
    for p in plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
        assert str(p) in up_run.stderr


def test_status_reads_the_monitoring_port_hive_up_uses(up_run: UpRun) -> None:
    """`hive up --http-port X` records its monitoring URL in DATA/nats.monitor, and `hive status
    --data DATA` reads the real durability there (it assumed 8222: "durability unknown")."""
    assert up_run.status_json.returncode == 0, up_run.status_json.stderr
    st = orjson.loads(up_run.status_json.stdout)
    monitor = (up_run.data / "nats.monitor").read_text().strip()
    assert st["durability"] == {
        "setting": "always",
        "detail": "before every ack: survives power loss, slower publishing",
        "monitor": monitor,
    }
    assert st["stream"]["replicas"] == 1 and "cluster" not in st["stream"]
    text = " ".join(up_run.status_text.stdout.split())
    assert "fsync always: before every ack" in text and "1 replica" in text, text


def test_legacy_key_directory_is_private(up_run: UpRun) -> None:
    """Without --secure the signing keys live in DATA/keys: the directory is 0700, the key 0600."""
    keys = up_run.data / "keys"
    assert keys.stat().st_mode & 0o777 == 0o700
    assert (keys / "distiller.key").stat().st_mode & 0o777 == 0o600


def test_children_other_than_the_distiller_do_not_inherit_the_signing_key(tmp_path: Path) -> None:
    """`hive up --secure` started with HIVE_SIGNING_KEY set: the materializer and the agents run
    without it (only the distiller may hold the model-signing key)."""
    data = tmp_path / "data"
    env = {k: v for k, v in CHILD_ENV.items() if not k.startswith("HIVE_NATS")}
    env["HIVE_SIGNING_KEY"] = str(tmp_path / "some.key")
    args = [sys.executable, "-m", "hive", "up", "--secure", "--agents", "1", "--types", "researcher",
            "--task", "branin/0", "--no-distill", "--port", "0", "--http-port", "0", "--duration", "0",
            "--data", str(data)]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        pids: dict[str, Any] = {}
        while len(pids) < 3:  # nats-server, materializer, the agent
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
            if (data / "up.pids").exists():
                pids = orjson.loads((data / "up.pids").read_text())
        children = {n: pid for n, pid in pids.items() if not n.startswith("nats-server")}
        assert set(children) == {"materializer", "researcher-0"}, pids
        for name, pid in children.items():
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert not [e for e in environ if e.startswith(b"HIVE_SIGNING_KEY=")], name
            assert any(e.startswith(b"HIVE_LOG_FORMAT=") for e in environ), name  # the read worked
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
