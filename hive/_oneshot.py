"""Connecting for one-shot CLI commands: fail fast, with a message, when NATS is not there."""

from __future__ import annotations

from typing import Any

import click

import streams


async def connect_once(url: str, name: str) -> Any:
    """A connection that does not retry; an unreachable server is a ``ClickException`` naming the URL."""
    import nats.errors

    async def quiet(_exc: Exception) -> None:  # the failure is reported once, below, not as tracebacks
        return None

    try:
        return await streams.connect(
            url, name=name, max_reconnect_attempts=1, connect_timeout=3, allow_reconnect=False, error_cb=quiet
        )
    except (nats.errors.NoServersError, OSError, TimeoutError) as e:
        raise click.ClickException(f"cannot connect to NATS at {url}: {e or type(e).__name__}") from None
