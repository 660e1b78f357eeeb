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
    assert isinstance(ev, ExperimentFinished) and ev.schema_version == 3 and ev.cost_s == 0.01


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


INT64_MAX = 2**63 - 1


def _integer_nodes(node: object, path: str = "") -> list[tuple[str, dict[str, object]]]:
    """Every sub-schema of a JSON Schema that admits integers, with where it is."""
    found: list[tuple[str, dict[str, object]]] = []
    if isinstance(node, dict):
        if node.get("type") == "integer":
            found.append((path, node))
        for key, value in node.items():
            found += _integer_nodes(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _integer_nodes(value, f"{path}/{i}")
    return found


def test_every_integer_in_the_json_schema_is_bounded_to_64_bits() -> None:
    """The exported schema bounds every integer (envelope, payload, recipe values) to signed 64 bits."""
    nodes = _integer_nodes(streams.json_schema())
    assert len(nodes) > 20
    for path, node in nodes:
        if "const" in node:
            continue  # a literal (schema_version) is its own bound
        lo, hi = node.get("minimum"), node.get("maximum")
        assert isinstance(lo, int) and lo >= -(2**63), f"{path} has no 64-bit minimum: {node}"
        assert isinstance(hi, int) and hi <= INT64_MAX, f"{path} has no 64-bit maximum: {node}"


def _heartbeat(**fields: object) -> bytes:
    d = orjson.loads(encode(streams.example("AgentHeartbeat")))
    d.update(fields)
    return orjson.dumps(d)


def _raw_with(fields: dict[str, str], base: streams.Event | None = None) -> bytes:
    """``base`` encoded with some fields replaced by raw JSON text (for numbers orjson cannot write)."""
    d = orjson.loads(encode(base or finished(1)))
    marks = {}
    for i, (key, literal) in enumerate(fields.items()):
        d[key] = f"@@{i}@@"
        marks[f'"@@{i}@@"'] = literal
    out = orjson.dumps(d).decode()
    for mark, literal in marks.items():
        out = out.replace(mark, literal)
    return out.encode()


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"experiments": str(2**70)}, "experiments"),
        ({"model_version": str(2**63)}, "model_version"),
        ({"experiments": str(2**63), "model_version": str(-(2**64))}, "experiments"),
    ],
)
def test_integers_beyond_64_bits_are_refused_in_a_heartbeat(fields: dict[str, str], where: str) -> None:
    """An agent heartbeat carrying an integer outside signed 64 bits is refused, naming the field;
    the largest 64-bit value still passes."""
    data = _raw_with(fields, streams.example("AgentHeartbeat"))
    with pytest.raises(DecodeError, match=where):
        decode(data)
    edge = decode(_raw_with(dict.fromkeys(fields, str(INT64_MAX)), streams.example("AgentHeartbeat")))
    assert isinstance(edge, streams.AgentHeartbeat) and edge.experiments in (12, INT64_MAX)


@pytest.mark.parametrize("literal", [str(2**70), str(2**63), str(-(2**63) - 1), "1" + "0" * 400])
def test_integers_beyond_64_bits_are_refused_in_a_recipe(literal: str) -> None:
    """A recipe value that is an integer beyond 64 bits is refused (not read as a lossy float)."""
    good = orjson.loads(encode(finished(1)))
    recipe = orjson.dumps({**good["recipe"], "n_layer": "@@"}).decode().replace('"@@"', literal)
    data = _raw_with({"recipe": recipe})
    with pytest.raises(DecodeError, match=r"recipe|bad JSON"):
        decode(data)


