"""``hive bench ingest``: how fast events go from a publisher to queryable rows.

One run measures, against the same server:

1. ``raw_publish_per_s`` — the baseline: plain nats-py ``publish_async`` of the same-size
   payloads with ``Nats-Msg-Id``, no hive code, on a stream of its own;
2. ``hive_publish_per_s`` — hive's :class:`streams.Publisher` (encode + subject + publish_async);
3. ``end_to_end_per_s`` — events/s from the first publish until the last event is committed
   in DuckDB by a materializer running as its own process (as in production);
4. ``latency_ms`` p50/p99 — publish → queryable, from sampled events, polling the
   materializer's applied sequence every ~5 ms (so latencies carry up to ~5 ms of polling error);
5. ``rebuild_per_s`` — replay of the whole log from sequence 1 into a new file.

``ratio`` = end-to-end / raw publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

import streams


def realistic_events(n: int, seed: int = 0) -> list[streams.ExperimentFinished]:
    """``n`` realistic ``ExperimentFinished`` events of about 1 KB each, from 16 agents."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        agent = f"researcher-{i % 16}"
        recipe: dict[str, bool | int | float | str] = {
            "lr": rng.uniform(1e-4, 1e-1),
            "warmup_frac": rng.uniform(0, 0.3),
            "n_layer": rng.randint(1, 6),
            "n_embd": rng.choice([64, 128, 256]),
            "n_head": rng.choice([2, 4, 8]),
            "batch_size": 32,
            "block_size": 128,
            "weight_decay": rng.uniform(0, 0.2),
            "dropout": rng.uniform(0, 0.3),
            "activation": rng.choice(["gelu", "relu", "silu"]),
            "optimizer": "adamw",
            "grad_clip": rng.uniform(0.1, 2.0),
            "beta2": 0.99,
            "schedule": "cosine",
        }
        metrics = {
            "val_bpb": rng.uniform(1.5, 3.0),
            "train_loss_first": rng.uniform(4, 6),
            "train_loss_last": rng.uniform(1, 3),
            "tokens": 65536.0,
            "steps": 512.0,
            "tokens_per_s": rng.uniform(2e4, 9e4),
            "wall_s": rng.uniform(2, 20),
            "params": 210_000.0,
        }
        out.append(
            streams.ExperimentFinished(
                event_id=f"{agent}/run-{i}/finish",
                agent_id=agent,
                agent_type="researcher",
                task=f"charlm/{i % 8}",
                model_version=i // 10_000,
                run_id=f"run-{i}",
                parent_id=f"{agent}/run-{max(i - 16, 0)}/finish",
                recipe=recipe,
                seed=i % 1000,
                budget=65536.0,
                metrics=metrics,
                objective=metrics["val_bpb"],
                cost_s=metrics["wall_s"],
                status="ok",
                success=rng.random() < 0.3,
                proposer="model",
                error=None,
            )
        )
    return out


async def _raw_publish(url: str, payloads: list[bytes]) -> float:
    """Baseline: plain nats-py publish_async with msg ids to a stream of its own. Returns msg/s."""
    import nats
    from nats.js.api import StorageType, StreamConfig

    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name="RAWBENCH", subjects=["rawbench.>"], storage=StorageType.FILE, duplicate_window=120.0
        )
    )
    t0 = time.perf_counter()
    for i, p in enumerate(payloads):
        await js.publish_async(f"rawbench.a{i % 16}", p, headers={"Nats-Msg-Id": f"raw-{i}"})
    await js.publish_async_completed()
    rate = len(payloads) / (time.perf_counter() - t0)
    await js.delete_stream("RAWBENCH")
    await nc.close()
    return rate


async def _applied(nc: Any) -> int:
    reply = await nc.request(streams.STATUS_SUBJECT, b"{}", timeout=2)
    return int(orjson.loads(reply.data)["applied_seq"])


