"""A read-only data directory is reported as a permission error naming the path, never as
"cannot reach NATS".

File modes do not stop root, so the directory is made read-only for real: the hive command runs
in a private mount namespace (``unshare -m``) where the directory is bind-mounted onto itself and
remounted read-only (writes fail with EROFS; nothing leaks outside the namespace, even if the
test dies). Where that is not allowed, the directory is made immutable (``chattr +i``, undone
after the command). Skipped, with the reason, only when neither works.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import CHILD_ENV

_MOUNT_RO = 'set -e; mount --bind "$0" "$0"; mount -o remount,ro,bind "$0" "$0"; exec "$@"'
"""sh script: make directory $0 read-only in this (private) mount namespace, then run the rest."""


def _mechanism() -> str | None:
    """``unshare`` (private read-only bind mount), ``chattr`` (immutable directory), or None."""
    probe = Path(tempfile.mkdtemp(prefix="hive-ro-probe-"))
    try:
        if shutil.which("unshare") and shutil.which("mount"):
            r = subprocess.run(
                ["unshare", "-m", "sh", "-c", _MOUNT_RO, str(probe), "sh", "-c", f"! touch {probe}/x"],
                capture_output=True,
                timeout=30,
            )
            if r.returncode == 0 and not (probe / "x").exists():
                return "unshare"
        chattr = ["chattr", "+i", str(probe)]
        if shutil.which("chattr") and subprocess.run(chattr, capture_output=True).returncode == 0:
            try:
                blocked = subprocess.run(["touch", str(probe / "x")], capture_output=True).returncode != 0
            finally:
                subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
            if blocked:
                return "chattr"
        return None
    finally:
        shutil.rmtree(probe, ignore_errors=True)


MECHANISM = _mechanism()
pytestmark = pytest.mark.skipif(
    MECHANISM is None,
    reason="no read-only mechanism here: neither `unshare -m` + a read-only bind mount nor "
    "`chattr +i` is permitted",
)


def run_readonly(ro_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``hive ARGS`` with ``ro_dir`` read-only to it (see the module docstring)."""
    cmd = [sys.executable, "-m", "hive", *args]
    if MECHANISM == "unshare":
        cmd = ["unshare", "-m", "sh", "-c", _MOUNT_RO, str(ro_dir), *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=CHILD_ENV)
    subprocess.run(["chattr", "+i", str(ro_dir)], check=True)
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=CHILD_ENV)
    finally:
        subprocess.run(["chattr", "-i", str(ro_dir)], check=True)


def _assert_permission_error(r: subprocess.CompletedProcess[str], path: Path) -> None:
    out = (r.stdout + r.stderr).strip()
    assert r.returncode != 0, out
    assert "cannot reach NATS" not in out, out
    assert "Traceback" not in out, out
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"one line expected:\n{out}"
    assert "permission denied" in lines[0].lower() and str(path) in lines[0], lines[0]


@pytest.fixture
def ro_dir(tmp_path: Path) -> Path:
    """An empty directory the hive command will see read-only."""
    d = tmp_path / "ro"
    d.mkdir()
    return d


def test_server_on_readonly_store_names_the_path(ro_dir: Path) -> None:
    """`hive server --store <read-only dir>` exits non-zero with one line: permission denied and the
    path (not a nats-server log dump, not "cannot reach NATS")."""
    r = run_readonly(ro_dir, "server", "--store", str(ro_dir), "--port", "0", "--http-port", "0")
    _assert_permission_error(r, ro_dir)


def test_server_store_below_readonly_dir_names_the_path(ro_dir: Path) -> None:
    """A store directory that would have to be created inside a read-only directory: the same
    one-line permission error, naming the store path."""
    store = ro_dir / "nats"
    r = run_readonly(
        ro_dir, "server", "--store", str(store), "--port", "0", "--http-port", "0", "--cluster", "3"
    )
    _assert_permission_error(r, store)


def test_up_on_readonly_data_dir_names_the_path(ro_dir: Path) -> None:
    """`hive up --data <read-only dir>` exits non-zero with one line: permission denied and the path,
    not "cannot reach NATS"."""
    r = run_readonly(
        ro_dir, "up", "--data", str(ro_dir), "--agents", "0", "--no-distill", "--duration", "1",
        "--port", "0", "--http-port", "0",
    )  # fmt: skip
    _assert_permission_error(r, ro_dir)


def test_up_with_readonly_nats_store_names_the_path(tmp_path: Path) -> None:
    """`hive up` whose data directory is writable but whose NATS store inside it is read-only: the
    one-line permission error names the store, and no server or child is left running."""
    data = tmp_path / "data"
    store = data / "nats"
    store.mkdir(parents=True)
    r = run_readonly(
        store, "up", "--data", str(data), "--agents", "0", "--no-distill", "--duration", "1",
        "--port", "0", "--http-port", "0",
    )  # fmt: skip
    _assert_permission_error(r, store)
