"""Pure projections: a batch of log messages in, rows per table out. No I/O, no clock, no randomness.

Replaying the same messages always gives the same rows, which is what makes rebuild-by-replay
reproduce incremental ingestion exactly. The materializer turns :class:`Rows` into Arrow tables
and applies them in one transaction with the checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams import DecodeError, Event, FastEvent, LogEntry, decode, fast_decode

TABLES = (
    "experiment_starts",
    "experiments",
    "deployments",
    "guidance",
    "agents",
    "models",
    "dead_letters",
)
"""The projected tables (what users query)."""

BATCH_TABLES = (
    "experiment_starts",
    "experiments",
    "deployments",
    "guidance",
    "agent_events",
    "models",
    "dead_letters",
)
"""What :class:`Rows` holds: the tables' rows, with ``agent_events`` (one row per agent lifecycle
event) in place of ``agents``, which the store folds from them (so that the fold sees every event
of the batch, whatever the batching)."""

_TABLE_OF_KIND = {
    "ExperimentStarted": "experiment_starts",
    "ExperimentFinished": "experiments",
    "DeploymentFinished": "deployments",
    "GuidancePublished": "guidance",
    "AgentStarted": "agent_events",
    "AgentHeartbeat": "agent_events",
    "AgentStopped": "agent_events",
    "ModelPublished": "models",
    "ModelRejected": "models",
}
"""Where each kind's rows go: an ``event_id`` is unique per table, within a batch as across them."""

Row = tuple[Any, ...]
Decoded = Event | FastEvent
"""A decoded event: the pydantic model, or the fast struct with the same attributes and values."""
FAST_DECODE = os.environ.get("HIVE_FAST_DECODE", "1") != "0"
"""Whether :func:`decode_batch` tries ``streams.fast_decode`` first (``HIVE_FAST_DECODE=0``: pydantic
only; the verdicts are the same either way, only the speed differs)."""
_AGENT_KINDS = frozenset({"AgentStarted", "AgentHeartbeat", "AgentStopped"})


@dataclass
class Rows:
    """The rows one batch projects to: table name (:data:`BATCH_TABLES`) → row tuples in the
    table's column order (``hive._schema.ARROW``), plus the last sequence the batch covers."""

    last_seq: int = 0
    tables: dict[str, list[Row]] = field(default_factory=lambda: {t: [] for t in BATCH_TABLES})

    def __getitem__(self, table: str) -> list[Row]:
        return self.tables[table]

    def nonempty(self) -> dict[str, list[Row]]:
        """Table name → rows, for the tables this batch touches."""
        return {t: rows for t, rows in self.tables.items() if rows}


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def decode_batch(messages: list[LogEntry]) -> tuple[list[tuple[LogEntry, Decoded]], list[Row]]:
    """Decode every message; invalid ones become dead-letter rows with the reason and raw bytes.

    Valid current-version events come back as ``streams``' fast structs (same attributes and
    values as the models; :func:`project` reads either); everything else is decided by
    :func:`streams.decode`, so what is refused, and why, is exactly what ``decode`` says.

    Within a batch, a repeated ``event_id`` keeps its first occurrence (the log order) in the
    table its kind writes to: the same rule the tables' keys apply across batches.
    """
    good: list[tuple[LogEntry, Decoded]] = []
    dead: list[Row] = []
    seen: set[tuple[str, str]] = set()
    for m in messages:
        # The fast path returns an event only where ``decode`` would accept it, with equal fields.
        ev: Any = fast_decode(m.data, m.subject) if FAST_DECODE else None
        if ev is None:
            try:
                ev = decode(m.data, m.subject)
            except DecodeError as e:
                dead.append(dead_letter(m, e.reason))
                continue
        key = (_TABLE_OF_KIND[ev.kind], ev.event_id)
        if key in seen:
            continue
        seen.add(key)
        good.append((m, ev))
    return good, dead


def dead_letter(m: LogEntry, reason: str) -> Row:
    """The ``dead_letters`` row of a message: its sequence, subject, reason and raw bytes."""
    return (m.seq, m.subject, reason, m.data, m.logged_at)


