"""The ingest benchmark's options and scripts stay runnable (small event counts, a few seconds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from .conftest import run_hive

ROOT = Path(__file__).resolve().parents[1]


def test_bench_ingest_reports_every_goal() -> None:
    """``hive bench ingest`` keeps its old keys and adds every issue-12 goal beside its figure:
    hive Publisher alone vs raw, half-rate latency, query latency while ingesting, best_per_task
    over ``--query-rows``, materializer RSS and file size, a rebuild in its own process."""
    out = run_hive(
        "bench", "ingest", "--events", "1500", "--json", "--paced-seconds", "1", "--query-rows", "5000",
        timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    r = orjson.loads(out.stdout)
    for key in ("raw_publish_per_s", "hive_publish_per_s", "end_to_end_per_s", "ratio", "rebuild_per_s"):
        assert r[key] > 0
    assert r["hive_publish_alone_per_s"] > 0 and r["hive_publish_ratio"] > 0
    assert r["paced"]["events"] > 0 and r["paced"]["latency_ms"]["samples"] > 0
    assert r["query_ms"]["samples"] >= 0 and "path" in r["query_snapshot_ms"]
    assert r["best_per_task_ms"]["rows"] == 5000 and r["best_per_task_ms"]["tasks"] == 8
    assert r["best_per_task_ms"]["p50"] > 0
    assert r["materializer"]["peak_rss_mib"] > 10 and r["materializer"]["db_bytes"] > 0
    assert r["rebuild"]["events"] == r["rebuild_events"] >= 1500 + r["paced"]["events"]
    assert r["rebuild"]["peak_rss_mib"] > 10
    assert set(r["goals"]) == {
        "end_to_end_ratio",
        "end_to_end_per_s",
        "rebuild_per_s",
        "hive_publish_ratio",
        "paced_latency_p50_ms",
        "query_p50_ms",
        "best_per_task_p50_ms",
    }
    assert all(isinstance(g["met"], bool) for g in r["goals"].values())


def test_human_lines_show_each_goal() -> None:
    """Without ``--json`` the table on stderr prints each figure beside its goal."""
    out = run_hive(
        "bench", "ingest", "--events", "500", "--paced-seconds", "0.5", "--query-rows", "0", timeout=240
    )
    assert out.returncode == 0, out.stderr
    orjson.loads(out.stdout)  # stdout is the JSON alone
    assert "best_per_task p50" in out.stderr and "<= 100" in out.stderr


def test_rebuild_scale_script(tmp_path: Path) -> None:
    """``bench/rebuild_scale.py`` grows a log through two sizes, rebuilds each with ``hive rebuild``
    once per DuckDB memory limit (one row per event, the limit on each result), and writes the
    JSON and the plot."""
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "rebuild_scale.py"),
            "--sizes",
            "800,2000",
            "--memory-limits",
            "default,64MB",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        timeout=240,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    report = orjson.loads(out.stdout)
    assert [(r["events"], r["memory_limit"]) for r in report["results"]] == [
        (800, "default"),
        (800, "64MB"),
        (2000, "default"),
        (2000, "64MB"),
    ]
    for r in report["results"]:
        assert r["rows"] == r["events"] and r["per_s"] > 0 and r["peak_rss_mib"] > 10 and r["db_bytes"] > 0
    assert (tmp_path / "rebuild_scale.json").exists()
    assert (tmp_path / "rebuild_scale.png").stat().st_size > 1000


def test_paced_latency_script() -> None:
    """``bench/paced_latency.py`` reports p50/p99 publish -> queryable for each paced rate, once per
    snapshot interval asked for (side by side)."""
    script = str(ROOT / "bench" / "paced_latency.py")
    out = subprocess.run(
        [sys.executable, script, "--rates", "200,400", "--seconds", "1", "--snapshot-every", "0.5,100000"],
        capture_output=True,
        timeout=240,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    runs = orjson.loads(out.stdout)["runs"]
    assert [r["snapshot_every_s"] for r in runs] == [0.5, 100000]
    for report in runs:
        assert [a["target_per_s"] for a in report["arms"]] == [200, 400]
        for arm in report["arms"]:
            assert arm["events"] > 0 and arm["latency_ms"]["samples"] > 0 and arm["latency_ms"]["p50"] > 0
        assert report["materializer_peak_rss_mib"] > 10


def test_snapshot_script() -> None:
    """``bench/snapshot.py`` times hive's snapshot beside the full copy in both formats; hive's
    (rows without keys or indexes) is the smaller file."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "snapshot.py"), "--experiments", "20000", "--repeats", "1"],
        capture_output=True,
        timeout=240,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    report = orjson.loads(out.stdout.splitlines()[0])
    arms = report["arms"]
    assert list(arms) == ["hive snapshot (rows, v1.x)", "full copy, v1.x", "full copy, newest format"]
    assert all(a["median_s"] > 0 and a["bytes"] > 0 for a in arms.values())
    assert report["size_ratio_hive_over_full_v1"] < 1
