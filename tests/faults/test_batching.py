"""Projections do not depend on batching: the same log gives the same tables however it is cut.

Live ingest and ``hive rebuild`` cut the log into different batches (group commit, restarts), so
any rule that differs within a batch from across batches makes them disagree. The log here has an
agent whose clock goes backwards, restarts, republished copies of old events (as after the
dedupe window), an ``event_id`` shared by two kinds, and poison; it is applied in batches of 1, 7,
1000 and all at once, directly and through a real materializer and ``rebuild``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

import streams
from hive import Materializer, apply_batch, open_store, rebuild

from ..spine_helpers import digest, finished

T0 = datetime(2026, 3, 1, 20, 0, 0, tzinfo=UTC)


def _agent(kind: type[streams.Event], agent: str, n: int, at: datetime, **kw: Any) -> streams.Event:
    return kind(
        event_id=f"{agent}/{kind.__name__}/{n}", agent_id=agent, agent_type="researcher", occurred_at=at, **kw
    )


def _log() -> list[tuple[str, bytes]]:
    """``(subject, bytes)`` in log order: the awkward cases for a per-agent "latest state" fold."""
    events: list[streams.Event] = []
    hb = streams.AgentHeartbeat
    for a in ("r-1", "r-2", "r-3"):
        events.append(_agent(streams.AgentStarted, a, 0, T0, host="h", pid=10, task="branin/0"))
    for i in range(1, 24):
        # r-1's clock jumps back an hour halfway (NTP step, a VM restored): later events, earlier times.
        at = T0 + timedelta(seconds=10 * i) - (timedelta(hours=1) if i > 12 else timedelta())
        events.append(_agent(hb, "r-1", i, at, state=f"s{i}", experiments=i, model_version=i % 4))
        events.append(_agent(hb, "r-2", i, T0 + timedelta(seconds=10 * i), state="busy", experiments=i))
        events.append(finished(i, agent="r-1", occurred_at=T0 + timedelta(seconds=i)))
        if i % 9 == 0:
            # A copy of an old heartbeat, republished after the dedupe window: it must change nothing.
            events.append(_agent(hb, "r-1", i - 5, T0, state=f"s{i - 5}", experiments=i - 5))
            events.append(finished(i - 3, agent="r-1", occurred_at=T0 + timedelta(seconds=i - 3)))
        if i == 15:
            events.append(_agent(streams.AgentStopped, "r-3", 1, T0 + timedelta(seconds=250), reason="done"))
            events.append(
                _agent(streams.AgentStarted, "r-3", 2, T0 + timedelta(seconds=240), host="h2", pid=11)
            )
    shared = "r-2/shared/1"  # one event_id used by two kinds: each table keeps its own
    events.append(
        streams.GuidancePublished(
            event_id=shared,
            agent_id="r-2",
            agent_type="researcher",
            task="branin/0",
            topic="t",
            occurred_at=T0,
        )
    )
    events.append(finished(99, agent="r-2", event_id=shared, occurred_at=T0))
    log = [(streams.subject_for(e), streams.encode(e)) for e in events]
    log.insert(17, ("hive.traces.researcher.r-1", b"{poison"))
    log.insert(40, ("hive.agents.r-2.heartbeat", b'{"kind": "AgentHeartbeat"}'))
    return log


def _entries() -> list[streams.LogEntry]:
    return [
        streams.LogEntry(seq, subject, data, T0 + timedelta(milliseconds=seq))
        for seq, (subject, data) in enumerate(_log(), start=1)
    ]


def _apply_in_batches(db: Path, entries: list[streams.LogEntry], size: int) -> str:
    con = open_store(db)
    try:
        for i in range(0, len(entries), size):
            apply_batch(con, entries[i : i + size])
    finally:
        con.close()
    return digest(db)


def test_any_batching_of_the_same_log_gives_the_same_tables(tmp_path: Path) -> None:
    """Applying one log in batches of 1, 7, 1000 or all at once gives identical tables, and the
    agents row follows the documented rule: last_seen is the latest occurred_at of all the agent's
    events, every other column the value of its highest-sequence event (copies change nothing)."""
    entries = _entries()
    digests = {size: _apply_in_batches(tmp_path / f"b{size}.duckdb", entries, size) for size in (1, 7, 1000)}
    digests[0] = _apply_in_batches(tmp_path / "all.duckdb", entries, len(entries))
    assert len(set(digests.values())) == 1, digests
    con = duckdb.connect(str(tmp_path / "b7.duckdb"), read_only=True)
    try:
        r1 = con.execute(
            "SELECT last_seen, state, experiments, host FROM agents WHERE agent_id = 'r-1'"
        ).fetchone()
        assert r1 == (T0 + timedelta(seconds=120), "s23", 23, "h")
        r3 = con.execute(
            "SELECT host, pid, stopped_at, stop_reason, last_seen FROM agents WHERE agent_id = 'r-3'"
        )
        assert r3.fetchone() == ("h2", 11, T0 + timedelta(seconds=250), "done", T0 + timedelta(seconds=250))
        assert con.execute("SELECT count(*) FROM guidance WHERE event_id = 'r-2/shared/1'").fetchone() == (1,)
        assert con.execute("SELECT count(*) FROM experiments WHERE event_id = 'r-2/shared/1'").fetchone() == (
            1,
        )
        assert con.execute("SELECT count(*) FROM dead_letters").fetchone() == (2,)
    finally:
        con.close()


async def test_materializer_batch_sizes_and_rebuild_agree(nats_server: Any, nc: Any, tmp_path: Path) -> None:
    """The same log on a real server, materialized with batch sizes 1, 7 and 1000 and by
    ``rebuild``, gives identical digests (an agent's clock goes backwards in it)."""
    js = nc.jetstream()
    for subject, data in _log():
        await js.publish(subject, data)  # no Nats-Msg-Id: the copies are stored, as after the window
    last = (await js.stream_info(streams.STREAM)).state.last_seq
    digests: dict[str, str] = {}
    for size in (1, 7, 1000):
        db = tmp_path / f"m{size}.duckdb"
        m = Materializer(nats_server.url, db, batch_size=size, serve_queries=False, stop_at_seq=last)
        assert (await m.run()).applied_seq == last
        digests[f"batch {size}"] = digest(db)
    rebuilt = tmp_path / "rebuilt.duckdb"
    assert await rebuild(nats_server.url, rebuilt) == last
    digests["rebuild"] = digest(rebuilt)
    assert len(set(digests.values())) == 1, digests
