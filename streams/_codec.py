"""Encoding and decoding events, with upcasting of old schema versions.

Decoding is the single gate between raw bytes on the log and typed events: it either returns a
valid event or raises :class:`DecodeError` whose ``reason`` goes to the dead-letter table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from ._events import EVENTS_BY_KIND, MAX_EVENT_BYTES, AnyEvent, Event, current_version
from ._subjects import subject_agent, subject_for

_ADAPTER: TypeAdapter[Event] = TypeAdapter(AnyEvent)

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
UPCASTERS: dict[tuple[str, int], Upcaster] = {}
"""``(kind, from_version) -> fn``: a pure function turning version N's dict into version N+1's."""


class DecodeError(ValueError):
    """A message that is not a valid event; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def upcaster(kind: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a pure function that upgrades ``kind`` from ``from_version`` to the next version."""

    def register(fn: Upcaster) -> Upcaster:
        UPCASTERS[(kind, from_version)] = fn
        return fn

    return register


@upcaster("ExperimentFinished", 1)
def _experiment_finished_v1(d: dict[str, Any]) -> dict[str, Any]:
    """v1 called the cost ``cost`` and had no ``proposer``."""
    d = dict(d)
    d["cost_s"] = d.pop("cost", 0.0)
    d["schema_version"] = 2
    return d


@upcaster("ExperimentFinished", 2)
def _experiment_finished_v2(d: dict[str, Any]) -> dict[str, Any]:
    """v2 had no ``proposer_reason`` (nothing recorded why the proposer was chosen)."""
    d = dict(d)
    d["proposer_reason"] = None
    d["schema_version"] = 3
    return d


@upcaster("AgentStarted", 1)
def _agent_started_v1(d: dict[str, Any]) -> dict[str, Any]:
    """v1's ``task`` was one instance, which v2 (instance or campaign) reads as is."""
    return {**d, "schema_version": 2}


@upcaster("DeploymentFinished", 1)
def _deployment_finished_v1(d: dict[str, Any]) -> dict[str, Any]:
    """v1 always measured against the task's baseline and had no proposer field."""
    d = dict(d)
    d["reference"] = "baseline"
    d["reference_objective"] = d.pop("baseline_objective", None)
    d["proposer"] = "model" if d.get("model_version") else "best-known"
    d["schema_version"] = 2
    return d


def encode(event: Event) -> bytes:
    """Serialize an event to its wire form (compact UTF-8 JSON)."""
    return event.__pydantic_serializer__.to_json(event)


MAX_REASON_CHARS = 2000
"""Upper bound of a dead-letter reason; every error is listed until this bound is reached."""
_MAX_ERROR_CHARS = 240


def _all_errors(exc: ValidationError) -> str:
    """Every validation error as ``loc: msg``, joined, bounded to :data:`MAX_REASON_CHARS`."""
    errors = exc.errors(include_url=False, include_input=False)
    out = f"invalid event ({len(errors)} error{'s' if len(errors) != 1 else ''}): "
    for i, err in enumerate(errors):
        loc = ".".join(str(p) for p in err["loc"]) or "<event>"
        item = f"{loc}: {err['msg']}"
        if len(item) > _MAX_ERROR_CHARS:
            item = item[: _MAX_ERROR_CHARS - 1] + "…"
        sep = "; " if i else ""
        rest = len(errors) - i
        tail = f"; … and {rest} more"
        if len(out) + len(sep) + len(item) + len(tail) > MAX_REASON_CHARS and rest > 1:
            return out + tail
        out += sep + item
    return out


def decode(data: bytes, subject: str | None = None) -> Event:
    """Decode and validate one message; upcast old versions; check the subject owner.

    Raises :class:`DecodeError` for bad JSON, oversize messages, wrong types, extra fields,
    NaN/inf, unknown kinds or versions, and an event read from any subject other than its own
    (``subject_for(event)``: so an ``agent_id`` that does not own the subject is refused, and so
    is an event relayed onto the log through some other subject).
    """
    if len(data) > MAX_EVENT_BYTES:
        raise DecodeError(f"oversize: {len(data)} bytes > {MAX_EVENT_BYTES}")
    try:
        try:
            event = _ADAPTER.validate_json(data)
        except ValidationError as exc:
            event = _decode_slow(data, exc)
    except DecodeError:
        raise
    except Exception as e:  # whatever the bytes make a validator do, it is this message's fault
        raise DecodeError(f"undecodable: {type(e).__name__}: {str(e)[:_MAX_ERROR_CHARS]}") from None
    if subject is not None:
        expected = subject_for(event)
        if subject != expected:
            owner = subject_agent(subject)
            if owner is not None and owner != event.agent_id:
                raise DecodeError(f"agent_id {event.agent_id!r} does not own subject {subject!r}")
            raise DecodeError(f"{event.kind} of {event.agent_id!r} belongs on {expected!r}, not {subject!r}")
    return event


def _decode_slow(data: bytes, exc: ValidationError) -> Event:
    """Diagnose a message the fast path refused: bad JSON, unknown kind/version, or upcast."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise DecodeError(f"bad JSON: {e}") from None
    if not isinstance(raw, dict):
        raise DecodeError(f"bad JSON: expected an object, got {type(raw).__name__}")
    kind = raw.get("kind")
    if not isinstance(kind, str) or kind not in EVENTS_BY_KIND:
        raise DecodeError(f"unknown kind {str(kind)[:64]!r}")
    latest = current_version(kind)
    # As in the schema, schema_version defaults to the current version: an event without one is
    # judged as current, so its reason names its real errors. A non-integer one is among them.
    version = raw.get("schema_version", latest)
    if version == latest or not isinstance(version, int) or isinstance(version, bool):
        raise DecodeError(_all_errors(exc))
    if version > latest or (kind, version) not in UPCASTERS:
        raise DecodeError(
            f"unknown schema_version {str(version)[:40]} for {kind} (this reader knows {latest})"
        )
    original = version
    while version < latest:
        step = UPCASTERS.get((kind, version))
        if step is None:
            raise DecodeError(f"no upcaster for {kind} v{version}")
        raw = step(raw)
        version = raw["schema_version"]
    try:
        return _ADAPTER.validate_json(orjson.dumps(raw))
    except ValidationError as e2:
        raise DecodeError(f"after upcasting from v{original}: " + _all_errors(e2)) from None
    except orjson.JSONEncodeError as e3:
        raise DecodeError(f"bad JSON: {e3}") from None
