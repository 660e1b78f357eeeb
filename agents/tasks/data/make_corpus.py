"""Rebuild ``corpus.txt``: docstrings of the Python standard library (PSF licence).

Run with the interpreter whose standard library you want to sample::

    python -m agents.tasks.data.make_corpus

The output is deterministic for a given Python build; the committed corpus came from CPython 3.11.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import sys
import warnings
from pathlib import Path

MAX_BYTES = 290_000
PER_MODULE = 2_500
SKIP = frozenset(
    {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "ensurepip", "pydoc_data"}
)


def _docs(module_name: str) -> list[str]:
    """The module docstring, then those of its public classes, methods and functions."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            module = importlib.import_module(module_name)
        except Exception:
            return []
    docs = [inspect.getdoc(module) or ""]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue
        if inspect.isclass(obj):
            docs.append(inspect.getdoc(obj) or "")
            docs.extend(
                inspect.getdoc(member) or ""
                for member_name, member in sorted(vars(obj).items())
                if not member_name.startswith("_") and inspect.isfunction(member)
            )
        elif inspect.isfunction(obj):
            docs.append(inspect.getdoc(obj) or "")
    return docs


def build() -> str:
    """Concatenate docstrings module by module (sorted, ASCII, de-duplicated) up to ``MAX_BYTES``."""
    seen: set[str] = set()
    parts: list[str] = []
    total = 0
    for module_name in sorted(sys.stdlib_module_names):
        if module_name.startswith("_") or module_name in SKIP:
            continue
        section: list[str] = []
        size = 0
        for doc in _docs(module_name):
            text = doc.encode("ascii", "ignore").decode().strip()
            if len(text) < 40 or text in seen or size + len(text) > PER_MODULE:
                continue
            seen.add(text)
            section.append(text)
            size += len(text) + 2
        if not section:
            continue
        block = "\n\n".join(section) + "\n\n"
        if total + len(block) > MAX_BYTES:
            break
        parts.append(block)
        total += len(block)
    return "".join(parts)


if __name__ == "__main__":
    out = Path(__file__).with_name("corpus.txt")
    out.write_text(build(), encoding="ascii")
    print(f"wrote {out} ({out.stat().st_size} bytes)")
