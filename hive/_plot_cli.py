"""``hive plot``: PNGs of best-so-far, proposer share and deployment success."""

from __future__ import annotations

from pathlib import Path

import click
import duckdb

from ._plot import write_plots

DEFAULT_SNAPSHOT = Path("./hive-data/hive.snapshot.duckdb")


@click.command("plot")
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_SNAPSHOT,
    show_default=True,
    help="A DuckDB file no process owns: the snapshot of a running hive, or a stopped hive's database.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("./hive-data/plots"),
    show_default=True,
    help="Directory for the PNG files.",
)
def plot(db: Path, out: Path) -> None:
    """Draw best-so-far curves, proposer share over time and deployment success by generation."""
    if not db.exists():
        raise click.ClickException(f"no database at {db}")
    try:
        paths = write_plots(db, out)
    except duckdb.Error as e:
        raise click.ClickException(f"cannot read {db}: {e}") from None
    for p in paths:
        click.echo(str(p))
