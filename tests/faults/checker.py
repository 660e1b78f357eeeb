"""A Jepsen-style checker for the hive's log and its DuckDB projection.

Three sets are compared:

* **acked**: the ``event_id`` of every ``ExperimentFinished`` a publisher saw acknowledged by
  the stream (recorded by :class:`AckedLoad` or by the test itself);
* **stored**: every message in the ``HIVE`` stream, read back with plain nats-py direct gets
  (an independent path: not :class:`streams.LogReader`, which is one of the things under test);
* **applied**: the rows in the DuckDB file (``experiments`` plus ``dead_letters``) and its
  checkpoint.

The invariants (:meth:`Verdict.assert_ok`):

1. nothing acked is lost: ``acked ⊆ stored`` and every acked event is in ``experiments``;
2. nothing is applied twice: each ``event_id`` has one row, and its ``seq`` is the first stream
   sequence that carried that ``event_id`` (a copy past the dedupe window is ignored);
3. the checkpoint agrees: every stored sequence at or below the checkpoint is accounted for
   (a row, a dead letter, or an event kind that has no per-event row), and at quiescence the
   checkpoint equals the stream's last sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson

import streams

__all__ = ["AckedLoad", "StoredLog", "Verdict", "applied_state", "check", "load_event", "read_stream"]


@dataclass
class StoredLog:
    """What the stream holds: ``seq → (subject, kind, event_id)`` (kind/event_id None if unparsable)."""

    by_seq: dict[int, tuple[str, str | None, str | None]]
    first_seq: int
    last_seq: int


async def read_stream(url: str, *, stream: str = streams.STREAM, **connect: Any) -> StoredLog:
    """Read every message of ``stream`` with direct gets (concurrent, in chunks); ``url`` may be a
    comma-separated list of a cluster's servers."""
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(streams.server_list(url), **connect)  # one URL or a cluster's list
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        first, last = info.state.first_seq, info.state.last_seq
        out: dict[int, tuple[str, str | None, str | None]] = {}

        async def get(seq: int) -> None:
            for attempt in range(20):
                try:
                    msg = await js.get_msg(stream, seq, direct=True)
                except NotFoundError:
                    return  # deleted (limits, purge): not part of the log any more
                except Exception:
                    if attempt == 19:
                        raise
                    await asyncio.sleep(0.2)
                    continue
                kind = eid = None
                with contextlib.suppress(Exception):
                    d = orjson.loads(msg.data or b"")
                    if isinstance(d, dict):
                        kind = d.get("kind") if isinstance(d.get("kind"), str) else None
                        eid = d.get("event_id") if isinstance(d.get("event_id"), str) else None
                out[seq] = (msg.subject or "", kind, eid)
                return

        seqs = list(range(first, last + 1)) if last else []
        for i in range(0, len(seqs), 256):
            await asyncio.gather(*(get(s) for s in seqs[i : i + 256]))
        return StoredLog(out, first, last)
    finally:
        await nc.close()


@dataclass
class Applied:
    """What the DuckDB file holds: experiments by event_id (with seqs), dead-letter seqs, checkpoint."""

    experiments: dict[str, list[int]]
    dead_letter_seqs: set[int]
    row_seqs: set[int]
    checkpoint: int


# Tables whose rows carry the stream sequence of the event that wrote them.
_SEQ_TABLES = ("experiment_starts", "experiments", "deployments", "guidance", "models")


def applied_state(db: Path | str) -> Applied:
    """Read the applied state from a DuckDB file (opened read-only; no materializer may own it)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        exps: dict[str, list[int]] = {}
        for eid, seq in con.execute("SELECT event_id, seq FROM experiments").fetchall():
            exps.setdefault(eid, []).append(int(seq))
        dead = {int(r[0]) for r in con.execute("SELECT seq FROM dead_letters").fetchall()}
        row_seqs: set[int] = set()
        for t in _SEQ_TABLES:
            row_seqs.update(int(r[0]) for r in con.execute(f"SELECT seq FROM {t}").fetchall())
        row = con.execute("SELECT last_seq FROM checkpoint WHERE stream = ?", [streams.STREAM]).fetchone()
        return Applied(exps, dead, row_seqs, int(row[0]) if row else 0)
    finally:
        con.close()


# Kinds that write one row per event (keyed by event_id); others (heartbeats, lifecycle) fold into
# the agents table and have no per-sequence row to account for.
_ROW_KINDS = {
    "ExperimentStarted",
    "ExperimentFinished",
    "DeploymentFinished",
    "GuidancePublished",
    "ModelPublished",
    "ModelRejected",
}


@dataclass
class Verdict:
    """The checker's findings; :meth:`assert_ok` fails with all of them at once."""

    acked: int
    stored: int
    applied: int
    checkpoint: int
    stream_last_seq: int
    lost_from_stream: list[str] = field(default_factory=list)
    lost_from_db: list[str] = field(default_factory=list)
    applied_twice: list[str] = field(default_factory=list)
    wrong_seq: list[str] = field(default_factory=list)
    unaccounted_seqs: list[int] = field(default_factory=list)
    checkpoint_behind: bool = False

    @property
    def ok(self) -> bool:
        """True when every invariant holds."""
        return not (
            self.lost_from_stream
            or self.lost_from_db
            or self.applied_twice
            or self.wrong_seq
            or self.unaccounted_seqs
            or self.checkpoint_behind
        )

    def summary(self) -> str:
        """One readable paragraph: counts and the first few violations of each kind."""
        parts = [
            f"acked={self.acked} stored={self.stored} applied={self.applied} "
            f"checkpoint={self.checkpoint} stream_last={self.stream_last_seq}"
        ]
        for name in ("lost_from_stream", "lost_from_db", "applied_twice", "wrong_seq", "unaccounted_seqs"):
            v = getattr(self, name)
            if v:
                parts.append(f"{name}: {len(v)} e.g. {sorted(v)[:5]}")
        if self.checkpoint_behind:
            parts.append("checkpoint is behind the stream at quiescence")
        return "; ".join(parts)

    def assert_ok(self) -> None:
        """Raise AssertionError naming every violated invariant."""
        assert self.ok, self.summary()


