"""`hive up --task family/0-3` runs a campaign through the installed entry point: researchers spread
over the instances, and no instance gets more experiments than its budget."""

from __future__ import annotations

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
