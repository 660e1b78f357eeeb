"""The hive learns: a short ``hive up`` in which distilled models beat generation 0 on held-out instances."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import duckdb

from hive import generations

from .conftest import pid_alive, run_hive

DURATION_S = 150
"""Long enough on two shared cores for generation 1 (about 30-60 s in) and a few hundred
deployments with it; `bench/learning.py` measures the same run several times."""


def test_model_generations_beat_generation_zero_on_held_out_instances(tmp_path: Path) -> None:
    """``hive up`` on the hartmann6 family with distillation every 200 successful traces: the
    deployments on new, never-researched instances that a distilled model (generation >= 1)
    proposed beat the family's incumbent more often than generation 0's mutations did."""
    data = tmp_path / "data"
    try:
        out = run_hive(
            "up", "--agents", "3", "--types", "researcher,deployer,deployer", "--task", "hartmann6/0",
            "--duration", str(DURATION_S), "--distill-every", "200", "--port", "0", "--http-port", "0",
            "--data", str(data),
            timeout=DURATION_S + 150,
        )
        assert out.returncode == 0, out.stderr[-3000:]
    finally:  # whatever happened, no process of the swarm outlives the test
        pids_file = data / "up.pids"
        if pids_file.exists():
            for pid in json.loads(pids_file.read_text()).values():
                if pid_alive(pid):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
    con = duckdb.connect(str(data / "hive.duckdb"), read_only=True)
    try:
        gens = generations(con)
        published = con.execute("SELECT count(*) FROM models WHERE decision = 'published'").fetchone()
    finally:
        con.close()
    summary = gens.summary()
    assert published and published[0] >= 1, summary
    (n0, _), (n1, _) = gens.gen0, gens.later
    assert n0 >= 200 and n1 >= 100, summary  # enough deployments on both sides to compare
    assert gens.margin is not None and gens.margin > 0, summary
    print("learning:", json.dumps(summary))
