"""The task layer: synthetic families, the sleep task, charlm training and the task registry."""

from __future__ import annotations

import math
import random
import time
from typing import ClassVar, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents import _task
from agents._task import Task, TaskFailed, available_tasks, knobs, load_task
from agents.tasks.synthetic import NOISE_FRAC, SyntheticTask

FAMILIES = ("branin", "hartmann6", "rosenbrock", "ackley")


class _Recipe(BaseModel):
    """A one-knob recipe for the plug-in task below."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    x: float = Field(default=0.0, ge=-1.0, le=1.0)


class _Plugin(Task):
    """A maximising task defined outside the package, loaded as ``module:Class/instance``."""

    name: ClassVar[str] = "plugin"
    space: ClassVar[type[BaseModel]] = _Recipe
    metric: ClassVar[str] = "score"
    direction: ClassVar[Literal["min", "max"]] = "max"
    default_budget: ClassVar[float] = 1.0
    deadline_s: ClassVar[float] = 1.0

    def run(self, recipe: BaseModel, seed: int, budget: float) -> dict[str, float]:
        """Score is 1 - x^2."""
        x = self.validate_recipe(recipe).model_dump()["x"]
        return {"score": 1.0 - x * x}


def _synthetic(ref: str) -> SyntheticTask:
    task = load_task(ref)
    assert isinstance(task, SyntheticTask)
    return task


# --- synthetic families -------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_instances_shift_the_optimum_differently(family: str) -> None:
    """Two instances of a family get different shifts and scales; rebuilding one gives the same ones."""
    a, b, a_again = _synthetic(f"{family}/1"), _synthetic(f"{family}/2"), _synthetic(f"{family}/1")
    assert a.shift != b.shift and a.scale != b.scale
    assert a.shift == a_again.shift and a.scale == a_again.scale
    assert a.optimum_recipe() != b.optimum_recipe()
    assert a.true_value(a.baseline()) != b.true_value(b.baseline())


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_is_deterministic_and_seeds_change_the_noise(family: str) -> None:
    """A run is a function of (instance, recipe, seed, budget); another seed draws other, small noise."""
    task = _synthetic(f"{family}/5")
    recipe = task.baseline()
    first = task.run(recipe, seed=3, budget=1)
    assert first == task.run(recipe, seed=3, budget=1) == _synthetic(f"{family}/5").run(recipe, 3, 1)
    values = {task.run(recipe, seed=s, budget=1)["value"] for s in range(10)}
    assert len(values) == 10
    true = task.true_value(recipe)
    assert all(abs(v - true) < 6 * NOISE_FRAC * task.scale for v in values)
    assert all(math.isfinite(v) for v in first.values()) and first["evaluations"] == 1.0


def test_budget_averages_evaluations() -> None:
    """A larger budget averages more noisy evaluations, so the value lands closer to the truth."""
    task = _synthetic("hartmann6/3")
    recipe = task.baseline()
    true = task.true_value(recipe)
    result = task.run(recipe, seed=0, budget=400)
    assert result["evaluations"] == 400.0
    assert abs(result["value"] - true) < 0.5 * NOISE_FRAC * task.scale


@pytest.mark.parametrize("family", FAMILIES)
def test_optimum_beats_baseline_and_random_recipes(family: str) -> None:
    """The instance's optimum region is clearly better than the baseline and than random recipes."""
    rng = random.Random(0)
    for index in range(8):
        task = _synthetic(f"{family}/{index}")
        best, base = task.optimum_recipe(), task.baseline()
        assert task.true_value(best) == pytest.approx(task.optimal_value(), abs=1e-6)
        assert task.true_value(base) - task.optimal_value() > task.scale
        assert task.run(best, seed=index, budget=1)["value"] < task.run(base, seed=index, budget=1)["value"]
        coords = {
            f"x{i + 1}": min(hi, max(lo, x + rng.uniform(-0.01, 0.01) * (hi - lo)))
            for i, (lo, hi, x) in enumerate(zip(task.lower, task.upper, task.x_star, strict=True))
        }
        near = best.model_copy(
            update={k: v + s for (k, v), s in zip(coords.items(), task.shift, strict=True)}
        )
        assert task.true_value(near) < task.true_value(base)
        assert all(task.true_value(task.sample(rng)) >= task.optimal_value() - 1e-9 for _ in range(20))


@pytest.mark.parametrize("ref", [*(f"{f}/4" for f in FAMILIES), "sleep/x", "charlm"])
def test_sample_and_mutate_give_valid_recipes(ref: str) -> None:
    """sample() and mutate() stay inside the space, and a mutant differs from its parent."""
    task = load_task(ref)
    rng = random.Random(1)
    recipe = task.baseline()
    for _ in range(40):
        sampled = task.sample(rng)
        assert task.validate_recipe(sampled.model_dump()) == sampled
        child = task.mutate(recipe, rng)
        assert task.validate_recipe(child.model_dump()) == child
        assert child != recipe
        recipe = child


def test_log_knobs_are_sampled_log_uniformly() -> None:
    """A log-scale knob (charlm's lr) is sampled log-uniformly: half fall under the geometric mean."""
    task = load_task("charlm")
    rng = random.Random(2)
    lrs = [task.sample(rng).model_dump()["lr"] for _ in range(400)]
    below = sum(lr < math.sqrt(1e-4 * 3e-1) for lr in lrs) / len(lrs)
    assert 0.4 < below < 0.6
    assert min(lrs) >= 1e-4 and max(lrs) <= 3e-1


