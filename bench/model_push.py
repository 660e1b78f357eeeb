"""Model distribution benchmark: publish a model once, measure until every agent holds it.

One run, one embedded nats-server:

* ``push_to_all_s``: from the start of publishing (object upload + signed pointer) until all N
  agents (each with its own NATS connection, watching the KV pointer) have verified the
  signature, downloaded the weights by pulling chunks, and checked size and sha256;
* ``pointer_to_all_s``: the same, counted from the pointer write (the upload excluded);
* ``fast_fetch_mb_s`` vs ``objectstore_get_mb_s``: one client reading the same object with the
  chunk pull fetch hive uses and with nats-py's ``ObjectStore.get()`` (the baseline).

The weights are random bytes of the given size (transport only: loading into torch is excluded).

usage: python bench/model_push.py [--agents 32] [--mb 10] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from typing import Any

import streams


async def agent(url: str, pinned: Any, ready: asyncio.Event, done: list[float]) -> None:
    """Watch the pointer; on a new one, verify and download, record the time."""
    nc = await streams.connect(url)
    store = await streams.ModelStore(nc).open()
    ready.set()
    updates = store.watch("policy")
    async for signed in updates:
        if signed is None:
            continue
        p = streams.accept_pointer(signed, pinned, 0)
        await store.fetch(p.weights, size=p.weights_size, sha256=p.weights_sha256)
        done.append(time.perf_counter())
        break
    await updates.aclose()
    await nc.close()


async def main() -> None:
    """Run the benchmark and print JSON (and a human line on stderr)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=32)
    ap.add_argument("--mb", type=float, default=10.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, streams.EmbeddedServer(http_port=None) as srv:
        priv, pub = streams.generate_keys(d)
        key, pinned = streams.load_private_key(priv), streams.load_public_key(pub)
        nc = await streams.connect(srv.url)
        store = await streams.ModelStore(nc).open(create=True)
        weights = os.urandom(int(args.mb * 1024 * 1024))
        done: list[float] = []
        readies = [asyncio.Event() for _ in range(args.agents)]
        tasks = [asyncio.create_task(agent(srv.url, pinned, r, done)) for r in readies]
        await asyncio.gather(*(r.wait() for r in readies))
        t0 = time.perf_counter()
        files = await store.put_version("policy", 1, weights, b"{}")
        t1 = time.perf_counter()
        await store.write_pointer(
            streams.ModelPointer(name="policy", serial=1, version=1, **files), key, None
        )
        await asyncio.wait_for(asyncio.gather(*tasks), 300)
        last = max(done)
        t = time.perf_counter()
        await store.fetch(files["weights"], size=files["weights_size"], sha256=files["weights_sha256"])
        fast = args.mb / (time.perf_counter() - t)
        t = time.perf_counter()
        res = await store.obs.get(files["weights"])
        slow = args.mb / (time.perf_counter() - t)
        assert res.data == weights
        await nc.close()
    out = {
        "agents": args.agents,
        "model_mb": args.mb,
        "upload_s": round(t1 - t0, 3),
        "push_to_all_s": round(last - t0, 3),
        "pointer_to_all_s": round(last - t1, 3),
        "fast_fetch_mb_s": round(fast, 1),
        "objectstore_get_mb_s": round(slow, 1),
        "speedup": round(fast / slow, 1),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(out, indent=2))
    if not args.json:
        print(
            f"{args.agents} agents, {args.mb:g} MB: every agent verified in {out['push_to_all_s']} s "
            f"({out['pointer_to_all_s']} s after the pointer); chunk fetch {out['fast_fetch_mb_s']} MB/s vs "
            f"ObjectStore.get {out['objectstore_get_mb_s']} MB/s",
            file=sys.stderr,
        )


if __name__ == "__main__":
    asyncio.run(main())
