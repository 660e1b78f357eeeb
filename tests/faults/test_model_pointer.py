"""The model pointer under replay and rollback, and forged model configs.

Real ``nats-server``, real Object Store / KV buckets, the real agent model watcher and the real
``hive model rollback`` command. Models are published as the distiller does it: files, a signed
pointer (compare-and-swap) with a serial from ``ModelStore.next_serial``, then ``ModelPublished``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import streams
from agents import ModelSlot
from agents._policy import make_model_watcher

from ..conftest import run_hive

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 64}


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """A distiller signing key pair (private PEM, public base64 file)."""
    return streams.generate_keys(tmp_path / "keys")


async def _publish(
    nc: Any, store: streams.ModelStore, key: Any, version: int, weights: bytes
) -> streams.SignedPointer:
    """Publish ``version`` as the distiller does (serials 1, 2, 3 … in order) and return the
    signed pointer it wrote."""
    meta = json.dumps({"backend": "byte", "version": version}).encode()
    files = await store.put_version("policy", version, weights, meta)
    current = await store.read_pointer("policy")
    serial = current[0].pointer.serial + 1 if current else 1
    pointer = streams.ModelPointer(name="policy", serial=serial, version=version, **files)
    await store.write_pointer(pointer, key, current[1] if current else None)
    signature = streams.sign(key, pointer.signed_bytes())
    await streams.Publisher(nc.jetstream()).publish(
        streams.ModelPublished(
            event_id=f"distiller/policy/{version}",
            agent_id="distiller",
            agent_type="distiller",
            name="policy",
            version=version,
            sha256=files["weights_sha256"],
            size=files["weights_size"],
            signature=signature,
        )
    )
    return streams.SignedPointer(pointer=pointer, signature=signature)


async def _three_versions(nc: Any, key: Any) -> tuple[streams.ModelStore, list[streams.SignedPointer]]:
    from distill import Policy, PolicyConfig

    store = await streams.ModelStore(nc).open(create=True)
    weights = Policy(PolicyConfig(**TINY)).to_bytes()
    return store, [await _publish(nc, store, key, v, weights) for v in (1, 2, 3)]


async def _replay(store: streams.ModelStore, signed: streams.SignedPointer) -> None:
    """Put an old, validly signed pointer back in the KV key (what a replaying attacker does)."""
    await store.kv.put("policy", signed.model_dump_json().encode())


async def _watch_until(slot: ModelSlot, want: int, timeout: float) -> list[int]:
    """Poll the slot until it holds version ``want``; returns every version it held meanwhile."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not seen or seen[-1] != slot.version:
            seen.append(slot.version)
        if slot.version == want:
            return seen
        await asyncio.sleep(0.01)
    raise AssertionError(f"the agent never loaded v{want}; versions held: {seen}")


async def test_a_fresh_agent_never_takes_a_replayed_old_pointer(
    nats_server: streams.EmbeddedServer, nc: Any, keys: tuple[Path, Path]
) -> None:
    """v1..v3 are published, then the (validly signed) v1 pointer is written into the KV again:
    an agent that starts fresh loads v3, the current model by the log, and never v1."""
    priv, pub = keys
    key = streams.load_private_key(priv)
    store, (v1, _, _) = await _three_versions(nc, key)
    assert v1.pointer.version == 1
    await _replay(store, v1)
    assert (await store.read_pointer("policy") or [v1])[0].pointer.version == 1  # the KV says v1
    slot = ModelSlot()
    watcher = asyncio.create_task(make_model_watcher(str(pub))(nc.jetstream(), slot))
    try:
        seen = await _watch_until(slot, 3, 30)
        await asyncio.sleep(1.0)  # and it stays there
        assert slot.version == 3 and 1 not in seen, seen
    finally:
        watcher.cancel()
        with contextlib_suppress():
            await watcher


