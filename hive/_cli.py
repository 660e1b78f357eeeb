"""The ``hive`` command line. Every command has ``--help``; bad input exits non-zero with a reason."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

import streams

from ._bench_config import BenchConfig
from ._cli_errors import HiveGroup
from ._logging import configure_logging
from ._oneshot import connect_once, one_shot_options
from ._output import FORMATS, render
from ._query import QueryError, QueryResult, remote_query, run_with_deadline
from ._signals import until_signal
from ._store import DatabaseLocked, connect_db, snapshot_path_for
from ._supervisor import UpConfig, write_endpoints

T = TypeVar("T")
NATS_HELP = "NATS server URL (env HIVE_NATS_URL)."
UP_STOP_GRACE_S = 150.0
"""After a stop signal, how long ``hive up`` may take to stop its children in order before it is
cancelled (each group of children gets 30 s, then SIGKILL)."""


def _run(coro: Awaitable[T]) -> T:
    """Run a coroutine to completion.

    The errors users cause (unreachable or invalid NATS, a locked or foreign database, a full
    stream …) become one ``Error:`` line in :class:`HiveGroup`, the choke point of every command.
    """
    return asyncio.run(coro)  # type: ignore[arg-type]


async def _until_signal(
    task_factory: Callable[[], Awaitable[T]],
    on_stop: Callable[[], None],
    started: Callable[[], bool] | None = None,
) -> T | None:
    """Run a long-lived coroutine; SIGINT/SIGTERM call ``on_stop`` for a graceful finish, and
    cancel it outright while ``started()`` is false (still connecting) or after a grace period.
    Returns None when a signal cancelled it (see :func:`hive._signals.until_signal`)."""
    return await until_signal(task_factory, on_stop, started=started or (lambda: True))


@click.group(
    cls=HiveGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.option(
    "--log-format",
    type=click.Choice(["console", "json"]),
    default=None,
    help="Log format (default: console on a terminal, JSON otherwise).",
)
@click.option("--log-level", default=None, help="debug, info, warning, error (env HIVE_LOG_LEVEL).")
@click.version_option(package_name="hive-swarm", prog_name="hive")
def cli(log_format: str | None, log_level: str | None) -> None:
    """hive: an event-sourced multi-agent hive mind for autonomous research.

    Agents publish traces to a NATS JetStream log; a materializer keeps DuckDB state from it;
    a distiller trains one shared model on the successful traces and pushes it to every agent.
    """
    configure_logging(log_level, log_format)


# --------------------------------------------------------------------------- the log
def _durability_option(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """Validate ``--sync``: ``default``, ``always`` or an interval (``30s``, ``2m``)."""
    try:
        return streams.parse_durability(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@cli.command()
@click.option(
    "--port",
    default=4222,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Client port (0 = any free port).",
)
@click.option(
    "--store",
    "store_dir",
    default="./hive-data/nats",
    show_default=True,
    type=click.Path(file_okay=False),
    help="JetStream store directory.",
)
@click.option(
    "--http-port",
    default=8222,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Monitoring port (`hive status --monitor` reads durability there).",
)
@click.option(
    "--sync",
    "--durability",
    "durability",
    default="default",
    show_default=True,
    callback=_durability_option,
    help="fsync policy: 'default' (every 2 min: a crash of the process loses nothing, power loss "
    "can), 'always' (fsync before each ack; much slower) or an interval such as 30s, 1m.",
)
@click.option(
    "--cluster",
    "nodes",
    default=1,
    show_default=True,
    type=click.IntRange(1, 9),
    help="Run N nats-server processes as one JetStream cluster on this host (ports PORT, PORT+1 …; "
    "stores STORE/node-<i>); the hive's stream is then replicated (R3 from 3 nodes).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option(
    "--data",
    "data_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Where to record nats.url and nats.monitor for `hive status --data` (default: the store's "
    "parent directory, ./hive-data with the default store).",
)
def server(
    port: int, store_dir: str, http_port: int, durability: str, nodes: int, host: str, data_dir: str | None
) -> None:
    """Run the embedded nats-server (JetStream on) in the foreground until Ctrl-C."""
    srv: streams.EmbeddedServer | streams.EmbeddedCluster
    if nodes > 1:
        srv = streams.EmbeddedCluster(
            nodes, port=port, store_dir=store_dir, durability=durability, http_port=http_port, host=host
        )
    else:
        srv = streams.EmbeddedServer(
            port=port, store_dir=store_dir, durability=durability, http_port=http_port, host=host
        )
    try:
        srv.start()
    except streams.ServerError as e:
        raise click.ClickException(str(e)) from None
    monitors = srv.http_urls if isinstance(srv, streams.EmbeddedCluster) else [srv.http_url]
    try:
        write_endpoints(Path(data_dir or Path(store_dir).parent), srv.url, [m for m in monitors if m])
    except OSError as e:
        srv.stop()
        raise click.ClickException(f"cannot record the server's URLs: {e}") from None
    if isinstance(srv, streams.EmbeddedCluster):
        pids = ", ".join(str(p) for p in srv.pids)
        click.echo(
            f"nats cluster of {nodes} {srv.url} (pids {pids}), monitoring {', '.join(srv.http_urls)}, "
            f"store {store_dir}/node-<i>, durability: {streams.describe_durability(durability)}"
        )
    else:
        click.echo(
            f"nats-server {srv.url} (pid {srv.pid}), monitoring {srv.http_url}, store {store_dir}, "
            f"durability: {streams.describe_durability(durability)}"
        )
    stop = {"now": False}

    def _stop(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    servers = srv.servers if isinstance(srv, streams.EmbeddedCluster) else [srv]
    try:
        while not stop["now"] and all(s.proc is not None and s.proc.poll() is None for s in servers):
            time.sleep(0.2)
    finally:
        srv.stop()
    click.echo("nats-server stopped")


@cli.command()
@click.option("--nats", "url", default=streams.default_url, help=NATS_HELP)
@click.option(
    "--db", "db", required=True, type=click.Path(dir_okay=False), help="DuckDB file (created if absent)."
)
@click.option(
    "--batch", default=1000, show_default=True, type=click.IntRange(1, 10_000), help="Fetch batch size."
)
@click.option(
    "--snapshot",
    default=None,
    type=click.Path(dir_okay=False),
    help="Snapshot file (default: <db stem>.snapshot.duckdb beside the db).",
)
@click.option(
    "--snapshot-every",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Seconds between snapshots (written when idle and changed).",
)
def materialize(url: str, db: str, batch: int, snapshot: str | None, snapshot_every: float) -> None:
    """Materialize the log into DuckDB and answer read-only SQL over NATS, until Ctrl-C."""
    from ._materializer import Materializer

    m = Materializer(url, db, batch_size=batch, snapshot_path=snapshot, snapshot_every_s=snapshot_every)
    stats = _run(_until_signal(m.run, m.stop, started=m.ready.is_set))
    if stats is None:
        click.echo("materializer stopped before it was connected to NATS", err=True)
        return
    click.echo(f"materializer stopped at seq {stats.applied_seq} ({stats.events} events this run)", err=True)


@cli.command()
@click.option("--nats", "url", default=streams.default_url, help=NATS_HELP)
@click.option("--skip-invalid", is_flag=True, help="Publish the valid lines even if some are invalid.")
@click.argument("file", type=click.File("rb"))
def publish(url: str, skip_invalid: bool, file: Any) -> None:
    """Validate events from a JSON-lines FILE ('-' for stdin) and publish them.

    Each line is one event (see `hive schema`). An invalid line is reported with its line
    number, and nothing is published unless --skip-invalid.
    """
    events: list[streams.Event] = []
    errors: list[str] = []
    for lineno, line in enumerate(file, start=1):
        line = line.strip()
        if not line:
            continue
        try:
            events.append(streams.decode(line))
        except streams.DecodeError as e:
            errors.append(f"line {lineno}: {e.reason}")
    for err in errors:
        click.echo(err, err=True)
    if errors and not skip_invalid:
        raise click.ClickException(f"{len(errors)} invalid line(s); nothing published (use --skip-invalid)")

    async def go() -> tuple[int, int]:
        nc = await connect_once(url, "hive-publish")
        try:
            js = nc.jetstream()
            await streams.ensure_stream(js)
            try:
                acks = await streams.Publisher(js).publish_acked(events)
            except streams.PublishError as e:
                stored = f"{e.acked} of {len(events)} event(s) stored before it"
                raise click.ClickException(f"{e}; {stored}") from None
            return len(acks), sum(1 for a in acks if a.duplicate)
        finally:
            await nc.close()

    sent, dups = _run(go())
    click.echo(
        f"published {sent} event(s) ({dups} duplicate(s) ignored by the server)"
        + (f"; skipped {len(errors)} invalid line(s)" if errors else "")
    )


@cli.command()
@click.option("--example", "kind", default=None, help="Print one valid example event of KIND instead.")
def schema(kind: str | None) -> None:
    """Print the JSON Schema of all events (for agents written in other languages)."""
    if kind is None:
        click.echo(orjson.dumps(streams.json_schema(), option=orjson.OPT_INDENT_2).decode())
        return
    try:
        ev = streams.example(kind)
    except KeyError as e:
        raise click.BadParameter(str(e.args[0]), param_hint="--example") from None
    click.echo(streams.encode(ev).decode())


# --------------------------------------------------------------------------- the state
@cli.command()
@click.option("--nats", "url", default=None, help="Ask the running materializer at this NATS URL (default).")
@click.option(
    "--db",
    "db",
    default=None,
    type=click.Path(dir_okay=False),
    help="Open a DuckDB file instead (falls back to its snapshot while a materializer owns it).",
)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 300), help="Seconds.")
@click.option("--max-rows", default=10_000, show_default=True, type=click.IntRange(1))
@click.argument("sql")
def query(url: str | None, db: str | None, fmt: str, timeout: float, max_rows: int, sql: str) -> None:
    """Run one read-only SQL statement against the hive state.

    \b
    Examples:
      hive query "SELECT * FROM best_per_task"
      hive query --format csv "SELECT task, objective FROM experiments"
      hive query --db hive-data/hive.duckdb "SELECT * FROM agent_liveness"
    """
    if url and db:
        raise click.UsageError("give --nats or --db, not both")
    if db:
        result = _query_file(db, sql, max_rows, timeout)
    else:

        async def go() -> QueryResult:
            nc = await connect_once(url or streams.default_url(), "hive-query")
            try:
                return await remote_query(nc, sql, timeout_s=timeout, max_rows=max_rows)
            finally:
                await nc.close()

        result = _run(go())
    text = render(result, fmt)
    if text is not None:
        click.echo(text, nl=False)


def _query_file(db: str, sql: str, max_rows: int, timeout: float) -> QueryResult:
    """One read-only statement on a DuckDB file (or its snapshot while a materializer owns it),
    opened read-only and locked down as the live query service is, cut off after ``timeout``."""
    from ._lockdown import lock_down

    path = Path(db)
    if not path.exists():
        raise click.ClickException(f"{db}: no such database file")
    try:
        con = connect_db(path, read_only=True)
    except DatabaseLocked as e:
        snap = snapshot_path_for(path)
        if not snap.exists():
            raise click.ClickException(str(e)) from None
        click.echo(f"note: {db} is owned by a running materializer; reading its snapshot {snap}", err=True)
        path = snap
        con = connect_db(path, read_only=True)
    try:
        lock_down(con)
        return run_with_deadline(con, sql, timeout_s=timeout, max_rows=max_rows)
    except QueryError as e:
        raise click.ClickException(str(e)) from None
    finally:
        con.close()


@cli.command()
@click.option(
    "--nats",
    "url",
    default=None,
    help="NATS server URL (default: env HIVE_NATS_URL, else the one in DATA/nats.url, else "
    f"{streams.DEFAULT_URL}).",
)
@click.option(
    "--data",
    "data_dir",
    default=str(UpConfig.data_dir),
    show_default=True,
    type=click.Path(file_okay=False),
    help="State directory of `hive up` / `hive server`: its nats.url and nats.monitor say where the "
    "server listens and where its monitoring is.",
)
@click.option(
    "--monitor",
    default=None,
    help="NATS monitoring URL(s), comma-separated, for the durability setting (default: DATA/nats.monitor "
    "for that server, else http://<nats host>:8222).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(url: str | None, data_dir: str, monitor: str | None, as_json: bool) -> None:
    """Show the log's last sequence and replicas, the materialized sequence (lag), counts, dead letters,
    durability."""
    from ._status import gather_status, resolve_endpoints, status_table

    url, monitors = resolve_endpoints(url, data_dir, monitor)

    async def go() -> dict[str, Any]:
        nc = await connect_once(url, "hive-status")
        try:
            return await gather_status(nc, monitors)
        finally:
            await nc.close()

    st = _run(go())
    if as_json:
        click.echo(orjson.dumps(st, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped: whole lines, not cells squeezed to 80 columns
        console = Console(width=200)
    console.print(status_table(st))


@cli.command()
@click.option("--nats", "url", default=streams.default_url, help=NATS_HELP)
@click.option("--db", "db", required=True, type=click.Path(dir_okay=False), help="DuckDB file to rebuild.")
def rebuild(url: str, db: str) -> None:
    """Replay the whole log from sequence 1 into a new file, then swap it in for DB.

    Stop the materializer that owns DB first.
    """
    from ._materializer import rebuild as do_rebuild

    t0 = time.perf_counter()
    # Bounded: an unreachable server (or one lost for good mid-replay) ends the rebuild with a message.
    seq = _run(do_rebuild(url, db, connect_options=one_shot_options()))
    dt = time.perf_counter() - t0
    click.echo(f"rebuilt {db} through seq {seq} in {dt:.2f}s ({seq / dt if dt else 0:.0f} events/s)")


# --------------------------------------------------------------------------- benchmarks
@cli.group()
def bench() -> None:
    """Benchmarks that print JSON and compare against a baseline measured in the same run."""


@bench.command("ingest")
@click.option("--events", "n", default=50_000, show_default=True, type=click.IntRange(100))
@click.option("--nats", "url", default=None, help="Use this NATS server (default: start an embedded one).")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")
@click.option(
    "--paced-seconds",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.5, 600),
    help="How long the half-rate latency arm publishes.",
)
@click.option(
    "--query-rows",
    default=1_000_000,
    show_default=True,
    type=click.IntRange(0),
    help="Experiments in the best_per_task table (built directly in DuckDB; 0 skips it).",
)
def bench_ingest(n: int, url: str | None, as_json: bool, paced_seconds: float, query_rows: int) -> None:
    """Raw nats-py publish vs hive publish vs end-to-end materialization, latency at full and
    half rate, queries while ingesting, best_per_task over --query-rows, rebuild; each figure
    beside its goal (issue 12)."""
    from ._bench_ingest import human_line, run_ingest_bench

    result = _run(
        run_ingest_bench(n, url=url, progress=not as_json, paced_seconds=paced_seconds, query_rows=query_rows)
    )
    click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    if not as_json:
        click.echo(human_line(result), err=True)


_BL = BenchConfig(families=[])
"""``hive bench learning``'s defaults are the benchmark's own (the help shows them)."""


@bench.command("learning")
@click.option(
    "--family",
    "families",
    multiple=True,
    default=("lmrecipe",),
    show_default=True,
    help="Task family to benchmark (repeatable).",
)
@click.option(
    "--train-instances",
    default=_BL.train_instances,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Train the hive on instances 0..K-1.",
)
@click.option(
    "--train-seconds",
    default=_BL.train_seconds,
    show_default=True,
    type=click.FloatRange(5),
    help="How long the hive trains on each family.",
)
@click.option(
    "--heldout",
    default=6,
    show_default=True,
    type=click.IntRange(1),
    help="Held-out instances (1000, 1001, ...).",
)
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(1), help="Seeds per instance.")
@click.option(
    "--budget", default=_BL.budget, show_default=True, type=click.IntRange(1), help="Trials per study."
)
@click.option(
    "--agents",
    "n_agents",
    default=4,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Agents in the training hive.",
)
@click.option(
    "--distill-every",
    default=_BL.distill_every,
    show_default=True,
    type=click.IntRange(1),
    help="The training hive distills after this many new successful traces.",
)
@click.option(
    "--jobs",
    default=2,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes for the studies.",
)
@click.option(
    "--out",
    default="bench-learning",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory for learning.json, learning.png and the hive logs.",
)
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")
@click.option(
    "--quick",
    is_flag=True,
    help="Small settings (8 instances, 45 s, 2 held-out x 2 seeds, budget 60) for a smoke test.",
)
def bench_learning(
    families: tuple[str, ...],
    train_instances: int,
    train_seconds: float,
    heldout: int,
    seeds: int,
    budget: int,
    n_agents: int,
    distill_every: int,
    jobs: int,
    out: str,
    as_json: bool,
    quick: bool,
) -> None:
    """Trials to reach normalised regret <= 0.05 on held-out instances after the hive trained on
    others: the hive (portfolio + model), generation 0, TPE, warm-started TPE, random search."""
    from agents import load_task

    from ._bench_learning import print_table, run_bench

    for family in families:
        try:
            load_task(f"{family}/1000")
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--family") from None
    if quick:
        train_instances, train_seconds, heldout, seeds, budget = 8, 45.0, 2, 2, 60
        distill_every = min(distill_every, 200)
    cfg = BenchConfig(
        families=list(families), train_instances=train_instances, train_seconds=train_seconds,
        heldout=heldout, seeds=seeds, budget=budget, agents=n_agents, distill_every=distill_every,
        jobs=jobs, out=Path(out), quick=quick,
    )  # fmt: skip
    report = run_bench(cfg)
    click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
    if not as_json:
        print_table(report)
        click.echo(f"wrote {Path(out) / 'learning.json'} and {Path(out) / 'learning.png'}", err=True)


_UP = UpConfig()
"""``hive up``'s defaults are the supervisor's own (the help shows them)."""


@cli.command()
@click.option(
    "--agents",
    "n_agents",
    default=_UP.agents,
    show_default=True,
    type=click.IntRange(0, 512),
    help="Agents to run (types assigned round-robin).",
)
@click.option(
    "--types",
    default=",".join(_UP.types),
    show_default=True,
    help="Comma-separated agent types (names or module:Class).",
)
@click.option(
    "--task",
    default=_UP.task,
    show_default=True,
    help="Task instance or campaign the agents work on: hartmann6/0, hartmann6/0-31, a/0,a/3-5 "
    "(a campaign's per-instance budget: env HIVE_INSTANCE_BUDGET).",
)
@click.option(
    "--deploy-instances",
    default=None,
    envvar="HIVE_DEPLOY_INSTANCES",
    help="Deployers: the range of new instances to take, each once, e.g. 1000-1999 (env "
    "HIVE_DEPLOY_INSTANCES; default: each deployer its own block from 100000).",
)
@click.option(
    "--duration",
    default=_UP.duration_s,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds to run; 0 = until Ctrl-C.",
)
@click.option(
    "--data",
    "data_dir",
    default=str(_UP.data_dir),
    show_default=True,
    type=click.Path(file_okay=False),
    help="State directory: NATS store, DuckDB file, logs, nats.url and nats.monitor (for `hive "
    "status`), plots/ at the end.",
)
@click.option(
    "--nats", "url", default=None, help="Use this NATS server instead of starting the embedded one."
)
@click.option(
    "--port",
    default=_UP.port,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Embedded server port (0 = any free port).",
)
@click.option(
    "--http-port",
    default=_UP.http_port,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Embedded server monitoring port (0 = any free port; recorded in DATA/nats.monitor).",
)
@click.option("--distill/--no-distill", default=_UP.distill, show_default=True, help="Run the distiller.")
@click.option(
    "--distill-every",
    default=_UP.distill_every_traces,
    show_default=True,
    type=click.IntRange(1),
    help="Start a distillation round after this many new successful traces.",
)
@click.option(
    "--secure",
    is_flag=True,
    help="Auth on, as in docker compose: per-role NATS users and per-agent identities (generated or "
    "reused in DATA/credentials, with the model-signing keys); the embedded server admits no one else.",
)
@click.option(
    "--cluster",
    "nodes",
    default=_UP.cluster,
    show_default=True,
    type=click.IntRange(1, 9),
    help="Embedded NATS as a JetStream cluster of N nats-server processes on loopback (ports PORT, "
    "PORT+1 …; stores in DATA/nats-cluster); 3 gives the R3 stream compose runs: one node may die.",
)
@click.option(
    "--sync",
    "durability",
    default=_UP.durability,
    show_default=True,
    callback=_durability_option,
    help="Embedded NATS fsync policy: 'default' (every 2 min), 'always' (before each ack) or an "
    "interval such as 30s.",
)
def up(
    n_agents: int,
    types: str,
    task: str,
    deploy_instances: str | None,
    duration: float,
    data_dir: str,
    url: str | None,
    port: int,
    http_port: int,
    distill: bool,
    distill_every: int,
    secure: bool,
    nodes: int,
    durability: str,
) -> None:
    """Run the whole swarm on this machine with live progress; state stays in --data.

    At the end it prints the final state (after the agents stopped) and writes the plots into
    DATA/plots. With --secure, log in from outside with
    HIVE_NATS_CREDENTIALS=DATA/credentials/admin.json and the URL in DATA/nats.url.
    """
    from agents import load_agent_type, parse_campaign, parse_instances

    from ._supervisor import Swarm

    type_list = [t.strip() for t in types.split(",") if t.strip()]
    try:
        for t in type_list:
            load_agent_type(t)
        parse_campaign(task)  # one instance (hartmann6/0) or a campaign (hartmann6/0-31, a/0,a/3-5)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if deploy_instances is not None:
        try:
            parse_instances(deploy_instances)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--deploy-instances") from None
    if not type_list and n_agents:
        raise click.BadParameter("give at least one agent type", param_hint="--types")
    if secure and url:
        raise click.UsageError("--secure starts its own locked-down server; it cannot go with --nats")
    if url and (nodes > 1 or durability != "default"):
        raise click.UsageError("--cluster and --sync configure the embedded server; not with --nats")
    try:  # a read-only or foreign data directory is a permission error, not an unreachable server
        streams.ensure_writable_dir(data_dir, "data directory")
    except streams.ServerError as e:
        raise click.ClickException(str(e)) from None
    cfg = UpConfig(
        data_dir=Path(data_dir),
        agents=n_agents,
        types=type_list,
        task=task,
        duration_s=duration or None,
        nats_url=url,
        port=port,
        http_port=http_port,
        distill=distill,
        distill_every_traces=distill_every,
        extra_agent_args=[] if deploy_instances is None else ["--deploy-instances", deploy_instances],
        secure=secure,
        cluster=nodes,
        durability=durability,
    )
    swarm = Swarm(cfg)
    # A signal while connecting cancels at once; after that the swarm stops in order (agents, their
    # last events applied, the distiller, the materializer, the server), which may take a while.
    done = _run(until_signal(swarm.run, swarm.stop, started=swarm.started, grace_s=UP_STOP_GRACE_S))
    if done is None and not swarm.connected:
        click.echo("hive up stopped before it was connected to NATS", err=True)


from ._agent_cli import agent  # noqa: E402
from ._credentials_cli import credentials  # noqa: E402
from ._distill_cli import distill, keys, model  # noqa: E402
from ._export_cli import export  # noqa: E402
from ._health_cli import health  # noqa: E402
from ._plot_cli import plot  # noqa: E402

for _command in (agent, credentials, distill, export, health, keys, model, plot):
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    with contextlib.suppress(BrokenPipeError):
        cli(prog_name="hive")


if __name__ == "__main__":
    main()
