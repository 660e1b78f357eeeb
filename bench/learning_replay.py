"""Phase 2 of ``hive bench learning`` again, on the model a run kept, under portfolio settings.

``hive bench learning --out DIR`` keeps each family's evaluated model
(``<family>-model-vN.safetensors`` and its meta) and the family's proposer record in
``learning.json``. This replays the held-out studies of the ``hive`` and ``generation0`` arms
(the same instances, seeds and study code) for each ``--frontier-powers`` value: the power
:data:`agents._portfolio.FRONTIER_POWER` to which an arm's reward counts on the instance itself
(1: the plain graded reward). Training is not repeated, so the arms differ only by the setting:
the side-by-side comparison a change to the portfolio needs, in seconds instead of a 10-minute
training run. Prints JSON and one human line per (family, power).

usage: ``python bench/learning_replay.py --out DIR [--family hartmann6] [--frontier-powers 1,8]
[--seeds 6] [--heldout 12] [--jobs 2]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ARMS = ("hive", "generation0")


def _set_power(power: float) -> None:
    """Worker initializer: the portfolio's frontier power for this replay."""
    import agents._portfolio as portfolio

    portfolio.FRONTIER_POWER = power


def _study(job: dict[str, Any]) -> dict[str, Any]:
    from hive._bench_learning import _one_study

    return _one_study(job)


def replay(out: Path, family: str, power: float, seeds: int, heldout: int, jobs: int) -> dict[str, Any]:
    """Both arms on ``heldout`` instances x ``seeds`` under ``power``; medians, means, solved, shares."""
    from agents import load_task
    from hive._bench_learning import HELDOUT_START, TARGET, _regret_curve

    report = json.loads((out / "learning.json").read_text())
    fam = report["families"][family]
    version = fam["train"]["model_version"]
    if version is None:
        raise SystemExit(f"{out}: no model was published for {family}")
    weights = (out / f"{family}-model-v{version}.safetensors").read_bytes()
    meta = (out / f"{family}-model-v{version}.meta.json").read_bytes()
    budget = int(report["config"]["budget"])
    refs = [load_task(f"{family}/{HELDOUT_START + i}").ref for i in range(heldout)]
    work = [
        {
            "arm": arm, "ref": ref, "seed": seed, "family": family, "budget": budget, "warm_start": [],
            "model_weights": weights, "model_meta": meta, "model_version": version,
            "arm_stats": fam["train"]["proposer_record"],
        }
        for arm in ARMS for ref in refs for seed in range(seeds)
    ]  # fmt: skip
    t = time.perf_counter()
    with ProcessPoolExecutor(jobs, initializer=_set_power, initargs=(power,)) as pool:
        runs = list(pool.map(_study, work))
    result: dict[str, Any] = {
        "family": family,
        "frontier_power": power,
        "model_version": version,
        "studies_per_arm": len(refs) * seeds,
        "seconds": round(time.perf_counter() - t, 1),
    }
    for arm in ARMS:
        hits: list[int] = []
        share: dict[str, int] = {}
        for r in runs:
            if r["arm"] != arm:
                continue
            task = load_task(r["instance"])
            optimum, base = task.optimum(), task.true_objective(task.baseline())
            assert optimum is not None and base is not None, "the replay needs a family with a known optimum"
            curve = _regret_curve(r["values"], optimum, base, budget)
            hits.append(next((i + 1 for i, c in enumerate(curve) if c <= TARGET), budget + 1))
            for p in r["proposers"]:
                share[p] = share.get(p, 0) + 1
        total = sum(share.values()) or 1
        result[arm] = {
            "median_trials": statistics.median(hits),
            "mean_trials": round(statistics.fmean(hits), 1),
            "solved": sum(h <= budget for h in hits),
            "share": {k: round(v / total, 3) for k, v in sorted(share.items())},
        }
    return result


def human(r: dict[str, Any]) -> str:
    """One line per replay."""
    h, g = r["hive"], r["generation0"]
    n = r["studies_per_arm"]
    return (
        f"{r['family']} (model v{r['model_version']}), frontier power {r['frontier_power']:g}: "
        f"hive median {h['median_trials']} (solved {h['solved']}/{n}, mean {h['mean_trials']}), "
        f"generation 0 median {g['median_trials']} (solved {g['solved']}/{n}, mean {g['mean_trials']})"
    )


def main() -> None:
    """Parse, replay every (family, power), print the JSON list (human lines on stderr)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="a `hive bench learning --out` directory")
    ap.add_argument("--family", action="append", help="families to replay (default: every one in the run)")
    ap.add_argument("--frontier-powers", default="1,8", help="comma-separated powers, one replay each")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--heldout", type=int, default=12)
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    families = a.family or list(json.loads((a.out / "learning.json").read_text())["families"])
    results = []
    for family in families:
        for power in [float(p) for p in a.frontier_powers.split(",") if p]:
            r = replay(a.out, family, power, a.seeds, a.heldout, a.jobs)
            results.append(r)
            print(human(r), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
