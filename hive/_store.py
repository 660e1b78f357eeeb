"""The DuckDB file: opening it (one owner), applying a projected batch atomically, snapshots.

Only the materializer writes. A batch's rows and the applied stream sequence commit in one
transaction, which is what makes ingestion exactly-once across crashes.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import structlog

from streams import STREAM, LogEntry

from ._failpoints import failpoint
from ._projections import Rows, decode_batch, project
from ._schema import ARROW, migrate

log = structlog.get_logger("hive.store")


class DatabaseLocked(RuntimeError):
    """Another process holds the DuckDB file (DuckDB allows one writer and no other readers)."""


def snapshot_path_for(db_path: str | Path) -> Path:
    """Where the materializer writes the atomic snapshot of ``db_path`` (``hive.snapshot.duckdb``)."""
    p = Path(db_path)
    return p.with_name(p.stem + ".snapshot" + (p.suffix or ".duckdb"))


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def connect_db(path: str | Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file, turning DuckDB's lock error into :class:`DatabaseLocked` with the holder."""
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as e:
        msg = str(e)
        if "lock" in msg.lower():
            pid = re.search(r"PID (\d+)", msg)
            holder = f"process {pid.group(1)}" if pid else "another process"
            raise DatabaseLocked(
                f"{path} is held by {holder}: a DuckDB file has one owner (the materializer). "
                f"Query the running hive with `hive query --nats URL`, or open the snapshot "
                f"{snapshot_path_for(path)}"
            ) from None
        raise


def open_store(path: str | Path) -> duckdb.DuckDBPyConnection:
    """Open (or create) the materializer's database and migrate it.

    The file is a disposable projection of the log: if it cannot be opened (a crash left it
    unreadable), it is moved aside to ``<file>.corrupt-<time>`` and an empty one is created,
    which the materializer then refills by replaying the log from sequence 1.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = connect_db(path)  # DatabaseLocked (not a duckdb.Error) propagates
    except duckdb.Error as e:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        log.warning("db_quarantined", path=str(path), moved_to=str(aside), error=str(e))
        os.replace(path, aside)
        wal = Path(str(path) + ".wal")
        if wal.exists():
            os.replace(wal, Path(str(aside) + ".wal"))
        con = connect_db(path)
    migrate(con)
    return con


def applied_seq(con: duckdb.DuckDBPyConnection) -> int:
    """The last stream sequence whose effects are committed in this database."""
    row = con.execute("SELECT last_seq FROM checkpoint WHERE stream = ?", [STREAM]).fetchone()
    return int(row[0]) if row else 0


def _arrow(name: str, rows: list[tuple[object, ...]]) -> pa.Table:
    schema = ARROW[name]
    columns = list(zip(*rows, strict=True))
    return pa.Table.from_arrays(
        [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)], schema=schema
    )


def _agents_upsert() -> str:
    # Later non-null values win; an older event re-applied after the dedupe window changes nothing.
    sets = ", ".join(
        f"{c} = coalesce(EXCLUDED.{c}, agents.{c})" for c in ARROW["agents"].names if c not in ("agent_id",)
    ).replace(
        "last_seen = coalesce(EXCLUDED.last_seen, agents.last_seen)",
        "last_seen = greatest(EXCLUDED.last_seen, agents.last_seen)",
    )
    return (
        f"INSERT INTO agents SELECT * FROM _batch_agents ON CONFLICT (agent_id) DO UPDATE SET {sets} "
        "WHERE EXCLUDED.seq > agents.seq"
    )


_AGENTS_UPSERT = _agents_upsert()


def apply_batch(cur: duckdb.DuckDBPyConnection, messages: list[LogEntry]) -> Rows:
    """Decode, project and insert ``messages`` and the checkpoint, all in one transaction.

    Returns the rows written (for logging and metrics). Idempotent: every table is keyed by
    ``event_id`` (ignore if present) except ``agents`` (a guarded upsert).
    """
    good, dead = decode_batch(messages)
    rows = project(good, dead, messages[-1].seq)
    cur.execute("BEGIN")
    try:
        for table, table_rows in rows.nonempty().items():
            view = f"_batch_{table}"
            cur.register(view, _arrow(table, table_rows))
            if table == "agents":
                cur.execute(_AGENTS_UPSERT)
            else:
                cur.execute(f"INSERT OR IGNORE INTO {table} BY NAME SELECT * FROM {view}")
            cur.unregister(view)
        cur.execute("INSERT OR REPLACE INTO checkpoint VALUES (?, ?)", [STREAM, rows.last_seq])
        failpoint("before_commit")
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    failpoint("after_commit")
    return rows


def write_snapshot(cur: duckdb.DuckDBPyConnection, target: str | Path) -> Path:
    """Copy the whole database into ``target`` atomically (write a temp file, then rename).

    Readers, the ``duckdb`` CLI included, can open the snapshot while the materializer runs.
    The temp files are :func:`hive.snapshot_scratch_paths` of ``target``: the only files a
    locked-down database (:func:`hive.lock_down`) lets this write.
    """
    from ._lockdown import snapshot_scratch_paths

    target = Path(target)
    scratch = snapshot_scratch_paths(target)
    tmp = scratch[0]
    for p in scratch:
        p.unlink(missing_ok=True)
    row = cur.execute("SELECT current_database()").fetchone()
    assert row is not None
    src = row[0]
    cur.execute(f"ATTACH {_sql_str(str(tmp))} AS hive_snapshot_tmp")
    try:
        cur.execute(f'COPY FROM DATABASE "{src}" TO hive_snapshot_tmp')
    finally:
        cur.execute("DETACH hive_snapshot_tmp")
    os.replace(tmp, target)
    return target
