"""The proposer portfolio: which proposer a researcher asks next, chosen by a bandit.

Each arm is a :class:`~agents.Proposer` (mutation, prior, TPE, every loaded model version). The
reward of a trial is its measured improvement on the instance: the fraction of the instance's
earlier results (trials and baselines) it beats, so 1.0 exactly when it improved the incumbent
and 0.0 for a failure or a new worst (:func:`improvement`). A binary "improved the incumbent"
alone stops telling arms apart once an instance is nearly solved (nobody improves), and would
let a bad arm back in; the graded reward keeps ranking them. :class:`ArmStats` keeps, per
(family, proposer), a Beta posterior of that reward with a slow forgetting factor (recent
evidence counts more). :class:`Portfolio` samples each
arm's posterior (Thompson sampling) and asks the arm with the highest draw; with probability
``floor`` it asks an arm drawn uniformly instead (the exploration floor), so every arm keeps a
share of at least ``floor / len(arms)`` and a starved arm can come back if it starts to pay. A
model that improves less often than mutation is therefore asked less and less, automatically.

An arm that raises :class:`~agents.ProposerUnavailable` (or anything else: logged) or keeps
proposing recipes already finished on the instance is skipped for that choice and the next-best
arm is asked; when every arm fails, a fresh prior sample that the history has not seen is used.

The portfolio is pure computation (no I/O): researchers use it in a worker thread, and the
benchmark and the distiller's gate use it in-process through ``agents.run_study``.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog
from pydantic import BaseModel

from ._proposer import History, PriorProposer, Proposer, ProposerUnavailable

log = structlog.get_logger("agents.portfolio")

DECAY = 0.999
"""Forgetting factor per recorded trial of a family: the evidence of the last ~1000 trials dominates."""
REPEATS = 3
"""How many times one arm may return an already-finished recipe before it is skipped for this choice."""


def improvement(earlier: Sequence[float], objective: float | None) -> float:
    """The reward of a result: the fraction of ``earlier`` (sorted ascending, lower is better)
    that ``objective`` beats; 1.0 when it beats them all (or there are none), 0.0 for a failure."""
    if objective is None:
        return 0.0
    if not earlier:
        return 1.0
    return (len(earlier) - bisect.bisect_right(earlier, objective)) / len(earlier)


@dataclass
class ArmStats:
    """Per (family, proposer): discounted sums of the reward (:func:`improvement`) and of its
    complement, the Beta posterior's pseudo-counts. Shared by every portfolio of a process (the
    read model folds the whole hive's traces into one), so an agent learns from every agent's
    trials."""

    decay: float = DECAY
    counts: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """family → proposer → [reward, 1 - reward] sums (discounted)."""

    def record(self, family: str, proposer: str, reward: float | bool) -> None:
        """Count one finished trial with its reward in [0, 1] (``True``/``False`` = 1/0); every
        arm of the family decays by :attr:`decay` first."""
        r = min(1.0, max(0.0, float(reward)))
        arms = self.counts.setdefault(family, {})
        for c in arms.values():
            c[0] *= self.decay
            c[1] *= self.decay
        c = arms.setdefault(proposer, [0.0, 0.0])
        c[0] += r
        c[1] += 1.0 - r

    def get(self, family: str, proposer: str) -> tuple[float, float]:
        """``(reward, 1 - reward)`` discounted sums (zeros for an arm never tried)."""
        c = self.counts.get(family, {}).get(proposer)
        return (c[0], c[1]) if c else (0.0, 0.0)


class Portfolio:
    """Thompson sampling over proposers with an exploration floor (see the module docstring).

    ``arms``: the proposers (distinct names). ``floor``: probability of asking a uniformly drawn
    arm. ``family_stats``: the :class:`ArmStats` to read (and :meth:`record` into); a fresh one by
    default. ``rng`` drives every choice (and is passed to the proposers), so a portfolio is
    deterministic given its seed and the histories it sees. ``learn``: at each :meth:`choose`,
    record the trials the history gained since the last one (in-process use, e.g. a study); a
    researcher whose ``family_stats`` the read model already folds from the log passes False."""

    def __init__(
        self,
        arms: Sequence[Proposer],
        *,
        floor: float = 0.05,
        rng: random.Random,
        family_stats: ArmStats | None = None,
        learn: bool = True,
    ) -> None:
        if not arms:
            raise ValueError("a portfolio needs at least one arm")
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"portfolio arms need distinct names, got {names}")
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"floor must be in [0, 1], not {floor}")
        self.arms = list(arms)
        self.floor = floor
        self.rng = rng
        self.stats = family_stats if family_stats is not None else ArmStats()
        self.family = ""
        self.learn = learn
        self._fallback = PriorProposer()
        self._observed: dict[str, tuple[int, list[float]]] = {}
        """instance ref → (trials already recorded, their sorted ok objectives and baselines)."""

    def observe(self, history: History) -> None:
        """Record the reward of every trial ``history`` gained since the last call for its
        instance (a history that shrank, e.g. capped, starts over)."""
        ref = history.task.ref
        done, earlier = self._observed.get(ref, (0, []))
        if done > len(history.trials) or not done:
            done, earlier = 0, sorted(history.baselines)
        for t in history.trials[done:]:
            objective = t.objective if t.ok else None
            self.stats.record(history.task.name, t.proposer, improvement(earlier, objective))
            if objective is not None:
                bisect.insort(earlier, objective)
        self._observed[ref] = (len(history.trials), earlier)

    def set_arms(self, arms: Sequence[Proposer]) -> None:
        """Replace the arms (a new model version loaded); the statistics are kept."""
        if not arms:
            raise ValueError("a portfolio needs at least one arm")
        self.arms = list(arms)

    def order(self, family: str) -> tuple[list[tuple[Proposer, str]], bool]:
        """The arms in the order to ask them, each with its reason; and whether the floor fired.

        Thompson: one Beta(1 + improved, 1 + not improved) draw per arm, highest first. Floor: a
        uniformly drawn arm first, then the Thompson order."""
        draws = []
        for arm in self.arms:
            s, f = self.stats.get(family, arm.name)
            draws.append((self.rng.betavariate(1.0 + s, 1.0 + f), arm, s, s + f))
        draws.sort(key=lambda d: -d[0])
        ranked = [
            (arm, f"thompson {theta:.3f} (reward {s:.1f} of {n:.1f} trials on {family})")
            for theta, arm, s, n in draws
        ]
        if self.rng.random() < self.floor:
            pick = self.rng.randrange(len(self.arms))
            first = self.arms[pick]
            reason = f"floor {self.floor:g}: uniform exploration of {len(self.arms)} arms"
            return [(first, reason), *[(a, r) for a, r in ranked if a is not first]], True
        return ranked, False

    def choose(
        self, history: History, accept: Callable[[BaseModel], bool] | None = None
    ) -> tuple[BaseModel, str, str]:
        """``(recipe, proposer name, reason)``: the next recipe for ``history``'s instance, never
        one already finished there. ``accept`` (optional) may refuse a recipe (e.g. a region the
        guidance says to avoid); a refused recipe counts as a repeat."""
        self.family = history.task.name
        if self.learn:
            self.observe(history)
        ranked, _ = self.order(self.family)
        skipped: list[str] = []
        for arm, reason in ranked:
            for _ in range(REPEATS):
                try:
                    recipe = arm.propose(history, self.rng)
                except ProposerUnavailable:
                    skipped.append(f"{arm.name} unavailable")
                    break
                except Exception as e:  # a proposer bug must not stop the researcher
                    log.warning("proposer_failed", proposer=arm.name, error=f"{type(e).__name__}: {e}"[:300])
                    skipped.append(f"{arm.name} failed")
                    break
                if not history.seen(recipe) and (accept is None or accept(recipe)):
                    if skipped:
                        reason = f"{reason}; skipped {', '.join(skipped)}"
                    return recipe, arm.name, reason[:200]
            else:
                skipped.append(f"{arm.name} repeated")
        for _ in range(50):
            recipe = self._fallback.propose(history, self.rng)
            if not history.seen(recipe) and (accept is None or accept(recipe)):
                break
        return recipe, self._fallback.name, f"fallback: {', '.join(skipped)}"[:200]

    def record(self, proposer: str, improved: bool, gain: float = 0.0) -> None:
        """Count a finished trial of ``proposer`` on the family of the last :meth:`choose` by hand
        (reward 1 if it improved the incumbent, else ``gain`` clipped to [0, 1]: pass the
        :func:`improvement` of the result for a graded reward). With ``learn`` on, the portfolio
        records trials itself from the histories it sees; do not record them twice."""
        self.stats.record(self.family, proposer, 1.0 if improved else min(1.0, max(0.0, gain)))
