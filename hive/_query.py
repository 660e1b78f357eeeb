"""Read-only SQL: what the query service accepts, how it bounds a request, and its time limits.

The service answers on :data:`streams.QUERY_SUBJECT`. A request is JSON
``{"sql": "...", "params": [...], "timeout_s": 10, "max_rows": 10000}`` (or the SQL as plain
text; ``params`` bind ``?`` placeholders); the reply is
``{"columns": [...], "types": [...], "rows": [[...]], "truncated": false, "elapsed_ms": 1.2}`` or
``{"error": "..."}``. Every field of a request is untrusted and checked (:func:`parse_request`).

A query reads the hive's tables and nothing else, in two layers:

* :func:`check_read_only` lets through exactly one plain ``SELECT`` as DuckDB's own parser sees
  it (``SHOW``, ``DESCRIBE``, ``SUMMARIZE``, ``FROM t`` and ``VALUES`` parse as ``SELECT``).
  ``EXPLAIN`` is refused whole: ``EXPLAIN ANALYZE`` runs the statement inside it, and DuckDB's
  parser API reports neither that statement nor the ``ANALYZE`` flag (``json_serialize_sql``
  serializes only ``SELECT``), so telling a harmless ``EXPLAIN`` apart would mean parsing SQL
  text by hand. The ``SELECT``'s syntax tree (``json_serialize_sql``) is then walked: table
  functions must be on a short list of generators and catalog views (no file readers, no
  ``query()`` that runs SQL from a string, no ``checkpoint()``), and the few scalar functions
  with side effects are refused.
* The database itself is locked down (:func:`hive.lock_down`): no file, network or extension
  access, and settings cannot change. That holds whatever the first layer misses.

Statements run on a cursor of their own inside a transaction that is rolled back, so nothing a
query does can persist, and are interrupted at their time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import duckdb
import orjson

from streams import DEFAULT_MAX_ROWS, DEFAULT_TIMEOUT_S, QueryError, QueryResult, remote_query

__all__ = [
    "DEFAULT_MAX_ROWS",
    "DEFAULT_TIMEOUT_S",
    "MAX_PARAMS",
    "MAX_ROWS",
    "MAX_SQL_CHARS",
    "MAX_TIMEOUT_S",
    "QueryError",
    "QueryRequest",
    "QueryResult",
    "answer_request",
    "check_read_only",
    "parse_request",
    "remote_query",
    "run_read_only",
    "run_with_deadline",
    "run_with_time_limit",
]

MAX_TIMEOUT_S = 300.0
"""The longest time limit a request may ask for (seconds)."""
MAX_ROWS = 1_000_000
"""The most rows a request may ask for."""
MAX_PARAMS = 1_000
"""The most ``?`` parameters (and the most items of one list parameter) a request may bind."""
MAX_SQL_CHARS = 100_000
"""The longest SQL text (and the longest string parameter) a request may carry."""

_REFUSED = "refused (read-only)"
_TABLE_FUNCTIONS = frozenset(
    {
        "range",
        "generate_series",
        "unnest",
        "repeat",
        "repeat_row",
        "json_each",
        "json_tree",
        "summary",
        "duckdb_columns",
        "duckdb_constraints",
        "duckdb_databases",
        "duckdb_dependencies",
        "duckdb_functions",
        "duckdb_indexes",
        "duckdb_keywords",
        "duckdb_schemas",
        "duckdb_sequences",
        "duckdb_settings",
        "duckdb_tables",
        "duckdb_types",
        "duckdb_views",
        "pragma_database_size",
        "pragma_show",
        "pragma_table_info",
        "pragma_version",
        "pg_timezone_names",
    }
)
"""Table functions a query may call: generators and views of the catalog, none of which reads a
file, runs SQL given as a string or changes anything."""
_SIDE_EFFECT_FUNCTIONS = frozenset({"nextval", "setval", "setseed", "write_log", "getenv"})
"""Scalar functions that change state outside the rolled-back transaction (or read the
environment, where a build has ``getenv``)."""


def _syntax_tree(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    """DuckDB's own serialized syntax tree of a SELECT (``json_serialize_sql``)."""
    try:
        row = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    except duckdb.Error as e:
        raise QueryError(f"SQL error: {e}") from None
    try:
        tree = orjson.loads(row[0]) if row else None
    except orjson.JSONDecodeError:
        raise QueryError(f"{_REFUSED}: the statement is too deeply nested to check") from None
    if not isinstance(tree, dict) or tree.get("error"):
        detail = tree.get("error_message", "") if isinstance(tree, dict) else ""
        raise QueryError(f"{_REFUSED}: only one plain SELECT is accepted ({detail})")
    return tree


