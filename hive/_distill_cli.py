"""``hive distill``, ``hive keys``, ``hive model list|rollback``: the model side of the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson

import streams

from ._oneshot import connect_once
from ._signals import until_signal

NATS_HELP = "NATS server URL (env HIVE_NATS_URL)."
STOP_GRACE_S = 60.0
"""After a stop signal, how long a connected distiller may take to finish (training stops at its
next step; scoring and publishing finish) before it is cancelled."""


class LazyHelpOption(click.Option):
    """An option whose help text is made when help is shown (``help_factory``): it may quote
    constants of a module too heavy to import for every command (``distill`` imports torch)."""

    def __init__(self, *args: Any, help_factory: Callable[[], str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help_factory = help_factory

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        """The help line, with the help text made now."""
        if self.help_factory is not None:
            self.help = self.help_factory()
        return super().get_help_record(ctx)


def _steps_help() -> str:
    from distill._service import CPU_STEPS, CUDA_STEPS, HISTORY_CPU_STEPS, HISTORY_CUDA_STEPS

    return (
        f"Training steps per candidate (default {HISTORY_CUDA_STEPS} on CUDA, {HISTORY_CPU_STEPS} on "
        f"CPU for --backend history; {CUDA_STEPS} on CUDA, {CPU_STEPS} on CPU for byte and hf)."
    )


def _batch_help() -> str:
    from distill._service import (
        CPU_BATCH_SIZE,
        CUDA_BATCH_SIZE,
        HISTORY_CPU_BATCH_SIZE,
        HISTORY_CUDA_BATCH_SIZE,
    )

    return (
        f"Training batch size (default {HISTORY_CUDA_BATCH_SIZE} on CUDA, {HISTORY_CPU_BATCH_SIZE} on "
        f"CPU for --backend history; {CUDA_BATCH_SIZE} on CUDA, {CPU_BATCH_SIZE} on CPU for byte and hf)."
    )


def _gate_config(spec: str) -> Any:
    """``--gate INSTANCESxSEEDSxTRIALS`` as a :class:`distill.GateConfig`."""
    from distill import GateConfig

    try:
        instances, seeds, trials = (int(x) for x in spec.lower().split("x"))
        return GateConfig(instances=instances, seeds=seeds, trials=trials)
    except ValueError:
        raise click.BadParameter("use INSTANCESxSEEDSxTRIALS, e.g. 3x2x40", param_hint="--gate") from None


def _default_key() -> str:
    return os.environ.get("HIVE_SIGNING_KEY", "./hive-data/keys/distiller.key")


def _check_key(key: str) -> None:
    if not Path(key).exists():
        raise click.BadParameter(
            f"{key}: no signing key (create one with `hive keys --out DIR`)", param_hint="--key"
        )


@click.command()
@click.option("--nats", "url", default=streams.default_url, help=NATS_HELP)
@click.option(
    "--key",
    default=_default_key,
    show_default="env HIVE_SIGNING_KEY or ./hive-data/keys/distiller.key",
    help="Ed25519 signing key (from `hive keys`).",
)
@click.option("--once", is_flag=True, help="Run one generation now and exit.")
@click.option(
    "--every-traces",
    default=200,
    show_default=True,
    type=click.IntRange(1),
    help="Start a generation after this many new successful traces.",
)
@click.option("--every-seconds", default=None, type=click.FloatRange(1), help="…or after this many seconds.")
@click.option("--steps", default=None, type=click.IntRange(1), cls=LazyHelpOption, help_factory=_steps_help)
@click.option(
    "--batch-size", default=None, type=click.IntRange(1), cls=LazyHelpOption, help_factory=_batch_help
)
@click.option(
    "--device", default=None, type=click.Choice(["cpu", "cuda"]), help="Default: CUDA when present."
)
@click.option("--min-examples", default=16, show_default=True, type=click.IntRange(1))
@click.option(
    "--progress/--no-progress", default=False, show_default=True, help="Progress bar while training."
)
@click.option(
    "--model",
    "model_json",
    default="{}",
    show_default=True,
    help="Config of a model from the base, as JSON: HistoryConfig (history) or PolicyConfig (byte; "
    "default: the small CPU model on CPU).",
)
@click.option(
    "--modes",
    default="base,continue",
    show_default=True,
    help="Candidates per generation: base (fresh weights, ReST-EM) and/or continue (from the champion).",
)
@click.option(
    "--backend",
    default="history",
    show_default=True,
    type=click.Choice(["history", "byte", "hf"]),
    help="history: the model conditioned on each instance's trials (gated on simulated studies); "
    "byte: the small byte-level policy; hf: a LoRA adapter on a local causal LM (the hf extra).",
)
@click.option(
    "--gate",
    "gate_spec",
    default="6x3x40",  # distill.GateConfig()'s (tests/test_cli.py checks; distill imports torch)
    show_default=True,
    help="history backend: the research-value gate's studies, INSTANCESxSEEDSxTRIALS.",
)
@click.option(
    "--elites",
    default=64,  # distill.model.MAX_ELITES (tests/test_cli.py checks)
    show_default=True,
    type=click.IntRange(0, 64),
    help="history backend: best recipes per family the model recalls (one per training instance); "
    "0: the network alone.",
)
@click.option(
    "--hf-model",
    default=lambda: os.environ.get("HIVE_HF_MODEL"),
    show_default="env HIVE_HF_MODEL",
    type=click.Path(file_okay=False),
    help="Local base model directory (transformers save_pretrained, safetensors) for --backend hf.",
)
@click.option("--lora-r", default=8, show_default=True, type=click.IntRange(1, 1024), help="LoRA rank (hf).")
@click.option(
    "--lora-targets",
    default=None,
    help="Comma-separated module names to adapt (hf; default: peft's choice for the architecture).",
)
@click.option(
    "--hf-lr", default=1e-3, show_default=True, type=click.FloatRange(0, min_open=True), help="LoRA peak lr."
)
def distill(
    url: str,
    key: str,
    once: bool,
    every_traces: int,
    every_seconds: float | None,
    steps: int | None,
    batch_size: int | None,
    device: str | None,
    min_examples: int,
    progress: bool,
    model_json: str,
    modes: str,
    backend: str,
    hf_model: str | None,
    lora_r: int,
    lora_targets: str | None,
    hf_lr: float,
    gate_spec: str,
    elites: int,
) -> None:
    """Distil pooled successful traces into the shared model and push it to every agent."""
    _check_key(key)
    from distill import _hf
    from distill._service import DistillConfig, Distiller

    try:
        model_cfg = orjson.loads(model_json)
        assert isinstance(model_cfg, dict)
    except (orjson.JSONDecodeError, AssertionError):
        raise click.BadParameter("must be a JSON object", param_hint="--model") from None
    mode_list = tuple(m.strip() for m in modes.split(",") if m.strip())
    if not mode_list or set(mode_list) - {"base", "continue"}:
        raise click.BadParameter("choose from base, continue", param_hint="--modes")
    if backend == "hf" and not hf_model:
        raise click.BadParameter("--backend hf needs the base model directory", param_hint="--hf-model")
    targets = tuple(t.strip() for t in lora_targets.split(",") if t.strip()) if lora_targets else None
    cfg = DistillConfig(
        nats_url=url,
        key_path=key,
        once=once,
        every_traces=every_traces,
        every_seconds=every_seconds,
        steps=steps,
        batch_size=batch_size,
        device=device,
        min_examples=min_examples,
        progress=progress,
        model=model_cfg,
        modes=mode_list,
        backend=backend,
        hf_model=hf_model,
        lora=_hf.LoraSettings(r=lora_r, target_modules=targets or None),
        hf_lr=hf_lr,
        gate=_gate_config(gate_spec),
        elites=elites,
    )
    try:
        d = Distiller(cfg)
    except (_hf.MissingExtra, _hf.BaseModelError) as e:
        raise click.ClickException(str(e)) from None

    try:
        # a stop signal while still connecting cancels at once; once connected it finishes in order
        reports = asyncio.run(until_signal(d.run, d.stop, started=d.connected, grace_s=STOP_GRACE_S))
    except streams.QueryError as e:
        raise click.ClickException(f"{e} (the distiller reads traces through the query service)") from None
    except (_hf.MissingExtra, _hf.BaseModelError) as e:
        raise click.ClickException(str(e)) from None
    if reports is None:
        click.echo(
            "distiller stopped" + ("" if d.nc is not None else " before it was connected to NATS"), err=True
        )
        return
    if once:
        click.echo(orjson.dumps(reports[-1] if reports else {}, option=orjson.OPT_INDENT_2).decode())


@click.command()
@click.option("--out", default="./hive-data/keys", show_default=True, type=click.Path(file_okay=False))
def keys(out: str) -> None:
    """Create the distiller's Ed25519 signing key and the public key agents pin."""
    try:
        priv, pub = streams.generate_keys(out)
    except FileExistsError as e:
        raise click.ClickException(str(e)) from None
    click.echo(
        f"private key: {priv} (keep secret; the distiller's --key)\npublic key:  {pub} "
        f"(agents' --pubkey or HIVE_MODEL_PUBKEY={pub.read_text().strip()})"
    )


