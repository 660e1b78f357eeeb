"""Latency of one proposal from the default history model on one CPU core (issue 10: goal <= 5 ms).

For histories of several sizes on a task instance, times ``HistoryProposer.propose`` end to end
(encode the history, the forward pass, sampling, mapping back and validating with the task's
space) with ``torch.set_num_threads(1)``. It reports the median and p95 of wall time and of the
process's CPU time per proposal: on a shared machine the wall time includes waiting for a core,
the CPU time is what the proposal costs. Each size is measured on both paths of the proposer:
``network`` (a sample of the network) and ``recall`` (the model carries ``--elites`` recipes of the
family, none tried yet on the instance: every proposal scores them all under the network).

usage: python bench/propose_latency.py [--task hartmann6/0] [--sizes 0,10,100,1000] [--n 300]
[--elites 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time

import torch

from agents import History, Trial, load_task
from distill.model import HistoryConfig, HistoryModel, HistoryProposer


def history_of(ref: str, size: int, seed: int = 0) -> History:
    """A history of ``size`` random trials (and three baselines) on ``ref``."""
    task = load_task(ref)
    rng = random.Random(seed)
    trials = []
    for i in range(size):
        recipe = task.sample(rng)
        trials.append(Trial(recipe=recipe.model_dump(), objective=task.objective(task.run(recipe, i, 1.0))))
    base = task.baseline()
    baselines = tuple(task.objective(task.run(base, s, 1.0)) for s in range(3))
    return History(task=task, trials=tuple(trials), baselines=baselines)


def measure(proposer: HistoryProposer, history: History, n: int) -> dict[str, float]:
    """Per-proposal wall and CPU milliseconds (median, p95) over ``n`` proposals after a warm-up."""
    rng = random.Random(1)
    for _ in range(20):
        proposer.propose(history, rng)
    wall, cpu = [], []
    for _ in range(n):
        w0, c0 = time.perf_counter(), time.process_time()
        proposer.propose(history, rng)
        wall.append((time.perf_counter() - w0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    q = lambda xs: statistics.quantiles(xs, n=20)[18]  # noqa: E731  (p95)
    return {
        "wall_ms_median": statistics.median(wall),
        "wall_ms_p95": q(wall),
        "cpu_ms_median": statistics.median(cpu),
        "cpu_ms_p95": q(cpu),
    }


def main() -> None:
    """Run the measurement and print JSON and a human line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="hartmann6/0")
    ap.add_argument("--sizes", default="0,10,100,1000")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--elites", type=int, default=64, help="elite recipes of the recall path")
    ap.add_argument("--json", action="store_true", help="JSON only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = HistoryConfig()
    torch.manual_seed(0)
    proposer = HistoryProposer(HistoryModel(cfg))
    recall_model = HistoryModel.from_bytes(proposer.model.to_bytes())
    task, rng = load_task(args.task), random.Random(7)
    recall_model.elites = {task.name: [task.sample(rng).model_dump() for _ in range(args.elites)]}
    recall = HistoryProposer(recall_model)
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        history = history_of(args.task, size)
        for path, p in (("network", proposer), ("recall", recall)):
            results.append({"history_trials": size, "path": path, **measure(p, history, args.n)})
    out = {
        "task": args.task,
        "config": json.loads(cfg.to_json()),
        "params": proposer.model.num_params(),
        "threads": torch.get_num_threads(),
        "elites": args.elites,
        "proposals_per_size": args.n,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "load_average_1m": os.getloadavg()[0],
        "results": results,
    }
    print(json.dumps(out, indent=2))
    if not args.json:
        parts = [
            f"{r['history_trials']} trials, {r['path']}: {r['cpu_ms_median']:.2f} ms CPU "
            f"(p95 {r['cpu_ms_p95']:.2f}), {r['wall_ms_median']:.2f} ms wall"
            for r in results
        ]
        print(
            f"history model ({out['params']:,} params, 1 thread) per proposal on {args.task}: "
            + "; ".join(parts)
        )


if __name__ == "__main__":
    main()
