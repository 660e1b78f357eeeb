"""The shared model inside an agent process: watch the signed pointer, verify, download, swap.

Agents pin the distiller's Ed25519 public key. A new pointer is accepted only if its signature
verifies and its serial is newer than the one held; the weights and metadata must match the
announced size and sha256, and the weights must parse as safetensors (nothing is unpickled).
Any failure is logged with its reason and the agent keeps the model it had.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from pydantic import BaseModel

import streams

from ._runtime import ModelSlot
from ._task import Task

log = structlog.get_logger("agents.policy")
POLICY_NAME = "policy"


class PolicyAdapter:
    """Proposes recipes with a loaded distilled model, rendering prompts as the trainer does."""

    def __init__(self, model: Any, version: int, meta: dict[str, Any]) -> None:
        self.model = model
        self.version = version
        self.meta = meta
        self.proposals = 0
        self.first_try_valid = 0

    def propose(
        self, task: Task, parent: dict[str, Any] | None, parent_objective: float | None, guidance: list[str],
        rng: random.Random, temperature: float = 1.0,
    ) -> BaseModel:
        """A schema-valid recipe for ``task`` (constrained decoding, validation, resampling).

        ``temperature`` 1.0 samples the policy as trained (exploration, researchers); lower
        values concentrate on its mode (one-shot deployment)."""
        import torch

        from distill import propose, render_prompt

        prompt = render_prompt(task.ref, parent, parent_objective, guidance)
        gen = torch.Generator().manual_seed(rng.randrange(2**31 - 1))
        recipe, stats = propose(self.model, prompt, task.space, generator=gen, temperature=temperature)
        self.proposals += 1
        self.first_try_valid += int(getattr(stats, "first_try_valid", True))
        return recipe


def load_policy(weights: bytes, meta: bytes, version: int) -> PolicyAdapter:
    """Build a policy from verified bytes (safetensors only; raises ValueError on anything else)."""
    from distill import Policy

    try:
        model = Policy.from_bytes(weights)
    except Exception as e:  # safetensors refuses pickles, truncation, garbage
        raise ValueError(f"weights are not a valid safetensors policy: {type(e).__name__}: {e}") from None
    model.eval()
    return PolicyAdapter(model, version, orjson.loads(meta) if meta else {})


def make_model_watcher(pubkey: str | None) -> Callable[[Any, ModelSlot], Awaitable[None]]:
    """A coroutine factory for :class:`agents.AgentRuntime`: keeps ``slot`` on the newest good model."""

    async def watch(js: Any, slot: ModelSlot) -> None:
        if not pubkey:
            log.warning("model_watch_disabled", reason="no pinned public key (--pubkey / HIVE_MODEL_PUBKEY)")
            return
        key = streams.load_public_key(pubkey)
        store = streams.ModelStore(js._nc)  # the runtime's connection
        while True:  # the buckets appear with the first published model
            try:
                await store.open()
                break
            except streams.ArtifactError:
                await asyncio.sleep(1.0)
        async for signed in store.watch(POLICY_NAME):
            await consider(store, signed, key, slot)

    return watch


async def consider(store: streams.ModelStore, signed: streams.SignedPointer | None, key: Any,
                   slot: ModelSlot) -> bool:
    """Verify a pointer and, if every check passes, swap the slot to its model. Returns success."""
    if signed is None:
        log.warning("model_refused", reason="pointer is not valid JSON")
        return False
    try:
        pointer = streams.accept_pointer(signed, key, slot.serial)
        weights = await store.fetch(pointer.weights, size=pointer.weights_size, sha256=pointer.weights_sha256)
        meta = await store.fetch(pointer.meta, size=pointer.meta_size, sha256=pointer.meta_sha256)
        policy = await asyncio.to_thread(load_policy, weights, meta, pointer.version)
    except (streams.ArtifactError, ValueError) as e:
        log.warning("model_refused", reason=str(e), kept_version=slot.version)
        return False
    # one assignment each, between experiments: a step reads the slot once when it proposes
    slot.policy, slot.version, slot.serial, slot.meta = policy, pointer.version, pointer.serial, policy.meta
    log.info("model_loaded", version=pointer.version, serial=pointer.serial, size=pointer.weights_size)
    return True
