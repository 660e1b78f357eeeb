"""Swarm benchmark: experiments per second with 1, 4, 16, 64 agents on an I/O-bound task.

Each experiment of the ``sleep`` task waits T ms, so N agents can at best finish N / T
experiments per second: that ideal is computed in the same run, and ``efficiency`` =
measured / ideal. The agents are real researchers (claims in KV, Started/Finished published
and acked, heartbeats, the read model fed from the log) in one process, against an embedded
nats-server with a materializer process ingesting everything, as in ``hive up``.

usage: python bench/swarm.py [--agents 1,4,16,64] [--sleep-ms 200] [--seconds 8] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import streams
from agents import AgentRuntime, load_agent_type


async def measure(url: str, n: int, sleep_ms: float, seconds: float, warmup: float) -> dict[str, Any]:
    """Run n researchers on a fresh sleep instance; count experiments finished in the window."""
    task = f"sleep/bench-{n}"
    runtime = AgentRuntime(url)
    cls = load_agent_type("researcher")
    specs = [(cls, f"bench-{n}-{i}", task) for i in range(n)]
    run = asyncio.create_task(runtime.run(specs, options={"budget": sleep_ms}))
    await asyncio.sleep(warmup)
    start = runtime.view.task(task).experiments
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    done = runtime.view.task(task).experiments - start
    dt = time.perf_counter() - t0
    runtime.stop()
    await asyncio.wait_for(run, 60)
    rate = done / dt
    ideal = n / (sleep_ms / 1000)
    return {
        "agents": n,
        "experiments_per_s": round(rate, 1),
        "ideal_per_s": round(ideal, 1),
        "efficiency": round(rate / ideal, 3),
        "experiments": done,
    }


async def main() -> None:
    """Parse arguments, start the server and the materializer, measure each swarm size."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", default="1,4,16,64")
    ap.add_argument("--sleep-ms", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--no-materializer", action="store_true")
    ap.add_argument("--json", action="store_true", help="print only JSON")
    args = ap.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    results = []
    with tempfile.TemporaryDirectory() as tmp, streams.EmbeddedServer(http_port=None) as srv:
        mat = None
        if not args.no_materializer:
            mat = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hive",
                    "materialize",
                    "--nats",
                    srv.url,
                    "--db",
                    f"{tmp}/bench.duckdb",
                ],
                env={**os.environ, "HIVE_LOG_LEVEL": "warning"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        try:
            for n in (int(x) for x in args.agents.split(",")):
                r = await measure(srv.url, n, args.sleep_ms, args.seconds, args.warmup)
                results.append(r)
                if not args.json:
                    print(
                        f"{n:>3} agents: {r['experiments_per_s']:>7.1f} exp/s "
                        f"of ideal {r['ideal_per_s']:>6.1f} "
                        f"(efficiency {r['efficiency']:.3f})",
                        file=sys.stderr,
                    )
        finally:
            if mat is not None:
                mat.send_signal(signal.SIGTERM)
                mat.wait(30)
    print(
        json.dumps(
            {
                "sleep_ms": args.sleep_ms,
                "window_s": args.seconds,
                "cpus": os.cpu_count(),
                "materializer": not args.no_materializer,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
