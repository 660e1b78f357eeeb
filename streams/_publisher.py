"""Publishing events: one at a time (awaited ack) or in pipelined batches (``publish_async``)."""

from __future__ import annotations

from collections.abc import Iterable

from nats.js import JetStreamContext
from nats.js.api import PubAck

from ._codec import encode
from ._events import Event
from ._subjects import subject_for


class Publisher:
    """Publishes events on their subjects with ``Nats-Msg-Id = event_id`` (server-side dedupe).

    ``publish`` awaits the stream's ack; ``publish_many`` pipelines with ``publish_async`` and
    waits for all acks at the end, the fast path for bulk traces.
    """

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def publish(self, event: Event, *, timeout: float = 10.0) -> PubAck:
        """Publish one event and wait for the stream's ack (``ack.duplicate`` for a retry)."""
        return await self.js.publish(
            subject_for(event), encode(event), timeout=timeout, headers={"Nats-Msg-Id": event.event_id}
        )

    async def publish_many(self, events: Iterable[Event]) -> int:
        """Publish many events pipelined; returns how many were sent once all are acked."""
        n = 0
        pub = self.js.publish_async
        for event in events:
            await pub(subject_for(event), encode(event), headers={"Nats-Msg-Id": event.event_id})
            n += 1
        await self.js.publish_async_completed()
        return n

    async def publish_acked(self, events: Iterable[Event]) -> list[PubAck]:
        """Publish many events pipelined and return every ack (``ack.duplicate`` marks retries)."""
        pub = self.js.publish_async
        futures = [await pub(subject_for(e), encode(e), headers={"Nats-Msg-Id": e.event_id}) for e in events]
        return [await f for f in futures]

    async def publish_raw(self, subject: str, data: bytes, msg_id: str | None = None) -> PubAck:
        """Publish bytes as they are (for tools replaying logs or other-language publishers)."""
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        return await self.js.publish(subject, data, headers=headers)
