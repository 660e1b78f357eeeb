"""The heartbeat file: a process's liveness as the age of a file, for container health checks.

When ``HIVE_HEARTBEAT_FILE`` names a file, the agent runtime touches it at every heartbeat and the
distiller on every tick of its event loop; ``hive health --heartbeat-file F --max-age S`` (what the
compose health checks run) then tells a live process from a stopped, frozen or wedged one by the
file's age. Without the variable nothing is written.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import structlog

log = structlog.get_logger("agents.heartbeat")

HEARTBEAT_FILE_ENV = "HIVE_HEARTBEAT_FILE"
"""Environment variable naming the heartbeat file (unset: no heartbeat file)."""

_failed: set[str] = set()


def heartbeat_file() -> str | None:
    """The heartbeat file this process should touch (``$HIVE_HEARTBEAT_FILE``), or None."""
    return os.environ.get(HEARTBEAT_FILE_ENV) or None


def touch_heartbeat(path: str | os.PathLike[str] | None) -> bool:
    """Set ``path``'s modification time to now, creating it if absent; False if that failed (the
    failure is logged once per path, never raised: a heartbeat must not stop the process)."""
    if path is None:
        return False
    try:
        p = Path(path)
        p.touch(exist_ok=True)
        os.utime(p)
    except OSError as e:
        if str(path) not in _failed:
            _failed.add(str(path))
            log.warning("heartbeat_file_unwritable", path=str(path), error=str(e))
        return False
    return True


def heartbeat_age(path: str | os.PathLike[str]) -> float:
    """Seconds since ``path`` was last touched (raises ``OSError`` if it cannot be read)."""
    return max(0.0, time.time() - Path(path).stat().st_mtime)
