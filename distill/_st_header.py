"""Reading a hive safetensors file's header without allocating anything: the bounded JSON header
and its ``__metadata__``, checked before any tensor or module is built (pickles, truncated files
and other formats are refused here)."""

from __future__ import annotations

import json
from typing import Any

MAX_HEADER_BYTES = 1 << 20
"""Upper bound of a safetensors JSON header (a forged length cannot make us read more)."""


def parse_header(data: bytes) -> tuple[Any, int]:
    """``(header JSON, header length)`` of a safetensors blob, bounded; ``ValueError`` for anything
    that is not one (a pickle, a torch.save file, a truncated file)."""
    if len(data) < 8:
        raise ValueError("not a safetensors file: too short")
    n = int.from_bytes(data[:8], "little")
    if n < 2 or n > MAX_HEADER_BYTES or n > len(data) - 8:
        raise ValueError("not a safetensors file: bad header length (pickle or torch.save files are refused)")
    try:
        return json.loads(data[8 : 8 + n].decode("utf-8")), n
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a safetensors file: header is not JSON ({exc})") from None


def read_header(data: bytes, fmt: str, what: str) -> tuple[dict[str, Any], dict[str, Any], int]:
    """``(header, metadata, data_bytes)`` of a safetensors blob whose metadata ``format`` is ``fmt``
    and whose ``config`` is a string (``data_bytes``: the size of the tensor data after the header);
    ``ValueError`` naming ``what`` (e.g. "policy") otherwise."""
    header, n = parse_header(data)
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != fmt or not isinstance(meta.get("config"), str):
        raise ValueError(f"safetensors file is not a {fmt} {what}")
    return header, meta, len(data) - 8 - n