@click.group()
def model() -> None:
    """Inspect the published models and roll back."""


@model.command("list")
@click.option("--nats", "url", default=streams.default_url, help=NATS_HELP)
@click.option("--name", default="policy", show_default=True)
def model_list(url: str, name: str) -> None:
    """The versions in the model store and the current pointer."""
    from rich.console import Console
    from rich.table import Table

    async def go() -> tuple[list[int], Any, list[list[Any]]]:
        nc = await connect_once(url, "hive-model")
        try:
            store = await streams.ModelStore(nc).open()
            current = await store.read_pointer(name)
            rows: list[list[Any]] = []
            with contextlib.suppress(streams.QueryError):
                rows = (
                    await streams.remote_query(
                        nc,
                        "SELECT version, decision, dataset_size, trained_through_seq, eval, occurred_at "
                        "FROM models WHERE name = ? ORDER BY seq",
                        params=[name],
                        timeout_s=5,
                    )
                ).rows
            return await store.versions(name), current, rows
        finally:
            await nc.close()

    try:
        versions, current, rows = asyncio.run(go())
    except streams.ArtifactError as e:
        raise click.ClickException(str(e)) from None
    pointer = current[0].pointer if current else None
    t = Table(
        title=f"model {name!r}: current version {pointer.version if pointer else '-'} "
        f"(pointer serial {pointer.serial if pointer else '-'})"
    )
    for col in ("version", "decision", "dataset", "through seq", "eval", "at"):
        t.add_column(col)
    stored = set(versions)
    for v, decision, size, through, eval_, at in rows:
        mark = " *" if pointer and v == pointer.version and decision == "published" else ""
        t.add_row(
            f"{v}{mark}",
            decision + ("" if v in stored or decision == "rejected" else " (gone)"),
            str(size),
            str(through),
            str(eval_),
            str(at),
        )
    if not rows:
        for v in versions:
            t.add_row(f"{v}{' *' if pointer and v == pointer.version else ''}", "stored", "", "", "", "")
    Console().print(t)


