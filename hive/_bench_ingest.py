"""``hive bench ingest``: how fast events go from a publisher to queryable rows (issue 12).

One run measures, against the same server, and prints each figure beside its goal:

1. ``raw_publish_per_s`` — the baseline: plain nats-py ``publish_async`` of ~1 KB payloads with
   ``Nats-Msg-Id``, no hive code, on a stream of its own, nothing else running;
2. ``hive_publish_alone_per_s`` — hive's public :meth:`streams.Publisher.publish_many` (encode,
   subject, bounded window of in-flight publishes, every PubAck checked), nothing else running:
   the figure the ``hive publish >= 0.8x raw`` goal compares. These two arms run last, alternated
   in halves (raw, hive, raw, hive) so that both see the same machine load.
   ``hive_publish_per_s`` is the same call while the materializer ingests (the end-to-end arm);
3. ``end_to_end_per_s`` — events/s from the first publish until the last event is committed
   in DuckDB by ``hive materialize`` running as its own process (as in production);
4. ``latency_ms`` p50/p99 — publish → queryable at full rate, from sampled events, polling the
   materializer's applied sequence every ~5 ms (latencies carry up to ~5 ms of polling error);
   ``paced`` — the same at half the measured end-to-end rate (publishes paced every 10 ms);
5. ``query_ms`` — ``SELECT * FROM best_per_task`` through ``hive query``'s live path
   (:func:`streams.remote_query` to the materializer's query service) while the end-to-end arm
   ingests at full rate; ``query_snapshot_ms`` — ``hive query --db``'s path on the snapshot
   file (open read-only, lock down, run with a deadline) in the same window; ``query_idle_ms``
   the live path once ingest is over (what ingest adds to a query);
6. ``materializer`` — its peak RSS over the whole run (``wait4``) and the DuckDB file's size;
7. ``rebuild_per_s`` — ``hive rebuild`` (a subprocess) replays the whole log into a new file,
   with its peak RSS;
8. ``best_per_task_ms`` — the ``best_per_task`` view over ``--query-rows`` experiments, built
   directly in DuckDB with realistic synthetic rows (not ingested), queried read-only and locked
   down as the query service does.

``ratio`` = end-to-end / raw publish; ``goals`` holds every goal with its figure and verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

import streams

BEST_SQL = "SELECT * FROM best_per_task"
"""The query the query-latency arms run (the hive's most asked question)."""


def realistic_events(n: int, seed: int = 0, *, start: int = 0) -> list[streams.ExperimentFinished]:
    """``n`` realistic ``ExperimentFinished`` events of about 1 KB each, from 16 agents; their
    run numbers (and so their event ids) are ``start .. start + n - 1``."""
    rng = random.Random(seed)
    out = []
    for i in range(start, start + n):
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


async def _publish_arms(
    url: str, pool: list[bytes], events: list[streams.ExperimentFinished]
) -> tuple[float, float]:
    """The two publish-only arms, alternated in halves (raw, hive, raw, hive) so that both see the
    same machine load: plain nats-py ``publish_async`` of payloads cycled from ``pool`` with msg
    ids to a stream of its own (no hive code), and hive's :meth:`streams.Publisher.publish_many`
    of ``events``. Returns (raw msg/s, hive msg/s), each over ``len(events)`` messages."""
    import nats
    from nats.js.api import StorageType, StreamConfig

    n, k = len(events), len(pool)
    nc = await nats.connect(url)
    hnc = await streams.connect(url, name="hive-bench-publish")
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(
                name="RAWBENCH", subjects=["rawbench.>"], storage=StorageType.FILE, duplicate_window=120.0
            )
        )
        hive_pub = streams.Publisher(hnc.jetstream())
        t_raw = t_hive = 0.0
        for lo, hi in ((0, n // 2), (n // 2, n)):
            t = time.perf_counter()
            for i in range(lo, hi):
                await js.publish_async(
                    f"rawbench.a{i % 16}", pool[i % k], headers={"Nats-Msg-Id": f"raw-{i}"}
                )
            await js.publish_async_completed()
            t_raw += time.perf_counter() - t
            chunk = events[lo:hi]
            t = time.perf_counter()
            await hive_pub.publish_many(chunk)
            t_hive += time.perf_counter() - t
        await js.delete_stream("RAWBENCH")
    finally:
        await nc.close()
        await hnc.close()
    return n / t_raw, n / t_hive


async def _applied(nc: Any) -> int:
    reply = await nc.request(streams.STATUS_SUBJECT, b"{}", timeout=2)
    return int(orjson.loads(reply.data)["applied_seq"])


def _pcts(values_ms: list[float]) -> dict[str, Any]:
    """``{"p50", "p99", "samples"}`` of a list of milliseconds (None when empty)."""
    v = sorted(values_ms)
    if not v:
        return {"p50": None, "p99": None, "samples": 0}
    return {
        "p50": round(v[len(v) // 2], 2),
        "p99": round(v[min(len(v) - 1, int(len(v) * 0.99))], 2),
        "samples": len(v),
    }


def _latencies(sent_at: dict[int, float], seen: list[tuple[float, int]]) -> list[float]:
    """Publish → queryable in ms: for each sampled sequence, the first poll that saw it applied."""
    lat = []
    j = 0
    for k in sorted(sent_at):
        while j < len(seen) and seen[j][1] < k:
            j += 1
        if j < len(seen):
            lat.append((seen[j][0] - sent_at[k]) * 1000)
    return lat


def _peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident set so far (``VmHWM``), in MiB; None where unreadable."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


async def reap(proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Wait for ``proc`` to exit (at most ``timeout`` s, then kill it) and return its peak RSS in
    MiB over its whole life, from ``wait4``'s resource usage of exactly that child."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return round(usage.ru_maxrss / 1024, 1)  # KiB on Linux
        if time.monotonic() > deadline:
            proc.kill()
            deadline = time.monotonic() + 10
        await asyncio.sleep(0.05)


def _file_bytes(path: Path) -> int:
    """Size of a DuckDB file plus its WAL, if any."""
    from ._store import wal_path

    return sum(p.stat().st_size for p in (path, wal_path(path)) if p.exists())


def snapshot_query_ms(path: Path, sql: str = BEST_SQL) -> float | None:
    """``hive query --db``'s path on a snapshot file: open read-only, lock down, run with a
    deadline, close. Milliseconds for the whole, or None while the file does not exist yet."""
    from ._lockdown import lock_down
    from ._query import run_with_deadline
    from ._store import connect_db

    if not path.exists():
        return None
    t = time.perf_counter()
    con = connect_db(path, read_only=True)
    try:
        lock_down(con)
        run_with_deadline(con, sql, timeout_s=10, max_rows=10_000)
    finally:
        con.close()
    return (time.perf_counter() - t) * 1000


def best_per_task_latency(rows: int, *, repeat: int = 15) -> dict[str, Any]:
    """``best_per_task`` over ``rows`` experiments: the table is built directly in DuckDB from
    synthetic rows shaped like :func:`realistic_events` (8 tasks, 16 agents, 14-knob recipes and
    8 metrics as JSON), then queried ``repeat`` times (after one warm-up) on a read-only,
    locked-down connection with :func:`hive.run_read_only` as the query service runs it."""
    from ._lockdown import lock_down
    from ._query import run_with_deadline
    from ._store import connect_db, open_store

    with tempfile.TemporaryDirectory(prefix="hive-bench-bpt-") as tmp:
        path = Path(tmp) / "bpt.duckdb"
        con = open_store(path)
        con.execute("SET enable_progress_bar = false")
        t = time.perf_counter()
        con.execute(
            """
            INSERT INTO experiments BY NAME
            SELECT 'researcher-' || (i % 16) || '/run-' || i || '/finish' AS event_id, i + 1 AS seq,
                   'researcher-' || (i % 16) || '/run-' || i AS run_key,
                   'researcher-' || (i % 16) AS agent_id,
                   'researcher' AS agent_type, 'charlm/' || (i % 8) AS task, i // 10000 AS model_version,
                   'run-' || i AS run_id,
                   'researcher-' || (i % 16) || '/run-' || greatest(i - 16, 0) || '/finish' AS parent_id,
                   json_object('lr', random() * 0.1, 'warmup_frac', random() * 0.3,
                               'n_layer', 1 + (i % 6), 'n_embd', 64 << (i % 3), 'n_head', 2 << (i % 3),
                               'batch_size', 32, 'block_size', 128, 'weight_decay', random() * 0.2,
                               'dropout', random() * 0.3, 'activation', ['gelu', 'relu', 'silu'][1 + i % 3],
                               'optimizer', 'adamw', 'grad_clip', 0.1 + random() * 1.9, 'beta2', 0.99,
                               'schedule', 'cosine') AS recipe,
                   i % 1000 AS seed, 65536.0 AS budget,
                   json_object('val_bpb', 1.5 + random() * 1.5, 'train_loss_first', 4 + random() * 2,
                               'train_loss_last', 1 + random() * 2, 'tokens', 65536.0, 'steps', 512.0,
                               'tokens_per_s', 2e4 + random() * 7e4, 'wall_s', 2 + random() * 18,
                               'params', 210000.0) AS metrics,
                   1.5 + random() * 1.5 AS objective, 2 + random() * 18 AS cost_s, 'ok' AS status,
                   random() < 0.3 AS success, 'model' AS proposer,
                   TIMESTAMPTZ '2026-01-01 00:00:00+00' + to_microseconds(i * 1000) AS finished_at
            FROM range(?) t(i)
            """,
            [rows],
        )
        build_s = time.perf_counter() - t
        con.close()
        con = connect_db(path, read_only=True)
        try:
            lock_down(con)
            times = []
            for k in range(repeat + 1):
                t = time.perf_counter()
                r = run_with_deadline(con, BEST_SQL, timeout_s=30, max_rows=10_000)
                if k:
                    times.append((time.perf_counter() - t) * 1000)
        finally:
            con.close()
        size = _file_bytes(path)
    return {
        "rows": rows,
        **_pcts(times),
        "tasks": len(r.rows),
        "built": "synthetic rows inserted directly in DuckDB (not ingested through the log)",
        "build_s": round(build_s, 2),
        "db_bytes": size,
    }


_REBUILT = re.compile(r"through seq (\d+) in ([0-9.]+)s")


async def rebuild_subprocess(url: str, db: Path, env: dict[str, str]) -> dict[str, Any]:
    """``hive rebuild`` as users run it, in its own process: seconds (its own timing, without
    the interpreter's start), events, events/s, peak RSS, file size."""
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hive", "rebuild", "--nats", url, "--db", str(db)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    rss = await reap(proc, timeout=24 * 3600)
    wall = time.perf_counter() - t
    out = proc.stdout.read().decode() if proc.stdout else ""
    m = _REBUILT.search(out)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"hive rebuild failed (exit {proc.returncode}): {out.strip()[-500:]}")
    seq, secs = int(m.group(1)), float(m.group(2))
    return {
        "events": seq,
        "seconds": secs,
        "wall_s": round(wall, 2),
        "per_s": round(seq / secs) if secs else 0,
        "peak_rss_mib": rss,
        "db_bytes": _file_bytes(db),
    }


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"[bench ingest] {text}", file=sys.stderr, flush=True)


async def paced_arm(
    nc: Any, pub: streams.Publisher, events: list[streams.ExperimentFinished], rate: float, base: int
) -> dict[str, Any]:
    """Publish ``events`` at ``rate``/s (a burst every 10 ms, acks checked) while polling the
    applied sequence; publish → queryable for the first event of every burst."""
    sent_at: dict[int, float] = {}
    seen: list[tuple[float, int]] = []
    last_seq = 0
    done = asyncio.Event()

    async def poll() -> None:
        while True:
            with contextlib.suppress(Exception):
                seen.append((time.perf_counter(), await _applied(nc)))
                if done.is_set() and seen[-1][1] >= last_seq:
                    return
            await asyncio.sleep(0.005)

    poller = asyncio.create_task(poll())
    t0 = time.perf_counter()
    sent = 0
    while sent < len(events):
        due = min(len(events), int((time.perf_counter() - t0) * rate) + 1) - sent
        if due <= 0:
            await asyncio.sleep(0.01)
            continue
        at = time.perf_counter()
        acks = await pub.publish_acked(events[sent : sent + due])
        sent_at[acks[0].seq] = at
        last_seq = acks[-1].seq
        sent += due
    achieved = sent / (time.perf_counter() - t0)
    done.set()
    await asyncio.wait_for(poller, timeout=120)
    del base
    return {
        "target_per_s": round(rate),
        "achieved_per_s": round(achieved),
        "events": sent,
        "latency_ms": _pcts(_latencies(sent_at, seen)),
    }


async def run_ingest_bench(
    n: int,
    *,
    url: str | None = None,
    progress: bool = True,
    paced_seconds: float = 10.0,
    query_rows: int = 1_000_000,
) -> dict[str, Any]:
    """Run the whole benchmark and return its figures as a dict (see the module docstring).

    ``paced_seconds``: how long the half-rate latency arm publishes; ``query_rows``: the size of
    the ``best_per_task`` table (0 skips that arm).
    """
    load_before = os.getloadavg()
    server = None if url else streams.EmbeddedServer(http_port=None).start()
    url = url or server.url  # type: ignore[union-attr]
    tmp = tempfile.TemporaryDirectory(prefix="hive-bench-")
    db = Path(tmp.name) / "bench.duckdb"
    snap = Path(tmp.name) / "bench.snapshot.duckdb"
    proc: subprocess.Popen[bytes] | None = None
    try:
        _say(progress, f"making {n:,} events")
        events = realistic_events(n)
        pool = [streams.encode(e) for e in events[: min(n, 50_000)]]
        event_bytes = round(statistics.mean(len(p) for p in pool))
        nc = await streams.connect(url, name="hive-bench")
        js = nc.jetstream()
        await streams.ensure_stream(js)
        pub = streams.Publisher(js)
        base = (await js.stream_info(streams.STREAM)).state.last_seq
        env = {**os.environ, "HIVE_LOG_FORMAT": "json", "HIVE_LOG_LEVEL": "warning"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "hive", "materialize", "--nats", url, "--db", str(db)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # its exit line would land in the JSON on stdout
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

        _say(progress, "end to end at full rate (hive Publisher), with queries")
        every = max(1, n // 400)
        sent_at: dict[int, float] = {}
        seen: list[tuple[float, int]] = []
        done = asyncio.Event()
        query_live: list[float] = []
        query_snap: list[float] = []

        async def poll() -> None:
            while not done.is_set():
                with contextlib.suppress(Exception):
                    seen.append((time.perf_counter(), await _applied(nc) - base))
                    if seen[-1][1] >= n:
                        done.set()
                        return
                await asyncio.sleep(0.005)

        async def query() -> None:
            """``hive query``'s live path and its ``--db`` snapshot path, in turn, every ~50 ms."""
            k = 0
            while not done.is_set():
                k += 1
                with contextlib.suppress(Exception):
                    if k % 2:
                        t = time.perf_counter()
                        await streams.remote_query(nc, BEST_SQL, timeout_s=10)
                        if not done.is_set():
                            query_live.append((time.perf_counter() - t) * 1000)
                    else:
                        ms = await asyncio.to_thread(snapshot_query_ms, snap)
                        if ms is not None and not done.is_set():
                            query_snap.append(ms)
                await asyncio.sleep(0.05)

        def stamped() -> Iterator[streams.ExperimentFinished]:
            for i, e in enumerate(events):
                if i % every == 0:
                    sent_at[i + 1] = time.perf_counter()
                yield e

        poller = asyncio.create_task(poll())
        querier = asyncio.create_task(query())
        t0 = time.perf_counter()
        await pub.publish_many(stamped())
        t_pub = time.perf_counter() - t0
        await asyncio.wait_for(done.wait(), timeout=max(120, n / 1000))
        await poller
        await querier
        t_e2e = seen[-1][0] - t0
        lat = _latencies(sent_at, seen)
        e2e = n / t_e2e

        idle: list[float] = []
        for _ in range(20):  # the same query with the materializer idle: what ingest adds to it
            with contextlib.suppress(Exception):
                t = time.perf_counter()
                await streams.remote_query(nc, BEST_SQL, timeout_s=10)
                idle.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(0.02)

        _say(progress, f"paced at half the end-to-end rate ({e2e / 2:,.0f}/s) for {paced_seconds:g} s")
        m = min(n, max(200, int(e2e / 2 * paced_seconds)))
        paced = await paced_arm(nc, pub, realistic_events(m, seed=1, start=n), e2e / 2, base)
        await nc.close()

        hwm_before_stop = _peak_rss_mib(proc.pid)
        proc.send_signal(signal.SIGTERM)
        mat_rss = await reap(proc, timeout=60)
        proc = None
        materializer = {
            "peak_rss_mib": mat_rss,
            "peak_rss_mib_while_ingesting": hwm_before_stop,
            "db_bytes": _file_bytes(db),
        }

        _say(progress, "rebuild (hive rebuild, its own process)")
        rb = await rebuild_subprocess(url, Path(tmp.name) / "rebuilt.duckdb", env)

        _say(progress, "raw nats-py publish and hive Publisher alone, alternated")
        alone_events = [
            e.model_copy(update={"event_id": f"alone/{e.event_id}", "run_id": f"alone-{e.run_id}"})
            for e in events
        ]
        events = []  # the copies keep what they share with the originals
        raw, alone = await _publish_arms(url, pool, alone_events)
        del alone_events, pool

        bpt = None
        if query_rows:
            _say(progress, f"best_per_task over {query_rows:,} experiments")
            bpt = await asyncio.to_thread(best_per_task_latency, query_rows)

        result: dict[str, Any] = {
            "events": n,
            "event_bytes": event_bytes,
            "raw_publish_per_s": round(raw),
            "hive_publish_per_s": round(n / t_pub),
            "end_to_end_per_s": round(e2e),
            "ratio": round(e2e / raw, 3),
            "latency_ms": {k: round(v, 1) if v is not None else v for k, v in _pcts(lat).items()},
            "rebuild_events": rb["events"],
            "rebuild_per_s": rb["per_s"],
            "cpus": os.cpu_count(),
            "hive_publish_alone_per_s": round(alone),
            "hive_publish_ratio": round(alone / raw, 3),
            "paced": paced,
            "query_ms": {**_pcts(query_live), "path": "hive query --nats (remote_query to the live service)"},
            "query_idle_ms": {**_pcts(idle), "path": "hive query --nats, the materializer idle"},
            "query_snapshot_ms": {
                **_pcts(query_snap),
                "path": "hive query --db on the snapshot (open read-only, lock down, run)",
            },
            "best_per_task_ms": bpt,
            "materializer": materializer,
            "rebuild": rb,
            "load_avg": {
                "before": [round(x, 2) for x in load_before],
                "after": [round(x, 2) for x in os.getloadavg()],
            },
        }
        result["goals"] = goals(result)
        return result
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if server is not None:
            server.stop()
        tmp.cleanup()


def goals(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every goal of issue 12 with its measured figure, the goal (and first step) and verdicts."""

    def at_least(fig: float | None, goal: float, first: float | None = None, **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"figure": fig, "goal": f">= {goal:g}", "met": fig is not None and fig >= goal}
        if first is not None:
            out["first_step"] = f">= {first:g}"
            out["first_step_met"] = fig is not None and fig >= first
        return {**out, **extra}

    def at_most(fig: float | None, goal: float, **extra: Any) -> dict[str, Any]:
        return {"figure": fig, "goal": f"<= {goal:g}", "met": fig is not None and fig <= goal, **extra}

    bpt = r.get("best_per_task_ms")
    return {
        "end_to_end_ratio": at_least(r["ratio"], 0.9, 0.5),
        "end_to_end_per_s": at_least(r["end_to_end_per_s"], 20_000, 20_000),
        "rebuild_per_s": at_least(r["rebuild_per_s"], 100_000, 50_000),
        "hive_publish_ratio": at_least(r["hive_publish_ratio"], 0.8),
        "paced_latency_p50_ms": at_most(
            r["paced"]["latency_ms"]["p50"], 100, at_per_s=r["paced"]["achieved_per_s"]
        ),
        "query_p50_ms": at_most(r["query_ms"]["p50"], 5),
        "best_per_task_p50_ms": at_most(bpt["p50"] if bpt else None, 50, rows=bpt["rows"] if bpt else 0),
    }


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v < 100:
        return f"{v:g}"
    return f"{v:,.0f}" if isinstance(v, int | float) else str(v)


def human_line(r: dict[str, Any]) -> str:
    """What a person reads: one line of rates, then each goal's figure beside its goal."""
    mat = r["materializer"]
    head = (
        f"{r['events']:,} events of ~{r['event_bytes']} B: raw nats-py publish {r['raw_publish_per_s']:,}/s; "
        f"hive Publisher alone {r['hive_publish_alone_per_s']:,}/s, while ingesting "
        f"{r['hive_publish_per_s']:,}/s; end to end {r['end_to_end_per_s']:,}/s; latency at full rate "
        f"p50 {r['latency_ms']['p50']} / p99 {r['latency_ms']['p99']} ms; rebuild {r['rebuild_per_s']:,}/s "
        f"(peak RSS {r['rebuild']['peak_rss_mib']} MiB); materializer peak RSS {mat['peak_rss_mib']} MiB, "
        f"DuckDB {mat['db_bytes'] / 2**20:.1f} MiB; query p50 {r['query_ms']['p50']} ms while ingesting, "
        f"{r['query_idle_ms']['p50']} ms idle; load {r['load_avg']['before'][0]} -> "
        f"{r['load_avg']['after'][0]}"
    )
    labels = {
        "end_to_end_ratio": "end to end / raw publish",
        "end_to_end_per_s": "end to end, events/s",
        "rebuild_per_s": "rebuild, events/s",
        "hive_publish_ratio": "hive publish / raw publish",
        "paced_latency_p50_ms": "p50 publish->queryable at half rate, ms",
        "query_p50_ms": "query p50 while ingesting, ms",
        "best_per_task_p50_ms": "best_per_task p50, ms",
    }
    lines = [head, f"  {'goal':<42} {'figure':>10}  {'goal':>10}  {'first step':>11}  met"]
    for key, g in r["goals"].items():
        note = ""
        if key == "paced_latency_p50_ms":
            note = f" (at {g['at_per_s']:,}/s)"
        elif key == "best_per_task_p50_ms":
            note = f" ({g['rows']:,} rows)"
        met = "yes" if g["met"] else ("first step" if g.get("first_step_met") else "no")
        lines.append(
            f"  {labels[key]:<42} {_fmt(g['figure']):>10}  {g['goal']:>10}  "
            f"{g.get('first_step', ''):>11}  {met}{note}"
        )
    return "\n".join(lines)
