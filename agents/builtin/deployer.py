"""The deployer: one-shot use of the shared model on new instances, measured against the incumbent."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import zlib
from typing import Any, ClassVar, NamedTuple

from pydantic import BaseModel

from streams import DeploymentFinished

from .._agent import Agent
from .._campaign import Campaign, parse_campaign, parse_instances
from .._policy import wait_for_model
from .._proposer import History, Proposer
from .._read_model import NOISE_SIGMAS
from .._task import Task, TaskFailed, load_task
from .researcher import DEFAULT_MODEL_WAIT_S, DEFAULT_TASK

NEW_INSTANCE_BASE = 100_000
"""Deployments use instance indices from here on: never seen by researchers (held out)."""


class Incumbent(NamedTuple):
    """The family's best-known recipe, the researched instance it is best on, and its objective there."""

    task: str
    recipe: dict[str, Any]
    objective: float


class Deployer(Agent):
    """Active agent: take a new task instance, propose one recipe for it, and measure it against
    what the swarm would deploy without the proposal.

    New instances come from ``deploy_instances`` (``--deploy-instances 1000-1999``): each is
    taken once, by one deployer, through the campaign bucket (namespace ``deploy``, budget 1), and
    one that researchers have run on is skipped; without the option, each deployer walks its own
    block from :data:`NEW_INSTANCE_BASE`. ``require_model`` / ``model_wait_s``: wait for the
    first model before deploying.

    The reference is the family's *incumbent*: the best-known recipe of the researched instance
    with the largest gain over its baseline (in noise-floor units); while none is known, the
    task's baseline. The proposal comes from the newest loaded model (a proposer given the new
    instance's empty history; ``proposer`` is its name, ``model-v<N>``), else from a mutation of
    the reference (the researchers' heuristic).
    Proposal and reference run on the same instance with the same seed; ``success`` means the
    proposal beat the reference by more than the family's noise floor. Successful deployments are
    training data for the next model, so each generation learns what beats the incumbent on
    instances nobody researched (ReST-EM on held-out instances).
    """

    type_name: ClassVar[str] = "deployer"

    async def setup(self) -> None:
        """Resolve the task family from ``--task`` (an instance or a campaign) and the range."""
        ref = parse_campaign(self.task_ref or DEFAULT_TASK)[0]
        self.template = load_task(ref)
        self.family = self.template.ref.rsplit("/", 1)[0] if not self.template.single_instance else ref
        self.rng = random.Random(zlib.crc32(f"{self.agent_id}/{self.ctx.token}".encode()))
        self.runs = 0
        self.offset = zlib.crc32(self.agent_id.encode()) % 10_000 * 1000
        opts = self.ctx.options
        self.require_model = bool(opts.get("require_model"))
        self.model_wait_s = float(opts.get("model_wait_s") or DEFAULT_MODEL_WAIT_S)
        self.instances: Campaign | None = None
        spec = opts.get("deploy_instances")
        if spec and not self.template.single_instance:
            refs = [f"{self.family}/{i}" for i in parse_instances(str(spec))]
            start = zlib.crc32(self.agent_id.encode()) % len(refs)
            self.instances = await Campaign(
                self.ctx.js, refs, 1, namespace="deploy", start=start, backoff=self.backoff
            ).open()

    async def next_instance(self) -> Task | None:
        """The next held-out instance: taken once from the range (skipping researched ones), or
        this deployer's next own one; None when the range is used up."""
        if self.template.single_instance:
            return self.template
        if self.instances is None:
            return load_task(f"{self.family}/{NEW_INSTANCE_BASE + self.offset + self.runs}")
        while True:
            ref = await self.instances.next_instance()
            if ref is None:
                return None
            tv = self.view.tasks.get(ref)
            if tv is None or tv.experiments == 0:
                return load_task(ref)

    def new_instance(self) -> Task:
        """This deployer's next own held-out instance (no range given)."""
        if getattr(self.template, "single_instance", False):
            return self.template
        return load_task(f"{self.family}/{NEW_INSTANCE_BASE + self.offset + self.runs}")

    def incumbent(self) -> Incumbent | None:
        """The family's best-known recipe: the researched instance whose best beat its baseline
        by the most noise floors (None until one has a noise floor)."""
        best: tuple[float, Incumbent] | None = None
        for ref, tv in self.view.tasks.items():
            if ref.split("/", 1)[0] != self.family or tv.best_recipe is None or tv.noise_floor is None:
                continue
            if tv.best_objective is None:
                continue
            gain = (tv.baseline_mean or 0.0) - tv.best_objective
            score = gain / max(tv.noise_floor, 1e-12)
            if best is None or score > best[0]:
                best = (score, Incumbent(ref, tv.best_recipe, tv.best_objective))
        return None if best is None else best[1]

    def plan(self, task: Task) -> tuple[BaseModel, str, BaseModel, Incumbent | None]:
        """``(proposal, proposer, reference, incumbent)`` for one deployment on ``task``; the
        reference is the incumbent's recipe, or the task's baseline while there is none."""
        known = self.incumbent()
        reference = task.validate_recipe(known.recipe) if known is not None else task.baseline()
        policy = self.policy
        if isinstance(policy, Proposer):
            try:
                recipe = task.validate_recipe(policy.propose(History(task), self.rng))
                return recipe, policy.name, reference, known
            except Exception as e:  # unavailable for this task, or a bug: the heuristic deploys
                self.log.warning(
                    "model_propose_failed", proposer=policy.name, error=f"{type(e).__name__}: {e}"
                )
        return task.mutate(reference, self.rng), "mutation", reference, known

    def family_noise(self) -> float | None:
        """Median noise floor over the family's instances (a new instance has none of its own)."""
        floors = [
            tv.noise_floor
            for ref, tv in self.view.tasks.items()
            if ref.split("/", 1)[0] == self.family and tv.noise_floor is not None
        ]
        return statistics.median(floors) if floors else None

    async def step(self) -> bool:
        """Deploy once on a new instance; False when the instance range is used up."""
        if self.require_model and self.model_version <= 0:
            await wait_for_model(self, self.model_wait_s)
        self.runs += 1
        task = await self.next_instance()
        if task is None:
            self.log.info("deploy_range_done", family=self.family)
            return False
        recipe, proposer, reference, known = await self.in_thread(self.plan, task)
        kind = "incumbent" if known is not None else "baseline"
        seed = self.rng.randrange(2**31 - 1)
        version = self.model_version
        budget = task.default_budget
        self.state = f"deploying on {task.ref} ({proposer} vs {kind})"
        t0 = time.perf_counter()
        status, error, metrics, objective, ref_obj = "ok", None, {}, None, None
        try:
            metrics = await asyncio.wait_for(self.in_thread(task.run, recipe, seed, budget), task.deadline_s)
            objective = task.objective(metrics)
            ref_metrics = await asyncio.wait_for(
                self.in_thread(task.run, reference, seed, budget), task.deadline_s
            )
            ref_obj = task.objective(ref_metrics)
        except TaskFailed as e:
            status, error = "failed", e.reason[:4000]
        except TimeoutError:
            status, error = "timeout", f"no result within {task.deadline_s:g}s"
        sigma = self.family_noise()
        success = None
        if objective is not None and ref_obj is not None:
            success = objective < ref_obj - NOISE_SIGMAS * sigma if sigma is not None else objective < ref_obj
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
                reference=kind,
                reference_recipe=reference.model_dump(),
                reference_objective=ref_obj,
                reference_task=known.task if known is not None else None,
                reference_score=known.objective if known is not None else None,
                cost_s=time.perf_counter() - t0,
                status=status,
                error=error,
                success=success,
                proposer=proposer,
            )
        )
        self.experiments += 1
        self.state = "idle"
        return True
