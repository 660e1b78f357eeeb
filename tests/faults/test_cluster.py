"""One node of a 3-node JetStream cluster killed under load: nothing acked is lost, nothing applied twice.

A real :class:`streams.EmbeddedCluster` (three ``nats-server`` processes on loopback, R3 ``HIVE``
stream), an :class:`AckedLoad` publisher and a live ``hive materialize`` subprocess, both given the
cluster's URL list. Nodes are ``kill -9``-ed (the stream leader, read from ``stream_info``, at
least once) while the load keeps publishing, then restarted; at quiescence the Jepsen-style
checker compares acked ⊆ stored ⊆ applied.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import streams
from tests.conftest import Proc, wait_for
from tests.faults.checker import AckedLoad, applied_state, check, read_stream


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[streams.EmbeddedCluster]:
    """A fresh 3-node JetStream cluster on loopback, stopped by PID at teardown."""
    c = streams.EmbeddedCluster(3, store_dir=tmp_path / "nats", log_dir=tmp_path)
    c.start(timeout=90)
    try:
        yield c
    finally:
        c.stop()


async def _leader(nc: Any) -> str:
    """The server name of the HIVE stream's current leader (retried through an election)."""

    async def get() -> str | None:
        info = await nc.jetstream().stream_info(streams.STREAM)
        return info.cluster.leader if info.cluster else None

    return str(await wait_for(get, timeout=60, every=0.3, what="a HIVE stream leader"))


async def _applied_seq(nc: Any) -> int:
    reply = await nc.request(streams.STATUS_SUBJECT, b"{}", timeout=3)
    return int(orjson.loads(reply.data)["applied_seq"])


async def _run_campaign(
    cluster: streams.EmbeddedCluster,
    spawn: Callable[..., Proc],
    db: Path,
    plan: list[tuple[str, float]],
) -> None:
    """Load + materializer on the cluster; ``plan`` is a list of (action, seconds of load after it)
    where action is ``kill-leader``, ``kill-follower`` or ``restart`` (every killed node)."""
    nc = await streams.connect(cluster.url, name="cluster-test")
    try:
        js = nc.jetstream()
        await streams.ensure_stream(js)
        assert (await js.stream_info(streams.STREAM)).config.num_replicas == 3
        mat = spawn("materialize", "--nats", cluster.url, "--db", str(db))
        load = AckedLoad(cluster.url, agent="cluster-load").start()
        await wait_for(lambda: len(load.acked) >= 200, timeout=60, what="the load to get going")
        # the faults start once the materializer is past its start-up and ingesting
        await wait_for(lambda: _applied_seq(nc), timeout=90, every=0.5, what="the materializer to ingest")
        killed: list[int] = []
        for action, seconds in plan:
            if action == "restart":
                for i in killed:
                    await asyncio.to_thread(cluster.restart, i, 90)
                killed.clear()
            else:
                leader = cluster.node_named(await _leader(nc))
                victim = leader if action == "kill-leader" else (leader + 1) % 3
                before = len(load.acked)
                cluster.kill(victim)
                killed.append(victim)
                # the load rides over the kill: more events acked by the surviving majority
                await wait_for(
                    lambda b=before: len(load.acked) >= b + 100,  # type: ignore[misc]
                    timeout=60,
                    what=f"acks after {action} (node {victim + 1})",
                )
            await asyncio.sleep(seconds)
        for i in killed:
            await asyncio.to_thread(cluster.restart, i, 90)
        acked = await load.stop()
        assert mat.p.poll() is None, f"materializer died:\n{mat.output()[-3000:]}"
        last = (await js.stream_info(streams.STREAM)).state.last_seq
        await wait_for(
            lambda: _applied_seq_ge(nc, last), timeout=90, every=0.5, what=f"materializer at seq {last}"
        )
        rc = mat.stop(30)
        assert rc == 0, f"materializer exit {rc}:\n{mat.output()[-3000:]}"
        stored = await read_stream(cluster.url)
        verdict = check(acked, stored, applied_state(db))
        print(f"cluster campaign {plan}: {verdict.summary()}")
        verdict.assert_ok()
        assert verdict.acked >= 300
    finally:
        await nc.close()


async def _applied_seq_ge(nc: Any, last: int) -> bool:
    return await _applied_seq(nc) >= last


