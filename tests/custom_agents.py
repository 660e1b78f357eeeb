"""Agent types and tasks defined only here, loaded as ``module:Class`` by the tests (no core change)."""

from __future__ import annotations

import random
import time
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from agents import Agent, History, MutationProposer, Proposer, ProposerUnavailable, Task, on
from agents._backoff import Backoff
from agents.builtin.researcher import Researcher
from streams import ExperimentFinished, GuidancePublished


class ParabolaRecipe(BaseModel):
    """One knob and one categorical."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    x: float = Field(3.0, ge=-5.0, le=5.0)
    mode: Literal["plain", "shifted"] = "plain"


class Parabola(Task):
    """A task defined outside the package: minimise (x - instance)^2 (+1 for 'shifted')."""

    name: ClassVar[str] = "parabola"
    space: ClassVar[type[BaseModel]] = ParabolaRecipe
    metric: ClassVar[str] = "value"
    direction: ClassVar[Literal["min", "max"]] = "min"
    default_budget: ClassVar[float] = 1.0
    deadline_s: ClassVar[float] = 10.0

    def run(self, recipe: BaseModel, seed: int, budget: float) -> dict[str, float]:
        """Deterministic value plus a tiny seeded wobble."""
        assert isinstance(recipe, ParabolaRecipe)
        centre = float(self.instance) if self.instance.isdigit() else 0.0
        wobble = ((seed * 2654435761) % 1000) / 1e5
        return {"value": (recipe.x - centre) ** 2 + (1.0 if recipe.mode == "shifted" else 0.0) + wobble}


class SlowTask(Parabola):
    """A task whose runs take far longer than its deadline (for abandonment tests)."""

    name: ClassVar[str] = "slow"
    deadline_s: ClassVar[float] = 1.5

    def run(self, recipe: BaseModel, seed: int, budget: float) -> dict[str, float]:
        """Sleep 60 s."""
        time.sleep(60)
        return super().run(recipe, seed, budget)


class FastResearcher(Researcher):
    """A researcher that heartbeats every 0.3 s (so liveness tests need not wait long)."""

    type_name: ClassVar[str] = "fastresearcher"
    heartbeat_s: ClassVar[float] = 0.3


class PatientResearcher(Researcher):
    """A researcher with short NATS timeouts (1 s per attempt, backoff capped at 1 s), so a test
    can pause the server for longer than every client timeout without waiting minutes."""

    type_name: ClassVar[str] = "patientresearcher"
    heartbeat_s: ClassVar[float] = 0.5
    nats_timeout_s: ClassVar[float] = 1.0
    backoff: ClassVar[Backoff] = Backoff(first_s=0.1, cap_s=1.0, patience_s=120.0)


class ReadmeEcho(Agent):
    """The README's example agent, verbatim: guidance with ``new_event``'s default event ids."""

    type_name: ClassVar[str] = "readmeecho"

    @on(ExperimentFinished)
    async def seen(self, event: ExperimentFinished) -> None:
        """Answer a finished experiment with guidance naming it."""
        await self.publish(
            self.new_event(GuidancePublished, task=event.task, topic="echo", hint=f"saw {event.event_id}")
        )


class Echo(Agent):
    """A reactive type: answers every finished experiment with a guidance event naming it."""

    type_name: ClassVar[str] = "echo"

    @on(ExperimentFinished)
    async def echo(self, event: ExperimentFinished) -> None:
        """Publish guidance that points at the experiment it saw."""
        self.experiments += 1
        await self.publish(
            self.new_event(
                GuidancePublished,
                event_id=f"{self.agent_id}/echo/{event.event_id}",
                task=event.task,
                topic="echo",
                hint=f"saw {event.event_id}",
            )
        )


class WorstCornerProposer(Proposer):
    """A deliberately bad proposer: of 64 prior samples, the one with the worst true (noiseless)
    objective, so it lands in the worst region of the space every time, with a fresh recipe each
    time (never a repeat the portfolio would skip it for). Needs a task with ``true_objective``."""

    name: ClassVar[str] = "worst-corner"

    def propose(self, history: History, rng: random.Random) -> BaseModel:
        """The worst of 64 prior samples by the task's true objective."""
        task = history.task
        scored = [(task.true_objective(r), r) for r in (task.sample(rng) for _ in range(64))]
        known = [(v, r) for v, r in scored if v is not None]
        if not known:
            raise ProposerUnavailable(f"{task.ref} has no true objective")
        return max(known, key=lambda vr: vr[0])[1]


class BadProposerResearcher(Researcher):
    """The built-in researcher with one extra arm, :class:`WorstCornerProposer`, added through
    :meth:`Researcher.arms` (the public way to give a researcher more proposers)."""

    type_name: ClassVar[str] = "badproposerresearcher"

    def arms(self) -> list[Proposer]:
        """Mutation, prior, TPE and the worst-corner proposer."""
        return [*super().arms(), WorstCornerProposer()]


class MutationOrWorstResearcher(Researcher):
    """The built-in researcher with exactly two arms, mutation and :class:`WorstCornerProposer`
    (a uniform choice would give each half)."""

    type_name: ClassVar[str] = "mutationorworstresearcher"

    def arms(self) -> list[Proposer]:
        """Mutation and the worst-corner proposer."""
        return [MutationProposer(), WorstCornerProposer()]
