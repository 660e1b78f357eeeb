"""``hive plot``: PNGs of best-so-far, proposer share and deployment success."""

from __future__ import annotations

from pathlib import Path

import click
import duckdb

from ._db_option import snapshot_db_option
from ._plot import write_plots


@click.command("plot")
@snapshot_db_option
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
