"""The deployer: one-shot use of the shared model (or the best known recipe) on new instances."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import zlib
from typing import Any, ClassVar

from pydantic import BaseModel

from streams import DeploymentFinished

from .._agent import Agent
from .._read_model import NOISE_SIGMAS
from .._task import Task, TaskFailed, load_task
from .researcher import DEFAULT_TASK

NEW_INSTANCE_BASE = 100_000
"""Deployments use instance indices from here on: never seen by researchers (held out)."""


class Deployer(Agent):
    """Active agent: take a new task instance, get one recipe (shared model, else the best
    recipe known for the family), run it and the baseline with the same seed, and publish
    ``DeploymentFinished`` with the outcome against the baseline."""

    type_name: ClassVar[str] = "deployer"
    temperature: ClassVar[float] = 0.3
    """Sampling temperature of one-shot model proposals (low: the policy's most likely recipe)."""

    async def setup(self) -> None:
        """Resolve the task family from ``--task``."""
        ref = self.task_ref or DEFAULT_TASK
        self.family = ref.split("/", 1)[0]
        self.template = load_task(ref)
        self.rng = random.Random(zlib.crc32(f"{self.agent_id}/{self.ctx.token}".encode()))
        self.runs = 0
        self.offset = zlib.crc32(self.agent_id.encode()) % 10_000 * 1000

    def new_instance(self) -> Task:
        """The next held-out instance of the family (the task itself for single-instance tasks)."""
        if getattr(self.template, "single_instance", False):
            return self.template
        return load_task(f"{self.family}/{NEW_INSTANCE_BASE + self.offset + self.runs}")

    def one_shot(self, task: Task) -> tuple[BaseModel, str]:
        """The recipe to deploy: from the model if loaded, else the family's best-known recipe."""
        if self.policy is not None:
            return self.policy.propose(task, None, None, [], self.rng, temperature=self.temperature), "model"
        best: tuple[float, dict[str, Any]] | None = None
        for ref, tv in self.view.tasks.items():
            if ref.split("/", 1)[0] != self.family or tv.best_recipe is None or tv.baseline_mean is None:
                continue
            gain = tv.baseline_mean - (tv.best_objective or tv.baseline_mean)
            scale = tv.noise_floor or 1.0
            if best is None or gain / scale > best[0]:
                best = (gain / scale, tv.best_recipe)
        if best is not None:
            return task.validate_recipe(best[1]), "best-known"
        return task.baseline(), "baseline"

    def family_noise(self) -> float | None:
        """Median noise floor over the family's instances (a new instance has none of its own)."""
        floors = [
            tv.noise_floor
            for ref, tv in self.view.tasks.items()
            if ref.split("/", 1)[0] == self.family and tv.noise_floor is not None
        ]
        return statistics.median(floors) if floors else None

    async def step(self) -> bool:
        """Deploy once on a new instance."""
        self.runs += 1
        task = self.new_instance()
        recipe, source = await self.in_thread(self.one_shot, task)
        seed = self.rng.randrange(2**31 - 1)
        version = self.model_version
        budget = task.default_budget
        self.state = f"deploying on {task.ref} ({source})"
        t0 = time.perf_counter()
        status, error, metrics, objective, base_obj = "ok", None, {}, None, None
        try:
            metrics = await asyncio.wait_for(self.in_thread(task.run, recipe, seed, budget), task.deadline_s)
            objective = task.objective(metrics)
            base_metrics = await asyncio.wait_for(
                self.in_thread(task.run, task.baseline(), seed, budget), task.deadline_s
            )
            base_obj = task.objective(base_metrics)
        except TaskFailed as e:
            status, error = "failed", e.reason[:4000]
        except TimeoutError:
            status, error = "timeout", f"no result within {task.deadline_s:g}s"
        sigma = self.family_noise()
        success = None
        if objective is not None and base_obj is not None:
            success = (
                objective < base_obj - NOISE_SIGMAS * sigma if sigma is not None else objective < base_obj
            )
        elif status != "ok":
            success = False
        await self.publish(
            self.new_event(
                DeploymentFinished,
                event_id=f"{self.agent_id}/deploy-{self.ctx.token}-{self.runs}/finish",
                model_version=version,
                task=task.ref,
                run_id=f"deploy-{self.ctx.token}-{self.runs}",
                recipe=recipe.model_dump(),
                metrics={k: float(v) for k, v in metrics.items()},
                objective=objective,
                baseline_objective=base_obj,
                cost_s=time.perf_counter() - t0,
                status=status,
                error=error,
                success=success,
            )
        )
        self.experiments += 1
        self.state = "idle"
        return True
