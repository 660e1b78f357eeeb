"""The materializer (``hive materialize``, a real child process) under kills and pauses of itself
and of the server, with acknowledged load flowing; the Jepsen-style checker at quiescence."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

import streams

from ..conftest import Proc, wait_for
from .checker import AckedLoad, applied_state, check, read_stream

# A small consumer inactive threshold, so a paused materializer's consumer expires in a quick test.
INACTIVE_ENV = {"HIVE_CONSUMER_INACTIVE_S": "1"}


async def _stream_last(url: str) -> int:
    nc = await streams.connect(url, name="probe", max_reconnect_attempts=0)
    try:
        return (await nc.jetstream().stream_info(streams.STREAM)).state.last_seq
    finally:
        await nc.close()


async def _applied(url: str) -> int:
    nc = await streams.connect(url, name="probe", max_reconnect_attempts=0)
    try:
        reply = await nc.request(streams.STATUS_SUBJECT, b"{}", timeout=2)
        return int(orjson.loads(reply.data)["applied_seq"])
    finally:
        await nc.close()


async def _quiescent(url: str) -> bool:
    """Whether the materializer answers and has applied the stream's last sequence."""
    try:
        last = await _stream_last(url)
        return last > 0 and await _applied(url) == last
    except Exception:  # not up yet, or the server is restarting
        return False


async def _ingesting(url: str) -> bool:
    return await _applied(url) > 0


async def _verify(url: str, db: Path, acked: set[str], mat: Proc) -> None:
    """Wait until the materializer has applied the whole stream, stop it, run the checker."""
    await wait_for(lambda: _quiescent(url), timeout=120, every=0.5, what="materializer catch-up")
    assert mat.stop() == 0, mat.output()[-3000:]
    stored = await read_stream(url)
    verdict = check(acked, stored, applied_state(db))
    verdict.assert_ok()
    assert verdict.acked == len(acked) > 0


def _materialize(spawn: Callable[..., Proc], url: str, db: Path) -> Proc:
    return spawn("materialize", "--nats", url, "--db", str(db), "--batch", "200", env=INACTIVE_ENV)


async def _restart_server(srv: streams.EmbeddedServer, down_s: float) -> None:
    """kill -9 the server, keep it down ``down_s``, start it again on the same port and store."""
    srv.kill()
    await asyncio.sleep(down_s)
    await asyncio.to_thread(srv.start)


