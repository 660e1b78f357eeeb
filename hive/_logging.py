"""Logging setup: structlog, human-readable on a terminal, JSON lines otherwise."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Configure structlog once per process.

    ``fmt`` is ``console`` or ``json``; by default console on a terminal, JSON when piped
    (``HIVE_LOG_FORMAT`` overrides). Logs go to stderr so stdout stays clean for query output.
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