def project(good: list[tuple[LogEntry, Decoded]], dead: list[Row], last_seq: int) -> Rows:
    """Project decoded events of one batch to rows; deterministic in its inputs.

    Every table is keyed by ``event_id`` (or ``seq`` for dead letters) and inserted with "ignore
    if present", so re-applying an event (a retry published after the duplicate window) changes
    nothing. Agent lifecycle events become one ``agent_events`` row each (None = "no news" for a
    column); the store folds them into ``agents`` by a rule that does not depend on batching:
    ``last_seen`` is the latest ``occurred_at`` of all the agent's events, every other column the
    value of its highest-sequence event that sets it.
    """
    rows = Rows(last_seq=last_seq)
    t = rows.tables
    t["dead_letters"].extend(dead)
    for m, decoded in good:
        ev: Any = decoded  # a model or its fast struct: the same attributes
        kind = ev.kind
        if kind == "ExperimentFinished":
            t["experiments"].append(
                (
                    *_run_columns(m.seq, ev),
                    _json(ev.metrics),
                    ev.objective,
                    ev.cost_s,
                    ev.status,
                    ev.error,
                    ev.success,
                    ev.proposer,
                    ev.occurred_at,
                    ev.proposer_reason,
                )
            )
        elif kind == "ExperimentStarted":
            t["experiment_starts"].append((*_run_columns(m.seq, ev), ev.deadline_s, ev.occurred_at))
        elif kind == "DeploymentFinished":
            t["deployments"].append(
                (
                    ev.event_id,
                    m.seq,
                    ev.agent_id,
                    ev.agent_type,
                    ev.task,
                    ev.model_version,
                    ev.run_id,
                    _json(ev.recipe),
                    _json(ev.metrics),
                    ev.objective,
                    ev.reference,
                    None if ev.reference_recipe is None else _json(ev.reference_recipe),
                    ev.reference_objective,
                    ev.reference_task,
                    ev.reference_score,
                    ev.cost_s,
                    ev.status,
                    ev.error,
                    ev.success,
                    ev.proposer,
                    ev.occurred_at,
                )
            )
        elif kind == "GuidancePublished":
            t["guidance"].append(
                (
                    ev.event_id,
                    m.seq,
                    ev.agent_id,
                    ev.agent_type,
                    ev.task,
                    ev.model_version,
                    ev.topic,
                    _json(ev.avoid),
                    ev.hint,
                    ev.evidence,
                    ev.occurred_at,
                )
            )
        elif kind in _AGENT_KINDS:
            t["agent_events"].append((ev.event_id, *_agent_row(m.seq, ev)))
        elif kind == "ModelPublished":
            t["models"].append(
                (
                    ev.event_id,
                    m.seq,
                    "published",
                    ev.name,
                    ev.version,
                    ev.parent_version,
                    ev.sha256,
                    ev.size,
                    ev.trained_through_seq,
                    ev.dataset_size,
                    _json(ev.eval),
                    ev.signature,
                    None,
                    ev.agent_id,
                    ev.occurred_at,
                )
            )
        elif kind == "ModelRejected":
            t["models"].append(
                (
                    ev.event_id,
                    m.seq,
                    "rejected",
                    ev.name,
                    ev.candidate,
                    ev.champion_version,
                    None,
                    None,
                    ev.trained_through_seq,
                    ev.dataset_size,
                    _json(ev.eval),
                    None,
                    ev.reason,
                    ev.agent_id,
                    ev.occurred_at,
                )
            )
    return rows


def _run_columns(seq: int, ev: Any) -> Row:
    """The columns experiment_starts and experiments share, in their order."""
    return (
        ev.event_id,
        seq,
        f"{ev.agent_id}/{ev.run_id}",
        ev.agent_id,
        ev.agent_type,
        ev.task,
        ev.model_version,
        ev.run_id,
        ev.parent_id,
        _json(ev.recipe),
        ev.seed,
        ev.budget,
    )


def _agent_row(seq: int, ev: Any) -> list[Any]:
    """agent_id, agent_type, seq, host, pid, task, heartbeat_s, started_at, last_seen, state,
    model_version, experiments, stopped_at, stop_reason (None = unchanged), of an agent
    lifecycle event (a model or its fast struct)."""
    row: list[Any] = [ev.agent_id, ev.agent_type, seq] + [None] * 11
    row[8] = ev.occurred_at
    if ev.kind == "AgentStarted":
        row[3:8] = [ev.host, ev.pid, ev.task, ev.heartbeat_s, ev.occurred_at]
        row[9] = "started"
    elif ev.kind == "AgentHeartbeat":
        row[9:12] = [ev.state, ev.model_version, ev.experiments]
    else:
        row[9] = "stopped"
        row[12:14] = [ev.occurred_at, ev.reason]
    return row
