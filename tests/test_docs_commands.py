"""The documentation and the CLI cannot drift apart: every command README.md and docker/README.md
name exists in the *installed* ``hive`` entry point (run as a subprocess, as a user runs it), and
README's command table lists exactly the CLI's commands."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import click

from hive._cli import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docker" / "README.md", ROOT / "docs" / "protocol.md"]


def _entry_point() -> str:
    """The installed console script (beside this interpreter, else on PATH)."""
    beside = Path(sys.executable).parent / "hive"
    found = str(beside) if beside.exists() else shutil.which("hive")
    assert found, "the `hive` console script is not installed (pip install -e .)"
    return found


def cli_commands(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every leaf command path of the CLI, e.g. ``("model", "rollback")``."""
    out: set[tuple[str, ...]] = set()
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out |= cli_commands(cmd, (*prefix, name))
        else:
            out.add((*prefix, name))
    return out


def resolve(words: list[str]) -> tuple[str, ...] | None:
    """The longest command path the words start with; None if the first word is no command."""
    node: click.Command = cli
    path: list[str] = []
    for w in words:
        if not isinstance(node, click.Group) or w not in node.commands:
            break
        node = node.commands[w]
        path.append(w)
    if not path or isinstance(node, click.Group):
        return None if not path else tuple(path)
    return tuple(path)


_MENTION = re.compile(r"(?:^|[\s`(|;&])hive((?: [a-z][a-z-]*)+)")


def mentioned(text: str) -> set[tuple[str, ...]]:
    """Command paths mentioned as ``hive <word> ...`` in code (inline or blocks) of a document."""
    code = "\n".join(re.findall(r"```[^\n]*\n(.*?)```", text, re.S) + re.findall(r"`([^`\n]+)`", text))
    found = set()
    for m in _MENTION.finditer(code):
        path = resolve(m.group(1).split())
        found.add(path or (m.group(1).split()[0],))
    return found


def table_commands(text: str) -> set[tuple[str, ...]]:
    """Command paths in the first cell of README's '## Commands' table."""
    section = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    out = set()
    for line in section.splitlines():
        if line.startswith("| `hive "):
            cell = re.split(r"(?<!\\)\|", line)[1]  # a cell may hold escaped pipes: \|
            for m in re.finditer(r"`hive ([^`]*)`", cell):
                words = [w for w in m.group(1).split() if re.fullmatch(r"[a-z][a-z-]*", w)]
                path = resolve(words)
                out.add(path or tuple(words[:1]))
    return out


def test_every_documented_command_exists_and_has_help() -> None:
    """Each `hive ...` command named in README.md, docker/README.md and docs/protocol.md answers
    `--help` with exit 0 through the installed entry point."""
    exe = _entry_point()
    known = cli_commands()
    named = set().union(*(mentioned(p.read_text()) for p in DOCS))
    unknown = {" ".join(p) for p in named if p not in known and not any(k[: len(p)] == p for k in known)}
    assert not unknown, f"documented but not in the CLI: {sorted(unknown)}"
    for path in sorted(named):
        r = subprocess.run([exe, *path, "--help"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"hive {' '.join(path)} --help: {r.stderr}"
        assert "Usage:" in r.stdout


def test_readme_command_table_matches_the_cli() -> None:
    """README's command table lists every CLI command, and nothing the CLI lacks."""
    table = table_commands((ROOT / "README.md").read_text())
    known = cli_commands()
    assert table, "README has no '## Commands' table"
    assert table - known == set(), f"in the table but not the CLI: {sorted(table - known)}"
    assert known - table == set(), f"in the CLI but not the table: {sorted(known - table)}"
