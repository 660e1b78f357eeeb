"""Rebuild rate of two arms side by side in one run, alternated.

Publishes ``--events`` realistic ~1 KB events to an embedded server once, then rebuilds the
DuckDB state from sequence 1 ``--repeat`` times per arm, alternating the arms, in this process.
``--compare decode`` (the default): pydantic only against ``streams.fast_decode`` first;
``--compare reader``: nats-py's client (:class:`streams.LogReader`) against the raw-protocol
reader (:class:`streams.RawLogReader`, ``HIVE_RAW_READER``). Prints JSON (every rate and the CPU
time of this process per event, the medians, the ratios, the load average before and after) and
a human line. CPU µs/event is the steadier figure on a shared machine: the rate follows the share
of the cores this process gets.

usage: ``python bench/rebuild_ab.py --events 50000 --repeat 3 [--compare reader]``
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

ARMS = {"decode": ("pydantic", "fast"), "reader": ("nats-py", "raw")}


async def _publish(url: str, n: int) -> None:
    nc = await streams.connect(url, name="rebuild-ab")
    js = nc.jetstream()
    await streams.ensure_stream(js)
    await streams.Publisher(js).publish_many(realistic_events(n))
    await nc.close()


def _select(arm: str) -> None:
    """Switch this process to ``arm``."""
    if arm in ("pydantic", "fast"):
        projections.FAST_DECODE = arm == "fast"
    else:
        os.environ[streams.RAW_READER_ENV] = "1" if arm == "raw" else "0"


def main() -> None:
    """Publish once, rebuild alternately with each arm, print the JSON and the human line."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--compare", choices=sorted(ARMS), default="decode")
    a = ap.parse_args()
    base, new = ARMS[a.compare]
    load_before = os.getloadavg()[0]
    rates: dict[str, list[float]] = {base: [], new: []}
    cpu_us: dict[str, list[float]] = {base: [], new: []}
    server = streams.EmbeddedServer(http_port=None).start()
    try:
        asyncio.run(_publish(server.url, a.events))
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(a.repeat):
                for arm in (base, new):
                    _select(arm)
                    db = Path(tmp) / f"{arm}.duckdb"
                    t, c = time.perf_counter(), time.process_time()
                    n = asyncio.run(rebuild(server.url, db))
                    rates[arm].append(round(n / (time.perf_counter() - t)))
                    cpu_us[arm].append(round((time.process_time() - c) / n * 1e6, 1))
                    for p in Path(tmp).iterdir():
                        p.unlink()
    finally:
        server.stop()
    med = {arm: statistics.median(r) for arm, r in rates.items()}
    med_cpu = {arm: statistics.median(r) for arm, r in cpu_us.items()}
    result = {
        "events": a.events,
        "compare": a.compare,
        "rebuild_per_s": rates,
        "median_per_s": med,
        "cpu_us_per_event": cpu_us,
        "median_cpu_us_per_event": med_cpu,
        f"{new}_over_{base}": round(med[new] / med[base], 3),
        f"{new}_over_{base}_cpu": round(med_cpu[new] / med_cpu[base], 3),
        "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(
        f"rebuild of {a.events} events, median of {a.repeat}: {base} {med[base]:,.0f}/s "
        f"({med_cpu[base]} µs CPU/event), {new} {med[new]:,.0f}/s ({med_cpu[new]} µs CPU/event): "
        f"x{result[f'{new}_over_{base}']} rate, x{result[f'{new}_over_{base}_cpu']} CPU; "
        f"load {result['load_avg']}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