@pytest.mark.parametrize("name", ["branin", "hartmann6", "rosenbrock", "ackley", "sleep", "charlm"])
def test_builtin_spaces_follow_the_contract(name: str) -> None:
    """Every built-in space is frozen, forbids extras, has defaults and mixes allowed knob kinds."""
    task = load_task(name)
    kinds = {k.kind for k in knobs(task.space)}
    assert kinds <= {"float", "int", "choice", "bool"}
    assert task.validate_recipe({}) == task.space() == task.space.model_validate(task.baseline().model_dump())
    if name in FAMILIES:
        assert kinds == {"float", "int", "choice"}
    with pytest.raises(ValidationError):
        task.validate_recipe({"not_a_knob": 1})


def test_bad_space_is_rejected() -> None:
    """A task whose space breaks the rules (unbounded float) fails at construction with TypeError."""

    class Loose(BaseModel):
        model_config = ConfigDict(frozen=True, extra="forbid")
        x: float = 0.0

    class LooseTask(_Plugin):
        space: ClassVar[type[BaseModel]] = Loose

    with pytest.raises(TypeError, match=r"ge=\.\.\., le="):
        LooseTask()


def test_objective_is_lower_is_better() -> None:
    """objective() returns the metric for 'min' tasks and its negation for 'max' tasks."""
    assert load_task("branin").objective({"value": 2.5}) == 2.5
    assert _Plugin().objective({"score": 0.75}) == -0.75


# --- registry -----------------------------------------------------------------------------------


def test_builtins_are_registered() -> None:
    """The built-in tasks are available without entry points and their refs round-trip."""
    assert set(available_tasks()) >= {*FAMILIES, "sleep", "charlm"}
    assert load_task("hartmann6/17").ref == "hartmann6/17"
    assert load_task("branin").ref == "branin/0"
    assert load_task("charlm").ref == load_task("charlm/0").ref == "charlm"
    for ref in ("ackley/3", "charlm", "sleep/run-1"):
        assert load_task(load_task(ref).ref).ref == ref


def test_bad_instances_are_rejected() -> None:
    """A single-instance task refuses other instances; families want integers; ids are ref tokens."""
    for ref in ("charlm/1", "branin/x", "branin/-1", "sleep/a b"):
        with pytest.raises(ValueError):
            load_task(ref)


def test_module_class_with_instance() -> None:
    """``module:Class/instance`` loads a Task subclass from anywhere, and its ref round-trips."""
    task = load_task(f"{__name__}:_Plugin/3")
    assert isinstance(task, _Plugin) and task.instance == "3"
    assert task.ref == f"{__name__}:_Plugin/3"
    assert isinstance(load_task(task.ref), _Plugin)
    assert load_task(f"{__name__}:_Plugin").instance == "0"
    with pytest.raises(ValueError, match="not a Task"):
        load_task("math:sqrt")
    with pytest.raises(ValueError, match="cannot load"):
        load_task("no_such_module_xyz:Task")


def test_entry_points_register_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``hive.tasks`` entry point (name -> module:Class) is listed and loadable by name."""
    monkeypatch.setattr(_task, "_entry_point_tasks", lambda: {"plugin": f"{__name__}:_Plugin"})
    assert "plugin" in available_tasks()
    task = load_task("plugin/2")
    assert isinstance(task, _Plugin) and task.ref == "plugin/2"


def test_unknown_name_lists_available_tasks() -> None:
    """An unknown task name raises ValueError naming the available tasks."""
    with pytest.raises(ValueError, match=r"unknown task 'nope'.*branin.*charlm"):
        load_task("nope/1")


# --- sleep --------------------------------------------------------------------------------------


def test_sleep_task_sleeps_its_budget() -> None:
    """The sleep task sleeps ``budget`` milliseconds and returns a deterministic finite value."""
    task = load_task("sleep/bench")
    start = time.perf_counter()
    result = task.run(task.baseline(), seed=1, budget=30)
    assert time.perf_counter() - start >= 0.03
    assert result["slept_ms"] == 30.0
    assert task.run(task.baseline(), seed=1, budget=0)["value"] == result["value"]
    assert math.isfinite(result["value"])


# --- charlm -------------------------------------------------------------------------------------


def test_charlm_baseline_trains() -> None:
    """A baseline charlm run gives a finite val_bpb below a uniform guess, and the training loss falls."""
    task = load_task("charlm")
    result = task.run(task.baseline(), seed=0, budget=task.default_budget)
    assert all(math.isfinite(v) for v in result.values())
    assert 0 < result["val_bpb"] < 8
    assert result["train_loss_last"] < result["train_loss_first"]
    assert result["tokens"] <= task.default_budget


def test_charlm_is_deterministic() -> None:
    """Two charlm runs with the same recipe and seed give identical metrics; another seed differs."""
    task = load_task("charlm")
    recipe = task.validate_recipe({"n_layer": 1, "n_embd": 32, "dropout": 0.1})
    first = task.run(recipe, seed=4, budget=4096)
    assert first == task.run(recipe, seed=4, budget=4096)
    assert first != task.run(recipe, seed=5, budget=4096)


def test_charlm_divergent_recipe_raises() -> None:
    """Max lr, no warm-up, constant schedule and no clipping blows the loss up: TaskFailed, not NaN."""
    task = load_task("charlm")
    recipe = task.validate_recipe({"lr": 0.3, "warmup_frac": 0.0, "schedule": "constant", "grad_clip": 0.0})
    with pytest.raises(TaskFailed, match="diverged"):
        task.run(recipe, seed=0, budget=16_384)


def test_charlm_bad_recipe_is_a_validation_error() -> None:
    """Out-of-range, unknown-choice and extra knobs are rejected by pydantic with the field named."""
    task = load_task("charlm")
    for bad, field in (
        ({"lr": 1.0}, "lr"),
        ({"activation": "tanh"}, "activation"),
        ({"layers": 2}, "layers"),
    ):
        with pytest.raises(ValidationError, match=field):
            task.validate_recipe(bad)
