"""Publishing events: one at a time (awaited ack) or pipelined in a bounded window of acks.

Every PubAck is checked. A subject no stream stores ("no responders") raises
:class:`NoStreamError`; a stream at its limits with ``discard=new`` raises
:class:`StreamFullError` with the server's description; an ack that does not come within the
timeout raises ``nats.errors.TimeoutError``. Nothing returns normally unless every event was
acknowledged (``ack.duplicate`` marks a retry the stream had already stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck

from ._codec import encode
from ._events import Event
from ._subjects import subject_for

DEFAULT_WINDOW = 512
"""Publishes in flight (sent, ack not yet seen) at most, per pipelined call."""
DEFAULT_ACK_TIMEOUT_S = 10.0

# JetStream error codes that always mean "no room": storage or memory resources exhausted. Stream
# limits with discard=new come back as 10077 (JSStreamStoreFailedF) with the store's words,
# "maximum messages exceeded" / "maximum bytes exceeded" (also per-subject limits).
_NO_ROOM_ERR_CODES = frozenset({10023, 10028, 10047})


class PublishError(Exception):
    """The stream did not accept a publish. ``subject`` is where it went; ``acked`` counts the
    events of the same call acknowledged before it (a pipelined call stops at the first refusal)."""

    def __init__(self, subject: str, message: str, *, acked: int = 0) -> None:
        Exception.__init__(self, message)  # not super(): nats-py's error classes take other arguments
        self.message = message
        self.subject = subject
        self.acked = acked

    def __str__(self) -> str:
        return self.message


class NoStreamError(PublishError, nats.js.errors.NoStreamResponseError):
    """No stream stores the subject (the server answered "no responders"): the stream does not
    exist, or JetStream is not (yet) available on the server."""

    def __init__(self, subject: str, *, acked: int = 0) -> None:
        PublishError.__init__(
            self,
            subject,
            f"no stream stores subject {subject!r} (no responders): is the HIVE stream created "
            "and JetStream enabled on the server?",
            acked=acked,
        )
        self.description = self.message

    def __str__(self) -> str:
        return self.message


class StreamFullError(PublishError, nats.js.errors.ServiceUnavailableError):
    """The stream is at its limits (``max_msgs``/``max_bytes`` with ``discard=new``, or the
    server's storage is exhausted) and refused the publish; ``description`` is the server's."""

    def __init__(self, subject: str, description: str, err_code: int | None, *, acked: int = 0) -> None:
        PublishError.__init__(
            self, subject, f"stream full: {description} (publishing to {subject!r})", acked=acked
        )
        self.code = 503
        self.err_code = err_code
        self.description = description
        self.stream = None
        self.seq = None

    def __str__(self) -> str:
        return self.message


def _is_full(err_code: int | None, description: str) -> bool:
    d = description.lower()
    return err_code in _NO_ROOM_ERR_CODES or ("maximum" in d and "exceeded" in d) or "no space" in d


def _refusal(subject: str, err: dict[str, Any]) -> Exception:
    """The exception for a JetStream ``{"error": ...}`` answer to a publish."""
    description = str(err.get("description", ""))
    err_code = err.get("err_code")
    if _is_full(err_code, description):
        return StreamFullError(subject, description, err_code)
    try:
        nats.js.errors.APIError.from_error(err)  # nats-py raises the typed error rather than return it
    except nats.js.errors.APIError as e:
        return e
    return nats.js.errors.APIError(**err)  # pragma: no cover - from_error always raises


def _translate(subject: str, e: Exception) -> Exception:
    """Map nats-py's publish errors to :class:`NoStreamError` / :class:`StreamFullError`."""
    if isinstance(e, PublishError):
        return e
    if isinstance(e, nats.js.errors.NoStreamResponseError | nats.errors.NoRespondersError):
        return NoStreamError(subject)
    if isinstance(e, nats.js.errors.APIError) and _is_full(e.err_code, e.description or ""):
        return StreamFullError(subject, e.description or "", e.err_code)
    return e


class Publisher:
    """Publishes events on their subjects with ``Nats-Msg-Id = event_id`` (server-side dedupe).

    ``publish`` awaits the stream's ack; ``publish_many``/``publish_acked`` pipeline: up to
    ``window`` publishes are in flight, each ack is checked in order, and the first refusal or
    missing ack raises (the rest of the call is not sent).
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        window: int = DEFAULT_WINDOW,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT_S,
    ) -> None:
        self.js = js
        self.window = max(1, window)
        self.ack_timeout = ack_timeout
        self._nc: Client = js._nc  # the connection this JetStream context publishes on
        self._reply_prefix: str | None = None
        self._waiting: dict[str, tuple[str, asyncio.Future[PubAck]]] = {}
        self._next_token = 0

    async def publish(self, event: Event, *, timeout: float = DEFAULT_ACK_TIMEOUT_S) -> PubAck:
        """Publish one event and wait for the stream's ack (``ack.duplicate`` for a retry)."""
        return await self.publish_raw(subject_for(event), encode(event), event.event_id, timeout=timeout)

    async def publish_many(self, events: Iterable[Event]) -> int:
        """Publish many events pipelined; returns how many were acknowledged (all of them)."""
        n = 0

        def count(_ack: PubAck) -> None:
            nonlocal n
            n += 1

        await self._pipeline(((subject_for(e), encode(e), e.event_id) for e in events), count)
        return n

    async def publish_acked(self, events: Iterable[Event]) -> list[PubAck]:
        """Publish many events pipelined and return every ack, in order (``ack.duplicate`` marks retries)."""
        acks: list[PubAck] = []
        await self._pipeline(((subject_for(e), encode(e), e.event_id) for e in events), acks.append)
        return acks

    async def publish_raw(
        self, subject: str, data: bytes, msg_id: str | None = None, *, timeout: float = DEFAULT_ACK_TIMEOUT_S
    ) -> PubAck:
        """Publish bytes as they are (for tools replaying logs or other-language publishers)."""
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        try:
            return await self.js.publish(subject, data, timeout=timeout, headers=headers)
        except Exception as e:
            raise _translate(subject, e) from None

    # ------------------------------------------------------------------ the pipelined path
    async def _pipeline(
        self, items: Iterable[tuple[str, bytes, str | None]], on_ack: Callable[[PubAck], None]
    ) -> None:
        """Send ``(subject, data, msg_id)`` with at most ``window`` acks outstanding; check each."""
        prefix = await self._replies()
        loop = asyncio.get_running_loop()
        inflight: deque[tuple[str, float, asyncio.Future[PubAck]]] = deque()
        acked = 0

        async def settle_oldest() -> None:
            nonlocal acked
            _, deadline, fut = inflight.popleft()
            try:
                if not fut.done():
                    await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
                ack = fut.result()
            except TimeoutError:
                raise nats.errors.TimeoutError from None
            except PublishError as e:
                e.acked = acked
                raise
            on_ack(ack)
            acked += 1

        try:
            for subject, data, msg_id in items:
                if len(inflight) >= self.window:
                    await settle_oldest()
                token = str(self._next_token)
                self._next_token += 1
                fut: asyncio.Future[PubAck] = loop.create_future()
                self._waiting[token] = (subject, fut)
                inflight.append((subject, loop.time() + self.ack_timeout, fut))
                await self._nc.publish(
                    subject, data, reply=prefix + token, headers={"Nats-Msg-Id": msg_id} if msg_id else None
                )
            while inflight:
                await settle_oldest()
        finally:
            for _, _, fut in inflight:  # after a refusal: drop what is still in flight
                if fut.done() and not fut.cancelled():
                    fut.exception()  # retrieved: no "exception was never retrieved" noise
                fut.cancel()
            stale = [t for t, (_, f) in self._waiting.items() if f.done()]
            for t in stale:
                self._waiting.pop(t, None)

    async def _replies(self) -> str:
        """The reply-subject prefix, subscribing to its acks on first use."""
        if self._reply_prefix is None:
            prefix = self._nc.new_inbox() + "."
            await self._nc.subscribe(prefix + "*", cb=self._on_reply)
            self._reply_prefix = prefix
        return self._reply_prefix

    async def _on_reply(self, msg: Msg) -> None:
        assert self._reply_prefix is not None
        entry = self._waiting.pop(msg.subject[len(self._reply_prefix) :], None)
        if entry is None:
            return
        subject, fut = entry
        if fut.done():
            return
        with contextlib.suppress(asyncio.InvalidStateError):
            if msg.headers and msg.headers.get("Status") == "503" and not msg.data:
                fut.set_exception(NoStreamError(subject))
                return
            try:
                resp = json.loads(msg.data)
            except ValueError:
                fut.set_exception(nats.js.errors.APIError(description=f"unreadable ack: {msg.data[:200]!r}"))
                return
            if "error" in resp:
                fut.set_exception(_refusal(subject, resp["error"]))
            else:
                fut.set_result(PubAck.from_response(resp))
