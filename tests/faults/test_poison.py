"""Poison events against a real ``hive materialize`` process, a real nats-server and a real DuckDB file.

Every kind of bad input is published raw onto the log between good events. Each one must land in
``dead_letters`` with a specific reason and its raw bytes, every good event must be applied, the
checkpoint must reach the end of the stream, and a restarted materializer must carry on (an event
must never crash-loop ingest). Also: the apply path itself isolates an event that DuckDB refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

import streams
from hive import apply_batch, open_store

from ..conftest import Proc, db_rows
from ..spine_helpers import finished
from .checker import applied_state, check, read_stream

HUGE = str(2**70)


def _raw(event: streams.Event, **literals: str) -> bytes:
    """``event`` encoded with some top-level fields replaced by raw JSON text (NaN, huge ints...)."""
    d = orjson.loads(streams.encode(event))
    for i, key in enumerate(literals):
        d[key] = f"@@{i}@@"
    out = orjson.dumps(d).decode()
    for i, literal in enumerate(literals.values()):
        out = out.replace(f'"@@{i}@@"', literal)
    return out.encode()


def _heartbeat(agent: str, n: int, **fields: Any) -> streams.AgentHeartbeat:
    return streams.AgentHeartbeat(
        event_id=f"{agent}/heartbeat/{n}", agent_id=agent, agent_type="researcher", **fields
    )


def _poison_cases() -> list[tuple[str, bytes, str]]:
    """``(subject, raw bytes, expected reason fragment)`` for every kind of poison."""
    trace = "hive.traces.researcher.p-1"
    ev = finished(900, agent="p-1")
    good = orjson.loads(streams.encode(ev))
    hb = _heartbeat("p-1", 1)
    deep = "[" * 5000 + "]" * 5000
    nested = "[" * 50 + "1" + "]" * 50  # parses, but is not a recipe value
    deeper = "[" * 300 + "1" + "]" * 300  # deeper than the validator's JSON parser goes
    no_version = {k: v for k, v in good.items() if k != "schema_version"}
    return [
        (trace, b"{not json", "bad JSON"),
        (trace, b"", "bad JSON"),
        (trace, b"\xff\xfe\x00garbage", "bad JSON"),
        (trace, b"[1, 2, 3]", "expected an object"),
        ("hive.agents.p-1.heartbeat", _raw(hb, experiments=HUGE), "experiments"),
        ("hive.agents.p-1.heartbeat", _raw(hb, model_version=f"-{HUGE}"), "model_version"),
        (trace, _raw(ev, recipe=f'{{"n_layer": {HUGE}}}'), "recipe.n_layer"),
        (trace, _raw(ev, seed=str(2**64)), "seed"),
        (trace, _raw(ev, objective="NaN"), "bad JSON"),
        (trace, _raw(ev, objective="Infinity"), "bad JSON"),
        (trace, _raw(ev, cost_s="-Infinity"), "bad JSON"),
        (trace, _raw(ev, objective="1e999"), "bad JSON"),
        (trace, _raw(ev, recipe=f'{{"x": {deep}}}'), "bad JSON"),
        (trace, _raw(ev, recipe=f'{{"x": {nested}}}'), "recipe.x"),
        (trace, _raw(ev, recipe=f'{{"x": {deeper}}}'), "recursion limit"),
        (trace, _raw(ev, hint='"' + "x" * (streams.MAX_EVENT_BYTES + 10) + '"'), "oversize"),
        (trace, orjson.dumps({**good, "event_id": "p-1/big", "error": "e" * 5000}), "error"),
        (trace, orjson.dumps({**good, "agent_id": "p-2"}), "does not own subject"),
        ("hive.agents.p-2.heartbeat", streams.encode(hb), "does not own subject"),
        (trace, orjson.dumps({**good, "schema_version": 99}), "unknown schema_version 99"),
        (trace, orjson.dumps({**good, "schema_version": -3}), "unknown schema_version -3"),
        (trace, orjson.dumps({**no_version, "seed": "7"}), "seed"),
        (trace, orjson.dumps({**good, "kind": "ExperimentExploded"}), "unknown kind"),
        (trace, orjson.dumps({**good, "surprise": 1}), "surprise"),
        (trace, _raw(ev, occurred_at='"9999-12-31T23:59:59-14:00"'), "occurred_at"),
    ]


async def _publish_interleaved(
    js: Any, cases: list[tuple[str, bytes, str]]
) -> tuple[dict[int, str], set[str]]:
    """Publish a good event before each poison one (and one at the end); returns poison seq → expected
    reason fragment, and the acked ids of the good events."""
    poison: dict[int, str] = {}
    acked: set[str] = set()
    for i, (subject, data, expect) in enumerate(cases):
        ok = finished(i, agent="g-1")
        await js.publish(streams.subject_for(ok), streams.encode(ok))
        acked.add(ok.event_id)
        await js.publish(streams.subject_for(hb := _heartbeat("g-1", i)), streams.encode(hb))
        poison[(await js.publish(subject, data)).seq] = expect
    last = finished(len(cases), agent="g-1")
    await js.publish(streams.subject_for(last), streams.encode(last))
    acked.add(last.event_id)
    return poison, acked


async def _materialize_to(spawn: Callable[..., Proc], url: str, db: Path, last_seq: int) -> str:
    """Run ``hive materialize`` until ``db``'s checkpoint reaches ``last_seq``; stop it; its output.

    Fails at once (with the process's output) if the materializer dies on the way.
    """
    p = spawn("materialize", "--nats", url, "--db", str(db), "--batch", "7")
    nc = await streams.connect(url, name="poison-probe")
    deadline = time.monotonic() + 90
    try:
        while True:
            assert p.p.poll() is None, f"materializer died (rc={p.p.returncode}):\n{p.output()[-3000:]}"
            with contextlib.suppress(Exception):  # not serving yet
                res = await streams.remote_query(nc, "SELECT last_seq FROM checkpoint", timeout_s=5)
                if res.rows and int(res.rows[0][0]) >= last_seq:
                    break
            assert time.monotonic() < deadline, f"checkpoint never reached {last_seq}:\n{p.output()[-3000:]}"
            await asyncio.sleep(0.3)
    finally:
        await nc.close()
    assert p.stop() == 0, p.output()[-3000:]
    return p.output()


async def test_a_huge_integer_heartbeat_is_dead_lettered_and_ingest_goes_on(
    nats_server: Any, nc: Any, tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """An agent's heartbeat with an integer beyond 64 bits does not stop the materializer: it is a
    dead letter naming the field, later events are applied, and a restart carries on."""
    js = nc.jetstream()
    hb = _heartbeat("r-1", 1)
    await js.publish("hive.agents.r-1.heartbeat", _raw(hb, experiments=HUGE))
    await js.publish("hive.traces.researcher.r-1", streams.encode(finished(1)))
    db = tmp_path / "hive.duckdb"
    await _materialize_to(spawn, nats_server.url, db, 2)
    [(seq, reason)] = db_rows(db, "SELECT seq, reason FROM dead_letters")
    assert seq == 1 and "experiments" in reason and "9223372036854775807" in reason
    assert db_rows(db, "SELECT event_id FROM experiments") == [(finished(1).event_id,)]
    await js.publish("hive.traces.researcher.r-1", streams.encode(finished(2)))
    await _materialize_to(spawn, nats_server.url, db, 3)  # the restart neither crashes nor re-applies
    assert db_rows(db, "SELECT count(*) FROM experiments") == [(2,)]


async def test_every_kind_of_poison_is_dead_lettered_between_good_events(
    nats_server: Any, nc: Any, tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """Bad JSON, huge numbers (heartbeat, recipe), NaN/Infinity literals, deep nesting, oversize,
    spoofed agent ids, unknown or missing schema versions, extra fields: each is a dead letter with
    a specific reason and its raw bytes; every good event is applied; the checkpoint reaches the end
    of the stream; and a restarted materializer does not crash and keeps ingesting."""
    js = nc.jetstream()
    cases = _poison_cases()
    poison, acked = await _publish_interleaved(js, cases)
    last = (await js.stream_info(streams.STREAM)).state.last_seq
    db = tmp_path / "hive.duckdb"
    await _materialize_to(spawn, nats_server.url, db, last)
    dead = {int(s): (r, bytes(raw)) for s, r, raw in db_rows(db, "SELECT seq, reason, raw FROM dead_letters")}
    assert set(dead) == set(poison), sorted(set(dead) ^ set(poison))
    sent = {seq: data for seq, (_, data, _) in zip(sorted(poison), cases, strict=True)}
    for seq, expect in poison.items():
        reason, raw = dead[seq]
        assert expect in reason, (seq, expect, reason)
        assert len(reason) <= 2000
        assert raw == sent[seq]  # byte for byte
    check(acked, await read_stream(nats_server.url), applied_state(db)).assert_ok()
    [(state, experiments)] = db_rows(db, "SELECT state, experiments FROM agents WHERE agent_id = 'g-1'")
    assert (state, experiments) == ("idle", 0)
    # A restart on the same file resumes after the poison and applies what comes next.
    more = finished(5000, agent="g-1")
    await js.publish(streams.subject_for(more), streams.encode(more))
    await _materialize_to(spawn, nats_server.url, db, last + 1)
    check(acked | {more.event_id}, await read_stream(nats_server.url), applied_state(db)).assert_ok()


def _entry(seq: int, event: streams.Event) -> streams.LogEntry:
    return streams.LogEntry(seq, streams.subject_for(event), streams.encode(event), streams.utcnow())


def test_apply_isolates_an_event_duckdb_refuses_and_commits_the_rest(tmp_path: Path) -> None:
    """A valid event whose row DuckDB refuses (here a CHECK constraint on the table) becomes a dead
    letter with DuckDB's reason and its raw bytes; the rest of the batch and the checkpoint commit.
    An I/O error while applying, by contrast, is raised (the materializer retries it)."""
    db = tmp_path / "hive.duckdb"
    con = open_store(db)
    con.execute("DROP TABLE guidance")
    con.execute(
        "CREATE TABLE guidance (event_id VARCHAR PRIMARY KEY, seq BIGINT NOT NULL, "
        "agent_id VARCHAR NOT NULL, agent_type VARCHAR NOT NULL, task VARCHAR NOT NULL, "
        "model_version BIGINT, topic VARCHAR, "
        "avoid JSON, hint VARCHAR CHECK (hint <> 'refused'), evidence BIGINT, occurred_at TIMESTAMPTZ)"
    )
    hints = ["fine", "refused", "also fine", "refused"]
    batch = [
        _entry(
            i + 1,
            streams.GuidancePublished(
                event_id=f"a-1/g/{i}",
                agent_id="a-1",
                agent_type="analyst",
                task="branin/0",
                topic="t",
                hint=h,
            ),
        )
        for i, h in enumerate(hints)
    ]
    batch.append(_entry(5, finished(1, agent="a-1")))
    rows = apply_batch(con, batch)
    assert rows.last_seq == 5
    assert con.execute("SELECT last_seq FROM checkpoint").fetchall() == [(5,)]
    assert con.execute("SELECT hint FROM guidance ORDER BY seq").fetchall() == [("fine",), ("also fine",)]
    dead = con.execute("SELECT seq, reason, raw FROM dead_letters ORDER BY seq").fetchall()
    assert [d[0] for d in dead] == [2, 4]
    assert all("CHECK constraint" in d[1] for d in dead), dead
    assert [bytes(d[2]) for d in dead] == [batch[1].data, batch[3].data]
    assert con.execute("SELECT count(*) FROM experiments").fetchall() == [(1,)]
    con.close()
    _io_error_is_raised_not_dead_lettered(tmp_path)


def _io_error_is_raised_not_dead_lettered(tmp_path: Path) -> None:
    """A write the filesystem refuses (the directory made immutable, so no WAL can be created) is
    an environment fault: apply raises and nothing is dead-lettered or checkpointed."""
    d = tmp_path / "data"
    d.mkdir()
    db = d / "hive.duckdb"
    con = open_store(db)
    con.execute("CHECKPOINT")
    if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
        con.close()
        pytest.skip("chattr +i is not available here (needs ext4-like fs and CAP_LINUX_IMMUTABLE)")
    try:
        with pytest.raises((duckdb.OperationalError, OSError), match="not permitted"):
            apply_batch(con, [_entry(1, finished(1))])
    finally:
        subprocess.run(["chattr", "-i", str(d)], check=True)
    con.close()
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM dead_letters").fetchall() == [(0,)]
    assert con.execute("SELECT count(*) FROM checkpoint").fetchall() == [(0,)]
    con.close()
