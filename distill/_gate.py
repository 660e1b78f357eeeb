"""The promotion gate on research value: does the candidate find good recipes faster?

A candidate is promoted only if, in simulated short studies on held-out instances
(``agents._study.run_study``: baselines, then one proposal at a time, each run on the task), it
beats **both** the mutation baseline and the champion. The instances are the dataset's held-out
ones and, to reach ``instances``, fresh instances of the same families that appear nowhere in the
data; only tasks with a known optimum and a true (noise-free) objective qualify (the synthetic
families: milliseconds per run), so the measure is exact and cheap.

**Measure: mean normalised regret of the best-so-far, averaged over the study (area under the
curve).** Per trial, the best true objective found so far as a normalised regret (0 at the optimum,
1 at the baseline recipe; clipped to [0, :data:`REGRET_CAP`]), averaged over the trials, then over
instances and seeds. Lower is better. Why not trials-to-target: in a 40-trial study most arms
never reach regret 0.05 on some instances, so trials-to-target is censored and coarse (a few
distinct values), while the AUC uses every trial, rewards both early progress and how close the
study gets, and is bounded per study. All arms run on the same instances and seeds (the study's
RNG depends on task and seed only: common random numbers), so the comparison is paired.

Where no family in the data has a true objective (e.g. only ``charlm``), nothing can be simulated
cheaply: the gate falls back to the held-out negative log-likelihood of the hindsight targets
(candidate below the champion's; any finite value for a first model) and says so
(``gate_simulated = 0``).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog
from pydantic import BaseModel

from agents._proposer import History, MutationProposer, Proposer, ProposerUnavailable
from agents._study import StudyResult, normalized_regret, run_study
from agents._task import Task

log = structlog.get_logger("distill.gate")
REGRET_CAP = 2.0
"""Normalised regrets above this (far worse than the baseline) count as this."""
FRESH_BASE = 900_000
"""Fresh gate instances are numbered from here (``family/900000`` ...), far from researched ones."""


@dataclass(frozen=True)
class GateConfig:
    """How many held-out instances, seeds and trials the simulated studies use."""

    instances: int = 6
    seeds: int = 3
    trials: int = 40
    """18 studies an arm (a few seconds of CPU): at 3 x 2 the noise of 6 studies rejected a model
    trained on three times the data of its champion (seen in ``hive bench learning``)."""
    margin: float = 0.0
    """The candidate's AUC must be below the others' by more than this."""

    def __post_init__(self) -> None:
        if min(self.instances, self.seeds, self.trials) < 1 or self.margin < 0:
            raise ValueError("the gate needs at least 1 instance, 1 seed and 1 trial, and a margin >= 0")


@dataclass
class GateResult:
    """The decision, why, and the figures (for the model events' ``eval`` map)."""

    promote: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)


def has_truth(task: Task) -> bool:
    """Whether regret is defined on ``task`` (a known optimum and a true objective)."""
    try:
        return task.optimum() is not None and task.true_objective(task.baseline()) is not None
    except Exception:
        return False


def gate_tasks(
    heldout: Sequence[str], seen: Sequence[str], n: int, load: Callable[[str], Task]
) -> list[Task]:
    """Up to ``n`` instances with a true objective: the held-out ones first, then fresh instances of
    the families in ``seen`` (never researched, so never in the data)."""
    out: list[Task] = []
    for ref in sorted(heldout):
        try:
            task = load(ref)
        except Exception:
            continue
        if has_truth(task) and len(out) < n:
            out.append(task)
    families = sorted({ref.rpartition("/")[0] for ref in seen if "/" in ref})
    known = set(seen)
    i = 0
    while len(out) < n and families and i < 4 * n:
        family = families[i % len(families)]
        ref = f"{family}/{FRESH_BASE + i}"
        i += 1
        if ref in known:
            continue
        try:
            task = load(ref)
        except Exception:
            continue
        if has_truth(task):
            out.append(task)
    return out


