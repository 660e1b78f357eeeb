"""``hive health``: the compose health check of the agents and the distiller, from the age of the
heartbeat file they touch while they run (``HIVE_HEARTBEAT_FILE``), checked on real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import streams

from .conftest import run_hive, wait_for


def _health(path: Path, max_age: float) -> Any:
    return run_hive("health", "--heartbeat-file", str(path), "--max-age", f"{max_age:g}", timeout=60)


def test_health_without_a_heartbeat_file_is_one_line(tmp_path: Path) -> None:
    """No heartbeat file yet: exit 1 with one line naming the file; a fresh file: exit 0."""
    hb = tmp_path / "heartbeat"
    out = _health(hb, 30)
    assert out.returncode == 1, out
    assert out.stderr.strip().splitlines() == [
        f"unhealthy: no heartbeat file {hb} (the process has not beaten yet)"
    ]
    hb.touch()
    out = _health(hb, 30)
    assert out.returncode == 0 and out.stdout.startswith("healthy:"), out
    old = time.time() - 120
    os.utime(hb, (old, old))
    out = _health(hb, 30)
    assert out.returncode == 1 and "old (max 30s)" in out.stderr and "Traceback" not in out.stderr


async def test_agent_heartbeat_file_tells_a_frozen_agent(
    nats_server: streams.EmbeddedServer, spawn: Any, tmp_path: Path
) -> None:
    """An agent run with HIVE_HEARTBEAT_FILE is healthy while it runs; frozen by SIGSTOP for longer
    than --max-age it is unhealthy; after SIGCONT it is healthy again."""
    hb = tmp_path / "agent.heartbeat"
    agent = spawn(
        "agent", "run", "tests.custom_agents:Echo", "--nats", nats_server.url, "--id", "echo-1", "--no-model",
        env={"HIVE_HEARTBEAT_FILE": str(hb)},
    )  # fmt: skip
    await wait_for(hb.exists, timeout=60, what=f"the heartbeat file\n{agent.output()[-2000:]}")
    out = await asyncio.to_thread(_health, hb, 8)
    assert out.returncode == 0, out.stderr
    agent.p.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(9)
        out = await asyncio.to_thread(_health, hb, 8)
        assert out.returncode == 1 and "unhealthy: heartbeat" in out.stderr, out
    finally:
        agent.p.send_signal(signal.SIGCONT)
    await wait_for(lambda: _health(hb, 8).returncode == 0, timeout=30, every=1, what="healthy after SIGCONT")


async def test_distiller_heartbeat_file(
    nats_server: streams.EmbeddedServer, spawn: Any, tmp_path: Path
) -> None:
    """A distiller run with HIVE_HEARTBEAT_FILE keeps its heartbeat fresh while it waits for traces
    (no query service yet), so its compose health check passes."""
    priv, _ = streams.generate_keys(tmp_path / "keys")
    hb = tmp_path / "distiller.heartbeat"
    d = spawn("distill", "--nats", nats_server.url, "--key", str(priv), env={"HIVE_HEARTBEAT_FILE": str(hb)})
    await wait_for(hb.exists, timeout=90, what=f"the heartbeat file\n{d.output()[-2000:]}")
    first = hb.stat().st_mtime
    await wait_for(lambda: hb.stat().st_mtime > first, timeout=30, what="a second beat")
    out = await asyncio.to_thread(_health, hb, 15)
    assert out.returncode == 0, out.stderr
