"""Hindsight training data for the history model, from the instances' trajectories in DuckDB.

The distiller reads the ``experiments`` table in log order (:data:`TRAJECTORY_SQL`, through the
query service); each task instance's rows form its trajectory: its baseline replicates
(``proposer = 'baseline'``) and its trials, in order. Then, per instance (ReST-style filter, as in
the Decision-Pretrained Transformer's "predict the best action given the in-context history"):

* the **targets** are the instance's best trials in hindsight: the top ``top_q`` of its finished
  trials by objective (at least one), baselines excluded;
* an **example** is a random prefix of the trajectory (length 0 .. n-1) as context, and one of
  the target recipes that ran *after* that prefix as the label (so the model learns to propose
  what turned out to be good, never to repeat what it was shown);
* examples are deduplicated on (prefix length, target) and capped at ``cap_per_instance``;
* whole instances are held out by a stable hash for the held-out loss, but never all of them: with
  two or more instances at least one trains and at least one is held out;
* the **elites** (:func:`elite_recipes`) are the best recipe of each *training* instance, per
  family: the model's recall memory (:class:`~distill.model.HistoryProposer`). Held-out instances
  never give one, so the gate's studies on them stay honest.

Every row the dataset cannot use is counted by reason in :attr:`HistoryDataset.skipped`
(``unimportable_task``, ``unsupported_space``, ``unknown_knobs``, ``invalid_recipe``), logged by
the distiller and put on its ``ModelPublished``/``ModelRejected`` events.
"""

from __future__ import annotations

import math
import random
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from agents._task import Task

from .model import (
    MAX_ELITE_FAMILIES,
    MAX_ELITES,
    Context,
    HistoryConfig,
    SpaceCode,
    encode_context,
    encode_recipe,
    space_code,
)

TRAJECTORY_SQL = """
SELECT seq, task, recipe, objective, status, proposer
FROM experiments WHERE seq <= $1
QUALIFY row_number() OVER (PARTITION BY task ORDER BY seq) <= $2
ORDER BY task, seq
"""
"""The finished experiments up to sequence ``$1``, per instance in log order: the first ``$2`` of
each instance (its baselines among them), so a long-running hive's read stays bounded while
every instance's early research, what a new instance needs most, is kept."""
MAX_ROWS_PER_INSTANCE = 1000
"""``$2`` of :data:`TRAJECTORY_SQL`."""
SKIP_REASONS = ("unimportable_task", "unsupported_space", "unknown_knobs", "invalid_recipe")
"""Why a trace can be left out of the dataset (keys of :attr:`HistoryDataset.skipped`)."""

Example = tuple[Context, tuple[list[float], list[int]]]
"""A model input (a prefix of a trajectory) and its target recipe's slot values."""


@dataclass
class Trajectory:
    """One task instance's history in log order: trials (recipe, objective or None) and baselines."""

    task: Task
    code: SpaceCode
    recipes: list[dict[str, Any]] = field(default_factory=list)
    objectives: list[float | None] = field(default_factory=list)
    baselines: list[float] = field(default_factory=list)


@dataclass
class HistoryDataset:
    """Training and held-out examples, the trajectories they came from, and what was skipped."""

    train: list[Example] = field(default_factory=list)
    heldout: list[Example] = field(default_factory=list)
    train_tasks: list[str] = field(default_factory=list)
    heldout_tasks: list[str] = field(default_factory=list)
    trajectories: dict[str, Trajectory] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    through_seq: int = 0
    pooled: int = 0
    elites: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Examples in train + held-out."""
        return len(self.train) + len(self.heldout)

    def skip_metrics(self) -> dict[str, float]:
        """``skipped_<reason>`` counts (every reason, zeros included), for the model events' ``eval``."""
        return {f"skipped_{r}": float(self.skipped.get(r, 0)) for r in SKIP_REASONS}


def _held_out(task: str, fraction: float) -> bool:
    return zlib.crc32(task.encode()) % 1000 < fraction * 1000


def split_instances(tasks: Sequence[str], fraction: float) -> tuple[list[str], list[str]]:
    """``(train, heldout)`` instances by a stable hash; with two or more instances, both are non-empty."""
    tasks = sorted(set(tasks))
    held = [t for t in tasks if _held_out(t, fraction)]
    if len(tasks) >= 2 and not held:
        held = [min(tasks, key=lambda t: zlib.crc32(t.encode()))]
    if held and len(held) == len(tasks):
        held = held[:-1]  # never all: at least one instance trains
    return [t for t in tasks if t not in held], held