async def test_rollback_is_accepted_by_agents_holding_the_latest_serial(
    nats_server: streams.EmbeddedServer, nc: Any, keys: tuple[Path, Path]
) -> None:
    """With agents holding v3 (the highest serial) and a replayed v1 pointer as the KV's value,
    ``hive model rollback 2`` writes a serial above every serial ever written, and the agent
    swaps to v2."""
    priv, pub = keys
    key = streams.load_private_key(priv)
    store, pointers = await _three_versions(nc, key)
    slot = ModelSlot()
    watcher = asyncio.create_task(make_model_watcher(str(pub))(nc.jetstream(), slot))
    try:
        await _watch_until(slot, 3, 30)
        held = slot.serial
        assert held == pointers[-1].pointer.serial
        await _replay(store, pointers[0])
        res = await asyncio.to_thread(
            run_hive, "model", "rollback", "2", "--nats", nats_server.url, "--key", str(priv), timeout=90
        )
        assert res.returncode == 0, res.stdout + res.stderr
        current = await store.read_pointer("policy")
        assert current is not None and current[0].pointer.version == 2
        assert current[0].pointer.serial > max(p.pointer.serial for p in pointers)
        assert current[0].pointer.serial > held, res.stdout
        await _watch_until(slot, 2, 30)
        assert slot.serial == current[0].pointer.serial
    finally:
        watcher.cancel()
        with contextlib_suppress():
            await watcher


def contextlib_suppress() -> Any:
    """Suppress what a cancelled watcher task raises when awaited."""
    import contextlib

    return contextlib.suppress(asyncio.CancelledError, Exception)


FORGE = textwrap.dedent(
    """
    import json, resource, struct, sys, time
    from distill import Policy

    cfg = json.loads(sys.argv[1])
    header = json.dumps({"__metadata__": {"format": "hive-policy/1", "config": json.dumps(cfg)}}).encode()
    blob = struct.pack("<Q", len(header)) + header
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    try:
        Policy.from_bytes(blob)
        outcome = "loaded"
    except ValueError as e:
        outcome = "refused: " + str(e)
    except Exception as e:  # what the loader did before bounding the config: build, then fail
        outcome = "failed late: " + type(e).__name__
    took = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"size": len(blob), "outcome": outcome, "took_s": took, "rss_jump_kb": after - before}))
    """
)


def test_a_forged_huge_config_is_refused_before_allocating() -> None:
    """A ~150-byte forged policy (a million-token vocabulary: a 1 GB model; no tensors) is
    refused in well under a second, and the process's peak RSS does not grow (nothing allocated)."""
    cfg = {"vocab_size": 1_000_000, "block_size": 64, "n_layer": 1, "n_head": 2, "n_embd": 128}
    res = subprocess.run(
        [sys.executable, "-c", FORGE, json.dumps(cfg)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["size"] < 300
    assert out["outcome"].startswith("refused"), out
    assert out["took_s"] < 1.0, out
    assert out["rss_jump_kb"] < 50_000, out  # kB on Linux: under 50 MB (the forged model is many GB)


@pytest.mark.parametrize(
    "huge",
    [
        {"vocab_size": 50_000_000},
        {"n_embd": 65_536, "n_head": 4},
        {"n_layer": 64, "n_embd": 4096, "n_head": 64},  # each dimension in bounds, 12.9 G parameters
    ],
)
def test_every_dimension_of_a_policy_config_is_bounded(huge: dict[str, int]) -> None:
    """Reading the config of a forged policy file refuses a huge vocabulary, width or total size
    (depth, heads and context were bounded already), before any model exists."""
    from distill import Policy

    cfg = {"vocab_size": 260, "block_size": 64, "n_layer": 1, "n_head": 2, "n_embd": 32, **huge}
    header = json.dumps({"__metadata__": {"format": "hive-policy/1", "config": json.dumps(cfg)}}).encode()
    with pytest.raises(ValueError):
        Policy.read_config(len(header).to_bytes(8, "little") + header)


def test_a_policy_whose_tensors_disagree_with_its_config_is_refused() -> None:
    """A policy file whose config is small but whose header declares other tensors (or sizes)
    than that config implies is refused before loading: the declared size is what is checked."""
    from distill import Policy, PolicyConfig

    blob = Policy(PolicyConfig(**TINY)).to_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    header["__metadata__"]["config"] = PolicyConfig(**{**TINY, "n_layer": 2}).to_json()  # claims 2 layers
    forged = json.dumps(header).encode()
    with pytest.raises(ValueError, match="tensors do not match"):
        Policy.from_bytes(len(forged).to_bytes(8, "little") + forged + blob[8 + n :])
