"""``hive bench learning``: does the hive solve new problems in fewer trials after it trained?

Per family, two phases:

1. **Train.** ``hive up --task <family>/0-<K> --duration T`` in a temporary data directory (a
   campaign over the training instances, the distiller on; each instance gets ``budget``
   experiments, deployers take new instances 100-899). When ``hive up`` refuses the campaign
   spec, the same swarm runs through its supervisor directly (its agents take campaigns).
   Afterwards the hive's state is read from its DuckDB file (the best recipe of every trained
   instance) and its latest published model from its NATS Object Store (an embedded server
   restarted on the data directory).
2. **Evaluate, offline.** On held-out instances (indices 1000, 1001, ...) x seeds, an in-process
   study (:func:`agents.run_study`) per arm counts the trials until the best true (noise-free)
   loss reaches a normalised regret <= 0.05 (0 = the optimum, 1 = the baseline recipe), within
   ``budget`` trials. The arms:

   * ``hive``: the portfolio (mutation, prior, TPE, the trained model) -- the researcher's choice,
     starting from the family's proposer record as the trained hive's read model holds it (what
     a researcher joining that hive would know: which proposers paid on the family);
   * ``hive_network``: ``hive`` with the model's elite memory removed (the network alone: the
     difference to ``hive`` is what recalling the training instances' best recipes adds);
   * ``generation0``: the same portfolio and record without a model (so the difference between
     ``hive`` and it is the model's);
   * ``tpe``: Optuna TPE from scratch;
   * ``tpe_warm``: TPE with the trained instances' best recipes enqueued first;
   * ``random``: prior samples.

   An arm whose parts are missing (no model published, a module not there) is reported as
   ``unavailable`` with the reason, never replaced by something else. For a task without a
   known optimum, regret uses observed objectives, with the best observed on the instance by any
   arm as the optimum (reported as ``"regret": "observed"``).

Outputs: a JSON document (stable keys; per family and arm the median trials to target, unsolved
runs counting ``budget + 1``, the solved count and every run), a table, a PNG of the median
best-so-far normalised regret per arm, and each family's evaluated model
(``<family>-model-v<N>.safetensors`` with its ``.meta.json``). Studies run in worker processes (``--jobs``).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import structlog
from pydantic import BaseModel

from agents import load_task
from agents._proposer import History, MutationProposer, PriorProposer, Proposer
from agents._study import StudyResult, run_study

from ._bench_config import BenchConfig

log = structlog.get_logger("hive.bench.learning")

ARMS: tuple[str, ...] = ("hive", "hive_network", "generation0", "tpe", "tpe_warm", "random")
"""The arms, in report order."""
TARGET = 0.05
"""Normalised regret that counts as solved."""
HELDOUT_START = 1000
"""Held-out instances are ``family/1000``, ``family/1001``, ...: never trained on."""
TRAIN_DEPLOY_RANGE = (100, 899)
"""Where the training hive's deployers take new instances: never the held-out ones."""
WARM_START_RECIPES = 8
"""How many of the trained instances' best recipes warm-start TPE (best first)."""


@dataclass
class Trained:
    """What phase 1 left: the best recipe per trained instance and the published model (if any)."""

    instances: list[str]
    mode: str
    seconds: float
    experiments: int = 0
    best_recipes: list[dict[str, Any]] = field(default_factory=list)
    model_version: int | None = None
    model_weights: bytes | None = None
    model_meta: bytes | None = None
    model_reason: str = ""
    arm_stats: dict[str, list[float]] = field(default_factory=dict)
    """The family's proposer record after training: proposer → [reward, 1 - reward] sums."""


# ------------------------------------------------------------------------------------- phase 1


_SWARM = """
import asyncio, sys
from pathlib import Path
from hive._supervisor import Swarm, UpConfig
data, task, seconds, agents, every = sys.argv[1:6]
cfg = UpConfig(data_dir=Path(data), task=task, duration_s=float(seconds), agents=int(agents),
               distill_every_traces=int(every), port=0, http_port=0)
asyncio.run(Swarm(cfg).run())
"""
"""The supervisor ``hive up`` runs, started directly: for a campaign spec the CLI does not take yet."""


