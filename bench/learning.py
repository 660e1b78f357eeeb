"""Does the hive learn? Deployment success on held-out instances, generation 0 vs >= 1.

Each run is one ``hive up`` on a synthetic family (a researcher on ``<family>/0`` finds the
incumbent, deployers take a new, never-researched instance per deployment, the distiller trains
a generation every ``--distill-every`` new successful traces). After the run, the deployments
are grouped by the model version that proposed them (:mod:`hive._learning`): the margin is the
success rate against the incumbent of generations >= 1 minus generation 0's.

usage: python bench/learning.py [--runs 3] [--duration 150] [--family hartmann6] [--distill-every 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb

from hive import generations


def one_run(i: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """One ``hive up`` run; returns the generation summary and the models it published."""
    data = root / f"run-{i}"
    cmd = [
        sys.executable, "-m", "hive", "up", "--agents", str(len(args.types.split(","))),
        "--types", args.types, "--task", f"{args.family}/0", "--duration", str(args.duration),
        "--distill-every", str(args.distill_every), "--data", str(data), "--port", "0", "--http-port", "0",
    ]
    t0 = time.perf_counter()
    with open(root / f"run-{i}.log", "wb") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=args.duration + 180)
    con = duckdb.connect(str(data / "hive.duckdb"), read_only=True)
    try:
        gens = generations(con)
        models = con.execute(
            "SELECT version, decision, dataset_size, round(epoch(occurred_at) - epoch(min(occurred_at) "
            "OVER ()), 1) FROM models ORDER BY seq"
        ).fetchall()
        first = con.execute("SELECT epoch(min(occurred_at)) FROM deployments").fetchone()
        t_model = con.execute(
            "SELECT epoch(min(occurred_at)) FROM models WHERE decision = 'published'"
        ).fetchone()
    finally:
        con.close()
    first_model_s = (
        round(t_model[0] - first[0], 1) if t_model and first and t_model[0] and first[0] else None
    )
    return {
        "run": i,
        "wall_s": round(time.perf_counter() - t0, 1),
        "first_model_after_s": first_model_s,
        "models": [list(m) for m in models],
        **gens.summary(),
    }


def main() -> None:
    """Run ``hive up`` ``--runs`` times and print JSON plus a human line per run."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=150.0)
    ap.add_argument("--family", default="hartmann6")
    ap.add_argument("--types", default="researcher,deployer,deployer")
    ap.add_argument("--distill-every", type=int, default=100)
    ap.add_argument("--keep", type=Path, default=None, help="keep each run's data under this folder")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        runs = [one_run(i, args, root) for i in range(args.runs)]
    margins = [r["margin"] for r in runs if r["margin"] is not None]
    out = {
        "family": args.family,
        "duration_s": args.duration,
        "types": args.types,
        "distill_every": args.distill_every,
        "runs": runs,
        "margins": margins,
        "margin_mean": round(statistics.fmean(margins), 4) if margins else None,
        "margin_min": min(margins) if margins else None,
    }
    print(json.dumps(out, indent=2))
    for r in runs:
        g0, g1 = r["gen0"], r["gen1_plus"]
        print(
            f"run {r['run']}: generation 0 {g0['successes']}/{g0['deployments']} = {g0['rate']}, "
            f"generations >= 1 {g1['successes']}/{g1['deployments']} = {g1['rate']}, "
            f"margin {r['margin']} (z {r['z']}), first model after {r['first_model_after_s']} s",
            file=sys.stderr,
        )
    n = len(margins)
    print(f"mean margin {out['margin_mean']} over {n} runs (min {out['margin_min']})", file=sys.stderr)


if __name__ == "__main__":
    main()
