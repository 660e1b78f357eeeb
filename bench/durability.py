"""The cost of durability: JetStream publish rates for the hive's four NATS set-ups, side by side.

Arms (each on a fresh store in a temporary directory, loopback, real ``nats-server`` processes):

* ``single/default``: one server, ``sync_interval`` default (fsync every 2 min);
* ``single/always``: one server, ``sync_interval: always`` (fsync before each ack);
* ``r3/default``: a 3-node cluster (``streams.EmbeddedCluster``), R3 stream, default sync;
* ``r3/always``: the same with ``sync_interval: always`` on every node.

Each arm publishes ``--events`` ExperimentFinished-sized events pipelined (``--window`` publishes
in flight, every ack awaited) and ``--serial-events`` one at a time (publish, await the ack,
next). Prints one JSON document on stdout and one human line per arm on stderr.

    .venv/bin/python bench/durability.py --events 10000 --serial-events 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from typing import Any

import streams

ARMS = [("single", "default"), ("single", "always"), ("r3", "default"), ("r3", "always")]
SUBJECT = "hive.traces.researcher.bench-1"


def _payload(i: int) -> bytes:
    ev = streams.ExperimentFinished(
        event_id=f"bench/run-{i}/finish",
        agent_id="bench-1",
        agent_type="researcher",
        task="branin/0",
        run_id=f"run-{i}",
        recipe={"x1": 1.5, "x2": 2.5},
        seed=i % 1000,
        budget=1.0,
        metrics={"value": float(i % 13)},
        objective=float(i % 13),
        cost_s=0.01,
        status="ok",
        success=False,
    )
    return streams.encode(ev)


async def _measure(url: str, events: int, serial_events: int, window: int) -> dict[str, Any]:
    nc = await streams.connect(url, name="bench-durability")
    try:
        js = nc.jetstream()
        await streams.ensure_stream(js)
        replicas = (await js.stream_info(streams.STREAM)).config.num_replicas
        payloads = [_payload(i) for i in range(events + serial_events)]
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(window)

        async def one(data: bytes) -> None:
            async with sem:
                await js.publish(SUBJECT, data, timeout=30)

        await asyncio.gather(*(one(p) for p in payloads[:events]))
        pipelined_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        for p in payloads[events:]:
            await js.publish(SUBJECT, p, timeout=30)
        serial_s = time.perf_counter() - t1
        last = (await js.stream_info(streams.STREAM)).state.last_seq
        assert last == events + serial_events, f"stream holds {last}, published {events + serial_events}"
        return {
            "replicas": replicas,
            "pipelined_msgs_per_s": round(events / pipelined_s),
            "serial_msgs_per_s": round(serial_events / serial_s) if serial_events else None,
            "serial_ack_ms": round(1000 * serial_s / serial_events, 3) if serial_events else None,
            "payload_bytes": len(payloads[0]),
        }
    finally:
        await nc.close()


def run_arm(kind: str, sync: str, events: int, serial_events: int, window: int) -> dict[str, Any]:
    """Start the arm's server(s), measure, stop them (by PID)."""
    srv: streams.EmbeddedServer | streams.EmbeddedCluster
    if kind == "r3":
        srv = streams.EmbeddedCluster(3, durability=sync)
    else:
        srv = streams.EmbeddedServer(durability=sync, http_port=None)
    srv.start()
    try:
        out = asyncio.run(_measure(srv.url, events, serial_events, window))
    finally:
        srv.stop()
    return {"arm": f"{kind}/{sync}", "nodes": 3 if kind == "r3" else 1, "sync": sync, **out}


def main(argv: list[str] | None = None) -> int:
    """Run every arm once and print the JSON result (stdout) and a human line per arm (stderr)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000, help="pipelined events per arm")
    ap.add_argument("--serial-events", type=int, default=2_000, help="one-at-a-time events per arm")
    ap.add_argument("--window", type=int, default=256, help="pipelined publishes in flight")
    ap.add_argument("--arms", default=",".join(f"{k}/{s}" for k, s in ARMS), help="comma-separated arms")
    args = ap.parse_args(argv)
    wanted = [tuple(a.split("/", 1)) for a in args.arms.split(",") if a]
    results = [run_arm(k, s, args.events, args.serial_events, args.window) for k, s in wanted]
    doc = {
        "bench": "durability",
        "events": args.events,
        "serial_events": args.serial_events,
        "window": args.window,
        "host": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    print(json.dumps(doc, indent=1))
    for r in results:
        print(
            f"{r['arm']:>15}: R{r['replicas']} pipelined {r['pipelined_msgs_per_s']:>7,} msg/s, "
            f"one at a time {r['serial_msgs_per_s']:>6,} msg/s ({r['serial_ack_ms']} ms per ack)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
