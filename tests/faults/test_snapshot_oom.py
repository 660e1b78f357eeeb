"""DuckDB out of memory while writing the snapshot, for real: under ``HIVE_DUCKDB_MEMORY_LIMIT``
a snapshot's commit can fail in a way that makes DuckDB invalidate the whole database instance
(the materializer's own tables included). Found by a 10M-event rebuild under a 1GB limit, which
swapped in a file missing the 15,000 rows still in the invalidated database's WAL.

The snapshot now copies rows without indexes, which fits far smaller limits and, in the
calibration runs, failed without invalidating anything; so the invalidation is produced here with
the copy the snapshot used to make (``COPY FROM DATABASE``, indexes included), which on DuckDB
2.0 invalidates the instance for one million experiments under a 64MB limit while ordinary
inserts still fit. The test checks that the invalidation really happened and skips if a DuckDB
version no longer produces it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest

import hive._materializer as materializer_module
import streams
from hive import Materializer
from hive._materializer import seal
from hive._store import MEMORY_LIMIT_ENV, StoreError, open_store

from ..conftest import CHILD_ENV, wait_for
from ..spine_helpers import checkpoint, finished

BULK = 1_000_000
LIMIT = "64MB"


def _bulk_db(path: Path) -> None:
    """A hive database holding BULK experiments (negative seqs, not from any stream) and no
    checkpoint: the materializer replays the stream from sequence 1 into it."""
    con = open_store(path)
    con.execute(
        f"""INSERT INTO experiments
            (event_id, seq, run_key, agent_id, agent_type, task, run_id, status, recipe)
        SELECT 'bulk/run-' || i || '/finish', -1 - i, 'bulk/run-' || i, 'bulk', 'researcher', 'branin/0',
               'run-' || i, 'ok', '{{"lr": 0.001, "pad": "' || repeat('x', 150) || '"}}'
        FROM range({BULK}) t(i)"""
    )
    con.close()


async def test_a_snapshot_that_invalidates_the_database_is_ridden_out(
    nats_server: streams.EmbeddedServer, nc: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A materializer under a memory limit its snapshot cannot fit in: the snapshot fails and
    DuckDB invalidates the database; the materializer reopens it (every acknowledged commit is in
    the file or its WAL) and ingests on: events published before and after are all applied
    exactly once, and it stops cleanly."""
    db = tmp_path / "hive.duckdb"
    _bulk_db(db)
    monkeypatch.setenv(MEMORY_LIMIT_ENV, LIMIT)
    invalidated: list[bool] = []

    def copy_with_indexes(cur: Any, target: Any) -> int:
        """The snapshot as it was written before: ``COPY FROM DATABASE``, keys and indexes too."""
        tmp = Path(str(target) + ".tmp")
        tmp.unlink(missing_ok=True)
        src = cur.execute("SELECT current_database()").fetchone()[0]
        cur.execute(f"ATTACH '{tmp}' AS hive_snapshot_tmp")
        try:
            cur.execute(f'COPY FROM DATABASE "{src}" TO hive_snapshot_tmp')
        finally:
            try:
                cur.execute("SELECT 1").fetchall()
            except duckdb.Error:
                invalidated.append(True)
            try:
                cur.execute("DETACH hive_snapshot_tmp")
            finally:
                tmp.unlink(missing_ok=True)
        return 0

    monkeypatch.setattr(materializer_module, "snapshot_through", copy_with_indexes)
    pub = streams.Publisher(nc.jetstream())
    await pub.publish_many([finished(i) for i in range(200)])
    m = Materializer(nats_server.url, db, snapshot_every_s=0.2, serve_queries=False)
    task = asyncio.create_task(m.run())
    try:
        await wait_for(lambda: m._snapshot_failures > 0 or task.done(), timeout=90, what="a failed snapshot")
        if not invalidated:
            pytest.skip(f"this DuckDB ({duckdb.__version__}) did not invalidate the database here")
        await pub.publish_many([finished(i) for i in range(200, 400)])
        await wait_for(lambda: task.done() or m.stats.applied_seq >= 400, timeout=60, what="400 applied")
        assert not task.done(), task.exception() if task.done() else None
    finally:
        m.stop()
        await asyncio.wait_for(task, 60)
    assert checkpoint(db) == 400
    con = duckdb.connect(str(db), read_only=True)
    try:
        mine = "SELECT count(*), count(DISTINCT event_id) FROM experiments WHERE seq > 0"
        assert con.execute(mine).fetchone() == (400, 400)
        assert con.execute("SELECT count(*) FROM experiments").fetchone() == (BULK + 400,)
    finally:
        con.close()


def test_seal_folds_the_wal_left_by_a_killed_writer(tmp_path: Path) -> None:
    """A rebuilt file is sealed before it is swapped in: after a writer died with its last commits
    only in the WAL (``kill -9``), :func:`seal` folds them into the file, leaves no WAL, and
    returns the checkpoint; a file that is not applied through what the replay reported is
    refused (a :class:`StoreError`), never swapped in."""
    db = tmp_path / "rebuilt.duckdb"
    open_store(db).close()
    writer = (
        "import duckdb, os, signal, sys\n"
        "con = duckdb.connect(sys.argv[1])\n"
        "con.execute(\"INSERT INTO checkpoint VALUES ('HIVE', 7)\")\n"
        "con.execute(\"INSERT INTO dead_letters (seq, reason) SELECT i, 'x' FROM range(7) t(i)\")\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    p = subprocess.run([sys.executable, "-c", writer, str(db)], env=CHILD_ENV, check=False)
    assert p.returncode == -signal.SIGKILL
    wal = Path(str(db) + ".wal")
    assert wal.exists() and wal.stat().st_size > 0, "the commits should be in the WAL only"
    with pytest.raises(StoreError, match="applied through seq 7"):
        seal(db, expect_seq=9)
    moved = tmp_path / "moved.duckdb"
    assert seal(db, expect_seq=7) == 7
    assert not wal.exists()
    os.replace(db, moved)  # what rebuild does next: the file alone now carries everything
    con = duckdb.connect(str(moved), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM dead_letters").fetchone() == (7,)
    finally:
        con.close()