@model.command("rollback")
@click.argument("version", type=click.IntRange(1))
@click.option("--nats", "url", default=streams.default_url, help=NATS_HELP)
@click.option("--key", default=_default_key, help="Ed25519 signing key (the distiller's).")
@click.option("--name", default="policy", show_default=True)
def model_rollback(version: int, url: str, key: str, name: str) -> None:
    """Point every agent at an older VERSION (a new signed pointer whose serial is above every
    serial ever written, so agents holding any earlier pointer accept it)."""
    _check_key(key)
    private = streams.load_private_key(key)

    async def go() -> streams.ModelPointer:
        nc = await connect_once(url, "hive-model")
        try:
            store = await streams.ModelStore(nc).open()
            if version not in await store.versions(name):
                raise click.ClickException(f"version {version} is not in the model store")
            current = await store.read_pointer(name)
            if current is None:
                raise click.ClickException("no model pointer yet: nothing to roll back")
            rev = current[1]
            # the model being rolled back from is the current one by the log (the KV value may be
            # a replayed old pointer), and the serial must be above every one ever written, so
            # that agents holding any earlier pointer accept the rollback
            old = await store.current(name, private.public_key()) or current[0]
            serial = await store.next_serial(name, private.public_key())
            w_name, m_name = streams.object_names(name, version)
            w_info = await store.obs.get_info(w_name)
            m_info = await store.obs.get_info(m_name)
            import hashlib

            weights = await store.fetch(w_name, size=w_info.size, sha256=_obs_sha(w_info))
            meta = await store.fetch(m_name, size=m_info.size, sha256=_obs_sha(m_info))
            m = orjson.loads(meta)
            pointer = streams.ModelPointer(
                name=name,
                serial=serial,
                version=version,
                parent_version=old.pointer.version,
                weights=w_name,
                weights_sha256=hashlib.sha256(weights).hexdigest(),
                weights_size=len(weights),
                meta=m_name,
                meta_sha256=hashlib.sha256(meta).hexdigest(),
                meta_size=len(meta),
                trained_through_seq=int(m.get("trained_through_seq", 0)),
                dataset_size=int(m.get("dataset_size", 0)),
                eval={k: float(v) for k, v in (m.get("eval") or {}).items()},
                note=f"rollback from v{old.pointer.version}",
            )
            await store.write_pointer(pointer, private, rev)
            await streams.Publisher(nc.jetstream()).publish(
                streams.ModelPublished(
                    event_id=f"distiller/{name}/rollback-{pointer.serial}",
                    agent_id="distiller",
                    agent_type="distiller",
                    name=name,
                    version=version,
                    parent_version=old.pointer.version,
                    sha256=pointer.weights_sha256,
                    size=pointer.weights_size,
                    trained_through_seq=pointer.trained_through_seq,
                    dataset_size=pointer.dataset_size,
                    eval=pointer.eval,
                    signature=streams.sign(private, pointer.signed_bytes()),
                )
            )
            return pointer
        finally:
            await nc.close()

    try:
        p = asyncio.run(go())
    except streams.ArtifactError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"model {name!r} now points at version {p.version} (serial {p.serial})")


