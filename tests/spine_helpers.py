"""Helpers shared by the spine tests: building events and reading the materialized state."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import duckdb

import streams
from hive import TABLES, applied_seq_of


def finished(i: int, agent: str = "r-1", **kw: Any) -> streams.ExperimentFinished:
    """A valid ExperimentFinished event number ``i`` of ``agent``."""
    base: dict[str, Any] = dict(
        event_id=f"{agent}/run-{i}/finish",
        agent_id=agent,
        agent_type="researcher",
        task=f"branin/{i % 5}",
        run_id=f"run-{i}",
        recipe={"x1": 0.1 * i, "x2": 2.0, "transform": "none"},
        seed=i,
        budget=1.0,
        metrics={"value": float(i % 17)},
        objective=float(i % 17),
        cost_s=0.01,
        status="ok",
        success=i % 2 == 0,
    )
    base.update(kw)
    return streams.ExperimentFinished(**base)


def digest(db: Path | str) -> str:
    """A digest of every projected table's full contents, in a stable order."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        h = hashlib.sha256()
        for t in TABLES:
            rows = con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
            h.update(f"{t}:{len(rows)}:{rows!r}".encode())
        return h.hexdigest()
    finally:
        con.close()


def checkpoint(db: Path | str) -> int:
    """The applied sequence recorded in a DuckDB file (opened read-only)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return applied_seq_of(con)
    finally:
        con.close()
