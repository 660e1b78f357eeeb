"""Fault injection for crash tests: ``HIVE_FAILPOINT=name:n`` SIGKILLs the process the n-th time
the code passes the failpoint ``name``. Unset (the default), a failpoint costs one dict lookup.

Failpoints: ``after_fetch`` (a batch read, nothing applied), ``before_commit`` (rows inserted,
transaction open), ``after_commit`` (committed, before the materializer records it).
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("HIVE_FAILPOINT", "")
_NAME, _, _N = _SPEC.partition(":")
_COUNTS: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Die by SIGKILL here if ``HIVE_FAILPOINT`` names this point and its count is reached."""
    if name != _NAME:
        return
    _COUNTS[name] = _COUNTS.get(name, 0) + 1
    if _COUNTS[name] >= int(_N or 1):
        os.kill(os.getpid(), signal.SIGKILL)
