"""Exports of the hive's state for other tools: Parquet for any dataframe reader, and an Optuna
journal so ``optuna-dashboard`` shows the hive's history as studies.

Both read a DuckDB file that no materializer owns (the snapshot, or a stopped hive's database),
opened read-only.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import duckdb
import orjson
import structlog

log = structlog.get_logger("hive.export")

__all__ = ["ExportError", "export_optuna", "export_parquet"]


class ExportError(RuntimeError):
    """An export could not be written; the message says why."""


def _open(db: str | Path) -> duckdb.DuckDBPyConnection:
    path = Path(db)
    if not path.exists():
        raise ExportError(f"no database at {path}")
    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.Error as e:
        raise ExportError(f"cannot open {path} as a DuckDB database: {e}") from None


def _relations(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """``(name, 'table'|'view')`` of every relation in the main schema, tables first, by name."""
    rows = con.execute(
        "SELECT table_name, table_type FROM information_schema.tables "
        "WHERE table_schema = 'main' AND table_catalog = current_database() ORDER BY table_type, table_name"
    ).fetchall()
    return [(name, "view" if "VIEW" in kind.upper() else "table") for name, kind in rows]


def _select_list(con: duckdb.DuckDBPyConnection, name: str) -> str:
    """Columns of ``name`` with JSON columns cast to text (Parquet readers need no JSON extension)."""
    cols = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main' AND table_name = ? AND table_catalog = current_database() "
        "ORDER BY ordinal_position",
        [name],
    ).fetchall()
    parts = []
    for col, typ in cols:
        quoted = '"' + col.replace('"', '""') + '"'
        parts.append(f"CAST({quoted} AS VARCHAR) AS {quoted}" if typ.upper() == "JSON" else quoted)
    return ", ".join(parts)


def export_parquet(db: str | Path, out_dir: str | Path) -> dict[str, int]:
    """Write every table and view of ``db`` as ``<out_dir>/<name>.parquet``; returns rows per file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    con = _open(db)
    written: dict[str, int] = {}
    try:
        for name, _kind in _relations(con):
            target = out / f"{name}.parquet"
            tmp = out / f".{name}.parquet.tmp"
            sql_path = "'" + str(tmp).replace("'", "''") + "'"
            con.execute(
                f'COPY (SELECT {_select_list(con, name)} FROM "{name}") TO {sql_path} (FORMAT parquet)'
            )
            tmp.replace(target)
            row = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()
            written[name] = int(row[0]) if row else 0
    finally:
        con.close()
    log.info("exported_parquet", dir=str(out), files=len(written))
    return written


def _distributions(recipes: list[dict[str, Any]]) -> dict[str, Any]:
    """Optuna distributions that contain every value seen per knob (floats, ints, categoricals)."""
    import optuna.distributions as od

    values: dict[str, list[Any]] = defaultdict(list)
    for r in recipes:
        for k, v in r.items():
            values[k].append(v)
    dists: dict[str, Any] = {}
    for k, vs in values.items():
        if all(isinstance(v, int) and not isinstance(v, bool) for v in vs):
            dists[k] = od.IntDistribution(min(vs), max(vs))
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in vs):
            fs = [float(v) for v in vs]
            dists[k] = od.FloatDistribution(min(fs), max(fs))
        else:
            choices = sorted({v if isinstance(v, str | bool | int | float) else str(v) for v in vs}, key=repr)
            dists[k] = od.CategoricalDistribution(choices)
    return dists


def export_optuna(db: str | Path, journal: str | Path, *, overwrite: bool = False) -> dict[str, int]:
    """Write an Optuna journal file: one study per task instance, one trial per finished experiment.

    Trials are in the order the hive ran them (stream sequence). ``ok`` experiments are COMPLETE
    with ``value = objective`` (lower is better, so studies minimize); failed or timed-out ones
    are FAIL. Each trial keeps the hive's provenance in ``user_attrs`` (agent, proposer, model
    version, seed, event id). Returns the number of trials per study.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState, create_trial

    path = Path(journal)
    if path.exists():
        if not overwrite:
            raise ExportError(f"{path} exists (an Optuna journal appends); pass --force to replace it")
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    con = _open(db)
    try:
        rows = con.execute(
            "SELECT task, CAST(recipe AS VARCHAR), objective, status, agent_id, proposer, model_version, "
            "seed, event_id FROM experiments ORDER BY seq"
        ).fetchall()
    finally:
        con.close()
    by_task: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in rows:
        by_task[row[0]].append(row)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(path)))
    counts: dict[str, int] = {}
    for task, trials in sorted(by_task.items()):
        recipes = [orjson.loads(r[1]) if r[1] else {} for r in trials]
        dists = _distributions(recipes)
        study = optuna.create_study(study_name=task, storage=storage, direction="minimize")
        study.set_user_attr("source", "hive")
        frozen = []
        for (_t, _r, objective, status, agent_id, proposer, model_version, seed, eid), recipe in zip(
            trials, recipes, strict=True
        ):
            ok = status == "ok" and objective is not None and math.isfinite(objective)
            params = {k: v for k, v in recipe.items() if k in dists}
            frozen.append(
                create_trial(
                    state=TrialState.COMPLETE if ok else TrialState.FAIL,
                    value=float(objective) if ok else None,
                    params=params,
                    distributions={k: dists[k] for k in params},
                    user_attrs={
                        "agent_id": agent_id,
                        "proposer": proposer,
                        "model_version": model_version,
                        "seed": seed,
                        "event_id": eid,
                        "status": status,
                    },
                )
            )
        study.add_trials(frozen)
        counts[task] = len(frozen)
    log.info("exported_optuna", journal=str(path), studies=len(counts), trials=sum(counts.values()))
    return counts
