"""The autoresearch loop: read the best recipe for the task instance, propose a change, run
it on a fixed budget, publish the trace with success judged against the noise floor."""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from typing import Any, ClassVar

from pydantic import BaseModel

from streams import ExperimentFinished, ExperimentStarted

from .._agent import Agent
from .._claims import Claims
from .._guidance import merged_avoid, violates
from .._read_model import MIN_REPLICATES
from .._task import Task, TaskFailed, load_task

DEFAULT_TASK = "hartmann6/0"


class Researcher(Agent):
    """Active agent: baseline replicates first (the noise floor), then propose → run → publish.

    Proposals come from the shared model once one is loaded (``proposer="model"``), else from
    a mutation of the current best (``"mutation"``) with some fresh samples (``"prior"``), and
    never from a region the task's guidance says to avoid.
    """

    type_name: ClassVar[str] = "researcher"
    explore: ClassVar[float] = 0.2
    """Probability of a fresh sample instead of a mutation when no model is loaded."""

    task: Task
    claims: Claims

    async def setup(self) -> None:
        """Load the task and open the claims bucket."""
        self.task = load_task(self.task_ref or DEFAULT_TASK)
        self.rng = random.Random(zlib.crc32(f"{self.agent_id}/{self.ctx.token}".encode()))
        self.claims = await Claims(self.ctx.js, self.backoff).open()
        self.budget = float(self.ctx.options.get("budget") or self.task.default_budget)
        self.runs = 0

    # ----------------------------------------------------------------- proposing
    def propose_prior(self, parent: BaseModel | None) -> tuple[BaseModel, str]:
        """A mutation of the parent, or a fresh sample (no shared model yet)."""
        if parent is None or self.rng.random() < self.explore:
            return self.task.sample(self.rng), "prior"
        return self.task.mutate(parent, self.rng), "mutation"

    def propose_model(self, parent: BaseModel | None) -> tuple[BaseModel, str] | None:
        """A proposal from the shared model, or None when no model is loaded."""
        policy = self.policy
        if policy is None:
            return None
        tv = self.view.task(self.task.ref)
        guidance = [g.hint for g in tv.guidance if g.hint]
        recipe = policy.propose(
            self.task,
            parent.model_dump() if parent is not None else None,
            tv.best_objective,
            guidance,
            self.rng,
        )
        return recipe, "model"

    def propose(self, parent: BaseModel | None) -> tuple[BaseModel, str]:
        """The next recipe to try and who proposed it; avoids guided-away regions."""
        avoid = merged_avoid(self.view.task(self.task.ref).guidance)
        candidate: tuple[BaseModel, str] | None = None
        for _ in range(20):
            candidate = self.propose_model(parent) or self.propose_prior(parent)
            if not violates(candidate[0].model_dump(), avoid):
                return candidate
        assert candidate is not None
        return candidate

    # ----------------------------------------------------------------- the loop
    async def step(self) -> bool:
        """One experiment: a missing baseline replicate, else a proposal from the best so far."""
        tv = self.view.task(self.task.ref)
        plan = await self._plan(tv)
        if plan is None:
            await asyncio.sleep(0.05)  # everything claimed right now; try again
            return True
        recipe, proposer, seed, parent_id, reference, key = plan
        try:
            await self.run_experiment(recipe, proposer, seed, parent_id, reference)
        finally:
            await self.claims.release(key)
        return True

    async def _plan(self, tv: Any) -> tuple[BaseModel, str, int, str | None, float | None, str] | None:
        if len(tv.baselines) < MIN_REPLICATES:
            base = self.task.baseline()
            for seed in range(MIN_REPLICATES):
                if seed in tv.baselines:
                    continue
                key = await self.claims.claim(
                    self.task.ref, {**base.model_dump(), "__seed": seed}, self.agent_id
                )
                if key:
                    return base, "baseline", seed, None, None, key
        parent = self.task.validate_recipe(tv.best_recipe) if tv.best_recipe else None
        for _ in range(10):
            recipe, proposer = await self.in_thread(self.propose, parent)
            key = await self.claims.claim(self.task.ref, recipe.model_dump(), self.agent_id)
            if key:
                return (
                    recipe,
                    proposer,
                    self.rng.randrange(1000, 2**31 - 1),
                    tv.best_event_id,
                    tv.best_objective,
                    key,
                )
        return None

    async def run_experiment(
        self, recipe: BaseModel, proposer: str, seed: int, parent_id: str | None, reference: float | None
    ) -> ExperimentFinished:
        """Publish Started, run the task on this agent's thread, publish Finished."""
        self.runs += 1
        run_id = f"{self.ctx.token}-{self.runs}"
        common: dict[str, Any] = dict(
            task=self.task.ref,
            run_id=run_id,
            parent_id=parent_id,
            recipe=recipe.model_dump(),
            seed=seed,
            budget=self.budget,
        )
        version = self.model_version  # the model this action came from, pinned for both events
        await self.publish(
            self.new_event(
                ExperimentStarted,
                event_id=f"{self.agent_id}/{run_id}/start",
                model_version=version,
                deadline_s=self.task.deadline_s,
                **common,
            )
        )
        self.state = f"running {run_id}"
        t0 = time.perf_counter()
        status, error, metrics, objective = "ok", None, {}, None
        try:
            metrics = await asyncio.wait_for(
                self.in_thread(self.task.run, recipe, seed, self.budget), self.task.deadline_s
            )
            objective = self.task.objective(metrics)
        except TaskFailed as e:
            status, error = "failed", e.reason[:4000]
        except TimeoutError:
            status, error = "timeout", f"no result within the {self.task.deadline_s:g}s deadline"
        except Exception as e:  # a task bug must not kill the agent
            status, error = "failed", f"{type(e).__name__}: {e}"[:4000]
        success = (
            None
            if proposer == "baseline"
            else (self.view.is_success(self.task.ref, objective, reference) if status == "ok" else False)
        )
        finished = self.new_event(
            ExperimentFinished,
            event_id=f"{self.agent_id}/{run_id}/finish",
            model_version=version,
            metrics={k: float(v) for k, v in metrics.items()},
            objective=objective,
            cost_s=time.perf_counter() - t0,
            status=status,
            error=error,
            success=success,
            proposer=proposer,
            **common,
        )
        await self.publish(finished)
        self.experiments += 1
        self.state = "idle"
        return finished
