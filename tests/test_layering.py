"""The import direction between the packages: streams <- agents <- distill <- hive.

Every module under streams/, agents/, distill/ and hive/ is parsed with ``ast``; every import,
at module level or inside a function (a lazy import), may only name a package at its own layer
or below. ``if TYPE_CHECKING:`` imports count too: a type that flows against the grain is still
a dependency against the grain.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("streams", "agents", "distill", "hive")
"""Lowest first: a package may import itself and the packages before it, never those after."""


def _imported_packages(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in the file, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.partition(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside the module's own package
                found.append((node.lineno, package))
            elif node.module:
                found.append((node.lineno, node.module.partition(".")[0]))
    return found


def _violations() -> list[str]:
    out = []
    for rank, package in enumerate(LAYERS):
        above = set(LAYERS[rank + 1 :])
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, imported in _imported_packages(path, package):
                if imported in above:
                    out.append(f"{path.relative_to(ROOT)}:{line} imports {imported} (above {package})")
    return out


def test_imports_follow_the_layers() -> None:
    """No module imports a package above its own layer, lazily or not."""
    assert _violations() == []


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    """The parser finds an import inside a function body and resolves relative imports to the package."""
    module = tmp_path / "m.py"
    module.write_text("from . import x\n\ndef f():\n    import distill.model\n    from hive import _cli\n")
    assert _imported_packages(module, "agents") == [(1, "agents"), (4, "distill"), (5, "hive")]


@pytest.mark.parametrize("package", LAYERS)
def test_every_layer_has_modules(package: str) -> None:
    """The walk covers real files (a renamed package would otherwise pass vacuously)."""
    assert len(list((ROOT / package).rglob("*.py"))) >= 3
