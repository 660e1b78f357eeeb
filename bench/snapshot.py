"""What a snapshot costs: hive's, side by side with a full copy in the 1.x and the newest format.

Builds a hive database of N experiments with the project's schema, then times, alternating:
``write_snapshot`` (hive's: the rows of every table without keys or indexes, then the views, in
the 1.x storage format ``SNAPSHOT_STORAGE_VERSION``), a full ``COPY FROM DATABASE`` (keys and
indexes too: what snapshots were before) in the same format, and the full copy in the running
library's newest format. Reports the median time and the file size of each. Prints one JSON
object and a human line.

    python bench/snapshot.py --experiments 200000
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

import hive._store as store
from hive._schema import migrate


def build(db: Path, n: int) -> None:
    """A database holding ``n`` experiments (and their starts) shaped like real traces."""
    con = duckdb.connect(str(db))
    migrate(con)
    con.execute(
        f"""INSERT INTO experiments BY NAME SELECT
            'r-' || (i % 64) || '/run-' || i || '/finish' AS event_id, i AS seq, 'run-' || i AS run_key,
            'r-' || (i % 64) AS agent_id, 'researcher' AS agent_type, 'branin/' || (i % 32) AS task,
            0 AS model_version, 'run-' || i AS run_id, NULL AS parent_id,
            json_object('x1', random() * 15 - 5, 'x2', random() * 15, 'warp', 'none') AS recipe,
            i % 1000 AS seed, 1.0 AS budget, json_object('value', random()) AS metrics,
            random() AS objective, 0.01 AS cost_s, 'ok' AS status, NULL AS error, i % 3 = 0 AS success,
            'mutation' AS proposer, now() AS finished_at
        FROM range({n}) t(i)"""
    )
    con.execute("INSERT INTO checkpoint VALUES ('HIVE', ?)", [n])
    con.close()


def main() -> None:
    """Run the comparison and print JSON plus one human line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "hive.duckdb"
        build(db, args.experiments)
        con = duckdb.connect(str(db))

        def full_copy(target: Path, version: str | None) -> None:
            tmp = Path(str(target) + ".tmp")
            option = f" (STORAGE_VERSION '{version}')" if version else ""
            con.execute(f"ATTACH '{tmp}' AS s{option}")
            con.execute("COPY FROM DATABASE hive TO s")
            con.execute("DETACH s")
            tmp.replace(target)

        v1 = store.SNAPSHOT_STORAGE_VERSION
        arms: dict[str, Callable[[Path], object]] = {
            "hive snapshot (rows, v1.x)": lambda t: store.write_snapshot(con, t),
            "full copy, v1.x": lambda t: full_copy(t, v1),
            "full copy, newest format": lambda t: full_copy(t, None),
        }
        times: dict[str, list[float]] = {k: [] for k in arms}
        sizes: dict[str, int] = {}
        for _ in range(args.repeats):
            for i, (name, write) in enumerate(arms.items()):
                target = Path(d) / f"snap-{i}.duckdb"
                t0 = time.perf_counter()
                write(target)
                times[name].append(time.perf_counter() - t0)
                sizes[name] = target.stat().st_size
                target.unlink()
        con.close()
    out = {
        "experiments": args.experiments,
        "arms": {
            k: {"median_s": round(statistics.median(v), 3), "bytes": sizes[k]} for k, v in times.items()
        },
    }
    hive, full, new = (out["arms"][k] for k in arms)
    out["time_ratio_hive_over_full_v1"] = round(hive["median_s"] / full["median_s"], 2)
    out["size_ratio_hive_over_full_v1"] = round(hive["bytes"] / full["bytes"], 2)
    out["time_ratio_v1_over_newest"] = round(full["median_s"] / new["median_s"], 2)
    out["size_ratio_v1_over_newest"] = round(full["bytes"] / new["bytes"], 2)
    print(json.dumps(out))
    print(
        f"snapshot of {args.experiments:,} experiments: hive's {hive['median_s']}s / "
        f"{hive['bytes'] / 2**20:.1f} MiB; full copy v1.x {full['median_s']}s / "
        f"{full['bytes'] / 2**20:.1f} MiB, "
        f"newest {new['median_s']}s / {new['bytes'] / 2**20:.1f} MiB "
        f"(hive/full: time x{out['time_ratio_hive_over_full_v1']}, "
        f"size x{out['size_ratio_hive_over_full_v1']}; "
        f"v1.x/newest: time x{out['time_ratio_v1_over_newest']}, size x{out['size_ratio_v1_over_newest']})"
    )


if __name__ == "__main__":
    main()
