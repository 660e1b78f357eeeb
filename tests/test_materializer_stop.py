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
    real = materializer_module.write_snapshot
    active = threading.Semaphore(1)
    overlapped: list[bool] = []
    started = threading.Event()

    def slow_snapshot(cur: Any, target: Any) -> Path:
        """The real snapshot, 1.5 s late, noting whether another one was running at the same time."""
        if not active.acquire(blocking=False):
            overlapped.append(True)
            active.acquire()
        try:
            started.set()
            time.sleep(1.5)
            return real(cur, target)
        finally:
            active.release()

    monkeypatch.setattr(materializer_module, "write_snapshot", slow_snapshot)
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
