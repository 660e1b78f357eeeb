"""What writing snapshots in the DuckDB 1.x storage format costs, side by side with the newest format.

Builds a hive database of N experiments with the project's schema, then times ``write_snapshot``
(ATTACH + COPY FROM DATABASE + rename) with the storage version the snapshot uses
(``SNAPSHOT_STORAGE_VERSION``) and with the running library's default, alternating, and reports
the median time and the file size of each. Prints one JSON object and a human line.

    python bench/snapshot.py --experiments 200000
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
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
        arms = {"v1.x (snapshot default)": store.SNAPSHOT_STORAGE_VERSION, "newest (library default)": None}
        times: dict[str, list[float]] = {k: [] for k in arms}
        sizes: dict[str, int] = {}
        for _ in range(args.repeats):
            for name, version in arms.items():
                target = Path(d) / f"snap-{len(sizes)}-{name[:2]}.duckdb"
                t0 = time.perf_counter()
                if version is None:
                    tmp = Path(str(target) + ".tmp")
                    con.execute(f"ATTACH '{tmp}' AS s")
                    con.execute("COPY FROM DATABASE hive TO s")
                    con.execute("DETACH s")
                    tmp.replace(target)
                else:
                    store.write_snapshot(con, target)
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
    v1, new = (out["arms"][k] for k in arms)
    out["time_ratio_v1_over_newest"] = round(v1["median_s"] / new["median_s"], 2)
    out["size_ratio_v1_over_newest"] = round(v1["bytes"] / new["bytes"], 2)
    print(json.dumps(out))
    print(
        f"snapshot of {args.experiments:,} experiments: "
        f"v1.x {v1['median_s']}s / {v1['bytes'] / 2**20:.1f} MiB, "
        f"newest {new['median_s']}s / {new['bytes'] / 2**20:.1f} MiB "
        f"(time x{out['time_ratio_v1_over_newest']}, size x{out['size_ratio_v1_over_newest']})"
    )


if __name__ == "__main__":
    main()
