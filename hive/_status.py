"""``hive status``: the log, the materialized state, the lag, dead letters and durability."""

from __future__ import annotations

import http.client
import json
import os
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NotFoundError, ServiceUnavailableError
from rich.table import Table

from streams import DEFAULT_URL, STATUS_SUBJECT, STREAM, server_list

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


MONITOR_FILE = "nats.monitor"
"""``<data>/nats.monitor``: the monitoring URL(s) of the server ``hive up``/``hive server`` started
for that state directory, one a line, beside ``nats.url`` (its client URL)."""
DEFAULT_MONITOR_PORT = 8222


def _read_lines(path: Path) -> list[str]:
    try:
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except OSError:
        return []


def resolve_endpoints(url: str | None, data_dir: str | Path, monitor: str | None) -> tuple[str, list[str]]:
    """The NATS URL and the monitoring URL(s) ``hive status`` uses.

    URL: ``url`` if given, else ``$HIVE_NATS_URL``, else the server recorded in ``<data>/nats.url``,
    else the default. Monitoring: ``monitor`` if given (comma-separated for several); else
    ``<data>/nats.monitor`` when ``<data>/nats.url`` names the same server(s) as URL; else port
    8222 on each server's host.
    """
    data = Path(data_dir)
    recorded = ",".join(_read_lines(data / "nats.url"))
    url = url or os.environ.get("HIVE_NATS_URL") or recorded or DEFAULT_URL
    if monitor:
        return url, [m.strip() for m in monitor.split(",") if m.strip()]
    monitors = _read_lines(data / MONITOR_FILE)
    if monitors and recorded and set(server_list(recorded)) == set(server_list(url)):
        return url, monitors
    hosts: list[str] = []
    for server in server_list(url):
        host = urlparse(server if "://" in server else f"nats://{server}").hostname or "127.0.0.1"
        if host not in hosts:
            hosts.append(host)
    return url, [f"http://{h}:{DEFAULT_MONITOR_PORT}" for h in hosts]


def durability_from_monitor(monitor_url: str | list[str] | None) -> dict[str, Any]:
    """Read the server's fsync setting from its monitoring endpoint (``/varz``); with several URLs
    (a cluster's nodes) the first that answers."""
    urls = [monitor_url] if isinstance(monitor_url, str) else list(monitor_url or [])
    if not urls:
        return {"setting": "unknown", "detail": "no monitoring URL (pass --monitor http://host:8222)"}
    errors = []
    for url in urls:
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/varz", timeout=2) as r:
                varz = json.load(r)
            cfg = (varz.get("jetstream") or {}).get("config") or {}
        except (OSError, ValueError, AttributeError, http.client.HTTPException) as e:
            errors.append(f"{url}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}")
            continue
        if cfg.get("sync_always"):
            return {
                "setting": "always",
                "detail": "before every ack: survives power loss, slower publishing",
                "monitor": url,
            }
        secs = cfg.get("sync_interval", 120_000_000_000) / 1e9
        return {
            "setting": f"every {secs:g}s",
            "detail": f"a process crash loses nothing; power loss can lose up to {secs:g}s of acknowledged "
            "events",
            "monitor": url,
        }
    return {"setting": "unknown", "detail": "no usable monitoring endpoint: " + "; ".join(errors)}


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
    out: dict[str, Any] = {
        "name": STREAM,
        "exists": True,
        "last_seq": info.state.last_seq,
        "messages": info.state.messages,
        "bytes": info.state.bytes,
        "duplicate_window_s": info.config.duplicate_window,
        "replicas": info.config.num_replicas or 1,
    }
    cluster = info.cluster
    if cluster is not None and cluster.name:  # a single server reports itself as leader, unnamed
        out["cluster"] = {
            "name": cluster.name,
            "leader": cluster.leader,
            "peers": [
                {"name": p.name, "current": bool(p.current), "offline": bool(p.offline), "lag": p.lag or 0}
                for p in cluster.replicas or []
            ],
        }
    return out


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


async def gather_status(nc: Client, monitor_url: str | list[str] | None = None) -> dict[str, Any]:
    """Everything ``hive status`` shows, as one dict; parts the server or the materializer do not
    have are reported as such (``exists: False``, ``running: False``, a ``detail``)."""
    stream = await _stream_status(nc)
    out: dict[str, Any] = {"stream": stream, "durability": durability_from_monitor(monitor_url)}
    out["materializer"], counts = await _materializer_status(nc, stream["last_seq"])
    if counts is not None:
        out["counts"] = counts
    return out


def _peer_state(p: dict[str, Any]) -> str:
    if p["offline"]:
        return "offline"
    return "current" if p["current"] else f"lag {p['lag']}"


def _stream_line(s: dict[str, Any]) -> str:
    line = f"{s['name']}: last seq {s['last_seq']}, {s['messages']} messages, {s['bytes']} bytes"
    line += f", {s.get('replicas', 1)} replica{'s' if s.get('replicas', 1) != 1 else ''}"
    c = s.get("cluster")
    if c:
        peers = ", ".join(f"{p['name']} ({_peer_state(p)})" for p in c["peers"])
        line += f"; leader {c.get('leader') or 'none'}" + (f", peers {peers}" if peers else "")
    return line


def status_table(st: dict[str, Any]) -> Table:
    """``hive status``'s table from :func:`gather_status`'s dict."""
    t = Table(title="hive status", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    s = st["stream"]
    if s.get("exists", True):
        t.add_row("stream", _stream_line(s))
    else:
        t.add_row("stream", f"{s['name']}: {s.get('detail', 'absent')}")
    m = st["materializer"]
    if m.get("running") and "applied_seq" in m:  # a materializer's reply may lack fields: show "?"
        t.add_row("materialized", f"seq {m['applied_seq']} (lag {m.get('lag', '?')}), db {m.get('db', '?')}")
        t.add_row("snapshot", f"{m.get('snapshot', '?')} (seq {m.get('snapshot_seq', '?')})")
    else:
        t.add_row("materialized", m.get("detail", "a materializer answers, without its applied sequence"))
    for k, v in st.get("counts", {}).items():
        t.add_row(f"  {k}", str(v))
    d = st["durability"]
    t.add_row("durability", f"fsync {d['setting']}: {d['detail']}")
    return t
