"""Logging setup: structlog, human-readable on a terminal, JSON lines otherwise."""

from __future__ import annotations

import logging
import os
import sys

import structlog


class _ToStructlog(logging.Handler):
    """Stdlib log records (nats-py's "encountered error" on every failed connect attempt) as one
    structlog line each: the error's type and message, its traceback only at debug level."""

    def __init__(self, with_traceback: bool) -> None:
        super().__init__()
        self.with_traceback = with_traceback

    def emit(self, record: logging.LogRecord) -> None:
        """Forward ``record`` to structlog under the record's logger name."""
        kw: dict[str, object] = {"logger": record.name}
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            kw["error"] = f"{type(exc).__name__}: {exc}"
            if self.with_traceback:
                kw["exc_info"] = record.exc_info
        structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **kw)


def configure_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Configure structlog once per process.

    ``fmt`` is ``console`` or ``json``; by default console on a terminal, JSON when piped
    (``HIVE_LOG_FORMAT`` overrides). Logs go to stderr so stdout stays clean for query output.
    Records of the stdlib ``logging`` module (nats-py's) go through structlog too, one line each.
    """
    level = (level or os.environ.get("HIVE_LOG_LEVEL", "info")).upper()
    fmt = fmt or os.environ.get("HIVE_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _ToStructlog)]
    root.addHandler(_ToStructlog(with_traceback=level == "DEBUG"))
    # Libraries' own chatter stays hidden below WARNING unless debugging, as before.
    root.setLevel(logging.DEBUG if level == "DEBUG" else max(logging.WARNING, getattr(logging, level, 0)))
