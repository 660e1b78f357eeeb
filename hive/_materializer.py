"""The materializer: the only writer of the DuckDB state, and the query service beside it.

Loop: fetch a batch from an ephemeral pull consumer (no acks: the DuckDB checkpoint is the
truth), decode and project it, and apply rows + checkpoint in one transaction in a worker
thread while the next batch is fetched. Every few seconds it writes an atomic snapshot file.

It never skips a sequence: a batch is applied only if it starts right after the applied
checkpoint (or the stream proves the sequences between were deleted). On start, whenever the
consumer is lost, and whenever a batch does not follow, it finishes the apply in flight, drops
what it read but did not apply, and re-reads from the checkpoint. A commit that fails for lack
of storage (disk full, I/O error) is logged once, retried with capped exponential backoff, and
applied once space is back; the connection is reopened if DuckDB gave it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import nats.errors
import nats.js.errors
import orjson
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from streams import (
    QUERY_SUBJECT,
    STATUS_SUBJECT,
    STREAM,
    ConsumerLost,
    LogEntry,
    LogReader,
    connect,
    ensure_agent_buckets,
    ensure_stream,
    open_log_reader,
)

from ._failpoints import failpoint
from ._lockdown import lock_down, snapshot_scratch_paths
from ._query import answer_request
from ._store import (
    StoreError,
    applied_seq,
    apply_batch,
    apply_memory_limit,
    connect_db,
    open_store,
    snapshot_path_for,
    snapshot_through,
    wal_path,
    write_snapshot,
)

log = structlog.get_logger("hive.materializer")

INACTIVE_ENV = "HIVE_CONSUMER_INACTIVE_S"
"""Environment override of the reader's consumer inactive threshold, in seconds (default 60)."""

_RETRY_MAX_S = 30.0
_THREAD_WAIT_S = 120.0
"""At stop, how long to wait for a commit or snapshot still running in a worker thread."""
_NO_SPACE = ("no space left", "disk quota", "file too large")
_STORAGE = (*_NO_SPACE, "could not write", "failed to commit", "read-only file system", "input/output error")


_SNAPSHOT_HINT = (
    "DuckDB ran out of memory copying the database into the snapshot: raise "
    "HIVE_DUCKDB_MEMORY_LIMIT (or unset it); ingest goes on without fresh snapshots"
)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it chained from (its cause, else its context), in turn."""
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` (or what it chained from) is DuckDB running out of memory."""
    return any(
        isinstance(seen, duckdb.OutOfMemoryException)
        or "could not allocate" in (text := str(seen).lower())
        or "out of memory" in text
        for seen in _chain(error)
    )


def storage_failure(error: BaseException) -> str | None:
    """``"disk_full"``, ``"storage_error"`` or ``"db_invalidated"`` when ``error`` (or what it
    chained from) is the storage refusing a write or DuckDB having invalidated the database (a
    commit, perhaps the snapshot's, ran out of memory: reopening it recovers every commit it
    acknowledged), else None. A failed COMMIT surfaces as a DuckDB TransactionException whose text
    carries the OS error; the ROLLBACK after it may raise in its turn."""
    kind = None
    for seen in _chain(error):
        text = str(seen).lower()
        if any(m in text for m in _NO_SPACE):
            return "disk_full"
        if "has been invalidated" in text:
            kind = "db_invalidated"
        elif isinstance(seen, OSError | duckdb.IOException) or any(m in text for m in _STORAGE):
            kind = kind or "storage_error"
    return kind


@dataclass
class MaterializerStats:
    """Counters a running materializer exposes (through ``hive status`` and the status subject)."""

    applied_seq: int = 0
    batches: int = 0
    events: int = 0
    dead_letters: int = 0
    snapshot_seq: int = 0
    started: float = field(default_factory=time.time)


