"""Research value of the history model, in-process: train on one family's pooled trajectories, then
compare it with mutation and random search in short simulated studies on held-out instances.

Trajectories are simulated studies (a 70/30 mutation/prior mix, as researchers without a model)
on instances 0..K-1; the model is trained on their hindsight examples (``distill._history``);
each arm then runs ``--seeds`` studies of ``--trials`` trials on instances 1000.. of the family
(never seen). The figure is the gate's: mean normalised regret of the best-so-far (true
objective), averaged over the trials (lower is better). One core; a few minutes.

usage: python bench/history_value.py [--family branin] [--instances 16] [--trials-per-instance 60]
                                     [--steps 300] [--heldout 4] [--seeds 2] [--trials 40]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

import torch
from pydantic import BaseModel

from agents import History, MutationProposer, PriorProposer, Proposer, load_task, run_study
from distill import HistoryConfig, HistoryModel, HistoryProposer, build_history_dataset, train_history
from distill._gate import study_auc


def trajectory_rows(family: str, instances: int, trials: int) -> list[tuple[Any, ...]]:
    """``TRAJECTORY_SQL``-shaped rows of mutation/prior studies on ``family/0..instances-1``."""
    mutation, prior = MutationProposer(), PriorProposer()

    def mix(history: History, rng: random.Random) -> tuple[BaseModel, str]:
        p: Proposer = mutation if rng.random() < 0.7 else prior
        return p.propose(history, rng), p.name

    rows: list[tuple[Any, ...]] = []
    for i in range(instances):
        task = load_task(f"{family}/{i}")
        res = run_study(task, mix, trials=trials, seed=i)
        for b in res.baselines:
            rows.append((len(rows) + 1, task.ref, task.baseline().model_dump(), b, "ok", "baseline"))
        for recipe, objective, name in zip(res.recipes, res.objectives, res.proposers, strict=True):
            rows.append(
                (
                    len(rows) + 1,
                    task.ref,
                    recipe,
                    objective,
                    "ok" if objective is not None else "failed",
                    name,
                )
            )
    return rows


def main() -> None:
    """Train, evaluate the three arms, print JSON and a human line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="branin")
    ap.add_argument("--instances", type=int, default=16)
    ap.add_argument("--trials-per-instance", type=int, default=60)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--heldout", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--trials", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = trajectory_rows(args.family, args.instances, args.trials_per_instance)
    cfg = HistoryConfig()
    ds = build_history_dataset(rows, cfg, load=load_task)
    torch.manual_seed(0)
    model = HistoryModel(cfg)
    report = train_history(model, ds.train + ds.heldout, steps=args.steps, device="cpu")
    arms: dict[str, Proposer] = {
        "model": HistoryProposer(model),
        "mutation": MutationProposer(),
        "random": PriorProposer(),
    }
    heldout = [load_task(f"{args.family}/{1000 + i}") for i in range(args.heldout)]
    auc = {
        name: statistics.fmean(
            study_auc(task, p, trials=args.trials, seed=s) for task in heldout for s in range(args.seeds)
        )
        for name, p in arms.items()
    }
    out = {
        "family": args.family,
        "train_instances": args.instances,
        "trials_per_instance": args.trials_per_instance,
        "examples": ds.size,
        "steps": args.steps,
        "train_s": report.wall_s,
        "heldout_instances": [t.ref for t in heldout],
        "seeds": args.seeds,
        "trials": args.trials,
        "regret_auc": auc,
        "wall_s": time.perf_counter() - t0,
    }
    print(json.dumps(out, indent=2))
    print(
        f"{args.family}: regret AUC on {len(heldout)} held-out instances x {args.seeds} seeds "
        f"x {args.trials} trials: model {auc['model']:.3f}, mutation {auc['mutation']:.3f}, "
        f"random {auc['random']:.3f}"
    )


if __name__ == "__main__":
    main()
