"""``hive export``: the state as Parquet files or as an Optuna journal, for other tools."""

from __future__ import annotations

from pathlib import Path

import click

from ._db_option import snapshot_db_option
from ._export import ExportError, export_optuna, export_parquet


@click.command("export")
@snapshot_db_option
@click.option(
    "--parquet",
    "parquet_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write every table and view as DIR/<name>.parquet (JSON columns as text).",
)
@click.option(
    "--optuna",
    "journal",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write an Optuna journal: one study per task instance (open it with optuna-dashboard).",
)
@click.option("--force", is_flag=True, help="Replace an existing Optuna journal file.")
def export(db: Path, parquet_dir: Path | None, journal: Path | None, force: bool) -> None:
    """Export the hive's history for pandas/polars/Spark (Parquet) or optuna-dashboard (journal)."""
    if parquet_dir is None and journal is None:
        raise click.UsageError("say what to write: --parquet DIR and/or --optuna FILE")
    try:
        if parquet_dir is not None:
            files = export_parquet(db, parquet_dir)
            click.echo(f"wrote {len(files)} Parquet files to {parquet_dir} ({sum(files.values())} rows)")
        if journal is not None:
            studies = export_optuna(db, journal, overwrite=force)
            click.echo(
                f"wrote {len(studies)} studies, {sum(studies.values())} trials to {journal} "
                f"(view: optuna-dashboard {journal})"
            )
    except ExportError as e:
        raise click.ClickException(str(e)) from None
