"""The event contract: every message on the hive log is one of these frozen, versioned models.

Rules (the contract other languages rely on, exported as JSON Schema by ``hive schema``):

* names are past tense; each class has a ``kind`` literal and a ``schema_version`` literal;
* models are frozen, ``extra="forbid"``, strict, and reject NaN/inf;
* every string, list and mapping is bounded, and a whole encoded event is at most
  :data:`MAX_EVENT_BYTES`;
* every integer, wherever it appears (envelope, payload, recipe values), fits in a signed 64-bit
  integer (:data:`Int64`), so DuckDB, Arrow and other languages can hold it, and every timestamp
  is representable in UTC;
* ``event_id`` is natural and deterministic where possible (``agent/run/step``), so a retried
  publish is deduplicated by the server (``Nats-Msg-Id``) and by the projection.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

MAX_EVENT_BYTES = 64 * 1024
"""Upper bound of one encoded event, in bytes."""

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
"""Any integer in an event: signed 64 bits (what DuckDB's BIGINT and Arrow's int64 hold).

Fields with their own bounds use :data:`Count`, :data:`Positive` or an explicit
``Field(ge=…, le=…)`` *instead* (a field-level ``ge`` would be overridden by this one's)."""
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]
"""A non-negative 64-bit integer (counts, sizes, sequences, versions where 0 means none)."""
Positive = Annotated[int, Field(ge=1, le=INT64_MAX)]
"""A positive 64-bit integer (model versions)."""


def _utc_representable(value: datetime) -> datetime:
    """Refuse a timestamp whose UTC time falls outside years 1-9999 (readers could not load it)."""
    if value.tzinfo is not None:
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise ValueError("timestamp out of range once converted to UTC") from None
    return value


Timestamp = Annotated[datetime, AfterValidator(_utc_representable)]
"""When an event happened, by the producer's clock (ISO 8601; naive values are read as UTC)."""

Name = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
"""An identifier that is also a single NATS subject token (no dots, spaces or wildcards)."""
EventId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_./:=-]+$")]
TaskSpec = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9_.:-]+(/[A-Za-z0-9_.:-]+)?(,[A-Za-z0-9_.:-]+(/[A-Za-z0-9_.:-]+)?)*$",
    ),
]
"""What an agent was started on: one task instance, a range (``hartmann6/0-31``) or a comma list
of them (``hartmann6/0,hartmann6/3-5``): a campaign (``agents.parse_campaign``)."""
TaskRef = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+(/[A-Za-z0-9_.:-]+)?$")
]
"""A task instance: ``family/index`` (``hartmann6/17``) or a single-instance task (``charlm``)."""
Text = Annotated[str, StringConstraints(max_length=4000)]
ShortText = Annotated[str, StringConstraints(max_length=200)]
Key = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


def _refuse_big_int(value: Any) -> Any:
    """Refuse an integer outside signed 64 bits before a union could read it as a float."""
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"integer out of the signed 64-bit range [{INT64_MIN}, {INT64_MAX}]")
    return value


