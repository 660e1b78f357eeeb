"""The materializer against a real nats-server and real DuckDB files: round trip, dedupe,
poison inputs, rebuild, the query service, single ownership."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

import streams
from hive import Materializer, QueryError, rebuild, remote_query, snapshot_path_for

from .conftest import db_rows, run_hive, wait_for
from .spine_helpers import checkpoint, digest, finished


@contextlib.asynccontextmanager
async def running(url: str, db: Path, **kw: Any) -> Any:
    """A materializer running as a task in this process; stopped (and awaited) on exit."""
    m = Materializer(url, db, snapshot_every_s=0.2, **kw)
    task = asyncio.create_task(m.run())
    try:
        await wait_for(m.ready.is_set, what="materializer start")
        yield m
    finally:
        m.stop()
        await asyncio.wait_for(task, 30)


async def count(nc: Any, sql: str) -> Any:
    """One scalar from the query service."""
    return (await remote_query(nc, sql)).rows[0][0]


async def test_round_trip_through_query_service_and_snapshot(
    nats_server: Any, nc: Any, tmp_path: Path
) -> None:
    """Published events become rows, readable through the query service and the snapshot file."""
    db = tmp_path / "hive.duckdb"
    pub = streams.Publisher(nc.jetstream())
    async with running(nats_server.url, db) as m:
        await pub.publish_many([finished(i) for i in range(50)])
        await pub.publish(streams.example("AgentStarted"))
        await wait_for(lambda: count(nc, "SELECT count(*) FROM experiments") if True else 0, what="rows")
        await wait_for(lambda: m.stats.applied_seq == 51, what="applied")
        assert await count(nc, "SELECT count(*) FROM experiments") == 50
        best = await remote_query(nc, "SELECT task, best_objective FROM best_per_task ORDER BY task")
        assert [r[0] for r in best.rows] == [f"branin/{i}" for i in range(5)]
        # the snapshot is readable by another process while the materializer runs
        snap = snapshot_path_for(db)
        await wait_for(lambda: m.stats.snapshot_seq == 51, what="snapshot")
        con = duckdb.connect(str(snap), read_only=True)
        assert con.execute("SELECT count(*) FROM experiments").fetchone() == (50,)
        assert con.execute("SELECT count(*) FROM agents").fetchone() == (1,)
        con.close()
        out = run_hive("query", "--db", str(db), "--format", "json", "SELECT count(*) AS n FROM experiments")
        assert out.returncode == 0, out.stderr
        assert orjson.loads(out.stdout) == [{"n": 50}] and "snapshot" in out.stderr
    assert checkpoint(db) == 51


async def test_same_event_id_twice_is_one_row_even_after_the_window(tmp_path: Path) -> None:
    """A retried event is one row: deduped by the server inside the window and by the
    projection after it."""
    with streams.EmbeddedServer(store_dir=tmp_path / "n") as srv:
        nc = await streams.connect(srv.url)
        js = nc.jetstream()
        await streams.ensure_stream(js, duplicate_window=0.5)
        pub = streams.Publisher(js)
        ev = finished(7)
        assert not (await pub.publish(ev)).duplicate
        assert (await pub.publish(ev)).duplicate  # inside the window: the server drops it
        await asyncio.sleep(1.2)
        assert not (await pub.publish(ev)).duplicate  # after the window: stored again
        assert (await js.stream_info(streams.STREAM)).state.messages == 2
        db = tmp_path / "d.duckdb"
        async with running(srv.url, db) as m:
            await wait_for(lambda: m.stats.applied_seq == 2, what="applied")
            assert await count(nc, "SELECT count(*) FROM experiments") == 1
        await nc.close()


def _poison(nc_subject: str = "hive.traces.researcher.r-1") -> list[tuple[str, bytes, str]]:
    good = orjson.loads(streams.encode(finished(1)))
    big = {**good, "event_id": "r-1/big", "error": "x" * (streams.MAX_EVENT_BYTES + 10)}
    return [
        (nc_subject, b"{this is not json", "bad JSON"),
        (nc_subject, orjson.dumps({**good, "event_id": "r-1/t", "seed": "7"}), "seed"),
        (nc_subject, orjson.dumps({**good, "event_id": "r-1/x", "extra": 1}), "Extra inputs"),
        (
            nc_subject,
            orjson.dumps({**good, "event_id": "r-1/n"}).replace(b'"objective":1.0', b'"objective":NaN'),
            "bad JSON",
        ),
        (nc_subject, orjson.dumps(big), "oversize"),
        (
            nc_subject,
            orjson.dumps({**good, "event_id": "r-1/v", "schema_version": 99}),
            "unknown schema_version",
        ),
        ("hive.traces.researcher.r-2", orjson.dumps({**good, "event_id": "r-1/s"}), "does not own subject"),
        (
            nc_subject,
            orjson.dumps({**good, "event_id": "r-1/k", "kind": "ExperimentExploded"}),
            "unknown kind",
        ),
    ]


async def test_poison_inputs_land_in_dead_letters_and_ingestion_goes_on(
    nats_server: Any, nc: Any, tmp_path: Path
) -> None:
    """Each kind of bad input is a dead letter with its reason and raw bytes; later events apply."""
    js = nc.jetstream()
    cases = _poison()
    for subject, data, _ in cases:
        await js.publish(subject, data)
    await streams.Publisher(js).publish(finished(2))
    db = tmp_path / "p.duckdb"
    async with running(nats_server.url, db) as m:
        await wait_for(lambda: m.stats.applied_seq == len(cases) + 1, what="applied")
        res = await remote_query(nc, "SELECT seq, subject, reason, raw FROM dead_letters ORDER BY seq")
        assert len(res.rows) == len(cases)
        for (seq, _subject, reason, _raw), (_, _data, expect) in zip(res.rows, cases, strict=True):
            assert expect in reason, (seq, reason, expect)
        assert await count(nc, "SELECT count(*) FROM experiments") == 1
    con = duckdb.connect(str(db), read_only=True)
    raws = [r[0] for r in con.execute("SELECT raw FROM dead_letters ORDER BY seq").fetchall()]
    con.close()
    assert raws == [data for _, data, _ in cases]  # the raw bytes are kept, byte for byte


async def test_rebuild_gives_the_same_state_as_incremental_ingestion(
    nats_server: Any, nc: Any, tmp_path: Path
) -> None:
    """Replaying from sequence 1 into a new file reproduces the incrementally built state exactly."""
    js = nc.jetstream()
    pub = streams.Publisher(js)
    db = tmp_path / "inc.duckdb"
    for round_ in range(3):  # ingest in three separate runs, with restarts in between
        await pub.publish_many([finished(i, agent=f"r-{round_}") for i in range(40)])
        await pub.publish(
            streams.AgentHeartbeat(
                event_id=f"r-{round_}/hb/1", agent_id=f"r-{round_}", agent_type="researcher", experiments=40
            )
        )
        await js.publish("hive.traces.researcher.r-0", b"poison")
        last = (await js.stream_info(streams.STREAM)).state.last_seq
        async with running(nats_server.url, db) as m:
            await wait_for(lambda m=m, last=last: m.stats.applied_seq == last, what="applied")
    before = digest(db)
    seq = await rebuild(nats_server.url, db)
    assert seq == last
    assert digest(db) == before


async def test_query_service_answers_refuses_writes_and_cuts_off_runaways(
    nats_server: Any, nc: Any, tmp_path: Path
) -> None:
    """The query service answers while ingesting, returns SQL errors, refuses writes, and
    interrupts a runaway query past its time limit; ingestion is unharmed."""
    pub = streams.Publisher(nc.jetstream())
    db = tmp_path / "q.duckdb"
    async with running(nats_server.url, db) as m:
        feeder = asyncio.create_task(pub.publish_many([finished(i) for i in range(3000)]))
        answers = 0
        while not feeder.done():
            await remote_query(nc, "SELECT count(*) FROM experiments")
            answers += 1
        await feeder
        assert answers >= 1
        with pytest.raises(QueryError, match="SQL error"):
            await remote_query(nc, "SELECT nope FROM experiments")
        for stmt in (
            "DELETE FROM experiments",
            "DROP TABLE experiments",
            "INSERT INTO checkpoint VALUES ('x', 1)",
            "COPY experiments TO '/tmp/x.csv'",
            "ATTACH '/tmp/other.db'",
            "SELECT 1; DELETE FROM agents",
        ):
            with pytest.raises(QueryError, match=r"read-only|one statement"):
                await remote_query(nc, stmt)
        with pytest.raises(QueryError, match="cut off"):
            await remote_query(nc, "SELECT count(*) FROM range(100000000000) a, range(1000) b", timeout_s=0.5)
        await pub.publish(finished(5000))
        await wait_for(lambda: m.stats.applied_seq == 3001, what="ingest after the runaway query")
        assert await count(nc, "SELECT count(*) FROM experiments") == 3001


async def test_second_materializer_on_the_same_file_fails_fast(
    nats_server: Any, nc: Any, tmp_path: Path
) -> None:
    """A second materializer on a DuckDB file that one already owns exits at once with a clear message."""
    db = tmp_path / "own.duckdb"
    async with running(nats_server.url, db):
        out = await asyncio.to_thread(
            run_hive, "materialize", "--nats", nats_server.url, "--db", str(db), timeout=30
        )
    assert out.returncode != 0
    assert "held by" in out.stderr and "one owner" in out.stderr


async def test_unreadable_database_is_quarantined_and_rebuilt_from_the_log(
    nats_server: Any, nc: Any, tmp_path: Path
) -> None:
    """A DuckDB file that cannot be opened is moved aside and the state is rebuilt from the log."""
    await streams.Publisher(nc.jetstream()).publish_many([finished(i) for i in range(30)])
    db = tmp_path / "broken.duckdb"
    db.write_bytes(b"this is not a duckdb file" * 100)
    async with running(nats_server.url, db) as m:
        await wait_for(lambda: m.stats.applied_seq == 30, what="rebuilt")
        assert await count(nc, "SELECT count(*) FROM experiments") == 30
    aside = list(tmp_path.glob("broken.duckdb.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a duckdb file")


async def test_a_v1_database_is_migrated_in_place_and_keeps_its_deployments(
    nats_server: Any, nc: Any, tmp_path: Path
) -> None:
    """A database written at schema v1 is migrated when opened: its deployments read as measured
    against the baseline, and v2 deployments (with a reference) land beside them."""
    from hive._schema import _V1, SCHEMA_VERSION

    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    con.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, description VARCHAR, "
        "applied_at TIMESTAMPTZ DEFAULT now())"
    )
    for stmt in con.extract_statements(_V1):
        con.execute(stmt)
    con.execute("INSERT INTO schema_migrations (version, description) VALUES (1, 'v1')")
    con.execute(
        "INSERT INTO deployments (event_id, seq, agent_id, agent_type, task, model_version, objective, "
        "baseline_objective, status, success) VALUES ('d-0/old', 1, 'd-0', 'deployer', 'branin/7', 0, "
        "0.5, 3.1, 'ok', true)"
    )
    con.close()
    new = streams.example("DeploymentFinished")
    async with running(nats_server.url, db) as m:
        await streams.Publisher(nc.jetstream()).publish(new)
        await wait_for(lambda: m.stats.applied_seq >= 1, what="the v2 deployment")
    rows = db_rows(
        db,
        "SELECT event_id, reference, reference_objective, reference_recipe IS NOT NULL, proposer "
        "FROM deployments ORDER BY event_id",
    )
    assert rows == [
        ("d-0/old", "baseline", 3.1, False, "best-known"),
        (new.event_id, "incumbent", new.reference_objective, True, "model"),
    ]
    assert db_rows(db, "SELECT max(version) FROM schema_migrations") == [(SCHEMA_VERSION,)]
    assert db_rows(db, "SELECT reference, deployments FROM deployment_success ORDER BY 1") == [
        ("baseline", 1),
        ("incumbent", 1),
    ]


async def test_generations_reads_deployment_success_by_model_generation(
    nats_server: Any, nc: Any, tmp_path: Path
) -> None:
    """``hive.generations`` over a materialized file (what the retired ``test_learning`` used):
    only judged, ``ok`` deployments against the incumbent count, pooled into generation 0 and
    generations >= 1, with the margin, its z statistic and a JSON-ready summary."""
    from hive import generations

    base = streams.example("DeploymentFinished")
    plan = [  # (model_version, reference, status, success, how many)
        (0, "incumbent", "ok", True, 2),
        (0, "incumbent", "ok", False, 8),
        (1, "incumbent", "ok", True, 3),
        (1, "incumbent", "ok", False, 2),
        (2, "incumbent", "ok", True, 3),
        (0, "baseline", "ok", True, 5),  # against the baseline: not counted
        (1, "incumbent", "failed", False, 4),  # failed runs: not counted
        (2, "incumbent", "ok", None, 2),  # not judged: not counted
    ]
    events, i = [], 0
    for version, reference, status, success, n in plan:
        for _ in range(n):
            i += 1
            events.append(
                base.model_copy(
                    update=dict(
                        event_id=f"d-1/dep-{i}/finish",
                        run_id=f"dep-{i}",
                        model_version=version,
                        reference=reference,
                        status=status,
                        success=success,
                    )
                )
            )
    await streams.Publisher(nc.jetstream()).publish_many(events)
    db = tmp_path / "gen.duckdb"
    async with running(nats_server.url, db) as m:
        await wait_for(lambda: m.stats.applied_seq == len(events), what="deployments applied")
    con = duckdb.connect(str(db), read_only=True)
    try:
        gens = generations(con)
    finally:
        con.close()
    assert gens.by_version == {0: (10, 2), 1: (5, 3), 2: (3, 3)}
    assert gens.gen0 == (10, 2) and gens.later == (8, 6)
    assert gens.rate0 == 0.2 and gens.rate_later == 0.75
    assert gens.margin is not None and abs(gens.margin - 0.55) < 1e-12
    assert gens.z is not None and 2.0 < gens.z < 2.5  # pooled p = 8/18: z = 0.55 / 0.2357 = 2.33
    summary = gens.summary()
    assert summary["gen1_plus"] == {"deployments": 8, "successes": 6, "rate": 0.75}
    assert summary["by_version"]["2"] == {"deployments": 3, "successes": 3, "rate": 1.0}
    assert summary["margin"] == 0.55