def test_recipe_edges_pass_and_field_bounds_hold_while_huge_ints_fail() -> None:
    """64-bit edge values in a recipe pass and fields keep their own lower bounds (≥ 0, ≥ 1),
    while one integer past the edge in the same recipe is refused."""
    recipe = finished(1, recipe={"a": INT64_MAX, "b": -(2**63), "c": True, "d": 0.5, "e": "x"})
    assert decode(encode(recipe)) == recipe
    with pytest.raises(DecodeError, match="experiments"):
        decode(_raw_with({"experiments": "-1"}, streams.example("AgentHeartbeat")))
    with pytest.raises(ValidationError):
        streams.ModelPublished(**{**streams.example("ModelPublished").model_dump(), "version": 0})
    with pytest.raises(ValidationError):
        finished(1, recipe={"a": INT64_MAX + 1})


def test_a_timestamp_outside_utc_years_is_refused() -> None:
    """An occurred_at that lands outside years 1-9999 in UTC is refused (readers could not load it)."""
    for ts in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+01:00"):
        with pytest.raises(DecodeError, match="occurred_at"):
            decode(_raw_with({"occurred_at": f'"{ts}"'}))


def test_missing_schema_version_is_read_as_current_and_reasons_name_the_real_errors() -> None:
    """Without schema_version an event is judged as the current version (the schema's default):
    a valid one decodes, an invalid one's reason names its actual errors."""
    ev = finished(1)
    d = orjson.loads(encode(ev))
    del d["schema_version"]
    assert decode(orjson.dumps(d)) == ev
    d["seed"] = "7"
    with pytest.raises(DecodeError) as err:
        decode(orjson.dumps(d))
    assert "seed" in err.value.reason and "schema_version" not in err.value.reason


def test_dead_letter_reason_lists_every_error_within_a_bound() -> None:
    """A reason lists every validation error (no "+N more"), and a flood of errors stays bounded."""
    d = orjson.loads(encode(finished(1)))
    d.update(seed="7", budget="x", status="maybe")
    with pytest.raises(DecodeError) as err:
        decode(orjson.dumps(d))
    for field in ("seed", "budget", "status"):
        assert field in err.value.reason
    assert "more)" not in err.value.reason
    d = orjson.loads(encode(finished(1)))
    d["recipe"] = {f"k{i}": [i] for i in range(64)}
    d["metrics"] = {f"m{i}": "x" for i in range(64)}
    with pytest.raises(DecodeError) as err:
        decode(orjson.dumps(d))
    assert len(err.value.reason) <= 2000 and "more" in err.value.reason
    assert "recipe.k0" in err.value.reason


def test_experiment_finished_v2_is_upcast_to_v3_without_a_reason() -> None:
    """An ExperimentFinished v2 (no ``proposer_reason``) reads as v3 with the reason None and
    every other field kept; a v3 event keeps its reason through encode → decode."""
    current = streams.example("ExperimentFinished")
    assert isinstance(current, ExperimentFinished) and current.proposer_reason
    d = orjson.loads(encode(current))
    d["schema_version"] = 2
    d.pop("proposer_reason")
    ev = decode(orjson.dumps(d), streams.subject_for(current))
    assert isinstance(ev, ExperimentFinished) and ev.schema_version == 3
    assert ev.proposer_reason is None and ev.proposer == current.proposer and ev.recipe == current.recipe
    assert decode(encode(current)) == current


def test_agent_started_names_a_campaign_or_an_instance() -> None:
    """AgentStarted v2 carries a campaign spec (range or comma list); v1 (one instance) reads
    as v2 unchanged; a spec with spaces or an empty item is refused."""
    ev = streams.example("AgentStarted")
    ok = ev.model_copy(update={"task": "hartmann6/0,hartmann6/3-5"})
    assert decode(encode(ok)) == ok
    d = orjson.loads(encode(ev))
    d.update(schema_version=1, task="hartmann6/17")
    up = decode(orjson.dumps(d))
    assert up.schema_version == 2 and getattr(up, "task", None) == "hartmann6/17"
    for bad in ("hartmann6/0, hartmann6/1", "hartmann6/0,,x", "a/b/c"):
        with pytest.raises(DecodeError):
            decode(orjson.dumps({**orjson.loads(encode(ev)), "task": bad}))
