"""Pictures of a hive's progress (PNG, matplotlib headless), for people who would rather look:

* ``best_so_far.png``: best objective so far against trials, one panel per task instance, with
  the band of its replicated baselines;
* ``proposer_share.png``: which proposer made the experiments, over time;
* ``deployment_success.png``: deployment success rate by model generation, with 95% Wilson
  intervals.

All three read a DuckDB file that no materializer owns (the snapshot, or a stopped hive's db).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import duckdb

__all__ = ["PLOTS", "wilson_interval", "write_plots"]

PLOTS = ("best_so_far.png", "proposer_share.png", "deployment_success.png")
MAX_PANELS = 12
"""At most this many instances get a best-so-far panel (those with the most trials)."""


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a success rate (``(0, 1)`` when ``n`` is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _best_so_far(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    plt = _pyplot()
    rows = con.execute(
        "SELECT task, objective, proposer FROM experiments "
        "WHERE status = 'ok' AND objective IS NOT NULL AND isfinite(objective) ORDER BY seq"
    ).fetchall()
    trials: dict[str, list[float]] = defaultdict(list)
    baselines: dict[str, list[float]] = defaultdict(list)
    for task, objective, proposer in rows:
        if proposer == "baseline":
            baselines[task].append(objective)
        else:
            trials[task].append(objective)
    tasks = sorted(trials, key=lambda t: (-len(trials[t]), t))[:MAX_PANELS]
    cols = min(4, max(1, len(tasks)))
    nrows = max(1, math.ceil(len(tasks) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
    for ax in axes.flat[len(tasks) :]:
        ax.axis("off")
    if not tasks:
        _empty(axes.flat[0], "no finished experiments yet")
    for ax, task in zip(axes.flat, sorted(tasks), strict=False):
        ys = trials[task]
        best, curve = math.inf, []
        for y in ys:
            best = min(best, y)
            curve.append(best)
        ax.plot(range(1, len(ys) + 1), ys, ".", color="lightgrey", markersize=3, label="trial")
        ax.step(range(1, len(curve) + 1), curve, where="post", color="C0", label="best so far")
        if baselines.get(task):
            lo, hi = min(baselines[task]), max(baselines[task])
            ax.axhspan(lo, hi, color="C1", alpha=0.2, label=f"baseline ({len(baselines[task])} runs)")
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("trials")
        ax.set_ylabel("objective (lower is better)")
        ax.legend(fontsize=6, loc="upper right")
    fig.suptitle("Best objective so far per task instance")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _proposer_share(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    plt = _pyplot()
    rows = con.execute(
        "SELECT CAST(floor(epoch(finished_at) - min(epoch(finished_at)) OVER ()) AS BIGINT) AS t, "
        "coalesce(proposer, 'unknown') FROM experiments WHERE finished_at IS NOT NULL ORDER BY seq"
    ).fetchall()
    fig, ax = plt.subplots(figsize=(8, 4))
    if not rows:
        _empty(ax, "no experiments yet")
    else:
        span = max(r[0] for r in rows) + 1
        width = max(1, math.ceil(span / 40))  # about 40 time buckets
        proposers = sorted({r[1] for r in rows})
        buckets = span // width + 1
        counts = {p: [0] * buckets for p in proposers}
        for t, p in rows:
            counts[p][t // width] += 1
        totals = [sum(counts[p][i] for p in proposers) or 1 for i in range(buckets)]
        xs = [i * width for i in range(buckets)]
        shares = [[counts[p][i] / totals[i] for i in range(buckets)] for p in proposers]
        ax.stackplot(xs, shares, labels=proposers, step="post")
        ax.set_ylim(0, 1)
        ax.set_xlabel(f"seconds since the first experiment ({width}s buckets)")
        ax.set_ylabel("share of experiments")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("Proposer share over time")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _deployment_success(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    plt = _pyplot()
    rows = con.execute(
        "SELECT coalesce(model_version, 0), count(*), count(*) FILTER (WHERE success) FROM deployments "
        "WHERE status = 'ok' GROUP BY ALL ORDER BY 1"
    ).fetchall()
    fig, ax = plt.subplots(figsize=(6, 4))
    if not rows:
        _empty(ax, "no deployments yet")
    else:
        labels = [f"gen {v}\n(n={n})" for v, n, _s in rows]
        rates = [s / n for _v, n, s in rows]
        cis = [wilson_interval(s, n) for _v, n, s in rows]
        err = [
            [r - lo for r, (lo, _hi) in zip(rates, cis, strict=True)],
            [hi - r for r, (_lo, hi) in zip(rates, cis, strict=True)],
        ]
        ax.bar(labels, rates, yerr=err, capsize=4, color="C2")
        ax.set_ylim(0, 1)
        ax.set_ylabel("success rate (95% Wilson interval)")
    ax.set_title("Deployment success by model generation")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(db: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the three PNGs of :data:`PLOTS` into ``out_dir`` from the DuckDB file ``db``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db), read_only=True)
    try:
        paths = [out / name for name in PLOTS]
        _best_so_far(con, paths[0])
        _proposer_share(con, paths[1])
        _deployment_success(con, paths[2])
    finally:
        con.close()
    return paths
