"""A small local read model of the swarm, folded from the trace log by a pure function.

Every agent process keeps one :class:`SwarmView`: best recipe per task instance, replicated
baseline objectives (the noise floor), counts, the latest guidance, each instance's trials in
order (bounded: the best :data:`KEEP_BEST` and the latest :data:`KEEP_LATEST`, plus the keys of
up to :data:`MAX_FINISHED_KEYS` finished recipes, so no proposer re-runs one), and the hive's
per-family proposer statistics (:class:`agents.ArmStats`: which proposer improved incumbents).
It is rebuilt from the log at start and kept current by the runtime; it never touches the
network itself.
"""

from __future__ import annotations

import heapq
import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from streams import DeploymentFinished, Event, ExperimentFinished, GuidancePublished

from ._portfolio import ArmStats, Ranks
from ._proposer import History, Trial, recipe_key
from ._task import Task

NOISE_SIGMAS = 2.0
"""An improvement counts as a success when it exceeds this many baseline standard deviations."""
MIN_REPLICATES = 3
"""Replicated baseline runs needed before a task's noise floor is known."""
KEEP_BEST = 64
"""Best trials kept per instance for proposing (with the latest :data:`KEEP_LATEST`)."""
KEEP_LATEST = 256
"""Latest trials kept per instance for proposing."""
MAX_FINISHED_KEYS = 50_000
"""Finished recipe keys remembered per instance (the no-re-run check); beyond it, the oldest go."""


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
    latest: deque[tuple[int, Trial]] = field(default_factory=lambda: deque(maxlen=KEEP_LATEST))
    """The latest finished trials (baselines excluded) with their order on the instance."""
    best: list[tuple[float, int, Trial]] = field(default_factory=list)
    """The best ok trials, a heap whose root is the worst kept: ``(-objective, order, trial)``."""
    finished: dict[str, None] = field(default_factory=dict)
    """Keys of the finished recipes (insertion-ordered; the oldest dropped past the cap)."""
    ranks: Ranks = field(default_factory=Ranks)
    """The instance's results (baselines and trials), to score a trial's improvement."""

    def add_trial(self, trial: Trial) -> None:
        """Keep a finished trial (bounded: best and latest), and remember its recipe."""
        order = self.experiments
        self.latest.append((order, trial))
        if trial.ok and trial.objective is not None:
            item = (-trial.objective, order, trial)
            if len(self.best) < KEEP_BEST:
                heapq.heappush(self.best, item)
            elif item[:2] > self.best[0][:2]:
                heapq.heapreplace(self.best, item)
        self.finished[recipe_key(trial.recipe)] = None
        if len(self.finished) > MAX_FINISHED_KEYS:
            del self.finished[next(iter(self.finished))]

    def history(self, task: Task) -> History:
        """The instance's :class:`History`: kept trials in log order, baselines, guidance hints."""
        kept = dict(self.latest)
        for _, order, t in self.best:
            kept.setdefault(order, t)
        trials = tuple(kept[s] for s in sorted(kept))
        return History(
            task=task,
            trials=trials,
            baselines=tuple(self.baselines[s] for s in sorted(self.baselines)),
            guidance=tuple(g.hint for g in self.guidance if g.hint),
            finished=self.finished.keys(),
        )

    @property
    def incumbent(self) -> float | None:
        """The best objective known on the instance (trials and baselines)."""
        return self.best_objective

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
    proposers: ArmStats = field(default_factory=ArmStats)
    """Per family and proposer: how often a trial improved its instance's incumbent."""

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
            ok = event.status == "ok" and event.objective is not None and math.isfinite(event.objective)
            if event.proposer != "baseline":
                objective = event.objective if ok else None
                trial = Trial(event.recipe, objective, event.status, event.proposer, seq)
                tv.add_trial(trial)
                # the portfolio's graded reward: the share of the instance's results it beats
                reward = tv.ranks.score(trial.objective)
                self.proposers.record(event.task.split("/", 1)[0], event.proposer, reward)
            tv.ranks.add(event.objective if ok else None)
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
