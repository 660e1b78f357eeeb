"""The DuckDB file: opening it (one owner), applying a projected batch atomically, snapshots.

Only the materializer writes. A batch's rows and the applied stream sequence commit in one
transaction, which is what makes ingestion exactly-once across crashes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import structlog

from streams import STREAM, LogEntry

from ._failpoints import failpoint
from ._projections import Decoded, Row, Rows, dead_letter, decode_batch, project
from ._schema import ARROW, migrate

log = structlog.get_logger("hive.store")


class StoreError(RuntimeError):
    """The DuckDB file cannot be used as it is, for a reason the operator must fix (not corruption)."""


class DatabaseLocked(StoreError):
    """Another process holds the DuckDB file (DuckDB allows one writer and no other readers)."""


class StorePermissionError(StoreError):
    """The DuckDB file or its directory may not be read or written by this process (EACCES,
    EPERM, EROFS): a healthy file is left where it is, never quarantined."""

    def __init__(self, path: str | Path, detail: str) -> None:
        self.path = Path(path)
        super().__init__(
            f"{path}: permission denied ({detail}); the materializer must be able to read and write "
            "its database and create files in the database's directory"
        )


_PERMISSION_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}
_PERMISSION_WORDS = ("permission denied", "operation not permitted", "read-only file system")


def _is_permission_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _PERMISSION_ERRNOS:
        return True
    return isinstance(exc, duckdb.Error) and any(w in str(exc).lower() for w in _PERMISSION_WORDS)


def snapshot_path_for(db_path: str | Path) -> Path:
    """Where the materializer writes the atomic snapshot of ``db_path`` (``hive.snapshot.duckdb``)."""
    p = Path(db_path)
    return p.with_name(p.stem + ".snapshot" + (p.suffix or ".duckdb"))


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def wal_path(path: str | Path) -> Path:
    """The write-ahead log DuckDB keeps beside the database file ``path``."""
    return Path(str(path) + ".wal")


def connect_db(path: str | Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file, turning DuckDB's lock error into :class:`DatabaseLocked` with the holder
    and a permission error into :class:`StorePermissionError`."""
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
        if _is_permission_error(e):
            raise StorePermissionError(path, msg.removeprefix("IO Error: ")) from None
        raise


