"""Training loop for the policy: flat, commented, nanoGPT style.

Examples are ``(prompt, completion)`` text pairs (from ``render_prompt`` / ``render_action``). Each
becomes ``BOS prompt SEP completion EOS``; the loss counts only the completion bytes and EOS. The
prompt is cut at its end when the pair would not fit ``block_size`` (same rule as the decoder);
an example whose completion alone does not fit is skipped and counted.

Device: CUDA when available (bf16 autocast, fused AdamW, optional ``torch.compile``), else CPU in
float32. Runs are seeded: on CPU the same seed gives bit-identical weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import structlog
import torch
from pydantic import BaseModel, ConfigDict
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor
from torch.nn import functional as F

from distill._byte_model import EOS, PAD, Policy
from distill._history import Example
from distill._prompt import encode_prompt
from distill.model import Batch, HistoryModel, collate

log = structlog.get_logger(__name__)

PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
}
"""Dense bf16 peak by GPU name fragment (first match wins), for MFU."""


class TrainingStopped(Exception):
    """Raised by :func:`train` when its ``should_stop`` callback asks it to give up."""


class TrainReport(BaseModel):
    """What one :func:`train` call did and how fast.

    Throughput counts only real (non-padding) tokens and, when there are at least two steps, leaves
    out the first step (allocator / autotuning / compilation warm-up). ``mfu`` is ``None`` unless on
    CUDA with a known peak.
    """

    model_config = ConfigDict(frozen=True)

    steps: int
    examples: int
    skipped: int
    examples_seen: int
    tokens_seen: int
    wall_s: float
    examples_per_s: float
    tokens_per_s: float
    first_loss: float
    final_loss: float
    losses: list[float]
    device: str
    dtype: str
    compiled: bool
    flops_per_token: float
    mfu: float | None
    params: int


def pick_device() -> torch.device:
    """CUDA when available, otherwise CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of ``device`` if it is a known GPU, else ``None``."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def _encode(examples: Sequence[tuple[str, str]], block_size: int) -> tuple[list[list[int]], list[int], int]:
    """Token ids of each example and where its completion starts; also the number skipped."""
    seqs: list[list[int]] = []
    starts: list[int] = []
    skipped = 0
    for prompt, completion in examples:
        body = completion.encode("utf-8")
        budget = block_size - 2 - len(body)  # BOS + SEP + completion + EOS, minus 1 (inputs drop the last)
        if budget < 0:
            skipped += 1
            continue
        head = encode_prompt(prompt, budget)
        seqs.append([*head, *body, EOS])
        starts.append(len(head))
    return seqs, starts, skipped


def _tensors(seqs: list[list[int]], starts: list[int], width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Inputs ``x``, targets ``y`` (``-1`` past the end) and completion mask, padded to ``width``."""
    n = len(seqs)
    x = torch.full((n, width), PAD, dtype=torch.long)
    y = torch.full((n, width), -1, dtype=torch.long)
    m = torch.zeros((n, width), dtype=torch.bool)
    for i, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
        t = torch.tensor(seq, dtype=torch.long)
        x[i, : len(seq) - 1] = t[:-1]
        y[i, : len(seq) - 1] = t[1:]
        m[i, start - 1 : len(seq) - 1] = True  # predicting completion byte 0 happens at SEP
    return x, y, m


def cosine_lr(step: int, *, lr: float, warmup: int, steps: int, min_lr_ratio: float) -> float:
    """Learning rate at ``step``: linear warm-up over ``warmup`` steps, then cosine decay to
    ``min_lr_ratio * lr`` at ``steps`` (both training loops use it)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    done = (step - warmup) / max(1, steps - warmup)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, done))))