Scalar = Annotated[
    bool | Int64 | float | Annotated[str, StringConstraints(max_length=200)], BeforeValidator(_refuse_big_int)
]
"""A recipe value: a flag, a 64-bit integer, a finite float or a short string."""
Recipe = Annotated[dict[Key, Scalar], Field(max_length=64)]
"""A proposed training recipe: knob name → value (the task's search space validates it)."""
Metrics = Annotated[dict[Key, float], Field(max_length=64)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Status = Literal["ok", "failed", "timeout"]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the only clock events use)."""
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of every hive event: the envelope.

    Subclasses set ``kind`` and ``schema_version`` as literals and add their payload fields.
    ``CHANNEL`` says which subject family the event is published on (see ``streams.subject_for``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)
    CHANNEL: ClassVar[Literal["traces", "agents", "models"]] = "traces"

    event_id: EventId
    schema_version: Int64
    kind: str
    agent_id: Name
    agent_type: Name
    occurred_at: Timestamp = Field(default_factory=utcnow)


class TraceEvent(Event):
    """An event that records work: it names the task instance and the model version behind it.

    ``model_version`` 0 means "no shared model yet" (a prior or mutation proposed the action).
    """

    task: TaskRef
    model_version: Count = 0


class ExperimentStarted(TraceEvent):
    """An agent claimed a recipe on a task instance and started running it."""

    kind: Literal["ExperimentStarted"] = "ExperimentStarted"
    schema_version: Literal[1] = 1
    run_id: Name
    parent_id: EventId | None = None
    recipe: Recipe
    seed: int = Field(ge=0, le=2**31 - 1)
    budget: float = Field(gt=0, le=1e12)
    deadline_s: float = Field(
        gt=0, le=7 * 24 * 3600, description="seconds after which it counts as abandoned"
    )


class ExperimentFinished(TraceEvent):
    """An experiment ended: its recipe, metrics, cost, outcome and whether it beat its parent.

    ``objective`` is the task's metric in the task's direction-neutral form (lower is better).
    ``success`` is judged against the noise floor of replicated baselines, not one lucky seed.
    ``proposer`` names the arm the recipe came from (``mutation``, ``prior``, ``tpe``,
    ``model-v3``, ``baseline``, ``random``) and ``proposer_reason`` why the portfolio chose it
    (e.g. its sampled improvement rate), so every trace says where its recipe came from.

    v1 called the cost ``cost`` and had no ``proposer``; v2 had no ``proposer_reason``.
    """

    kind: Literal["ExperimentFinished"] = "ExperimentFinished"
    schema_version: Literal[3] = 3
    run_id: Name
    parent_id: EventId | None = None
    recipe: Recipe
    seed: int = Field(ge=0, le=2**31 - 1)
    budget: float = Field(gt=0, le=1e12)
    metrics: Metrics = Field(default_factory=dict)
    objective: float | None = None
    cost_s: float = Field(ge=0, le=1e9)
    status: Status
    error: Text | None = None
    success: bool | None = None
    proposer: Annotated[str, StringConstraints(max_length=32)] = "prior"
    proposer_reason: ShortText | None = None


class DeploymentFinished(TraceEvent):
    """A one-shot use of the shared model on a new task instance, measured against a reference.

    The reference is what the swarm would deploy without this proposal: the family's incumbent
    (its best-known recipe, ``reference="incumbent"``) or, while none is known, the task's
    baseline (``"baseline"``). Both run on the same instance with the same seed;
    ``success`` says whether the proposal beat the reference by more than the noise floor.
    ``proposer`` is ``"model"`` (the shared model) or ``"mutation"`` (no model yet).
    ``reference_task`` and ``reference_score`` say where the incumbent came from and how good it
    was there, so a reader can tell later whether it has been superseded.

    v1 had ``baseline_objective`` (always against the task's baseline) and no reference fields.
    """

    kind: Literal["DeploymentFinished"] = "DeploymentFinished"
    schema_version: Literal[2] = 2
    run_id: Name
    recipe: Recipe
    metrics: Metrics = Field(default_factory=dict)
    objective: float | None = None
    reference: Literal["incumbent", "baseline"] = "baseline"
    reference_recipe: Recipe | None = None
    reference_objective: float | None = None
    reference_task: TaskRef | None = None
    """The researched instance the incumbent is the best recipe of (None for a baseline)."""
    reference_score: float | None = None
    """The incumbent's objective on ``reference_task`` when it was chosen (its own standard)."""
    cost_s: float = Field(ge=0, le=1e9)
    status: Status
    error: Text | None = None
    success: bool | None = None
    proposer: Annotated[str, StringConstraints(max_length=32)] = "model"


class GuidancePublished(TraceEvent):
    """Advice distilled from traces (e.g. by the analyst) that proposers read before proposing.

    ``avoid`` lists recipe regions to stay out of (knob → bound or value, as text);
    ``hint`` is free text for the prompt.
    """

    kind: Literal["GuidancePublished"] = "GuidancePublished"
    schema_version: Literal[1] = 1
    topic: ShortText
    avoid: Annotated[dict[Key, ShortText], Field(max_length=32)] = Field(default_factory=dict)
    hint: Text = ""
    evidence: Count = 0


class AgentStarted(Event):
    """An agent process came up; ``task`` is what it was started on (an instance or a campaign).

    v1's ``task`` was one instance only (a v1 event reads unchanged as v2)."""

    CHANNEL: ClassVar[Literal["traces", "agents", "models"]] = "agents"
    kind: Literal["AgentStarted"] = "AgentStarted"
    schema_version: Literal[2] = 2
    host: ShortText = ""
    pid: Count = 0
    task: TaskSpec | None = None
    heartbeat_s: float = Field(default=5.0, gt=0, le=3600)


class AgentHeartbeat(Event):
    """An agent is alive; ``state`` says what it is doing."""

    CHANNEL: ClassVar[Literal["traces", "agents", "models"]] = "agents"
    kind: Literal["AgentHeartbeat"] = "AgentHeartbeat"
    schema_version: Literal[1] = 1
    state: ShortText = "idle"
    model_version: Count = 0
    experiments: Count = 0


class AgentStopped(Event):
    """An agent shut down cleanly (a crash leaves no such event: liveness shows it dead)."""

    CHANNEL: ClassVar[Literal["traces", "agents", "models"]] = "agents"
    kind: Literal["AgentStopped"] = "AgentStopped"
    schema_version: Literal[1] = 1
    reason: ShortText = "stopped"


class ModelPublished(Event):
    """The distiller promoted a model version; agents fetch it from the Object Store."""

    CHANNEL: ClassVar[Literal["traces", "agents", "models"]] = "models"
    kind: Literal["ModelPublished"] = "ModelPublished"
    schema_version: Literal[1] = 1
    name: Name = "policy"
    version: Positive
    parent_version: Count = 0
    sha256: Sha256
    size: Count
    trained_through_seq: Count = 0
    dataset_size: Count = 0
    eval: Metrics = Field(default_factory=dict)
    signature: Annotated[str, StringConstraints(max_length=200)] = ""


class ModelRejected(Event):
    """The gate kept the champion: a candidate did not beat it on the held-out set."""

    CHANNEL: ClassVar[Literal["traces", "agents", "models"]] = "models"
    kind: Literal["ModelRejected"] = "ModelRejected"
    schema_version: Literal[1] = 1
    name: Name = "policy"
    candidate: Positive
    champion_version: Count = 0
    trained_through_seq: Count = 0
    dataset_size: Count = 0
    eval: Metrics = Field(default_factory=dict)
    reason: ShortText = ""


EVENT_TYPES: tuple[type[Event], ...] = (
    ExperimentStarted,
    ExperimentFinished,
    DeploymentFinished,
    GuidancePublished,
    AgentStarted,
    AgentHeartbeat,
    AgentStopped,
    ModelPublished,
    ModelRejected,
)
"""Every event class, in one place."""

EVENTS_BY_KIND: dict[str, type[Event]] = {cls.model_fields["kind"].default: cls for cls in EVENT_TYPES}

AnyEvent = Annotated[
    ExperimentStarted
    | ExperimentFinished
    | DeploymentFinished
    | GuidancePublished
    | AgentStarted
    | AgentHeartbeat
    | AgentStopped
    | ModelPublished
    | ModelRejected,
    Field(discriminator="kind"),
]


def current_version(kind: str) -> int:
    """The schema version this code writes for ``kind``."""
    return int(EVENTS_BY_KIND[kind].model_fields["schema_version"].default)


SUBJECT_PATTERNS: dict[str, str] = {
    "traces": "hive.traces.{agent_type}.{agent_id}",
    "agents": "hive.agents.{agent_id}.{lifecycle}",
    "models": "hive.models.{name}",
}
"""The subject each channel's events are published on (``streams.subject_for`` fills these in);
``{lifecycle}`` is ``started``, ``heartbeat`` or ``stopped`` (the kind without ``Agent``)."""

MSG_ID_RULE = (
    "Header Nats-Msg-Id = event_id on every publish. The server drops a second message with the "
    "same id inside its duplicate window (120 s) and the materializer ignores a repeated event_id "
    "forever, so make ids deterministic within one process run (a retry dedupes) and unique across "
    "runs: {agent_id}/{incarnation token}/{step}."
)
"""The ``Nats-Msg-Id`` rule, as ``hive schema`` states it (``x-msg-id``)."""

QUERY_CONTRACT: dict[str, Any] = {
    "subject": "hive.query.sql",
    "request": {
        "sql": "one plain SELECT (string, at most 100,000 characters)",
        "params": "list of scalars binding ? placeholders (at most 1,000; optional)",
        "timeout_s": "number in (0, 300] (optional, default 10)",
        "max_rows": "integer in (0, 1000000] (optional, default 10000)",
    },
    "reply": {
        "columns": "list of column names",
        "types": "list of DuckDB type names",
        "rows": "list of rows (lists); BLOBs as base64 text",
        "truncated": "true when max_rows cut the result",
        "elapsed_ms": "number",
    },
    "error_reply": {"error": "why the query was refused, failed or cut off"},
    "status_subject": "hive.query.status",
}
"""The read-only SQL service's request/reply contract (``x-query`` in ``hive schema``)."""


def subject_pattern(cls: type[Event]) -> str:
    """The subject pattern of an event class, e.g. ``hive.agents.{agent_id}.heartbeat``."""
    pattern = SUBJECT_PATTERNS[cls.CHANNEL]
    kind = cls.model_fields["kind"].default
    return pattern.replace("{lifecycle}", str(kind).removeprefix("Agent").lower())


def json_schema() -> dict[str, Any]:
    """JSON Schema of all events (a ``oneOf`` keyed by ``kind``), for publishers in other languages.

    Each event type carries ``x-subject`` (where to publish it) and ``x-msg-id`` (the
    ``Nats-Msg-Id`` rule); the top level carries ``x-query``, the SQL service's contract."""
    from pydantic import TypeAdapter

    schema = TypeAdapter(AnyEvent).json_schema()
    schema["title"] = "hive event"
    schema["description"] = (
        f"One event on the hive log. Encoded as UTF-8 JSON, at most {MAX_EVENT_BYTES} bytes, on the "
        "stream HIVE; publish each type on its x-subject with the x-msg-id header rule. "
        "The protocol for other languages: docs/protocol.md."
    )
    for cls in EVENTS_BY_KIND.values():
        entry = schema["$defs"][cls.__name__]
        entry["x-subject"] = subject_pattern(cls)
        entry["x-msg-id"] = MSG_ID_RULE
    schema["x-query"] = QUERY_CONTRACT
    return schema
