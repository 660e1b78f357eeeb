"""Claims: two agents never run the identical recipe on the same instance at the same time.

A claim is a key in the JetStream KV bucket ``hive_run_claims``: ``create`` succeeds for one
agent only; the key stays after the run finished (a "done" mark for agents whose read model has
not seen the finish yet), is deleted when a run ends without finishing, and expires after
``CLAIM_TTL_S``.

Claiming and releasing ride out a paused server (timeouts are retried with capped backoff). A
``create`` retried after a timeout may find the key already written by its own first attempt:
the claim is then ours if the key holds our name.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from streams._auth import RUN_CLAIM_TTL_S, RUN_CLAIMS_BUCKET

from ._backoff import Backoff, retry_transient

CLAIMS_BUCKET = RUN_CLAIMS_BUCKET
CLAIM_TTL_S = RUN_CLAIM_TTL_S
VANISHED_RETRIES = 3
"""How often a claim may find the holder's key gone between nats-py's create and its check before
the pair counts as contended (a claim held by someone else)."""


def claim_key(task: str, recipe: dict[str, Any]) -> str:
    """The claim key of a (task instance, recipe) pair: a hash of both, canonical JSON."""
    blob = orjson.dumps({"task": task, "recipe": recipe}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()[:40]


class Claims:
    """Claim / release recipes through the KV bucket (created on first use)."""

    def __init__(self, js: Any, backoff: Backoff | None = None) -> None:
        self.js = js
        self.kv: Any = None
        self.backoff = backoff or Backoff()

    async def open(self) -> Claims:
        """Bind (or create) the claims bucket."""
        return await retry_transient(self._open, what="open claims", backoff=self.backoff)

    async def _open(self) -> Claims:
        try:
            self.kv = await self.js.key_value(CLAIMS_BUCKET)
        except (NotFoundError, BadRequestError):
            try:
                self.kv = await self.js.create_key_value(bucket=CLAIMS_BUCKET, ttl=CLAIM_TTL_S, history=1)
            except BadRequestError:
                self.kv = await self.js.key_value(CLAIMS_BUCKET)
        return self

    async def claim(self, task: str, recipe: dict[str, Any], holder: str) -> str | None:
        """Claim the pair for ``holder``; returns the key, or None if someone else holds it."""
        key = claim_key(task, recipe)
        attempts = 0
        vanished = 0

        async def create() -> None:
            nonlocal attempts, vanished
            attempts += 1
            while True:
                try:
                    await self.kv.create(key, holder.encode())
                    return
                except KeyNotFoundError:
                    # nats-py's create, refused because the key exists, reads it back to tell a
                    # deleted key from a live one; a claim that vanished in between (expired,
                    # purged) surfaces as "not found": the pair is free again, so try once more
                    vanished += 1
                    if vanished >= VANISHED_RETRIES:
                        raise KeyWrongLastSequenceError from None

        try:
            await retry_transient(create, what="claim", backoff=self.backoff)
        except KeyWrongLastSequenceError:
            if attempts > 1 and await self._holder(key) == holder:  # our timed-out first try landed
                return key
            return None
        return key

    async def _holder(self, key: str) -> str | None:
        try:
            entry = await retry_transient(lambda: self.kv.get(key), what="claim holder", backoff=self.backoff)
        except KeyNotFoundError:
            return None
        return entry.value.decode(errors="replace") if entry.value else None

    async def release(self, key: str) -> None:
        """Release a claim (its run ended)."""
        await retry_transient(lambda: self.kv.delete(key), what="release claim", backoff=self.backoff)
