"""DuckDB out of memory while writing the snapshot, for real: under ``HIVE_DUCKDB_MEMORY_LIMIT``
the snapshot's commit fails and DuckDB invalidates the whole database instance (the materializer's
own tables included). Found by a 10M-event rebuild under a 1GB limit that swapped in a file
missing the 15,000 rows still in the invalidated database's WAL.

The size and limit were calibrated on DuckDB 2.0: one million rows in ``experiments`` and a
64MB limit make the snapshot's COPY fail at commit ("Failed to commit: could not allocate
block") and invalidate the instance, while ordinary inserts still fit. Each test first checks
that the fault really happens, and skips if a DuckDB version no longer produces it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

import streams
from hive._materializer import seal
from hive._store import MEMORY_LIMIT_ENV, StoreError, open_store

from ..conftest import CHILD_ENV, Proc, wait_for
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


def _snapshot_invalidates(db: Path, scratch: Path) -> bool:
    """Whether, on a copy of ``db`` under LIMIT, the snapshot's COPY invalidates the database."""
    probe = scratch / "probe.duckdb"
    probe.write_bytes(db.read_bytes())
    con = duckdb.connect(str(probe))
    try:
        con.execute(f"SET memory_limit = '{LIMIT}'")
        con.execute(f"ATTACH '{scratch / 'probe-snap.duckdb'}' AS s")
        with contextlib.suppress(duckdb.Error):
            con.execute("COPY FROM DATABASE probe TO s")
        try:
            con.execute("SELECT 1").fetchall()
            return False
        except duckdb.Error:
            return True
    finally:
        con.close()
        for p in scratch.glob("probe*"):
            p.unlink()


async def test_a_snapshot_that_invalidates_the_database_is_ridden_out(
    nats_server: streams.EmbeddedServer, nc: Any, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """``hive materialize`` under a memory limit its snapshot cannot fit in: the snapshot fails and
    DuckDB invalidates the database; the materializer logs it with a hint, reopens the database
    (every acknowledged commit is in the file or its WAL) and ingests on: events published
    before and after are all applied exactly once, and it exits cleanly."""
    db = tmp_path / "hive.duckdb"
    _bulk_db(db)
    if not _snapshot_invalidates(db, tmp_path):
        pytest.skip(f"this DuckDB ({duckdb.__version__}) does not invalidate the database here")
    pub = streams.Publisher(nc.jetstream())
    await pub.publish_many([finished(i) for i in range(200)])
    mat = spawn(
        "materialize",
        "--nats",
        nats_server.url,
        "--db",
        str(db),
        "--snapshot-every",
        "0.2",
        env={MEMORY_LIMIT_ENV: LIMIT},
    )
    await wait_for(lambda: '"snapshot_failed"' in mat.output(), timeout=90, what="a failed snapshot")
    await wait_for(lambda: '"db_reopened"' in mat.output(), timeout=30, what="the database reopened")
    assert "invalidated" in mat.output() and "HIVE_DUCKDB_MEMORY_LIMIT" in mat.output()
    await pub.publish_many([finished(i) for i in range(200, 400)])
    await wait_for(lambda: mat.p.poll() is not None or _applied(nc, 400), timeout=60, what="400 applied")
    assert mat.p.poll() is None, mat.output()[-3000:]
    assert mat.stop() == 0, mat.output()[-3000:]
    assert "Traceback" not in mat.output()
    assert checkpoint(db) == 400
    con = duckdb.connect(str(db), read_only=True)
    try:
        mine = "SELECT count(*), count(DISTINCT event_id) FROM experiments WHERE seq > 0"
        assert con.execute(mine).fetchone() == (400, 400)
        assert con.execute("SELECT count(*) FROM experiments").fetchone() == (BULK + 400,)
    finally:
        con.close()


async def _applied(nc: Any, last: int) -> bool:
    """Whether the running materializer reports ``last`` applied (its status subject)."""
    try:
        reply = await nc.request(streams.STATUS_SUBJECT, b"{}", timeout=1)
    except Exception:
        return False
    return bool(orjson.loads(reply.data)["applied_seq"] >= last)


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
