"""The one place a failure a user can cause becomes one ``Error: ...`` line and exit status 1.

:class:`HiveGroup` is the ``hive`` click group: its ``invoke`` maps the exceptions any command
may raise (an invalid or unreachable NATS URL, a file that is not DuckDB, a locked database, a
full or missing stream, a missing or unreadable file, a full disk) to a message, so commands
need no try/except of their own. Anything else is reported in one line too, with the traceback
only under ``--log-level debug`` (or ``HIVE_LOG_LEVEL=debug``).
"""

from __future__ import annotations

import errno
import os
from typing import Any

import click
import duckdb
import nats.errors
import nats.js.errors

import streams

from ._query import QueryError
from ._status import JetStreamUnavailable
from ._store import StoreError


def _nats_url(args: list[str]) -> str:
    """The ``--nats`` URL among a command line's arguments, else the default one."""
    for i, a in enumerate(args):
        if a == "--nats" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--nats="):
            return a.split("=", 1)[1]
    return streams.default_url()


def _duckdb_message(e: duckdb.Error) -> str:
    text = str(e)
    if "not a valid DuckDB database file" in text:
        path = text.split('"')[1] if text.count('"') >= 2 else "the file"
        return f"{path} is not a DuckDB database (refusing to touch it)"
    if "Conflicting lock" in text or "Could not set lock" in text:
        return f"the database is locked by another process: {text.splitlines()[0]}"
    return f"DuckDB: {text.splitlines()[0] if text else type(e).__name__}"


def _os_message(e: OSError, url: str) -> str:
    unreachable = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH)
    if isinstance(e, ConnectionError) or e.errno in unreachable:
        return f"cannot reach NATS at {url}: {e.strerror or e}"
    where = f"{e.filename}: " if e.filename else ""
    if isinstance(e, PermissionError):
        return f"{where}permission denied"
    if isinstance(e, FileNotFoundError):
        return f"{where}no such file or directory"
    if e.errno == errno.ENOSPC:
        return f"{where}no space left on device"
    if e.errno == errno.EROFS:
        return f"{where}read-only file system"
    return f"{where}{e.strerror or e}"


def describe(e: BaseException, args: list[str]) -> str | None:
    """The one-line message for an error a user can cause, or None for an unexpected one."""
    url = _nats_url(args)
    if isinstance(
        e, StoreError | QueryError | streams.ServerError | streams.PublishError | JetStreamUnavailable
    ):
        return str(e)
    if isinstance(e, duckdb.Error):
        return _duckdb_message(e)
    if isinstance(e, nats.errors.NoServersError):
        return f"cannot reach NATS at {url}: no server answered"
    if isinstance(e, nats.errors.AuthorizationError):
        return f"NATS at {url} refused the login: check the credentials (HIVE_NATS_CREDENTIALS)"
    if isinstance(e, nats.errors.TimeoutError):
        return f"NATS at {url} did not answer in time"
    if isinstance(e, nats.js.errors.APIError):
        return f"JetStream refused: {e.description or e}"
    if isinstance(e, nats.errors.Error) and "invalid connect url" in str(e):
        return f"invalid NATS URL {url!r}: expected nats://host:port with a port in 1-65535"
    if isinstance(e, nats.errors.Error):
        return f"NATS at {url}: {e}"
    if isinstance(e, OSError):
        return _os_message(e, url)
    if isinstance(e, TimeoutError):
        return "timed out"
    return None


def _debug(ctx: click.Context) -> bool:
    level = (ctx.params.get("log_level") or os.environ.get("HIVE_LOG_LEVEL") or "").lower()
    return level == "debug"


class HiveGroup(click.Group):
    """A click group whose ``invoke`` turns user-caused failures into one ``Error:`` line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Parse as click does, keeping the raw arguments (messages name the ``--nats`` URL)."""
        ctx.meta["hive.args"] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; map known failures to a :class:`click.ClickException` (exit 1)."""
        args: list[str] = ctx.meta.get("hive.args", [])
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:
            message = describe(e, args)
            if message is None:
                if _debug(ctx):
                    raise
                message = f"unexpected {type(e).__name__}: {e} (run with --log-level debug for the traceback)"
            raise click.ClickException(message) from None
