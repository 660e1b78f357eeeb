"""Dataset selection: successful traces from the DuckDB read side into (prompt, completion) pairs.

Read side only: rows come from the materializer's query service (or a snapshot file), never
from the live database. Selection (ReST-EM's "filter" step):

* successful experiments — judged at publish time against the noise floor of replicated
  baselines — with their parent's recipe and objective as context, and successful deployments
  (no parent: the one-shot context) whose incumbent is still as good as the best known, within
  the noise floor (when a clearly better incumbent replaces it, they no longer count);
* deduplicated on (prompt, completion), capped at ``cap_per_context`` completions per prompt
  (the best objectives kept);
* the pool is every successful trace in the log, whatever model version produced it (kept
  across generations);
* whole task instances are held out for evaluation (a stable hash of the instance), so the
  gate measures generalisation to instances the candidate never saw.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ._prompt import render_action, render_prompt

SELECT_SQL = """
WITH standard AS (  -- per researched instance: the best objective so far and the noise floor
    SELECT task, min(objective) AS best,
           stddev_samp(objective) FILTER (WHERE proposer = 'baseline') AS sigma
    FROM experiments WHERE status = 'ok' AND seq <= $1 GROUP BY task
)
SELECT e.seq, e.task, e.recipe, e.objective, p.recipe AS parent_recipe, p.objective AS parent_objective,
       e.model_version
FROM experiments e LEFT JOIN experiments p ON p.event_id = e.parent_id
WHERE e.success AND e.status = 'ok' AND e.seq <= $1
UNION ALL
SELECT d.seq, d.task, d.recipe, d.objective, NULL, NULL, d.model_version
FROM deployments d LEFT JOIN standard s ON s.task = d.reference_task
WHERE d.success AND d.status = 'ok' AND d.seq <= $1
  AND (d.reference_score IS NULL OR d.reference_score <= s.best + $2 * coalesce(s.sigma, 0))
ORDER BY 1
"""
"""Successful traces up to sequence ``$1``. A deployment counts only if the incumbent it beat is
still within ``$2`` noise floors of the best known on its instance: a success against an
incumbent since clearly superseded was judged by a weaker standard."""
GUIDANCE_SQL = "SELECT task, hint FROM guidance WHERE hint <> '' ORDER BY seq"


@dataclass
class Dataset:
    """Training and held-out examples, with where they came from."""

    train: list[tuple[str, str]] = field(default_factory=list)
    heldout: list[tuple[str, str]] = field(default_factory=list)
    heldout_tasks: list[str] = field(default_factory=list)
    spaces: dict[str, Any] = field(default_factory=dict)
    """prompt → the task's search space (for valid-action checks)."""
    through_seq: int = 0
    pooled: int = 0
    holdout: str = "instances"

    @property
    def size(self) -> int:
        """Examples in train + held-out."""
        return len(self.train) + len(self.heldout)


def _held_out(task: str, fraction: float) -> bool:
    return zlib.crc32(task.encode()) % 1000 < fraction * 1000


def build_dataset(
    rows: Sequence[Sequence[Any]],
    guidance_rows: Sequence[Sequence[Any]],
    *,
    space_for: Any,
    through_seq: int,
    cap_per_context: int = 8,
    heldout_fraction: float = 0.25,
) -> Dataset:
    """Turn selected rows into a deduplicated, capped dataset split by held-out instances.

    ``space_for(task_ref)`` returns the task's recipe space (``agents.load_task(ref).space``);
    rows of tasks it cannot resolve are skipped.
    """
    hints: dict[str, list[str]] = defaultdict(list)
    for task, hint in guidance_rows:
        hints[task].append(hint)
    by_prompt: dict[str, dict[str, float]] = defaultdict(dict)
    task_of: dict[str, str] = {}
    ds = Dataset(through_seq=through_seq, pooled=len(rows))
    for _seq, task, recipe, objective, parent_recipe, parent_objective, _version in rows:
        try:
            space = space_for(task)
        except Exception:
            continue
        recipe_d = orjson.loads(recipe) if isinstance(recipe, str) else recipe
        parent_d = orjson.loads(parent_recipe) if isinstance(parent_recipe, str) else parent_recipe
        try:
            completion = render_action(space.model_validate(recipe_d), space)
        except ValueError:
            continue
        prompt = render_prompt(task, parent_d, parent_objective, hints.get(task, [])[-3:])
        best = by_prompt[prompt].get(completion)
        obj = float(objective) if objective is not None else float("inf")
        by_prompt[prompt][completion] = obj if best is None else min(best, obj)
        task_of[prompt] = task
        ds.spaces[prompt] = space
    tasks = sorted(set(task_of.values()))
    held = {t for t in tasks if _held_out(t, heldout_fraction)}
    if len(tasks) >= 2 and (not held or held == set(tasks)):
        held = {tasks[0]} if not held else held - {tasks[-1]}
    if len(tasks) < 2:
        ds.holdout = "examples"  # one instance only: hold out a stable fraction of examples instead
    for prompt, completions in by_prompt.items():
        kept = sorted(completions.items(), key=lambda kv: kv[1])[:cap_per_context]
        for completion, _obj in kept:
            if ds.holdout == "instances":
                to_heldout = task_of[prompt] in held
            else:
                to_heldout = _held_out(prompt + completion, heldout_fraction)
            (ds.heldout if to_heldout else ds.train).append((prompt, completion))
    ds.heldout_tasks = sorted(held) if ds.holdout == "instances" else []
    return ds
