"""Rebuild time against history size: does a rebuild stay linear, with bounded memory?

Grows one log (an embedded ``nats-server``) to each size in turn, publishing realistic ~1 KB
``ExperimentFinished`` events with hive's pipelined publisher (a bounded window of publishes in
flight, every PubAck checked) from pre-encoded payloads, each with its own ``event_id``. At each
size it runs ``hive rebuild --nats URL --db FILE`` into a fresh DuckDB file, as users run it (a
subprocess, reaped with ``wait4`` for its peak RSS), checks that the rebuilt file holds exactly
one row per event, and records seconds (``hive rebuild``'s own timing), events/s, peak RSS and
file size. Prints JSON and a human line per size, writes ``rebuild_scale.json`` and
``rebuild_scale.png`` (rebuild time and peak RSS against history size) into ``--out``.

``--memory-limits default,64MB`` rebuilds at each size once per DuckDB ``memory_limit``
(``HIVE_DUCKDB_MEMORY_LIMIT``; ``default``: unset), side by side: does a limit below the size of
the primary-key indexes still rebuild, and what does it cost? The plot shows the first limit.

usage: ``python bench/rebuild_scale.py [--sizes 100000,300000,1000000] [--max 10000000] [--out DIR]
[--memory-limits default,64MB]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import orjson

import streams
from hive._bench_ingest import realistic_events, rebuild_subprocess
from hive._store import MEMORY_LIMIT_ENV

POOL = 4096
"""Distinct realistic event bodies; event ``i`` takes body ``i % POOL`` with its own ids."""


def payloads(start: int, stop: int, pool: list[dict[str, Any]]) -> Iterator[tuple[str, bytes, str]]:
    """``(subject, payload, msg_id)`` of events ``start .. stop - 1``: realistic bodies (the
    pool's, 16 agents), each with its own event id, run id, parent and model version."""
    for i in range(start, stop):
        d = dict(pool[i % POOL])
        agent = d["agent_id"]
        eid = f"{agent}/run-{i}/finish"
        d["event_id"] = eid
        d["run_id"] = f"run-{i}"
        d["parent_id"] = f"{agent}/run-{max(i - 16, 0)}/finish"
        d["model_version"] = i // 10_000
        yield f"hive.traces.researcher.{agent}", orjson.dumps(d), eid


async def grow(url: str, start: int, stop: int, pool: list[dict[str, Any]]) -> float:
    """Publish events ``start .. stop - 1`` (every ack checked); returns events/s."""
    nc = await streams.connect(url, name="rebuild-scale")
    try:
        js = nc.jetstream()
        await streams.ensure_stream(js)
        acked = 0

        def count(_ack: Any) -> None:
            nonlocal acked
            acked += 1

        t = time.perf_counter()
        await streams.Publisher(js)._pipeline(payloads(start, stop, pool), count)
        rate = (stop - start) / (time.perf_counter() - t)
        if acked != stop - start:
            raise RuntimeError(f"{acked} of {stop - start} publishes acknowledged")
        return rate
    finally:
        await nc.close()


def rows_in(db: Path) -> int:
    """Experiments in a rebuilt file (read-only)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute("SELECT count(*) FROM experiments").fetchone()
        return int(row[0]) if row else 0
    finally:
        con.close()


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Rebuild seconds and peak RSS against history size, with the line through the origin and
    the smallest size's rate (what linear would be)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["events"] / 1e6 for r in results]
    secs = [r["seconds"] for r in results]
    rss = [r["peak_rss_mib"] for r in results]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(x, secs, "o-", label="hive rebuild, seconds")
    per_event = results[0]["seconds"] / results[0]["events"]
    ax.plot(
        [0, x[-1]],
        [0, per_event * results[-1]["events"]],
        "--",
        color="grey",
        label="linear at the first size's rate",
    )
    ax.set_xlabel("history size (million events, ~1 KB each)")
    ax.set_ylabel("rebuild time (s)")
    ax2 = ax.twinx()
    ax2.plot(x, rss, "s:", color="tab:red", label="peak RSS (MiB)")
    ax2.set_ylabel("peak RSS of the rebuild process (MiB)")
    ax2.set_ylim(0, max(rss) * 1.3)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left")
    ax.set_title("Rebuild time vs history size (hive rebuild, one process)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def run(sizes: list[int], out: Path, limits: list[str] | None = None) -> dict[str, Any]:
    """Grow the log through ``sizes``, rebuilding at each (once per memory limit); write the JSON
    and the plot."""
    limits = limits or ["default"]
    load_before = os.getloadavg()
    pool = [orjson.loads(streams.encode(e)) for e in realistic_events(POOL)]
    server = streams.EmbeddedServer(http_port=None).start()
    env = {**os.environ, "HIVE_LOG_FORMAT": "json", "HIVE_LOG_LEVEL": "warning"}
    results: list[dict[str, Any]] = []
    try:
        have = 0
        with tempfile.TemporaryDirectory(prefix="hive-rebuild-scale-") as tmp:
            for size in sizes:
                publish_rate = await grow(server.url, have, size, pool)
                have = size
                for limit in limits:
                    db = Path(tmp) / f"rebuilt-{size}.duckdb"
                    run_env = dict(env)
                    if limit != "default":
                        run_env[MEMORY_LIMIT_ENV] = limit
                    r = await rebuild_subprocess(server.url, db, run_env)
                    r["rows"] = rows_in(db)
                    if r["events"] != size or r["rows"] != size:
                        raise RuntimeError(
                            f"rebuild of {size} events: through seq {r['events']}, {r['rows']} rows"
                        )
                    r["memory_limit"] = limit
                    r["publish_per_s"] = round(publish_rate)
                    r["load_avg"] = round(os.getloadavg()[0], 2)
                    results.append(r)
                    for p in db.parent.glob(db.name + "*"):
                        p.unlink()
                    for p in db.parent.glob(db.stem + ".snapshot*"):
                        p.unlink()
                    print(human(r), file=sys.stderr, flush=True)
    finally:
        server.stop()
    first_limit = [r for r in results if r["memory_limit"] == limits[0]]
    first, last = first_limit[0], first_limit[-1]
    report = {
        "sizes": sizes,
        "results": results,
        "rate_largest_over_smallest": round(last["per_s"] / first["per_s"], 3) if first["per_s"] else None,
        "rss_largest_over_smallest": round(last["peak_rss_mib"] / first["peak_rss_mib"], 3),
        "cpus": os.cpu_count(),
        "load_avg": {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "rebuild_scale.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    plot(first_limit, out / "rebuild_scale.png")
    return report


def human(r: dict[str, Any]) -> str:
    """One line per size."""
    return (
        f"{r['events']:>10,} events: rebuild {r['seconds']:.1f} s = {r['per_s']:,}/s (goal >= 100,000/s, "
        f"first step 50,000/s), peak RSS {r['peak_rss_mib']:,.0f} MiB, "
        f"DuckDB {r['db_bytes'] / 2**20:,.0f} MiB, published at {r['publish_per_s']:,}/s, "
        f"load {r['load_avg']}, memory_limit {r.get('memory_limit', 'default')}"
    )


def main() -> None:
    """Parse the sizes, run, print the JSON on stdout (the human lines went to stderr)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,300000,1000000", help="comma-separated history sizes")
    ap.add_argument("--max", type=int, default=0, help="also 3M, 10M, ... up to this size (e.g. 10000000)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ingest")
    ap.add_argument("--memory-limits", default="default", help="comma-separated DuckDB memory limits")
    a = ap.parse_args()
    sizes = sorted({int(s) for s in a.sizes.split(",") if s})
    step = 3_000_000
    while a.max and step <= a.max:
        sizes.append(step)
        step = step * 10 // 3 if str(step).startswith("3") else step * 3
    if a.max and a.max not in sizes:
        sizes.append(a.max)
    sizes = sorted(set(sizes))
    limits = [x.strip() for x in a.memory_limits.split(",") if x.strip()]
    report = asyncio.run(run(sizes, a.out, limits))
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
