"""The soak's report: resource bounds over time, the PNG, and the one-line summary.

Kept apart from ``bench/soak.py`` (which runs the swarm and injects faults) so the analysis can
be rerun on a saved ``soak.json``: ``python bench/soak_report.py bench/results/soak/soak.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

MiB = 1024 * 1024

# Absolute slack per metric for the boundedness test, on top of the relative one: small series
# (a few MiB of WAL, a dozen fds) would otherwise fail on noise. The WAL slack is DuckDB's
# default ``checkpoint_threshold`` (16 MiB): the WAL may legitimately grow to it before a checkpoint.
SLACK = {"rss": 32 * MiB, "fds": 8, "wal": 16 * MiB}


def series_stats(values: list[float | None], *, pct: float, slack: float) -> dict[str, Any]:
    """min / max / last of a series, and whether it is bounded.

    Bounded: the max over the last third is not above the max over the first third by more than
    ``pct`` percent plus ``slack`` (absolute). Missing samples (None) are skipped.
    """
    xs = [v for v in values if v is not None]
    if not xs:
        return {
            "min": None,
            "max": None,
            "last": None,
            "first_third_max": None,
            "last_third_max": None,
            "bounded": True,
        }
    n = len(xs)
    third = max(1, n // 3)
    first_max = max(xs[:third])
    last_max = max(xs[-third:])
    limit = first_max * (1 + pct / 100) + slack
    return {
        "min": min(xs),
        "max": max(xs),
        "last": xs[-1],
        "first_third_max": first_max,
        "last_third_max": last_max,
        "limit": limit,
        "bounded": last_max <= limit,
    }


def resource_series(samples: list[dict[str, Any]]) -> dict[str, list[float | None]]:
    """Per-sample series: RSS and fds of every component and in total, and the DuckDB WAL size."""
    names: list[str] = []
    for s in samples:
        for name in s.get("procs", {}):
            if name not in names:
                names.append(name)
    out: dict[str, list[float | None]] = {}
    for name in names:
        out[f"rss:{name}"] = [s["procs"].get(name, {}).get("rss") for s in samples]
        out[f"fds:{name}"] = [s["procs"].get(name, {}).get("fds") for s in samples]
    out["rss:total"] = [sum(p.get("rss") or 0 for p in s["procs"].values()) or None for s in samples]
    out["fds:total"] = [sum(p.get("fds") or 0 for p in s["procs"].values()) or None for s in samples]
    out["wal"] = [s.get("wal_bytes") for s in samples]
    return out


def resource_bounds(samples: list[dict[str, Any]], *, pct: float) -> dict[str, dict[str, Any]]:
    """:func:`series_stats` for every resource series (key ``rss:<component>``, ``fds:…``, ``wal``)."""
    return {
        key: series_stats(vals, pct=pct, slack=SLACK[key.split(":")[0]])
        for key, vals in resource_series(samples).items()
    }


def plot(report: dict[str, Any], path: Path) -> None:
    """Lag, RSS, fds and WAL over time with the faults marked (kills: red lines; pauses: orange spans)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    t = [s["t"] for s in samples]
    fig, (ax_lag, ax_rss, ax_fd) = plt.subplots(3, 1, figsize=(12, 10), sharex=True)

    ax_lag.plot(t, [s.get("lag") for s in samples], ".-", color="tab:blue", label="materializer lag (events)")
    blind = [s["t"] for s in samples if s.get("lag") is None]
    ax_lag.plot(blind, [0] * len(blind), "x", color="tab:red", label="no answer (lag unknown)")
    ax_lag.legend(loc="center left", fontsize=7)
    ax_lag.set_ylabel("lag (events)")
    ax_seq = ax_lag.twinx()
    ax_seq.plot(
        t, [s.get("stream_last_seq") for s in samples], color="tab:gray", alpha=0.5, label="stream last seq"
    )
    ax_seq.set_ylabel("stream last seq", color="tab:gray")
    ax_lag.set_title(report["title"])

    series = resource_series(samples)
    for key, vals in series.items():
        if key.startswith("rss:") and key != "rss:total":
            ax_rss.plot(t, [v / MiB if v else None for v in vals], ".-", ms=3, label=key[4:])
    ax_rss.set_ylabel("RSS (MiB)")
    ax_rss.legend(loc="upper left", fontsize=7, ncol=4)

    ax_fd.plot(t, series["fds:total"], ".-", color="tab:purple", label="open fds (all components)")
    ax_fd.set_ylabel("open fds")
    ax_fd.set_xlabel("seconds since start")
    ax_wal = ax_fd.twinx()
    ax_wal.plot(
        t, [v / MiB if v is not None else None for v in series["wal"]], color="tab:green", label="DuckDB WAL"
    )
    ax_wal.set_ylabel("WAL (MiB)", color="tab:green")
    lines = ax_fd.get_legend_handles_labels()
    lines2 = ax_wal.get_legend_handles_labels()
    ax_fd.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)

    for ax in (ax_lag, ax_rss, ax_fd):
        for f in report["faults"]:
            if f["kind"] == "kill":
                ax.axvline(f["t"], color="red", lw=1, alpha=0.7)
            else:
                ax.axvspan(f["t"], f["t"] + f["held_s"], color="orange", alpha=0.25)
        for c in report["crashes"]:
            ax.axvline(c["t"], color="black", lw=1, ls="--")
        for f in report.get("failures", []):
            ax.axvline(f["t"], color="black", lw=1, ls=":")
        drain = [s["t"] for s in samples if s.get("phase") == "drain"]
        if drain:
            ax.axvspan(min(drain), max(drain), color="gray", alpha=0.15)
    for f in report["faults"]:
        ax_lag.annotate(
            f"{f['kind']} {f['target']}",
            (f["t"], 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            va="top",
            ha="right",
        )
    if drain:
        ax_fd.annotate(
            "drain", (min(drain), 0.5), xycoords=("data", "axes fraction"), fontsize=7, rotation=90
        )
    for f in report.get("failures", []):
        ax_lag.annotate(
            f"error {f['name']}",
            (f["t"], 0.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            va="bottom",
        )
    for c in report["crashes"]:
        ax_lag.annotate(
            f"exit {c['name']}",
            (c["t"], 0.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            va="bottom",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_line(report: dict[str, Any]) -> str:
    """One human line: verdict, duration, faults, the checker's counts, and the resource bounds."""
    v = report["verdict"]
    faults = report["faults"]
    kills = sum(1 for f in faults if f["kind"] == "kill")
    b = report["bounds"]

    def mib(key: str, field: str) -> str:
        x = b.get(key, {}).get(field)
        return f"{x / MiB:.0f}" if x is not None else "?"

    lags = [s["lag"] for s in report["samples"] if s.get("lag") is not None]
    failed = [name for name, ok in report["invariants"].items() if not ok]
    return (
        f"soak {'PASS' if not failed else 'FAIL (' + ', '.join(failed) + ')'}: "
        f"{report['elapsed_s'] / 60:.1f} min, {len(faults)} faults "
        f"({kills} kill, {len(faults) - kills} pause), "
        f"{len(report['crashes'])} unexpected exits, {len(report.get('failures', []))} component errors, "
        f"{len(report.get('unclean_stops', []))} slow SIGTERM stops; "
        f"acked={v.get('acked')} stored={v.get('stored')} "
        f"applied={v.get('applied')} checkpoint={v.get('checkpoint')}/{v.get('stream_last_seq')} "
        f"lost={len(v.get('lost_from_db', [])) + len(v.get('lost_from_stream', []))} "
        f"twice={len(v.get('applied_twice', []))}; lag max {max(lags) if lags else '?'}; "
        f"RSS total {mib('rss:total', 'min')}-{mib('rss:total', 'max')} MiB "
        f"(last {mib('rss:total', 'last')}); "
        f"fds {b.get('fds:total', {}).get('min')}-{b.get('fds:total', {}).get('max')}; "
        f"WAL max {mib('wal', 'max')} MiB"
    )


def main(argv: list[str]) -> int:
    """Re-plot and re-summarize a saved ``soak.json``."""
    path = Path(argv[0] if argv else "bench/results/soak/soak.json")
    report = json.loads(path.read_text())
    plot(report, path.with_suffix(".png"))
    print(summary_line(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