async def test_stream_is_r3_on_a_cluster_and_r1_on_one_server(
    cluster: streams.EmbeddedCluster, nats_server: streams.EmbeddedServer
) -> None:
    """ensure_stream gives HIVE three replicas on a 3-node cluster (and the claims KV buckets, the
    model Object Store and the pointer KV too) and one on a single server."""
    nc = await streams.connect(cluster.url)
    try:
        assert streams.cluster_size(nc) == 3
        await streams.ensure_stream(nc.jetstream())
        info = await nc.jetstream().stream_info(streams.STREAM)
        assert info.config.num_replicas == 3 and info.cluster is not None
        assert len(info.cluster.replicas or []) == 2  # the two followers
        await streams.ensure_agent_buckets(nc.jetstream())  # the claims KV buckets: R3 as well
        for bucket in (streams.IDENTITY_CLAIMS_BUCKET, streams.RUN_CLAIMS_BUCKET):
            kv = await nc.jetstream().stream_info(f"KV_{bucket}")
            assert kv.config.num_replicas == 3, bucket
        await streams.ModelStore(nc).open(create=True)  # the model artifacts and pointer: R3 too
        for stream in (f"OBJ_{streams.MODEL_BUCKET}", f"KV_{streams.POINTER_BUCKET}"):
            assert (await nc.jetstream().stream_info(stream)).config.num_replicas == 3, stream
    finally:
        await nc.close()
    one = await streams.connect(nats_server.url)
    try:
        js = one.jetstream()
        await streams.ensure_stream(js)
        assert (await js.stream_info(streams.STREAM)).config.num_replicas == 1
    finally:
        await one.close()


async def test_leader_kill_under_load_loses_nothing(
    cluster: streams.EmbeddedCluster, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """kill -9 of the HIVE stream leader while an acked load publishes and a live materializer
    ingests (both on the URL list): the load and the materializer ride it out; after the node's
    restart nothing acked is lost, nothing applied twice, the checkpoint agrees."""
    t0 = time.monotonic()
    await _run_campaign(cluster, spawn, tmp_path / "hive.duckdb", [("kill-leader", 2.0)])
    print(f"leader-kill campaign took {time.monotonic() - t0:.1f}s")


@pytest.mark.faults_full
async def test_repeated_node_kills_and_restarts_lose_nothing(
    cluster: streams.EmbeddedCluster, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """Several kills under load: a follower, the leader, restarts in between and a second leader
    kill after the restart: nothing acked is lost, nothing applied twice, the checkpoint agrees."""
    plan = [
        ("kill-follower", 2.0),
        ("restart", 2.0),
        ("kill-leader", 2.0),
        ("restart", 2.0),
        ("kill-leader", 2.0),
        ("restart", 1.0),
        ("kill-follower", 2.0),
    ]
    await _run_campaign(cluster, spawn, tmp_path / "hive.duckdb", plan)


@pytest.mark.faults_full  # a whole swarm start and stop: ~1-2 min on a loaded 2-core machine
async def test_hive_up_cluster_runs_three_nodes_with_r3_and_sync_always(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """`hive up --cluster 3 --sync always` runs three nats-server processes (in up.pids), writes
    the URL list to DATA/nats.url, provisions HIVE as R3, every node fsyncs always (/varz), an
    agent's traces reach DuckDB, and stopping it stops every node."""
    import urllib.request

    from tests.conftest import db_rows, pid_alive

    data = tmp_path / "data"
    up = spawn(
        "up", "--cluster", "3", "--sync", "always", "--data", str(data), "--agents", "1",
        "--types", "researcher", "--task", "sleep/0", "--no-distill", "--duration", "0",
        "--port", "0", "--http-port", "0",
    )  # fmt: skip
    url_file = data / "nats.url"
    await wait_for(url_file.exists, timeout=90, what=f"DATA/nats.url\n{up.output()[-2000:]}")
    url = url_file.read_text().strip()
    assert len(url.split(",")) == 3, url
    pids_file = data / "up.pids"
    await wait_for(lambda: pids_file.exists() and b"researcher" in pids_file.read_bytes(), timeout=60)
    pids = orjson.loads(pids_file.read_bytes())
    nodes = [pids[f"nats-server-{i}"] for i in (1, 2, 3)]
    nc = await streams.connect(url)
    try:
        info = await wait_for(
            lambda: nc.jetstream().stream_info(streams.STREAM), timeout=60, what="the HIVE stream"
        )
        assert info.config.num_replicas == 3
        assert len(sorted((data / "logs").glob("nats-*.log"))) == 3
        await wait_for(
            lambda: db_rows(data / "hive.snapshot.duckdb", "SELECT count(*) FROM experiments")[0][0] > 0,
            timeout=90,
            what="a trace in the snapshot",
        )
    finally:
        await nc.close()
    monitors = [
        ln for ln in (data / "logs" / "nats-1.log").read_text().splitlines() if "monitor" in ln.lower()
    ]
    assert monitors, "node 1 logs its monitoring listener"
    port = monitors[0].rsplit(":", 1)[1].strip()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=5) as r:
        assert orjson.loads(r.read())["jetstream"]["config"]["sync_always"] is True
    assert up.stop(60) == 0, up.output()[-3000:]
    assert not any(pid_alive(p) for p in nodes), "every node stopped with hive up"