def _hive_up(
    data: Path, task_spec: str, seconds: float, cfg: BenchConfig, log_file: Path, *, direct: bool = False
) -> int:
    """One ``hive up`` run (a subprocess; ``direct``: its supervisor without the CLI); its exit status.

    The agents get ``HIVE_INSTANCE_BUDGET`` = the study budget (training trajectories as long as
    the evaluated ones) and deployers ``HIVE_DEPLOY_INSTANCES`` below the held-out range."""
    if direct:
        cmd = [sys.executable, "-c", _SWARM, str(data), task_spec, f"{seconds:g}", str(cfg.agents),
               str(cfg.distill_every)]  # fmt: skip
    else:
        cmd = [
            sys.executable, "-m", "hive", "up",
            "--task", task_spec,
            "--duration", f"{seconds:g}",
            "--data", str(data),
            "--agents", str(cfg.agents),
            "--distill-every", str(cfg.distill_every),
            "--port", "0", "--http-port", "0",
        ]  # fmt: skip
    env = {
        **os.environ,
        "HIVE_INSTANCE_BUDGET": str(cfg.budget),
        "HIVE_DEPLOY_INSTANCES": f"{TRAIN_DEPLOY_RANGE[0]}-{TRAIN_DEPLOY_RANGE[1]}",
    }
    with log_file.open("ab") as out:
        proc = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, timeout=seconds + 300, check=False, env=env
        )
    return proc.returncode


def train(family: str, cfg: BenchConfig, root: Path) -> Trained:
    """Phase 1: the hive on ``family/0..K-1`` for ``train_seconds``; its best recipes and model."""
    data = root / f"{family}-hive"
    log_file = root / f"{family}-hive.log"
    refs = [load_task(f"{family}/{i}").ref for i in range(cfg.train_instances)]
    start = time.monotonic()
    spec = f"{family}/0-{cfg.train_instances - 1}" if cfg.train_instances > 1 else refs[0]
    rc = _hive_up(data, spec, cfg.train_seconds, cfg, log_file)
    mode = "hive up"
    if rc == 2 and time.monotonic() - start < min(30.0, cfg.train_seconds):
        # `hive up` refused the campaign spec (its --task check predates campaigns): the same
        # swarm through its supervisor, whose agents take campaign specs
        mode = "supervisor"
        rc = _hive_up(data, spec, cfg.train_seconds, cfg, log_file, direct=True)
    if rc != 0:
        log.warning("hive_up_failed", family=family, rc=rc, log=str(log_file))
    elif cfg.final_generation:
        closing_generation(data, log_file)
    trained = Trained(instances=refs, mode=mode, seconds=time.monotonic() - start)
    db = data / "hive.duckdb"
    if not db.exists():
        trained.model_reason = f"no hive state (see {log_file})"
        return trained
    con = duckdb.connect(str(db), read_only=True)
    try:
        placeholders = ",".join("?" for _ in refs)
        trained.experiments = int(
            con.execute(f"SELECT count(*) FROM experiments WHERE task IN ({placeholders})", refs).fetchone()[
                0
            ]  # type: ignore[index]
        )
        rows = con.execute(
            f"""SELECT arg_min(recipe, objective) FROM experiments
                WHERE task IN ({placeholders}) AND status = 'ok' AND objective IS NOT NULL
                GROUP BY task ORDER BY min(objective)""",
            refs,
        ).fetchall()
        trained.best_recipes = [json.loads(r[0]) for r in rows if r[0]]
        trained.arm_stats = family_record(
            family,
            con.execute(
                f"""SELECT task, seq, objective, status, proposer FROM experiments
                    WHERE task IN ({placeholders}) ORDER BY seq""",
                refs,
            ).fetchall(),
        )
        published = con.execute(
            "SELECT name, version, sha256, size FROM models WHERE decision = 'published' "
            "AND version IS NOT NULL ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        rejected = con.execute(
            "SELECT count(*), any_value(reason) FROM models WHERE decision <> 'published'"
        ).fetchone()
    finally:
        con.close()
    if published is None:
        n_rej, why = rejected if rejected else (0, None)
        trained.model_reason = (
            f"no model published in {cfg.train_seconds:g} s ({n_rej} rejected; {why or 'none trained'})"
        )
        return trained
    name, version, sha, size = published
    try:
        trained.model_weights, trained.model_meta = asyncio.run(
            _read_model(data, name, int(version), sha, int(size))
        )
        trained.model_version = int(version)
    except Exception as e:  # a store we cannot read: the arm is unavailable, with the reason
        trained.model_reason = f"cannot read model v{version}: {type(e).__name__}: {e}"
    return trained


