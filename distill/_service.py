"""The distiller: select → train → gate → publish, one generation at a time.

**The ``history`` backend (default)**: a generation starts after ``every_traces`` new finished
experiments (or ``every_seconds``):

1. **select** every instance's trajectory (``experiments`` in log order, through the query
   service) and build hindsight examples (``distill._history``), counting the traces it skips and
   why (logged, and on the model events' ``eval`` as ``skipped_<reason>``);
2. **train** two :class:`~distill.model.HistoryModel` candidates, from fresh weights and
   continuing the champion, and keep the one with the lower held-out NLL; each carries the
   training instances' best recipes as its elite memory (``distill._history.elite_recipes``);
3. **gate on research value** (``distill._gate``): simulated short studies on held-out instances;
   promote only if the candidate beats mutation and the champion (figures on the event's ``eval``);
4. **publish** as below, with ``meta.json`` ``{"backend": "history", "config": ...}``.

**The ``byte`` and ``hf`` backends** (text policies): a generation starts after ``every_traces``
new successful traces (or ``every_seconds``):

1. **select** the pooled successful traces from the read side (the query service);
2. **train** two candidates — one from the base (fresh weights: ReST-EM) and one continuing the
   champion — and keep whichever has the lower held-out loss (the numbers decide, per
   generation; the choice is logged and stored in the model's ``meta.json``);
3. **gate**: promote only if the candidate beats the champion on the held-out instances
   (lower completion loss, and a first-try valid-action rate at least the champion's, and at
   least 99% for a first model);
4. **publish**: safetensors weights + ``meta.json`` to the Object Store, a signed pointer
   (compare-and-swap) in KV, and ``ModelPublished`` on the log — or ``ModelRejected`` with
   the figures. Both become rows of the ``models`` table.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import structlog
import torch

import streams
from agents._heartbeat import heartbeat_file, touch_heartbeat

from . import _hf
from ._byte_model import Policy, PolicyConfig
from ._data import GUIDANCE_SQL, SELECT_SQL, Dataset, build_dataset
from ._decode import valid_action_rate
from ._gate import GateConfig, GateResult, arm_auc, gate_tasks, loss_gate, research_gate
from ._history import MAX_ROWS_PER_INSTANCE, TRAJECTORY_SQL, HistoryDataset, build_history_dataset
from ._proposers import TextPolicyProposer
from ._train import TrainingStopped, evaluate, evaluate_history, pick_device, train, train_history
from .model import BACKEND, MAX_ELITES, HistoryConfig, HistoryModel, HistoryProposer, is_history_model

log = structlog.get_logger("distill")
AGENT_ID = "distiller"
CPU_MODEL: dict[str, Any] = {"n_layer": 2, "n_embd": 64, "n_head": 4, "block_size": 320}
"""The model a CPU distiller trains from the base unless told otherwise: small enough that a
generation takes tens of seconds on two cores. On CUDA the default :class:`PolicyConfig` is used."""
CUDA_STEPS = 600
"""Training steps per candidate on CUDA unless told otherwise."""
CPU_STEPS = 300
"""Training steps per candidate on CPU unless told otherwise."""
HISTORY_CUDA_STEPS = 2000
"""The history backend's training steps per candidate on CUDA unless told otherwise."""
HISTORY_CPU_STEPS = 1000
"""The history backend's training steps per candidate on CPU unless told otherwise: the small
default model takes ~25 s for them on two idle cores; at 300 it had not yet learned where a
family's good recipes lie (measured offline on lmrecipe, 48 instances: median trials to target
of the portfolio with the model 26.5 at 1000 steps against 40.5 at 300)."""
CUDA_BATCH_SIZE = 128
"""Training batch size on CUDA unless told otherwise."""
CPU_BATCH_SIZE = 16
"""Training batch size on CPU unless told otherwise."""
HISTORY_CUDA_BATCH_SIZE = 256
"""The history backend's training batch size on CUDA unless told otherwise."""
HISTORY_CPU_BATCH_SIZE = 64
"""The history backend's training batch size on CPU unless told otherwise."""
HEARTBEAT_EVERY_S = 5.0
"""How often the distiller touches its heartbeat file (``$HIVE_HEARTBEAT_FILE``) while its event
loop runs, a generation in progress included."""