def _obs_sha(info: Any) -> str:
    """The hex sha256 the object store recorded (``SHA-256=<base64url>``)."""
    import base64

    digest = (info.digest or "").split("=", 1)[-1]
    return base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex()


def _model_source(
    version: int, weights: str | None, meta: str | None, url: str, name: str, pubkey: str | None
) -> Any:
    """The proposer of ``hive model sample|eval``: local files, or the store through a signed pointer."""
    from . import _model_tools as tools

    try:
        if weights or meta:
            if not (weights and meta):
                raise click.BadParameter("give both --weights and --meta", param_hint="--weights/--meta")
            return tools.load_local(weights, meta, version)
        key = pubkey or os.environ.get("HIVE_MODEL_PUBKEY")
        if not key:
            raise click.BadParameter(
                "the distiller's public key verifies a model fetched from the hive "
                "(--pubkey FILE or env HIVE_MODEL_PUBKEY), or give --weights/--meta",
                param_hint="--pubkey",
            )
        return asyncio.run(tools.load_from_store(url, name, version, key))
    except (tools.ToolError, ValueError, streams.ArtifactError) as e:
        raise click.ClickException(str(e)) from None


def _model_options(f: Any) -> Any:
    """The options ``hive model sample`` and ``hive model eval`` share: where the model comes from."""
    for option in reversed(
        [
            click.option(
                "--weights", type=click.Path(exists=True, dir_okay=False), help="Local weights file."
            ),
            click.option("--meta", type=click.Path(exists=True, dir_okay=False), help="Its meta.json."),
            click.option("--nats", "url", default=streams.default_url, help=NATS_HELP),
            click.option("--name", default="policy", show_default=True),
            click.option(
                "--pubkey",
                default=None,
                help="Distiller public key (file or base64) that a fetched model's pointer must verify with "
                "(env HIVE_MODEL_PUBKEY).",
            ),
            click.option("--json", "as_json", is_flag=True, help="JSON instead of a table."),
        ]
    ):
        f = option(f)
    return f


