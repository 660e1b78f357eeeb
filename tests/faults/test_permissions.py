"""A database the materializer may not write is a permission error, never "corruption".

Root ignores file modes, so each case uses a real read-only mechanism, in a child process:

* ``ro-mount``: the data directory bind-mounted onto itself read-only in a private mount
  namespace (``unshare -m``; nothing leaks out, even if the test dies): EROFS;
* ``immutable``: the database file made immutable (``chattr +i``, undone after): EPERM;
* ``unprivileged``: a ``0444`` file in a writable directory, opened by ``nobody``
  (``setpriv``): EACCES.

A healthy file must be left where it is, byte for byte, with no ``.corrupt-*`` beside it; a file
that is not DuckDB at all is still quarantined and rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import streams
from hive import apply_batch, open_store

from ..conftest import CHILD_ENV
from ..spine_helpers import finished

_MOUNT_RO = 'set -e; mount --bind "$0" "$0"; mount -o remount,ro,bind "$0" "$0"; exec "$@"'
"""sh script: make directory $0 read-only in this (private) mount namespace, then run the rest."""

_OPEN = (
    "import sys\n"
    "from hive import open_store\n"
    "try:\n"
    "    open_store(sys.argv[1]).close()\n"
    "except Exception as e:\n"
    "    print(f'{type(e).__name__}: {e}')\n"
    "    sys.exit(3)\n"
    "print('opened')\n"
)


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _available(mechanism: str) -> str | None:
    """None if ``mechanism`` works here, else why not (the skip reason)."""
    probe = Path(tempfile.mkdtemp(prefix="hive-perm-probe-"))
    try:
        if mechanism == "ro-mount":
            ok = _works(
                ["unshare", "-m", "sh", "-c", _MOUNT_RO, str(probe), "sh", "-c", f"! touch {probe}/x"]
            )
            return (
                None if ok and not (probe / "x").exists() else "no `unshare -m` + read-only bind mount here"
            )
        if mechanism == "immutable":
            (probe / "f").write_text("x")
            if not _works(["chattr", "+i", str(probe / "f")]):
                return "`chattr +i` is not permitted here (filesystem or CAP_LINUX_IMMUTABLE)"
            blocked = not _works(["sh", "-c", f"echo y >> {probe}/f"])
            _works(["chattr", "-i", str(probe / "f")])
            return None if blocked else "`chattr +i` does not stop writes here"
        ok = _works(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "true"])
        if not ok:
            return "`setpriv` cannot switch to an unprivileged user here"
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        imports = _run([*as_nobody, sys.executable, "-c", "import hive"]).returncode == 0
        return (
            None
            if imports
            else "the unprivileged user cannot read this checkout (under a 0700 directory, e.g. `mktemp -d`)"
        )
    finally:
        shutil.rmtree(probe, ignore_errors=True)


MECHANISMS = ("ro-mount", "immutable", "unprivileged")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data directory outside pytest's root-only tree (so ``nobody`` can reach it); removed after."""
    d = Path(tempfile.mkdtemp(prefix="hive-perm-"))
    d.chmod(0o777)
    try:
        yield d
    finally:
        for p in d.iterdir():
            subprocess.run(["chattr", "-i", str(p)], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def _healthy_db(d: Path) -> Path:
    """A real materializer database with one applied event, checkpointed (no WAL left)."""
    db = d / "hive.duckdb"
    con = open_store(db)
    ev = finished(1)
    apply_batch(con, [streams.LogEntry(1, streams.subject_for(ev), streams.encode(ev), datetime.now(UTC))])
    con.execute("CHECKPOINT")
    con.close()
    return db


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=CHILD_ENV)


def _run_read_only(mechanism: str, d: Path, db: Path, cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with ``db`` (or its directory) read-only to it by ``mechanism``."""
    if mechanism == "ro-mount":
        return _run(["unshare", "-m", "sh", "-c", _MOUNT_RO, str(d), *cmd])
    if mechanism == "unprivileged":
        db.chmod(0o444)
        return _run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd])
    subprocess.run(["chattr", "+i", str(db)], check=True)
    try:
        return _run(cmd)
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_a_read_only_healthy_database_is_a_permission_error_not_quarantined(
    mechanism: str, data_dir: Path
) -> None:
    """Opening a healthy database that is read-only to this process raises StorePermissionError
    naming the path and the permission; the file stays, byte for byte, and nothing is moved aside.
    A file that is not DuckDB at all is still quarantined and replaced (corruption, as before)."""
    if why := _available(mechanism):
        pytest.skip(why)
    db = _healthy_db(data_dir)
    before = _sha(db)
    r = _run_read_only(mechanism, data_dir, db, [sys.executable, "-c", _OPEN, str(db)])
    out = (r.stdout + r.stderr).strip()
    assert r.returncode == 3, out
    assert out.startswith("StorePermissionError: "), out
    assert "permission denied" in out and str(db.parent) in out, out
    assert _sha(db) == before
    assert sorted(p.name for p in data_dir.iterdir()) == ["hive.duckdb"]
    # Not DuckDB at all: quarantined and recreated, whatever the permission story above.
    db.chmod(0o644)
    junk = data_dir / "junk.duckdb"
    junk.write_bytes(os.urandom(4096))
    open_store(junk).close()
    assert [p.name for p in data_dir.glob("junk.duckdb.corrupt-*")], list(data_dir.iterdir())


@pytest.mark.parametrize("existing", [True, False], ids=["healthy-db", "no-db-yet"])
def test_materialize_on_a_read_only_directory_is_a_one_line_permission_error(
    existing: bool, data_dir: Path
) -> None:
    """``hive materialize --db <read-only dir>/hive.duckdb`` exits non-zero with one line that says
    permission and names the path (no traceback, no "cannot reach NATS", nothing quarantined)."""
    if why := _available("ro-mount"):
        pytest.skip(why)
    db = _healthy_db(data_dir) if existing else data_dir / "hive.duckdb"
    before = sorted(p.name for p in data_dir.iterdir())
    cmd = [sys.executable, "-m", "hive", "materialize", "--nats", "nats://127.0.0.1:9", "--db", str(db)]
    r = _run_read_only("ro-mount", data_dir, db, cmd)
    out = (r.stdout + r.stderr).strip()
    assert r.returncode != 0, out
    assert "Traceback" not in out and "cannot reach NATS" not in out, out
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, out
    assert "permission denied" in errors[0].lower() and str(data_dir) in errors[0], errors[0]
    assert sorted(p.name for p in data_dir.iterdir()) == before