def run_arm(task: Task, proposer: Proposer, *, trials: int, seed: int) -> tuple[StudyResult, float]:
    """One simulated study of ``proposer`` on ``task`` and its regret AUC: the mean normalised regret
    of the best-so-far true objective over the trials (``nan`` if the task has no true objective).

    A proposer that cannot propose (:class:`ProposerUnavailable`) is replaced by mutation for that
    trial, as a researcher's portfolio would."""
    fallback = MutationProposer()

    def propose(history: History, rng: random.Random) -> tuple[BaseModel, str]:
        try:
            return proposer.propose(history, rng), proposer.name
        except ProposerUnavailable:
            return fallback.propose(history, rng), fallback.name

    result = run_study(task, propose, trials=trials, seed=seed)
    if not has_truth(task):
        return result, math.nan
    regrets = [
        REGRET_CAP if v is None else min(REGRET_CAP, max(0.0, normalized_regret(task, v)))
        for v in result.best_so_far()
    ]
    return result, statistics.fmean(regrets) if regrets else REGRET_CAP


def study_auc(task: Task, proposer: Proposer, *, trials: int, seed: int) -> float:
    """The regret AUC of one simulated study (see :func:`run_arm`)."""
    return run_arm(task, proposer, trials=trials, seed=seed)[1]


def arm_auc(tasks: Sequence[Task], proposer: Proposer, cfg: GateConfig) -> list[float]:
    """:func:`study_auc` of ``proposer`` on every (task, seed), in a fixed order (paired across arms)."""
    return [study_auc(t, proposer, trials=cfg.trials, seed=s) for t in tasks for s in range(cfg.seeds)]


def research_gate(
    candidate: Proposer, champion: Proposer | None, tasks: Sequence[Task], cfg: GateConfig = GateConfig()
) -> GateResult:
    """Promote ``candidate`` only if its mean AUC beats mutation's and the champion's on ``tasks``."""
    if not tasks:
        return GateResult(
            False, "no held-out instance with a true objective to simulate", {"gate_simulated": 0.0}
        )
    cand = arm_auc(tasks, candidate, cfg)
    mut = arm_auc(tasks, MutationProposer(), cfg)
    champ = arm_auc(tasks, champion, cfg) if champion is not None else None
    c, m = statistics.fmean(cand), statistics.fmean(mut)
    metrics = {
        "gate_simulated": 1.0,
        "gate_instances": float(len(tasks)),
        "gate_seeds": float(cfg.seeds),
        "gate_trials": float(cfg.trials),
        "gate_auc_candidate": c,
        "gate_auc_mutation": m,
        "gate_wins_vs_mutation": float(sum(a < b for a, b in zip(cand, mut, strict=True))) / len(cand),
    }
    if champ is not None:
        metrics["gate_auc_champion"] = statistics.fmean(champ)
        metrics["gate_wins_vs_champion"] = float(sum(a < b for a, b in zip(cand, champ, strict=True))) / len(
            cand
        )
    log.info("research_gate", tasks=[t.ref for t in tasks], **metrics)
    where = f"on {len(tasks)} held-out instances x {cfg.seeds} seeds x {cfg.trials} trials"
    if not c < m - cfg.margin:
        return GateResult(False, f"regret AUC {c:.3f} >= mutation's {m:.3f} {where}", metrics)
    if champ is not None and not c < statistics.fmean(champ) - cfg.margin:
        return GateResult(
            False, f"regret AUC {c:.3f} >= champion's {statistics.fmean(champ):.3f} {where}", metrics
        )
    versus = f", champion {statistics.fmean(champ):.3f}" if champ is not None else ""
    return GateResult(True, f"regret AUC {c:.3f} < mutation {m:.3f}{versus} {where}", metrics)


def loss_gate(candidate_nll: float, champion_nll: float | None) -> GateResult:
    """The fallback without simulable tasks: held-out NLL below the champion's (finite for a first model)."""
    metrics = {"gate_simulated": 0.0}
    if math.isfinite(candidate_nll):
        metrics["heldout_nll"] = candidate_nll
    if champion_nll is not None and math.isfinite(champion_nll):
        metrics["champion_heldout_nll"] = champion_nll
    if not math.isfinite(candidate_nll):
        return GateResult(False, "no held-out examples and no simulable task to judge on", metrics)
    if champion_nll is None or not math.isfinite(champion_nll):
        return GateResult(True, f"first model (held-out NLL {candidate_nll:.3f}; no simulable task)", metrics)
    if candidate_nll < champion_nll:
        return GateResult(True, f"held-out NLL {candidate_nll:.3f} < champion {champion_nll:.3f}", metrics)
    return GateResult(False, f"held-out NLL {candidate_nll:.3f} >= champion {champion_nll:.3f}", metrics)
