"""The raw-protocol log reader: the same entries as nats-py's, and the reader's fault cases pass
with it (consumer deletions, stale deliveries, real gaps, cancelled fetches) plus its own
connection dropped again and again, against a real nats-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import streams
from streams import LogReader, RawLogReader

from .faults import test_reader as reader_cases
from .faults.test_reader import _publish, _read_until


async def _all(reader: LogReader, last: int) -> list[streams.LogEntry]:
    """Every entry up to ``last``, resetting on ConsumerLost as the materializer does."""
    out: list[streams.LogEntry] = []
    deadline = time.monotonic() + 60
    while (not out or out[-1].seq < last) and time.monotonic() < deadline:
        try:
            out += await reader.fetch(700, timeout=0.5)
        except streams.ConsumerLost:
            await reader.reset()
    return out


async def test_raw_reader_returns_what_nats_py_returns(nc: Any) -> None:
    """Sequence, subject, bytes and log time of every entry are the same through both readers."""
    await _publish(nc.jetstream(), 1, 3000, size=900)
    assert streams.raw_reader_possible(nc)
    got = {}
    for cls in (LogReader, RawLogReader):
        reader = await cls(nc).start()
        try:
            got[cls] = await _all(reader, 3000)
        finally:
            await reader.close()
    assert [e.seq for e in got[RawLogReader]] == list(range(1, 3001))
    assert got[RawLogReader] == got[LogReader]


async def test_raw_connection_dropped_again_and_again_skips_nothing(nc: Any) -> None:
    """Its own connection aborted every 10 ms while large batches arrive: every sequence comes
    back exactly once, in order (a lost connection is a lost consumer: reset, re-read)."""
    n = 6000
    await _publish(nc.jetstream(), 1, n, size=2048)
    reader = await RawLogReader(nc).start()
    done = asyncio.Event()
    drops = 0

    async def drop_often() -> None:
        nonlocal drops
        while not done.is_set():
            await asyncio.sleep(0.01)
            conn = reader._conn
            if conn is not None and not conn.closed:
                conn.writer.transport.abort()
                drops += 1

    dropper = asyncio.ensure_future(drop_often())
    try:
        got = await _read_until(reader, n, timeout=90)
    finally:
        done.set()
        await dropper
        await reader.close()
    assert drops >= 1 and reader.resets >= 1
    assert got == list(range(1, n + 1)), f"missing {sorted(set(range(1, n + 1)) - set(got))[:10]}…"


@pytest.mark.parametrize(
    "case",
    [
        reader_cases.test_consumer_deleted_mid_batch_skips_nothing,
        reader_cases.test_repeated_deletions_under_load_skip_nothing,
        reader_cases.test_stale_delivery_past_a_held_sequence_is_not_accepted,
        reader_cases.test_real_gap_from_deleted_messages_is_crossed,
        reader_cases.test_last_seq_is_only_what_was_returned,
    ],
    ids=lambda f: f.__name__.removeprefix("test_"),
)
async def test_reader_fault_cases_with_the_raw_reader(
    case: Callable[[Any, Any], Awaitable[None]], nats_server: Any, nc: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of ``tests/faults/test_reader.py``'s cases, run with :class:`streams.RawLogReader`."""
    monkeypatch.setattr(streams, "LogReader", RawLogReader)
    await case(nats_server, nc)


async def test_switch_off_falls_back_to_nats_py(nc: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``HIVE_RAW_READER=0`` gives nats-py's reader; by default a plain local server gets the raw one."""
    assert type(streams.open_log_reader(nc)) is RawLogReader
    monkeypatch.setenv(streams.RAW_READER_ENV, "0")
    assert not streams.raw_reader_possible(nc)
    assert type(streams.open_log_reader(nc)) is LogReader


@pytest.mark.parametrize("cls", [LogReader, RawLogReader])
async def test_a_wait_after_a_filled_request_still_sees_new_entries(nc: Any, cls: type[LogReader]) -> None:
    """A fetch that finds nothing waits on a pull request; once a burst has filled an earlier
    waiting request (JetStream sends no status for that), the next wait must ask again, so an
    entry published while it waits is returned by that very fetch. (The reader once believed the
    filled request still open and waited out its whole timeout: ingest stalled 0.75 s at a time
    at a steady 5,000 events/s.)"""
    js = nc.jetstream()
    reader = await cls(nc).start()
    try:
        assert await reader.fetch(10, timeout=0.3) == []  # nothing yet: a waiting request is made
        waiting = asyncio.ensure_future(reader.fetch(10, timeout=2.0))
        await asyncio.sleep(0.05)
        await _publish(js, 1, 10, size=16)  # a burst fills whatever is waiting
        got = [e.seq for e in await waiting]
        while len(got) < 10:
            got += [e.seq for e in await reader.fetch(10, timeout=0.5)]
        assert got == list(range(1, 11))
        for n in (11, 12, 13):  # then, each time, an entry published while the reader waits
            waiting = asyncio.ensure_future(reader.fetch(10, timeout=2.0))
            await asyncio.sleep(0.05)
            await _publish(js, n, 1, size=16)
            assert [e.seq for e in await waiting] == [n], "the wait did not ask the server again"
    finally:
        await reader.close()
