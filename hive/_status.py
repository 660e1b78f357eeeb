"""``hive status``: the log, the materialized state, the lag, dead letters and durability."""

from __future__ import annotations

import http.client
import json
import urllib.request
from typing import Any

import orjson
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NotFoundError, ServiceUnavailableError

from streams import STATUS_SUBJECT, STREAM

from ._query import QueryError, remote_query

COUNTS_SQL = """
SELECT 'ExperimentStarted' AS kind, count(*) AS n FROM experiment_starts
UNION ALL SELECT 'ExperimentFinished', count(*) FROM experiments
UNION ALL SELECT 'DeploymentFinished', count(*) FROM deployments
UNION ALL SELECT 'GuidancePublished', count(*) FROM guidance
UNION ALL SELECT 'ModelPublished', count(*) FROM models WHERE decision = 'published'
UNION ALL SELECT 'ModelRejected', count(*) FROM models WHERE decision = 'rejected'
UNION ALL SELECT 'agents', count(*) FROM agents
UNION ALL SELECT 'dead_letters', count(*) FROM dead_letters
"""


def durability_from_monitor(monitor_url: str | None) -> dict[str, Any]:
    """Read the server's fsync setting from its monitoring endpoint (``/varz``)."""
    if not monitor_url:
        return {"setting": "unknown", "detail": "no monitoring URL (pass --monitor http://host:8222)"}
    try:
        with urllib.request.urlopen(monitor_url.rstrip("/") + "/varz", timeout=2) as r:
            varz = json.load(r)
        cfg = (varz.get("jetstream") or {}).get("config") or {}
    except (OSError, ValueError, AttributeError, http.client.HTTPException) as e:
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        return {"setting": "unknown", "detail": f"no usable monitoring endpoint at {monitor_url}: {detail}"}
    if cfg.get("sync_always"):
        return {
            "setting": "always",
            "detail": "fsync before every ack: survives power loss, slower publishing",
        }
    secs = cfg.get("sync_interval", 120_000_000_000) / 1e9
    return {
        "setting": f"every {secs:g}s",
        "detail": f"fsync every {secs:g}s: a process crash loses nothing; power loss can lose {secs:g}s",
    }


class JetStreamUnavailable(RuntimeError):
    """The server answers, but not the JetStream API (JetStream off, or not ready yet)."""


async def _stream_status(nc: Client) -> dict[str, Any]:
    """The HIVE stream's sequence and size; ``exists: False`` (not created here) when absent."""
    try:
        info = await nc.jetstream(timeout=5).stream_info(STREAM)
    except NotFoundError:
        return {
            "name": STREAM,
            "exists": False,
            "last_seq": 0,
            "messages": 0,
            "bytes": 0,
            "duplicate_window_s": None,
            "detail": "no HIVE stream yet (the materializer or the first agent creates it)",
        }
    except (NoRespondersError, ServiceUnavailableError, NatsTimeout) as e:
        raise JetStreamUnavailable(
            f"JetStream does not answer on this server ({e}): is it enabled (nats-server -js) and ready?"
        ) from None
    return {
        "name": STREAM,
        "exists": True,
        "last_seq": info.state.last_seq,
        "messages": info.state.messages,
        "bytes": info.state.bytes,
        "duplicate_window_s": info.config.duplicate_window,
    }


async def _materializer_status(nc: Client, last_seq: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """What the running materializer reports (tolerating fields it lacks), and the row counts."""
    try:
        reply = await nc.request(STATUS_SUBJECT, b"{}", timeout=2)
    except (NoRespondersError, NatsTimeout):
        return {"running": False, "detail": "no materializer answers (start `hive materialize`)"}, None
    try:
        mat = orjson.loads(reply.data)
    except orjson.JSONDecodeError:
        mat = None
    if not isinstance(mat, dict):
        return {"running": True, "detail": f"unreadable status reply: {reply.data[:200]!r}"}, None
    applied = mat.get("applied_seq")
    mat["lag"] = max(0, last_seq - applied) if isinstance(applied, int) else None
    try:
        counts = await remote_query(nc, COUNTS_SQL, timeout_s=5)
        return {"running": True, **mat}, {str(row[0]): row[1] for row in counts.rows}
    except (QueryError, NoRespondersError, NatsTimeout) as e:
        return {"running": True, **mat}, {"error": str(e) or type(e).__name__}


async def gather_status(nc: Client, monitor_url: str | None = None) -> dict[str, Any]:
    """Everything ``hive status`` shows, as one dict; parts the server or the materializer do not
    have are reported as such (``exists: False``, ``running: False``, a ``detail``)."""
    stream = await _stream_status(nc)
    out: dict[str, Any] = {"stream": stream, "durability": durability_from_monitor(monitor_url)}
    out["materializer"], counts = await _materializer_status(nc, stream["last_seq"])
    if counts is not None:
        out["counts"] = counts
    return out