def read_trajectories(
    rows: Sequence[Sequence[Any]], cfg: HistoryConfig, load: Callable[[str], Task]
) -> tuple[dict[str, Trajectory], Counter[str]]:
    """Group :data:`TRAJECTORY_SQL` rows into trajectories; count the rows left out by reason."""
    skipped: Counter[str] = Counter()
    tasks: dict[str, Trajectory | str] = {}  # ref -> trajectory, or the reason it cannot be one
    for _seq, ref, recipe, objective, status, proposer in rows:
        if ref not in tasks:
            try:
                task = load(ref)
            except Exception:
                tasks[ref] = "unimportable_task"
            else:
                try:
                    tasks[ref] = Trajectory(task, space_code(task.space, cfg))
                except (ValueError, TypeError):
                    tasks[ref] = "unsupported_space"
        traj = tasks[ref]
        if isinstance(traj, str):
            skipped[traj] += 1
            continue
        value = float(objective) if objective is not None and status == "ok" else None
        if value is not None and not math.isfinite(value):
            value = None
        if proposer == "baseline":
            if value is not None:
                traj.baselines.append(value)
            continue
        try:
            data = orjson.loads(recipe) if isinstance(recipe, (str, bytes)) else recipe
            if not isinstance(data, dict):
                raise ValueError("recipe is not an object")
        except (orjson.JSONDecodeError, ValueError):
            skipped["invalid_recipe"] += 1
            continue
        if set(data) - {k.name for k in traj.code.knobs}:
            skipped["unknown_knobs"] += 1
            continue
        try:
            valid: BaseModel = traj.task.validate_recipe(data)
        except (ValidationError, ValueError, TypeError):
            skipped["invalid_recipe"] += 1
            continue
        traj.recipes.append(valid.model_dump())
        traj.objectives.append(value)
    return {ref: t for ref, t in tasks.items() if isinstance(t, Trajectory)}, skipped


def hindsight_examples(
    traj: Trajectory,
    cfg: HistoryConfig,
    rng: random.Random,
    *,
    top_q: float = 0.1,
    prefixes: int = 48,
    cap: int = 64,
) -> list[Example]:
    """Examples of one trajectory: ``prefixes`` random prefixes, each labelled with one of the
    instance's top-``top_q`` trials that ran after it (deduplicated, at most ``cap``)."""
    n = len(traj.objectives)
    ok = [i for i, v in enumerate(traj.objectives) if v is not None]
    if not ok:
        return []
    k = max(1, math.ceil(top_q * len(ok)))
    top = sorted(ok, key=lambda i: (traj.objectives[i], i))[:k]
    cache: dict[int, tuple[list[float], list[int]] | None] = {}
    seen: set[tuple[int, int]] = set()
    out: list[Example] = []
    for _ in range(prefixes):
        length = rng.randrange(0, n)  # the context is trials[:length]
        later = [j for j in top if j >= length]
        if not later:
            continue
        j = rng.choice(later)
        if (length, j) in seen:
            continue
        seen.add((length, j))
        context = encode_context(
            traj.code,
            traj.recipes[:length],
            traj.objectives[:length],
            traj.baselines,
            cfg,
            cache,
        )
        out.append((context, encode_recipe(traj.code, traj.recipes[j], cfg)))
        if len(out) >= cap:
            break
    return out


MAX_ELITE_JSON = 256 * 1024
"""Bytes of elite JSON a model carries at most (its safetensors header is bounded at 1 MiB)."""


def elite_recipes(
    trajectories: dict[str, Trajectory], train: Sequence[str], per_family: int = MAX_ELITES
) -> dict[str, list[dict[str, Any]]]:
    """The best finished recipe of each training instance, per family (``task.name``): the most
    researched instances first, at most ``per_family`` (<= :data:`~distill.model.MAX_ELITES`) a family and
    :data:`~distill.model.MAX_ELITE_FAMILIES` families, within :data:`MAX_ELITE_JSON` bytes."""
    ranked = sorted(
        (t for t in (trajectories.get(ref) for ref in train) if t is not None),
        key=lambda t: (-sum(v is not None for v in t.objectives), t.task.ref),
    )
    out: dict[str, list[dict[str, Any]]] = {}
    size = 2
    for traj in ranked:
        ok = [i for i, v in enumerate(traj.objectives) if v is not None]
        family = traj.task.name
        if not ok or (family not in out and len(out) >= MAX_ELITE_FAMILIES):
            continue
        if len(out.get(family, ())) >= min(per_family, MAX_ELITES):
            continue
        best = traj.recipes[min(ok, key=lambda i: (traj.objectives[i], i))]
        cost = len(orjson.dumps(best)) + len(family) + 8
        if size + cost > MAX_ELITE_JSON:
            break
        size += cost
        out.setdefault(family, []).append(best)
    return out


def build_history_dataset(
    rows: Sequence[Sequence[Any]],
    cfg: HistoryConfig,
    *,
    load: Callable[[str], Task],
    through_seq: int = 0,
    top_q: float = 0.1,
    prefixes: int = 48,
    cap_per_instance: int = 64,
    heldout_fraction: float = 0.25,
    seed: int = 0,
    elites: int = MAX_ELITES,
) -> HistoryDataset:
    """The dataset of :data:`TRAJECTORY_SQL` rows (see the module docstring); ``load(ref)`` is the
    task registry (``agents.load_task``)."""
    trajectories, skipped = read_trajectories(rows, cfg, load)
    ds = HistoryDataset(trajectories=trajectories, skipped=skipped, through_seq=through_seq, pooled=len(rows))
    usable = [ref for ref, t in trajectories.items() if any(v is not None for v in t.objectives)]
    ds.train_tasks, ds.heldout_tasks = split_instances(usable, heldout_fraction)
    ds.elites = elite_recipes(trajectories, ds.train_tasks, elites)
    held = set(ds.heldout_tasks)
    for ref in sorted(usable):
        rng = random.Random(f"{seed}|{ref}")
        examples = hindsight_examples(
            trajectories[ref], cfg, rng, top_q=top_q, prefixes=prefixes, cap=cap_per_instance
        )
        (ds.heldout if ref in held else ds.train).extend(examples)
    return ds
