"""The fast decoder never accepts what ``streams.decode`` refuses, and agrees on what both accept.

``fast_decode`` is an accelerator: it returns a struct only where it is sure, and the pydantic
decoder decides everything else (with its reasons). These tests compare the two on every kind's
example and on many mutations of each (pure, no server).
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

import streams
from streams import DecodeError, decode, encode, fast_decode
from streams._fastcodec import SKIPPED

KINDS = list(streams.EVENTS_BY_KIND)

_ODD_VALUES: list[Any] = [
    None,
    "",
    "x",
    "a\n",
    "a b",
    "a.b",
    "a/b",
    "ü",
    "x" * 65,
    "x" * 201,
    "x" * 4001,
    0,
    -1,
    1,
    2**31,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    10**30,
    0.0,
    -0.0,
    1.5,
    1e308,
    True,
    False,
    [],
    {},
    {"a": 1},
    {"bad key": 1},
    {"k\n": 1},
    {"k": 2**63},
    {"k": 1e300},
    {"k": "x" * 201},
    {"k": None},
    {"k": 1, "j": 1.0, "b": True, "s": "1"},
    {f"k{i}": 1.0 for i in range(65)},
    "2026-11-27T00:00:00Z",
    "2026-11-27T00:00:00",
    "2026-11-27T00:00:00.1+01:00",
    "2026-11-27T00:00:00.1234567Z",
    "2026-11-27 00:00:00Z",
    "2026-11-27T00:00:60Z",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "2026-11-27T00:00:00+24:00",
    "2026-11-27",
    "ok",
    "failed",
    "baseline",
    "0" * 64,
]
_RAW_ODDITIES = [
    b"",
    b"null",
    b"[]",
    b"{}",
    b'{"kind": "Nope"}',
    b"\xff",
    b'{"a": NaN}',
    b'{"a": 1e400}',
]


def _mutations(kind: str) -> list[bytes]:
    """The example of ``kind``, each field replaced by each odd value, dropped, or doubled."""
    base = orjson.loads(encode(streams.example(kind)))
    out = [orjson.dumps(base)]
    for key in base:
        dropped = {k: v for k, v in base.items() if k != key}
        out.append(orjson.dumps(dropped))
        for value in _ODD_VALUES:
            out.append(json.dumps({**base, key: value}).encode())  # big ints too
    out.append(orjson.dumps({**base, "extra": 1}))
    out.append(orjson.dumps({**base, "schema_version": 1}))
    text = orjson.dumps(base)
    out.append(text[:-1] + b', "kind": "AgentStopped"}')  # a repeated discriminator
    out.append(text[:-1] + b', "event_id": "b a d"}')  # a repeated key: the last one counts
    out.append(text + b"\n")
    return out


def _check(data: bytes, subject: str | None) -> bool:
    """Assert the fast path agrees with ``decode``; True when the fast path took the event."""
    fast = fast_decode(data, subject)
    try:
        slow = decode(data, subject)
    except DecodeError:
        assert fast is None, f"fast path accepted what decode refuses: {data[:300]!r}"
        return False
    if fast is None:
        return False
    assert fast.kind == slow.kind  # type: ignore[attr-defined]
    for name in type(slow).model_fields:
        assert getattr(fast, name) == getattr(slow, name), name
        assert type(getattr(fast, name)) is type(getattr(slow, name)), name
        if isinstance(getattr(slow, name), dict):  # 1 == 1.0: compare the values' types too
            assert repr(getattr(fast, name)) == repr(getattr(slow, name)), name
    return True


def test_every_kind_has_a_fast_struct() -> None:
    """The generator understands every field of every event model (none left on pydantic)."""
    assert SKIPPED == {}


@pytest.mark.parametrize("kind", KINDS)
def test_fast_path_agrees_with_decode_on_mutations(kind: str) -> None:
    """On the example and every mutation of it, the fast path accepts only what decode accepts,
    with equal field values and types; it does take the plain example."""
    example = streams.example(kind)
    subject = streams.subject_for(example)
    assert _check(encode(example), subject)
    assert _check(encode(example), None)
    taken = 0
    for data in _mutations(kind):
        taken += _check(data, subject)
        _check(data, None)
    assert taken > 1


def test_fast_path_refuses_odd_bytes_and_wrong_subjects() -> None:
    """Malformed bytes, oversize messages and a subject not the event's own go to decode."""
    for data in _RAW_ODDITIES:
        assert fast_decode(data) is None
    example = streams.example("ExperimentFinished")
    assert fast_decode(encode(example), "hive.traces.researcher.someone-else") is None
    assert fast_decode(b" " * (streams.MAX_EVENT_BYTES + 1)) is None


def test_fast_path_remembers_names_without_loosening() -> None:
    """A name seen valid is remembered, and a bad one is still refused after many good ones."""
    base = orjson.loads(encode(streams.example("ExperimentFinished")))
    assert fast_decode(orjson.dumps(base)) is not None
    for i in range(50):
        assert fast_decode(orjson.dumps({**base, "recipe": {f"k{i}": 1}})) is not None
    assert fast_decode(orjson.dumps({**base, "recipe": {"k1": 1, "k 2": 1}})) is None
    assert fast_decode(orjson.dumps({**base, "agent_id": base["agent_id"] + "\n"})) is None
