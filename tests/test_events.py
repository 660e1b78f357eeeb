"""The event contract: strictness, bounds, upcasting, subjects, JSON Schema (pure, no server)."""

from __future__ import annotations

import math

import orjson
import pytest
from pydantic import ValidationError

import streams
from streams import DecodeError, ExperimentFinished, decode, encode

from .spine_helpers import finished


def test_events_are_frozen_and_forbid_extra_fields() -> None:
    """An event cannot be mutated and rejects unknown fields."""
    ev = finished(1)
    with pytest.raises(ValidationError):
        ev.status = "failed"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        ExperimentFinished(**{**ev.model_dump(), "surprise": 1})


def test_strict_types_and_no_nan() -> None:
    """Wrong types are not coerced, and NaN/inf are refused."""
    with pytest.raises(ValidationError):
        finished(1, seed="1")
    with pytest.raises(ValidationError):
        finished(1, objective=math.nan)
    with pytest.raises(ValidationError):
        finished(1, metrics={"value": math.inf})


def test_bounds_on_strings_lists_and_whole_message() -> None:
    """Over-long strings, too many recipe keys and oversize messages are refused."""
    with pytest.raises(ValidationError):
        finished(1, error="x" * 5000)
    with pytest.raises(ValidationError):
        finished(1, recipe={f"k{i}": 1 for i in range(65)})
    with pytest.raises(DecodeError, match="oversize"):
        decode(b" " * (streams.MAX_EVENT_BYTES + 1))


def test_round_trip_every_kind_through_its_example() -> None:
    """Every kind has a valid example that survives encode → decode unchanged."""
    for kind in streams.EVENTS_BY_KIND:
        ev = streams.example(kind)
        assert decode(encode(ev), streams.subject_for(ev)) == ev


def test_subjects_follow_the_design() -> None:
    """Traces, lifecycle and model events go to their documented subjects."""
    assert streams.subject_for(finished(1)) == "hive.traces.researcher.r-1"
    assert streams.subject_for(streams.example("AgentHeartbeat")) == "hive.agents.r-1.heartbeat"
    assert streams.subject_for(streams.example("ModelPublished")) == "hive.models.policy"


def test_agent_must_own_its_subject() -> None:
    """An event whose agent_id differs from the subject's agent token is refused."""
    data = encode(finished(1, agent="r-1"))
    with pytest.raises(DecodeError, match="does not own subject"):
        decode(data, "hive.traces.researcher.r-2")


def test_old_version_is_upcast_on_read() -> None:
    """An ExperimentFinished v1 (``cost``, no ``proposer``) is read as the current version."""
    d = orjson.loads(encode(finished(3)))
    d["schema_version"] = 1
    d["cost"] = d.pop("cost_s")
    d.pop("proposer")
    ev = decode(orjson.dumps(d))
    assert isinstance(ev, ExperimentFinished) and ev.schema_version == 2 and ev.cost_s == 0.01


def test_deployment_v1_is_read_as_measured_against_the_baseline() -> None:
    """A DeploymentFinished v1 (``baseline_objective``) is read as v2 with reference ``baseline``."""
    d = orjson.loads(encode(streams.example("DeploymentFinished")))
    for key in ("reference", "reference_recipe", "reference_objective", "proposer"):
        d.pop(key)
    d.update(schema_version=1, baseline_objective=3.1, model_version=0)
    ev = decode(orjson.dumps(d))
    assert isinstance(ev, streams.DeploymentFinished) and ev.schema_version == 2
    assert (ev.reference, ev.reference_objective, ev.reference_recipe) == ("baseline", 3.1, None)
    assert ev.proposer == "best-known"


def test_unknown_version_and_kind_have_clear_reasons() -> None:
    """Unknown versions and kinds are refused with a reason naming them."""
    d = orjson.loads(encode(finished(3)))
    with pytest.raises(DecodeError, match="unknown schema_version 9"):
        decode(orjson.dumps({**d, "schema_version": 9}))
    with pytest.raises(DecodeError, match="unknown kind 'Nope'"):
        decode(orjson.dumps({**d, "kind": "Nope"}))
    with pytest.raises(DecodeError, match="bad JSON"):
        decode(b"{not json")


def test_json_schema_covers_every_kind() -> None:
    """The exported JSON Schema names every event kind, for publishers in other languages."""
    schema = orjson.dumps(streams.json_schema()).decode()
    for kind in streams.EVENTS_BY_KIND:
        assert kind in schema
