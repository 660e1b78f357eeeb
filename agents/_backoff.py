"""Riding out NATS pauses: retry an operation on a timeout or a lost connection, with capped
exponential backoff and jitter, for a bounded patience.

A server paused (SIGSTOP, a long GC, a network partition) or restarting makes every request
time out, or answer "no responders" / 503 while JetStream comes back. Those failures are
*transient*: the same operation succeeds once the server answers again, and a publish retried
with the same ``Nats-Msg-Id`` is deduplicated by the stream. Anything else (a refusal, a bad
request, a permission error) is raised at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
import structlog

T = TypeVar("T")
log = structlog.get_logger("agents.backoff")

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,  # asyncio's, and nats.errors.TimeoutError (a subclass)
    nats.errors.NoRespondersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoServersError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
    ConnectionError,
)
"""Errors a NATS operation raises while the server is paused, restarting or unreachable."""

TRANSIENT_API_ERR_CODES = frozenset({10158})
"""JetStream API errors that mean "try again": 10158 is "duplicate message id is in process", the
answer to a publish retried (same ``Nats-Msg-Id``) while the first attempt is still being
replicated, as after a cluster node comes back from a pause. The retry gets a duplicate ack."""


def is_transient(e: BaseException) -> bool:
    """Whether ``e`` is a transient NATS failure: one of :data:`TRANSIENT_ERRORS`, or a JetStream
    API error whose code is in :data:`TRANSIENT_API_ERR_CODES`."""
    if isinstance(e, TRANSIENT_ERRORS):
        return True
    return isinstance(e, nats.js.errors.APIError) and getattr(e, "err_code", None) in TRANSIENT_API_ERR_CODES


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff: waits ``first_s``, doubling up to ``cap_s`` (each with jitter
    in [50%, 100%]), and gives up (re-raises) once ``patience_s`` has passed since the first try."""

    first_s: float = 0.2
    cap_s: float = 5.0
    patience_s: float = 300.0

    def delay(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (1-based)."""
        base = min(self.cap_s, self.first_s * 2 ** min(attempt - 1, 30))
        return base * (0.5 + random.random() / 2)


async def retry_transient(
    op: Callable[[], Awaitable[T]],
    *,
    what: str,
    backoff: Backoff | None = None,
    logger: Any = None,
    transient: Callable[[BaseException], bool] | None = None,
) -> T:
    """``await op()``, retrying it on a transient NATS error (see :data:`TRANSIENT_ERRORS`, or
    ``transient(e)`` when given) until it succeeds or ``backoff.patience_s`` runs out."""
    policy = backoff or Backoff()
    deadline = time.monotonic() + policy.patience_s
    attempt = 0
    while True:
        try:
            return await op()
        except Exception as e:
            if not (is_transient(e) or (transient is not None and transient(e))):
                raise
            attempt += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            wait = min(policy.delay(attempt), left)
            (logger or log).warning(
                "nats_retry", what=what, attempt=attempt, error=f"{type(e).__name__}: {e}", retry_in_s=wait
            )
            await asyncio.sleep(wait)
