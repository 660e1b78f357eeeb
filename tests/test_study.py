"""The study simulator (agents/_study.py): in-process studies, normalised regret, trials to target."""

from __future__ import annotations

import math
import random

import pytest
from pydantic import BaseModel

from agents import load_task
from agents._proposer import History, MutationProposer, PriorProposer
from agents._study import StudyResult, normalized_regret, run_study, trials_to_target
from agents._task import Task


def _mutation(history: History, rng: random.Random) -> tuple[BaseModel, str]:
    return MutationProposer().propose(history, rng), "mutation"


def test_study_is_deterministic_and_seeds_differ() -> None:
    """The same (task, proposer, seed) gives the same study; another seed gives another one."""
    task = load_task("branin/3")
    a = run_study(task, _mutation, trials=30, seed=1)
    b = run_study(task, _mutation, trials=30, seed=1)
    c = run_study(task, _mutation, trials=30, seed=2)
    assert a == b
    assert a.recipes != c.recipes
    assert len(a.objectives) == len(a.true_objectives) == len(a.proposers) == 30
    assert len(a.baselines) == 3 and set(a.proposers) == {"mutation"}


def test_study_history_grows_and_truth_is_recorded() -> None:
    """The proposer sees every earlier trial; each trial's true objective is the task's noise-free value."""
    task = load_task("hartmann6/2")
    lengths: list[int] = []

    def propose(history: History, rng: random.Random) -> tuple[BaseModel, str]:
        lengths.append(len(history.trials))
        assert len(history.baselines) == 2
        return task.sample(rng), "prior"

    result = run_study(task, propose, trials=5, seed=0, baselines=2)
    assert lengths == [0, 1, 2, 3, 4]
    for recipe, true in zip(result.recipes, result.true_objectives, strict=True):
        assert true == task.true_objective(task.validate_recipe(recipe))


def test_repeated_recipes_are_refused_then_replaced_by_a_prior_sample() -> None:
    """A proposer that always returns the same recipe runs it once; later trials are prior samples."""
    task = load_task("branin/0")
    calls = 0

    def stuck(history: History, rng: random.Random) -> tuple[BaseModel, str]:
        nonlocal calls
        calls += 1
        return task.baseline(), "stuck"

    result = run_study(task, stuck, trials=4, seed=0)
    assert result.proposers == ["stuck", "prior", "prior", "prior"]
    assert len({str(r) for r in result.recipes}) == 4
    assert calls == 1 + 3 * 11  # asked once, then 1 + MAX_REPEATS times for each later trial


def test_normalized_regret_is_zero_at_optimum_and_one_at_baseline() -> None:
    """Regret is 0 at the optimum, 1 at the baseline's true objective, linear in between."""
    task = load_task("rosenbrock/7")
    optimum, base = task.optimum(), task.true_objective(task.baseline())
    assert optimum is not None and base is not None
    assert normalized_regret(task, optimum) == 0.0
    assert normalized_regret(task, base) == pytest.approx(1.0)
    assert normalized_regret(task, (optimum + base) / 2) == pytest.approx(0.5)


def test_normalized_regret_guards_a_baseline_at_the_optimum() -> None:
    """A baseline at the optimum gives regret 0 at the optimum (no division by zero), inf above it."""
    task = load_task("branin/1")

    class AtOptimum(type(task)):  # type: ignore[misc]
        """branin/1 whose baseline is its optimum recipe."""

        def baseline(self) -> BaseModel:
            """The optimum recipe."""
            return self.optimum_recipe()

    flat = AtOptimum("1")
    optimum = flat.optimum()
    assert normalized_regret(flat, optimum) == 0.0
    assert normalized_regret(flat, optimum + 1.0) == math.inf


def test_normalized_regret_needs_a_known_optimum() -> None:
    """A task without optimum()/true_objective() has no regret: ValueError, not a made-up number."""
    with pytest.raises(ValueError, match="no known optimum"):
        normalized_regret(load_task("sleep/0"), 1.0)


def test_trials_to_target_on_a_hand_built_result() -> None:
    """The first 1-based trial whose best-so-far regret is <= target; failures skipped; None if never."""
    task: Task = load_task("ackley/2")
    optimum, base = task.optimum(), task.true_objective(task.baseline())
    assert optimum is not None and base is not None

    def at(regret: float) -> float:
        return optimum + regret * (base - optimum)

    truths = [at(0.9), None, at(0.2), at(0.04), at(0.5)]
    result = StudyResult(task_ref=task.ref, proposers=["a"] * 5, objectives=truths, true_objectives=truths)
    assert trials_to_target(result, task) == 4
    assert trials_to_target(result, task, target=0.25) == 3
    assert trials_to_target(result, task, target=0.01) is None
    assert result.best_so_far() == [at(0.9), at(0.9), at(0.2), at(0.04), at(0.04)]


def test_prior_search_reaches_target_on_an_easy_instance() -> None:
    """A real study end to end: prior search on branin gets within 25% regret inside 200 trials."""
    task = load_task("branin/4")
    result = run_study(task, lambda h, r: (PriorProposer().propose(h, r), "prior"), trials=200, seed=0)
    found = trials_to_target(result, task, target=0.25)
    assert found is not None and 1 <= found <= 200


def test_study_stops_at_the_target_when_asked() -> None:
    """With stop_at_regret, a study ends at the trial that reaches the target (same prefix as a full one)."""
    task = load_task("branin/4")

    def prior(h: History, r: random.Random) -> tuple[BaseModel, str]:
        return PriorProposer().propose(h, r), "prior"

    full = run_study(task, prior, trials=200, seed=0)
    found = trials_to_target(full, task, target=0.25)
    assert found is not None
    short = run_study(task, prior, trials=200, seed=0, stop_at_regret=0.25)
    assert len(short.recipes) == found and short.recipes == full.recipes[:found]
