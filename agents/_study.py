"""Simulated studies: a proposer searches one task instance in-process, trial by trial (no NATS).

A study is what a researcher does to one instance, without the swarm around it: run the baseline
a few times, then ask a proposer for one recipe at a time, run it, and add the outcome to the
instance's :class:`~agents._proposer.History`. The distiller's gate and ``hive bench learning``
both measure proposers this way, so they see exactly the histories a researcher would.

Regret is measured on the task's *true* (noise-free) objective where it has one
(:meth:`Task.true_objective`), normalised per instance so instances with different scales and
offsets are comparable::

    normalized_regret = (true - optimum) / (true(baseline) - optimum)

0 at the optimum, 1 at the baseline recipe (the point every study starts from; above 1 is worse
than the baseline). The baseline is the natural unit: "solved" (regret <= 0.05) means 95% of the
way from where the researcher started to the best possible. Where the baseline already sits at
the optimum (a gap below 1e-12) there is nothing to gain: regret is 0 for any recipe at least as
good as the optimum and ``inf`` otherwise.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel

from ._proposer import History, PriorProposer, Trial
from ._task import Task, TaskFailed

MAX_REPEATS = 10
"""How many times a proposer is asked again after proposing a recipe the instance already ran."""
_FLAT = 1e-12

ProposeFn = Callable[[History, random.Random], tuple[BaseModel, str]]
"""``propose(history, rng) -> (recipe, proposer name)``: one step of a study."""


@dataclass
class StudyResult:
    """The trials of one simulated study, in order (the baseline replicates excluded).

    ``proposers[i]`` proposed trial ``i + 1``; ``objectives`` are the observed (noisy) objectives
    (None for a failed run); ``true_objectives`` the task's noise-free objective of each recipe
    (None where the task has none); ``baselines`` the observed objectives of the baseline runs.
    """

    task_ref: str
    proposers: list[str] = field(default_factory=list)
    objectives: list[float | None] = field(default_factory=list)
    true_objectives: list[float | None] = field(default_factory=list)
    baselines: list[float] = field(default_factory=list)
    recipes: list[dict[str, object]] = field(default_factory=list)

    def best_so_far(self) -> list[float | None]:
        """The running minimum of the true objectives (the observed ones where a task has no truth)."""
        out: list[float | None] = []
        best: float | None = None
        for true, observed in zip(self.true_objectives, self.objectives, strict=True):
            value = true if true is not None else observed
            if value is not None and math.isfinite(value) and (best is None or value < best):
                best = value
            out.append(best)
        return out


def _run(task: Task, recipe: BaseModel, seed: int) -> float | None:
    try:
        value = task.objective(task.run(recipe, seed, task.default_budget))
    except TaskFailed:
        return None
    return value if math.isfinite(value) else None


def run_study(
    task: Task,
    propose: ProposeFn,
    *,
    trials: int,
    seed: int,
    baselines: int = 3,
    stop_at_regret: float | None = None,
) -> StudyResult:
    """Run ``baselines`` baseline replicates (seeds 0..baselines-1), then ``trials`` proposals.

    Each proposal comes from ``propose(history, rng)`` with the instance's history so far and a
    RNG seeded by ``seed``; it runs with ``task.run(recipe, seed, task.default_budget)`` (the
    study's seed, so replicated studies differ only by ``seed``). A recipe the instance already
    ran is refused: the proposer is asked again, up to :data:`MAX_REPEATS` times, then a prior
    sample stands in (named ``prior``). Deterministic given ``(task, propose, trials, seed)``
    when ``propose`` is. ``stop_at_regret`` (optional, for tasks that know their optimum) ends the
    study at the first trial whose true objective has a normalised regret at or below it (a
    benchmark counting trials to a target need not run the rest).
    """
    rng = random.Random(f"study|{task.ref}|{seed}")
    base = task.baseline()
    result = StudyResult(task_ref=task.ref)
    result.baselines = [v for v in (_run(task, base, s) for s in range(baselines)) if v is not None]
    done: list[Trial] = []
    history = History(task=task, baselines=tuple(result.baselines))
    fallback = PriorProposer()
    for _ in range(trials):
        recipe, name = propose(history, rng)
        repeats = 0
        while history.seen(recipe) and repeats < MAX_REPEATS:
            recipe, name = propose(history, rng)
            repeats += 1
        if history.seen(recipe):
            for _ in range(100):
                recipe, name = fallback.propose(history, rng), fallback.name
                if not history.seen(recipe):
                    break
        recipe = task.validate_recipe(recipe)
        observed = _run(task, recipe, seed)
        done.append(
            Trial(
                recipe=recipe.model_dump(),
                objective=observed,
                status="ok" if observed is not None else "failed",
                proposer=name,
                seq=len(done) + 1,
            )
        )
        history = History(task=task, trials=tuple(done), baselines=history.baselines)
        result.proposers.append(name)
        result.objectives.append(observed)
        result.true_objectives.append(task.true_objective(recipe))
        result.recipes.append(recipe.model_dump())
        true = result.true_objectives[-1]
        if (
            stop_at_regret is not None
            and true is not None
            and normalized_regret(task, true) <= stop_at_regret
        ):
            break
    return result


def normalized_regret(task: Task, true_value: float) -> float:
    """``(true_value - optimum) / (true(baseline) - optimum)``: 0 at the optimum, 1 at the baseline.

    Raises ``ValueError`` if the task has no known optimum or true objective. A baseline already
    at the optimum gives 0 for values at or below the optimum and ``inf`` above it."""
    optimum = task.optimum()
    base = task.true_objective(task.baseline())
    if optimum is None or base is None:
        raise ValueError(f"task {task.ref} has no known optimum/true objective: regret is undefined")
    gap = base - optimum
    if gap < _FLAT:
        return 0.0 if true_value <= optimum + _FLAT else math.inf
    return (true_value - optimum) / gap


def trials_to_target(result: StudyResult, task: Task, target: float = 0.05) -> int | None:
    """The first trial (1-based, baselines not counted) whose best-so-far true objective has a
    normalised regret ``<= target``; None if the study never got there.

    Trials without a true objective (failed runs) never reach the target."""
    best = math.inf
    for index, value in enumerate(result.true_objectives, start=1):
        if value is None or not math.isfinite(value):
            continue
        best = min(best, value)
        if normalized_regret(task, best) <= target:
            return index
    return None
