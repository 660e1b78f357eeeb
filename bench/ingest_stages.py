"""Where the materializer's time goes, stage by stage, on realistic ~1 KB events.

Publishes ``--events`` events to an embedded server, then times each stage of ingest alone, in
one process: reading the log (hive's :class:`streams.LogReader`), decoding (``decode_batch``;
``decode_pydantic_us`` is :func:`streams.decode` alone on the same messages, the baseline),
projecting, and inserting (Arrow + DuckDB, with the checkpoint, as ``apply_batch`` does).
Decode and project are CPU time of this process, the others wall time.
Prints JSON (µs per event per stage, and events/s) and a human line.

usage: ``python bench/ingest_stages.py --events 50000 [--batch 1000] [--profile]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import orjson

import streams
from hive._bench_ingest import realistic_events
from hive._projections import decode_batch, project
from hive._store import _insert, open_store
from streams import DecodeError, decode


async def _publish(url: str, n: int) -> None:
    nc = await streams.connect(url, name="stages")
    js = nc.jetstream()
    await streams.ensure_stream(js)
    await streams.Publisher(js).publish_many(realistic_events(n))
    await nc.close()


async def _read(url: str, n: int, batch: int) -> list[list[streams.LogEntry]]:
    nc = await streams.connect(url, name="stages-read")
    reader = await streams.LogReader(nc).start()
    out: list[list[streams.LogEntry]] = []
    got = 0
    while got < n:
        b = await reader.fetch(batch, timeout=0.5)
        out.append(b)
        got += len(b)
    await reader.close()
    await nc.close()
    return out


def main() -> None:
    """Run the stages and print the JSON and the human line."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--profile", action="store_true", help="cProfile decode+project, print the top")
    a = ap.parse_args()
    server = streams.EmbeddedServer(http_port=None).start()
    try:
        asyncio.run(_publish(server.url, a.events))
        t = time.perf_counter()
        batches = asyncio.run(_read(server.url, a.events, a.batch))
        read_s = time.perf_counter() - t
    finally:
        server.stop()
    prof = cProfile.Profile() if a.profile else None
    # CPU time (process_time) for the pure-Python stages: steadier than wall time on a busy machine.
    t = time.process_time()
    for b in batches:
        for m in b:
            with contextlib.suppress(DecodeError):
                decode(m.data, m.subject)
    decode_pydantic_s = time.process_time() - t
    if prof:
        prof.enable()
    t = time.process_time()
    decoded = [decode_batch(b) for b in batches]
    decode_s = time.process_time() - t
    t = time.process_time()
    projected = [project(g, d, b[-1].seq) for (g, d), b in zip(decoded, batches, strict=True)]
    project_s = time.process_time() - t
    if prof:
        prof.disable()
    with tempfile.TemporaryDirectory() as tmp:
        con = open_store(Path(tmp) / "s.duckdb")
        cur = con.cursor()
        t = time.perf_counter()
        for rows in projected:
            cur.execute("BEGIN")
            _insert(cur, rows)
            cur.execute("INSERT OR REPLACE INTO checkpoint VALUES (?, ?)", [streams.STREAM, rows.last_seq])
            cur.execute("COMMIT")
        insert_s = time.perf_counter() - t
        con.close()
    n = a.events
    us = {
        k: round(v / n * 1e6, 2)
        for k, v in {"read": read_s, "decode": decode_s, "project": project_s, "insert": insert_s}.items()
    }
    result = {
        "events": n,
        "decode_pydantic_us": round(decode_pydantic_s / n * 1e6, 2),
        "batch": a.batch,
        "us_per_event": us,
        "total_us": round(sum(us.values()), 2),
        "per_s": {k: round(1e6 / v) if v else None for k, v in us.items()},
    }
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(
        " ".join(f"{k} {v} µs" for k, v in us.items()) + f" = {result['total_us']} µs/event", file=sys.stderr
    )
    if prof:
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
