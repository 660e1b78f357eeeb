"""Reading the log in order from a given sequence, fast.

:class:`LogReader` drives an ephemeral pull consumer (``AckPolicy.NONE``: the reader's own
checkpoint is the truth, so nothing is redelivered or silently skipped past ``max_deliver``)
with hand-made pull requests on a private inbox, and drains the inbox queue synchronously.
nats-py's ``fetch`` sets up a future and an inbox per call and, measured here, often returned
one message per call; this reader gets whole batches at ~3-4x the rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ._subjects import STREAM


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One message read from the log: stream sequence, subject, raw bytes, stream timestamp."""

    seq: int
    subject: str
    data: bytes
    logged_at: datetime


class ConsumerLost(RuntimeError):
    """The server no longer knows our consumer (it expired, or the server restarted)."""


def _parse_reply(reply: str) -> tuple[int, int]:
    """``(stream_seq, timestamp_ns)`` from a JetStream ``$JS.ACK...`` reply subject."""
    t = reply.split(".")
    if len(t) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(t[5]), int(t[7])
    # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>]
    return int(t[7]), int(t[9])


class LogReader:
    """Reads ``subjects`` of the hive stream in sequence order, starting after ``after_seq``.

    Call :meth:`fetch` repeatedly; :meth:`reset` re-creates the consumer after the last
    sequence returned (do that on :class:`ConsumerLost` or after a reconnect).
    """

    def __init__(
        self,
        nc: Client,
        *,
        after_seq: int = 0,
        filter_subject: str = ">",
        stream: str = STREAM,
        inactive_threshold: float = 60.0,
    ) -> None:
        self.nc = nc
        self.stream = stream
        self.filter_subject = filter_subject
        self.last_seq = after_seq
        self.inactive_threshold = inactive_threshold
        self._sub: Subscription | None = None
        self._consumer = ""
        self._inbox = ""
        self._linger_until = 0.0

    async def start(self) -> LogReader:
        """Create the consumer (starting after ``last_seq``) and the private inbox."""
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(
            self._inbox, pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 30
        )
        await self._create_consumer()
        return self

    async def _create_consumer(self) -> None:
        js = self.nc.jetstream()
        cfg = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if self.last_seq else DeliverPolicy.ALL,
            opt_start_seq=self.last_seq + 1 if self.last_seq else None,
            inactive_threshold=self.inactive_threshold,
            mem_storage=True,
            max_waiting=16,
            filter_subject=None if self.filter_subject == ">" else self.filter_subject,
        )
        info = await js.add_consumer(self.stream, cfg)
        self._consumer = info.name

    async def reset(self) -> None:
        """Drop what is buffered and re-create the consumer after ``last_seq``."""
        assert self._sub is not None
        q = self._sub._pending_queue
        while not q.empty():
            q.get_nowait()
        self._sub._pending_size = 0
        with contextlib.suppress(Exception):
            await self.nc.jetstream().delete_consumer(self.stream, self._consumer)
        await self._create_consumer()

    async def close(self) -> None:
        """Delete the consumer and the inbox subscription."""
        with contextlib.suppress(Exception):
            await self.nc.jetstream().delete_consumer(self.stream, self._consumer)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _request(self, body: dict[str, object]) -> None:
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self._consumer}"
        await self.nc.publish(subject, orjson.dumps(body), reply=self._inbox)

    def _take(self, msg: Msg, out: list[LogEntry]) -> str | None:
        """Append a data message to ``out``; return the status code of a status message."""
        assert self._sub is not None
        self._sub._pending_size -= len(msg.data)
        status = msg.headers.get("Status") if msg.headers else None
        if status:
            if status == "100":  # idle heartbeat / flow control
                return None
            description = (msg.headers or {}).get("Description", "")
            if status in ("503",) or (status == "409" and "Consumer Deleted" in description):
                raise ConsumerLost(f"{status} {description}".strip())
            if status in ("404", "408", "409"):  # the pull request ended (no messages, expired, limits)
                self._linger_until = 0.0 if status == "408" else self._linger_until
                return status
            raise ConsumerLost(f"unexpected status {status} {description}".strip())
        seq, ts = _parse_reply(msg.reply)
        if seq > self.last_seq:  # never hand out a sequence twice
            out.append(LogEntry(seq, msg.subject, msg.data, datetime.fromtimestamp(ts / 1e9, UTC)))
            self.last_seq = seq
        return None

    def _drain(self, out: list[LogEntry], limit: int) -> str | None:
        """Move buffered messages into ``out``; return a status code if one ended a request."""
        assert self._sub is not None
        q = self._sub._pending_queue
        while len(out) < limit and not q.empty():
            status = self._take(q.get_nowait(), out)
            if status:
                return status
        return None

    async def fetch(self, batch: int = 1000, timeout: float = 0.5) -> list[LogEntry]:
        """Up to ``batch`` entries after the last one returned; waits at most ``timeout`` for the first.

        Returns an empty list when nothing arrives in time; raises :class:`ConsumerLost` when the
        server says the consumer is gone (call :meth:`reset`).
        """
        assert self._sub is not None, "call start() first"
        out: list[LogEntry] = []
        # Messages left from an earlier lingering request come first.
        self._drain(out, batch)
        if len(out) >= batch:
            return out
        # What is there now: a no_wait request ends at once (full batch, or a 404/408 status).
        await self._request({"batch": batch - len(out), "no_wait": True})
        await self._collect(out, batch, time.monotonic() + max(timeout, 2.0))
        if out:
            return out
        # Nothing now: keep at most one lingering request open, and wait for its first message.
        now = time.monotonic()
        if now >= self._linger_until:
            await self._request({"batch": batch, "expires": int(timeout * 1e9)})
            self._linger_until = now + timeout
        await self._collect(out, batch, now + timeout + 0.25, first_only=True)
        return out

    async def _collect(
        self, out: list[LogEntry], batch: int, deadline: float, first_only: bool = False
    ) -> None:
        """Wait for messages until ``batch`` are in ``out``, a status ends the request, or the
        deadline passes (``first_only``: return as soon as anything arrived)."""
        assert self._sub is not None
        q = self._sub._pending_queue
        while len(out) < batch:
            if q.empty():
                if first_only and out:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    msg = await asyncio.wait_for(q.get(), remaining)
                except TimeoutError:
                    continue
                if self._take(msg, out):
                    return
            if self._drain(out, batch):
                return
