"""``hive plot`` through the entry point writes real PNGs from a materialized hive."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import streams
from hive import Materializer
from hive._plot import PLOTS, wilson_interval

from .conftest import run_hive
from .spine_helpers import finished

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_wilson_interval_brackets_the_rate() -> None:
    """The 95% Wilson interval contains the observed rate, narrows with n, and stays in [0, 1]."""
    lo, hi = wilson_interval(3, 10)
    assert lo < 0.3 < hi
    lo2, hi2 = wilson_interval(300, 1000)
    assert lo < lo2 < 0.3 < hi2 < hi
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


async def test_plot_writes_three_pngs(nats_server: Any, nc: Any, tmp_path: Path) -> None:
    """From experiments (with baselines) and deployments, ``hive plot`` writes the three PNGs and
    prints their paths; from an empty hive it still writes them (with a 'no data' note)."""
    events: list[streams.Event] = [
        finished(i, proposer="baseline" if i < 3 else "mutation") for i in range(30)
    ]
    dep = streams.example("DeploymentFinished")
    events += [
        dep.model_copy(update={"event_id": f"{dep.event_id}-{i}", "run_id": f"d{i}", "success": i % 3 == 0})
        for i in range(9)
    ]
    await streams.Publisher(nc.jetstream()).publish_many(events)
    db = tmp_path / "hive.duckdb"
    await asyncio.wait_for(Materializer(nats_server.url, db, serve_queries=False, stop_at_seq=39).run(), 60)
    out = tmp_path / "plots"
    r = run_hive("plot", "--db", str(db), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(out / name) for name in PLOTS]
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, name
    missing = run_hive("plot", "--db", str(tmp_path / "none.duckdb"), "--out", str(out))
    assert missing.returncode == 1 and "no database" in missing.stderr and "Traceback" not in missing.stderr
