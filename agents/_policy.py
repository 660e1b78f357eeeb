"""The shared model inside an agent process: watch the signed pointer, verify, download, swap.

Agents pin the distiller's Ed25519 public key. A new pointer is accepted only if its signature
verifies, its serial is newer than the one held, and it is the *current* pointer by the log
(``streams.ModelStore.current``: the one the latest ``ModelPublished`` announced, or a newer one
not announced yet), so an agent that starts fresh never takes a replayed old pointer that someone
put back in the KV, whatever it sees first. The weights and metadata must match the
announced size and sha256, and the weights must parse as safetensors (nothing is unpickled).
Any failure is logged with its reason and the agent keeps the model it had.

A model's ``meta.json`` names its backend: absent or ``byte``, the byte-level policy; ``hf``, a LoRA
adapter on a local causal LM, which needs the same base model on this machine (``--hf-model`` on
``hive agent run`` or env ``HIVE_HF_MODEL``) and the ``hf`` extra; without them, or with a base of
another fingerprint, the model is refused.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from pydantic import BaseModel

import streams

from ._backoff import retry_transient
from ._runtime import ModelSlot
from ._task import Task

log = structlog.get_logger("agents.policy")
POLICY_NAME = "policy"
HF_MODEL_ENV = "HIVE_HF_MODEL"
"""Where an agent finds the local base model of an ``hf`` policy (unless given explicitly)."""


class PolicyAdapter:
    """Proposes recipes with a loaded distilled model, rendering prompts as the trainer does."""

    def __init__(self, model: Any, version: int, meta: dict[str, Any]) -> None:
        self.model = model
        self.version = version
        self.meta = meta
        self.proposals = 0
        self.first_try_valid = 0

    def propose(
        self,
        task: Task,
        parent: dict[str, Any] | None,
        parent_objective: float | None,
        guidance: list[str],
        rng: random.Random,
        temperature: float = 1.0,
    ) -> BaseModel:
        """A schema-valid recipe for ``task`` (constrained decoding, validation, resampling).

        ``temperature`` 1.0 samples the policy as trained (what researchers and deployers do);
        lower values concentrate on its mode."""
        import torch

        from distill import _hf, propose, render_prompt

        prompt = render_prompt(task.ref, parent, parent_objective, guidance)
        gen = torch.Generator().manual_seed(rng.randrange(2**31 - 1))
        propose_fn: Any = _hf.propose if isinstance(self.model, _hf.HFPolicy) else propose
        recipe, stats = propose_fn(self.model, prompt, task.space, generator=gen, temperature=temperature)
        self.proposals += 1
        self.first_try_valid += int(getattr(stats, "first_try_valid", True))
        return recipe


def load_policy(weights: bytes, meta: bytes, version: int, hf_model: str | None = None) -> PolicyAdapter:
    """Build a policy from verified bytes (safetensors only; raises ValueError on anything else).

    The backend comes from ``meta`` (absent: the byte policy). An ``hf`` adapter is loaded on the
    base model in ``hf_model`` (default: env ``HIVE_HF_MODEL``), which must have the fingerprint
    recorded in ``meta``.
    """
    info = orjson.loads(meta) if meta else {}
    if not isinstance(info, dict):
        raise ValueError("model meta is not a JSON object")
    backend = info.get("backend", "byte")
    if backend == "hf":
        return PolicyAdapter(_load_hf(weights, info, version, hf_model), version, info)
    if backend != "byte":
        raise ValueError(f"model v{version} has an unknown backend {backend!r} (this agent knows byte, hf)")
    from distill import Policy

    try:
        model = Policy.from_bytes(weights)
    except Exception as e:  # safetensors refuses pickles, truncation, garbage
        raise ValueError(f"weights are not a valid safetensors policy: {type(e).__name__}: {e}") from None
    model.eval()
    return PolicyAdapter(model, version, info)


def _load_hf(weights: bytes, info: dict[str, Any], version: int, hf_model: str | None) -> Any:
    """An hf adapter on this machine's copy of its base model, or ``ValueError`` saying what is missing."""
    from distill import _hf

    base = hf_model or os.environ.get(HF_MODEL_ENV)
    wanted = f"{info.get('base_model')!r} ({str(info.get('base_fingerprint'))[:23]}…)"
    if not base:
        raise ValueError(
            f"model v{version} is an hf adapter on base {wanted}: give this agent that base model "
            f"(--hf-model PATH or {HF_MODEL_ENV})"
        )
    try:
        _hf.require_extra()
    except _hf.MissingExtra as e:
        raise ValueError(f"model v{version}: {e}") from None
    fingerprint = info.get("base_fingerprint")
    if not isinstance(fingerprint, str):
        raise ValueError(f"model v{version} is an hf adapter whose meta has no base_fingerprint")
    try:
        return _hf.HFPolicy.from_bytes(base, weights, fingerprint=fingerprint)
    except ValueError as e:  # BaseModelError included: missing base, another base
        raise ValueError(f"model v{version} refused: {e}") from None
    except Exception as e:  # safetensors / peft on a corrupt adapter
        raise ValueError(f"model v{version}: not a valid adapter: {type(e).__name__}: {e}") from None


