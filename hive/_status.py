"""``hive status``: the log, the materialized state, the lag, dead letters and durability."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import orjson
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from streams import STATUS_SUBJECT, STREAM, ensure_stream

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
            cfg = json.load(r).get("jetstream", {}).get("config", {})
    except OSError as e:
        return {"setting": "unknown", "detail": f"monitoring endpoint unreachable: {e}"}
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


async def gather_status(nc: Client, monitor_url: str | None = None) -> dict[str, Any]:
    """Everything ``hive status`` shows, as one dict."""
    js = nc.jetstream()
    await ensure_stream(js)
    info = await js.stream_info(STREAM)
    out: dict[str, Any] = {
        "stream": {
            "name": STREAM,
            "last_seq": info.state.last_seq,
            "messages": info.state.messages,
            "bytes": info.state.bytes,
            "duplicate_window_s": info.config.duplicate_window,
        },
        "durability": durability_from_monitor(monitor_url),
    }
    try:
        reply = await nc.request(STATUS_SUBJECT, b"{}", timeout=2)
        mat = orjson.loads(reply.data)
        mat["lag"] = max(0, info.state.last_seq - mat["applied_seq"])
        out["materializer"] = {"running": True, **mat}
        counts = await remote_query(nc, COUNTS_SQL, timeout_s=5)
        out["counts"] = {row[0]: row[1] for row in counts.rows}
    except (NoRespondersError, NatsTimeout):
        out["materializer"] = {
            "running": False,
            "detail": "no materializer answers (start `hive materialize`)",
        }
    except QueryError as e:
        out["counts"] = {"error": str(e)}
    return out
