"""Distillation against real servers: select → train → gate → publish (the history model by
default; the byte policy's gate rules too), agents picking the model up, skipped traces reported
on the model events, and every way a model pointer or artifact can be bad being refused."""

from __future__ import annotations

import asyncio
import hashlib
import pickle
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

import streams
from agents import ModelSlot, load_task
from agents._policy import consider
from distill._service import DistillConfig, Distiller, Scores, gate

from .conftest import run_hive, wait_for
from .test_history_policy import study_rows

SMALL = {"n_layer": 1, "n_embd": 64, "n_head": 4, "block_size": 320}
"""A small byte policy."""
HISTORY_SMALL = {"n_layer": 1, "n_embd": 32, "n_head": 2}
"""A small history model."""
TASKS = ["branin/0", "branin/1", "branin/2", "branin/3", "branin/4"]
TRAJECTORY_TASKS = [f"branin/{i}" for i in range(8)]
GATE = "2x2x30"


def trajectories(trials: int = 50) -> list[streams.ExperimentFinished]:
    """Simulated studies on branin/0..7 as the hive logs them: baseline replicates, then trials
    proposed by mutation or the prior, in order (plus two traces of a task nobody can import)."""
    out: list[streams.ExperimentFinished] = []
    rows = study_rows(TRAJECTORY_TASKS, trials)
    rows += [(len(rows) + 1 + i, "nosuchpkg.tasks:Gone/0", "{}", 1.0, "ok", "mutation") for i in range(2)]
    for seq, ref, recipe, objective, status, proposer in rows:
        out.append(
            streams.ExperimentFinished(
                event_id=f"tr-{seq}/finish",
                agent_id="tr-1",
                agent_type="researcher",
                task=ref,
                run_id=f"run-{seq}",
                recipe=orjson.loads(recipe),
                seed=seq,
                budget=1.0,
                metrics={} if objective is None else {"value": objective},
                objective=objective,
                cost_s=0.001,
                status=status,
                success=False,
                proposer=proposer,
            )
        )
    return out


