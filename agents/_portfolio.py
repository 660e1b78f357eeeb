"""The proposer portfolio: which proposer a researcher asks next, chosen by a bandit.

Each arm is a :class:`~agents.Proposer` (mutation, prior, TPE, every loaded model version). The
reward of a trial is its measured improvement on the instance: the fraction of the instance's
earlier results (trials and baselines) it beats, so 1.0 exactly when it improved the incumbent
and 0.0 for a failure or a new worst (:func:`improvement`). A binary "improved the incumbent"
alone stops telling arms apart once an instance is nearly solved (nobody improves), and would
let a bad arm back in; the graded reward keeps ranking them. On the instance itself an arm's
evidence counts the reward to the power :data:`FRONTIER_POWER`, so what pays there is reaching the
instance's frontier, not landing somewhere good. :class:`ArmStats` keeps, per
(family, proposer), a Beta posterior of that reward with a slow forgetting factor (recent
evidence counts more). :class:`Portfolio` samples each
arm's posterior (Thompson sampling) and asks the arm with the highest draw. The posterior is
hierarchical: the family's record is the prior, worth at most :data:`PRIOR_TRIALS` trials, and
the arm's own trials on *this* instance (read from its history) are added at full weight, so an
arm that is good on the family is trusted from the first trial of a new instance, and an arm that
stalls on this instance loses its lead within a few trials instead of the ~1000 the family's
record would take to forget. A model version with no record yet inherits the record of the
latest earlier version (the gate promoted it only because it beat that version). Then, with probability
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
PRIOR_TRIALS = 12.0
"""The most trials a family's record counts for in an arm's posterior on one instance."""
REPEATS = 3
"""How many times one arm may return an already-finished recipe before it is skipped for this choice."""
FRONTIER_POWER = 8
"""An arm's evidence on the instance itself counts a trial's reward to this power: 1.0 for a new
best, 0.43 for beating 90% of the results so far, 0.17 for 80%, ~0 for half. The graded reward
alone kept rewarding an arm whose proposals land in the good region but no longer improve it (on
hartmann6 the model took 64% of the trials and stalled short of the target); replayed on the same
published model, 12 held-out instances x 6 seeds, the hive solved 49 of 72 studies with this
power against 29 with the plain reward (powers 4-24: 37-46)."""


def improvement(earlier: Sequence[float], objective: float | None) -> float:
    """The reward of a result: the fraction of ``earlier`` (sorted ascending, lower is better)
    that ``objective`` beats; 1.0 when it beats them all (or there are none), 0.0 for a failure."""
    if objective is None:
        return 0.0
    if not earlier:
        return 1.0
    return (len(earlier) - bisect.bisect_right(earlier, objective)) / len(earlier)


KEEP_RESULTS = 1024
"""Best results an instance's :class:`Ranks` keeps (bounded memory whatever the history's size)."""


@dataclass
class Ranks:
    """An instance's results so far, to score a new one by :func:`improvement` in bounded memory.

    Keeps the best :data:`KEEP_RESULTS` results sorted and counts the rest (all worse than every
    kept one): a result at least as good as the worst kept beats every dropped one too; one worse
    than every kept result gets no credit for the dropped ones (a slight underestimate)."""

    kept: list[float] = field(default_factory=list)
    dropped: int = 0

    def score(self, objective: float | None) -> float:
        """The :func:`improvement` of ``objective`` over the results so far (0.0 for a failure)."""
        share = improvement(self.kept, objective)
        if not self.dropped or objective is None:
            return share
        beaten = share * len(self.kept) + (self.dropped if objective <= self.kept[-1] else 0)
        return beaten / (len(self.kept) + self.dropped)

    def add(self, objective: float | None) -> None:
        """Count a finished result (a failure is not a result to beat)."""
        if objective is None:
            return
        bisect.insort(self.kept, objective)
        if len(self.kept) > KEEP_RESULTS:
            self.kept.pop()
            self.dropped += 1


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
        """``(reward, 1 - reward)`` discounted sums (zeros for an arm never tried).

        A versioned proposer (``model-v7``) never tried on the family inherits the sums of its
        latest earlier version that was (``model-v5`` if v6 never ran there)."""
        arms = self.counts.get(family, {})
        c = arms.get(proposer)
        if c is None:
            version = _versioned(proposer)
            if version is not None:
                stem, n = version
                earlier = [
                    (v[1], name) for name in arms if (v := _versioned(name)) and v[0] == stem and v[1] < n
                ]
                if earlier:
                    c = arms[max(earlier)[1]]
        return (c[0], c[1]) if c else (0.0, 0.0)


def _versioned(name: str) -> tuple[str, int] | None:
    """``("model-v", 7)`` for ``model-v7``; None for a name without a trailing version number."""
    stem, sep, tail = name.rpartition("-v")
    if not sep or not stem or not tail.isdigit() or len(tail) > 9:
        return None
    return stem + sep, int(tail)


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
        self._observed: dict[str, tuple[int, Ranks, dict[str, list[float]]]] = {}
        """instance ref → (the last trial seen: its ``seq``, or the count where trials carry none;
        the instance's results; per proposer the [reward, 1 - reward] sums of its trials there)."""

    def observe(self, history: History, *, record: bool = True) -> dict[str, list[float]]:
        """Score every trial ``history`` gained since the last call for its instance (a history
        that shrank, e.g. capped, starts over); with ``record``, also count them in the family's
        :class:`ArmStats`. Returns the instance's per-proposer reward sums."""
        ref = history.task.ref
        trials = history.trials
        by_seq = bool(trials) and all(t.seq > 0 for t in trials)  # a capped history keeps seqs
        last, ranks, mine = self._observed.get(ref, (0, Ranks(), {}))
        if not last or (not by_seq and last > len(trials)):
            last, ranks, mine = 0, Ranks(), {}
            for b in history.baselines:
                ranks.add(b)
        new = [t for t in trials if t.seq > last] if by_seq else trials[last:]
        for t in new:
            objective = t.objective if t.ok else None
            reward = ranks.score(objective)
            if record:
                self.stats.record(history.task.name, t.proposer, reward)
            here = reward**FRONTIER_POWER  # on this instance: credit for reaching its frontier
            c = mine.setdefault(t.proposer, [0.0, 0.0])
            c[0] += here
            c[1] += 1.0 - here
            ranks.add(objective)
        if new:
            last = max(t.seq for t in new) if by_seq else len(trials)
        self._observed[ref] = (last, ranks, mine)
        return mine

    def set_arms(self, arms: Sequence[Proposer]) -> None:
        """Replace the arms (a new model version loaded); the statistics are kept."""
        if not arms:
            raise ValueError("a portfolio needs at least one arm")
        self.arms = list(arms)

    def order(
        self, family: str, instance: dict[str, list[float]] | None = None
    ) -> tuple[list[tuple[Proposer, str]], bool]:
        """The arms in the order to ask them, each with its reason; and whether the floor fired.

        Thompson: one draw per arm from Beta(1 + w·s + s_i, 1 + w·f + f_i), highest first, where
        (s, f) is the family's record of the arm, w scales it down to at most
        :data:`PRIOR_TRIALS` trials, and (s_i, f_i) are the arm's frontier-reward sums on this instance
        (``instance``, from :meth:`observe`). Floor: a uniformly drawn arm first, then the
        Thompson order."""
        instance = instance or {}
        draws = []
        for arm in self.arms:
            s, f = self.stats.get(family, arm.name)
            w = min(1.0, PRIOR_TRIALS / (s + f)) if s + f > 0 else 0.0
            si, fi = instance.get(arm.name, (0.0, 0.0))
            a, b = w * s + si, w * f + fi
            draws.append((self.rng.betavariate(1.0 + a, 1.0 + b), arm, s, s + f, si, si + fi))
        draws.sort(key=lambda d: -d[0])
        ranked = [
            (
                arm,
                f"thompson {theta:.3f} (reward {s:.1f} of {n:.1f} trials on {family}, "
                f"{si:.1f} of {ni:.0f} here)",
            )
            for theta, arm, s, n, si, ni in draws
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
        mine = self.observe(history, record=self.learn)
        ranked, _ = self.order(self.family, mine)
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
