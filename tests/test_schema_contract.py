"""`hive schema` is enough for a publisher in another language: through the installed entry point it
states, per event type, the subject and the Nats-Msg-Id rule, and the query service's contract,
all of which agree with what the Python side actually does; an independent JSON Schema validator
accepts every example event."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema

import streams


def _schema() -> dict:
    r = subprocess.run([sys.executable, "-m", "hive", "schema"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_schema_states_subjects_msg_ids_and_the_query_contract() -> None:
    """Each event type's x-subject, filled in with an example's fields, is the subject
    `streams.subject_for` publishes it on; x-msg-id names the header; x-query names the SQL
    and status subjects the materializer answers on and every request field it accepts."""
    schema = _schema()
    for kind, cls in streams.EVENTS_BY_KIND.items():
        entry = schema["$defs"][cls.__name__]
        ev = streams.example(kind)
        filled = entry["x-subject"].format(**ev.model_dump())
        assert filled == streams.subject_for(ev), kind
        assert "Nats-Msg-Id" in entry["x-msg-id"] and "event_id" in entry["x-msg-id"]
    query = schema["x-query"]
    assert query["subject"] == streams.QUERY_SUBJECT and query["status_subject"] == streams.STATUS_SUBJECT
    assert set(query["request"]) == {"sql", "params", "timeout_s", "max_rows"}
    assert set(query["reply"]) == {"columns", "types", "rows", "truncated", "elapsed_ms"}


def test_an_independent_validator_accepts_the_examples_and_refuses_a_bad_one() -> None:
    """jsonschema (not pydantic) validates every example event against the exported schema, and
    refuses one with an integer beyond 64 bits and one with an extra field."""
    schema = _schema()
    validator = jsonschema.Draft202012Validator(schema)
    for kind in streams.EVENTS_BY_KIND:
        validator.validate(json.loads(streams.encode(streams.example(kind))))
    hb = json.loads(streams.encode(streams.example("AgentHeartbeat")))
    assert not validator.is_valid({**hb, "experiments": 2**70})
    assert not validator.is_valid({**hb, "surprise": 1})
