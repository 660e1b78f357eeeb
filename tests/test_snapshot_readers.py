"""The snapshot opens in DuckDB clients other than the project's own: the official DuckDB 1.x CLI
(``duckdb-cli`` 1.5.6, installed by ``make test`` in ``.venv-readers``) reads it while the
materializer runs, tables and views alike."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import streams
from hive import snapshot_path_for

from .conftest import wait_for
from .spine_helpers import finished

ROOT = Path(__file__).resolve().parent.parent


def duckdb1_cli() -> str:
    """The DuckDB 1.x CLI: $HIVE_DUCKDB1_CLI, else ``.venv-readers/bin/duckdb`` (made by ``make test``)."""
    exe = os.environ.get("HIVE_DUCKDB1_CLI") or str(ROOT / ".venv-readers" / "bin" / "duckdb")
    if not Path(exe).exists() and not shutil.which(exe):
        if os.environ.get("CI"):
            pytest.fail(f"no DuckDB 1.x CLI at {exe}: `make test` installs it (duckdb-cli==1.5.6)")
        pytest.skip(f"no DuckDB 1.x CLI at {exe}; run `make .venv-readers/.installed`")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    assert version.startswith("v1."), f"expected a DuckDB 1.x CLI, got {version!r}"
    return exe


async def test_duckdb1_cli_opens_the_live_snapshot(
    nats_server: Any, nc: Any, spawn: Any, tmp_path: Path
) -> None:
    """While `hive materialize` runs, the DuckDB 1.5 CLI opens hive.snapshot.duckdb read-only and
    reads a table and a view (the project's DuckDB is newer; its default format 1.x cannot read)."""
    exe = duckdb1_cli()
    db = tmp_path / "hive.duckdb"
    snap = snapshot_path_for(db)
    await streams.Publisher(nc.jetstream()).publish_many([finished(i) for i in range(25)])
    spawn("materialize", "--nats", nats_server.url, "--db", str(db), "--snapshot-every", "0.5")

    def read() -> str | None:
        if not snap.exists():
            return None
        r = subprocess.run(
            [
                exe,
                "-readonly",
                "-csv",
                "-noheader",
                str(snap),
                "SELECT count(*) FROM experiments; SELECT count(*) FROM best_per_task;",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout if r.stdout.split() == ["25", "5"] else None

    await wait_for(read, timeout=60, what="the DuckDB 1.x CLI reading 25 experiments from the snapshot")