async def test_server_kill9_under_load_loses_nothing(
    nats_server: streams.EmbeddedServer, nc: Any, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """A server kill -9 and restart while events are published and materialized: every acked event
    is applied exactly once and the checkpoint reaches the stream's last sequence."""
    db = tmp_path / "hive.duckdb"
    mat = _materialize(spawn, nats_server.url, db)
    load = AckedLoad(nats_server.url).start()
    await wait_for(lambda: len(load.acked) > 800, timeout=60, what="load before the kill")
    await wait_for(lambda: _ingesting(nats_server.url), timeout=60, what="the materializer ingesting")
    await _restart_server(nats_server, 0.5)
    await wait_for(lambda: len(load.acked) > 1800, timeout=90, what="load after the restart")
    acked = await load.stop()
    await _verify(nats_server.url, db, acked, mat)


async def test_materializer_paused_past_inactive_threshold_loses_nothing(
    nats_server: streams.EmbeddedServer, nc: Any, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """The materializer SIGSTOPped for longer than its consumer's inactive threshold (the server
    deletes the consumer meanwhile) and SIGCONTed under load resumes without a gap."""
    db = tmp_path / "hive.duckdb"
    mat = _materialize(spawn, nats_server.url, db)
    load = AckedLoad(nats_server.url).start()
    await wait_for(lambda: len(load.acked) > 800, timeout=60, what="load before the pause")
    await wait_for(lambda: _ingesting(nats_server.url), timeout=60, what="the materializer ingesting")
    os.kill(mat.p.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(4.0)  # > 0.5 s lingering request + 1 s inactive threshold
    finally:
        os.kill(mat.p.pid, signal.SIGCONT)
    await wait_for(lambda: len(load.acked) > 1800, timeout=90, what="load after the pause")
    acked = await load.stop()
    await _verify(nats_server.url, db, acked, mat)
    assert "consumer_lost" in mat.output(), "the pause did not cost the materializer its consumer"


async def test_consumer_deleted_repeatedly_during_catch_up_loses_nothing(
    nats_server: streams.EmbeddedServer, nc: Any, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """While the materializer catches up on a backlog (large batches in flight), another
    connection deletes its consumer again and again (as a server restart or an expiry would):
    every acked event is applied once, none skipped."""
    load = AckedLoad(nats_server.url, count=5000)
    load.start()
    acked = await load.wait_done(timeout=120)
    db = tmp_path / "hive.duckdb"
    mat = spawn("materialize", "--nats", nats_server.url, "--db", str(db), "--batch", "1000")
    js = nc.jetstream()
    deleted = 0
    deadline = asyncio.get_running_loop().time() + 90
    while not await _quiescent(nats_server.url):
        assert asyncio.get_running_loop().time() < deadline, "the materializer never caught up"
        for info in await js.consumers_info(streams.STREAM):
            with contextlib.suppress(Exception):
                await js.delete_consumer(streams.STREAM, info.name)
                deleted += 1
        await asyncio.sleep(random.uniform(0.01, 0.08))
    assert deleted > 0
    await _verify(nats_server.url, db, acked, mat)


@pytest.mark.faults_full
@pytest.mark.parametrize("trial", range(10))
async def test_repeated_server_kills_lose_nothing(
    trial: int, nats_server: streams.EmbeddedServer, nc: Any, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """3-6 server kill -9s at random moments under load with a live materializer (10 trials):
    nothing acked lost, nothing applied twice, checkpoint at the stream's last sequence."""
    rng = random.Random(trial)
    db = tmp_path / "hive.duckdb"
    mat = _materialize(spawn, nats_server.url, db)
    load = AckedLoad(nats_server.url, agent=f"load-{trial}").start()
    for _ in range(rng.randint(3, 6)):
        await asyncio.sleep(rng.uniform(0.5, 2.5))
        await _restart_server(nats_server, rng.uniform(0.0, 1.0))
    await asyncio.sleep(1.0)
    acked = await load.stop()
    await _verify(nats_server.url, db, acked, mat)


@pytest.mark.faults_full
async def test_server_then_materializer_paused_loses_nothing(
    nats_server: streams.EmbeddedServer, nc: Any, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """The issue's sequence: SIGSTOP the server beyond every client timeout, SIGCONT, then SIGSTOP
    the materializer past its consumer's inactive threshold, SIGCONT; all under load."""
    db = tmp_path / "hive.duckdb"
    mat = _materialize(spawn, nats_server.url, db)
    load = AckedLoad(nats_server.url).start()
    await wait_for(lambda: len(load.acked) > 1000, timeout=60, what="load before the pauses")
    await wait_for(lambda: _ingesting(nats_server.url), timeout=60, what="the materializer ingesting")
    assert nats_server.pid is not None
    os.kill(nats_server.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(12.0)  # publish acks (2 s), requests (2 s), fetch deadlines, reconnects
    finally:
        os.kill(nats_server.pid, signal.SIGCONT)
    await wait_for(lambda: len(load.acked) > 2500, timeout=90, what="load after the server pause")
    os.kill(mat.p.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(5.0)
    finally:
        os.kill(mat.p.pid, signal.SIGCONT)
    await wait_for(lambda: len(load.acked) > 4000, timeout=90, what="load after the materializer pause")
    acked = await load.stop()
    await _verify(nats_server.url, db, acked, mat)


@pytest.mark.faults_full
async def test_materializer_kill9_under_load_loses_nothing(
    nats_server: streams.EmbeddedServer, nc: Any, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """The materializer kill -9ed three times under load and restarted each time: the checker
    finds every acked event applied once."""
    db = tmp_path / "hive.duckdb"
    load = AckedLoad(nats_server.url).start()
    for _ in range(3):
        mat = _materialize(spawn, nats_server.url, db)
        await asyncio.sleep(random.uniform(1.5, 3.0))
        mat.kill9()
    mat = _materialize(spawn, nats_server.url, db)
    await asyncio.sleep(1.0)
    acked = await load.stop()
    await _verify(nats_server.url, db, acked, mat)
