"""Exactly-once under crashes: ``kill -9`` of the materializer process at several points while
events flow; after a restart, rows = distinct published events and checkpoint = last sequence."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import duckdb
import pytest

import streams

from .conftest import wait_for
from .spine_helpers import checkpoint, finished

N = 3000


async def _feed(js: Any) -> None:
    """Publish N events in small bursts (with some retried duplicates), as agents would."""
    pub = streams.Publisher(js)
    for start in range(0, N, 50):  # about 6 s of flow
        await pub.publish_many([finished(i, agent=f"r-{i % 4}") for i in range(start, start + 50)])
        await pub.publish_many([finished(start, agent=f"r-{start % 4}")])  # a retry: same event_id
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("point", ["after_fetch", "before_commit", "after_commit", "random_kill"])
async def test_kill9_loses_and_duplicates_nothing(
    point: str, nats_server: Any, nc: Any, spawn: Any, tmp_path: Path
) -> None:
    """Whatever the moment of the SIGKILL, the restarted materializer ends with every distinct
    event exactly once and its checkpoint at the stream's last sequence."""
    db = tmp_path / "crash.duckdb"
    js = nc.jetstream()
    args = ("materialize", "--nats", nats_server.url, "--db", str(db), "--batch", "100")
    feeder = asyncio.create_task(_feed(js))
    for kills, n in enumerate((1, 2, 3)):  # three crashes while the feed runs, at the n-th batch of each run
        if point == "random_kill":
            p = spawn(*args)
            await asyncio.sleep(1.2 + 0.4 * kills)
            p.kill9()
        else:
            p = spawn(*args, env={"HIVE_FAILPOINT": f"{point}:{n}"})
            await asyncio.to_thread(p.p.wait, 30)
            assert p.p.returncode == -9, p.output()  # died at the failpoint, by SIGKILL
    await feeder
    last = (await js.stream_info(streams.STREAM)).state.last_seq
    p = spawn(*args)
    await wait_for(lambda: db.exists() and _applied_via_nats(nc, last), timeout=60, what="catch-up")
    assert p.stop() == 0
    con = duckdb.connect(str(db), read_only=True)
    rows, distinct = con.execute("SELECT count(*), count(DISTINCT event_id) FROM experiments").fetchone()  # type: ignore[misc]
    con.close()
    assert rows == distinct == N
    assert checkpoint(db) == last


async def _applied_via_nats(nc: Any, last: int) -> bool:
    import orjson

    reply = await nc.request(streams.STATUS_SUBJECT, b"{}", timeout=1)
    return bool(orjson.loads(reply.data)["applied_seq"] == last)
