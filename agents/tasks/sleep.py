"""An I/O-bound task for swarm benchmarks: a run sleeps ``budget`` milliseconds, then scores a bowl."""

from __future__ import annotations

import random
import time
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from agents._task import Task


class SleepRecipe(BaseModel):
    """Two coordinates of a noisy bowl with its minimum at (0.3, 0.7)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    x: float = Field(default=0.5, ge=0.0, le=1.0)
    y: float = Field(default=0.5, ge=0.0, le=1.0)


class SleepTask(Task):
    """Sleeps ``budget`` ms per run (no CPU), so a benchmark measures the swarm, not the work.

    Any instance id is accepted; the value is ``(x - 0.3)^2 + (y - 0.7)^2`` plus small seeded noise.
    """

    name: ClassVar[str] = "sleep"
    space: ClassVar[type[BaseModel]] = SleepRecipe
    metric: ClassVar[str] = "value"
    direction: ClassVar[Literal["min", "max"]] = "min"
    default_budget: ClassVar[float] = 50.0
    deadline_s: ClassVar[float] = 60.0

    def run(self, recipe: BaseModel, seed: int, budget: float) -> dict[str, float]:
        """Sleep ``budget`` milliseconds (clamped to [0, 60 000]) and return the bowl's noisy value."""
        recipe = self.validate_recipe(recipe)
        slept_ms = min(60_000.0, max(0.0, float(budget)))
        time.sleep(slept_ms / 1000)
        values = recipe.model_dump()
        noise = random.Random(f"{self.ref}|{int(seed)}|{recipe.model_dump_json()}").gauss(0.0, 0.01)
        value = (values["x"] - 0.3) ** 2 + (values["y"] - 0.7) ** 2 + noise
        return {"value": value, "slept_ms": slept_ms}
