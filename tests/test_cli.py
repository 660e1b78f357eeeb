"""The ``hive`` command line as users and scripts call it: help, errors, exit codes, outputs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

import streams

from .conftest import run_hive, wait_for
from .spine_helpers import finished

COMMANDS = [
    [],
    ["server"],
    ["materialize"],
    ["publish"],
    ["schema"],
    ["query"],
    ["status"],
    ["rebuild"],
    ["bench"],
    ["bench", "ingest"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "hive")
def test_every_command_has_help(cmd: list[str]) -> None:
    """``--help`` works for every command and exits 0."""
    out = run_hive(*cmd, "--help")
    assert out.returncode == 0 and "Usage:" in out.stdout


def test_schema_and_examples() -> None:
    """``hive schema`` prints JSON Schema; ``--example KIND`` prints a valid event; a bad KIND fails."""
    out = run_hive("schema")
    assert out.returncode == 0 and "ExperimentFinished" in orjson.dumps(orjson.loads(out.stdout)).decode()
    out = run_hive("schema", "--example", "ExperimentFinished")
    assert out.returncode == 0
    assert streams.decode(out.stdout.strip().encode()).kind == "ExperimentFinished"
    out = run_hive("schema", "--example", "Bogus")
    assert out.returncode == 2 and "unknown kind" in out.stderr


def test_unreachable_nats_is_a_clear_error() -> None:
    """Commands that need NATS say where they tried and exit 1 when nothing listens there."""
    out = run_hive("query", "--nats", "nats://127.0.0.1:1", "SELECT 1", timeout=30)
    assert out.returncode == 1 and "cannot connect to NATS at nats://127.0.0.1:1" in out.stderr


async def test_publish_validates_every_line_first(nats_server: Any, nc: Any, tmp_path: Path) -> None:
    """An invalid line is reported with its number and nothing is published, unless --skip-invalid."""
    good = [streams.encode(finished(i)).decode() for i in range(3)]
    f = tmp_path / "events.jsonl"
    f.write_text("\n".join([good[0], '{"kind": "ExperimentFinished"}', good[1], "not json", good[2]]) + "\n")
    out = await asyncio.to_thread(run_hive, "publish", "--nats", nats_server.url, str(f))
    assert out.returncode == 1
    assert "line 2:" in out.stderr and "line 4: bad JSON" in out.stderr and "nothing published" in out.stderr
    js = nc.jetstream()
    assert (await js.stream_info(streams.STREAM)).state.messages == 0
    out = await asyncio.to_thread(run_hive, "publish", "--nats", nats_server.url, "--skip-invalid", str(f))
    assert out.returncode == 0 and "published 3 event(s)" in out.stdout
    out = await asyncio.to_thread(run_hive, "publish", "--nats", nats_server.url, "--skip-invalid", str(f))
    assert "3 duplicate(s)" in out.stdout
    assert (await js.stream_info(streams.STREAM)).state.messages == 3


async def test_query_status_rebuild_against_a_running_materializer(
    nats_server: Any, nc: Any, spawn: Any, tmp_path: Path
) -> None:
    """query (table/csv/json), status with lag and durability, and rebuild refusing a live file."""
    db = tmp_path / "cli.duckdb"
    await streams.Publisher(nc.jetstream()).publish_many([finished(i) for i in range(20)])
    mat = spawn("materialize", "--nats", nats_server.url, "--db", str(db))
    url = nats_server.url

    async def q(*args: str) -> Any:
        return await asyncio.to_thread(run_hive, "query", "--nats", url, *args)

    await wait_for(lambda: _n_rows(url) == 20, timeout=30, what="20 rows")
    out = await q(
        "--format", "csv", "SELECT task, count(*) AS n FROM experiments GROUP BY task ORDER BY task"
    )
    assert (
        out.returncode == 0 and out.stdout.splitlines()[0] == "task,n" and len(out.stdout.splitlines()) == 6
    )
    out = await q("--format", "json", "SELECT count(*) AS n FROM experiments")
    assert orjson.loads(out.stdout) == [{"n": 20}]
    out = await q("SELECT task, best_objective FROM best_per_task ORDER BY task")
    assert out.returncode == 0 and "branin/0" in out.stdout and "best_objective" in out.stdout
    out = await q("SELECT nope")
    assert out.returncode == 1 and "SQL error" in out.stderr
    out = await q("DROP TABLE experiments")
    assert out.returncode == 1 and "read-only" in out.stderr

    out = await asyncio.to_thread(
        run_hive, "status", "--nats", url, "--monitor", nats_server.http_url, "--json"
    )
    st = orjson.loads(out.stdout)
    assert st["stream"]["last_seq"] == 20 and st["materializer"]["applied_seq"] == 20
    assert st["materializer"]["lag"] == 0 and st["counts"]["ExperimentFinished"] == 20
    assert st["durability"]["setting"] == "every 120s"
    out = await asyncio.to_thread(run_hive, "status", "--nats", url, "--monitor", nats_server.http_url)
    assert out.returncode == 0 and "lag 0" in out.stdout
    assert "fsync every 120s: a process crash loses nothing" in out.stdout, out.stdout
    assert "every 120s: fsync every 120s" not in out.stdout

    out = await asyncio.to_thread(run_hive, "rebuild", "--nats", url, "--db", str(db))
    assert out.returncode == 1 and "held by" in out.stderr
    assert mat.stop() == 0
    out = await asyncio.to_thread(run_hive, "rebuild", "--nats", url, "--db", str(db))
    assert out.returncode == 0 and "through seq 20" in out.stdout
    out = await asyncio.to_thread(
        run_hive, "query", "--db", str(db), "--format", "json", "SELECT count(*) AS n FROM experiments"
    )
    assert orjson.loads(out.stdout) == [{"n": 20}]


def _n_rows(url: str) -> int:
    out = run_hive("query", "--nats", url, "--format", "json", "SELECT count(*) AS n FROM experiments")
    return int(orjson.loads(out.stdout)[0]["n"]) if out.returncode == 0 else -1


async def test_server_command_runs_in_foreground_and_stops_on_sigterm(spawn: Any, tmp_path: Path) -> None:
    """``hive server`` starts a JetStream server in the foreground and stops cleanly on SIGTERM."""
    p = spawn("server", "--port", "0", "--http-port", "0", "--store", str(tmp_path / "store"))
    line = await wait_for(
        lambda: "nats-server nats://" in p.output() and p.output(), timeout=20, what="server up"
    )
    url = line.split("nats-server ", 1)[1].split(" ", 1)[0]
    client = await streams.connect(url)
    await streams.ensure_stream(client.jetstream())
    await client.close()
    p.p.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(p.p.wait, 20) == 0
    assert "nats-server stopped" in p.output()


def test_bench_ingest_prints_json_figures() -> None:
    """``hive bench ingest --json`` prints the raw baseline, hive's rates, latency and the ratio."""
    out = run_hive("bench", "ingest", "--events", "2000", "--json", timeout=240)
    assert out.returncode == 0, out.stderr
    r = orjson.loads(out.stdout)
    for key in ("raw_publish_per_s", "hive_publish_per_s", "end_to_end_per_s", "ratio", "rebuild_per_s"):
        assert r[key] > 0
    assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]


