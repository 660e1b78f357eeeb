"""``hive export`` through the installed entry point, read back by readers that are not DuckDB:
pyarrow's Parquet reader and Optuna's own ``load_study``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

import streams
from hive import Materializer

from .conftest import run_hive
from .spine_helpers import finished


async def _materialized(url: str, nc: Any, db: Path, n: int) -> None:
    """Publish ``n`` finished experiments (two failed) and materialize them into ``db``."""
    events = [finished(i) for i in range(n)]
    events[3] = finished(3, status="failed", objective=None, error="diverged")
    events[5] = finished(5, status="timeout", objective=None)
    await streams.Publisher(nc.jetstream()).publish_many(events)
    await streams.Publisher(nc.jetstream()).publish(streams.example("AgentStarted"))
    m = Materializer(url, db, serve_queries=False, stop_at_seq=n + 1)
    await asyncio.wait_for(m.run(), 60)


async def test_parquet_export_reads_back_with_pyarrow(nats_server: Any, nc: Any, tmp_path: Path) -> None:
    """Every table and view becomes a Parquet file that pyarrow reads, JSON columns as text, all rows kept."""
    db = tmp_path / "hive.duckdb"
    await _materialized(nats_server.url, nc, db, 40)
    out = tmp_path / "parquet"
    r = run_hive("export", "--db", str(db), "--parquet", str(out))
    assert r.returncode == 0, r.stderr
    names = {p.stem for p in out.glob("*.parquet")}
    assert {"experiments", "agents", "dead_letters", "best_per_task", "experiment_status"} <= names
    exps = pq.read_table(out / "experiments.parquet")
    assert exps.num_rows == 40
    recipe = exps.column("recipe").to_pylist()[0]
    assert isinstance(recipe, str) and '"x2"' in recipe  # JSON as text, not an extension type
    best = pq.read_table(out / "best_per_task.parquet").to_pylist()
    assert sorted(r["task"] for r in best) == [f"branin/{i}" for i in range(5)]
    assert not list(out.glob(".*.tmp"))


async def test_optuna_journal_loads_with_optuna(nats_server: Any, nc: Any, tmp_path: Path) -> None:
    """The journal holds one study per task instance; ``optuna.load_study`` sees every trial, in
    order, with values, params, FAIL for failed runs, and the hive's provenance as user attrs."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    db = tmp_path / "hive.duckdb"
    await _materialized(nats_server.url, nc, db, 40)
    journal = tmp_path / "hive.optuna.log"
    r = run_hive("export", "--db", str(db), "--optuna", str(journal))
    assert r.returncode == 0, r.stderr
    storage = JournalStorage(JournalFileBackend(str(journal)))
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == [f"branin/{i}" for i in range(5)]
    study = optuna.load_study(study_name="branin/3", storage=storage)
    trials = study.trials
    assert len(trials) == 8  # events 3, 8, ..., 38
    assert trials[0].state == optuna.trial.TrialState.FAIL  # event 3 failed
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 7
    assert study.best_value == min(float(i % 17) for i in range(8, 40, 5))
    assert set(done[0].params) == {"x1", "x2", "transform"}
    assert done[0].user_attrs["agent_id"] == "r-1" and done[0].user_attrs["event_id"].endswith("/finish")
    # a second export refuses to append to the journal unless told to replace it
    again = run_hive("export", "--db", str(db), "--optuna", str(journal))
    assert again.returncode != 0 and "--force" in again.stderr and "Traceback" not in again.stderr
    assert run_hive("export", "--db", str(db), "--optuna", str(journal), "--force").returncode == 0


def test_export_of_a_missing_database_is_one_clear_error(tmp_path: Path) -> None:
    """A --db that does not exist, or is not DuckDB, is one line on stderr and exit 1, no traceback."""
    r = run_hive("export", "--db", str(tmp_path / "nope.duckdb"), "--parquet", str(tmp_path / "o"))
    assert r.returncode == 1 and "no database at" in r.stderr and "Traceback" not in r.stderr
    junk = tmp_path / "junk.duckdb"
    junk.write_text("not a database\n")
    r = run_hive("export", "--db", str(junk), "--parquet", str(tmp_path / "o"))
    assert r.returncode == 1 and "cannot open" in r.stderr and "Traceback" not in r.stderr
