"""Rendering query results for people (a table) and for programs (CSV, JSON)."""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from ._query import QueryResult

FORMATS = ("table", "csv", "json")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def render(result: QueryResult, fmt: str, console: Console | None = None) -> str | None:
    """Print ``result`` as a rich table (returns None) or return it as CSV / JSON text."""
    if fmt == "table":
        table = Table(show_header=True, header_style="bold", show_lines=False)
        for col, typ in zip(result.columns, result.types, strict=True):
            numeric = any(t in typ.upper() for t in ("INT", "DOUBLE", "FLOAT", "DECIMAL", "HUGEINT"))
            table.add_column(col, justify="right" if numeric else "left", overflow="fold")
        cells = [[_cell(v) for v in row] for row in result.rows]
        for row_cells in cells:
            table.add_row(*row_cells)
        if console is None:
            console = Console()
            if not console.is_terminal:
                # Off a terminal (a pipe, a file, CI logs) there is no width to fit: give every
                # column its full width instead of squeezing it to the 80-column default.
                widths = [len(c) for c in result.columns]
                for row_cells in cells:
                    widths = [max(w, len(c)) for w, c in zip(widths, row_cells, strict=True)]
                console = Console(width=max(80, sum(widths) + 3 * len(widths) + 1))
        console.print(table)
        note = f"{len(result.rows)} row(s)" + (" (truncated)" if result.truncated else "")
        console.print(f"[dim]{note}, {result.elapsed_ms:.1f} ms[/dim]")
        return None
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(result.columns)
        w.writerows([["" if v is None else v for v in row] for row in result.rows])
        return buf.getvalue()
    if fmt == "json":
        records = [dict(zip(result.columns, row, strict=True)) for row in result.rows]
        return orjson.dumps(records, default=str, option=orjson.OPT_INDENT_2).decode() + "\n"
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
