"""A small local read model of the swarm, folded from the trace log by a pure function.

Every agent process keeps one :class:`SwarmView`: best recipe per task instance, replicated
baseline objectives (the noise floor), counts, and the latest guidance. It is rebuilt from the
log at start and kept current by the runtime; it never touches the network itself.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from streams import DeploymentFinished, Event, ExperimentFinished, GuidancePublished

NOISE_SIGMAS = 2.0
"""An improvement counts as a success when it exceeds this many baseline standard deviations."""
MIN_REPLICATES = 3
"""Replicated baseline runs needed before a task's noise floor is known."""


@dataclass
class TaskView:
    """What the swarm knows about one task instance."""

    best_objective: float | None = None
    best_recipe: dict[str, Any] | None = None
    best_event_id: str | None = None
    baselines: dict[int, float] = field(default_factory=dict)
    """seed → objective of each replicated baseline run (distinct seeds only)."""
    experiments: int = 0
    failures: int = 0
    successes: int = 0
    guidance: list[GuidancePublished] = field(default_factory=list)

    @property
    def noise_floor(self) -> float | None:
        """Standard deviation of the replicated baseline objectives (None until enough replicates)."""
        if len(self.baselines) < MIN_REPLICATES:
            return None
        return statistics.stdev(self.baselines.values())

    @property
    def baseline_mean(self) -> float | None:
        """Mean objective of the replicated baseline runs."""
        return statistics.fmean(self.baselines.values()) if self.baselines else None


@dataclass
class SwarmView:
    """The folded state: task ref → :class:`TaskView`, plus global guidance and the last sequence."""

    tasks: dict[str, TaskView] = field(default_factory=dict)
    last_seq: int = 0

    def task(self, ref: str) -> TaskView:
        """The view of one task instance (empty if nothing is known yet)."""
        return self.tasks.setdefault(ref, TaskView())

    def apply(self, event: Event, seq: int = 0) -> None:
        """Fold one event into the view (deterministic; events must come in log order)."""
        if seq:
            self.last_seq = max(self.last_seq, seq)
        if isinstance(event, ExperimentFinished):
            tv = self.task(event.task)
            tv.experiments += 1
            if event.status != "ok" or event.objective is None:
                tv.failures += 1
                return
            if event.success:
                tv.successes += 1
            if event.proposer == "baseline":
                tv.baselines.setdefault(event.seed, event.objective)
            if tv.best_objective is None or event.objective < tv.best_objective:
                tv.best_objective = event.objective
                tv.best_recipe = dict(event.recipe)
                tv.best_event_id = event.event_id
        elif isinstance(event, GuidancePublished):
            tv = self.task(event.task)
            tv.guidance = [*[g for g in tv.guidance if g.topic != event.topic][-7:], event]
        elif isinstance(event, DeploymentFinished):
            pass

    def is_success(self, ref: str, objective: float | None, reference: float | None) -> bool | None:
        """Did ``objective`` beat ``reference`` by more than the noise floor? None if unknowable."""
        sigma = self.task(ref).noise_floor
        if objective is None or reference is None or sigma is None:
            return None
        return objective < reference - NOISE_SIGMAS * max(sigma, 1e-12)