def make_model_watcher(
    pubkey: str | None, hf_model: str | None = None
) -> Callable[[Any, ModelSlot], Awaitable[None]]:
    """A coroutine factory for :class:`agents.AgentRuntime`: keeps ``slot`` on the newest good model.

    ``hf_model``: the local base model for ``hf`` policies (default: env ``HIVE_HF_MODEL``)."""

    async def watch(js: Any, slot: ModelSlot) -> None:
        if not pubkey:
            log.warning("model_watch_disabled", reason="no pinned public key (--pubkey / HIVE_MODEL_PUBKEY)")
            return
        key = streams.load_public_key(pubkey)
        store = streams.ModelStore(js._nc)  # the runtime's connection
        while True:  # the buckets appear with the first published model
            try:
                await retry_transient(store.open, what="open model store", logger=log)
                break
            except streams.ArtifactError:
                await asyncio.sleep(1.0)
        while True:  # a watch broken by a server pause or restart is started again
            try:
                async for signed in store.watch(POLICY_NAME):
                    await consider_current(store, signed, key, slot, hf_model=hf_model)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("model_watch_restarted", error=f"{type(e).__name__}: {e}")
                await asyncio.sleep(1.0)

    return watch


async def consider_current(
    store: streams.ModelStore,
    seen: streams.SignedPointer | None,
    key: Any,
    slot: ModelSlot,
    hf_model: str | None = None,
) -> bool:
    """A pointer was written: load the *current* one by the log (see the module docstring), not
    ``seen`` itself when it is a replayed older pointer. Returns whether the slot changed."""
    current = await retry_transient(
        lambda: store.current(POLICY_NAME, key), what="current model pointer", logger=log
    )
    if seen is not None and (current is None or current.signature != seen.signature):
        log.warning(
            "model_refused",
            reason="stale or replayed pointer: not the latest announced on the log",
            serial=seen.pointer.serial,
            version=seen.pointer.version,
            kept_version=slot.version,
        )
    if current is None or (slot.signature and current.signature == slot.signature):
        return False
    return await consider(store, current, key, slot, hf_model=hf_model)


async def consider(
    store: streams.ModelStore,
    signed: streams.SignedPointer | None,
    key: Any,
    slot: ModelSlot,
    hf_model: str | None = None,
) -> bool:
    """Verify a pointer and, if every check passes, swap the slot to its model. Returns success.

    ``hf_model``: as in :func:`load_policy`."""
    if signed is None:
        log.warning("model_refused", reason="pointer is not valid JSON")
        return False
    try:
        pointer = streams.accept_pointer(signed, key, slot.serial)
        weights = await store.fetch(pointer.weights, size=pointer.weights_size, sha256=pointer.weights_sha256)
        meta = await store.fetch(pointer.meta, size=pointer.meta_size, sha256=pointer.meta_sha256)
        policy = await asyncio.to_thread(load_policy, weights, meta, pointer.version, hf_model)
    except (streams.ArtifactError, ValueError) as e:
        log.warning("model_refused", reason=str(e), kept_version=slot.version)
        return False
    # one assignment each, between experiments: a step reads the slot once when it proposes
    slot.policy, slot.version, slot.serial, slot.meta = policy, pointer.version, pointer.serial, policy.meta
    slot.signature = signed.signature
    log.info("model_loaded", version=pointer.version, serial=pointer.serial, size=pointer.weights_size)
    return True
