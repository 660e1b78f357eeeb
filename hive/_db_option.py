"""The ``--db`` option of the offline commands (``hive export``, ``hive plot``): a DuckDB file no
process owns, by default the running hive's snapshot."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

DEFAULT_SNAPSHOT = Path("./hive-data/hive.snapshot.duckdb")


def snapshot_db_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--db FILE`` (default ``./hive-data/hive.snapshot.duckdb``) to a click command."""
    return click.option(
        "--db",
        type=click.Path(dir_okay=False, path_type=Path),
        default=DEFAULT_SNAPSHOT,
        show_default=True,
        help="A DuckDB file no process owns: the snapshot of a running hive, or a stopped hive's database.",
    )(fn)
