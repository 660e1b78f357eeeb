"""``hive health``: a container health check from a heartbeat file's age.

The agent runtime and the distiller touch ``$HIVE_HEARTBEAT_FILE`` while they run (see
:mod:`agents._heartbeat`); a process that is stopped, frozen or wedged stops touching it. The
compose health checks of the distiller and the agents run this command.
"""

from __future__ import annotations

import click

DEFAULT_MAX_AGE_S = 30.0
"""Default ``--max-age``: agents beat every 5 s and the distiller ticks every 5 s."""


@click.command("health")
@click.option(
    "--heartbeat-file",
    "path",
    default=None,
    type=click.Path(dir_okay=False),
    help="The heartbeat file to check (default: env HIVE_HEARTBEAT_FILE).",
)
@click.option(
    "--max-age",
    default=DEFAULT_MAX_AGE_S,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Seconds: an older heartbeat is unhealthy.",
)
def health(path: str | None, max_age: float) -> None:
    """Exit 0 if the heartbeat file was touched within --max-age seconds, else 1 with the reason.

    For container health checks: `hive health --heartbeat-file heartbeat --max-age 30` beside a
    service run with HIVE_HEARTBEAT_FILE=heartbeat.
    """
    from agents._heartbeat import HEARTBEAT_FILE_ENV, heartbeat_age, heartbeat_file

    path = path or heartbeat_file()
    if not path:
        raise click.UsageError(f"give --heartbeat-file (or set {HEARTBEAT_FILE_ENV})")
    try:
        age = heartbeat_age(path)
    except FileNotFoundError:
        _unhealthy(f"no heartbeat file {path} (the process has not beaten yet)")
    except OSError as e:
        _unhealthy(f"cannot read heartbeat file {path}: {e.strerror or e}")
    else:
        if age > max_age:
            _unhealthy(f"heartbeat {age:.1f}s old (max {max_age:g}s): {path}")
        click.echo(f"healthy: heartbeat {age:.1f}s old (max {max_age:g}s)")


def _unhealthy(reason: str) -> None:
    click.echo(f"unhealthy: {reason}", err=True)
    raise click.exceptions.Exit(1)
