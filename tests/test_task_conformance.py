"""Every built-in task passes TaskConformance, and the suite catches a task that breaks the contract."""

from __future__ import annotations

import random
from typing import ClassVar

import pytest
from pydantic import BaseModel

from agents import load_task
from agents.tasks.synthetic import Branin
from agents.testing import TaskConformance


class TestBranin(TaskConformance):
    """branin/3 (synthetic, knows its optimum)."""

    task_ref = "branin/3"


class TestHartmann6(TaskConformance):
    """hartmann6/3."""

    task_ref = "hartmann6/3"


class TestRosenbrock(TaskConformance):
    """rosenbrock/3."""

    task_ref = "rosenbrock/3"


class TestAckley(TaskConformance):
    """ackley/3."""

    task_ref = "ackley/3"


class TestLMRecipe(TaskConformance):
    """lmrecipe/1001 (a held-out-range instance of the training-recipe surrogate)."""

    task_ref = "lmrecipe/1001"


class TestAugReg(TaskConformance):
    """augreg/3 (the regularisation surrogate)."""

    task_ref = "augreg/3"


class TestSleep(TaskConformance):
    """sleep, on a 1 ms budget."""

    task_ref = "sleep/conformance"
    budget = 1.0


class TestCharLM(TaskConformance):
    """charlm (bare), on a tiny budget (one step of 1024 tokens)."""

    task_ref = "charlm"
    budget = 1024.0
    samples: ClassVar[int] = 50


class TestCharLMVariant(TaskConformance):
    """charlm/2 (a width/depth/context variant), on a tiny budget."""

    task_ref = "charlm/2"
    budget = 1024.0
    samples: ClassVar[int] = 50


# --- the suite can fail -----------------------------------------------------------------------


class _Noisy(Branin):
    """A branin whose runs ignore the seed's determinism (draws from a global RNG)."""

    name = "noisy"

    def run(self, recipe: BaseModel, seed: int, budget: float) -> dict[str, float]:
        """Noise from the global RNG: not a function of the seed."""
        return {"value": self.true_value(self.validate_recipe(recipe)) + random.random(), "evaluations": 1.0}


class _WrongOptimum(Branin):
    """A branin that claims an optimum above what recipes reach."""

    name = "wrongopt"

    def optimum(self) -> float:
        """Too high by a lot."""
        return self.offset + 5 * self.scale


class _Broken(TaskConformance):
    """The suite pointed at a deliberately broken task (not collected: no Test prefix)."""


def test_suite_catches_a_nondeterministic_run() -> None:
    """A run that is not a function of its seed fails the determinism check."""
    task = _Noisy("0")
    suite = _Broken()
    first = task.run(task.baseline(), 0, 1.0)
    with pytest.raises(AssertionError):
        suite.test_run_is_deterministic(task=_Noisy("0"), baseline_run=(first, 0.0))


def test_suite_catches_an_optimum_that_recipes_beat() -> None:
    """An optimum() above the true objective of some recipes fails the optimum check."""
    with pytest.raises(AssertionError):
        _Broken().test_optimum_is_consistent(task=_WrongOptimum("0"))


def test_suite_catches_a_bad_objective_direction() -> None:
    """A "max" task whose objective is not the negated metric fails the direction check."""

    class Flipped(Branin):
        """Claims to maximise, but objective() is left in minimising form."""

        direction = "max"

        def objective(self, metrics: dict[str, float]) -> float:  # type: ignore[override]
            """Wrong: not negated."""
            return float(metrics["value"])

    task = Flipped("0")
    with pytest.raises(AssertionError):
        _Broken().test_objective_follows_direction(
            task=task, baseline_run=(task.run(task.baseline(), 0, 1), 0.0)
        )


def test_builtin_families_with_truth_are_all_covered() -> None:
    """Every registered family that knows its optimum has a conformance class in this module."""
    from agents import available_tasks

    covered = {cls.task_ref.partition("/")[0] for cls in TaskConformance.__subclasses__() if cls.task_ref}
    for name in available_tasks():
        if load_task(name).optimum() is not None:
            assert name in covered, name
