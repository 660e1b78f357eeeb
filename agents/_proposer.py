"""Proposers: where a researcher's next recipe comes from.

A :class:`Proposer` turns the history of one task instance (:class:`History`: the trials so far,
in order, with their outcomes, and the instance's replicated baselines) into the next recipe to
try. The built-ins here are :class:`MutationProposer` and :class:`PriorProposer`; the portfolio
adds Optuna TPE, and every distilled model version is a proposer too: ``distill`` provides them
through the ``hive.policies`` entry-point group (see :class:`PolicyLoader`), so ``agents`` never
imports ``distill``.

The contract (a user's proposer is checked against it by ``agents.testing.ProposerConformance``):

* ``name``: a short label (at most 24 characters of ``[A-Za-z0-9_.-]``) that goes on every trace's
  ``proposer`` field, e.g. ``"mutation"``, ``"tpe"``, ``"model-v3"``.
* ``propose(history, rng)`` returns a valid recipe of ``history.task.space`` for that instance. It
  is pure computation: no I/O, no network, deterministic given ``rng``, and cheap (milliseconds
  on one CPU core; a researcher calls it in a worker thread between experiments).
* It may raise :class:`ProposerUnavailable` when it cannot propose now (no model loaded, a task
  it was not trained for); the caller then asks another proposer. Any other exception is a bug
  the caller logs and treats the same way.
* It need not avoid recipes already finished on the instance: the caller checks
  :meth:`History.seen` and asks again (a proposer that keeps repeating itself is starved).
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol

import orjson
from pydantic import BaseModel

from ._task import Task

POLICY_ENTRY_POINT_GROUP = "hive.policies"
"""Entry-point group of model backends: ``name = "package.module:loader"`` (a :class:`PolicyLoader`)."""


class ProposerUnavailable(RuntimeError):
    """This proposer cannot propose for this history right now (the caller asks another one)."""


def recipe_key(recipe: Mapping[str, Any] | BaseModel) -> str:
    """A canonical text key of a recipe (sorted keys; floats as JSON numbers), for de-duplication."""
    if isinstance(recipe, BaseModel):
        recipe = recipe.model_dump()
    return orjson.dumps(dict(recipe), option=orjson.OPT_SORT_KEYS).decode()


@dataclass(frozen=True, slots=True)
class Trial:
    """One finished run on an instance: its recipe, its outcome, and who proposed it.

    ``objective`` is lower-is-better, None when the run failed or timed out."""

    recipe: Mapping[str, Any]
    objective: float | None
    status: str = "ok"
    proposer: str = ""
    seq: int = 0

    @property
    def ok(self) -> bool:
        """Whether the run finished with a finite objective."""
        return self.status == "ok" and self.objective is not None and math.isfinite(self.objective)


@dataclass(frozen=True)
class History:
    """What is known about one task instance when proposing.

    ``trials`` are the instance's finished runs in log order (baseline replicates excluded),
    ``baselines`` the objectives of its replicated baseline runs, ``guidance`` the hints the
    analysts published for it. ``finished``: keys (:func:`recipe_key`) of every recipe finished
    on the instance, when ``trials`` holds only some of them (a read model keeps the best and the
    latest): :meth:`seen` checks both.
    """

    task: Task
    trials: tuple[Trial, ...] = ()
    baselines: tuple[float, ...] = ()
    guidance: tuple[str, ...] = field(default=())
    finished: Set[str] = field(default=frozenset())

    @cached_property
    def _keys(self) -> frozenset[str]:
        return frozenset(recipe_key(t.recipe) for t in self.trials)

    def seen(self, recipe: Mapping[str, Any] | BaseModel) -> bool:
        """Whether this exact recipe already finished on the instance."""
        key = recipe_key(recipe)
        return key in self._keys or key in self.finished

    @property
    def best(self) -> Trial | None:
        """The best successful trial so far (lowest objective), or None."""
        ok = [t for t in self.trials if t.ok]
        return min(ok, key=lambda t: t.objective if t.objective is not None else math.inf) if ok else None

    @property
    def incumbent(self) -> float | None:
        """The best objective so far, trials and baselines together (None if nothing finished)."""
        values = [t.objective for t in self.trials if t.ok and t.objective is not None] + list(self.baselines)
        return min(values) if values else None

    def normalized(self) -> list[float | None]:
        """Per-instance normalised outcomes of ``trials``, in order: the rank quantile of each ok
        trial among the ok trials and baselines (0 = best so far, 1 = worst), None for failures.

        Ranks make outcomes comparable across instances whose scales and offsets differ."""
        pool = sorted(
            [t.objective for t in self.trials if t.ok and t.objective is not None] + list(self.baselines)
        )
        n = len(pool)
        out: list[float | None] = []
        for t in self.trials:
            if not t.ok or t.objective is None:
                out.append(None)
                continue
            lo = bisect_left(pool, t.objective)
            out.append(lo / (n - 1) if n > 1 else 0.0)
        return out


class Proposer(ABC):
    """Base of every proposer; the contract is in this module's docstring."""

    name: ClassVar[str] = ""

    @abstractmethod
    def propose(self, history: History, rng: random.Random) -> BaseModel:
        """The next recipe to try on ``history.task`` (a ``task.space`` instance)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class PriorProposer(Proposer):
    """A fresh sample from the task's search space (uniform; log-uniform on log knobs)."""

    name: ClassVar[str] = "prior"

    def propose(self, history: History, rng: random.Random) -> BaseModel:
        """Ignore the history: sample the space."""
        return history.task.sample(rng)


class MutationProposer(Proposer):
    """A mutation of the instance's best recipe so far (its baseline while nothing has run)."""

    name: ClassVar[str] = "mutation"
    scale: ClassVar[float] = 0.2

    def propose(self, history: History, rng: random.Random) -> BaseModel:
        """Mutate the incumbent recipe."""
        best = history.best
        parent = history.task.validate_recipe(best.recipe) if best else history.task.baseline()
        return history.task.mutate(parent, rng, self.scale)


class PolicyLoader(Protocol):
    """A model backend, registered by entry point in :data:`POLICY_ENTRY_POINT_GROUP`.

    ``loader(weights, meta, version)`` builds a :class:`Proposer` named ``model-v<version>`` from
    *verified* bytes (sha256 and signature already checked by the caller): ``weights`` is a
    safetensors file (never unpickled), ``meta`` the parsed ``meta.json``. It must bound every
    dimension ``meta`` declares before allocating, and raise ``ValueError`` on anything it refuses.
    """

    def __call__(self, weights: bytes, meta: Mapping[str, Any], version: int) -> Proposer: ...


def policy_loaders() -> dict[str, PolicyLoader]:
    """The registered model backends by name (``meta["backend"]`` selects one)."""
    return {ep.name: ep.load() for ep in entry_points(group=POLICY_ENTRY_POINT_GROUP)}
