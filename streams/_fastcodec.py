"""Fast decoding of current-version events: msgspec structs generated from the pydantic models.

The pydantic models stay the contract (the public API and the JSON Schema); this module is only
an accelerator for reading the log in bulk. :func:`fast_decode` returns a struct with the
same attribute names and values as the pydantic event, or ``None`` when it is not *sure* the
event is valid — the caller then runs :func:`streams.decode`, which accepts or refuses exactly
as before, with the same reason. So the verdict and the reasons are pydantic's, always:

* every struct is generated from its model's fields and is at least as strict as the model
  (unknown fields refused, bounded strings/ints/floats/mappings, literals, patterns anchored with
  ``\\Z`` as pydantic's regex engine anchors ``$``); anything it refuses goes to pydantic;
* fields whose default is not a constant (``occurred_at``) are required here, and timestamps are
  taken only in one plain RFC 3339 form (then checked as the model checks them);
* a model whose fields this generator does not understand gets no struct (pydantic decodes it),
  so a new field type can slow a kind down but never loosen it.

``tests/test_fastcodec.py`` checks, on valid and mutated events, that a struct is returned only
where pydantic accepts, with equal fields.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, Union

import annotated_types as at
import msgspec
from pydantic import AfterValidator, BeforeValidator, StringConstraints
from pydantic.fields import FieldInfo

from ._events import EVENT_TYPES, MAX_EVENT_BYTES, Event, _utc_representable
from ._subjects import subject_for

_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})?\Z"
"""The one timestamp form the fast path takes (pydantic's own encoding of a datetime)."""


class Unsupported(TypeError):
    """A field type or constraint the generator does not translate (its kind stays on pydantic)."""


def _anchored(pattern: str) -> str:
    """The pattern with a final ``$`` as ``\\Z``: Python's ``$`` also matches before a final newline."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        return pattern[:-1] + r"\Z"
    return pattern


def _meta(base: Any, metadata: list[Any], patterns: list[str] | None = None) -> Any:
    """``base`` annotated with msgspec constraints equivalent to pydantic's ``metadata``; a string
    pattern is appended to ``patterns`` (checked after decoding, through a cache: per-string
    regex calls inside msgspec cost more than the rest of the decoding)."""
    kw: dict[str, Any] = {}
    for m in metadata:
        if isinstance(m, StringConstraints):
            if m.strip_whitespace or m.to_upper or m.to_lower or m.ascii_only:
                raise Unsupported(f"string transformation {m!r}")
            if m.min_length is not None:
                kw["min_length"] = m.min_length
            if m.max_length is not None:
                kw["max_length"] = m.max_length
            if m.pattern is not None:
                if patterns is None:
                    raise Unsupported("pattern where it cannot be checked")
                patterns.append(_anchored(str(m.pattern)))
        elif isinstance(m, at.MinLen):
            kw["min_length"] = m.min_length
        elif isinstance(m, at.MaxLen):
            kw["max_length"] = m.max_length
        elif isinstance(m, at.Ge):
            kw["ge"] = m.ge
        elif isinstance(m, at.Le):
            kw["le"] = m.le
        elif isinstance(m, at.Gt):
            kw["gt"] = m.gt
        elif isinstance(m, at.Lt):
            kw["lt"] = m.lt
        elif isinstance(m, FieldInfo):
            return _meta(base, [*m.metadata, *metadata[metadata.index(m) + 1 :]], patterns)
        elif isinstance(m, BeforeValidator) and m.func.__name__ == "_refuse_big_int":
            continue  # msgspec never reads an out-of-range integer as a float: it refuses it
        else:
            raise Unsupported(f"constraint {m!r}")
    return Annotated[base, msgspec.Meta(**kw)] if kw else base


def _convert(tp: Any, metadata: list[Any] | None = None, patterns: list[str] | None = None) -> Any:
    """The msgspec type of a pydantic annotation (with its field-level ``metadata``). String
    patterns go to ``patterns`` where one is allowed (the field's own value, or a mapping's keys)."""
    metadata = list(metadata or [])
    origin = typing.get_origin(tp)
    if origin is Annotated:
        inner, *extra = typing.get_args(tp)
        return _convert(inner, [*extra, *metadata], patterns)
    if tp is datetime:
        if any(not (isinstance(m, AfterValidator) and m.func is _utc_representable) for m in metadata):
            raise Unsupported("datetime constraint")
        return Annotated[str, msgspec.Meta(pattern=_TIMESTAMP)]  # parsed and checked after decoding
    if tp in (str, int, float):
        return _meta(tp, metadata, patterns if tp is str else None)
    if tp is bool:
        if metadata:
            raise Unsupported("bool constraint")
        return bool
    if tp is type(None):
        return None
    if origin is Literal:
        if metadata or not all(
            isinstance(a, str | int) and not isinstance(a, bool) for a in typing.get_args(tp)
        ):
            raise Unsupported(f"literal {tp!r}")
        return tp
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        # ``X | None``: X's pattern applies to the value when it is not None.
        inner = patterns if len(args) == 2 and type(None) in args else None
        return _meta(Union[tuple(_convert(a, None, inner) for a in args)], metadata)  # noqa: UP007
    if origin is dict:
        k, v = typing.get_args(tp)
        key_patterns: list[str] = []
        key = _convert(k, None, key_patterns)
        if key_patterns:
            if patterns is None:
                raise Unsupported("key pattern where it cannot be checked")
            patterns.extend(f"keys:{p}" for p in key_patterns)
        return _meta(dict[key, _convert(v)], metadata)  # type: ignore[misc,valid-type]
    raise Unsupported(f"type {tp!r}")


FastEvent = msgspec.Struct
"""The base of the generated structs (each has the attributes of its event model)."""

_CACHE_MAX = 1 << 16


_Check = tuple[str, bool, Callable[[str], object], set[str]]
"""A pattern check of a field after decoding: the field, whether it is a mapping's keys (else its
value, None passing), the pattern's ``match``, and the values that matched before (bounded), so
a repeated name costs a set lookup."""


def _check(field: str, pattern: str) -> _Check:
    return (field, pattern.startswith("keys:"), re.compile(pattern.removeprefix("keys:")).match, set())


def _learn(seen: set[str], match: Callable[[str], object], value: str) -> bool:
    """Whether ``value`` matches; remembered if it does."""
    if match(value) is None:
        return False
    if len(seen) >= _CACHE_MAX:
        seen.clear()
    seen.add(value)
    return True


def _struct_for(model: type[Event]) -> tuple[type[msgspec.Struct], tuple[_Check, ...]]:
    """The msgspec struct mirroring ``model`` (tagged by its ``kind``), and its pattern checks."""
    kind = model.model_fields["kind"].default
    required: list[tuple[str, Any]] = []
    optional: list[tuple[str, Any, Any]] = []
    checks: list[_Check] = []
    timestamps = []
    for name, f in model.model_fields.items():
        if name == "kind":
            continue
        patterns: list[str] = []
        tp = _convert(f.annotation, f.metadata, patterns)
        checks.extend(_check(name, p) for p in patterns)
        if f.annotation is datetime:
            timestamps.append(name)
        if f.is_required() or f.default_factory not in (None, dict):
            required.append((name, tp))  # no constant default (e.g. "now"): must be present
        elif f.default_factory is dict:
            optional.append((name, tp, msgspec.field(default_factory=dict)))
        else:
            if isinstance(f.default, dict | list | set):
                raise Unsupported("mutable default")
            optional.append((name, tp, f.default))
    if timestamps != ["occurred_at"]:
        raise Unsupported(f"timestamps {timestamps}")
    cls = msgspec.defstruct(
        f"Fast{model.__name__}",
        [*required, *optional],
        forbid_unknown_fields=True,
        tag_field="kind",
        tag=kind,
        namespace={"kind": kind, "CHANNEL": model.CHANNEL, "__doc__": f"Fast mirror of {model.__name__}."},
    )
    return cls, tuple(checks)


def _build() -> tuple[dict[str, type[msgspec.Struct]], dict[type, tuple[_Check, ...]], dict[str, str]]:
    structs: dict[str, type[msgspec.Struct]] = {}
    checks: dict[type, tuple[_Check, ...]] = {}
    skipped: dict[str, str] = {}
    for model in EVENT_TYPES:
        kind = model.model_fields["kind"].default
        try:
            cls, checks[cls] = _struct_for(model)
        except Unsupported as e:
            skipped[kind] = str(e)
            continue
        structs[kind] = cls
    return structs, checks, skipped


STRUCTS, _CHECKS, SKIPPED = _build()
"""kind → generated struct; kind → why no struct could be generated (decoded by pydantic)."""

_DECODER: msgspec.json.Decoder[Any] | None = (
    msgspec.json.Decoder(Union[tuple(STRUCTS.values())]) if STRUCTS else None  # noqa: UP007
)


def fast_decode(data: bytes, subject: str | None = None) -> FastEvent | None:
    """A struct equal, field for field, to what :func:`streams.decode` would return, or None when
    the fast path is not sure (call :func:`streams.decode`: it decides and says why).

    The struct's ``occurred_at`` is a ``datetime``, like the model's; ``kind`` and ``CHANNEL``
    are class attributes, so ``streams.subject_for`` and the projections read it as an event.
    """
    if _DECODER is None or len(data) > MAX_EVENT_BYTES:
        return None
    try:
        ev: Any = _DECODER.decode(data)
        when = datetime.fromisoformat(ev.occurred_at)
        _utc_representable(when)
    except (msgspec.DecodeError, ValueError):
        return None
    for field, keys, match, seen in _CHECKS[type(ev)]:  # inlined: this loop is the hot path
        value = getattr(ev, field)
        if value is None:
            continue
        if keys:
            if not seen.issuperset(value) and not all(_learn(seen, match, k) for k in value if k not in seen):
                return None
        elif value not in seen and not _learn(seen, match, value):
            return None
    if subject is not None and subject != subject_for(ev):
        return None
    ev.occurred_at = when
    return ev
