"""Prompt and action text: the one place that says what the policy reads and writes.

Agents (at proposal time) and the trainer (when building examples) both call these functions, so
the text must be deterministic: same inputs, same bytes.

Prompt (at most :data:`MAX_PROMPT_BYTES` UTF-8 bytes, truncated at the end)::

    task: hartmann6/17
    parent: {"act":"gelu","lr":3.10e-03,"nesterov":false,"width":64}
    objective: 1.23e-01
    guidance: lower lr | avoid act=relu

* ``parent`` is the parent recipe with keys **sorted** (whatever order the dict came in), values
  formatted as in actions; ``none`` when there is no parent. ``objective`` likewise.
* guidance: at most :data:`MAX_GUIDANCE_ITEMS` items, in the order given (put the most important
  first), whitespace collapsed, each cut to :data:`MAX_GUIDANCE_ITEM_BYTES`; ``none`` if empty.

Action (the completion): compact JSON of the recipe, keys in the **space's field order**:
``{"lr":3.10e-03,"width":64,"act":"gelu","nesterov":false}``. Floats have 3 significant digits in
scientific notation (``f"{x:.2e}"``, nudged back inside the field's bounds when rounding would leave
them), ints are plain, bools ``true``/``false``, Literals their JSON text. ``json.loads`` parses it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel

from distill._byte_model import BOS, SEP

MAX_PROMPT_BYTES = 224
"""Upper bound of a rendered prompt, in UTF-8 bytes."""
MAX_TASK_BYTES = 128
MAX_GUIDANCE_ITEMS = 4
MAX_GUIDANCE_ITEM_BYTES = 96
MAX_INT_DIGITS = 12
"""Digits allowed for an int field without bounds."""


# ---------------------------------------------------------------------------- the space's fields


@dataclass(frozen=True)
class FieldSpec:
    """One knob of a search space as the action grammar sees it.

    ``kind`` is ``"float"``, ``"int"`` or ``"choice"`` (a ``Literal`` or ``bool``; ``choices`` holds
    the JSON text of each allowed value, ``values`` the values). Bounds are inclusive unless
    ``lo_open``/``hi_open`` (from ``gt``/``lt``).
    """

    key: str
    kind: Literal["float", "int", "choice"]
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    log: bool = False
    choices: tuple[str, ...] = ()
    values: tuple[Any, ...] = ()


@lru_cache(maxsize=256)
def space_fields(space: type[BaseModel]) -> tuple[FieldSpec, ...]:
    """The :class:`FieldSpec` of each field of ``space``, in field order.

    Supported annotations: ``float`` and ``int`` (bounds from ``ge``/``gt``/``le``/``lt``,
    ``json_schema_extra={"log": True}`` noted), ``bool``, and ``Literal[...]`` of str/int/bool.
    Anything else raises ``TypeError``.
    """
    specs = []
    for name, info in space.model_fields.items():
        key = info.alias or name
        ann = info.annotation
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if ann is bool:
            specs.append(FieldSpec(key, "choice", choices=("true", "false"), values=(True, False)))
            continue
        if get_origin(ann) is Literal:
            values = get_args(ann)
            if not values or not all(isinstance(v, str | int | bool) for v in values):
                raise TypeError(f"field {name!r}: only Literals of str/int/bool are supported")
            specs.append(FieldSpec(key, "choice", choices=tuple(_json(v) for v in values), values=values))
            continue
        if ann not in (int, float):
            raise TypeError(f"field {name!r}: unsupported annotation {ann!r} (float, int, bool, Literal)")
        lo = hi = None
        lo_open = hi_open = False
        for m in info.metadata:
            if isinstance(m, at.Ge):
                lo = float(m.ge)  # type: ignore[arg-type]
            elif isinstance(m, at.Gt):
                lo, lo_open = float(m.gt), True  # type: ignore[arg-type]
            elif isinstance(m, at.Le):
                hi = float(m.le)  # type: ignore[arg-type]
            elif isinstance(m, at.Lt):
                hi, hi_open = float(m.lt), True  # type: ignore[arg-type]
        kind: Literal["float", "int"] = "float" if ann is float else "int"
        specs.append(FieldSpec(key, kind, lo, hi, lo_open, hi_open, log=bool(extra.get("log", False))))
    if not specs:
        raise TypeError(f"{space.__name__} has no fields")
    return tuple(specs)


def clip_value(spec: FieldSpec, value: Any) -> Any:
    """``value`` moved inside the bounds of a float/int field (choices are returned unchanged)."""
    if spec.kind == "choice" or not isinstance(value, int | float) or isinstance(value, bool):
        return value
    if spec.kind == "int":
        lo = None if spec.lo is None else math.floor(spec.lo) + 1 if spec.lo_open else math.ceil(spec.lo)
        hi = None if spec.hi is None else math.ceil(spec.hi) - 1 if spec.hi_open else math.floor(spec.hi)
        v = round(value)
        v = v if lo is None else max(v, lo)
        return v if hi is None else min(v, hi)
    x = float(value)
    if math.isnan(x):
        x = spec.lo if spec.lo is not None else spec.hi if spec.hi is not None else 0.0
    if spec.lo is not None:
        x = max(x, math.nextafter(spec.lo, math.inf) if spec.lo_open else spec.lo)
    if spec.hi is not None:
        x = min(x, math.nextafter(spec.hi, -math.inf) if spec.hi_open else spec.hi)
    return x


# ---------------------------------------------------------------------------- value formatting


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def format_float(x: float) -> str:
    """Three significant digits, scientific: ``0.0031 -> "3.10e-03"``.

    The exponent always has two digits: magnitudes under ``1e-99`` become ``0.00e+00`` (so does
    ``-0.0``), magnitudes from ``1e100`` are clamped to ``9.99e+99``.
    """
    if not math.isfinite(x):
        raise ValueError(f"cannot render non-finite float {x!r}")
    s = f"{x:.2e}"
    e = int(s.split("e")[1])
    if x == 0 or e < -99:
        return "0.00e+00"
    if e > 99:
        return ("-" if x < 0 else "") + "9.99e+99"
    return s


def format_float_toward(x: float, up: bool) -> str:
    """Like :func:`format_float` but rounding toward +inf (``up``) or -inf (within the 2-digit exponent)."""
    s = format_float(x)
    r = float(s)
    if r >= x if up else r <= x:
        return s
    if r == 0:  # |x| below 1e-99, on the wrong side of zero
        return "1.00e-99" if up else "-1.00e-99"
    mant, exp = s.split("e")
    e = int(exp)
    k = int(mant.replace(".", ""))  # signed 3-digit mantissa, 100..999 in magnitude
    k += 1 if up else -1
    if abs(k) == 1000:
        k, e = k // 10, e + 1
    elif abs(k) == 99:
        k, e = (999 if k > 0 else -999), e - 1
    if e < -99:
        return "0.00e+00"
    if e > 99:
        return s
    sign = "-" if k < 0 else ""
    k = abs(k)
    return f"{sign}{k // 100}.{k % 100:02d}e{e:+03d}"


def format_value(value: Any, spec: FieldSpec | None = None) -> str:
    """Render one recipe value; with a float ``spec`` the rounding stays inside its bounds."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return _json(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        s = format_float(value)
        if spec is not None:
            r = float(s)
            if spec.lo is not None and (r < spec.lo or (spec.lo_open and r <= spec.lo)):
                s = format_float_toward(max(value, spec.lo), up=True)
            elif spec.hi is not None and (r > spec.hi or (spec.hi_open and r >= spec.hi)):
                s = format_float_toward(min(value, spec.hi), up=False)
        return s
    return _json(str(value))