def batch_order(n: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Example indices, ``batch_size`` at a time, forever: fresh permutations wrapping across epochs."""
    order: list[int] = []
    while True:
        while len(order) < batch_size:
            order += torch.randperm(n, generator=generator).tolist()
        batch, order = order[:batch_size], order[batch_size:]
        yield batch


def measured_report(
    losses: list[Tensor],
    *,
    timed_s: float,
    examples_timed: int,
    tokens_timed: int,
    device: torch.device,
    flops_per_token: float,
    **fields: Any,
) -> TrainReport:
    """A :class:`TrainReport` from a loop's counters (both training loops report through this).

    ``losses``: the per-step loss tensors (one host sync here); ``timed_s`` and the ``*_timed``
    counts cover the steps after the warm-up step, so throughput and MFU leave it out;
    ``final_loss`` is the mean of the last tenth of the steps (at most 10). ``fields``: the
    report's remaining fields as they are.
    """
    history = torch.stack(losses).float().cpu().tolist()
    tail = history[-max(1, min(10, len(history) // 10)) :]
    timed = max(timed_s, 1e-9)
    tokens_per_s = tokens_timed / timed
    peak = peak_flops(device)
    return TrainReport(
        examples_per_s=examples_timed / timed,
        tokens_per_s=tokens_per_s,
        first_loss=history[0],
        final_loss=sum(tail) / len(tail),
        losses=history,
        device=str(device),
        flops_per_token=flops_per_token,
        mfu=flops_per_token * tokens_per_s / peak if peak else None,
        **fields,
    )


def train(
    model: Policy,
    examples: Sequence[tuple[str, str]],
    *,
    steps: int | None = None,
    epochs: float | None = None,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 0.1,
    warmup: int = 20,
    min_lr_ratio: float = 0.1,
    grad_clip: float = 1.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    compile: bool = False,
    progress: bool = True,
    log_every: int = 50,
    should_stop: Callable[[], bool] | None = None,
) -> TrainReport:
    """Fit ``model`` to ``examples`` (completion-only loss); the model stays on the training device.

    Give ``steps`` or ``epochs`` (default: 1 epoch). Learning rate: linear warm-up over ``warmup``
    steps, cosine decay to ``min_lr_ratio * lr``. AdamW (betas 0.9/0.95) with ``weight_decay`` on
    matrices only; gradients clipped to norm ``grad_clip``. Seeds torch's global RNG with ``seed``
    (dropout) and shuffles with its own generator. ``should_stop`` is checked before every step;
    when it returns true, training raises :class:`TrainingStopped` (the model is then half-trained).
    """
    # ---- data: tokenize once, keep the whole (small) padded dataset on the device
    dev = torch.device(device) if device is not None else pick_device()
    cuda = dev.type == "cuda"
    seqs, starts, skipped = _encode(examples, model.config.block_size)
    if not seqs:
        raise ValueError(f"no usable examples ({skipped} skipped: completion longer than block_size)")
    n = len(seqs)
    lengths = [len(s) - 1 for s in seqs]  # input length of each example
    width = model.config.block_size if compile else max(lengths)
    X, Y, M = (t.to(dev) for t in _tensors(seqs, starts, width))
    bs = min(batch_size, n)
    if steps is None:
        steps = max(1, math.ceil((1.0 if epochs is None else epochs) * n / bs))

    # ---- model, optimizer, precision
    torch.manual_seed(seed)
    shuffle = torch.Generator().manual_seed(seed)
    model.to(dev)
    model.train()
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=cuda)
    dtype = torch.bfloat16 if cuda else torch.float32
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    forward = torch.compile(model) if compile else model
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def lr_at(step: int) -> float:
        return cosine_lr(step, lr=lr, warmup=warmup, steps=steps, min_lr_ratio=min_lr_ratio)

    batches = batch_order(n, bs, shuffle)

    log.info("train.start", examples=n, skipped=skipped, steps=steps, batch_size=bs, device=str(dev), lr=lr)
    losses: list[Tensor] = []
    tokens_seen = examples_seen = 0
    t_start = time.perf_counter()
    t_timed, tokens_timed, examples_timed = t_start, 0, 0
    columns = (
        TextColumn("[bold]distill"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("train", total=steps, loss="-")
        for step in range(steps):
            if should_stop is not None and should_stop():
                raise TrainingStopped(f"stopped at step {step} of {steps}")
            # pick a batch and trim its padding (unless compiled: fixed shapes avoid recompiles)
            batch = next(batches)
            T = width if compile else max(lengths[i] for i in batch)
            index = torch.tensor(batch, device=dev)
            x, y, m = X[index, :T], Y[index, :T], M[index, :T]

            # forward / backward / step
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            with autocast:
                _, loss = forward(x, y, m)
            assert loss is not None
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()

            # bookkeeping (no host sync except when logging)
            losses.append(loss.detach())
            real = sum(lengths[i] for i in batch)
            tokens_seen += real
            examples_seen += len(batch)
            if step == 0 and steps > 1:  # time from the end of the warm-up step
                if cuda:
                    torch.cuda.synchronize(dev)
                t_timed = time.perf_counter()
            else:
                tokens_timed += real
                examples_timed += len(batch)
            if (step + 1) % log_every == 0 or step + 1 == steps:
                value = losses[-1].item()
                bar.update(task, advance=0, loss=f"{value:.4f}")
                log.debug("train.step", step=step + 1, loss=round(value, 5), lr=lr_at(step))
            bar.advance(task)
    if cuda:
        torch.cuda.synchronize(dev)
    t_end = time.perf_counter()

    # ---- report
    report = measured_report(
        losses,
        steps=steps,
        examples=n,
        skipped=skipped,
        examples_seen=examples_seen,
        tokens_seen=tokens_seen,
        wall_s=t_end - t_start,
        timed_s=t_end - t_timed,
        examples_timed=examples_timed,
        tokens_timed=tokens_timed,
        device=dev,
        dtype=str(dtype).removeprefix("torch."),
        compiled=compile,
        flops_per_token=model.flops_per_token(round(sum(lengths) / n)),
        params=model.num_params(),
    )
    log.info(
        "train.done",
        steps=steps,
        final_loss=round(report.final_loss, 5),
        examples_per_s=round(report.examples_per_s, 1),
        tokens_per_s=round(report.tokens_per_s),
        mfu=report.mfu,
        wall_s=round(report.wall_s, 2),
    )
    return report


@torch.no_grad()
def evaluate(
    model: Policy,
    examples: Sequence[tuple[str, str]],
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Held-out completion loss: ``loss`` (mean nats per completion byte, EOS included), ``bits_per_byte``,
    ``tokens`` and ``examples`` counted, ``skipped``. Runs on ``device`` (default: the model's)."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    seqs, starts, skipped = _encode(examples, model.config.block_size)
    was_training = model.training
    model.to(dev).eval()
    total = 0.0
    count = 0
    try:
        for i in range(0, len(seqs), batch_size):
            chunk, chunk_starts = seqs[i : i + batch_size], starts[i : i + batch_size]
            width = max(len(s) for s in chunk) - 1
            x, y, m = (t.to(dev) for t in _tensors(chunk, chunk_starts, width))
            autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()
            with autocast:
                logits, _ = model(x)
            per_token = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), y.view(-1), ignore_index=-1, reduction="none"
            )
            weight = m.view(-1).float()
            total += float((per_token * weight).sum())
            count += int(weight.sum())
    finally:
        model.train(was_training)
    loss = total / count if count else float("nan")
    return {
        "loss": loss,
        "bits_per_byte": loss / math.log(2),
        "tokens": float(count),
        "examples": float(len(seqs)),
        "skipped": float(skipped),
    }


# ------------------------------------------------------------------------- the history model


class HistoryTrainReport(BaseModel):
    """What one :func:`train_history` call did: steps, examples, losses (NLL per example), speed."""

    model_config = ConfigDict(frozen=True)

    steps: int
    examples: int
    wall_s: float
    examples_per_s: float
    first_loss: float
    final_loss: float
    device: str
    dtype: str
    params: int


def train_history(
    model: HistoryModel,
    examples: Sequence[Example],
    *,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.05,
    warmup: int = 20,
    min_lr_ratio: float = 0.1,
    grad_clip: float = 1.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> HistoryTrainReport:
    """Fit ``model`` to hindsight ``examples`` (context, target recipe) by maximum likelihood.

    The same recipe as :func:`train`: AdamW (betas 0.9/0.95, fused on CUDA) with decay on matrices,
    linear warm-up then cosine decay, gradient clipping, bf16 autocast on CUDA, float32 on CPU; the
    whole (small) dataset lives on the device. ``should_stop`` is checked before every step
    (:class:`TrainingStopped`). The model is left on the device, in eval mode.
    """
    if not examples:
        raise ValueError("no examples to train on")
    # ---- data: collate once, keep it on the device, slice batches by index
    dev = torch.device(device) if device is not None else pick_device()
    cuda = dev.type == "cuda"
    cfg = model.cfg
    data = collate([c for c, _ in examples], cfg, [t for _, t in examples])
    data = Batch(*(t.to(dev) for t in data))
    n = len(examples)
    bs = min(batch_size, n)

    # ---- model, optimizer, precision
    torch.manual_seed(seed)
    shuffle = torch.Generator().manual_seed(seed)
    model.to(dev).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=cuda)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    batches = batch_order(n, bs, shuffle)
    log.info("train_history.start", examples=n, steps=steps, batch_size=bs, device=str(dev), lr=lr)

    losses: list[Tensor] = []
    t_start = time.perf_counter()
    for step in range(steps):
        if should_stop is not None and should_stop():
            raise TrainingStopped(f"stopped at step {step} of {steps}")
        # a batch of examples, all of them padded to the dataset's longest context
        index = torch.tensor(next(batches), device=dev)
        batch = Batch(*(t.index_select(0, index) for t in data))

        # forward / backward / step
        lr_now = cosine_lr(step, lr=lr, warmup=warmup, steps=steps, min_lr_ratio=min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        with autocast:
            loss = model.nll(model(batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        losses.append(loss.detach())  # no host sync per step
    if cuda:
        torch.cuda.synchronize(dev)
    wall = time.perf_counter() - t_start
    model.eval()

    # ---- report
    history = torch.stack(losses).float().cpu().tolist()
    tail = history[-max(1, min(10, len(history) // 10)) :]
    report = HistoryTrainReport(
        steps=steps,
        examples=n,
        wall_s=wall,
        examples_per_s=steps * bs / max(wall, 1e-9),
        first_loss=history[0],
        final_loss=sum(tail) / len(tail),
        device=str(dev),
        dtype="bfloat16" if cuda else "float32",
        params=model.num_params(),
    )
    log.info("train_history.done", steps=steps, final_loss=round(report.final_loss, 4), wall_s=round(wall, 2))
    return report


@torch.no_grad()
def evaluate_history(model: HistoryModel, examples: Sequence[Example], *, batch_size: int = 256) -> float:
    """Mean negative log-likelihood of the examples' targets (``nan`` with no examples), on CPU."""
    if not examples:
        return float("nan")
    model.to("cpu").eval()
    total = 0.0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        batch = collate([c for c, _ in chunk], model.cfg, [t for _, t in chunk])
        total += float(model.nll(model(batch), batch)) * len(chunk)
    return total / len(examples)
