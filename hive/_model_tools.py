"""``hive model sample`` and ``hive model eval``: look at a published model offline.

A model comes either from a local pair of files (``--weights``/``--meta``, as published: the
safetensors weights and ``meta.json``) or from a running hive's Object Store, where it is taken
only through a pointer whose signature verifies with the distiller's public key (``--pubkey``) and
whose sizes and sha256 the fetched files match. An instance's history can be read from a DuckDB
file (``--history``: a snapshot or a stopped hive's database), in log order.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

import streams
from agents import History, MutationProposer, Proposer, Trial, load_task, trials_to_target
from agents._task import Task


class ToolError(Exception):
    """A user-facing problem (missing version, bad file); the CLI prints it in one line."""


def load_local(weights: str, meta: str, version: int) -> Proposer:
    """A proposer from a local weights + meta.json pair (``ValueError`` from the loader if refused)."""
    from distill import load_published

    return load_published(Path(weights).read_bytes(), Path(meta).read_bytes(), version)


async def load_from_store(url: str, name: str, version: int, pubkey: str) -> Proposer:
    """Version ``version`` of ``name`` from the hive's Object Store, through a signed pointer that
    verifies with ``pubkey`` (files checked against its sizes and sha256)."""
    from distill import load_published

    from ._oneshot import connect_once

    key = streams.load_public_key(pubkey)
    nc = await connect_once(url, "hive-model")
    try:
        store = await streams.ModelStore(nc).open()
        signed = [s for s in await store.history(name, key) if s.pointer.version == version]
        if not signed:
            raise ToolError(
                f"no pointer signed by this key names version {version} of {name!r} "
                "(use --weights/--meta for a version no pointer names any more)"
            )
        pointer = signed[-1].pointer
        weights = await store.fetch(pointer.weights, size=pointer.weights_size, sha256=pointer.weights_sha256)
        meta = await store.fetch(pointer.meta, size=pointer.meta_size, sha256=pointer.meta_sha256)
    finally:
        await nc.close()
    return load_published(weights, meta, version)


def history_from_db(db: str | None, task: Task) -> History:
    """The instance's history from a DuckDB file (its ``experiments`` in log order: baseline
    replicates apart, failed runs kept as failures); an empty history without a file."""
    if db is None:
        return History(task=task)
    import duckdb

    if not Path(db).exists():
        raise ToolError(f"{db}: no such database file")
    con = duckdb.connect(db, read_only=True)
    try:
        rows = con.execute(
            "SELECT recipe, objective, status, proposer, seq FROM experiments WHERE task = ? ORDER BY seq",
            [task.ref],
        ).fetchall()
    finally:
        con.close()
    trials: list[Trial] = []
    baselines: list[float] = []
    for recipe, objective, status, proposer, seq in rows:
        ok = status == "ok" and objective is not None and math.isfinite(objective)
        if proposer == "baseline":
            if ok:
                baselines.append(float(objective))
            continue
        data = orjson.loads(recipe) if isinstance(recipe, (str, bytes)) else recipe
        trials.append(
            Trial(
                recipe=data or {},
                objective=float(objective) if ok else None,
                status=status if status in ("ok", "failed", "timeout") else "failed",
                proposer=proposer or "",
                seq=int(seq),
            )
        )
    return History(task=task, trials=tuple(trials), baselines=tuple(baselines))


def sample(proposer: Proposer, history: History, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` proposals for the instance (each flagged if the instance already ran it)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        recipe = proposer.propose(history, rng)
        out.append({"recipe": recipe.model_dump(), "seen": history.seen(recipe)})
    return out


def evaluate(
    proposers: Sequence[Proposer], refs: Sequence[str], trials: int, seeds: int
) -> list[dict[str, Any]]:
    """Short simulated studies of each proposer on each instance and seed: per (instance, proposer),
    the mean regret AUC and median trials to regret 0.05 on the true objective (a study that never
    got there counts as ``trials + 1``; both None where the task has no true objective), and the
    mean best observed objective."""
    from distill._gate import has_truth, run_arm

    rows = []
    for ref in refs:
        task = load_task(ref)
        truth = has_truth(task)
        for proposer in proposers:
            aucs, hits, bests = [], [], []
            for seed in range(seeds):
                result, auc = run_arm(task, proposer, trials=trials, seed=seed)
                observed = [v for v in result.objectives if v is not None]
                bests.append(min(observed) if observed else math.inf)
                if truth:
                    aucs.append(auc)
                    hits.append(trials_to_target(result, task))
            solved = [h for h in hits if h is not None]
            rows.append(
                {
                    "task": task.ref,
                    "proposer": proposer.name,
                    "seeds": seeds,
                    "trials": trials,
                    "regret_auc": statistics.fmean(aucs) if aucs else None,
                    "solved": len(solved) if truth else None,
                    "median_trials_to_target": (
                        statistics.median(h if h is not None else trials + 1 for h in hits) if truth else None
                    ),
                    "best_objective": statistics.fmean(bests),
                }
            )
    return rows


def mutation() -> Proposer:
    """The mutation baseline every model is compared with."""
    return MutationProposer()
