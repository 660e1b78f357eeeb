"""LogReader never skips a sequence: consumer deletions in the middle of a batch, stale deliveries
on the inbox, and real gaps (deleted messages) against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

import streams

SUBJECT = "hive.traces.researcher.reader-test"


async def _publish(js: Any, start: int, n: int, size: int = 512) -> None:
    """Publish ``n`` raw messages numbered from ``start`` (the reader does not decode them)."""
    pad = b"x" * size
    for lo in range(start, start + n, 200):
        acks = [js.publish(SUBJECT, b"%d:" % i + pad) for i in range(lo, min(lo + 200, start + n))]
        await asyncio.gather(*acks)


async def _read_until(reader: streams.LogReader, last: int, timeout: float = 60) -> list[int]:
    """Fetch until ``last`` is returned, resetting on ConsumerLost as the materializer does."""
    seqs: list[int] = []
    deadline = time.monotonic() + timeout
    while (not seqs or seqs[-1] < last) and time.monotonic() < deadline:
        try:
            seqs += [e.seq for e in await reader.fetch(1000, timeout=0.5)]
        except streams.ConsumerLost:
            await reader.reset()
    return seqs


async def test_consumer_deleted_mid_batch_skips_nothing(nats_server: Any, nc: Any) -> None:
    """A consumer deleted while a pull request is half delivered (messages already in the inbox,
    then 409 Consumer Deleted) loses none of the delivered messages: after the reset the reader
    hands out every sequence exactly once, in order."""
    js = nc.jetstream()
    reader = await streams.LogReader(nc).start()
    other = await streams.connect(nats_server.url, name="deleter")
    try:
        # The stream is empty: the fetch leaves one lingering request (batch 1000) open.
        first = asyncio.ensure_future(reader.fetch(1000, timeout=5.0))
        await asyncio.sleep(0.3)
        await _publish(js, 1, 600)
        got = [e.seq for e in await first]
        await asyncio.sleep(0.5)  # the rest of the 600 lands in the inbox on that same request
        await other.jetstream().delete_consumer(streams.STREAM, reader._consumer)
        await asyncio.sleep(0.3)  # the 409 Consumer Deleted follows them on the inbox
        await _publish(js, 601, 900)
        got += await _read_until(reader, 1500)
    finally:
        await reader.close()
        await other.close()
    assert got == list(range(1, 1501)), f"missing {sorted(set(range(1, 1501)) - set(got))[:10]}…"


async def test_repeated_deletions_under_load_skip_nothing(nats_server: Any, nc: Any) -> None:
    """While large batches are delivered, another connection deletes the reader's consumer again
    and again; the reader still returns 1..N exactly once and in order."""
    n = 6000
    js = nc.jetstream()
    await _publish(js, 1, n, size=2048)
    reader = await streams.LogReader(nc).start()
    other = await streams.connect(nats_server.url, name="deleter")
    done = asyncio.Event()

    async def delete_often() -> None:
        while not done.is_set():
            await asyncio.sleep(0.02)
            with contextlib.suppress(Exception):
                await other.jetstream().delete_consumer(streams.STREAM, reader._consumer)

    deleter = asyncio.ensure_future(delete_often())
    try:
        got = await _read_until(reader, n, timeout=90)
    finally:
        done.set()
        await deleter
        await reader.close()
        await other.close()
    assert got == list(range(1, n + 1)), f"missing {sorted(set(range(1, n + 1)) - set(got))[:10]}…"


async def test_stale_delivery_past_a_held_sequence_is_not_accepted(nats_server: Any, nc: Any) -> None:
    """A delivery whose sequence jumps past messages the stream still holds (an old consumer's
    message still arriving on the inbox) is not handed out as if contiguous: the reader re-reads from the
    last sequence it returned."""
    js = nc.jetstream()
    await _publish(js, 1, 50)
    reader = await streams.LogReader(nc).start()
    try:
        got = [e.seq for e in await reader.fetch(20, timeout=2.0)]
        assert got == list(range(1, 21))
        # Another consumer (as an old one still delivering would) puts seq 40 on the reader's inbox.
        old = await js.add_consumer(
            streams.STREAM,
            ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=40,
                inactive_threshold=10.0,
            ),
        )
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{streams.STREAM}.{old.name}"
        await nc.publish(subject, b'{"batch": 1}', reply=reader._sub.subject)  # type: ignore[union-attr]
        await nc.flush()
        await asyncio.sleep(0.3)
        got += await _read_until(reader, 50, timeout=30)
    finally:
        await reader.close()
    assert got == list(range(1, 51))


async def test_real_gap_from_deleted_messages_is_crossed(nats_server: Any, nc: Any) -> None:
    """Messages deleted from the stream are a real gap: the reader verifies it with the stream and
    goes on (no reset loop), returning every message that exists."""
    js = nc.jetstream()
    await _publish(js, 1, 100)
    for seq in (1, 2, 50, 51, 52, 100):
        await js.delete_msg(streams.STREAM, seq)
    await _publish(js, 101, 10)
    reader = await streams.LogReader(nc).start()
    try:
        got = await _read_until(reader, 110, timeout=30)
    finally:
        await reader.close()
    expected = [s for s in range(1, 111) if s not in (1, 2, 50, 51, 52, 100)]
    assert got == expected


async def test_last_seq_is_only_what_was_returned(nats_server: Any, nc: Any) -> None:
    """``last_seq`` is the last sequence handed to the caller: a fetch cancelled while messages
    were being collected does not move it past what the caller received."""
    js = nc.jetstream()
    reader = await streams.LogReader(nc).start()
    try:
        task = asyncio.ensure_future(reader.fetch(1000, timeout=5.0))
        await asyncio.sleep(0.3)
        await _publish(js, 1, 300)
        returned = [e.seq for e in await task]
        assert reader.last_seq == returned[-1]
        await asyncio.sleep(0.3)
        # Cancel a fetch in flight: whatever it had collected was never returned.
        task = asyncio.ensure_future(reader.fetch(1000, timeout=5.0))
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        returned += await _read_until(reader, 300, timeout=30)
    finally:
        await reader.close()
    assert returned == list(range(1, 301)), orjson.dumps(returned[-5:]).decode()
