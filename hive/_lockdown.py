"""Locking a DuckDB database down so that queries read its tables and nothing else.

After :func:`lock_down` no statement on the database, from any connection or cursor, can read
or write a file other than the database itself (and the few scratch paths the owner names, for
its snapshot), reach the network, install or load an extension, scan a Python variable, or
change a setting (``lock_configuration`` also forbids undoing the lock-down). DuckDB applies
these to the whole database instance, so they hold for every cursor the query service opens.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import duckdb

__all__ = ["lock_down", "snapshot_scratch_paths"]


def snapshot_scratch_paths(target: str | Path) -> tuple[Path, Path, Path]:
    """The files :func:`hive.write_snapshot` writes before renaming into ``target``: the temp
    database, its WAL and the WAL's checkpoint file (absolute paths)."""
    tmp = Path(os.path.abspath(target)).with_name(Path(target).name + ".tmp")
    return tmp, Path(f"{tmp}.wal"), Path(f"{tmp}.wal.checkpoint")


def lock_down(
    con: duckdb.DuckDBPyConnection, *, scratch: Iterable[str | Path] = ()
) -> duckdb.DuckDBPyConnection:
    """Turn off external access (files, network, extensions) and Python replacement scans on
    ``con``'s database, leaving only the ``scratch`` paths usable (e.g. the snapshot's temp files),
    then lock the configuration. Returns ``con``. Irreversible for this database instance."""
    allowed = [os.path.abspath(p) for p in scratch]
    if allowed:
        con.execute("SET allowed_paths = ?", [allowed])
    con.execute("SET python_enable_replacements = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con
