"""A materializer cancelled while a worker thread still writes (a long snapshot) waits for that
thread before its final snapshot and closing the database (seen at 1M events: the stop's 10 s
grace ran out during a snapshot, and the final snapshot raced the interrupted one)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

import hive._materializer as materializer_module
import streams
from hive import Materializer

from .conftest import wait_for
from .spine_helpers import finished


async def test_cancel_during_a_snapshot_waits_for_it(
    nats_server: Any, nc: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run task is cancelled while a snapshot is being written (slowed down by 1.5 s): the
    snapshot thread finishes, no second snapshot runs beside it, the database closes cleanly and
    the snapshot file holds every applied event."""
    real_through = materializer_module.snapshot_through
    real_write = materializer_module.write_snapshot
    active = threading.Semaphore(1)
    overlapped: list[bool] = []
    started = threading.Event()

    def slowly(real: Any) -> Any:
        """``real``, 1.5 s late, noting whether another snapshot was running at the same time."""

        def slow(cur: Any, target: Any) -> Any:
            if not active.acquire(blocking=False):
                overlapped.append(True)
                active.acquire()
            try:
                started.set()
                time.sleep(1.5)
                return real(cur, target)
            finally:
                active.release()

        return slow

    # the background snapshot and the final one
    monkeypatch.setattr(materializer_module, "snapshot_through", slowly(real_through))
    monkeypatch.setattr(materializer_module, "write_snapshot", slowly(real_write))
    await streams.ensure_stream(nc.jetstream())
    await streams.Publisher(nc.jetstream()).publish_many(finished(i) for i in range(200))
    db = tmp_path / "h.duckdb"
    m = Materializer(nats_server.url, db, snapshot_every_s=0.1)
    task = asyncio.create_task(m.run())
    await wait_for(lambda: m.stats.applied_seq >= 200, what="ingest")
    await wait_for(started.is_set, what="a snapshot in progress")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not overlapped, "the final snapshot ran beside the interrupted one"
    con = duckdb.connect(str(db), read_only=True)  # closed: nobody holds it
    assert con.execute("SELECT count(*) FROM experiments").fetchone() == (200,)
    con.close()
    snap = duckdb.connect(str(m.snapshot_path), read_only=True)
    assert snap.execute("SELECT count(*) FROM experiments").fetchone() == (200,)
    snap.close()


async def test_ingest_goes_on_while_a_snapshot_is_written(
    nats_server: Any, nc: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot is written beside ingest, not in its way: while one takes 3 s, events published
    meanwhile are applied; the snapshot holds exactly the sequence it reports (its checkpoint and
    its rows agree), and the one at stop catches up."""
    real = materializer_module.snapshot_through
    writing = threading.Event()
    seqs: list[int] = []

    class SlowCopy:
        """A cursor whose first copy of a table starts 3 s late, inside the snapshot's transaction."""

        def __init__(self, cur: Any) -> None:
            self.cur = cur

        def execute(self, sql: str, *args: Any) -> Any:
            if sql.startswith("CREATE TABLE") and not writing.is_set():
                writing.set()
                time.sleep(3.0)
            return self.cur.execute(sql, *args)

    def slow(cur: Any, target: Any) -> int:
        """The real snapshot through a slow cursor."""
        seq = real(SlowCopy(cur), target)  # type: ignore[arg-type]
        seqs.append(seq)
        writing.clear()
        return seq

    monkeypatch.setattr(materializer_module, "snapshot_through", slow)
    pub = streams.Publisher(nc.jetstream())
    await pub.publish_many(finished(i) for i in range(100))
    m = Materializer(nats_server.url, tmp_path / "h.duckdb", snapshot_every_s=0.1)
    task = asyncio.create_task(m.run())
    try:
        await wait_for(writing.is_set, what="a snapshot being written")
        await pub.publish_many(finished(i) for i in range(100, 300))
        await wait_for(lambda: m.stats.applied_seq == 300, timeout=2.5, what="ingest during the snapshot")
        assert writing.is_set(), "the events were applied only after the snapshot"
        await wait_for(lambda: not writing.is_set(), timeout=10, what="the snapshot's end")
    finally:
        m.stop()
        await asyncio.wait_for(task, 30)
    assert seqs and seqs[0] < 300  # the background snapshot held what was applied when it began
    assert m.stats.snapshot_seq == 300  # the final one (at stop) caught up
    snap = duckdb.connect(str(m.snapshot_path), read_only=True)
    try:
        assert snap.execute("SELECT count(*) FROM experiments").fetchone() == (300,)
        assert snap.execute("SELECT last_seq FROM checkpoint").fetchone() == (300,)
    finally:
        snap.close()