def render_action(recipe: Mapping[str, Any] | BaseModel, space: type[BaseModel]) -> str:
    """The canonical action text of ``recipe`` (validated by ``space`` first; defaults fill gaps).

    Raises ``pydantic.ValidationError`` when the recipe is not valid for the space.
    """
    model = recipe if isinstance(recipe, space) else space.model_validate(dict(recipe))
    values = model.model_dump(by_alias=True)
    parts = []
    for spec in space_fields(space):
        value = values[spec.key]
        if spec.kind == "float":
            value = float(value)
        parts.append(f"{_json(spec.key)}:{format_value(value, spec)}")
    return "{" + ",".join(parts) + "}"


# ---------------------------------------------------------------------------- prompt


def _clip_bytes(text: str, limit: int) -> str:
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def render_prompt(
    task: str,
    parent: Mapping[str, Any] | None,
    parent_objective: float | None,
    guidance: Sequence[str],
    *,
    max_bytes: int = MAX_PROMPT_BYTES,
) -> str:
    """The policy's prompt for proposing a child of ``parent`` on ``task`` (format: module doc).

    Deterministic and at most ``max_bytes`` UTF-8 bytes: guidance is cut first, then the text's end.
    """
    lines = [f"task: {_clip_bytes(_one_line(task), MAX_TASK_BYTES)}"]
    if parent is None:
        lines.append("parent: none")
    else:
        body = ",".join(f"{_json(str(k))}:{format_value(parent[k])}" for k in sorted(parent, key=str))
        lines.append("parent: {" + body + "}")
    finite = parent_objective is not None and math.isfinite(parent_objective)
    lines.append(f"objective: {format_float(parent_objective) if finite else 'none'}")  # type: ignore[arg-type]
    items = [_clip_bytes(_one_line(g), MAX_GUIDANCE_ITEM_BYTES) for g in guidance[:MAX_GUIDANCE_ITEMS]]
    items = [g for g in items if g]
    lines.append("guidance: " + (" | ".join(items) if items else "none"))
    return _clip_bytes("\n".join(lines), max_bytes)


def encode_prompt(prompt: str, max_bytes: int) -> list[int]:
    """Token ids ``BOS prompt-bytes SEP``, the prompt cut to its first ``max_bytes`` bytes.

    The trainer and the decoder both go through this, so truncation is the same on both sides.
    """
    return [BOS, *prompt.encode("utf-8")[: max(0, max_bytes)], SEP]
