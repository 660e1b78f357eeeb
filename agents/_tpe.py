"""Optuna's TPE as a proposer: a model of the instance's own history, asked for the next trial.

:class:`TPEProposer` keeps one Optuna study per instance (an LRU of :data:`CACHE` studies): the
history's trials are added to it once each (``add_trial``), so a proposal costs one TPE ``ask``
plus the trials that are new since the last one. The study is rebuilt only when the history is
not an extension of what it was told (another instance, or the read model's cap dropped trials).
Distributions come from the task's knobs (log-scale where the knob is log); failed trials are
told as the worst objective seen (TPE then steers away from where runs diverge). The replicated
baselines enter as one trial of the baseline recipe at their mean.

``warm_start``: recipes enqueued first in every new study (``enqueue_trial``), the benchmark's
"TPE warm-started with the best recipes of the trained instances".
"""

from __future__ import annotations

import math
import random
import statistics
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from ._proposer import History, Proposer, recipe_key
from ._task import Knob, Task, knobs

if TYPE_CHECKING:  # optuna is imported on first use: it costs seconds at every agent's start
    import optuna
    from optuna.distributions import BaseDistribution

CACHE = 16
"""Studies kept per proposer (one per instance recently proposed for)."""


def _optuna() -> Any:
    """The optuna module, imported (and quietened) on first use."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def distributions(task: Task) -> dict[str, BaseDistribution]:
    """Optuna distributions of a task's knobs."""
    return {k.name: _distribution(k) for k in knobs(task.space)}


def _distribution(k: Knob) -> BaseDistribution:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if k.kind == "float":
        return FloatDistribution(k.low, k.high, log=k.log)
    if k.kind == "int":
        return IntDistribution(int(k.low), int(k.high), log=k.log)
    if k.kind == "bool":
        return CategoricalDistribution([False, True])
    return CategoricalDistribution(list(k.choices))


@dataclass
class _Cached:
    study: optuna.Study
    sampler: optuna.samplers.TPESampler
    told: list[str] = field(default_factory=list)
    """Recipe keys of the history trials added, in order."""
    baselines: int = 0


class TPEProposer(Proposer):
    """Optuna TPE over the instance's history (see the module docstring).

    ``warm_start``: recipes (mappings or recipe models) to try first on a new instance.
    ``n_startup_trials``: trials before TPE models the history (prior samples until then)."""

    name: ClassVar[str] = "tpe"

    def __init__(
        self, warm_start: Sequence[Mapping[str, Any] | BaseModel] = (), *, n_startup_trials: int = 10
    ) -> None:
        self.warm_start = [dict(r.model_dump() if isinstance(r, BaseModel) else r) for r in warm_start]
        self.n_startup_trials = n_startup_trials
        self._studies: OrderedDict[str, _Cached] = OrderedDict()

    def _study(self, history: History) -> _Cached:
        """The cached study of the instance, brought up to date with ``history`` (or rebuilt)."""
        ref = history.task.ref
        keys = [recipe_key(t.recipe) for t in history.trials]
        cached = self._studies.get(ref)
        if (
            cached is None
            or len(cached.told) > len(keys)
            or cached.told != keys[: len(cached.told)]
            or cached.baselines != len(history.baselines)
        ):
            cached = self._new_study(history)
            self._studies[ref] = cached
        self._studies.move_to_end(ref)
        while len(self._studies) > CACHE:
            self._studies.popitem(last=False)
        from optuna.trial import create_trial

        dists = distributions(history.task)
        ok = [t.objective for t in history.trials if t.ok and t.objective is not None]
        worst = max([*ok, *history.baselines], default=None)
        for t, key in zip(history.trials[len(cached.told) :], keys[len(cached.told) :], strict=True):
            value = t.objective if t.ok else worst
            if value is not None and math.isfinite(value):
                cached.study.add_trial(create_trial(params=dict(t.recipe), distributions=dists, value=value))
            cached.told.append(key)
        return cached

    def _new_study(self, history: History) -> _Cached:
        optuna = _optuna()
        from optuna.trial import create_trial

        sampler = optuna.samplers.TPESampler(n_startup_trials=self.n_startup_trials, multivariate=True)
        study = optuna.create_study(direction="minimize", sampler=sampler)
        if history.baselines:
            base = history.task.baseline().model_dump()
            study.add_trial(
                create_trial(
                    params=base,
                    distributions=distributions(history.task),
                    value=statistics.fmean(history.baselines),
                )
            )
        for recipe in self.warm_start:
            try:
                valid = history.task.validate_recipe(recipe)
            except Exception:
                continue  # a warm-start recipe of another space: ignored
            if not history.seen(valid):
                study.enqueue_trial(valid.model_dump(), skip_if_exists=True)
        return _Cached(study, sampler, [], len(history.baselines))

    def propose(self, history: History, rng: random.Random) -> BaseModel:
        """Ask TPE (seeded from ``rng``) for the next recipe given the instance's history."""
        cached = self._study(history)
        study = cached.study
        _reseed(cached.sampler, rng.randrange(2**31 - 1))
        trial = study.ask(distributions(history.task))
        params = dict(trial.params)
        from optuna.trial import TrialState

        # the result comes back through the history (from whichever agent runs it), not this trial
        study.tell(trial, state=TrialState.FAIL)
        return history.task.validate_recipe(params)


def _reseed(sampler: optuna.samplers.TPESampler, seed: int) -> None:
    """Seed the kept sampler for this proposal (deterministic given the caller's rng).

    The sampler is kept per study because it caches the search-space intersection incrementally
    (recomputing it is a third of an ``ask`` at 300 trials); Optuna has no public reseed with a
    given seed, so its (lazy) random states are seeded directly."""
    for owner in (sampler, getattr(sampler, "_random_sampler", None)):
        state = getattr(owner, "_rng", None)
        if state is not None and hasattr(state, "rng"):
            state.rng.seed(seed)
