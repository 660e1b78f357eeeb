"""Base of the surrogate task families: a closed-form, noise-free loss plus seeded observation noise.

A surrogate family models how a real training recipe's loss depends on its knobs, with structure
shared by every instance and per-instance parameters drawn from a RNG seeded by
``"family/index"``. Subclasses implement :meth:`SurrogateTask.loss` (the noise-free loss) and
:meth:`SurrogateTask.optimum` (its exact minimum over the space); a run is that loss plus the
mean of ``budget`` Gaussian evaluations of noise (``noise_sd`` per evaluation, a few percent of
a typical baseline-to-optimum gap), seeded by the run seed and the recipe. Microseconds per run.
"""

from __future__ import annotations

import random
from abc import abstractmethod
from typing import ClassVar, Literal

from pydantic import BaseModel

from agents._task import Task

MAX_EVALUATIONS = 1000


class SurrogateTask(Task):
    """An instance of a surrogate family: ``run`` = noise-free :meth:`loss` + seeded noise.

    Instances are non-negative integers; ``self.rng`` (seeded by ``"family/index"``) is there for
    the subclass to draw the instance's parameters from in its ``__init__``.
    """

    metric: ClassVar[str] = "val_loss"
    direction: ClassVar[Literal["min", "max"]] = "min"
    default_budget: ClassVar[float] = 1.0
    deadline_s: ClassVar[float] = 10.0
    noise_sd: float = 0.01
    """Observation noise per evaluation, in loss units (a subclass may set it per instance)."""

    def __init__(self, instance: str = "0") -> None:
        try:
            index = int(instance)
        except ValueError:
            raise ValueError(f"{self.name} instances are non-negative integers, not {instance!r}") from None
        if index < 0:
            raise ValueError(f"{self.name} instances are non-negative integers, not {instance!r}")
        super().__init__(str(index))
        self.index = index
        self.rng = random.Random(f"{self.name}/{index}")

    @abstractmethod
    def loss(self, recipe: BaseModel) -> float:
        """The noise-free loss of a (validated) recipe on this instance."""

    @abstractmethod
    def optimum(self) -> float:
        """The exact minimum of :meth:`loss` over the recipe space."""

    def true_objective(self, recipe: BaseModel) -> float:
        """The noise-free objective (the loss is minimised, so the loss itself)."""
        return self.loss(self.validate_recipe(recipe))

    def run(self, recipe: BaseModel, seed: int, budget: float) -> dict[str, float]:
        """The noise-free loss plus the mean of ``budget`` noisy evaluations (1 to 1000)."""
        recipe = self.validate_recipe(recipe)
        n = max(1, min(MAX_EVALUATIONS, round(budget)))
        noise_rng = random.Random(f"{self.ref}|{int(seed)}|{recipe.model_dump_json()}")
        noise = sum(noise_rng.gauss(0.0, self.noise_sd) for _ in range(n)) / n
        return {self.metric: self.loss(recipe) + noise, "evaluations": float(n)}
