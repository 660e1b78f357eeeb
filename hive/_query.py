"""Read-only SQL: the checks and the time limit the query service applies, and its NATS client.

The service answers on :data:`streams.QUERY_SUBJECT`. A request is JSON
``{"sql": "...", "params": [...], "timeout_s": 10, "max_rows": 10000}`` (or the SQL as plain
text; ``params`` bind ``?`` placeholders); the reply is
``{"columns": [...], "types": [...], "rows": [[...]], "truncated": false, "elapsed_ms": 1.2}`` or
``{"error": "..."}``. Only one ``SELECT``/``EXPLAIN`` statement is accepted (``SHOW``,
``DESCRIBE`` and ``SUMMARIZE`` parse as ``SELECT``), and it runs inside a transaction that is
rolled back, so nothing a query does can persist.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import duckdb

from streams import DEFAULT_MAX_ROWS, DEFAULT_TIMEOUT_S, QueryError, QueryResult, remote_query

__all__ = [
    "DEFAULT_MAX_ROWS",
    "DEFAULT_TIMEOUT_S",
    "QueryError",
    "QueryResult",
    "check_read_only",
    "remote_query",
    "run_read_only",
    "run_with_time_limit",
]
_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but one read statement (raises :class:`QueryError`)."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"SQL error: {e}") from None
    if len(statements) != 1:
        raise QueryError(f"exactly one statement per query, got {len(statements)}")
    kind = statements[0].type
    if kind not in _ALLOWED:
        raise QueryError(f"read-only: {kind.name} statements are refused (only SELECT/EXPLAIN)")


def run_read_only(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    params: list[Any] | None = None,
) -> QueryResult:
    """Run one read statement on ``con`` (a cursor of its own) in a transaction that is rolled back."""
    check_read_only(con, sql)
    t0 = time.perf_counter()
    con.execute("BEGIN")
    try:
        rel = con.execute(sql, params) if params else con.execute(sql)
        columns = [d[0] for d in rel.description or []]
        types = [str(d[1]) for d in rel.description or []]
        rows = rel.fetchmany(max_rows + 1)
    except duckdb.InterruptException:
        raise QueryError("query cut off: it ran past its time limit") from None
    except duckdb.Error as e:
        raise QueryError(f"SQL error: {e}") from None
    finally:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
    truncated = len(rows) > max_rows
    return QueryResult(
        columns, types, [list(r) for r in rows[:max_rows]], truncated, (time.perf_counter() - t0) * 1000
    )


async def run_with_time_limit(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    *,
    timeout_s: float,
    max_rows: int,
    params: list[Any] | None = None,
) -> QueryResult:
    """Run a read-only query in a worker thread on its own cursor; interrupt it past ``timeout_s``."""
    cur = con.cursor()
    task = asyncio.ensure_future(asyncio.to_thread(run_read_only, cur, sql, max_rows=max_rows, params=params))
    try:
        return await asyncio.wait_for(asyncio.shield(task), timeout_s)
    except TimeoutError:
        cur.interrupt()
        with contextlib.suppress(QueryError):
            await task
        raise QueryError(f"query cut off after {timeout_s:g}s time limit") from None
    finally:
        if task.done():
            cur.close()
