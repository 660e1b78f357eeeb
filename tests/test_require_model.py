"""``hive agent run researcher --require-model`` on a real hive (nats-server, the materializer,
agents as child processes): no experiment before the first model is published, experiments with
it right after."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

import streams
from distill.model import BACKEND, HistoryConfig, HistoryModel

from .conftest import wait_for

SMALL = {"n_layer": 1, "n_embd": 32, "n_head": 2}
"""A small history model: published untrained, it proposes valid (if unskilled) recipes."""
WAIT_S = 4.0
"""How long the hive runs without a model while the required agent must stay idle."""


async def _publish_model(nc: Any, private_key: Any, version: int) -> None:
    """Publish ``version`` the way the distiller does (``distill._service._publish_model``): the
    weights and ``meta.json`` into the Object Store, the pointer signed with the distiller's key
    (compare-and-swap, serial above every one written), then ``ModelPublished`` on the log."""
    model = HistoryModel(HistoryConfig(**SMALL))
    meta = orjson.dumps(
        {
            "name": "policy",
            "version": version,
            "backend": BACKEND,
            "config": orjson.loads(model.cfg.to_json()),
        }
    )
    weights = model.to_bytes()
    store = await streams.ModelStore(nc).open(create=True)
    current = await store.read_pointer("policy")
    serial = await store.next_serial("policy", private_key.public_key())
    files = await store.put_version("policy", version, weights, meta)
    pointer = streams.ModelPointer(name="policy", serial=serial, version=version, **files)
    await store.write_pointer(pointer, private_key, current[1] if current else None)
    await streams.Publisher(nc.jetstream()).publish(
        streams.ModelPublished(
            event_id=f"distiller/policy/{version}",
            agent_id="distiller",
            agent_type="distiller",
            name="policy",
            version=version,
            sha256=files["weights_sha256"],
            size=files["weights_size"],
            signature=streams.sign(private_key, pointer.signed_bytes()),
        )
    )


async def test_require_model_runs_nothing_until_a_model_is_published(
    nats_server: Any, nc: Any, spawn: Any, tmp_path: Path
) -> None:
    """A researcher started with ``--require-model`` (``hive agent run``, pinned to the
    distiller's public key) starts no experiment while the hive has no model, although it is
    registered and another researcher keeps the log busy meanwhile; once a model is published
    through the model store and announced by ``ModelPublished`` (as the distiller does), it
    starts experimenting, every one of its started and finished experiments comes after the
    announcement in the log (``seq``), and each records model version 1.

    The distiller writes the signed pointer just before it publishes the announcement, and an
    agent may take an unannounced newer pointer; for one of its experiments to precede the
    announcement it would have to notice the pointer, download and verify the model and run a
    claim round trip within the ~1 ms between the two writes, so the chance of a false failure
    is negligible."""
    priv, pub = streams.generate_keys(tmp_path / "keys")
    url = nats_server.url
    spawn("materialize", "--nats", url, "--db", str(tmp_path / "req.duckdb"))
    spawn(
        "agent", "run", "researcher", "--nats", url, "--task", "hartmann6/1", "--no-model", "--id", "free",
    )  # fmt: skip
    waiting = spawn(
        "agent", "run", "researcher", "--nats", url, "--task", "hartmann6/0", "--require-model",
        "--model-wait", "120", "--pubkey", str(pub), "--id", "req",
    )  # fmt: skip

    async def one(sql: str) -> Any:
        ((value,),) = (await streams.remote_query(nc, sql)).rows
        return value

    await wait_for(lambda: one("SELECT count(*) FROM agents WHERE agent_id = 'req'"), timeout=60, what="req")
    await wait_for(
        lambda: one("SELECT count(*) >= 20 FROM experiments WHERE agent_id = 'free'"), timeout=60, what="free"
    )
    await asyncio.sleep(WAIT_S)  # the hive runs on; the required agent waits
    assert await one("SELECT count(*) FROM experiment_starts WHERE agent_id = 'req'") == 0
    assert await one("SELECT count(*) FROM experiments WHERE agent_id = 'req'") == 0
    assert waiting.p.poll() is None, waiting.output()[-3000:]
    assert "waiting_for_model" in waiting.output()

    await _publish_model(nc, streams.load_private_key(priv), 1)
    await wait_for(
        lambda: one("SELECT count(*) >= 10 FROM experiments WHERE agent_id = 'req'"),
        timeout=60,
        what="experiments of the required agent after the model",
    )
    published = await one("SELECT min(seq) FROM models WHERE decision = 'published' AND version = 1")
    first_start = await one("SELECT min(seq) FROM experiment_starts WHERE agent_id = 'req'")
    first_finish = await one("SELECT min(seq) FROM experiments WHERE agent_id = 'req'")
    free_before = await one(f"SELECT count(*) FROM experiments WHERE agent_id = 'free' AND seq < {published}")
    assert free_before >= 20  # the log was busy before the model
    assert published < first_start < first_finish, (published, first_start, first_finish)
    versions = await one("SELECT list(DISTINCT model_version) FROM experiments WHERE agent_id = 'req'")
    assert versions == [1], versions
    assert "model_ready" in waiting.output()
