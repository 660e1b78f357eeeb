"""The autoresearch loop over a campaign: take an instance's budget, propose from the portfolio,
run it on a fixed budget, publish the trace with who proposed it and why."""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from typing import Any, ClassVar

from pydantic import BaseModel

from streams import ExperimentFinished, ExperimentStarted

from .._agent import Agent
from .._campaign import DEFAULT_INSTANCE_BUDGET, Campaign, parse_campaign
from .._claims import Claims
from .._guidance import merged_avoid, violates
from .._policy import wait_for_model
from .._portfolio import Portfolio
from .._proposer import MutationProposer, PriorProposer, Proposer
from .._read_model import MIN_REPLICATES
from .._task import Task, TaskFailed, load_task
from .._tpe import TPEProposer

DEFAULT_TASK = "hartmann6/0"
MAX_MODEL_ARMS = 4
"""Model versions kept as arms at once (the newest ones)."""
DEFAULT_MODEL_WAIT_S = 600.0
"""How long ``--require-model`` waits for the first model before the agent gives up."""


class Researcher(Agent):
    """Active agent working a campaign (``--task hartmann6/0-31``, a list, or one instance).

    Before each experiment it takes one unit of the current instance's budget
    (``instance_budget``; unlimited for a single instance unless given) and moves to the next
    instance with budget left when it is spent; when the whole campaign is spent it stops. On each
    instance it runs the baseline replicates first (the noise floor), then asks its
    :class:`~agents.Portfolio` (mutation, prior, TPE and every loaded model version, Thompson
    sampling on the hive's measured improvement per proposer and family, with an exploration
    floor) for a recipe that the instance's history has not seen and the guidance does not rule
    out. The trace records the arm (``proposer``) and why it was chosen (``proposer_reason``).

    Options (``ctx.options``): ``instance_budget``, ``floor``, ``require_model`` (wait for the
    first model before proposing) and ``model_wait_s`` (how long).
    """

    type_name: ClassVar[str] = "researcher"

    task: Task
    claims: Claims
    campaign: Campaign

    def arms(self) -> list[Proposer]:
        """The proposers every instance starts with (models are added as they load)."""
        return [MutationProposer(), PriorProposer(), TPEProposer()]

    use_models: ClassVar[bool] = True
    """Whether loaded model versions join the portfolio."""

    async def setup(self) -> None:
        """Parse the campaign, open the claims and campaign buckets, build the portfolio."""
        opts = self.ctx.options
        refs = parse_campaign(self.task_ref or DEFAULT_TASK)
        budget = opts.get("instance_budget")
        if budget is None and len(refs) > 1:
            budget = DEFAULT_INSTANCE_BUDGET
        self.rng = random.Random(zlib.crc32(f"{self.agent_id}/{self.ctx.token}".encode()))
        self.claims = await Claims(self.ctx.js, self.backoff).open()
        start = zlib.crc32(self.agent_id.encode()) % len(refs)
        self.campaign = await Campaign(
            self.ctx.js, refs, None if budget is None else int(budget), start=start, backoff=self.backoff
        ).open()
        self._tasks: dict[str, Task] = {}
        self.task = self.task_of(self.campaign.current)
        self.budget = float(opts.get("budget") or self.task.default_budget)
        self.base_arms = self.arms()
        self.models: dict[int, Proposer] = {}
        self.portfolio = Portfolio(
            self.base_arms,
            floor=float(opts.get("floor") or 0.05),
            rng=self.rng,
            family_stats=self.view.proposers,
        )
        self.require_model = bool(opts.get("require_model"))
        self.model_wait_s = float(opts.get("model_wait_s") or DEFAULT_MODEL_WAIT_S)
        self.runs = 0

    def task_of(self, ref: str) -> Task:
        """The task object of an instance of the campaign (loaded once)."""
        task = self._tasks.get(ref)
        if task is None:
            task = self._tasks[ref] = load_task(ref)
            if len(self._tasks) > 4096:  # bounded: a huge campaign keeps the recent ones
                self._tasks.pop(next(iter(self._tasks)))
        return task

    def refresh_arms(self) -> None:
        """Add the loaded model version as an arm (keeping the newest :data:`MAX_MODEL_ARMS`)."""
        policy, version = self.policy, self.model_version
        if not self.use_models or not isinstance(policy, Proposer) or version in self.models:
            return
        self.models[version] = policy
        for old in sorted(self.models)[:-MAX_MODEL_ARMS]:
            del self.models[old]
        self.portfolio.set_arms([*self.base_arms, *(self.models[v] for v in sorted(self.models))])
        self.log.info("model_arm_added", proposer=policy.name, arms=[a.name for a in self.portfolio.arms])

    # ----------------------------------------------------------------- the loop
    async def step(self) -> bool:
        """One experiment on the campaign: a baseline replicate while the instance lacks them,
        else a portfolio proposal; False once every instance's budget is spent."""
        if self.require_model and self.model_version <= 0:
            await wait_for_model(self, self.model_wait_s)
        ref = await self.campaign.next_instance()
        if ref is None:
            self.log.info("campaign_done", instances=len(self.campaign.refs), budget=self.campaign.budget)
            return False
        self.task = self.task_of(ref)
        plan = await self._plan(ref)
        if plan is None:
            await asyncio.sleep(0.05)  # everything claimed right now (the unit taken is spent)
            return True
        recipe, proposer, reason, seed, parent_id, reference, key = plan
        finished = False
        try:
            await self.run_experiment(recipe, proposer, seed, parent_id, reference, reason=reason)
            finished = True
        finally:
            # A finished run keeps its claim (until the bucket's TTL) as a "done" mark: another
            # agent whose read model has not seen the finish yet must not run it again. A run that
            # did not finish (this agent is stopping, or the publish failed) frees it for others.
            if not finished:
                await self.claims.release(key)
        return True

    async def _plan(
        self, ref: str
    ) -> tuple[BaseModel, str, str | None, int, str | None, float | None, str] | None:
        tv = self.view.task(ref)
        if len(tv.baselines) < MIN_REPLICATES:
            base = self.task.baseline()
            for seed in range(MIN_REPLICATES):
                if seed in tv.baselines:
                    continue
                key = await self.claims.claim(ref, {**base.model_dump(), "__seed": seed}, self.agent_id)
                if key:
                    return base, "baseline", "noise floor: baseline replicate", seed, None, None, key
        self.refresh_arms()
        avoid = merged_avoid(tv.guidance)

        def accept(recipe: BaseModel) -> bool:
            return not avoid or not violates(recipe.model_dump(), avoid)

        for _ in range(10):
            history = tv.history(self.task)
            recipe, proposer, reason = await self.in_thread(self.portfolio.choose, history, accept)
            key = await self.claims.claim(ref, recipe.model_dump(), self.agent_id)
            if key:
                seed = self.rng.randrange(1000, 2**31 - 1)
                return recipe, proposer, reason, seed, tv.best_event_id, tv.best_objective, key
        return None

    def propose(self, parent: BaseModel | None) -> tuple[BaseModel, str]:
        """One portfolio proposal for the current instance (``parent`` is ignored: the portfolio
        reads the instance's whole history); returns ``(recipe, proposer)``."""
        del parent
        recipe, proposer, _ = self.portfolio.choose(self.view.task(self.task.ref).history(self.task))
        return recipe, proposer

    async def run_experiment(
        self,
        recipe: BaseModel,
        proposer: str,
        seed: int,
        parent_id: str | None,
        reference: float | None,
        *,
        reason: str | None = None,
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
        # the model this action came from, pinned for both events: the arm's own version when a
        # model proposed it, else the model loaded now
        version = self.model_version
        for v, arm in self.models.items():
            if arm.name == proposer:
                version = v
        await self.publish(
            self.new_event(
                ExperimentStarted,
                event_id=f"{self.agent_id}/{run_id}/start",
                model_version=version,
                deadline_s=self.task.deadline_s,
                **common,
            )
        )
        self.state = f"running {run_id} on {self.task.ref} ({proposer})"
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
            proposer_reason=None if reason is None else reason[:200],
            **common,
        )
        await self.publish(finished)
        self.experiments += 1
        self.state = "idle"
        return finished
