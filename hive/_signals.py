"""Stopping long-running commands on SIGINT/SIGTERM, even while they still try to connect.

A service's own ``stop()`` asks it to finish the work in hand, but a coroutine still inside
``nats.connect`` (which retries forever) or a retry loop never looks at it. :func:`until_signal`
calls ``stop()`` and, when the service has not started (``started()`` is false) or a second
signal comes, cancels it outright; a started service that has not finished ``grace_s`` after
the signal is cancelled too. A command stopped this way returns ``None``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

T = TypeVar("T")
log = structlog.get_logger("hive.signals")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
DEFAULT_GRACE_S = 10.0


def _always() -> bool:
    return True


async def until_signal(
    main: Callable[[], Awaitable[T]],
    on_stop: Callable[[], None],
    *,
    started: Callable[[], bool] = _always,
    grace_s: float = DEFAULT_GRACE_S,
) -> T | None:
    """Run ``main()`` until it returns; SIGINT/SIGTERM call ``on_stop`` and bound the wait.

    ``started``: whether ``main`` is past connecting (a graceful stop can work); before that a
    signal cancels at once. Returns ``main``'s result, or ``None`` when a signal cancelled it.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(main())
    signals: list[signal.Signals] = []

    def handle(sig: signal.Signals) -> None:
        signals.append(sig)
        log.info("stop_requested", signal=sig.name)
        with contextlib.suppress(Exception):
            on_stop()
        if len(signals) > 1 or not started():
            task.cancel()
        else:
            loop.call_later(grace_s, task.cancel)

    def install() -> None:
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, handle, sig)

    install()
    await asyncio.sleep(0)  # ``main`` may install its own handlers in its first step: take over again
    install()
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if signals and task.cancelled() and (current is None or not current.cancelling()):
            log.info("stopped_by_signal", signal=signals[0].name)
            return None
        raise
    finally:
        for sig in STOP_SIGNALS:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
