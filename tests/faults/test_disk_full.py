"""A full disk under the materializer: a real, tiny tmpfs holds the DuckDB file; the commit fails
with ENOSPC; the materializer logs it, backs off and retries, and catches up once space is freed."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import streams

from ..conftest import Proc, wait_for
from .checker import AckedLoad, applied_state, check, read_stream
from .test_kill_pause import _ingesting, _quiescent


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs mounted on a temp dir (unmounted at teardown); skips where mounting is refused."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def _fill(mnt: Path, leave: int) -> Path:
    """Write a filler file so that only about ``leave`` bytes stay free on ``mnt``."""
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(free - leave, 0))
    return filler


async def test_disk_full_is_ridden_out(
    nats_server: streams.EmbeddedServer, nc: Any, spawn: Callable[..., Proc], small_disk: Path
) -> None:
    """With the disk full, the materializer stays up, logs one clear "disk full" error and retries;
    after space is freed it catches up: nothing acked lost, nothing applied twice."""
    db = small_disk / "hive.duckdb"
    mat = spawn("materialize", "--nats", nats_server.url, "--db", str(db), "--batch", "200")
    acked = await AckedLoad(nats_server.url, agent="before", count=1000).start().wait_done()
    await wait_for(lambda: _ingesting(nats_server.url), timeout=60, what="the materializer ingesting")
    await wait_for(lambda: _quiescent(nats_server.url), timeout=60, what="catch-up before the fill")
    filler = _fill(small_disk, 16 * 1024)
    acked |= await AckedLoad(nats_server.url, agent="during", count=3000).start().wait_done()
    await wait_for(lambda: "disk_full" in mat.output(), timeout=60, what="a disk_full error in the log")
    await asyncio.sleep(3.0)  # several retries while the disk stays full
    assert mat.p.poll() is None, mat.output()[-3000:]
    assert "Traceback" not in mat.output()
    assert mat.output().count('"event": "disk_full"') == 1, "one error per outage; retries are quieter"
    filler.unlink()
    await wait_for(lambda: _quiescent(nats_server.url), timeout=90, every=0.5, what="catch-up after freeing")
    assert mat.stop() == 0, mat.output()[-3000:]
    verdict = check(acked, await read_stream(nats_server.url), applied_state(db))
    verdict.assert_ok()
    assert verdict.acked == 4000


def test_open_on_a_full_disk_is_not_mistaken_for_corruption(small_disk: Path) -> None:
    """A healthy database whose WAL must be replayed when opened, on a full disk: opening fails
    with a clear StoreError and the file stays where it is (no quarantine, nothing rebuilt)."""
    import sys

    from hive import StoreError, open_store

    db = small_disk / "hive.duckdb"
    script = (
        "import duckdb, os, sys\n"
        "con = duckdb.connect(sys.argv[1])\n"
        "con.execute('SET checkpoint_threshold = \\'1GB\\'')\n"
        "con.execute('CREATE TABLE t AS SELECT range AS i, repeat(\\'x\\', 100) AS s FROM range(20000)')\n"
        "os._exit(0)  # no checkpoint: the rows live in the WAL\n"
    )
    subprocess.run([sys.executable, "-c", script, str(db)], check=True, timeout=60)
    assert Path(str(db) + ".wal").exists()
    filler = _fill(small_disk, leave=0)
    with pytest.raises(StoreError):
        open_store(db)
    assert db.exists() and not list(small_disk.glob("hive.duckdb.corrupt-*"))
    filler.unlink()
    con = open_store(db)  # space freed: the same file opens, its rows intact
    assert con.execute("SELECT count(*) FROM t").fetchone() == (20000,)
    con.close()