def traces(n_per_task: int = 24, seed: int = 0) -> list[streams.ExperimentFinished]:
    """Successful experiments on several instances, each with a parent (a fixture of traces)."""
    rng = random.Random(seed)
    out: list[streams.ExperimentFinished] = []
    for t, ref in enumerate(TASKS):
        task = load_task(ref)
        parent = task.baseline()
        parent_id = None
        for i in range(n_per_task):
            child = task.mutate(parent, rng)
            value = task.run(child, i, 1.0)["value"]
            ev = streams.ExperimentFinished(
                event_id=f"fx-{t}/run-{i}/finish",
                agent_id=f"fx-{t}",
                agent_type="researcher",
                task=ref,
                run_id=f"run-{i}",
                parent_id=parent_id,
                recipe=child.model_dump(),
                seed=i,
                budget=1.0,
                metrics={"value": value},
                objective=value,
                cost_s=0.001,
                status="ok",
                success=True,
                proposer="mutation",
            )
            out.append(ev)
            parent, parent_id = child, ev.event_id
    return out


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh Ed25519 key pair (``hive keys``)."""
    out = run_hive("keys", "--out", str(tmp_path / "keys"))
    assert out.returncode == 0, out.stderr
    return tmp_path / "keys" / "distiller.key", tmp_path / "keys" / "distiller.pub"


async def _materialized(nc: Any, spawn: Any, url: str, db: Path, n: int) -> None:
    spawn("materialize", "--nats", url, "--db", str(db))

    async def applied() -> bool:
        reply = await nc.request(streams.STATUS_SUBJECT, b"{}", timeout=1)
        return bool(orjson.loads(reply.data)["applied_seq"] >= n)

    await wait_for(applied, timeout=60, what="materialized fixture")


def test_gate_rules() -> None:
    """The gate promotes only a candidate with lower held-out loss and a good valid-action rate."""
    assert gate(Scores(0.5, 1.0), None) == (True, "first model")
    assert not gate(Scores(0.5, 0.9), None)[0]
    assert not gate(Scores(0.6, 1.0), Scores(0.5, 1.0))[0]
    assert gate(Scores(0.4, 1.0), Scores(0.5, 1.0))[0]
    assert not gate(Scores(0.4, 0.5), Scores(0.5, 1.0))[0]
    assert not gate(Scores(float("inf"), 1.0), None)[0]


def test_deployment_successes_count_while_their_incumbent_is_still_current() -> None:
    """Data selection on a real DuckDB: a deployment that beat an incumbent still within the noise
    floor of the best known is training data; one that beat a clearly superseded incumbent is not;
    one measured against the baseline (no incumbent yet) is."""
    import duckdb

    from agents import NOISE_SIGMAS
    from distill._data import SELECT_SQL
    from hive import migrate

    con = duckdb.connect()
    migrate(con)
    exp = "INSERT INTO experiments BY NAME SELECT ? AS event_id, ? AS seq, ? AS objective, ? AS proposer, "
    exp += "'k' AS run_key, 'r-1' AS agent_id, 'researcher' AS agent_type, 'branin/0' AS task, "
    exp += "'x' AS run_id, 'ok' AS status, false AS success"
    for i, (obj, proposer) in enumerate(
        [(3.0, "baseline"), (3.2, "baseline"), (2.8, "baseline"), (1.0, "mutation"), (0.5, "mutation")],
        start=1,
    ):
        con.execute(exp, [f"e{i}", i, obj, proposer])
    dep = "INSERT INTO deployments BY NAME SELECT ? AS event_id, ? AS seq, ? AS reference, "
    dep += "? AS reference_task, ? AS reference_score, 'd-1' AS agent_id, 'deployer' AS agent_type, "
    dep += "'branin/100000' AS task, '{}' AS recipe, 0.1 AS objective, 'ok' AS status, true AS success"
    con.execute(dep, ["superseded", 10, "incumbent", "branin/0", 1.0])  # best is 0.5, sigma 0.2
    con.execute(dep, ["current", 11, "incumbent", "branin/0", 0.7])  # within 2 sigma of 0.5
    con.execute(dep, ["baseline", 12, "baseline", None, None])
    rows = con.execute(SELECT_SQL, [100, NOISE_SIGMAS]).fetchall()
    assert [r[0] for r in rows] == [11, 12]


@pytest.mark.timeout(600)
async def test_distill_once_publishes_and_running_agents_use_it(
    nats_server: Any, nc: Any, spawn: Any, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """``hive distill --once`` (history backend, the default) on pooled trajectories trains a model
    that beats mutation in simulated studies on held-out instances, publishes it with the gate's
    figures and the skipped traces (a task nobody can import) on ModelPublished, and a running
    researcher's next traces carry its version and its name as the proposer within seconds."""
    priv, pub = keys
    url = nats_server.url
    fixture = trajectories()
    await streams.Publisher(nc.jetstream()).publish_many(fixture)
    await _materialized(nc, spawn, url, tmp_path / "d.duckdb", len(fixture))
    # an I/O-bound task (50 ms sleeps): the researcher leaves the CPU to the distiller
    spawn(
        "agent", "run", "researcher", "--nats", url, "--task", "sleep/0", "--id", "r-1", "--pubkey", f"{pub}"
    )
    out = await asyncio.to_thread(
        run_hive,
        "distill",
        "--once",
        "--nats",
        url,
        "--key",
        str(priv),
        "--steps",
        "150",
        "--model",
        orjson.dumps(HISTORY_SMALL).decode(),
        "--modes",
        "base",
        "--gate",
        GATE,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = orjson.loads(out.stdout)
    assert report["decision"] == "published", report
    assert report["backend"] == "history" and report["heldout_tasks"]
    assert report["instances"] >= 8  # branin/0..7, and sleep/0 once the researcher has run there
    assert report["skipped"] == {"unimportable_task": 2}
    # the elite memory: one best recipe per *training* branin instance (held-out ones give none)
    assert report["elites"]["branin"] == 8 - sum(t.startswith("branin/") for t in report["heldout_tasks"])
    assert "distill_traces_skipped" in out.stdout + out.stderr  # and in its logs
    await wait_for(lambda: _models(nc), timeout=20, what="models row")
    rows = (await streams.remote_query(nc, "SELECT version, decision, dataset_size, eval FROM models")).rows
    assert [r[:3] for r in rows] == [[1, "published", report["examples"]]]
    figures = orjson.loads(rows[0][3])
    assert figures["skipped_unimportable_task"] == 2.0 and figures["skipped_invalid_recipe"] == 0.0
    assert figures["gate_simulated"] == 1.0 and figures["gate_auc_candidate"] < figures["gate_auc_mutation"]

    async def used() -> bool:
        res = await streams.remote_query(
            nc,
            "SELECT count(*) FROM experiments WHERE agent_id = 'r-1' AND model_version = 1 "
            "AND proposer = 'model-v1'",
        )
        return bool(res.rows[0][0] > 0)

    await wait_for(used, timeout=60, what="agent traces from model v1")
    listing = await asyncio.to_thread(run_hive, "model", "list", "--nats", url)
    assert listing.returncode == 0 and "current version 1" in listing.stdout


async def _models(nc: Any) -> bool:
    res = await streams.remote_query(nc, "SELECT count(*) FROM models WHERE decision = 'published'")
    return bool(res.rows[0][0] >= 1)


@pytest.mark.timeout(600)
async def test_gate_rejects_a_worse_candidate_and_the_champion_stays(
    nats_server: Any, nc: Any, spawn: Any, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """A barely trained history candidate without its elite memory loses to mutation in the
    simulated studies: ModelRejected with the gate's figures, pointer unchanged."""
    priv, _ = keys
    url = nats_server.url
    fixture = trajectories(30)
    await streams.Publisher(nc.jetstream()).publish_many(fixture)
    await _materialized(nc, spawn, url, tmp_path / "g.duckdb", len(fixture))
    from distill import GateConfig

    gate_cfg = GateConfig(instances=2, seeds=2, trials=30)
    good = Distiller(
        DistillConfig(
            nats_url=url, key_path=str(priv), once=True, steps=150, model=HISTORY_SMALL, modes=("base",),
            gate=gate_cfg,
        )
    )  # fmt: skip
    (first,) = await good.run()
    assert first["decision"] == "published", first
    weak = Distiller(
        DistillConfig(
            nats_url=url, key_path=str(priv), once=True, steps=1, model=HISTORY_SMALL, modes=("base",),
            gate=gate_cfg, elites=0,  # the barely trained network alone
        )
    )  # fmt: skip
    (second,) = await weak.run()
    assert second["decision"] == "rejected" and "regret AUC" in second["reason"], second
    assert second["eval"]["gate_auc_candidate"] >= second["eval"]["gate_auc_mutation"]
    store = await streams.ModelStore(nc).open()
    current = await store.read_pointer("policy")
    assert current is not None and current[0].pointer.version == 1
    await wait_for(lambda: _rejected(nc), timeout=20, what="ModelRejected row")
    res = await streams.remote_query(nc, "SELECT eval FROM models WHERE decision = 'rejected'")
    assert "gate_auc_mutation" in orjson.loads(res.rows[0][0])


async def _rejected(nc: Any) -> bool:
    res = await streams.remote_query(nc, "SELECT count(*) FROM models WHERE decision = 'rejected'")
    return bool(res.rows[0][0] == 1)


async def test_bad_pointers_and_artifacts_are_refused_and_the_old_model_kept(
    nats_server: Any, nc: Any, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """Tampered weights, a bad or missing signature, a replayed older pointer, a truncated file and
    a pickle file are each refused; the agent keeps the model it had."""
    from distill import Policy, PolicyConfig

    priv, pub = keys
    key = streams.load_private_key(priv)
    pinned = streams.load_public_key(pub)
    store = await streams.ModelStore(nc).open(create=True)
    weights = Policy(PolicyConfig(**SMALL)).to_bytes()
    meta = b'{"note": "test"}'

    async def announce(
        version: int,
        serial: int,
        w: bytes,
        *,
        signer: Any = key,
        stored: bytes | None = None,
        signature: str | None = None,
    ) -> streams.SignedPointer:
        files = await store.put_version("policy", version, stored if stored is not None else w, meta)
        files.update(weights_sha256=hashlib.sha256(w).hexdigest(), weights_size=len(w))
        p = streams.ModelPointer(name="policy", serial=serial, version=version, **files)
        sig = streams.sign(signer, p.signed_bytes()) if signature is None else signature
        return streams.SignedPointer(pointer=p, signature=sig)

    slot = ModelSlot()
    v1 = await announce(1, 1, weights)
    assert await consider(store, v1, pinned, slot) and slot.version == 1
    other_key = streams.load_private_key(streams.generate_keys(tmp_path / "other")[0])
    cases = {
        "tampered": await announce(2, 2, weights, stored=weights[:-8] + b"\x00" * 8),
        "bad signature": await announce(3, 3, weights, signer=other_key),
        "missing signature": await announce(4, 4, weights, signature=""),
        "replayed": v1,
        "truncated": await announce(5, 5, weights, stored=weights[: len(weights) // 2]),
        "pickle": await announce(6, 6, pickle.dumps({"weights": list(range(100))})),
    }
    for name, signed in cases.items():
        assert not await consider(store, signed, pinned, slot), name
        assert slot.version == 1 and slot.serial == 1, name
    v7 = await announce(7, 7, weights)
    assert await consider(store, v7, pinned, slot) and slot.version == 7  # a good one still loads


def test_history_candidates_are_chosen_on_research_value(tmp_path: Path) -> None:
    """With a champion of the same shape, the distiller trains a fresh and a continued candidate and
    keeps the one with the lower regret AUC in the gate's studies (both figures on ``eval``), then
    gates it against mutation and the champion. In-process: no server needed for this step."""
    from agents import load_task
    from distill import GateConfig, HistoryConfig, build_history_dataset

    from .test_history_policy import trained_model

    priv, _ = streams.generate_keys(tmp_path / "keys")
    cfg = DistillConfig(
        nats_url="", key_path=str(priv), steps=40, model=HISTORY_SMALL, gate=GateConfig(2, 1, 20)
    )
    distiller = Distiller(cfg)
    distiller.champion, distiller.champion_version = trained_model(), 1
    rows = study_rows(TRAJECTORY_TASKS, 30)
    ds = build_history_dataset(rows, HistoryConfig(**HISTORY_SMALL), load=load_task)
    _model, mode, result, _ = distiller._train_and_gate_history(ds)
    m = result.metrics
    assert {"choice_base", "choice_continue"} <= set(m) and mode in ("base", "continue")
    assert m[f"choice_{mode}"] == min(m["choice_base"], m["choice_continue"])
    assert m["gate_auc_candidate"] == pytest.approx(m[f"choice_{mode}"])
    assert "gate_auc_champion" in m and "gate_auc_mutation" in m


async def test_rejections_back_off_the_next_generation(
    nats_server: Any, nc: Any, spawn: Any, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """A distiller whose candidates keep losing the gate waits for twice as many new traces after
    each rejection (not every `every_traces`), so a hive that cannot yet make a better model is not
    retrained in a tight loop: with every_traces=20, 40 new traces after one rejection start no
    generation while the doubled threshold is 40 (after two: 80)."""
    priv, _ = keys
    url = nats_server.url
    fixture = trajectories(30)
    pub = streams.Publisher(nc.jetstream())
    await pub.publish_many(fixture)
    await _materialized(nc, spawn, url, tmp_path / "b.duckdb", len(fixture))
    from distill import GateConfig

    d = Distiller(
        DistillConfig(
            nats_url=url, key_path=str(priv), steps=1, every_traces=20, model=HISTORY_SMALL, modes=("base",),
            gate=GateConfig(instances=2, seeds=1, trials=20), elites=0,  # the barely trained network alone
        )
    )  # fmt: skip
    task = asyncio.create_task(d.run())
    try:
        await wait_for(lambda: len(d.generations) >= 1, timeout=120, what="the first generation")
        assert d.generations[0]["decision"] == "rejected", d.generations[0]

        def more(start: int, n: int) -> list[streams.ExperimentFinished]:
            out = []
            for i, ev in enumerate(fixture[:n]):
                k = start + i
                out.append(ev.model_copy(update={"event_id": f"more-{k}/finish", "run_id": f"m{k}"}))
            return out

        await pub.publish_many(more(0, 30))  # 30 >= 20 but < 40: no generation after the backoff
        await asyncio.sleep(8)
        assert len(d.generations) == 1, [g.get("decision") for g in d.generations]
        await pub.publish_many(more(30, 15))  # 45 >= 40: the second generation starts
        await wait_for(lambda: len(d.generations) >= 2, timeout=120, what="the second generation")
    finally:
        d.stop()
        await asyncio.wait_for(task, 60)


@pytest.mark.timeout(600)
async def test_distill_elites_option_leaves_the_memory_out(
    nats_server: Any, nc: Any, spawn: Any, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """``hive distill --elites 0`` (the installed entry point) trains the network alone: its
    generation's report holds no elite recipe, where the default holds one per training instance."""
    priv, _ = keys
    url = nats_server.url
    fixture = trajectories(20)
    await streams.Publisher(nc.jetstream()).publish_many(fixture)
    await _materialized(nc, spawn, url, tmp_path / "e.duckdb", len(fixture))
    common = ["--once", "--nats", url, "--key", str(priv), "--steps", "20", "--modes", "base"]
    common += ["--model", orjson.dumps(HISTORY_SMALL).decode(), "--gate", "1x1x10"]
    out = await asyncio.to_thread(run_hive, "distill", *common, "--elites", "0", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = orjson.loads(out.stdout)
    assert report["decision"] in ("published", "rejected") and report["elites"] == {}, report
    bad = await asyncio.to_thread(run_hive, "distill", *common, "--elites", "65", timeout=60)
    assert bad.returncode == 2 and "--elites" in bad.stderr