class Materializer:
    """Consumes the hive stream into a DuckDB file and serves read-only SQL over NATS.

    ``stop_at_seq`` (for rebuilds and tests) makes :meth:`run` return once that sequence is
    applied. ``serve_queries=False`` runs the ingest loop alone.
    """

    def __init__(
        self,
        nats_url: str,
        db_path: str | Path,
        *,
        batch_size: int = 1000,
        snapshot_path: str | Path | None = None,
        snapshot_every_s: float = 2.0,
        serve_queries: bool = True,
        stop_at_seq: int | None = None,
        connect_options: dict[str, Any] | None = None,
        inactive_threshold: float | None = None,
    ) -> None:
        self.nats_url = nats_url
        self.db_path = Path(db_path)
        self.batch_size = batch_size
        self.snapshot_path = Path(snapshot_path) if snapshot_path else snapshot_path_for(self.db_path)
        self.snapshot_every_s = snapshot_every_s
        self.serve_queries = serve_queries
        self.stop_at_seq = stop_at_seq
        self.connect_options = connect_options or {}
        self.inactive_threshold = (
            inactive_threshold
            if inactive_threshold is not None
            else float(os.environ.get(INACTIVE_ENV, "60"))
        )
        """Seconds the server keeps the ephemeral consumer while nobody pulls (a paused process)."""
        self.stats = MaterializerStats()
        self._stop = asyncio.Event()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._writer: duckdb.DuckDBPyConnection | None = None
        self._nc: Client | None = None
        self._threads: set[asyncio.Future[Any]] = set()
        self._snapshot_failures = 0
        self._snapshot_cost_s = 0.0
        self._snapshot_ended = 0.0
        self._snapshot_broke = False
        self._snapshotting: asyncio.Future[Any] | None = None
        self.ready = asyncio.Event()
        """Set once the query service is subscribed (and the server knows it) and ingest begins."""

    def stop(self) -> None:
        """Ask :meth:`run` to finish the batch in hand, commit, snapshot and return."""
        self._stop.set()

    async def _provision(self, js: Any) -> None:
        """Create the stream and the agents' buckets, riding out a node lost while starting: a
        timeout or "no responders" (a cluster electing a new leader) is retried with backoff."""
        delay = 0.25
        while True:
            try:
                await ensure_stream(js)
                await ensure_agent_buckets(js)  # agents may write these buckets but not create them
                return
            except (TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as e:
                if self._stop.is_set():
                    raise
                log.warning("provision_retry", error=f"{type(e).__name__}: {e}", retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def run(self) -> MaterializerStats:
        """Open the database (failing fast if another process holds it), then ingest until stopped."""
        con = open_store(self.db_path)
        lock_down(con, scratch=snapshot_scratch_paths(self.snapshot_path))  # queries: no files/settings
        self._con = con
        self._writer = writer = con.cursor()
        self.stats.applied_seq = applied_seq(writer)
        nc = await connect(self.nats_url, name="hive-materializer", **self.connect_options)
        self._nc = nc
        try:
            js = nc.jetstream()
            await self._provision(js)
            if self.serve_queries:
                await nc.subscribe(QUERY_SUBJECT, cb=self._on_query)
                await nc.subscribe(STATUS_SUBJECT, cb=self._on_status)
                await nc.flush()
            self.ready.set()
            log.info("materializer_started", db=str(self.db_path), resume_from=self.stats.applied_seq + 1)
            await self._ingest(nc)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.drain(), 3.0)
            with contextlib.suppress(Exception):
                if not nc.is_closed:
                    await nc.close()
            if self._threads:  # cancelled while a commit or a snapshot runs: it still uses the writer
                await asyncio.wait(list(self._threads), timeout=_THREAD_WAIT_S)
            writer, con = self._writer or writer, self._con or con  # reopened after a storage error?
            with contextlib.suppress(Exception):
                if self.stats.snapshot_seq != self.stats.applied_seq:
                    write_snapshot(writer, self.snapshot_path)
                    self.stats.snapshot_seq = self.stats.applied_seq
            with contextlib.suppress(Exception):
                writer.close()
            with contextlib.suppress(Exception):
                con.close()
            self._con = self._writer = None
        log.info("materializer_stopped", applied_seq=self.stats.applied_seq, events=self.stats.events)
        return self.stats

    async def _ingest(self, nc: Client) -> None:
        # The raw-protocol reader where the server allows it (plain nats://, no auth, no TLS).
        reader = await open_log_reader(
            nc, after_seq=self.stats.applied_seq, inactive_threshold=self.inactive_threshold
        ).start()
        pending: asyncio.Future[bool] | None = None
        buffer: list[LogEntry] = []
        max_group = 8 * self.batch_size
        try:
            while not self._stop.is_set():
                if self.stop_at_seq is not None and self.stats.applied_seq >= self.stop_at_seq:
                    break
                try:
                    batch = await reader.fetch(self.batch_size, timeout=0.5)
                except (ConsumerLost, nats.errors.Error, OSError, TimeoutError) as e:
                    # The consumer expired or the server went away. Finish the apply in flight,
                    # drop what was read but not applied, and re-read from the checkpoint.
                    if pending is not None:
                        await pending
                        pending = None
                    buffer = []
                    log.warning(
                        "consumer_lost",
                        error=str(e) or type(e).__name__,
                        resume_from=self.stats.applied_seq + 1,
                    )
                    await asyncio.sleep(0.5)
                    await self._rewind(reader)
                    continue
                if batch:
                    failpoint("after_fetch")
                buffer.extend(batch)
                if pending is not None and not pending.done() and batch and len(buffer) < max_group:
                    continue  # group commit: keep reading while the writer is busy
                if pending is not None:
                    applied = await pending
                    pending = None
                    if not applied:  # given up on (stopping): what was read after it re-reads later
                        buffer = []
                        continue
                if buffer:
                    if not await self._follows(reader, buffer):
                        buffer = []
                        await asyncio.sleep(0.2)
                        await self._rewind(reader)
                        continue
                    # Apply in a worker thread (DuckDB releases the GIL) while the next batch is fetched.
                    pending = asyncio.ensure_future(self._apply_durably(buffer))
                    buffer = []
                elif self._snapshot_broke and self._snapshotting_done():
                    # The last snapshot failed, perhaps invalidating the database (no apply is in
                    # flight here): reopen it if so, and read on from its checkpoint.
                    self._snapshot_broke = False
                    self._check_connection()
                    if self._writer is None:
                        await self._recover()  # (if this fails, the next apply retries it)
                        if reader.last_seq != self.stats.applied_seq:
                            await self._rewind(reader)
                elif self._snapshot_due():
                    # In the background: ingest goes on while it is written (one transaction on
                    # its own cursor); the stop waits for it (``_threads``).
                    self._snapshotting = asyncio.ensure_future(self._in_thread(self._snapshot))
            if pending is not None and await pending and buffer and await self._follows(reader, buffer):
                await self._apply_durably(buffer)
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            await reader.close()

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` in a worker thread. A cancelled caller stops waiting but the thread runs on
        (a thread cannot be stopped), so it stays in ``_threads`` until done: :meth:`run` waits
        for it before the final snapshot and closing the database (a 1M-event snapshot outlasted
        the 10 s grace of a stop, and the final one raced it)."""
        ctx = contextvars.copy_context()
        fut = asyncio.get_running_loop().run_in_executor(None, functools.partial(ctx.run, fn, *args))
        self._threads.add(fut)
        fut.add_done_callback(self._threads.discard)
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved if nobody waits
        return await asyncio.shield(fut)

    async def _rewind(self, reader: LogReader) -> None:
        """Point the reader at the applied checkpoint and re-create its consumer (if the server is
        unreachable now, the reader's next fetch retries)."""
        reader.last_seq = self.stats.applied_seq
        with contextlib.suppress(Exception):
            await reader.reset()

    async def _follows(self, reader: LogReader, batch: list[LogEntry]) -> bool:
        """Whether ``batch`` continues the applied checkpoint with no sequence skipped: it starts at
        ``applied_seq + 1`` and is contiguous, or each jump is a gap the stream proves (deleted)."""
        first, last = batch[0].seq, batch[-1].seq
        applied = self.stats.applied_seq
        if first == applied + 1 and last - first + 1 == len(batch):
            return True  # the usual case: two integer comparisons per batch
        prev = applied
        for entry in batch:
            if entry.seq != prev + 1:
                try:
                    proven = entry.seq > prev and await reader.next_existing(prev + 1) == entry.seq
                except Exception as e:
                    log.warning("gap_unverified", after_seq=prev, delivered=entry.seq, error=str(e))
                    proven = False
                if not proven:
                    log.error(
                        "ingest_gap",
                        expected=prev + 1,
                        delivered=entry.seq,
                        applied_seq=applied,
                        action="re-read",
                    )
                    return False
            prev = entry.seq
        return True

    async def _apply_durably(self, batch: list[LogEntry]) -> bool:
        """Apply ``batch``, retrying while the storage refuses the commit (disk full, I/O error)
        with capped exponential backoff. False if the materializer was stopped before it could."""
        delay, failing, follows = 0.5, False, self.stats.applied_seq
        while True:
            try:
                if self._writer is None:
                    self._reopen()
                    if self.stats.applied_seq < follows:
                        # The reopened checkpoint is behind the one this batch follows: applying
                        # it would skip sequences. Drop it; the next batch will not follow, and
                        # the reader re-reads from the checkpoint.
                        log.error(
                            "checkpoint_behind_batch", applied_seq=self.stats.applied_seq, follows=follows
                        )
                        return False
                assert self._writer is not None
                await self._in_thread(self._apply, self._writer, batch)
            except Exception as e:
                kind = storage_failure(e)
                if kind is None:
                    raise
                detail = f"{kind.replace('_', ' ')}: {e}"
                if not failing:  # one clear error; the retries are quieter
                    log.error(
                        kind, detail=detail, seq_from=batch[0].seq, seq_to=batch[-1].seq, retry_in_s=delay
                    )
                else:
                    log.info("apply_retry", kind=kind, retry_in_s=delay)
                failing = True
                if not self._snapshotting_done():  # it uses the connection: let it end before a close
                    assert self._snapshotting is not None
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.shield(self._snapshotting), _THREAD_WAIT_S)
                self._check_connection()
                if self._stop.is_set():
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                if self._stop.is_set():
                    return False
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            if failing:
                log.info("storage_recovered", applied_seq=self.stats.applied_seq)
            return True

    def _check_connection(self) -> None:
        """After a failed commit: keep the connection if it still answers, else drop it (reopened
        before the next attempt)."""
        if self._writer is None:
            return
        try:
            self._writer.execute("SELECT 1").fetchall()
        except duckdb.Error as e:
            log.warning("db_connection_lost", error=str(e))
            for c in (self._writer, self._con):
                with contextlib.suppress(Exception):
                    c.close()  # type: ignore[union-attr]
            self._writer = None

    def _reopen(self) -> None:
        """Open the database again after DuckDB invalidated it (raises while storage still fails)."""
        con = connect_db(self.db_path)
        with contextlib.suppress(duckdb.Error, StoreError):  # the instance may still be cached (and locked)
            apply_memory_limit(con)
        with contextlib.suppress(duckdb.Error):  # the same instance may still be cached (and locked)
            lock_down(con, scratch=snapshot_scratch_paths(self.snapshot_path))
        self._con, self._writer = con, con.cursor()
        self.stats.applied_seq = applied_seq(self._writer)
        log.info("db_reopened", applied_seq=self.stats.applied_seq)

    def _apply(self, writer: duckdb.DuckDBPyConnection, batch: list[LogEntry]) -> None:
        if batch[-1].seq <= self.stats.applied_seq:
            return  # a retry whose commit had in fact gone through
        rows = apply_batch(writer, batch)
        s = self.stats
        s.applied_seq = rows.last_seq
        s.batches += 1
        s.events += len(batch)
        s.dead_letters += len(rows["dead_letters"])
        for seq, subject, reason, _raw, _at in rows["dead_letters"]:
            log.warning("dead_letter", seq=seq, subject=subject, reason=reason)

    def _snapshot_interval(self) -> float:
        """Seconds from the end of one snapshot to the start of the next: ``snapshot_every_s``, or
        four times what the last one took if longer (so snapshots of a large database take at
        most a fifth of a core), doubled after each failure in a row, up to 5 minutes."""
        base = max(self.snapshot_every_s, 4 * self._snapshot_cost_s)
        return min(base * 2**self._snapshot_failures, max(base, 300.0))

    def _snapshotting_done(self) -> bool:
        return self._snapshotting is None or self._snapshotting.done()

    def _snapshot_due(self) -> bool:
        """Whether to start a snapshot now: none running, the database changed since the last one,
        and the interval since it passed."""
        return (
            self._snapshotting_done()
            and self._writer is not None
            and self.stats.snapshot_seq != self.stats.applied_seq
            and time.monotonic() - self._snapshot_ended > self._snapshot_interval()
        )

    def _snapshot(self) -> None:
        """Write the snapshot in a worker thread, on its own cursor, while applies go on. A failure
        does not stop ingest; DuckDB invalidates the whole database when a commit (the snapshot's
        included) runs out of memory, so a failure flags the loop to check the connection."""
        con = self._con
        if con is None:
            return
        t = time.monotonic()
        try:
            cur = con.cursor()
            try:
                seq = snapshot_through(cur, self.snapshot_path)
            finally:
                with contextlib.suppress(duckdb.Error):
                    cur.close()
        except Exception as e:  # a full disk must not stop ingest: the next snapshot tries again
            self._snapshot_failures += 1
            self._snapshot_broke = True
            log.warning(
                "snapshot_failed",
                error=str(e),
                path=str(self.snapshot_path),
                hint=_SNAPSHOT_HINT if _out_of_memory(e) else None,
                retry_in_s=self._snapshot_interval(),
            )
            return
        finally:
            self._snapshot_ended = time.monotonic()
        self._snapshot_cost_s = self._snapshot_ended - t
        self._snapshot_failures = 0
        self.stats.snapshot_seq = seq

    async def _recover(self) -> None:
        """Reopen the database after it was invalidated outside an apply (a failed snapshot).
        Every commit it acknowledged is in its file or WAL, so the reopened checkpoint should be
        where it was; the caller rewinds the reader if it is not."""
        before = self.stats.applied_seq
        try:
            await self._in_thread(self._reopen)
        except Exception as e:
            log.error("db_reopen_failed", error=str(e), retry="on the next batch")
            return
        if self.stats.applied_seq != before:
            log.error("checkpoint_moved_on_reopen", before=before, after=self.stats.applied_seq)

    async def _on_query(self, msg: Msg) -> None:
        assert self._con is not None
        limit = (self._nc.max_payload if self._nc else 1 << 20) - 1024
        payload = await answer_request(self._con, msg.data, max_payload=limit)
        if msg.reply:
            await msg.respond(payload)

    async def _on_status(self, msg: Msg) -> None:
        s = self.stats
        body = {
            "db": str(self.db_path),
            "snapshot": str(self.snapshot_path),
            "applied_seq": s.applied_seq,
            "snapshot_seq": s.snapshot_seq,
            "events_this_run": s.events,
            "dead_letters_this_run": s.dead_letters,
            "uptime_s": round(time.time() - s.started, 1),
        }
        if msg.reply:
            await msg.respond(orjson.dumps(body))


async def rebuild(
    nats_url: str, db_path: str | Path, *, connect_options: dict[str, Any] | None = None
) -> int:
    """Replay the whole stream from sequence 1 into a new file, then swap it in for ``db_path``.

    Refuses while another process (a running materializer) holds ``db_path``. Returns the
    sequence the rebuilt database is applied through, as read back from the rebuilt file: the
    file is checkpointed (its WAL folded in) and checked before the swap, and a file that does not
    hold what the replay applied is never swapped in (:class:`StoreError`, the old file untouched).
    """
    db_path = Path(db_path)
    if db_path.exists():
        connect_db(db_path).close()  # raises DatabaseLocked if a materializer owns it
    nc = await connect(nats_url, name="hive-rebuild", **(connect_options or {}))
    try:
        js = nc.jetstream()
        await ensure_stream(js)
        last = (await js.stream_info(STREAM)).state.last_seq
    finally:
        await nc.close()
    tmp = db_path.with_name(db_path.name + ".rebuild")
    for p in (tmp, wal_path(tmp)):
        p.unlink(missing_ok=True)
    m = Materializer(
        nats_url,
        tmp,
        serve_queries=False,
        stop_at_seq=last,
        connect_options=connect_options,
        snapshot_path=snapshot_path_for(db_path),
    )
    stats = await m.run()
    seq = seal(tmp, expect_seq=stats.applied_seq)
    wal_path(db_path).unlink(missing_ok=True)
    os.replace(tmp, db_path)
    return seq


def seal(path: Path, *, expect_seq: int) -> int:
    """Make the DuckDB file ``path`` self-contained before it is moved: open it (replaying its WAL),
    checkpoint, close, and check that no WAL is left and that it is applied through
    ``expect_seq``. Returns that sequence; raises :class:`StoreError` otherwise.

    Needed because a database DuckDB invalidated (a commit that ran out of memory, even the
    snapshot's) is closed without a checkpoint: its last commits live only in the WAL beside it,
    and moving the file alone dropped them (15,000 of 10,000,000 rows in a 10M-event rebuild
    under a 1GB memory limit).
    """
    con = connect_db(path)
    try:
        con.execute("CHECKPOINT")
        seq = applied_seq(con)
    finally:
        con.close()
    if wal_path(path).exists() and wal_path(path).stat().st_size > 0:
        raise StoreError(f"{path}: the WAL could not be folded into the file; not swapped in")
    if seq != expect_seq:
        raise StoreError(
            f"{path} is applied through seq {seq} but the replay applied through {expect_seq}; not swapped in"
        )
    return seq
