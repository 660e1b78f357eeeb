"""Synthetic task families built on classic optimisation test functions (milliseconds per run).

Every family (``branin``, ``hartmann6``, ``rosenbrock``, ``ackley``) has infinitely many instances
``family/<index>``. An instance draws, from a RNG seeded by ``"family/index"``, a shift of the
optimum (a fraction of the box), a scale, an offset, a per-optimiser penalty (one optimiser is
free) and the best number of restarts. The recipe mixes the continuous coordinates ``x1..xd`` with
categoricals (``warp``, an input re-parametrisation; ``optimizer``, a known penalty) and an int
(``restarts``: too few leave residual error, too many cost time). The observed ``value`` is::

    scale * (log1p(f(z - shift) - f*) + penalty[optimizer] + restart_cost(restarts)) + offset + noise

with Gaussian noise (3% of scale per evaluation, seeded by the run seed and the recipe),
averaged over ``budget`` evaluations. Lower is better; :meth:`SyntheticTask.optimum_recipe` is a
recipe reaching the noise-free optimum :meth:`SyntheticTask.optimum` (= ``offset``), and
:meth:`SyntheticTask.true_objective` is a recipe's noise-free value.
"""

from __future__ import annotations

import itertools
import math
import random
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from agents._task import Task

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "lbfgs")
NOISE_FRAC = 0.03
"""Observation noise (standard deviation per evaluation) as a fraction of the instance scale."""
MAX_EVALUATIONS = 1000


def recipe_space(
    model_name: str, lower: Sequence[float], upper: Sequence[float], start: Sequence[float]
) -> type[BaseModel]:
    """A recipe model with coordinates ``x1..xd`` in the box (defaults ``start``), plus the shared knobs."""
    fields: dict[str, Any] = {
        f"x{i + 1}": (float, Field(default=s, ge=lo, le=hi, description=f"coordinate {i + 1}"))
        for i, (lo, hi, s) in enumerate(zip(lower, upper, start, strict=True))
    }
    fields["warp"] = (
        Literal["none", "sqrt", "square"],
        Field(default="none", description="re-parametrisation of each coordinate within its box"),
    )
    fields["optimizer"] = (
        Literal["sgd", "adam", "lbfgs"],
        Field(default="sgd", description="inner optimiser; each instance penalises some of them"),
    )
    fields["restarts"] = (int, Field(default=1, ge=1, le=8, description="inner restarts (error vs cost)"))
    model: type[BaseModel] = create_model(
        model_name, __config__=ConfigDict(frozen=True, extra="forbid"), **fields
    )
    return model


class SyntheticTask(Task):
    """Base of the synthetic families: an instance-shifted, scaled, noisy test function.

    Subclasses set the box (``lower``, ``upper``), a known minimiser ``x_star``, ``shift_frac``
    (largest shift of the optimum as a fraction of the box) and :meth:`function`.
    """

    metric: ClassVar[str] = "value"
    direction: ClassVar[Literal["min", "max"]] = "min"
    default_budget: ClassVar[float] = 1.0
    deadline_s: ClassVar[float] = 10.0
    lower: ClassVar[tuple[float, ...]]
    upper: ClassVar[tuple[float, ...]]
    x_star: ClassVar[tuple[float, ...]]
    shift_frac: ClassVar[float] = 0.1

    def __init__(self, instance: str = "0") -> None:
        try:
            index = int(instance)
        except ValueError:
            raise ValueError(f"{self.name} instances are non-negative integers, not {instance!r}") from None
        if index < 0:
            raise ValueError(f"{self.name} instances are non-negative integers, not {instance!r}")
        super().__init__(str(index))
        self.index = index
        rng = random.Random(f"{self.name}/{index}")
        self.shift = tuple(
            rng.uniform(-self.shift_frac, self.shift_frac) * (hi - lo)
            for lo, hi in zip(self.lower, self.upper, strict=True)
        )
        self.scale = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
        self.offset = rng.uniform(-1.0, 1.0)
        best = rng.choice(OPTIMIZERS)
        self.penalty = {o: 0.0 if o == best else rng.uniform(0.05, 0.3) for o in OPTIMIZERS}
        self.best_restarts = rng.randint(2, 6)
        self.f_star = self.function(self.x_star)

    @staticmethod
    @abstractmethod
    def function(z: Sequence[float]) -> float:
        """The raw test function at point ``z``."""

    def _restart_cost(self, restarts: int) -> float:
        k, best = restarts, self.best_restarts
        return 0.04 * (best / k + k / best) - 0.08

    def _point(self, recipe: BaseModel) -> list[float]:
        """The function's argument: the warped coordinates, minus the instance's shift."""
        values = recipe.model_dump()
        warp = values["warp"]
        point = []
        for i, (lo, hi, shift) in enumerate(zip(self.lower, self.upper, self.shift, strict=True)):
            u = (values[f"x{i + 1}"] - lo) / (hi - lo)
            u = math.sqrt(u) if warp == "sqrt" else u * u if warp == "square" else u
            point.append(lo + (hi - lo) * u - shift)
        return point

    def true_value(self, recipe: BaseModel) -> float:
        """The noise-free value of ``recipe`` on this instance (for benchmarks: regret)."""
        recipe = self.validate_recipe(recipe)
        values = recipe.model_dump()
        gap = max(0.0, self.function(self._point(recipe)) - self.f_star)
        raw = math.log1p(gap) + self.penalty[values["optimizer"]] + self._restart_cost(values["restarts"])
        return self.scale * raw + self.offset

    def true_objective(self, recipe: BaseModel) -> float:
        """The noise-free objective of ``recipe`` (the value is minimised, so the value itself)."""
        return self.true_value(recipe)

    def optimal_value(self) -> float:
        """The best noise-free value of this instance (reached by :meth:`optimum_recipe`)."""
        return self.offset

    def optimum(self) -> float:
        """The noise-free optimal objective: the offset (zero gap, free optimiser, best restarts)."""
        return self.offset

    def optimum_recipe(self) -> BaseModel:
        """A recipe at the instance's optimum (no warp, the free optimiser, the best restarts)."""
        coords = {f"x{i + 1}": x + s for i, (x, s) in enumerate(zip(self.x_star, self.shift, strict=True))}
        best = min(OPTIMIZERS, key=self.penalty.__getitem__)
        return self.space.model_validate(
            {**coords, "warp": "none", "optimizer": best, "restarts": self.best_restarts}
        )

    def run(self, recipe: BaseModel, seed: int, budget: float) -> dict[str, float]:
        """The mean of ``budget`` noisy evaluations of the recipe (at least one, at most 1000)."""
        recipe = self.validate_recipe(recipe)
        n = max(1, min(MAX_EVALUATIONS, round(budget)))
        noise_rng = random.Random(f"{self.ref}|{int(seed)}|{recipe.model_dump_json()}")
        noise = sum(noise_rng.gauss(0.0, NOISE_FRAC * self.scale) for _ in range(n)) / n
        return {"value": self.true_value(recipe) + noise, "evaluations": float(n)}


