"""hive: the DuckDB side of the hive — schema, projections, materializer, query service, CLI.

Imports ``streams`` only (the CLI and the supervisor may start the other packages).
"""

from ._learning import GENERATIONS_SQL, Generations, generations
from ._lockdown import lock_down, snapshot_scratch_paths
from ._materializer import Materializer, MaterializerStats, rebuild
from ._projections import TABLES, Rows, decode_batch, project
from ._query import QueryError, QueryResult, check_read_only, remote_query, run_read_only
from ._schema import ARROW, MIGRATIONS, SCHEMA_VERSION, migrate
from ._store import (
    SNAPSHOT_STORAGE_VERSION,
    DatabaseLocked,
    StoreError,
    StorePermissionError,
    apply_batch,
    connect_db,
    open_store,
    snapshot_path_for,
    write_snapshot,
)
from ._store import applied_seq as applied_seq_of

__all__ = [
    "ARROW",
    "GENERATIONS_SQL",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SNAPSHOT_STORAGE_VERSION",
    "TABLES",
    "DatabaseLocked",
    "Generations",
    "Materializer",
    "MaterializerStats",
    "QueryError",
    "QueryResult",
    "Rows",
    "StoreError",
    "StorePermissionError",
    "applied_seq_of",
    "apply_batch",
    "check_read_only",
    "connect_db",
    "decode_batch",
    "generations",
    "lock_down",
    "migrate",
    "open_store",
    "project",
    "rebuild",
    "remote_query",
    "run_read_only",
    "snapshot_path_for",
    "snapshot_scratch_paths",
    "write_snapshot",
]