async def run_ingest_bench(n: int, *, url: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the whole benchmark and return its figures as a dict (see the module docstring)."""
    server = None if url else streams.EmbeddedServer(http_port=None).start()
    url = url or server.url  # type: ignore[union-attr]
    tmp = tempfile.TemporaryDirectory(prefix="hive-bench-")
    db = Path(tmp.name) / "bench.duckdb"
    proc: subprocess.Popen[bytes] | None = None
    try:
        events = realistic_events(n)
        payloads = [streams.encode(e) for e in events]
        raw = await _raw_publish(url, payloads)

        nc = await streams.connect(url, name="hive-bench")
        js = nc.jetstream()
        await streams.ensure_stream(js)
        base = (await js.stream_info(streams.STREAM)).state.last_seq
        env = {**os.environ, "HIVE_LOG_FORMAT": "json", "HIVE_LOG_LEVEL": "warning"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "hive", "materialize", "--nats", url, "--db", str(db)],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                await _applied(nc)
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("materializer did not come up") from None
                await asyncio.sleep(0.05)

        every = max(1, n // 400)
        sent_at: dict[int, float] = {}
        seen: list[tuple[float, int]] = []
        done = asyncio.Event()

        async def poll() -> None:
            while not done.is_set():
                with contextlib.suppress(Exception):
                    seen.append((time.perf_counter(), await _applied(nc) - base))
                    if seen[-1][1] >= n:
                        done.set()
                        return
                await asyncio.sleep(0.005)

        poller = asyncio.create_task(poll())
        pub = js.publish_async
        t0 = time.perf_counter()
        for i, e in enumerate(events):
            if i % every == 0:
                sent_at[i + 1] = time.perf_counter()
            await pub(streams.subject_for(e), streams.encode(e), headers={"Nats-Msg-Id": e.event_id})
        await js.publish_async_completed()
        t_pub = time.perf_counter() - t0
        await asyncio.wait_for(done.wait(), timeout=max(120, n / 1000))
        await poller
        t_e2e = seen[-1][0] - t0

        lat = []
        j = 0
        for k in sorted(sent_at):
            while j < len(seen) and seen[j][1] < k:
                j += 1
            if j < len(seen):
                lat.append((seen[j][0] - sent_at[k]) * 1000)
        await nc.close()

        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        proc = None
        from ._materializer import rebuild

        t1 = time.perf_counter()
        through = await rebuild(url, db)
        t_rebuild = time.perf_counter() - t1

        e2e = n / t_e2e
        lat.sort()
        return {
            "events": n,
            "event_bytes": round(statistics.mean(len(p) for p in payloads)),
            "raw_publish_per_s": round(raw),
            "hive_publish_per_s": round(n / t_pub),
            "end_to_end_per_s": round(e2e),
            "ratio": round(e2e / raw, 3),
            "latency_ms": {
                "p50": round(lat[len(lat) // 2], 1),
                "p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1),
                "samples": len(lat),
            },
            "rebuild_events": through,
            "rebuild_per_s": round(through / t_rebuild),
            "cpus": os.cpu_count(),
        }
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if server is not None:
            server.stop()
        tmp.cleanup()


def human_line(r: dict[str, Any]) -> str:
    """One line a person reads: each figure beside its goal (issue 12: first step / final)."""
    pub_ratio = r["hive_publish_per_s"] / r["raw_publish_per_s"] if r["raw_publish_per_s"] else 0.0
    return (
        f"{r['events']} events of ~{r['event_bytes']} B: raw nats-py publish {r['raw_publish_per_s']:,}/s; "
        f"hive publish {r['hive_publish_per_s']:,}/s = {pub_ratio:.2f}x raw (goal >= 0.8x); "
        f"end-to-end {r['end_to_end_per_s']:,}/s (goal >= 20,000/s) = {r['ratio']}x raw "
        f"(goal >= 0.5x, final 0.9x); latency p50 {r['latency_ms']['p50']} ms p99 "
        f"{r['latency_ms']['p99']} ms at full rate (goal p50 <= 100 ms at half the peak rate); "
        f"rebuild {r['rebuild_per_s']:,}/s (goal >= 50,000/s, final 100,000/s)"
    )
