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
    assert set(available_tasks()) >= {*FAMILIES, "sleep", "charlm", "lmrecipe", "augreg"}
    assert load_task("hartmann6/17").ref == "hartmann6/17"
    assert load_task("branin").ref == "branin/0"
    assert load_task("charlm").ref == load_task("charlm/0").ref == "charlm"
    for ref in ("ackley/3", "charlm", "charlm/5", "sleep/run-1", "lmrecipe/1001", "augreg/7"):
        assert load_task(load_task(ref).ref).ref == ref


def test_bad_instances_are_rejected() -> None:
    """Families (charlm too) want non-negative integer instances; ids are ref tokens."""
    for ref in ("charlm/x", "branin/x", "branin/-1", "sleep/a b"):
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


# --- optimum and true objective ---------------------------------------------------------------

OPTIMUM_FAMILIES = [*FAMILIES, "lmrecipe", "augreg"]


@pytest.mark.parametrize("family", OPTIMUM_FAMILIES)
def test_no_recipe_beats_the_optimum(family: str) -> None:
    """Over many sampled and mutated recipes on several instances, none has a true objective below
    optimum(); the optimum recipe reaches it; the baseline is strictly worse."""
    rng = random.Random(11)
    for index in (0, 3, 1000):
        task = load_task(f"{family}/{index}")
        optimum = task.optimum()
        assert optimum is not None and math.isfinite(optimum)
        best = task.optimum_recipe()  # type: ignore[attr-defined]
        assert task.true_objective(best) == pytest.approx(optimum, abs=1e-9)
        base = task.true_objective(task.baseline())
        assert base is not None and base > optimum
        recipe = best
        for _ in range(1500):
            sampled, recipe = task.sample(rng), task.mutate(recipe, rng, scale=0.02)
            for r in (sampled, recipe):
                value = task.true_objective(r)
                assert value is not None and value >= optimum - 1e-9


@pytest.mark.parametrize("family", OPTIMUM_FAMILIES)
def test_true_objective_is_the_noise_free_run(family: str) -> None:
    """The mean of many noisy evaluations converges on true_objective (noise is zero-mean, small)."""
    task = load_task(f"{family}/2")
    recipe = task.sample(random.Random(3))
    observed = task.objective(task.run(recipe, seed=0, budget=1000))
    true = task.true_objective(recipe)
    assert true is not None
    base_gap = task.true_objective(task.baseline()) - task.optimum()  # type: ignore[operator]
    assert abs(observed - true) < 0.01 * base_gap


def test_tasks_without_truth_say_none() -> None:
    """A task that cannot know its optimum (charlm, sleep) reports None rather than a guess."""
    for ref in ("charlm", "sleep/0"):
        task = load_task(ref)
        assert task.optimum() is None and task.true_objective(task.baseline()) is None


def test_lmrecipe_best_lr_moves_with_width_and_batch() -> None:
    """lmrecipe's best lr scales ~1/width and ~sqrt(batch), and the loss agrees: at double width,
    half the lr beats the old best lr."""
    task = load_task("lmrecipe/5")
    assert task.best_log_lr(512, 64) == pytest.approx(task.best_log_lr(256, 64) - math.log(2))  # type: ignore[attr-defined]
    assert task.best_log_lr(256, 256) == pytest.approx(task.best_log_lr(256, 64) + math.log(2))  # type: ignore[attr-defined]
    base = task.optimum_recipe()  # type: ignore[attr-defined]
    wide = base.model_copy(update={"width": base.width * 2})
    assert task.true_objective(wide.model_copy(update={"lr": base.lr / 2})) < task.true_objective(wide)


def test_lmrecipe_deep_nets_need_warmup() -> None:
    """Without warm-up, the loss penalty grows with depth; with the needed warm-up it vanishes."""
    task = load_task("lmrecipe/1")
    best = task.optimum_recipe()  # type: ignore[attr-defined]

    def penalty(depth: int, warmup: float) -> float:
        recipe = best.model_copy(update={"depth": depth, "warmup_frac": warmup})
        needed = best.model_copy(update={"depth": depth, "warmup_frac": task.warmup_needed(depth)})  # type: ignore[attr-defined]
        return task.true_objective(recipe) - task.true_objective(needed)  # type: ignore[operator]

    assert 0 < penalty(4, 0.0) < penalty(12, 0.0) < penalty(36, 0.0)
    assert task.warmup_needed(36) > task.warmup_needed(4)  # type: ignore[attr-defined]


def test_instances_share_structure_but_differ() -> None:
    """Instances of the surrogate families have different optima and optimum recipes, deterministically."""
    for family in ("lmrecipe", "augreg"):
        a, b = load_task(f"{family}/1"), load_task(f"{family}/2")
        assert a.optimum() != b.optimum()
        assert a.optimum_recipe() != b.optimum_recipe()  # type: ignore[attr-defined]
        assert load_task(f"{family}/1").optimum() == a.optimum()


def test_augreg_optimal_regularisation_falls_with_dataset_size() -> None:
    """Across augreg instances, bigger datasets want less dropout and weight decay, fewer epochs."""
    tasks = sorted((load_task(f"augreg/{i}") for i in range(40)), key=lambda t: t.dataset_size)  # type: ignore[attr-defined]
    small, large = tasks[:10], tasks[-10:]
    for attr in ("best_dropout", "best_log_wd", "best_log_epochs", "best_strength"):
        assert max(getattr(t, attr) for t in large) < min(getattr(t, attr) for t in small), attr


def test_surrogate_runs_are_cheap() -> None:
    """A surrogate run costs microseconds (well under 1 ms), so studies of hundreds of trials are instant."""
    import time

    for ref in ("lmrecipe/3", "augreg/3"):
        task = load_task(ref)
        recipe = task.baseline()
        start = time.perf_counter()
        for seed in range(500):
            task.run(recipe, seed, 1)
        assert (time.perf_counter() - start) / 500 < 1e-3


# --- charlm instances ---------------------------------------------------------------------------


def test_charlm_instances_change_the_architecture() -> None:
    """charlm/0 is the bare charlm (same recipe, same model); other indices scale width/depth/context."""
    assert load_task("charlm/0").ref == "charlm"
    default = load_task("charlm")
    recipe = default.validate_recipe({"n_layer": 1, "n_embd": 32, "block_size": 16})
    assert default.architecture(recipe) == recipe  # type: ignore[attr-defined]
    variants = {load_task(f"charlm/{i}").architecture(recipe) for i in range(1, 12)}  # type: ignore[attr-defined]
    assert len(variants) >= 3
    widths = {v.n_embd for v in variants}
    assert min(widths) < 32 < max(widths)


def test_charlm_variant_trains_a_different_model() -> None:
    """A charlm variant with another width trains a model with another parameter count."""
    variant = next(
        load_task(f"charlm/{i}")
        for i in range(1, 50)
        if load_task(f"charlm/{i}").width_mult != 1.0  # type: ignore[attr-defined]
    )
    recipe = variant.validate_recipe({"n_layer": 1, "n_embd": 32, "block_size": 16, "batch_size": 4})
    a = variant.run(recipe, seed=0, budget=512)
    b = load_task("charlm").run(recipe, seed=0, budget=512)
    assert a["params"] != b["params"] and math.isfinite(a["val_bpb"])
