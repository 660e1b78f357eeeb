"""Connecting to NATS and provisioning the hive's stream idempotently."""

from __future__ import annotations

from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from ._events import MAX_EVENT_BYTES
from ._subjects import STREAM, STREAM_SUBJECTS

DEFAULT_URL = "nats://127.0.0.1:4222"


def default_url() -> str:
    """The NATS URL commands use unless told otherwise: ``$HIVE_NATS_URL`` or :data:`DEFAULT_URL`."""
    import os

    return os.environ.get("HIVE_NATS_URL", DEFAULT_URL)


DUPLICATE_WINDOW_S = 120.0


def server_list(url: str | list[str]) -> list[str]:
    """The server URLs in ``url``: a list, or one string of comma-separated URLs (a cluster)."""
    items = url if isinstance(url, list) else str(url).split(",")
    out = [u.strip() for u in items if u and u.strip()]
    if not out:
        raise ValueError("no NATS server URL given")
    return out


async def connect(url: str | list[str] = DEFAULT_URL, *, name: str = "hive", **kwargs: Any) -> Client:
    """Connect with reconnects forever (the log outlives any one connection).

    ``url`` may name several servers (a list, or comma-separated:
    ``nats://a:4222,nats://b:4222``): the client connects to one and fails over to the others.

    Without explicit credentials, the role's credentials come from the environment
    (``HIVE_NATS_CREDENTIALS`` or ``HIVE_NATS_USER``/``HIVE_NATS_PASSWORD``; see ``hive credentials``).

    Credentials and TLS options pass through to ``nats.connect`` (``user``, ``password``,
    ``user_credentials``, ``tls`` …); ``inbox_prefix`` keeps replies private to a role.
    """
    opts: dict[str, Any] = {
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 5,
        "allow_reconnect": True,
        # nats-py pings every 120 s by default, so a frozen server (SIGSTOP, a stalled VM) went
        # unnoticed for minutes; 5 s pings with 3 outstanding move a client to another cluster
        # node (or into reconnecting) within ~20 s.
        "ping_interval": 5,
        "max_outstanding_pings": 3,
    }
    if not ({"user", "password", "user_credentials", "nkeys_seed", "token"} & kwargs.keys()):
        from ._auth import connect_options_from_env  # the role's credentials, when the env names them

        opts.update(connect_options_from_env())
    opts.update(kwargs)
    servers = server_list(url)
    return await nats.connect(servers if len(servers) > 1 else servers[0], **opts)


def cluster_size(nc: Client) -> int:
    """How many servers the connected cluster has, as the server announced it (1 when not clustered).

    Read from the server's INFO: ``cluster`` names the cluster and ``connect_urls`` lists the
    client URLs of its servers (gossiped as they join).
    """
    info = getattr(nc, "_server_info", None) or {}
    if not info.get("cluster"):
        return 1
    urls = set(info.get("connect_urls") or [])
    return max(1, len(urls))


def default_replicas(nc: Client) -> int:
    """The replica count for the hive's stream and buckets: 3 on a cluster of three or more, else 1."""
    return 3 if cluster_size(nc) >= 3 else 1


def stream_config(*, duplicate_window: float = DUPLICATE_WINDOW_S, replicas: int = 1) -> StreamConfig:
    """The hive stream: file storage, kept forever (a rebuild replays from sequence 1)."""
    return StreamConfig(
        name=STREAM,
        description="hive event log: traces, agent lifecycle, models",
        subjects=list(STREAM_SUBJECTS),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=duplicate_window,
        # Larger than an event may be, so an oversize event is stored and dead-lettered, not lost.
        max_msg_size=max(16 * MAX_EVENT_BYTES, 1024 * 1024),
        num_replicas=replicas,
        allow_direct=True,
    )


async def ensure_stream(
    js: JetStreamContext, *, duplicate_window: float = DUPLICATE_WINDOW_S, replicas: int | None = None
) -> None:
    """Create the hive stream if it does not exist; safe to call from every process.

    ``replicas``: the new stream's replica count; ``None`` picks :func:`default_replicas` (R3 on
    a cluster of three or more nodes, R1 on a single server). An existing stream keeps its
    settings (an operator may have tuned its duplicate window or replicas); only missing hive
    subjects are added.
    """
    if replicas is None:
        replicas = default_replicas(js._nc)
    try:
        info = await js.stream_info(STREAM)
    except NotFoundError:
        try:
            await js.add_stream(stream_config(duplicate_window=duplicate_window, replicas=replicas))
            return
        except BadRequestError:  # created concurrently by another process
            info = await js.stream_info(STREAM)
    have = list(info.config.subjects or [])
    missing = [s for s in STREAM_SUBJECTS if s not in have]
    if missing:
        cfg = info.config
        cfg.subjects = have + missing
        await js.update_stream(cfg)
