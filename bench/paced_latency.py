"""Publish -> queryable latency against the publish rate: where the materializer saturates.

Starts an embedded ``nats-server`` and ``hive materialize`` (its own process, as in production),
optionally publishes a ``--history`` of realistic ~1 KB events at full rate first, then for each
of ``--rates`` publishes ``--seconds`` worth of events paced at that rate (a burst every 10 ms
with hive's ``Publisher``, every ack checked) while polling the applied sequence every ~5 ms, as
``hive bench ingest``'s half-rate arm does. Prints JSON (p50/p99 per rate) and a human line per
rate: the p50 stays near one fetch-and-commit cycle until the rate nears the materializer's
capacity on the machine, then the queue grows.

``--snapshot-every 2,100000`` runs the whole measurement once per snapshot interval of the
materializer (``hive materialize --snapshot-every``), side by side: what do snapshots, written in
the background while ingest goes on, cost the latency? (100000: none after the first.)

usage: ``python bench/paced_latency.py --rates 500,2000,5000 [--history 50000] [--seconds 8]
[--snapshot-every 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from typing import Any

import orjson

import streams
from hive._bench_ingest import _applied, paced_arm, realistic_events, reap


async def run(
    history: int, rates: list[float], seconds: float, snapshot_every: float = 2.0
) -> dict[str, Any]:
    """Publish the history, then each paced arm; returns the JSON report."""
    load_before = os.getloadavg()
    server = streams.EmbeddedServer(http_port=None).start()
    proc: subprocess.Popen[bytes] | None = None
    arms = []
    try:
        with tempfile.TemporaryDirectory(prefix="hive-paced-") as tmp:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hive",
                    "materialize",
                    "--nats",
                    server.url,
                    "--db",
                    f"{tmp}/p.duckdb",
                    "--snapshot-every",
                    str(snapshot_every),
                ],
                env={**os.environ, "HIVE_LOG_FORMAT": "json", "HIVE_LOG_LEVEL": "warning"},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
            nc = await streams.connect(server.url, name="paced-latency")
            try:
                js = nc.jetstream()
                await streams.ensure_stream(js)
                pub = streams.Publisher(js)
                for _ in range(300):
                    try:
                        await _applied(nc)
                        break
                    except Exception:
                        await asyncio.sleep(0.1)
                if history:
                    await pub.publish_many(realistic_events(history))
                    while await _applied(nc) < history:
                        await asyncio.sleep(0.1)
                start = history
                for rate in rates:
                    events = realistic_events(max(10, int(rate * seconds)), seed=2, start=start)
                    start += len(events)
                    arm = await paced_arm(nc, pub, events, rate, 0)
                    arm["snapshot_every_s"] = snapshot_every
                    arms.append(arm)
                    print(human(arm), file=sys.stderr, flush=True)
            finally:
                await nc.close()
            proc.send_signal(signal.SIGTERM)
            rss = await reap(proc, timeout=60)
            proc = None
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        server.stop()
    return {
        "history": history,
        "seconds": seconds,
        "snapshot_every_s": snapshot_every,
        "arms": arms,
        "materializer_peak_rss_mib": rss,
        "cpus": os.cpu_count(),
        "load_avg": {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in os.getloadavg()],
        },
    }


def human(arm: dict[str, Any]) -> str:
    """One line per rate."""
    lat = arm["latency_ms"]
    return (
        f"paced at {arm['target_per_s']:,}/s (achieved {arm['achieved_per_s']:,}/s, "
        f"{arm['events']:,} events, snapshots every {arm['snapshot_every_s']:g} s): "
        f"publish -> queryable p50 {lat['p50']} ms, p99 {lat['p99']} ms (goal p50 <= 100 ms at half the peak)"
    )


def main() -> None:
    """Parse the options, run, print the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="500,2000,5000", help="comma-separated events/s")
    ap.add_argument("--history", type=int, default=0, help="events published at full rate first")
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds of publishing per rate")
    ap.add_argument(
        "--snapshot-every", default="2", help="comma-separated snapshot intervals (s), one run each"
    )
    a = ap.parse_args()
    rates = [float(r) for r in a.rates.split(",") if r]
    intervals = [float(x) for x in a.snapshot_every.split(",") if x]
    reports = [asyncio.run(run(a.history, rates, a.seconds, every)) for every in intervals]
    out = reports[0] if len(reports) == 1 else {"runs": reports}
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
