"""Connecting for one-shot CLI commands: fail fast, with a message, when NATS is not there."""

from __future__ import annotations

from typing import Any

import click

import streams

RECONNECT_ATTEMPTS = 6
"""Connect (and reconnect) attempts a one-shot command makes before it gives up (~3 s)."""


async def _quiet(_exc: Exception) -> None:  # a failure is reported once, by the command, not as tracebacks
    return None


def one_shot_options() -> dict[str, Any]:
    """``streams.connect`` options for a command that must end: bounded connect and reconnect
    attempts, and no nats-py traceback per failed attempt."""
    return {
        "max_reconnect_attempts": RECONNECT_ATTEMPTS,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 3,
        "error_cb": _quiet,
    }


async def connect_once(url: str, name: str) -> Any:
    """A connection that does not retry; an unreachable server is a ``ClickException`` naming the URL."""
    import nats.errors

    try:
        return await streams.connect(
            url,
            name=name,
            max_reconnect_attempts=1,
            connect_timeout=3,
            allow_reconnect=False,
            error_cb=_quiet,
        )
    except (nats.errors.NoServersError, OSError, TimeoutError) as e:
        raise click.ClickException(f"cannot connect to NATS at {url}: {e or type(e).__name__}") from None