def check(acked: set[str], stored: StoredLog, applied: Applied, *, quiescent: bool = True) -> Verdict:
    """Compare acked ⊆ stored ⊆ applied, exactly once, with the checkpoint in agreement."""
    first_seq_of: dict[str, int] = {}  # ExperimentFinished event_id → first stream seq
    first_any: dict[tuple[str, str], int] = {}  # (kind, event_id) → first stream seq, all kinds
    for seq in sorted(stored.by_seq):
        _subject, kind, eid = stored.by_seq[seq]
        if kind is not None and eid is not None:
            first_any.setdefault((kind, eid), seq)
        if kind == "ExperimentFinished" and eid is not None:
            first_seq_of.setdefault(eid, seq)
    v = Verdict(
        acked=len(acked),
        stored=len(first_seq_of),
        applied=len(applied.experiments),
        checkpoint=applied.checkpoint,
        stream_last_seq=stored.last_seq,
    )
    v.lost_from_stream = sorted(acked - first_seq_of.keys())
    for eid, seq in first_seq_of.items():
        if seq > applied.checkpoint:
            continue
        got = applied.experiments.get(eid)
        if got is None:
            # An event that was dead-lettered (it failed validation) is accounted for, not lost.
            if seq not in applied.dead_letter_seqs:
                v.lost_from_db.append(eid)
        elif len(got) > 1:
            v.applied_twice.append(eid)
        elif got[0] != seq:
            v.wrong_seq.append(eid)
    for seq, (_subject, kind, eid) in stored.by_seq.items():
        if seq > applied.checkpoint:
            continue
        if seq in applied.row_seqs or seq in applied.dead_letter_seqs:
            continue
        if kind in _ROW_KINDS:
            if eid is not None and first_any.get((kind, eid), seq) != seq:
                continue  # a later copy of an event already applied: ignored by design
            v.unaccounted_seqs.append(seq)
    if quiescent and applied.checkpoint < stored.last_seq:
        v.checkpoint_behind = True
    return v


def load_event(agent: str, i: int, task: str) -> streams.ExperimentFinished:
    """The ``i``-th ExperimentFinished of load generator ``agent`` on ``task`` (id ``agent/run-i/finish``)."""
    return streams.ExperimentFinished(
        event_id=f"{agent}/run-{i}/finish",
        agent_id=agent,
        agent_type="researcher",
        task=task,
        run_id=f"run-{i}",
        recipe={"x1": round(random.uniform(-5, 10), 4), "x2": round(random.uniform(0, 15), 4)},
        seed=i % 1000,
        budget=1.0,
        metrics={"value": float(i % 13)},
        objective=float(i % 13),
        cost_s=0.01,
        status="ok",
        success=False,
    )


class AckedLoad:
    """Publishes ``ExperimentFinished`` events and records exactly those the stream acknowledged.

    Runs until :meth:`stop` (or ``count`` events), riding out server restarts: a publish that
    errors or times out is retried with the same ``event_id`` (so a lost ack that was in fact
    stored is deduplicated by the server or the projection, never counted as lost).
    """

    def __init__(self, url: str, *, agent: str = "load-1", count: int | None = None, **connect: Any) -> None:
        self.url = url
        self.agent = agent
        self.count = count
        self.connect = connect
        self.acked: set[str] = set()
        self.attempted = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def event(self, i: int) -> streams.ExperimentFinished:
        """The ``i``-th event of this load (deterministic ids)."""
        return load_event(self.agent, i, f"branin/{i % 7}")

    async def _run(self) -> None:
        nc = await streams.connect(self.url, name=f"acked-load-{self.agent}", **self.connect)
        try:
            js = nc.jetstream()
            pub = streams.Publisher(js)
            i = 0
            while not self._stop.is_set() and (self.count is None or i < self.count):
                ev = self.event(i)
                self.attempted = i + 1
                while not self._stop.is_set():
                    try:
                        await pub.publish(ev, timeout=2.0)
                    except Exception:
                        await asyncio.sleep(0.1)
                        continue
                    self.acked.add(ev.event_id)
                    break
                i += 1
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    def start(self) -> AckedLoad:
        """Start publishing in the background (in the running event loop)."""
        self._task = asyncio.ensure_future(self._run())
        return self

    async def stop(self) -> set[str]:
        """Stop publishing; return the acked event ids."""
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)
        return self.acked

    async def wait_done(self, timeout: float = 120) -> set[str]:
        """Wait until ``count`` events are acked (needs ``count``); return the acked ids."""
        assert self._task is not None
        await asyncio.wait_for(self._task, timeout)
        return self.acked
