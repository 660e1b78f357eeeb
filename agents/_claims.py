"""Claims: two agents never run the identical recipe on the same instance at the same time.

A claim is a key in the JetStream KV bucket ``hive_run_claims``: ``create`` succeeds for one
agent only; the key is deleted when the run ends and expires after ``CLAIM_TTL_S`` if its
holder died.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError, NotFoundError

from streams._auth import RUN_CLAIM_TTL_S, RUN_CLAIMS_BUCKET

CLAIMS_BUCKET = RUN_CLAIMS_BUCKET
CLAIM_TTL_S = RUN_CLAIM_TTL_S


def claim_key(task: str, recipe: dict[str, Any]) -> str:
    """The claim key of a (task instance, recipe) pair: a hash of both, canonical JSON."""
    blob = orjson.dumps({"task": task, "recipe": recipe}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()[:40]


class Claims:
    """Claim / release recipes through the KV bucket (created on first use)."""

    def __init__(self, js: Any) -> None:
        self.js = js
        self.kv: Any = None

    async def open(self) -> Claims:
        """Bind (or create) the claims bucket."""
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
        try:
            await self.kv.create(key, holder.encode())
        except KeyWrongLastSequenceError:
            return None
        return key

    async def release(self, key: str) -> None:
        """Release a claim (its run ended)."""
        await self.kv.delete(key)