def resolve(
    cfg_steps: int | None, cfg_batch: int | None, model: dict[str, Any], device: torch.device
) -> tuple[int, int, dict[str, Any]]:
    """Steps, batch size and model config for ``device`` (explicit settings win)."""
    cuda = device.type == "cuda"
    steps = cfg_steps if cfg_steps is not None else (CUDA_STEPS if cuda else CPU_STEPS)
    batch = cfg_batch if cfg_batch is not None else (CUDA_BATCH_SIZE if cuda else CPU_BATCH_SIZE)
    return steps, batch, model or ({} if cuda else dict(CPU_MODEL))


@dataclass
class DistillConfig:
    """Settings of the distillation service (``hive distill`` options)."""

    nats_url: str
    key_path: str
    name: str = "policy"
    every_traces: int = 200
    every_seconds: float | None = None
    once: bool = False
    min_examples: int = 16
    steps: int | None = None
    """Training steps per candidate; None: :data:`CUDA_STEPS` on CUDA, :data:`CPU_STEPS` on CPU
    (the history backend: :data:`HISTORY_CUDA_STEPS`, :data:`HISTORY_CPU_STEPS`)."""
    batch_size: int | None = None
    lr: float = 3e-3
    seed: int = 0
    device: str | None = None
    compile: bool = False
    progress: bool = False
    valid_samples: int = 4
    cap_per_context: int = 8
    heldout_fraction: float = 0.25
    model: dict[str, Any] = field(default_factory=dict)
    """PolicyConfig overrides for a model trained from the base."""
    modes: tuple[str, ...] = ("base", "continue")
    """Candidates to train: from the base weights (ReST-EM) and/or continuing the champion."""
    connect_options: dict[str, Any] = field(default_factory=dict)
    backend: str = BACKEND
    """``history``: the history-conditioned model; ``byte``: the byte-level policy; ``hf``: a LoRA
    adapter on the local causal LM ``hf_model``."""
    hf_model: str | None = None
    """The hf backend's base model directory (also what an hf champion is scored with)."""
    lora: _hf.LoraSettings = field(default_factory=_hf.LoraSettings)
    """The adapter an hf candidate from the base gets (rank, alpha, dropout, target modules)."""
    hf_lr: float = 1e-3
    """Peak learning rate of the LoRA adapter (``lr`` is the byte policy's)."""
    gate: GateConfig = field(default_factory=GateConfig)
    """The history backend's research-value gate: held-out instances, seeds, trials per study."""
    top_q: float = 0.05
    """Hindsight targets: each instance's top ``top_q`` trials (history backend). 5% rather than
    10%: the tighter targets taught the model where the optimum lies, not just the good region
    (offline, lmrecipe: model alone 13.5 median trials to target against 39.5 at 10%)."""
    elites: int = MAX_ELITES
    """Elite recipes per family a history model carries (its training instances' best; 0: none,
    the network alone)."""


Model = Policy | _hf.HFPolicy | HistoryModel
"""A champion or candidate of any backend."""


def _space_for(task: str) -> Any:
    from agents import load_task  # agents' task registry: the search spaces

    return load_task(task).space


@dataclass
class Scores:
    """Held-out figures of one model.

    ``valid_action_rate``: first-try valid samples with decoding constrained to the whole action
    schema, bounds included (what agents get); ``learned_valid_rate``: the same with the bounds
    left to the model (what it has learned itself; logged, not gated).
    """

    loss: float
    valid_action_rate: float
    learned_valid_rate: float = float("nan")

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """For the ``eval`` field of model events (finite values only)."""
        out = {
            f"{prefix}heldout_loss": self.loss,
            f"{prefix}valid_action_rate": self.valid_action_rate,
            f"{prefix}learned_valid_rate": self.learned_valid_rate,
        }
        return {k: v for k, v in out.items() if math.isfinite(v)}