def _load_task_ref(ref: str) -> Any:
    from agents import load_task

    try:
        return load_task(ref)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--task") from None


@model.command("sample")
@click.argument("version", type=click.IntRange(1))
@click.option("--task", "task_ref", required=True, help="The instance to propose for, e.g. branin/17.")
@click.option(
    "--history",
    "history_db",
    type=click.Path(dir_okay=False),
    default=None,
    help="A DuckDB file (a snapshot, or a stopped hive's database) holding the instance's trials.",
)
@click.option("-n", "count", default=5, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--seed", default=0, show_default=True, type=int)
@_model_options
def model_sample(
    version: int,
    task_ref: str,
    history_db: str | None,
    count: int,
    seed: int,
    weights: str | None,
    meta: str | None,
    url: str,
    name: str,
    pubkey: str | None,
    as_json: bool,
) -> None:
    """Proposals of model VERSION for one instance, conditioned on its history (offline)."""
    from . import _model_tools as tools

    task = _load_task_ref(task_ref)
    try:
        history = tools.history_from_db(history_db, task)
    except tools.ToolError as e:
        raise click.ClickException(str(e)) from None
    proposer = _model_source(version, weights, meta, url, name, pubkey)
    try:
        proposals = tools.sample(proposer, history, count, seed)
    except Exception as e:  # ProposerUnavailable: a space the model cannot represent
        raise click.ClickException(f"{proposer.name} cannot propose for {task.ref}: {e}") from None
    best = history.best
    info = {
        "model": proposer.name,
        "task": task.ref,
        "history_trials": len(history.trials),
        "baselines": len(history.baselines),
        "best_objective": best.objective if best else None,
        "proposals": proposals,
    }
    if as_json:
        click.echo(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"{proposer.name} on {task.ref}: history of {len(history.trials)} trials "
        f"(best {best.objective if best else '-'}), {len(history.baselines)} baselines"
    )
    keys = list(proposals[0]["recipe"]) if proposals else []
    for col in ["#", *keys, "seen"]:
        t.add_column(col)
    for i, p in enumerate(proposals, start=1):
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in p["recipe"].values()]
        t.add_row(str(i), *cells, "yes" if p["seen"] else "")
    Console(width=200).print(t)


@model.command("eval")
@click.argument("version", type=click.IntRange(1))
@click.option("--task", "task_refs", required=True, help="Instances, comma-separated: branin/900,branin/901.")
@click.option("--trials", default=40, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--seeds", default=2, show_default=True, type=click.IntRange(1, 1000))
@_model_options
def model_eval(
    version: int,
    task_refs: str,
    trials: int,
    seeds: int,
    weights: str | None,
    meta: str | None,
    url: str,
    name: str,
    pubkey: str | None,
    as_json: bool,
) -> None:
    """Short simulated studies of model VERSION against mutation on chosen instances (regret AUC and
    trials to regret 0.05 on the true objective where the task has one; best observed objective)."""
    from . import _model_tools as tools

    refs = [r.strip() for r in task_refs.split(",") if r.strip()]
    if not refs:
        raise click.BadParameter("name at least one instance", param_hint="--task")
    for ref in refs:
        _load_task_ref(ref)
    proposer = _model_source(version, weights, meta, url, name, pubkey)
    rows = tools.evaluate([proposer, tools.mutation()], refs, trials, seeds)
    if as_json:
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"{proposer.name} vs mutation: {seeds} seeds x {trials} trials per instance (lower is better)"
    )
    for col in ("task", "proposer", "regret AUC", "solved", "median trials to 0.05", "best objective"):
        t.add_column(col)

    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    for r in rows:
        solved = "-" if r["solved"] is None else f"{r['solved']}/{r['seeds']}"
        t.add_row(
            r["task"],
            r["proposer"],
            cell(r["regret_auc"]),
            solved,
            f">{trials}"
            if (r["median_trials_to_target"] or 0) > trials
            else cell(r["median_trials_to_target"]),
            cell(r["best_objective"]),
        )
    Console(width=200).print(t)
