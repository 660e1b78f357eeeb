"""The materializer: the only writer of the DuckDB state, and the query service beside it.

Loop: fetch a batch from an ephemeral pull consumer (no acks: the DuckDB checkpoint is the
truth), decode and project it, and apply rows + checkpoint in one transaction in a worker
thread while the next batch is fetched. On start, and whenever the consumer is lost, it resumes
from the last sequence it has read. Every few seconds it writes an atomic snapshot file.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import nats.errors
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
)

from ._failpoints import failpoint
from ._lockdown import lock_down, snapshot_scratch_paths
from ._query import answer_request
from ._store import applied_seq, apply_batch, open_store, snapshot_path_for, write_snapshot

log = structlog.get_logger("hive.materializer")


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
    ) -> None:
        self.nats_url = nats_url
        self.db_path = Path(db_path)
        self.batch_size = batch_size
        self.snapshot_path = Path(snapshot_path) if snapshot_path else snapshot_path_for(self.db_path)
        self.snapshot_every_s = snapshot_every_s
        self.serve_queries = serve_queries
        self.stop_at_seq = stop_at_seq
        self.connect_options = connect_options or {}
        self.stats = MaterializerStats()
        self._stop = asyncio.Event()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._nc: Client | None = None
        self.ready = asyncio.Event()
        """Set once the query service is subscribed (and the server knows it) and ingest begins."""

    def stop(self) -> None:
        """Ask :meth:`run` to finish the batch in hand, commit, snapshot and return."""
        self._stop.set()

    async def run(self) -> MaterializerStats:
        """Open the database (failing fast if another process holds it), then ingest until stopped."""
        con = open_store(self.db_path)
        lock_down(con, scratch=snapshot_scratch_paths(self.snapshot_path))  # queries: no files/settings
        self._con = con
        writer = con.cursor()
        self.stats.applied_seq = applied_seq(writer)
        nc = await connect(self.nats_url, name="hive-materializer", **self.connect_options)
        self._nc = nc
        try:
            js = nc.jetstream()
            await ensure_stream(js)
            await ensure_agent_buckets(js)  # agents may write these buckets but not create them
            if self.serve_queries:
                await nc.subscribe(QUERY_SUBJECT, cb=self._on_query)
                await nc.subscribe(STATUS_SUBJECT, cb=self._on_status)
                await nc.flush()
            self.ready.set()
            log.info("materializer_started", db=str(self.db_path), resume_from=self.stats.applied_seq + 1)
            await self._ingest(nc, writer)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.drain(), 3.0)
            with contextlib.suppress(Exception):
                if not nc.is_closed:
                    await nc.close()
            with contextlib.suppress(Exception):
                if self.stats.snapshot_seq != self.stats.applied_seq:
                    write_snapshot(writer, self.snapshot_path)
            writer.close()
            con.close()
            self._con = None
        log.info("materializer_stopped", applied_seq=self.stats.applied_seq, events=self.stats.events)
        return self.stats

    async def _ingest(self, nc: Client, writer: duckdb.DuckDBPyConnection) -> None:
        reader = await LogReader(nc, after_seq=self.stats.applied_seq).start()
        pending: asyncio.Future[None] | None = None
        buffer: list[LogEntry] = []
        max_group = 8 * self.batch_size
        last_snapshot = 0.0
        try:
            while not self._stop.is_set():
                if self.stop_at_seq is not None and self.stats.applied_seq >= self.stop_at_seq:
                    break
                try:
                    batch = await reader.fetch(self.batch_size, timeout=0.5)
                except (ConsumerLost, nats.errors.Error) as e:
                    # The consumer expired or the server went away: re-create it after the last
                    # sequence read (the checkpoint in DuckDB stays the truth across restarts).
                    log.warning("consumer_lost", error=str(e), resume_from=reader.last_seq + 1)
                    await asyncio.sleep(0.5)
                    with contextlib.suppress(Exception):
                        await reader.reset()
                    continue
                if batch:
                    failpoint("after_fetch")
                buffer.extend(batch)
                if pending is not None and not pending.done() and batch and len(buffer) < max_group:
                    continue  # group commit: keep reading while the writer is busy
                if pending is not None:
                    await pending
                    pending = None
                if buffer:
                    # Apply in a worker thread (DuckDB releases the GIL) while the next batch is fetched.
                    pending = asyncio.ensure_future(asyncio.to_thread(self._apply, writer, buffer))
                    buffer = []
                elif time.monotonic() - last_snapshot > self.snapshot_every_s:
                    if self.stats.snapshot_seq != self.stats.applied_seq:
                        await asyncio.to_thread(self._snapshot, writer)
                    last_snapshot = time.monotonic()
            if pending is not None:
                await pending
            if buffer:
                self._apply(writer, buffer)
        finally:
            await reader.close()

    def _apply(self, writer: duckdb.DuckDBPyConnection, batch: list[LogEntry]) -> None:
        rows = apply_batch(writer, batch)
        s = self.stats
        s.applied_seq = rows.last_seq
        s.batches += 1
        s.events += len(batch)
        s.dead_letters += len(rows["dead_letters"])
        for seq, subject, reason, _raw, _at in rows["dead_letters"]:
            log.warning("dead_letter", seq=seq, subject=subject, reason=reason)

    def _snapshot(self, writer: duckdb.DuckDBPyConnection) -> None:
        seq = self.stats.applied_seq
        write_snapshot(writer, self.snapshot_path)
        self.stats.snapshot_seq = seq

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
    sequence the rebuilt database is applied through.
    """
    from ._store import connect_db

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
    for p in (tmp, Path(str(tmp) + ".wal")):
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
    import os

    Path(str(db_path) + ".wal").unlink(missing_ok=True)
    os.replace(tmp, db_path)
    return stats.applied_seq