def score(model: Model, ds: Dataset, *, valid_samples: int, seed: int) -> Scores:
    """Held-out completion loss (nats per completion byte, either backend) and first-try valid-action
    rate (per task space)."""
    hf = isinstance(model, _hf.HFPolicy)
    loss_fn: Any = _hf.evaluate if hf else evaluate
    rate_fn: Any = _hf.valid_action_rate if hf else valid_action_rate
    loss = loss_fn(model, ds.heldout)["loss"] if ds.heldout else math.inf
    by_space: dict[Any, list[str]] = defaultdict(list)
    for prompt, _ in ds.heldout or ds.train[:32]:
        by_space[ds.spaces[prompt]].append(prompt)
    rates, learned, weights = [], [], []
    gen = torch.Generator().manual_seed(seed)
    for space, prompts in by_space.items():
        unique = sorted(set(prompts))[:32]
        rates.append(rate_fn(model, unique, space, valid_samples, generator=gen))
        learned.append(rate_fn(model, unique, space, valid_samples, generator=gen, mask_bounds=False))
        weights.append(len(unique))
    total = max(1, sum(weights))
    rate = sum(r * w for r, w in zip(rates, weights, strict=True)) / total
    learned_rate = sum(r * w for r, w in zip(learned, weights, strict=True)) / total
    log.info("valid_action_rate", constrained=rate, learned=learned_rate, prompts=sum(weights))
    return Scores(loss, rate, learned_rate)


def event_eval(candidate: Scores, champion: Scores | None) -> dict[str, float]:
    """The ``eval`` field of ModelPublished/ModelRejected: the candidate's figures and the champion's."""
    return {**candidate.as_metrics(), **(champion.as_metrics("champion_") if champion else {})}


def gate(candidate: Scores, champion: Scores | None) -> tuple[bool, str]:
    """Promote or not, and why (see the module docstring)."""
    if not math.isfinite(candidate.loss):
        return False, "no held-out examples to judge on"
    if champion is None:
        if candidate.valid_action_rate < 0.99:
            return False, f"valid-action rate {candidate.valid_action_rate:.3f} < 0.99"
        return True, "first model"
    if candidate.loss >= champion.loss:
        return False, f"held-out loss {candidate.loss:.4f} >= champion {champion.loss:.4f}"
    cand_rate, champ_rate = candidate.valid_action_rate, champion.valid_action_rate
    if cand_rate < min(0.99, champ_rate):
        return False, f"valid-action rate {cand_rate:.3f} < champion's {champ_rate:.3f}"
    return True, f"held-out loss {candidate.loss:.4f} < champion {champion.loss:.4f}"


