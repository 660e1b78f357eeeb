"""Agents under faults: a paused server (SIGSTOP beyond every client timeout) and restarts.

A real ``hive agent run`` child process works against a real ``nats-server``; the test pauses
the server with SIGSTOP for longer than every NATS timeout of the agent, resumes it, and checks
from the stream itself (the Jepsen checker's independent reader) that the agent lived through
it and publishes again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

import streams

from ..conftest import Proc, wait_for
from .checker import read_stream


async def _agent_events(url: str, agent_id: str, kind: str) -> list[tuple[int, str]]:
    """``(seq, event_id)`` of the agent's events of ``kind`` in the stream, in log order."""
    log = await read_stream(url)
    return [
        (seq, eid or "")
        for seq, (subject, k, eid) in sorted(log.by_seq.items())
        if k == kind and subject.endswith(f".{agent_id}")
    ]


async def _stopped_reasons(url: str, agent_id: str) -> list[str]:
    """The ``reason`` of every ``AgentStopped`` the agent published."""
    nc = await streams.connect(url)
    try:
        reader = await streams.LogReader(nc, filter_subject=f"hive.agents.{agent_id}.>").start()
        out: list[str] = []
        while batch := await reader.fetch(500, timeout=1.0):
            for entry in batch:
                ev = streams.decode(entry.data, entry.subject)
                if isinstance(ev, streams.AgentStopped):
                    out.append(ev.reason)
        await reader.close()
        return out
    finally:
        await nc.close()


async def _ride_out_pause(
    server: streams.EmbeddedServer, spawn: Callable[..., Proc], agent_type: str, pause_s: float
) -> dict[str, Any]:
    """Run one agent, pause the server for ``pause_s``, resume it; return what the stream shows."""
    agent_id = f"pause-{os.getpid()}"
    proc = spawn(
        "agent",
        "run",
        agent_type,
        "--nats",
        server.url,
        "--task",
        "hartmann6/0",
        "--id",
        agent_id,
        "--no-model",
    )
    await wait_for(
        lambda: _agent_events(server.url, agent_id, "ExperimentFinished"), 60, 0.5, "first experiments"
    )
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        time.sleep(pause_s)  # the whole test process waits: nothing may talk to the server
    finally:
        os.kill(server.pid, signal.SIGCONT)
    resumed_at = (await read_stream(server.url)).last_seq
    assert proc.p.poll() is None, f"the agent died during the pause:\n{proc.output()[-3000:]}"

    async def published_after() -> list[tuple[int, str]]:
        got = await _agent_events(server.url, agent_id, "ExperimentFinished")
        after = [e for e in got if e[0] > resumed_at]
        return after if len(after) >= 3 else []

    after = await wait_for(published_after, 60, 0.5, "experiments after the pause")
    alive_after = proc.p.poll() is None
    code = proc.stop(30)
    return {
        "agent_id": agent_id,
        "after": after,
        "alive_after": alive_after,
        "code": code,
        "stopped": await _stopped_reasons(server.url, agent_id),
        "output": proc.output(),
    }


def _assert_rode_out(res: dict[str, Any]) -> None:
    assert res["alive_after"], res["output"][-3000:]
    assert res["code"] == 0, res["output"][-3000:]
    # one graceful stop at the end, never an error stop (no supervisor restarted anything)
    assert res["stopped"] == ["signal"], (res["stopped"], res["output"][-3000:])
    assert "nats_retry" in res["output"]  # it did hit timeouts and retried them


def test_agent_rides_out_a_server_pause(
    nats_server: streams.EmbeddedServer, spawn: Callable[..., Proc]
) -> None:
    """An agent whose server is SIGSTOPped for 12 s (12x its 1 s NATS timeouts, and longer than
    the library's default 5-10 s ones) keeps running: the process stays alive, publishes again
    after SIGCONT (its new experiments are stored) and stops gracefully, never with an error."""
    res = asyncio.run(_ride_out_pause(nats_server, spawn, "tests.custom_agents:PatientResearcher", 12.0))
    _assert_rode_out(res)


@pytest.mark.faults_full
def test_default_researcher_rides_out_a_long_pause(
    nats_server: streams.EmbeddedServer, spawn: Callable[..., Proc]
) -> None:
    """The built-in researcher, with its default timeouts (10 s per publish), lives through a
    25 s server pause (more than twice every client timeout) and publishes again."""
    res = asyncio.run(_ride_out_pause(nats_server, spawn, "researcher", 25.0))
    _assert_rode_out(res)