# --------------------------------------------------------------------------- stopping while connecting
def _closed_port_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"nats://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize(
    ("command", "sig"),
    [("up", signal.SIGTERM), ("up", signal.SIGINT), ("distill", signal.SIGTERM), ("distill", signal.SIGINT)],
)
async def test_up_and_distill_obey_signals_while_connecting(
    command: str, sig: signal.Signals, spawn: Any, tmp_path: Path
) -> None:
    """`hive up --nats URL` and `hive distill --nats URL` against an unreachable server exit within
    5 s of SIGTERM or SIGINT, without a traceback (they kept retrying the connect)."""
    url = _closed_port_url()
    if command == "up":
        args = ["up", "--nats", url, "--data", str(tmp_path / "data"), "--agents", "1", "--no-distill"]
    else:
        priv, _ = streams.generate_keys(tmp_path / "keys")
        args = ["distill", "--nats", url, "--key", str(priv)]
    p = spawn(*args, env={"HIVE_LOG_LEVEL": "info"})
    await wait_for(
        lambda: "Connect call failed" in p.output(), timeout=90, what=f"a connect attempt: {p.output()}"
    )
    t0 = time.monotonic()
    p.p.send_signal(sig)
    try:
        await asyncio.to_thread(p.p.wait, 5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hive {command} still running 5 s after {sig.name}")
    assert time.monotonic() - t0 <= 5
    assert "Traceback" not in p.output(), p.output()[-3000:]


# --------------------------------------------------------------------------- help texts
def test_help_defaults_come_from_the_code() -> None:
    """The defaults `hive distill --help` and `hive up --help` state are the ones the code uses
    (`--steps` said 120 on CPU while the distiller trained 300)."""
    from distill import _service as svc
    from hive._supervisor import UpConfig

    out = run_hive("distill", "--help")
    text = " ".join(out.stdout.split())
    gate = svc.GateConfig()
    assert f"{gate.instances}x{gate.seeds}x{gate.trials}" in text, text
    steps = f"default {svc.HISTORY_CUDA_STEPS} on CUDA, {svc.HISTORY_CPU_STEPS} on CPU for --backend history"
    assert steps in text, text
    assert f"{svc.CUDA_STEPS} on CUDA, {svc.CPU_STEPS} on CPU for byte and hf" in text, text
    cuda, cpu = svc.HISTORY_CUDA_BATCH_SIZE, svc.HISTORY_CPU_BATCH_SIZE
    history = f"default {cuda} on CUDA, {cpu} on CPU for --backend history"
    assert history in text, text
    assert f"{svc.CUDA_BATCH_SIZE} on CUDA, {svc.CPU_BATCH_SIZE} on CPU for byte and hf" in text, text
    cfg = svc.DistillConfig(nats_url="", key_path="")
    assert f"[default: {cfg.every_traces}; x>=1]" in text and f"[default: {cfg.min_examples}; x>=1]" in text
    assert f"[default: {cfg.elites}; 0<=x<=64]" in text, text
    out = run_hive("up", "--help")
    text = " ".join(out.stdout.split())
    up = UpConfig()
    for option, value in [
        ("--agents", up.agents),
        ("--task", up.task),
        ("--duration", up.duration_s),
        ("--distill-every", up.distill_every_traces),
        ("--http-port", up.http_port),
    ]:
        after = text.split(f" {option} ", 1)[1].split(" --", 1)[0]
        assert f"default: {value}" in after, (option, after)
    assert "new successful traces" in text


# --------------------------------------------------------------------------- status finds its server
async def test_status_reads_the_monitoring_port_a_server_recorded(spawn: Any, tmp_path: Path) -> None:
    """`hive server --http-port 0` records nats.url and nats.monitor beside its store; `hive status
    --data DIR` then finds the server and reads its real durability there (it assumed port 8222 and
    said "durability unknown")."""
    data = tmp_path / "data"
    p = spawn("server", "--port", "0", "--http-port", "0", "--store", str(data / "nats"), "--sync", "always")
    await wait_for(
        lambda: (data / "nats.monitor").exists() and "nats-server nats://" in p.output(), timeout=30
    )
    monitor = (data / "nats.monitor").read_text().strip()
    assert monitor.startswith("http://127.0.0.1:") and not monitor.endswith(":8222")
    env = {k: v for k, v in os.environ.items() if k != "HIVE_NATS_URL"}
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hive", "status", "--data", str(data), "--json"],
        capture_output=True, text=True, timeout=60, env={**env, "HIVE_LOG_FORMAT": "json"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    st = orjson.loads(out.stdout)
    assert st["durability"]["setting"] == "always" and st["durability"]["monitor"] == monitor, st


async def test_status_shows_replicas_and_the_cluster(tmp_path: Path) -> None:
    """On a 3-node cluster `hive status` shows the stream's replicas (3), its leader and its peers."""
    cluster = streams.EmbeddedCluster(3, store_dir=tmp_path / "nats", log_dir=tmp_path)
    await asyncio.to_thread(cluster.start, 90)
    try:
        client = await streams.connect(cluster.url)
        try:
            await streams.ensure_stream(client.jetstream())
        finally:
            await client.close()
        args = ("status", "--nats", cluster.url, "--monitor", ",".join(cluster.http_urls))
        out = await asyncio.to_thread(run_hive, *args, "--json")
        assert out.returncode == 0, out.stderr
        s = orjson.loads(out.stdout)["stream"]
        names = {srv.server_name for srv in cluster.servers}
        assert s["replicas"] == 3 and s["cluster"]["leader"] in names, s
        assert {p["name"] for p in s["cluster"]["peers"]} == names - {s["cluster"]["leader"]}, s
        out = await asyncio.to_thread(run_hive, *args)
        assert f"3 replicas; leader {s['cluster']['leader']}, peers " in out.stdout, out.stdout
    finally:
        await asyncio.to_thread(cluster.stop)
