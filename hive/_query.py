"""Read-only SQL: the checks and the time limit the query service applies, and its NATS client.

The service answers on :data:`streams.QUERY_SUBJECT`. A request is JSON
``{"sql": "...", "timeout_s": 10, "max_rows": 10000}`` (or the SQL as plain text); the reply is
``{"columns": [...], "types": [...], "rows": [[...]], "truncated": false, "elapsed_ms": 1.2}`` or
``{"error": "..."}``. Only one ``SELECT``/``EXPLAIN`` statement is accepted (``SHOW``,
``DESCRIBE`` and ``SUMMARIZE`` parse as ``SELECT``), and it runs inside a transaction that is
rolled back, so nothing a query does can persist.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import duckdb
import orjson
from nats.aio.client import Client

from streams import QUERY_SUBJECT

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_ROWS = 10_000
_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


class QueryError(RuntimeError):
    """A query was refused, failed or was cut off; the message says which and why."""


@dataclass
class QueryResult:
    """Columns, their DuckDB types, the rows, and whether ``max_rows`` cut the result."""

    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    truncated: bool = False
    elapsed_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """The wire form of this result."""
        return orjson.dumps(
            {
                "columns": self.columns,
                "types": self.types,
                "rows": self.rows,
                "truncated": self.truncated,
                "elapsed_ms": round(self.elapsed_ms, 3),
            },
            default=_jsonable,
            option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS,
        )

    @classmethod
    def from_json(cls, data: bytes) -> QueryResult:
        """Parse a reply; raise :class:`QueryError` if it carries an error."""
        d = orjson.loads(data)
        if "error" in d:
            raise QueryError(d["error"])
        return cls(d["columns"], d["types"], d["rows"], d.get("truncated", False), d.get("elapsed_ms", 0.0))


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    return str(value)


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
    con: duckdb.DuckDBPyConnection, sql: str, *, max_rows: int = DEFAULT_MAX_ROWS
) -> QueryResult:
    """Run one read statement on ``con`` (a cursor of its own) in a transaction that is rolled back."""
    check_read_only(con, sql)
    t0 = time.perf_counter()
    con.execute("BEGIN")
    try:
        rel = con.execute(sql)
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
    con: duckdb.DuckDBPyConnection, sql: str, *, timeout_s: float, max_rows: int
) -> QueryResult:
    """Run a read-only query in a worker thread on its own cursor; interrupt it past ``timeout_s``."""
    cur = con.cursor()
    task = asyncio.ensure_future(asyncio.to_thread(run_read_only, cur, sql, max_rows=max_rows))
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


async def remote_query(
    nc: Client,
    sql: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
    subject: str = QUERY_SUBJECT,
) -> QueryResult:
    """Ask the materializer's query service; raises :class:`QueryError` on refusal or failure."""
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    payload = orjson.dumps({"sql": sql, "timeout_s": timeout_s, "max_rows": max_rows})
    try:
        reply = await nc.request(subject, payload, timeout=timeout_s + 5)
    except NoRespondersError:
        raise QueryError(
            "no query service is answering: is `hive materialize` (or `hive up`) running?"
        ) from None
    except NatsTimeout:
        raise QueryError("the query service did not answer in time") from None
    return QueryResult.from_json(reply.data)
