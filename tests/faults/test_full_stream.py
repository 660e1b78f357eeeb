"""Full and missing streams: every publish path surfaces the stream's refusal promptly.

A stream at its limits (``max_msgs``/``max_bytes`` with ``discard=new``) answers each publish
with a JetStream error; a subject no stream stores answers "no responders". Both must reach the
publisher as an exception (``StreamFullError`` / ``NoStreamError``), never as a normal return or
a hang, and ``hive publish`` must say "stream full" in one line and exit non-zero.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import DiscardPolicy

import streams

from ..conftest import run_hive


def _event(i: int, *, note: str = "") -> streams.ExperimentFinished:
    return streams.ExperimentFinished(
        event_id=f"full-test/run-{i}/finish",
        agent_id="full-test",
        agent_type="researcher",
        task="branin/0",
        run_id=f"run-{i}",
        recipe={"x1": 0.1 * i, "note": note},
        seed=i,
        budget=1.0,
        metrics={"value": float(i)},
        objective=float(i),
        cost_s=0.01,
        status="ok",
    )


async def _limit_stream(js: Any, **limits: Any) -> None:
    """Give the HIVE stream tiny limits with ``discard=new`` (the server refuses, not evicts)."""
    await streams.ensure_stream(js)
    cfg = (await js.stream_info(streams.STREAM)).config
    for k, v in limits.items():
        setattr(cfg, k, v)
    cfg.discard = DiscardPolicy.NEW
    await js.update_stream(cfg)


async def test_every_publish_path_raises_without_a_stream(nats_server: streams.EmbeddedServer) -> None:
    """On a server with no HIVE stream, publish, publish_many, publish_acked and publish_raw each
    raise NoStreamError naming the subject, promptly, instead of returning normally."""
    client = await streams.connect(nats_server.url, name="no-stream")
    try:
        pub = streams.Publisher(client.jetstream())
        t0 = time.monotonic()
        with pytest.raises(streams.NoStreamError, match=r"hive\.traces\.researcher\.full-test"):
            await pub.publish_many([_event(i) for i in range(5)])
        with pytest.raises(streams.NoStreamError):
            await pub.publish_acked([_event(i) for i in range(5)])
        with pytest.raises(streams.NoStreamError):
            await pub.publish(_event(0), timeout=5)
        with pytest.raises(streams.NoStreamError, match=r"hive\.traces\.x\.y"):
            await pub.publish_raw("hive.traces.x.y", b"{}", msg_id="raw-1")
        assert time.monotonic() - t0 < 10
    finally:
        await client.close()


async def test_publisher_raises_stream_full_promptly(nats_server: streams.EmbeddedServer) -> None:
    """With max_msgs reached (discard=new), publish_many, publish_acked and publish raise
    StreamFullError carrying the server's "maximum messages exceeded" within seconds, and the
    stream keeps exactly its limit; with max_bytes reached the error says "maximum bytes"."""
    client = await streams.connect(nats_server.url, name="full")
    try:
        js = client.jetstream()
        await _limit_stream(js, max_msgs=5)
        pub = streams.Publisher(js)
        t0 = time.monotonic()
        with pytest.raises(streams.StreamFullError, match="maximum messages exceeded") as info:
            await pub.publish_many([_event(i) for i in range(20)])
        assert info.value.acked == 5
        with pytest.raises(streams.StreamFullError):
            await pub.publish_acked([_event(i) for i in range(100, 103)])
        with pytest.raises(streams.StreamFullError, match="stream full"):
            await pub.publish(_event(200), timeout=5)
        assert time.monotonic() - t0 < 10
        assert (await js.stream_info(streams.STREAM)).state.messages == 5

        await _limit_stream(js, max_msgs=-1, max_bytes=(await js.stream_info(streams.STREAM)).state.bytes + 1)
        with pytest.raises(streams.StreamFullError, match="maximum bytes"):
            await pub.publish_many([_event(i, note="x" * 200) for i in range(300, 310)])
    finally:
        await client.close()


def test_hive_publish_says_stream_full(nats_server: streams.EmbeddedServer, tmp_path: Path) -> None:
    """`hive publish` into a full stream exits non-zero within seconds with one "stream full" line
    on stderr and no traceback (it used to hang until killed)."""
    import asyncio

    async def prepare() -> None:
        client = await streams.connect(nats_server.url, name="prep")
        try:
            await _limit_stream(client.jetstream(), max_msgs=3)
        finally:
            await client.close()

    asyncio.run(prepare())
    f = tmp_path / "events.jsonl"
    f.write_bytes(b"\n".join(streams.encode(_event(i)) for i in range(10)) + b"\n")
    t0 = time.monotonic()
    r = run_hive("publish", "--nats", nats_server.url, str(f), timeout=60)
    elapsed = time.monotonic() - t0
    assert r.returncode != 0, r.stdout + r.stderr
    assert "stream full" in r.stderr and "maximum messages exceeded" in r.stderr, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")], r.stderr
    assert elapsed < 20, elapsed
