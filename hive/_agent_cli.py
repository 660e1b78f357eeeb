"""``hive agent run``: agents against a running hive (what the compose services call)."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import click

import streams
from streams import _auth as streams_auth

from ._signals import until_signal

NATS_HELP = "NATS server URL (env HIVE_NATS_URL)."


@click.group()
def agent() -> None:
    """Run and list agent types."""


@agent.command("list")
def agent_list() -> None:
    """List the agent types and tasks this installation knows."""
    from agents import available_agent_types, available_tasks

    click.echo("agent types: " + ", ".join(available_agent_types()))
    click.echo("tasks:       " + ", ".join(available_tasks()))


@agent.command("run")
@click.argument("agent_type")
@click.option("--nats", "url", default=streams.default_url, help=NATS_HELP)
@click.option(
    "--count", default=1, show_default=True, type=click.IntRange(1, 1024), help="Agents in this process."
)
@click.option(
    "--task",
    default=None,
    help="Task instance or campaign: hartmann6/0, hartmann6/0-31, hartmann6/0,hartmann6/3-5, charlm, "
    "pkg.mod:MyTask/3.",
)
@click.option(
    "--instance-budget",
    default=None,
    type=click.IntRange(1),
    envvar="HIVE_INSTANCE_BUDGET",
    help="Experiments per instance of a campaign (default 200 for several instances, unlimited for "
    "one; env HIVE_INSTANCE_BUDGET).",
)
@click.option(
    "--deploy-instances",
    default=None,
    envvar="HIVE_DEPLOY_INSTANCES",
    help="Deployers: the range of new instances to take, each once, e.g. 1000-1999 "
    "(env HIVE_DEPLOY_INSTANCES).",
)
@click.option(
    "--require-model",
    is_flag=True,
    envvar="HIVE_REQUIRE_MODEL",
    help="Wait for the first published model before proposing (env HIVE_REQUIRE_MODEL=1).",
)
@click.option(
    "--model-wait",
    default=600.0,
    show_default=True,
    type=click.FloatRange(0.1),
    envvar="HIVE_MODEL_WAIT",
    help="With --require-model: seconds to wait for a model before the agent stops with an error.",
)
@click.option(
    "--id",
    "agent_id",
    default=None,
    help="Agent id (default <type>-<host>-<pid>; with --count N a -<i> suffix is added).",
)
@click.option("--duration", default=None, type=click.FloatRange(0.1), help="Stop after this many seconds.")
@click.option("--budget", default=None, type=float, help="Override the task's default budget.")
@click.option(
    "--model/--no-model",
    "use_model",
    default=True,
    show_default=True,
    help="Watch for the shared model and propose with it once published.",
)
@click.option(
    "--pubkey",
    default=None,
    type=click.Path(dir_okay=False),
    help="Pinned Ed25519 public key for model verification (env HIVE_MODEL_PUBKEY).",
)
@click.option(
    "--hf-model",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Local base model for hf policies (the distiller's --hf-model; env HIVE_HF_MODEL).",
)
def agent_run(
    agent_type: str,
    url: str,
    count: int,
    task: str | None,
    agent_id: str | None,
    duration: float | None,
    budget: float | None,
    use_model: bool,
    pubkey: str | None,
    hf_model: str | None,
    instance_budget: int | None,
    deploy_instances: str | None,
    require_model: bool,
    model_wait: float,
) -> None:
    """Run COUNT agents of AGENT_TYPE (a name from `hive agent list` or module:Class) until Ctrl-C."""
    from agents import AgentRuntime, load_agent_type, parse_campaign, parse_instances

    try:
        cls = load_agent_type(agent_type)
        if task is not None:
            parse_campaign(task)
        if deploy_instances is not None:
            parse_instances(deploy_instances)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if require_model and not use_model:
        raise click.BadParameter(
            "--require-model needs the model (not --no-model)", param_hint="--require-model"
        )
    base = agent_id or f"{cls.type_name}-{socket.gethostname()[:20]}-{os.getpid()}"
    base = "".join(c if c.isalnum() or c in "-_" else "-" for c in base)
    ids = [base] if count == 1 else [f"{base}-{i}" for i in range(count)]
    if hf_model:  # fail now rather than refuse every hf model later
        from distill import _hf

        try:
            _hf.require_extra()
        except _hf.MissingExtra as e:
            raise click.BadParameter(str(e), param_hint="--hf-model") from None
    watcher = _model_watcher(pubkey, hf_model) if use_model else None
    connect_opts: dict[str, Any] = {}
    keepers: list[Any] = []
    pool = os.environ.get(streams_auth.ENV_POOL)
    if pool:  # a locked-down swarm: claim an identity (user + permissions) from the type's pool
        if count != 1:
            raise click.BadParameter(
                "with an identity pool (HIVE_AGENT_POOL) run one agent per process", param_hint="--count"
            )
        claim = asyncio.run(streams_auth.claim_identity(url, pool, cls.type_name))
        ids = [claim.agent_id]
        connect_opts = streams_auth.connect_options(claim.credentials)
        keepers.append(_identity_keeper(claim))
    runtime = AgentRuntime(url, model_watcher=watcher, connect_options=connect_opts, keepers=keepers)
    specs = [(cls, i, task) for i in ids]

    def connected() -> bool:  # before this, a stop signal cancels the connect attempts at once
        return runtime.nc is not None and bool(runtime.nc.is_connected)

    asyncio.run(
        until_signal(
            lambda: runtime.run(
                specs,
                duration_s=duration,
                options={
                    "budget": budget,
                    "instance_budget": instance_budget,
                    "deploy_instances": deploy_instances,
                    "require_model": require_model,
                    "model_wait_s": model_wait,
                },
            ),
            runtime.stop,
            started=connected,
        )
    )


def _identity_keeper(claim: Any) -> Any:
    """Renew the claimed identity every third of its TTL; stop the agents if another holder took
    it; release it at a clean stop."""

    async def keep(nc: Any, runtime: Any) -> None:
        try:
            while True:
                await asyncio.sleep(streams_auth.CLAIM_TTL_S / 3)
                await streams_auth.renew_claim(nc, claim)
        except streams_auth.ClaimLost:
            runtime.stop()
        except asyncio.CancelledError:
            await streams_auth.release_claim(nc, claim)
            raise

    return keep


def _model_watcher(pubkey: str | None, hf_model: str | None = None) -> Any:
    """The distillation package's model watcher, if available (it is added by the distill issue)."""
    try:
        from agents._policy import make_model_watcher
    except ImportError:
        return None
    return make_model_watcher(pubkey or os.environ.get("HIVE_MODEL_PUBKEY"), hf_model)
