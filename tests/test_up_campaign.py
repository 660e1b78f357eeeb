"""`hive up --task family/0-3` runs a campaign through the installed entry point: researchers spread
over the instances, and no instance gets more experiments than its budget."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import CHILD_ENV, db_rows


def test_hive_up_runs_a_campaign_within_budgets(tmp_path: Path) -> None:
    """Two researchers on branin/0-3 with a budget of 12 experiments per instance: every instance
    they touched stays within its budget (baselines included), and more than one was worked."""
    data = tmp_path / "data"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "hive",
            "up",
            "--agents",
            "2",
            "--types",
            "researcher",
            "--task",
            "branin/0-3",
            "--duration",
            "20",
            "--no-distill",
            "--data",
            str(data),
            "--port",
            "0",
            "--http-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**CHILD_ENV, "HIVE_INSTANCE_BUDGET": "12"},
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = db_rows(data / "hive.duckdb", "SELECT task, count(*) FROM experiments GROUP BY task ORDER BY task")
    assert len(rows) >= 2, rows
    assert all(task.startswith("branin/") and int(task.split("/")[1]) in range(4) for task, _ in rows), rows
    assert all(n <= 12 for _task, n in rows), rows
    bad = subprocess.run(
        [sys.executable, "-m", "hive", "up", "--task", "branin/3-1", "--data", str(tmp_path / "d2")],
        capture_output=True,
        text=True,
        timeout=60,
        env=CHILD_ENV,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr


def _hive_exe() -> str:
    """The installed ``hive`` console script (beside this interpreter, else on PATH)."""
    beside = Path(sys.executable).parent / "hive"
    found = str(beside) if beside.exists() else shutil.which("hive")
    assert found, "the `hive` console script is not installed (pip install -e .)"
    return found


def test_hive_up_deployers_take_new_instances_from_the_configured_range(tmp_path: Path) -> None:
    """``hive up --deploy-instances 500-505`` (the installed entry point): two deployers beside a
    researcher on branin/0 deploy only on branin/500..505, each instance once, and all six are
    used before they stop; a bad range, by option or by ``HIVE_DEPLOY_INSTANCES``, is refused up
    front with one line and exit 2."""
    exe, data = _hive_exe(), tmp_path / "data"
    r = subprocess.run(
        [
            exe, "up", "--agents", "3", "--types", "researcher,deployer,deployer", "--task", "branin/0",
            "--deploy-instances", "500-505", "--duration", "12", "--no-distill", "--data", str(data),
            "--port", "0", "--http-port", "0",
        ],
        capture_output=True, text=True, timeout=180, env=CHILD_ENV,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = db_rows(data / "hive.duckdb", "SELECT task, agent_id FROM deployments ORDER BY task")
    tasks = [task for task, _ in rows]
    assert tasks == [f"branin/{i}" for i in range(500, 506)], rows  # every one, each once
    assert {agent for _, agent in rows} <= {"deployer-1", "deployer-2"}, rows
    researched = db_rows(data / "hive.duckdb", "SELECT DISTINCT task FROM experiments")
    assert researched == [("branin/0",)], researched
    for extra, env in [(["--deploy-instances", "9-1"], {}), ([], {"HIVE_DEPLOY_INSTANCES": "9-1"})]:
        bad = subprocess.run(
            [exe, "up", "--task", "branin/0", "--data", str(tmp_path / "d2"), *extra],
            capture_output=True, text=True, timeout=60, env={**CHILD_ENV, **env},
        )  # fmt: skip
        assert bad.returncode == 2 and "--deploy-instances" in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr and not (tmp_path / "d2").exists(), bad.stderr
