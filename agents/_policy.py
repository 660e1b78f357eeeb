"""The shared model inside an agent process: watch the signed pointer, verify, download, swap.

Agents pin the distiller's Ed25519 public key. A new pointer is accepted only if its signature
verifies, its serial is newer than the one held, and it is the *current* pointer by the log
(``streams.ModelStore.current``: the one the latest ``ModelPublished`` announced, or a newer one
not announced yet), so an agent that starts fresh never takes a replayed old pointer that someone
put back in the KV, whatever it sees first. The weights and metadata must match the
announced size and sha256, and the weights must parse as safetensors (nothing is unpickled).
Any failure is logged with its reason and the agent keeps the model it had.

A model's ``meta.json`` names its backend (absent: ``byte``); the backend's loader is the
``hive.policies`` entry point of that name (``agents.policy_loaders``: ``distill`` registers its
own), so ``agents`` never imports ``distill``. A loader returns a :class:`~agents.Proposer` named
``model-v<version>``; the slot holds the newest, and researchers keep every version they saw as an
arm of their portfolio. An ``hf`` backend finds its local base model through ``HIVE_HF_MODEL``
(``--hf-model`` on ``hive agent run`` sets it). Without a loader for the backend, or with one
that refuses the bytes, the model is refused and the agent keeps the one it had.

:func:`wait_for_model` is ``--require-model``: an agent that must start on the current model
waits (logging while it waits, up to a timeout) before its first proposal.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
import structlog

import streams

from ._backoff import retry_transient
from ._proposer import Proposer, policy_loaders
from ._runtime import ModelSlot

log = structlog.get_logger("agents.policy")
POLICY_NAME = "policy"
HF_MODEL_ENV = "HIVE_HF_MODEL"
"""Where an agent finds the local base model of an ``hf`` policy (unless given explicitly)."""


class ModelRequired(RuntimeError):
    """``--require-model``: no model was published within the agent's wait."""


def load_policy(weights: bytes, meta: bytes | Mapping[str, Any], version: int) -> Proposer:
    """A proposer from verified bytes, built by the loader its ``meta["backend"]`` names
    (default ``byte``); ``ValueError`` on an unknown backend or anything the loader refuses."""
    if isinstance(meta, bytes | bytearray):
        try:
            info = orjson.loads(meta) if meta else {}
        except orjson.JSONDecodeError as e:
            raise ValueError(f"model v{version}: meta is not JSON: {e}") from None
    else:
        info = dict(meta)
    if not isinstance(info, dict):
        raise ValueError("model meta is not a JSON object")
    backend = str(info.get("backend", "byte"))
    loaders = policy_loaders()
    loader = loaders.get(backend)
    if loader is None:
        known = ", ".join(sorted(loaders)) or "none"
        raise ValueError(
            f"model v{version} has backend {backend!r}, which no installed loader provides ({known})"
        )
    try:
        proposer = loader(weights, info, version)
    except ValueError:
        raise
    except Exception as e:  # a loader must refuse with ValueError; anything else is refused too
        raise ValueError(f"model v{version} ({backend}): {type(e).__name__}: {e}") from None
    if not isinstance(proposer, Proposer):
        raise ValueError(
            f"model v{version}: the {backend!r} loader returned {type(proposer).__name__}, not a Proposer"
        )
    return proposer


async def wait_for_model(agent: Any, timeout_s: float, every_s: float = 5.0) -> int:
    """Wait until ``agent`` has a model loaded (its slot's version > 0); returns the version.

    Logs ``waiting_for_model`` every ``every_s`` seconds; raises :class:`ModelRequired` after
    ``timeout_s``."""
    loop = asyncio.get_running_loop()
    t0 = last = loop.time()
    agent.log.info("waiting_for_model", timeout_s=timeout_s)
    while agent.model_version <= 0 or agent.policy is None:
        now = loop.time()
        if now - t0 >= timeout_s:
            raise ModelRequired(f"no model was published within {timeout_s:g}s (--require-model)")
        if now - last >= every_s:
            agent.log.info("waiting_for_model", waited_s=round(now - t0, 1), timeout_s=timeout_s)
            last = now
        agent.state = "waiting for the first model"
        await asyncio.sleep(0.1)
    agent.log.info("model_ready", version=agent.model_version, waited_s=round(loop.time() - t0, 2))
    return int(agent.model_version)


def make_model_watcher(
    pubkey: str | None, hf_model: str | None = None
) -> Callable[[Any, ModelSlot], Awaitable[None]]:
    """A coroutine factory for :class:`agents.AgentRuntime`: keeps ``slot`` on the newest good model.

    ``hf_model``: the local base model for ``hf`` policies (exported as ``HIVE_HF_MODEL`` for the
    ``hf`` loader; default: that variable as it is)."""
    if hf_model:
        os.environ[HF_MODEL_ENV] = hf_model

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

    ``hf_model``: unused (the ``hf`` loader reads ``HIVE_HF_MODEL``; kept for callers)."""
    del hf_model
    if signed is None:
        log.warning("model_refused", reason="pointer is not valid JSON")
        return False
    try:
        pointer = streams.accept_pointer(signed, key, slot.serial)
        weights = await store.fetch(pointer.weights, size=pointer.weights_size, sha256=pointer.weights_sha256)
        meta = await store.fetch(pointer.meta, size=pointer.meta_size, sha256=pointer.meta_sha256)
        info = orjson.loads(meta) if meta else {}
        if not isinstance(info, dict):
            raise ValueError("model meta is not a JSON object")
        policy = await asyncio.to_thread(load_policy, weights, info, pointer.version)
    except (streams.ArtifactError, ValueError, orjson.JSONDecodeError) as e:
        log.warning("model_refused", reason=str(e), kept_version=slot.version)
        return False
    # one assignment each, between experiments: a step reads the slot once when it proposes
    slot.policy, slot.version, slot.serial, slot.meta = policy, pointer.version, pointer.serial, info
    slot.signature = signed.signature
    log.info("model_loaded", version=pointer.version, serial=pointer.serial, size=pointer.weights_size)
    return True