class Distiller:
    """Runs generations against a live hive until stopped (or once)."""

    def __init__(self, cfg: DistillConfig) -> None:
        if cfg.backend not in (BACKEND, "byte", "hf"):
            raise ValueError(f"unknown backend {cfg.backend!r} ({BACKEND}, byte, hf)")
        if cfg.backend == BACKEND:  # a bad --model fails now, not at the first generation
            try:
                HistoryConfig(**cfg.model)
            except TypeError as e:
                raise ValueError(f"--model: {e}") from None
        if cfg.backend == "hf":  # fail now, not at the first generation
            _hf.require_extra()
            if not cfg.hf_model:
                raise _hf.BaseModelError("the hf backend needs its base model directory (--hf-model)")
            _hf.base_fingerprint(cfg.hf_model)
        self.cfg = cfg
        self.key = streams.load_private_key(cfg.key_path)
        self.public_key = self.key.public_key()
        self._stop = asyncio.Event()
        self.champion: Model | None = None
        self.champion_version = 0
        self.last_through = 0
        self.generations: list[dict[str, Any]] = []
        self.nc: Any = None
        self.heartbeat_file = heartbeat_file()

    def stop(self) -> None:
        """Finish the generation in hand and return."""
        self._stop.set()

    def connected(self) -> bool:
        """Whether it is connected to NATS (before that a stop may cancel :meth:`run` outright)."""
        return self.nc is not None and bool(self.nc.is_connected)

    async def _heartbeats(self) -> None:
        """Touch the heartbeat file every :data:`HEARTBEAT_EVERY_S` while the event loop runs."""
        while True:
            touch_heartbeat(self.heartbeat_file)
            await asyncio.sleep(HEARTBEAT_EVERY_S)

    async def run(self) -> list[dict[str, Any]]:
        """Connect, load the current champion, and run generations when enough traces arrive."""
        nc = await streams.connect(self.cfg.nats_url, name="hive-distiller", **self.cfg.connect_options)
        self.nc = nc
        beats = asyncio.create_task(self._heartbeats()) if self.heartbeat_file else None
        try:
            js = nc.jetstream()
            await streams.ensure_stream(js)
            self.store = await streams.ModelStore(nc).open(create=True)
            self.publisher = streams.Publisher(js)
            await self._load_champion()
            t_last = time.monotonic()
            streak = 0  # generations in a row that published nothing
            while not self._stop.is_set():
                new = await self._new_successes()
                # After a rejected or skipped generation, wait for twice as many new traces (up to
                # 16x): a hive whose data cannot yet make a better model (one instance, no task the
                # gate can simulate) is not retrained every few seconds.
                needed = self.cfg.every_traces * 2 ** min(streak, 4)
                due_time = (
                    self.cfg.every_seconds is not None and time.monotonic() - t_last >= self.cfg.every_seconds
                )
                if self.cfg.once or new >= needed or (due_time and new > 0):
                    report = await self.generation()
                    streak = 0 if report.get("decision") == "published" else streak + 1
                    if streak:
                        wait_for = self.cfg.every_traces * 2 ** min(streak, 4)
                        log.info("distill_backoff", next_after_traces=wait_for)
                    t_last = time.monotonic()
                    if self.cfg.once:
                        break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 2.0)
        finally:
            if beats is not None:
                beats.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beats
            await nc.close()
        return self.generations

    async def _rows(self, sql: str, params: list[Any] | None = None) -> list[list[Any]]:
        res = await streams.remote_query(self.nc, sql, params=params, timeout_s=60, max_rows=500_000)
        return res.rows

    async def _new_successes(self) -> int:
        """New traces since the last generation: every finished experiment (history backend: every
        trial is part of a trajectory), or successful experiments and deployments (text backends)."""
        if self.cfg.backend == BACKEND:
            sql = "SELECT count(*) FROM experiments WHERE seq > ?"
            params = [self.last_through]
        else:
            sql = (
                "SELECT (SELECT count(*) FROM experiments WHERE success AND seq > ?) + "
                "(SELECT count(*) FROM deployments WHERE success AND seq > ?)"
            )
            params = [self.last_through, self.last_through]
        try:
            rows = await self._rows(sql, params)
        except streams.QueryError as e:
            log.warning("distill_waiting_for_query_service", error=str(e))
            return 0
        return int(rows[0][0])

    async def _load_champion(self) -> None:
        # the champion is the current model by the log, not a replayed old pointer in the KV
        signed = await self.store.current(self.cfg.name, self.public_key)
        if signed is None:
            return
        pointer = signed.check(self.public_key)
        data = await self.store.fetch(
            pointer.weights, size=pointer.weights_size, sha256=pointer.weights_sha256
        )
        self.champion = self._model_from_bytes(data, pointer.version)
        self.champion_version = pointer.version
        self.last_through = pointer.trained_through_seq
        log.info("champion_loaded", version=pointer.version, trained_through_seq=pointer.trained_through_seq)

    def _model_from_bytes(self, data: bytes, version: int) -> Model:
        """A stored model of any backend (an hf adapter is loaded on ``hf_model``, its base)."""
        if is_history_model(data):
            return HistoryModel.from_bytes(data)
        if not _hf.is_adapter(data):
            return Policy.from_bytes(data)
        if not self.cfg.hf_model:
            raise _hf.BaseModelError(
                f"the champion (v{version}) is an hf adapter: give its base model (--hf-model) "
                "so candidates can be judged against it"
            )
        return _hf.HFPolicy.from_bytes(self.cfg.hf_model, data)

    async def generation(self) -> dict[str, Any]:
        """One select → train → gate → publish cycle; returns its report."""
        status = orjson.loads((await self.nc.request(streams.STATUS_SUBJECT, b"{}", timeout=5)).data)
        through = int(status["applied_seq"])
        if self.cfg.backend == BACKEND:
            return await self._history_generation(through)
        from agents import NOISE_SIGMAS  # the agents' success margin: the standard an incumbent sets

        rows = await self._rows(SELECT_SQL, [through, NOISE_SIGMAS])
        hints = await self._rows(GUIDANCE_SQL)
        ds = build_dataset(
            rows,
            hints,
            space_for=_space_for,
            through_seq=through,
            cap_per_context=self.cfg.cap_per_context,
            heldout_fraction=self.cfg.heldout_fraction,
        )
        self.last_through = through
        report: dict[str, Any] = {
            "through_seq": through,
            "examples": ds.size,
            "train": len(ds.train),
            "heldout": len(ds.heldout),
            "holdout": ds.holdout,
        }
        if len(ds.train) < self.cfg.min_examples:
            log.info("distill_skipped", reason="too few examples", **report)
            report["decision"] = "skipped"
            self.generations.append(report)
            return report
        try:
            result = await asyncio.to_thread(self._train_and_gate, ds)
        except TrainingStopped as e:  # asked to stop mid-generation: nothing half-trained is judged
            log.info("distill_interrupted", reason=str(e), **report)
            report["decision"] = "interrupted"
            self.generations.append(report)
            return report
        report.update(result["report"])
        if result["promote"]:
            await self._publish(result["model"], ds, result["scores"], result["mode"], report)
        else:
            await self._reject(ds, result["scores"], report)
        self.generations.append(report)
        return report

    def _train_and_gate(self, ds: Dataset) -> dict[str, Any]:
        """CPU/GPU work, off the event loop: two candidates, the better one vs the champion."""
        device = torch.device(self.cfg.device) if self.cfg.device else pick_device()
        steps, batch_size, model_cfg = resolve(self.cfg.steps, self.cfg.batch_size, self.cfg.model, device)
        candidates: list[tuple[str, Model, Any]] = []
        hf = self.cfg.backend == "hf"
        # continuing needs a champion of this backend (an hf one is on this base: it loaded on it)
        can_continue = self.champion is not None and isinstance(self.champion, _hf.HFPolicy) == hf
        modes = [m for m in self.cfg.modes if m == "base" or (m == "continue" and can_continue)]
        if isinstance(self.champion, _hf.HFPolicy):
            self.champion.to(device)  # scored where the candidates are
        for mode in modes:
            torch.manual_seed(self.cfg.seed + len(self.generations))
            if hf:
                candidates.append((mode, *self._train_hf(mode, ds, device, steps, batch_size)))
                continue
            if mode == "base":
                net = Policy(PolicyConfig(**model_cfg))
            else:
                assert self.champion is not None
                net = Policy.from_bytes(self.champion.to_bytes())
            rep = train(
                net,
                ds.train,
                steps=steps,
                batch_size=batch_size,
                lr=self.cfg.lr,
                seed=self.cfg.seed,
                device=device,
                compile=self.cfg.compile,
                progress=self.cfg.progress,
                should_stop=self._stop.is_set,
            )
            candidates.append((mode, net.to("cpu").eval(), rep))
        scored = [
            (mode, m, rep, score(m, ds, valid_samples=self.cfg.valid_samples, seed=self.cfg.seed))
            for mode, m, rep in candidates
        ]
        scored.sort(key=lambda t: (t[3].loss, -t[3].valid_action_rate))
        mode, model, rep, cand = scored[0]
        champ = (
            score(self.champion, ds, valid_samples=self.cfg.valid_samples, seed=self.cfg.seed)
            if self.champion is not None
            else None
        )
        promote, reason = gate(cand, champ)
        log.info(
            "distill_candidate",
            mode=mode,
            loss=cand.loss,
            valid_action_rate=cand.valid_action_rate,
            champion_loss=champ.loss if champ else None,
            promote=promote,
            reason=reason,
            alternatives={m: s.loss for m, _, _, s in scored},
        )
        report = {
            "mode": mode,
            "reason": reason,
            "candidate": asdict(cand),
            "champion": asdict(champ) if champ else None,
            "alternatives": {m: asdict(s) for m, _, _, s in scored},
            "train": rep.model_dump() if hasattr(rep, "model_dump") else dict(rep),
        }
        return {"promote": promote, "model": model, "scores": (cand, champ), "mode": mode, "report": report}

    # ------------------------------------------------------------------ the history backend

    async def _history_generation(self, through: int) -> dict[str, Any]:
        """Trajectories → hindsight examples → two candidates → research-value gate → publish/reject."""
        from agents import load_task  # the task registry: spaces, and the studies the gate simulates

        rows = await self._rows(TRAJECTORY_SQL, [through, MAX_ROWS_PER_INSTANCE])
        model_cfg = HistoryConfig(**self.cfg.model)
        ds = await asyncio.to_thread(
            build_history_dataset,
            rows,
            model_cfg,
            load=load_task,
            through_seq=through,
            top_q=self.cfg.top_q,
            elites=self.cfg.elites,
            heldout_fraction=self.cfg.heldout_fraction,
            seed=self.cfg.seed + len(self.generations),
        )
        self.last_through = through
        report: dict[str, Any] = {
            "through_seq": through,
            "backend": BACKEND,
            "traces": ds.pooled,
            "instances": len(ds.trajectories),
            "examples": ds.size,
            "train": len(ds.train),
            "heldout": len(ds.heldout),
            "heldout_tasks": ds.heldout_tasks,
            "skipped": dict(ds.skipped),
        }
        if ds.skipped:
            log.warning("distill_traces_skipped", total=sum(ds.skipped.values()), **dict(ds.skipped))
        if len(ds.train) < self.cfg.min_examples:
            log.info("distill_skipped", reason="too few examples", **report)
            report["decision"] = "skipped"
            self.generations.append(report)
            return report
        try:
            model, mode, result, train_report = await asyncio.to_thread(self._train_and_gate_history, ds)
        except TrainingStopped as e:
            log.info("distill_interrupted", reason=str(e), **report)
            report["decision"] = "interrupted"
            self.generations.append(report)
            return report
        eval_ = {**result.metrics, **ds.skip_metrics()}
        elites = {family: len(recipes) for family, recipes in ds.elites.items()}
        report.update(mode=mode, reason=result.reason, eval=eval_, train_report=train_report, elites=elites)
        if result.promote:
            fields = {
                "backend": BACKEND,
                "config": orjson.loads(model.cfg.to_json()),
                "train_examples": len(ds.train),
                "heldout_examples": len(ds.heldout),
                "heldout_tasks": ds.heldout_tasks,
                "train_tasks": len(ds.train_tasks),
                "elites": elites,
                "skipped": dict(ds.skipped),
                "eval": eval_,
                "gate": result.reason,
                "train": train_report,
            }
            await self._publish_model(model, fields, through, ds.size, eval_, mode, report)
        else:
            await self._reject_candidate(through, ds.size, eval_, report)
        self.generations.append(report)
        return report

    def _train_and_gate_history(
        self, ds: HistoryDataset
    ) -> tuple[HistoryModel, str, GateResult, dict[str, Any]]:
        """CPU/GPU work, off the event loop: train the candidates, keep the better one on held-out
        NLL, then judge it on research value against mutation and the champion."""
        from agents import load_task

        device = torch.device(self.cfg.device) if self.cfg.device else pick_device()
        cuda = device.type == "cuda"
        steps = (
            self.cfg.steps
            if self.cfg.steps is not None
            else (HISTORY_CUDA_STEPS if cuda else HISTORY_CPU_STEPS)
        )
        batch_size = (
            self.cfg.batch_size
            if self.cfg.batch_size is not None
            else (HISTORY_CUDA_BATCH_SIZE if cuda else HISTORY_CPU_BATCH_SIZE)
        )
        model_cfg = HistoryConfig(**self.cfg.model)
        champion = self.champion if isinstance(self.champion, HistoryModel) else None
        candidates: list[tuple[float, str, HistoryModel, dict[str, Any]]] = []
        for mode in self.cfg.modes:
            if mode == "continue" and (champion is None or champion.cfg != model_cfg):
                continue
            torch.manual_seed(self.cfg.seed + len(self.generations))
            net = HistoryModel(model_cfg) if mode == "base" else HistoryModel.from_bytes(champion.to_bytes())  # type: ignore[union-attr]
            net.elites = ds.elites  # the recall memory: the training instances' best recipes
            rep = train_history(
                net,
                ds.train,
                steps=steps,
                batch_size=batch_size,
                lr=self.cfg.lr,
                seed=self.cfg.seed,
                device=device,
                should_stop=self._stop.is_set,
            )
            nll = evaluate_history(net, ds.heldout)
            candidates.append(
                (nll if math.isfinite(nll) else math.inf, mode, net.to("cpu").eval(), rep.model_dump())
            )
        tasks = gate_tasks(ds.heldout_tasks, list(ds.trajectories), self.cfg.gate.instances, load_task)
        if tasks and len(candidates) > 1:
            # choose on research value too: the held-out NLL of a small model overfits easily
            gate = self.cfg.gate
            ranked = sorted(
                ((statistics.fmean(arm_auc(tasks, HistoryProposer(c[2]), gate)), c) for c in candidates),
                key=lambda t: t[0],
            )
            candidates = [c for _, c in ranked]
            alternatives = {c[1]: auc for auc, c in ranked}
        else:
            candidates.sort(key=lambda c: c[0])
            alternatives = {c[1]: c[0] for c in candidates}
        nll, mode, model, train_report = candidates[0]
        log.info("distill_candidate", mode=mode, heldout_nll=nll, alternatives=alternatives)
        if tasks:
            rival: Any = None
            if isinstance(self.champion, HistoryModel):
                rival = HistoryProposer(self.champion, self.champion_version)
            elif isinstance(self.champion, (Policy, _hf.HFPolicy)):
                rival = TextPolicyProposer(self.champion, self.champion_version)
            result = research_gate(HistoryProposer(model), rival, tasks, self.cfg.gate)
        else:
            champ_nll = evaluate_history(champion, ds.heldout) if champion is not None else None
            result = loss_gate(nll, champ_nll)
        if math.isfinite(nll):
            result.metrics["heldout_nll"] = nll
        for alt, value in alternatives.items():  # what chose among the candidates (AUC, or NLL)
            if math.isfinite(value):
                result.metrics[f"choice_{alt}"] = value
        log.info("distill_gate", promote=result.promote, reason=result.reason)
        return model, mode, result, train_report

    def _train_hf(
        self, mode: str, ds: Dataset, device: torch.device, steps: int, batch_size: int
    ) -> tuple[_hf.HFPolicy, Any]:
        """An hf candidate: a fresh adapter on the base model, or the champion's trained further."""
        assert self.cfg.hf_model is not None
        if mode == "base":
            seed = self.cfg.seed + len(self.generations)
            model = _hf.HFPolicy.create(self.cfg.hf_model, self.cfg.lora, seed=seed)
        else:
            assert self.champion is not None
            model = _hf.HFPolicy.from_bytes(self.cfg.hf_model, self.champion.to_bytes())
        rep = _hf.train(
            model,
            ds.train,
            steps=steps,
            batch_size=batch_size,
            lr=self.cfg.hf_lr,
            seed=self.cfg.seed,
            device=device,
            progress=self.cfg.progress,
            should_stop=self._stop.is_set,
        )
        return model, rep

    async def _publish(
        self, model: Model, ds: Dataset, scores: Any, mode: str, report: dict[str, Any]
    ) -> None:
        """Publish a text-backend candidate (byte or hf) with its held-out figures."""
        cand, champ = scores
        assert isinstance(model, (Policy, _hf.HFPolicy))
        fields = {
            **(
                model.meta()  # backend "hf": its base model's name and fingerprint, the LoRA config
                if isinstance(model, _hf.HFPolicy)
                else {"backend": "byte", "config": orjson.loads(model.config.to_json())}
            ),
            "train_examples": len(ds.train),
            "heldout_examples": len(ds.heldout),
            "heldout_tasks": ds.heldout_tasks,
            "holdout": ds.holdout,
            "eval": cand.as_metrics(),
            "champion_eval": champ.as_metrics() if champ else None,
            "train": report.get("train"),
        }
        await self._publish_model(
            model, fields, ds.through_seq, ds.size, event_eval(cand, champ), mode, report
        )

    async def _publish_model(
        self,
        model: Model,
        fields: dict[str, Any],
        through_seq: int,
        dataset_size: int,
        eval_: dict[str, float],
        mode: str,
        report: dict[str, Any],
    ) -> None:
        """Weights + ``meta.json`` (``fields`` added) to the Object Store, the signed pointer, and
        ``ModelPublished`` with ``eval_``; the model becomes the champion."""
        version = await self._next_version()
        current = await self.store.read_pointer(self.cfg.name)
        # above every serial ever written (not just the KV's value, which may be a replayed one)
        serial = await self.store.next_serial(self.cfg.name, self.public_key)
        meta = orjson.dumps(
            {
                "name": self.cfg.name,
                "version": version,
                "parent": self.champion_version,
                "mode": mode,
                "trained_through_seq": through_seq,
                "dataset_size": dataset_size,
                **fields,
            },
            option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY,
        )
        weights = model.to_bytes()
        files = await self.store.put_version(self.cfg.name, version, weights, meta)
        pointer = streams.ModelPointer(
            name=self.cfg.name,
            serial=serial,
            version=version,
            parent_version=self.champion_version,
            trained_through_seq=through_seq,
            dataset_size=dataset_size,
            eval=eval_,
            **files,
        )
        await self.store.write_pointer(pointer, self.key, current[1] if current else None)
        signature = streams.sign(self.key, pointer.signed_bytes())
        await self.publisher.publish(
            streams.ModelPublished(
                event_id=f"{AGENT_ID}/{self.cfg.name}/{version}",
                agent_id=AGENT_ID,
                agent_type="distiller",
                name=self.cfg.name,
                version=version,
                parent_version=self.champion_version,
                sha256=files["weights_sha256"],
                size=files["weights_size"],
                trained_through_seq=through_seq,
                dataset_size=dataset_size,
                eval=eval_,
                signature=signature,
            )
        )
        self.champion, self.champion_version = model, version
        report.update(decision="published", version=version)
        log.info("model_published", version=version, mode=mode, dataset_size=dataset_size, **eval_)

    async def _next_version(self) -> int:
        """The number a new candidate gets: one past the champion and every stored version."""
        return max([self.champion_version, *(await self.store.versions(self.cfg.name))]) + 1

    async def _reject(self, ds: Dataset, scores: Any, report: dict[str, Any]) -> None:
        cand, champ = scores
        await self._reject_candidate(ds.through_seq, ds.size, event_eval(cand, champ), report)

    async def _reject_candidate(
        self, through_seq: int, dataset_size: int, eval_: dict[str, float], report: dict[str, Any]
    ) -> None:
        """``ModelRejected`` with the gate's figures and reason; the champion stays."""
        candidate = await self._next_version()
        await self.publisher.publish(
            streams.ModelRejected(
                event_id=f"{AGENT_ID}/{self.cfg.name}/candidate-{candidate}-{through_seq}",
                agent_id=AGENT_ID,
                agent_type="distiller",
                name=self.cfg.name,
                candidate=candidate,
                champion_version=self.champion_version,
                trained_through_seq=through_seq,
                dataset_size=dataset_size,
                eval=eval_,
                reason=report["reason"][:200],
            )
        )
        report.update(decision="rejected", candidate=candidate)
        log.info("model_rejected", candidate=candidate, reason=report["reason"])
