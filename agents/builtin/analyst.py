"""The analyst: a reactive agent that turns repeated failures into guidance for proposers."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, ClassVar

from streams import ExperimentFinished, GuidancePublished

from .._agent import Agent, on

MIN_EVIDENCE = 3
"""Failures of one cause on one task needed before guidance is published."""


def cause_of(event: ExperimentFinished) -> str:
    """A failure's cause: the status for timeouts, else the error's leading words."""
    if event.status == "timeout":
        return "timeout"
    text = (event.error or "unknown").split(":", 1)[0].strip().lower()
    return "-".join(text.split()[:4])[:60] or "unknown"


def avoid_rules(failed: list[dict[str, Any]], ok: list[dict[str, Any]]) -> dict[str, str]:
    """Knob regions where failures concentrate and successes are rare.

    Numeric knob: if every failure has ``knob >= m`` (m = the smallest failing value) and at
    most 10% of ok runs do, avoid ``>= m``; symmetrically for ``<=``. Categorical knob: if every
    failure shares one value that at most 10% of ok runs use, avoid ``== value``.
    """
    rules: dict[str, str] = {}
    for knob in failed[0]:
        values = [r.get(knob) for r in failed]
        oks = [r.get(knob) for r in ok if knob in r]
        numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(numbers) == len(values):
            ok_numbers = [float(v) for v in oks if isinstance(v, int | float) and not isinstance(v, bool)]
            lo, hi = min(numbers), max(numbers)
            if ok_numbers and sum(1 for v in ok_numbers if v >= lo) <= 0.1 * len(ok_numbers):
                rules[knob] = f">= {lo:.6g}"
            elif ok_numbers and sum(1 for v in ok_numbers if v <= hi) <= 0.1 * len(ok_numbers):
                rules[knob] = f"<= {hi:.6g}"
        elif len(set(map(str, values))) == 1:
            value = values[0]
            if oks and sum(1 for v in oks if v == value) <= 0.1 * len(oks):
                rules[knob] = f"== {str(value).lower() if isinstance(value, bool) else value}"
    return rules


class Analyst(Agent):
    """Reactive agent: subscribes to finished experiments, groups failures and timeouts by
    task and cause, and publishes ``GuidancePublished`` (regions to avoid, a hint) that
    researchers read before proposing. Republishes when the evidence doubles."""

    type_name: ClassVar[str] = "analyst"
    replay: ClassVar[bool] = True

    async def setup(self) -> None:
        """Start with empty evidence (the replay of the log refills it)."""
        self.failed: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        self.ok: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.published: dict[tuple[str, str], int] = {}

    @on(ExperimentFinished)
    async def on_finished(self, event: ExperimentFinished) -> None:
        """Collect the outcome; publish guidance when a cause has enough (new) evidence."""
        self.experiments += 1
        if event.status == "ok":
            self.ok[event.task].append(dict(event.recipe))
            return
        key = (event.task, cause_of(event))
        self.failed[key].append(dict(event.recipe))
        n = len(self.failed[key])
        if n < MIN_EVIDENCE or n < 2 * self.published.get(key, 0):
            return
        self.published[key] = n
        task, cause = key
        avoid = avoid_rules(self.failed[key], self.ok[task])
        hint = (
            f"{n} runs timed out: lower the budget or raise the deadline"
            if cause == "timeout"
            else f"{n} runs failed with '{cause}'"
            + (f": avoid {', '.join(f'{k} {v}' for k, v in avoid.items())}" if avoid else "")
        )
        await self.publish(
            self.new_event(
                GuidancePublished,
                event_id=f"{self.agent_id}/guidance/{task.replace('/', '.')}.{cause}.{n}",
                task=task,
                topic=cause,
                avoid=avoid,
                hint=hint[:4000],
                evidence=n,
            )
        )
        self.log.info("guidance_published", task=task, cause=cause, evidence=n, avoid=avoid)
