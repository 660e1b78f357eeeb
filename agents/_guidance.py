"""Guidance rules: how an analyst writes "stay out of this region" and how proposers check it.

An ``avoid`` entry maps a knob to a rule text: ``">= 0.1"``, ``"<= 0.0001"``, ``"== sgd"``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from typing import Any

_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, ">": operator.gt, "<": operator.lt}


def parse_rule(text: str) -> tuple[str, Any]:
    """``">= 0.1"`` → ``(">=", 0.1)``; ``"== sgd"`` → ``("==", "sgd")``. Raises ValueError."""
    text = text.strip()
    for op in (">=", "<=", "==", ">", "<"):
        if text.startswith(op):
            raw = text[len(op) :].strip()
            try:
                return op, float(raw)
            except ValueError:
                return op, {"true": True, "false": False}.get(raw, raw)
    raise ValueError(f"not a guidance rule: {text!r}")


def violates(recipe: Mapping[str, Any], avoid: Mapping[str, str]) -> bool:
    """True when the recipe falls in any avoided region."""
    for knob, rule in avoid.items():
        if knob not in recipe:
            continue
        try:
            op, bound = parse_rule(rule)
            if _OPS[op](recipe[knob], bound):
                return True
        except (ValueError, TypeError):
            continue
    return False


def merged_avoid(guidance: Iterable[Any]) -> dict[str, str]:
    """All ``avoid`` rules of a task's guidance events (later ones win per knob)."""
    out: dict[str, str] = {}
    for g in guidance:
        out.update(g.avoid)
    return out