def _check_functions(tree: Any) -> None:
    """Walk the syntax tree (iteratively: any depth) and refuse functions off the allowed list."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        if node.get("type") == "TABLE_FUNCTION":
            fn = node.get("function")
            name = str(fn.get("function_name", "")).lower() if isinstance(fn, dict) else ""
            if name not in _TABLE_FUNCTIONS:
                raise QueryError(
                    f"{_REFUSED}: table function {name or '?'}() is not allowed; queries read the "
                    f"hive's tables (allowed table functions: {', '.join(sorted(_TABLE_FUNCTIONS))})"
                )
        elif node.get("class") == "FUNCTION":
            name = str(node.get("function_name", "")).lower()
            if name in _SIDE_EFFECT_FUNCTIONS:
                raise QueryError(f"{_REFUSED}: function {name}() is not allowed in a query")
        stack.extend(node.values())


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but one plain SELECT over the hive's tables (raises :class:`QueryError`)."""
    if len(sql) > MAX_SQL_CHARS:
        raise QueryError(f"{_REFUSED}: sql is longer than {MAX_SQL_CHARS} characters")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"SQL error: {e}") from None
    if len(statements) != 1:
        raise QueryError(f"{_REFUSED}: one statement per query, got {len(statements)}")
    kind = statements[0].type
    if kind == duckdb.StatementType.EXPLAIN:
        raise QueryError(
            f"{_REFUSED}: EXPLAIN is not accepted (EXPLAIN ANALYZE runs the statement inside it); "
            "send the plain SELECT, or EXPLAIN it on a snapshot in the duckdb CLI"
        )
    if kind != duckdb.StatementType.SELECT:
        raise QueryError(f"{_REFUSED}: {kind.name} statements are not accepted, only one plain SELECT")
    _check_functions(_syntax_tree(con, sql))


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
    except duckdb.PermissionException as e:
        raise QueryError(f"{_REFUSED}: no file, network or extension access ({e})") from None
    except duckdb.Error as e:
        raise QueryError(f"SQL error: {e}") from None
    finally:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
    truncated = len(rows) > max_rows
    return QueryResult(
        columns, types, [list(r) for r in rows[:max_rows]], truncated, (time.perf_counter() - t0) * 1000
    )


def run_with_deadline(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    *,
    timeout_s: float,
    max_rows: int = DEFAULT_MAX_ROWS,
    params: list[Any] | None = None,
) -> QueryResult:
    """:func:`run_read_only`, interrupted from a timer thread once ``timeout_s`` has passed
    (for a caller without an event loop: ``hive query --db``)."""
    fired = threading.Event()

    def cut_off() -> None:
        fired.set()
        con.interrupt()

    timer = threading.Timer(timeout_s, cut_off)
    timer.daemon = True
    timer.start()
    try:
        return run_read_only(con, sql, max_rows=max_rows, params=params)
    except QueryError:
        if fired.is_set():
            raise QueryError(f"query cut off after {timeout_s:g}s time limit") from None
        raise
    finally:
        timer.cancel()


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


@dataclass(frozen=True)
class QueryRequest:
    """A checked request: the SQL, its parameters, the time limit and the row limit."""

    sql: str
    params: list[Any] | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_rows: int = DEFAULT_MAX_ROWS


def _number(value: Any, name: str, lo: float, hi: float, *, integer: bool) -> Any:
    """``value`` if it is a number (an integer when ``integer``) in ``(lo, hi]``; else QueryError."""
    number = (
        value
        if isinstance(value, int | float)
        and not isinstance(value, bool)
        and (isinstance(value, int) or not integer)
        else None
    )
    if number is None or not math.isfinite(number) or not lo < number <= hi:
        what = "an integer" if integer else "a number of seconds"
        raise QueryError(f"{name} must be {what} in ({lo:g}, {hi:g}], got {value!r:.40}")
    return number


def _scalar_param(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_SQL_CHARS
    return value is None or isinstance(value, bool | int | float)


def _params(value: Any) -> list[Any] | None:
    """The request's ``params``: a list of at most MAX_PARAMS scalars or flat lists of scalars."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise QueryError(f"params must be a list, got {type(value).__name__}")
    if len(value) > MAX_PARAMS:
        raise QueryError(f"params may hold at most {MAX_PARAMS} values, got {len(value)}")
    for i, p in enumerate(value):
        ok = _scalar_param(p) or (
            isinstance(p, list) and len(p) <= MAX_PARAMS and all(_scalar_param(x) for x in p)
        )
        if not ok:
            raise QueryError(
                f"params[{i}] must be null, a boolean, a number, a string (at most {MAX_SQL_CHARS} "
                f"characters) or a list of at most {MAX_PARAMS} of those, got {type(p).__name__}"
            )
    return value or None


def parse_request(data: bytes) -> QueryRequest:
    """Check an untrusted request body (JSON, or plain SQL text) field by field; raises
    :class:`QueryError` naming the field that is wrong."""
    try:
        req: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        req = data.decode("utf-8", errors="replace")
    if isinstance(req, str):
        req = {"sql": req}
    if not isinstance(req, dict) or not isinstance(req.get("sql"), str):
        raise QueryError('request must be {"sql": "..."} or plain SQL text')
    sql = req["sql"]
    if len(sql) > MAX_SQL_CHARS:
        raise QueryError(f"sql is longer than {MAX_SQL_CHARS} characters")
    timeout_s = _number(req.get("timeout_s", DEFAULT_TIMEOUT_S), "timeout_s", 0, MAX_TIMEOUT_S, integer=False)
    max_rows = _number(req.get("max_rows", DEFAULT_MAX_ROWS), "max_rows", 0, MAX_ROWS, integer=True)
    return QueryRequest(sql, _params(req.get("params")), float(timeout_s), int(max_rows))


async def answer_request(con: duckdb.DuckDBPyConnection, data: bytes, *, max_payload: int) -> bytes:
    """The query service's reply to one request body: the result (rows halved until it fits in
    ``max_payload`` bytes, marked truncated) or ``{"error": ...}``. Never raises."""
    try:
        req = parse_request(data)
        result = await run_with_time_limit(
            con, req.sql, timeout_s=req.timeout_s, max_rows=req.max_rows, params=req.params
        )
        payload = result.to_json()
        while len(payload) > max_payload and result.rows:
            result.rows = result.rows[: len(result.rows) // 2]
            result.truncated = True
            payload = result.to_json()
        return payload
    except QueryError as e:
        return orjson.dumps({"error": str(e)})
    except Exception as e:  # the service must answer, and survive, whatever the query did
        return orjson.dumps({"error": f"{type(e).__name__}: {e}"})
