"""``hive bench learning``: the CLI end to end (--quick, through a real hive), and its pieces offline."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from hive._bench_config import BenchConfig
from hive._bench_learning import ARMS, TARGET, Trained, _regret_curve, arm_status, evaluate

from .conftest import run_hive

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run_reports_every_arm_and_plots(tmp_path: Path) -> None:
    """--quick trains a real hive (``hive up`` with a campaign over lmrecipe/0-7 and the distiller,
    then the closing ``hive distill --once`` generation), then reports all five arms (each with
    figures or an 'unavailable' reason), the trained hive's proposer record, stable JSON keys, the
    per-run list, and writes the PNG. (Whether the model arm beats generation 0 is measured by the
    full benchmark, BENCHMARKS.md: at these settings it does not yet, reliably.)"""
    out = tmp_path / "out"
    proc = run_hive(
        "bench", "learning", "--quick", "--family", "lmrecipe", "--out", str(out), "--json", timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert json.loads((out / "learning.json").read_text()) == report
    assert (out / "learning.png").stat().st_size > 1000
    family = report["families"]["lmrecipe"]
    assert set(family["arms"]) == set(ARMS)
    assert family["heldout"] == ["lmrecipe/1000", "lmrecipe/1001"] and family["regret"] == "true"
    assert family["train"]["instances"] == [f"lmrecipe/{i}" for i in range(8)]
    record = family["train"]["proposer_record"]
    assert record.get("mutation", [0, 0])[0] > 0, record  # the trained hive's record was read
    for arm, data in family["arms"].items():
        if data["available"]:
            assert data["runs"] == 4 and len(data["per_run"]) == 4, arm
            assert 1 <= data["median_trials"] <= 61 and len(data["curve"]) == 60
            assert all(p["trials"] is None or 1 <= p["trials"] <= 60 for p in data["per_run"])
        else:
            assert data["reason"], arm
    assert family["arms"]["random"]["available"]  # needs nothing but the task
    assert family["arms"]["generation0"]["available"]
    if family["arms"]["hive"]["available"]:  # the evaluated model is kept beside the report
        kept = out / family["train"]["model_file"]
        assert kept.stat().st_size > 1000 and kept.with_suffix(".meta.json").exists()
        # ... and bench/learning_replay.py replays the held-out studies on it, side by side
        replay = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "learning_replay.py"), "--out", str(out),
             "--frontier-powers", "1,8", "--heldout", "2", "--seeds", "1"],
            capture_output=True, text=True, timeout=300, cwd=ROOT,
        )  # fmt: skip
        assert replay.returncode == 0, replay.stderr[-3000:]
        runs = json.loads(replay.stdout)
        assert [(r["family"], r["frontier_power"]) for r in runs] == [("lmrecipe", 1.0), ("lmrecipe", 8.0)]
        for r in runs:
            assert r["studies_per_arm"] == 2
            assert {"hive", "generation0"} <= set(r)
            assert any(k.startswith("model-") for k in r["hive"]["share"])  # the kept model proposed


def test_cli_rejects_an_unknown_family(tmp_path: Path) -> None:
    """An unknown --family is a one-line usage error before anything starts."""
    proc = run_hive("bench", "learning", "--family", "nope", "--out", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "unknown task" in proc.stderr


def test_regret_curve_is_best_so_far_and_padded() -> None:
    """The curve is the running best normalised regret, held to the budget after an early stop."""
    curve = _regret_curve([9.0, None, 5.0, 7.0, 1.2], optimum=1.0, base=11.0, budget=7)
    assert curve == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.02, 0.02, 0.02])
    assert curve[4] <= TARGET < curve[3]


def test_unavailable_arms_say_why() -> None:
    """With no model and no trained recipes, the model and warm-start arms are unavailable, with reasons."""
    status = arm_status(Trained(instances=[], mode="none", seconds=0, model_reason="no model published"))
    assert status["random"] is None
    assert status["hive"] is not None and "no model published" in status["hive"]
    assert status["tpe_warm"] is not None


def test_offline_evaluation_counts_trials_against_the_truth(tmp_path: Path) -> None:
    """Offline phase on a trained state built by hand: random and TPE arms run, a run's trials is
    the first trial at regret <= 0.05 (recomputed here from the task), unsolved count budget + 1."""
    from concurrent.futures import ProcessPoolExecutor

    from agents import load_task

    best = load_task("augreg/1").optimum_recipe().model_dump()  # type: ignore[attr-defined]
    trained = Trained(
        instances=["augreg/1"], mode="hand", seconds=0, best_recipes=[best], model_reason="none"
    )
    cfg = BenchConfig(families=["augreg"], heldout=1, seeds=2, budget=30, out=tmp_path)
    with ProcessPoolExecutor(max_workers=1) as pool:
        report = evaluate("augreg", trained, cfg, pool)
    random_arm = report["arms"]["random"]
    assert random_arm["available"] and random_arm["runs"] == 2
    counted = sorted(p["trials"] or 31 for p in random_arm["per_run"])
    assert random_arm["median_trials"] == (counted[0] + counted[1]) / 2
    assert all(math.isfinite(c) and c >= 0 for c in random_arm["curve"])
    assert not report["arms"]["hive"]["available"]