def closing_generation(data: Path, log_file: Path, timeout: float = 900.0) -> int:
    """One ``hive distill --once`` over the stopped hive in ``data``: its NATS store restarted, a
    materializer serving its query service on the same DuckDB file; the distiller's exit status.
    The generation goes through the gate like any other (a rejected candidate publishes nothing)."""
    import streams

    from ._credentials_cli import signing_key_paths

    key = next(
        (
            p
            for p in (signing_key_paths(data / "credentials")[0], signing_key_paths(data / "keys")[0])
            if p.exists()
        ),
        None,
    )
    if key is None:
        log.warning("closing_generation_skipped", reason="no signing key in the hive's data directory")
        return 1
    hive = [sys.executable, "-m", "hive"]
    with streams.EmbeddedServer(store_dir=data / "nats", http_port=None) as srv, log_file.open("ab") as out:
        out.write(b"\n--- closing generation: hive distill --once ---\n")
        out.flush()
        mat = subprocess.Popen(
            [*hive, "materialize", "--nats", srv.url, "--db", str(data / "hive.duckdb")],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            proc = subprocess.run(
                [*hive, "distill", "--once", "--nats", srv.url, "--key", str(key)],
                stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False,
            )  # fmt: skip
        finally:
            mat.terminate()
            try:
                mat.wait(30)
            except subprocess.TimeoutExpired:
                mat.kill()
                mat.wait()
    if proc.returncode != 0:
        log.warning("closing_generation_failed", rc=proc.returncode, log=str(log_file))
    return proc.returncode


def family_record(family: str, rows: Sequence[Sequence[Any]]) -> dict[str, list[float]]:
    """The family's proposer record (:class:`agents.ArmStats`) from ``(task, seq, objective,
    status, proposer)`` rows in log order, scored as a researcher's portfolio scores them."""
    from agents._portfolio import ArmStats, Portfolio
    from agents._proposer import Trial

    stats = ArmStats()
    scorer = Portfolio([PriorProposer()], rng=random.Random(0), family_stats=stats)
    per_task: dict[str, tuple[list[Trial], list[float]]] = {}
    for task, seq, objective, status, proposer in rows:
        trials, baselines = per_task.setdefault(task, ([], []))
        ok = status == "ok" and objective is not None and math.isfinite(objective)
        if proposer == "baseline":
            if ok:
                baselines.append(float(objective))
            continue
        trials.append(Trial({}, float(objective) if ok else None, status, proposer, int(seq)))
    for ref, (trials, baselines) in per_task.items():
        scorer.observe(History(task=load_task(ref), trials=tuple(trials), baselines=tuple(baselines)))
    return {k: [round(v[0], 3), round(v[1], 3)] for k, v in stats.counts.get(family, {}).items()}


async def _read_model(data: Path, name: str, version: int, sha256: str, size: int) -> tuple[bytes, bytes]:
    """The weights and meta of a version, from the hive's NATS store restarted on its data dir."""
    import streams

    with streams.EmbeddedServer(store_dir=data / "nats", http_port=None) as srv:
        nc = await streams.connect(srv.url)
        try:
            store = await streams.ModelStore(nc).open()
            w_name, m_name = streams.object_names(name, version)
            weights = await store.fetch(w_name, size=size, sha256=sha256)
            meta = (await store.obs.get(m_name)).data
            return weights, bytes(meta)
        finally:
            await nc.close()


# ------------------------------------------------------------------------------------- phase 2


def _missing(module: str, attr: str) -> str | None:
    """None if ``module.attr`` imports, else why not."""
    try:
        getattr(__import__(module, fromlist=[attr]), attr)
    except (ImportError, AttributeError) as e:
        return f"{module}.{attr} not available ({type(e).__name__}: {e})"
    return None


def arm_status(trained: Trained) -> dict[str, str | None]:
    """Per arm: None if it can run, else the reason it is unavailable."""
    portfolio = _missing("agents._portfolio", "Portfolio")
    tpe = _missing("agents._tpe", "TPEProposer")
    model: str | None
    if trained.model_weights is None:
        model = trained.model_reason or "no model published"
    else:
        model = _missing("distill", "load_published")
    if model is None and trained.model_weights is not None:
        try:
            _load_model(trained.model_weights, trained.model_meta or b"{}", trained.model_version or 0)
        except Exception as e:
            model = f"model v{trained.model_version} does not load: {type(e).__name__}: {e}"
    return {
        "hive": portfolio or tpe or (f"no model: {model}" if model else None),
        "hive_network": portfolio or tpe or (f"no model: {model}" if model else None),
        "generation0": portfolio or tpe,
        "tpe": tpe,
        "tpe_warm": tpe or (None if trained.best_recipes else "no trained recipes to warm-start from"),
        "random": None,
    }


def _load_model(weights: bytes, meta: bytes, version: int) -> Proposer:
    from distill import load_published

    return load_published(weights, meta, version)


_WORKER_MODEL: dict[str, Proposer] = {}


def _proposer_fn(
    arm: str, job: Mapping[str, Any]
) -> Callable[[History, random.Random], tuple[BaseModel, str]]:
    """The study's ``propose`` for an arm (fresh state per study: nothing leaks between runs)."""
    if arm == "random":
        prior = PriorProposer()
        return lambda h, r: (prior.propose(h, r), prior.name)
    from agents._tpe import TPEProposer

    if arm in ("tpe", "tpe_warm"):
        tpe = TPEProposer(warm_start=job["warm_start"] if arm == "tpe_warm" else ())
        return lambda h, r: (tpe.propose(h, r), tpe.name)
    from agents._portfolio import ArmStats, Portfolio

    arms: list[Proposer] = [MutationProposer(), PriorProposer(), TPEProposer()]
    if arm in ("hive", "hive_network"):
        key = f"{job['family']}/{job['model_version']}/{arm}"
        if key not in _WORKER_MODEL:
            proposer = _load_model(job["model_weights"], job["model_meta"], job["model_version"])
            network = getattr(proposer, "model", None)  # a history model: drop its elite memory
            if arm == "hive_network" and isinstance(getattr(network, "elites", None), dict):
                network.elites = {}  # type: ignore[union-attr]
            _WORKER_MODEL[key] = proposer
        arms.append(_WORKER_MODEL[key])
    record = ArmStats(counts={job["family"]: {k: list(v) for k, v in job["arm_stats"].items()}})
    portfolio = Portfolio(
        arms, rng=random.Random(f"portfolio|{job['ref']}|{job['seed']}"), family_stats=record
    )
    return lambda h, r: portfolio.choose(h)[:2]


def _one_study(job: dict[str, Any]) -> dict[str, Any]:
    """One (arm, instance, seed) study in a worker process; its trial-by-trial values."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    task = load_task(job["ref"])
    knows_truth = task.optimum() is not None
    start = time.perf_counter()
    result: StudyResult = run_study(
        task,
        _proposer_fn(job["arm"], job),
        trials=job["budget"],
        seed=job["seed"],
        stop_at_regret=TARGET if knows_truth else None,
    )
    values = result.true_objectives if knows_truth else result.objectives
    return {
        "arm": job["arm"],
        "instance": job["ref"],
        "seed": job["seed"],
        "values": values,
        "baselines": result.baselines,
        "proposers": result.proposers,
        "seconds": time.perf_counter() - start,
    }


def _regret_curve(values: Sequence[float | None], optimum: float, base: float, budget: int) -> list[float]:
    """Best-so-far normalised regret per trial 1..budget (a study stopped at the target holds its last)."""
    gap = base - optimum
    best = math.inf
    curve: list[float] = []
    for v in values:
        if v is not None and math.isfinite(v):
            best = min(best, v)
        curve.append(
            (best - optimum) / gap
            if gap > 1e-12 and math.isfinite(best)
            else (0.0 if best <= optimum else 1.0)
        )
    while len(curve) < budget:
        curve.append(curve[-1] if curve else 1.0)
    return [min(c, 10.0) for c in curve[:budget]]


def evaluate(family: str, trained: Trained, cfg: BenchConfig, pool: ProcessPoolExecutor) -> dict[str, Any]:
    """Phase 2 for one family: every available arm on every held-out instance and seed."""
    status = arm_status(trained)
    refs = [load_task(f"{family}/{HELDOUT_START + i}").ref for i in range(cfg.heldout)]
    jobs = [
        {
            "arm": arm, "ref": ref, "seed": seed, "family": family, "budget": cfg.budget,
            "warm_start": trained.best_recipes[:WARM_START_RECIPES],
            "model_weights": trained.model_weights, "model_meta": trained.model_meta,
            "model_version": trained.model_version,
            "arm_stats": trained.arm_stats,
        }
        for arm in ARMS if status[arm] is None
        for ref in refs
        for seed in range(cfg.seeds)
    ]  # fmt: skip
    runs = list(pool.map(_one_study, jobs))
    # the scale of each instance: the known optimum/baseline, else the best observed by any arm
    scale: dict[str, tuple[float, float, str]] = {}
    for ref in refs:
        task = load_task(ref)
        optimum, base = task.optimum(), task.true_objective(task.baseline())
        if optimum is not None and base is not None:
            scale[ref] = (optimum, base, "true")
        else:
            mine = [r for r in runs if r["instance"] == ref]
            seen = [v for r in mine for v in r["values"] if v is not None]
            bases = [b for r in mine for b in r["baselines"]]
            best = min(seen, default=0.0)
            scale[ref] = (best, statistics.fmean(bases) if bases else best + 1.0, "observed")
    arms_out: dict[str, Any] = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        if status[arm] is not None:
            arms_out[arm] = {"available": False, "reason": status[arm]}
            continue
        per_run, curves = [], []
        for r in mine:
            optimum, base, _ = scale[r["instance"]]
            curve = _regret_curve(r["values"], optimum, base, cfg.budget)
            hit = next((i + 1 for i, c in enumerate(curve) if c <= TARGET), None)
            per_run.append(
                {
                    "instance": r["instance"],
                    "seed": r["seed"],
                    "trials": hit,
                    "final_regret": round(curve[-1], 5),
                    "proposers": {p: r["proposers"].count(p) for p in sorted(set(r["proposers"]))},
                    "seconds": round(r["seconds"], 3),
                }
            )
            curves.append(curve)
        counted = [p["trials"] if p["trials"] is not None else cfg.budget + 1 for p in per_run]
        arms_out[arm] = {
            "available": True,
            "reason": None,
            "median_trials": statistics.median(counted) if counted else None,
            "solved": sum(p["trials"] is not None for p in per_run),
            "runs": len(per_run),
            "per_run": per_run,
            "curve": [round(statistics.median(col), 5) for col in zip(*curves, strict=True)]
            if curves
            else [],
        }
    return {
        "train": {
            "instances": trained.instances,
            "mode": trained.mode,
            "seconds": round(trained.seconds, 1),
            "experiments": trained.experiments,
            "best_recipes": len(trained.best_recipes),
            "model_version": trained.model_version,
            "model_reason": trained.model_reason or None,
            "proposer_record": trained.arm_stats,
        },
        "heldout": refs,
        "regret": "true" if all(s[2] == "true" for s in scale.values()) else "observed",
        "arms": arms_out,
    }


# ------------------------------------------------------------------------------------- outputs


def plot(report: Mapping[str, Any], path: Path) -> None:
    """A PNG: per family, the median best-so-far normalised regret of each available arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(report["families"])
    fig, axes = plt.subplots(
        1, max(1, len(families)), figsize=(5.5 * max(1, len(families)), 4), squeeze=False
    )
    for ax, family in zip(axes[0], families, strict=False):
        for arm, data in report["families"][family]["arms"].items():
            if data["available"] and data["curve"]:
                xs = range(1, len(data["curve"]) + 1)
                ax.plot(xs, [max(c, 1e-4) for c in data["curve"]], label=f"{arm} ({data['median_trials']:g})")
        ax.axhline(TARGET, color="grey", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_title(f"{family}: median best-so-far regret")
        ax.set_xlabel("trial")
        ax.set_ylabel("normalised regret (true loss)")
        ax.legend(fontsize=8, title="arm (median trials)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """The human table: family, arm, median trials to target, solved, note."""
    rows = []
    for family, data in report["families"].items():
        for arm in ARMS:
            a = data["arms"][arm]
            if a["available"]:
                rows.append([family, arm, f"{a['median_trials']:g}", f"{a['solved']}/{a['runs']}", ""])
            else:
                rows.append([family, arm, "-", "-", f"unavailable: {a['reason']}"])
    return rows


def print_table(report: Mapping[str, Any]) -> None:
    """The human table on stderr (rich)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"trials to normalised regret <= {TARGET} (unsolved = budget + 1)")
    for col in ("family", "arm", "median trials", "solved", "note"):
        table.add_column(col, justify="right" if col in ("median trials", "solved") else "left")
    for row in table_rows(report):
        table.add_row(*row)
    Console(stderr=True, width=120).print(table)


def _keep_model(family: str, trained: Trained, out: Path) -> str | None:
    """Write the evaluated model into ``out`` (``<family>-model-v<N>.safetensors`` and its
    ``.meta.json``), for ``hive model sample``-style looks at it afterwards; its file name, or None."""
    if trained.model_weights is None:
        return None
    name = f"{family}-model-v{trained.model_version}"
    (out / f"{name}.safetensors").write_bytes(trained.model_weights)
    (out / f"{name}.meta.json").write_bytes(trained.model_meta or b"{}")
    return f"{name}.safetensors"


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Both phases for every family; writes ``learning.json`` and ``learning.png`` into ``cfg.out``."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "target_regret": TARGET,
        "arms": list(ARMS),
        "families": {},
    }
    root = Path(tempfile.mkdtemp(prefix="hive-bench-learning-"))
    try:
        with ProcessPoolExecutor(max_workers=max(1, cfg.jobs)) as pool:
            for family in cfg.families:
                t0 = time.monotonic()
                trained = train(family, cfg, root)
                log.info("trained", family=family, mode=trained.mode, model=trained.model_version,
                         reason=trained.model_reason, experiments=trained.experiments)  # fmt: skip
                report["families"][family] = evaluate(family, trained, cfg, pool)
                report["families"][family]["train"]["model_file"] = _keep_model(family, trained, cfg.out)
                report["families"][family]["seconds"] = round(time.monotonic() - t0, 1)
                for name in ("hive.log",):
                    src = root / f"{family}-hive.log"
                    if src.exists():
                        shutil.copy(src, cfg.out / f"{family}-{name}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    (cfg.out / "learning.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    plot(report, cfg.out / "learning.png")
    return report
