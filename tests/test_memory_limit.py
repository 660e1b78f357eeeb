"""``HIVE_DUCKDB_MEMORY_LIMIT`` bounds the materializer's DuckDB memory; a bad value is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from hive._store import MEMORY_LIMIT_ENV, StoreError, open_store


def test_memory_limit_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The setting reaches the database the materializer opens."""
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "256MB")
    con = open_store(tmp_path / "h.duckdb")
    (limit,) = con.execute("SELECT current_setting('memory_limit')").fetchone() or ("",)
    con.close()
    assert limit == "244.1 MiB"  # DuckDB reads MB as 10**6 bytes


def test_bad_memory_limit_is_refused_without_touching_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value DuckDB refuses is a StoreError naming the variable; the database is not quarantined."""
    db = tmp_path / "h.duckdb"
    open_store(db).close()
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "lots")
    with pytest.raises(StoreError, match=MEMORY_LIMIT_ENV):
        open_store(db)
    assert db.exists() and not list(tmp_path.glob("*.corrupt-*"))
