"""Client side of the materializer's read-only SQL service (NATS request/reply).

Wire format: a request is JSON ``{"sql": "...", "params": [...], "timeout_s": 10, "max_rows":
10000}``; a reply is ``{"columns": [...], "types": [...], "rows": [[...]], "truncated": false,
"elapsed_ms": 1.2}`` or ``{"error": "..."}``. Agents and tools use :func:`remote_query`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import orjson
from nats.aio.client import Client

from ._subjects import QUERY_SUBJECT

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_ROWS = 10_000


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


async def remote_query(
    nc: Client,
    sql: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
    subject: str = QUERY_SUBJECT,
    params: list[Any] | None = None,
) -> QueryResult:
    """Ask the materializer's query service; raises :class:`QueryError` on refusal or failure."""
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    payload = orjson.dumps({"sql": sql, "params": params or [], "timeout_s": timeout_s, "max_rows": max_rows})
    try:
        reply = await nc.request(subject, payload, timeout=timeout_s + 5)
    except NoRespondersError:
        raise QueryError(
            "no query service is answering: is `hive materialize` (or `hive up`) running?"
        ) from None
    except NatsTimeout:
        raise QueryError("the query service did not answer in time") from None
    return QueryResult.from_json(reply.data)
