"""``hive model sample`` and ``hive model eval`` through the CLI (subprocesses): a model from local
files or from a real hive's Object Store (signature checked), an instance's history from DuckDB."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

import streams
from distill.model import HistoryConfig, HistoryModel

from .conftest import run_hive
from .test_history_policy import SMALL, study_rows, trained_model


@pytest.fixture
def model_files(tmp_path: Path) -> tuple[Path, Path]:
    """The trained branin model as published: weights and meta.json."""
    model = trained_model()
    weights, meta = tmp_path / "v3.safetensors", tmp_path / "v3.meta.json"
    weights.write_bytes(model.to_bytes())
    meta.write_text(json.dumps({"backend": "history", "config": json.loads(model.cfg.to_json())}))
    return weights, meta


def history_db(path: Path, ref: str, trials: int) -> Path:
    """A hive database holding one instance's trajectory (baselines, then trials, in log order)."""
    from hive import migrate

    con = duckdb.connect(str(path))
    migrate(con)
    sql = (
        "INSERT INTO experiments BY NAME SELECT ? AS seq, ? AS task, ? AS recipe, ? AS objective, "
        "? AS status, ? AS proposer, 'e' || ? AS event_id, 'k' AS run_key, 'r-1' AS agent_id, "
        "'researcher' AS agent_type, 'x' AS run_id"
    )
    for seq, task, recipe, objective, status, proposer in study_rows([ref], trials):
        con.execute(sql, [seq, task, recipe, objective, status, proposer, seq])
    con.close()
    return path


def test_sample_from_local_files_with_history(tmp_path: Path, model_files: tuple[Path, Path]) -> None:
    """``hive model sample --history DB --json`` reads the instance's trials from DuckDB and prints
    N valid proposals conditioned on them; the table form prints the model and the history size."""
    weights, meta = model_files
    db = history_db(tmp_path / "h.duckdb", "branin/4", 25)
    args = ["model", "sample", "3", "--task", "branin/4", "--weights", str(weights), "--meta", str(meta)]
    out = run_hive(*args, "--history", str(db), "-n", "4", "--json", timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["model"] == "model-v3" and info["history_trials"] == 25 and info["baselines"] == 3
    from agents import load_task

    space = load_task("branin/4").space
    assert len(info["proposals"]) == 4 and all(space.model_validate(p["recipe"]) for p in info["proposals"])
    table = run_hive(*args, "--history", str(db), "-n", "2", timeout=120)
    assert table.returncode == 0 and "model-v3 on branin/4" in table.stdout and "25 trials" in table.stdout


def test_eval_compares_the_model_with_mutation(model_files: tuple[Path, Path]) -> None:
    """``hive model eval --json`` runs short studies on each chosen instance for the model and for
    mutation, with regret AUC and trials-to-target on the true objective; the trained model's
    AUC is below mutation's on held-out branin instances (about 0.3 vs 0.6 when written)."""
    weights, meta = model_files
    out = run_hive(
        "model", "eval", "3", "--task", "branin/7001,branin/7002", "--trials", "25", "--seeds", "2",
        "--weights", str(weights), "--meta", str(meta), "--json", timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["task"], r["proposer"]) for r in rows] == [
        ("branin/7001", "model-v3"),
        ("branin/7001", "mutation"),
        ("branin/7002", "model-v3"),
        ("branin/7002", "mutation"),
    ]
    model_auc = sum(r["regret_auc"] for r in rows if r["proposer"] == "model-v3") / 2
    mutation_auc = sum(r["regret_auc"] for r in rows if r["proposer"] == "mutation") / 2
    assert model_auc < mutation_auc, rows
    assert all(r["trials"] == 25 and r["seeds"] == 2 and 0 <= r["solved"] <= 2 for r in rows)


def test_bad_model_tool_input_is_one_line(tmp_path: Path, model_files: tuple[Path, Path]) -> None:
    """Half a local pair, an unknown task, a forged model file and a missing history database are
    each refused with a clear message and a non-zero exit."""
    weights, meta = model_files
    forged = tmp_path / "forged.meta.json"
    forged.write_text(
        json.dumps(
            {"backend": "history", "config": {**json.loads(meta.read_text())["config"], "n_embd": 4096}}
        )
    )
    cases = [
        (["--task", "branin/1", "--weights", str(weights)], "--meta"),
        (["--task", "nosuch/1", "--weights", str(weights), "--meta", str(meta)], "unknown task"),
        (["--task", "branin/1", "--weights", str(weights), "--meta", str(forged)], "n_embd"),
        (
            [
                "--task",
                "branin/1",
                "--weights",
                str(weights),
                "--meta",
                str(meta),
                "--history",
                "/nope.duckdb",
            ],
            "no such",
        ),
    ]
    for args, message in cases:
        out = run_hive("model", "sample", "1", *args, timeout=60)
        assert out.returncode != 0 and message in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr


async def _publish(nc: Any, key: Any, version: int, weights: bytes, meta: bytes) -> None:
    """Store ``version`` and point at it with a pointer signed by ``key`` (as the distiller does)."""
    store = await streams.ModelStore(nc).open(create=True)
    files = await store.put_version("policy", version, weights, meta)
    current = await store.read_pointer("policy")
    serial = current[0].pointer.serial + 1 if current else 1
    pointer = streams.ModelPointer(name="policy", serial=serial, version=version, **files)
    await store.write_pointer(pointer, key, current[1] if current else None)


async def test_sample_from_the_store_checks_the_signature(nats_server: Any, nc: Any, tmp_path: Path) -> None:
    """From a running hive, ``hive model sample`` takes a version only through a pointer signed by
    the pinned key: the right key samples it, another key is refused, as is a version no signed
    pointer names."""
    priv, pub = streams.generate_keys(tmp_path / "keys")
    other_pub = streams.generate_keys(tmp_path / "other")[1]
    model = HistoryModel(HistoryConfig(**SMALL))
    meta = json.dumps({"backend": "history", "config": json.loads(model.cfg.to_json())}).encode()
    await _publish(nc, streams.load_private_key(priv), 2, model.to_bytes(), meta)
    base = ["model", "sample", "--task", "branin/3", "--nats", nats_server.url, "--json"]
    ok = await asyncio.to_thread(run_hive, *base[:2], "2", *base[2:], "--pubkey", str(pub), timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["model"] == "model-v2"
    wrong = await asyncio.to_thread(
        run_hive, *base[:2], "2", *base[2:], "--pubkey", str(other_pub), timeout=120
    )
    assert wrong.returncode != 0 and "signed by this key" in wrong.stderr
    missing = await asyncio.to_thread(run_hive, *base[:2], "9", *base[2:], "--pubkey", str(pub), timeout=120)
    assert missing.returncode != 0 and "version 9" in missing.stderr