class Branin(SyntheticTask):
    """Branin-Hoo (2-d), box [-5, 10] x [0, 15]; baseline at (0, 10)."""

    name: ClassVar[str] = "branin"
    lower = (-5.0, 0.0)
    upper = (10.0, 15.0)
    x_star = (math.pi, 2.275)
    space: ClassVar[type[BaseModel]] = recipe_space("BraninRecipe", lower, upper, (0.0, 10.0))

    @staticmethod
    def function(z: Sequence[float]) -> float:
        """Branin-Hoo: three global minima of 0.397887."""
        x1, x2 = z
        b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
        return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


_H_ALPHA = (1.0, 1.2, 3.0, 3.2)
_H_A = (
    (10.0, 3.0, 17.0, 3.5, 1.7, 8.0),
    (0.05, 10.0, 17.0, 0.1, 8.0, 14.0),
    (3.0, 3.5, 1.7, 10.0, 17.0, 8.0),
    (17.0, 8.0, 0.05, 10.0, 0.1, 14.0),
)
_H_P = (
    (0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886),
    (0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991),
    (0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650),
    (0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381),
)


class Hartmann6(SyntheticTask):
    """Hartmann (6-d), box [0, 1]^6; baseline at the centre."""

    name: ClassVar[str] = "hartmann6"
    lower = (0.0,) * 6
    upper = (1.0,) * 6
    x_star = (0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573)
    shift_frac = 0.08
    space: ClassVar[type[BaseModel]] = recipe_space("Hartmann6Recipe", lower, upper, (0.5,) * 6)

    @staticmethod
    def function(z: Sequence[float]) -> float:
        """Hartmann 6: global minimum -3.32237."""
        return -sum(
            alpha * math.exp(-sum(a * (x - p) ** 2 for a, x, p in zip(row_a, z, row_p, strict=True)))
            for alpha, row_a, row_p in zip(_H_ALPHA, _H_A, _H_P, strict=True)
        )


class Rosenbrock(SyntheticTask):
    """Rosenbrock (4-d), box [-2, 2]^4; baseline at (-1, 1, 1, 1)."""

    name: ClassVar[str] = "rosenbrock"
    lower = (-2.0,) * 4
    upper = (2.0,) * 4
    x_star = (1.0,) * 4
    space: ClassVar[type[BaseModel]] = recipe_space("RosenbrockRecipe", lower, upper, (-1.0, 1.0, 1.0, 1.0))

    @staticmethod
    def function(z: Sequence[float]) -> float:
        """Rosenbrock's banana valley: global minimum 0 at (1, ..., 1)."""
        return sum(100 * (b - a * a) ** 2 + (1 - a) ** 2 for a, b in itertools.pairwise(z))


class Ackley(SyntheticTask):
    """Ackley (5-d), box [-5, 5]^5; baseline at (2.5, -2.5, 2.5, -2.5, 2.5)."""

    name: ClassVar[str] = "ackley"
    lower = (-5.0,) * 5
    upper = (5.0,) * 5
    x_star = (0.0,) * 5
    space: ClassVar[type[BaseModel]] = recipe_space("AckleyRecipe", lower, upper, (2.5, -2.5, 2.5, -2.5, 2.5))

    @staticmethod
    def function(z: Sequence[float]) -> float:
        """Ackley: many local minima, global minimum 0 at the origin."""
        d = len(z)
        rms = math.sqrt(sum(x * x for x in z) / d)
        cosines = sum(math.cos(2 * math.pi * x) for x in z) / d
        return -20 * math.exp(-0.2 * rms) - math.exp(cosines) + 20 + math.e
