"""Does the hive learn? Success rate of proposals on held-out instances, generation 0 vs 1.

One run: researchers search training instances (``<family>/0..3``) without a model and fill the
log; the distiller trains generation 1 on their successful traces; then fresh researchers start
on held-out instances (never in the training data) twice — without the model (generation 0:
mutation/prior proposals) and with generation 1 — for the same number of experiments each. A
success is an improvement on the parent beyond the noise floor of replicated baselines (the
researcher's own judgement, published in its traces). Prints the two rates and the margin.

usage: python bench/learning.py [--family branin] [--seeds 3] [--train-s 30] [--eval-experiments 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

import structlog

import streams
from agents import AgentRuntime, load_agent_type
from agents._policy import make_model_watcher
from distill._service import DistillConfig, Distiller


async def run_researchers(
    url: str,
    tasks: list[str],
    *,
    seconds: float | None,
    prefix: str,
    pubkey: str | None,
    until_experiments: int | None = None,
) -> AgentRuntime:
    """Researchers (one per task) for a while; with ``pubkey`` they use the published model."""
    rt = AgentRuntime(url, model_watcher=make_model_watcher(pubkey) if pubkey else None)
    cls = load_agent_type("researcher")
    run = asyncio.create_task(rt.run([(cls, f"{prefix}-{i}", t) for i, t in enumerate(tasks)]))
    if pubkey:
        while rt.slot.version == 0:  # wait for the model before counting
            await asyncio.sleep(0.2)
    if until_experiments is not None:
        while sum(rt.view.task(t).experiments for t in tasks) < until_experiments and not run.done():
            await asyncio.sleep(0.2)
    else:
        await asyncio.sleep(seconds or 0)
    rt.stop()
    await run
    return rt


async def one_seed(seed: int, family: str, train_s: float, n_eval: int) -> dict[str, Any]:
    """One full run; returns success counts of both generations on held-out instances."""
    with tempfile.TemporaryDirectory() as d, streams.EmbeddedServer(http_port=None) as srv:
        priv, pub = streams.generate_keys(d + "/keys")
        mat = subprocess.Popen(
            [sys.executable, "-m", "hive", "materialize", "--nats", srv.url, "--db", d + "/h.duckdb"],
            env={**os.environ, "HIVE_LOG_LEVEL": "warning"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            train_tasks = [f"{family}/{i}" for i in range(4)]
            await run_researchers(srv.url, train_tasks, seconds=train_s, prefix=f"train{seed}", pubkey=None)
            await asyncio.sleep(2)
            d_cfg = DistillConfig(nats_url=srv.url, key_path=str(priv), once=True, seed=seed, modes=("base",))
            (report,) = await Distiller(d_cfg).run()
            held_0 = [f"{family}/{1000 + 10 * seed + i}" for i in range(2)]
            held_1 = [f"{family}/{2000 + 10 * seed + i}" for i in range(2)]
            await run_researchers(
                srv.url, held_0, seconds=None, prefix=f"gen0-{seed}", pubkey=None, until_experiments=n_eval
            )
            await run_researchers(
                srv.url,
                held_1,
                seconds=None,
                prefix=f"gen1-{seed}",
                pubkey=str(pub),
                until_experiments=n_eval,
            )
            await asyncio.sleep(3)
            nc = await streams.connect(srv.url)
            res = await streams.remote_query(
                nc,
                "SELECT model_version, count(*) FILTER (WHERE success IS NOT NULL), "
                "count(*) FILTER (WHERE success) FROM experiments "
                "WHERE agent_id LIKE 'gen%' AND proposer <> 'baseline' GROUP BY 1 ORDER BY 1",
            )
            await nc.close()
        finally:
            mat.terminate()
            mat.wait(30)
    rows = {r[0]: (r[1], r[2]) for r in res.rows}
    g0, g1 = rows.get(0, (0, 0)), rows.get(1, (0, 0))
    return {
        "seed": seed,
        "distill": report.get("decision"),
        "examples": report.get("examples"),
        "gen0_judged": g0[0],
        "gen0_success": g0[1],
        "gen1_judged": g1[0],
        "gen1_success": g1[1],
        "gen0_rate": round(g0[1] / max(1, g0[0]), 3),
        "gen1_rate": round(g1[1] / max(1, g1[0]), 3),
    }


async def main() -> None:
    """Run the seeds and print JSON plus a human line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="branin")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train-s", type=float, default=30.0)
    ap.add_argument("--eval-experiments", type=int, default=60)
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    runs = [await one_seed(s, args.family, args.train_s, args.eval_experiments) for s in range(args.seeds)]
    margins = [r["gen1_rate"] - r["gen0_rate"] for r in runs]
    out = {
        "family": args.family,
        "runs": runs,
        "margin_mean": round(sum(margins) / len(margins), 3),
        "margins": [round(m, 3) for m in margins],
    }
    print(json.dumps(out, indent=2))
    for r in runs:
        print(
            f"seed {r['seed']}: gen0 {r['gen0_success']}/{r['gen0_judged']} = {r['gen0_rate']}, "
            f"gen1 {r['gen1_success']}/{r['gen1_judged']} = {r['gen1_rate']}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    asyncio.run(main())
