"""Rebuild rate with and without the fast decode path, side by side in one run.

Publishes ``--events`` realistic ~1 KB events to an embedded server once, then rebuilds the
DuckDB state from sequence 1 ``--repeat`` times per arm, alternating the arms (pydantic only,
then ``streams.fast_decode`` first), in this process. Prints JSON (every rate, the medians, the
ratio, the load average before and after) and a human line.

usage: ``python bench/rebuild_ab.py --events 50000 --repeat 3``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

import hive._projections as projections
import streams
from hive._bench_ingest import realistic_events
from hive._materializer import rebuild


async def _publish(url: str, n: int) -> None:
    nc = await streams.connect(url, name="rebuild-ab")
    js = nc.jetstream()
    await streams.ensure_stream(js)
    await streams.Publisher(js).publish_many(realistic_events(n))
    await nc.close()


def main() -> None:
    """Publish once, rebuild alternately with each arm, print the JSON and the human line."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    load_before = os.getloadavg()[0]
    rates: dict[str, list[float]] = {"pydantic": [], "fast": []}
    server = streams.EmbeddedServer(http_port=None).start()
    try:
        asyncio.run(_publish(server.url, a.events))
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(a.repeat):
                for arm in ("pydantic", "fast"):
                    projections.FAST_DECODE = arm == "fast"
                    db = Path(tmp) / f"{arm}.duckdb"
                    t = time.perf_counter()
                    n = asyncio.run(rebuild(server.url, db))
                    rates[arm].append(round(n / (time.perf_counter() - t)))
                    db.unlink()
    finally:
        server.stop()
    med = {arm: statistics.median(r) for arm, r in rates.items()}
    result = {
        "events": a.events,
        "rebuild_per_s": rates,
        "median_per_s": med,
        "fast_over_pydantic": round(med["fast"] / med["pydantic"], 3),
        "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(
        f"rebuild of {a.events} events, median of {a.repeat}: pydantic {med['pydantic']:,.0f}/s, "
        f"fast decode {med['fast']:,.0f}/s (x{result['fast_over_pydantic']}); load {result['load_avg']}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
