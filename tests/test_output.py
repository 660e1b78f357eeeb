"""Query output for people: tables keep full column widths when stdout is not a terminal."""

from __future__ import annotations

from pathlib import Path

import duckdb

from .conftest import run_hive


def test_table_off_a_terminal_keeps_full_widths(tmp_path: Path) -> None:
    """Piped (as in CI logs or `| less`), a table prints every cell whole on one line: a 120-character
    value and its neighbours are not folded or squeezed to a few characters."""
    db = tmp_path / "t.duckdb"
    long = "x" * 60 + "-" + "y" * 59
    con = duckdb.connect(str(db))
    con.execute(
        "CREATE TABLE t AS SELECT ? AS long_value, 'researcher-0/abc/finish' AS event_id, 42 AS n", [long]
    )
    con.close()
    r = run_hive("query", "--db", str(db), "SELECT * FROM t")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    row = next(line for line in lines if long in line)
    assert "researcher-0/abc/finish" in row and "42" in row
    assert any("long_value" in line and "event_id" in line for line in lines)