def _check_writable(path: Path) -> None:
    """Raise :class:`StorePermissionError` unless this process can create files beside ``path`` and
    open ``path`` (and its WAL), where they exist, for reading and writing."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        if e.errno in _PERMISSION_ERRNOS:
            raise StorePermissionError(
                path.parent, f"cannot create files in the directory: {e.strerror}"
            ) from None
        raise
    for p in (path, wal_path(path)):
        try:
            fd = os.open(p, os.O_RDWR)
        except FileNotFoundError:
            continue
        except OSError as e:
            if e.errno in _PERMISSION_ERRNOS:
                raise StorePermissionError(
                    p, f"cannot open it for reading and writing: {e.strerror}"
                ) from None
            raise
        os.close(fd)


_NOT_CORRUPTION = (
    "No space left on device",
    "Disk quota exceeded",
    "Too many open files",
    "Cannot allocate memory",
    "Out of Memory",
)
"""Signs in a DuckDB open error that the machine is at fault (disk, quotas, memory), not the file."""


MEMORY_LIMIT_ENV = "HIVE_DUCKDB_MEMORY_LIMIT"
"""DuckDB's ``memory_limit`` for the materializer's database (e.g. ``1GB``); unset: DuckDB's
default (80% of the machine's memory). Measured (BENCHMARKS.md, issue 12 step 4): 1M and 3M-event
rebuilds row-exact at 345 MiB peak RSS under 64MB, a 10M-event rebuild row-exact at 1.3 GiB under
1GB (5.0 GiB unset). A limit DuckDB cannot insert under stops the materializer with DuckDB's
out-of-memory error; a snapshot that does not fit is skipped with a warning and retried later
(ingest goes on)."""


def apply_memory_limit(con: duckdb.DuckDBPyConnection) -> None:
    """Set ``memory_limit`` from :data:`MEMORY_LIMIT_ENV`, if set (a bad value is a StoreError)."""
    limit = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if not limit:
        return
    try:
        con.execute(f"SET memory_limit = {_sql_str(limit)}")
    except duckdb.Error as e:
        raise StoreError(f"{MEMORY_LIMIT_ENV}={limit!r} is not a memory limit DuckDB accepts: {e}") from None


def open_store(path: str | Path) -> duckdb.DuckDBPyConnection:
    """Open (or create) the materializer's database and migrate it.

    The file is a disposable projection of the log: if it is not a readable DuckDB database (a
    crash left it unreadable, or it is not DuckDB at all), it is moved aside to
    ``<file>.corrupt-<time>`` and an empty one is created, which the materializer then refills by
    replaying the log from sequence 1. A file or directory this process may not read or write is
    *not* corrupt: that raises :class:`StorePermissionError` and leaves everything as it is.
    """
    path = Path(path)
    _check_writable(path)
    try:
        con = connect_db(path)  # DatabaseLocked and StorePermissionError (not duckdb.Error) propagate
    except duckdb.Error as e:
        if any(sign in str(e) for sign in _NOT_CORRUPTION):
            # The machine, not the file: a full disk or exhausted resources. Quarantining would
            # throw away a healthy database; report it and let the operator (or a retry) fix it.
            raise StoreError(f"cannot open {path}: {e}") from None
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        log.warning("db_quarantined", path=str(path), moved_to=str(aside), error=str(e))
        try:
            os.replace(path, aside)
            wal = wal_path(path)
            if wal.exists():
                os.replace(wal, wal_path(aside))
        except OSError as e2:
            if e2.errno in _PERMISSION_ERRNOS:
                raise StorePermissionError(path, f"cannot move it aside: {e2.strerror}") from None
            raise
        con = connect_db(path)
    try:
        migrate(con)
    except duckdb.Error as e:
        con.close()
        if any(sign in str(e) for sign in _NOT_CORRUPTION):
            raise StoreError(f"cannot prepare {path}: {e}") from None
        raise
    try:
        apply_memory_limit(con)
    except StoreError:
        con.close()
        raise
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


def _agents_fold() -> str:
    """Fold a batch's new agent events into ``agents``: the same rule within a batch as across
    batches, so any batching gives the same table. ``last_seen`` is the latest ``occurred_at``;
    every other column the value of the highest-sequence event that sets it (NULL = no news).
    Events already folded (``agent_event_ids``: a copy republished after the dedupe window) are
    skipped."""
    cols = [c for c in ARROW["agents"].names if c != "agent_id"]
    agg = {c: f"arg_max({c}, seq) FILTER (WHERE {c} IS NOT NULL)" for c in cols}
    agg["seq"] = "max(seq)"
    agg["last_seen"] = "max(last_seen)"
    sets = {c: f"coalesce(EXCLUDED.{c}, agents.{c})" for c in cols}
    sets["last_seen"] = "greatest(EXCLUDED.last_seen, agents.last_seen)"
    return (
        f"INSERT INTO agents SELECT agent_id, {', '.join(agg[c] for c in cols)} "
        "FROM _batch_agent_events b "
        "WHERE NOT EXISTS (SELECT 1 FROM agent_event_ids e WHERE e.event_id = b.event_id) "
        "GROUP BY agent_id "
        f"ON CONFLICT (agent_id) DO UPDATE SET {', '.join(f'{c} = {sets[c]}' for c in cols)} "
        "WHERE EXCLUDED.seq > agents.seq"
    )


_AGENTS_FOLD = _agents_fold()
_AGENT_EVENT_IDS = "INSERT OR IGNORE INTO agent_event_ids SELECT event_id, seq FROM _batch_agent_events"

_ENVIRONMENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    MemoryError,
    duckdb.OperationalError,  # IOException (disk full, permission), out of memory, transaction state
    duckdb.FatalException,
    duckdb.InternalException,
    duckdb.InterruptException,
    duckdb.PermissionException,
)
"""Errors of the machine, not of an event: raised to the caller (which retries), never dead-lettered."""

_MAX_REASON = 2000


def _insert(cur: duckdb.DuckDBPyConnection, rows: Rows) -> None:
    """Insert the projected rows (inside the caller's transaction)."""
    for table, table_rows in rows.nonempty().items():
        view = f"_batch_{table}"
        cur.register(view, _arrow(table, table_rows))
        try:
            if table == "agent_events":
                cur.execute(_AGENTS_FOLD)
                cur.execute(_AGENT_EVENT_IDS)
            else:
                cur.execute(f"INSERT OR IGNORE INTO {table} BY NAME SELECT * FROM {view}")
        finally:
            with contextlib.suppress(duckdb.Error):  # in an aborted transaction; register replaces it
                cur.unregister(view)


def _rollback(cur: duckdb.DuckDBPyConnection) -> None:
    """Roll back the open transaction, if any (a failed COMMIT has already ended it)."""
    with contextlib.suppress(duckdb.TransactionException):
        cur.execute("ROLLBACK")


def _commit(
    cur: duckdb.DuckDBPyConnection, good: list[tuple[LogEntry, Decoded]], dead: list[Row], last_seq: int
) -> Rows:
    """Project and insert ``good`` and ``dead`` and set the checkpoint, in one transaction."""
    rows = project(good, dead, last_seq)
    cur.execute("BEGIN")
    try:
        _insert(cur, rows)
        cur.execute("INSERT OR REPLACE INTO checkpoint VALUES (?, ?)", [STREAM, rows.last_seq])
        failpoint("before_commit")
        cur.execute("COMMIT")
    except BaseException:
        _rollback(cur)
        raise
    return rows


def _refusal(cur: duckdb.DuckDBPyConnection, good: list[tuple[LogEntry, Decoded]]) -> str | None:
    """Why projecting and inserting ``good`` fails (its exception text), or None if it would work;
    always rolled back. Errors of the machine are raised."""
    cur.execute("BEGIN")
    try:
        _insert(cur, project(good, [], 0))
    except _ENVIRONMENT_ERRORS:
        raise
    except Exception as e:
        return f"{type(e).__name__}: {e}"[:_MAX_REASON]
    finally:
        _rollback(cur)
    return None


def _offenders(
    cur: duckdb.DuckDBPyConnection, good: list[tuple[LogEntry, Decoded]]
) -> list[tuple[LogEntry, str]]:
    """The events that fail on their own, with the reason, found by bisection."""
    reason = _refusal(cur, good)
    if reason is None:
        return []
    if len(good) == 1:
        return [(good[0][0], reason)]
    mid = len(good) // 2
    return _offenders(cur, good[:mid]) + _offenders(cur, good[mid:])


def apply_batch(cur: duckdb.DuckDBPyConnection, messages: list[LogEntry]) -> Rows:
    """Decode, project and insert ``messages`` and the checkpoint, all in one transaction.

    Returns the rows written (for logging and metrics). Idempotent: every table is keyed by
    ``event_id`` (ignore if present), and ``agents`` is folded only from events not yet folded.

    No event can stop ingestion: one that fails validation is a dead letter; one that passes but
    still fails in projection or in DuckDB (a conversion or constraint error) is found by
    bisection after a rollback and becomes a dead letter with the exception text, and the rest of
    the batch commits with the checkpoint. Errors of the machine (I/O, disk full, permissions,
    memory) are raised, never blamed on an event.
    """
    good, dead = decode_batch(messages)
    last_seq = messages[-1].seq
    try:
        rows = _commit(cur, good, dead, last_seq)
    except _ENVIRONMENT_ERRORS:
        raise
    except Exception as e:
        log.warning("batch_refused", first_seq=messages[0].seq, last_seq=last_seq, error=str(e)[:_MAX_REASON])
        offenders = _offenders(cur, good)
        if not offenders:
            raise  # no single event is to blame: not a poison event, so not dead-lettered
        bad = {m.seq for m, _ in offenders}
        dead = sorted(
            dead + [dead_letter(m, f"refused by the store: {why}") for m, why in offenders],
            key=lambda r: int(r[0]),
        )
        rows = _commit(cur, [(m, ev) for m, ev in good if m.seq not in bad], dead, last_seq)
    failpoint("after_commit")
    return rows


SNAPSHOT_STORAGE_VERSION = "v1.0.0"
"""The on-disk format of snapshots: the oldest DuckDB 1.x storage, which every 1.x (and later)
client reads: the ``duckdb`` CLI 1.5, the Go, .NET, Node and R bindings. The live database keeps
the running library's newest format. Measured cost in BENCHMARKS.md (``bench/snapshot.py``)."""


def write_snapshot(cur: duckdb.DuckDBPyConnection, target: str | Path) -> Path:
    """Copy the whole database into ``target`` atomically (write a temp file, then rename).

    Readers, the ``duckdb`` CLI included, can open the snapshot while the materializer runs: it is
    written in :data:`SNAPSHOT_STORAGE_VERSION`, so any DuckDB 1.x client opens it.
    The temp files are :func:`hive.snapshot_scratch_paths` of ``target``: the only files a
    locked-down database (:func:`hive.lock_down`) lets this write. The copy is one transaction:
    a writer may commit on another cursor of the same database meanwhile (see
    :func:`snapshot_through`).
    """
    snapshot_through(cur, target)
    return Path(target)


def _copy_database(cur: duckdb.DuckDBPyConnection, src: str, dst: str) -> None:
    """Copy ``src``'s tables (their rows: no keys or indexes, which readers of a snapshot do not
    need and which cost the most memory and space: a 1M-experiment copy took 16 MiB and 0.85 s
    this way against 55 MiB and 1.6 s for ``COPY FROM DATABASE``, which also ran DuckDB out of
    memory under a 64MB limit) and then its views, in creation order, into ``dst``."""
    tables = cur.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main' "
        "ORDER BY table_oid",
        [src],
    ).fetchall()
    for (table,) in tables:
        cur.execute(f'CREATE TABLE "{dst}".main."{table}" AS SELECT * FROM "{src}".main."{table}"')
    views = cur.execute(
        "SELECT view_name, sql FROM duckdb_views() WHERE database_name = ? AND schema_name = 'main' "
        "AND NOT internal ORDER BY view_oid",
        [src],
    ).fetchall()
    for name, sql in views:
        head = f"CREATE VIEW {name} AS"
        if not sql.startswith(head):
            raise StoreError(f"cannot copy view {name!r} into the snapshot: its definition is {sql[:80]!r}")
        cur.execute(f'CREATE VIEW "{dst}".main."{name}" AS{sql[len(head) :]}')


def snapshot_through(cur: duckdb.DuckDBPyConnection, target: str | Path) -> int:
    """:func:`write_snapshot`, returning the applied sequence the snapshot holds: the checkpoint
    and the copy are read in one transaction, so they agree even while another cursor commits."""
    from ._lockdown import snapshot_scratch_paths

    target = Path(target)
    scratch = snapshot_scratch_paths(target)
    tmp = scratch[0]
    for p in scratch:
        p.unlink(missing_ok=True)
    row = cur.execute("SELECT current_database()").fetchone()
    assert row is not None
    src = row[0]
    version = _sql_str(SNAPSHOT_STORAGE_VERSION)
    cur.execute(f"ATTACH {_sql_str(str(tmp))} AS hive_snapshot_tmp (STORAGE_VERSION {version})")
    try:
        cur.execute("BEGIN")
        try:
            seq = applied_seq(cur)
            _copy_database(cur, src, "hive_snapshot_tmp")
            cur.execute("COMMIT")
        except BaseException:
            _rollback(cur)
            raise
    finally:
        cur.execute("DETACH hive_snapshot_tmp")
    os.replace(tmp, target)
    return seq
