"""The hf backend's examples as tokens, its training loop and held-out evaluation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import structlog
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.nn import functional as F

from distill._train import (
    TrainingStopped,
    TrainReport,
    batch_order,
    cosine_lr,
    measured_report,
    pick_device,
)

from ._base import (
    PROMPT_SUFFIX,
    HFPolicy,
)

log = structlog.get_logger(__name__)

# ---------------------------------------------------------------------------- examples as tokens


def prompt_ids(policy: HFPolicy, prompt: str, budget: int) -> list[int]:
    """Token ids of ``prompt + PROMPT_SUFFIX`` in at most ``budget`` tokens (the prompt cut at its end)."""
    tok = policy.tokenizer
    head = tok(prompt, add_special_tokens=True)["input_ids"]
    tail = tok(PROMPT_SUFFIX, add_special_tokens=False)["input_ids"]
    return [*head[: max(0, budget - len(tail))], *tail]


def completion_ids(policy: HFPolicy, completion: str) -> list[int]:
    """Token ids of an action text, as the decoder can write them: each token's bytes in turn.

    The tokenizer's own tokens when their bytes spell the text exactly; otherwise (a sentencepiece
    tokenizer puts a space before the first token, which the action grammar never allows) the
    longest matching token at each position.
    """
    data = completion.encode("utf-8")
    table = policy.token_bytes
    ids = policy.tokenizer(completion, add_special_tokens=False)["input_ids"]
    if all(i < len(table) for i in ids) and b"".join(table[i] or b"\0" for i in ids) == data:
        return list(ids)
    out: list[int] = []
    j = 0
    while j < len(data):  # greedy: the longest token that matches the text from position j
        for k in range(min(len(data) - j, policy.longest_token), 0, -1):
            if data[j : j + k] in policy.token_ids:
                out.append(policy.token_ids[data[j : j + k]])
                j += k
                break
        else:
            raise ValueError(f"the tokenizer cannot write byte {data[j : j + 1]!r} of {completion!r}")
    return out


def _encode(
    policy: HFPolicy, examples: Sequence[tuple[str, str]]
) -> tuple[list[list[int]], list[int], list[int], int]:
    """Token ids of each example, where its completion starts, its completion bytes (+1 for the end),
    and the number skipped (completion too long for the context)."""
    tok = policy.tokenizer
    seqs: list[list[int]] = []
    starts: list[int] = []
    nbytes: list[int] = []
    skipped = 0
    for prompt, completion in examples:
        body = completion_ids(policy, completion)
        budget = policy.context - len(body) - 1
        if budget < 2:
            skipped += 1
            continue
        head = prompt_ids(policy, prompt, budget)
        seqs.append([*head, *body, tok.eos_token_id])
        starts.append(len(head))
        nbytes.append(len(completion.encode("utf-8")) + 1)  # the byte policy counts its EOS as a byte
    return seqs, starts, nbytes, skipped


def _batch(
    seqs: list[list[int]], starts: list[int], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, attention mask, targets and completion mask, right-padded to the longest sequence."""
    n, width = len(seqs), max(len(s) for s in seqs) - 1
    x = torch.full((n, width), pad, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    y = torch.zeros((n, width), dtype=torch.long)
    m = torch.zeros((n, width), dtype=torch.bool)
    for i, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
        t = torch.tensor(seq, dtype=torch.long)
        x[i, : len(seq) - 1] = t[:-1]
        attn[i, : len(seq) - 1] = 1
        y[i, : len(seq) - 1] = t[1:]
        m[i, start - 1 : len(seq) - 1] = True  # the first completion token is predicted at the prompt's end
    return x.to(device), attn.to(device), y.to(device), m.to(device)


def _token_nll(policy: HFPolicy, x: torch.Tensor, attn: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-position negative log-likelihood of the targets ``y`` ``(B, T)``, in float32."""
    logits = policy.model(input_ids=x, attention_mask=attn).logits
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view_as(y)


def _autocast(device: torch.device) -> Any:
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


# ---------------------------------------------------------------------------- training


def train(
    policy: HFPolicy,
    examples: Sequence[tuple[str, str]],
    *,
    steps: int | None = None,
    epochs: float | None = None,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    warmup: int = 10,
    min_lr_ratio: float = 0.1,
    grad_clip: float = 1.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    log_every: int = 50,
    should_stop: Callable[[], bool] | None = None,
) -> TrainReport:
    """Fit the LoRA adapter of ``policy`` to ``examples`` (completion-only loss; the base stays frozen).

    As the byte policy's :func:`distill.train`: ``steps`` or ``epochs`` (default one epoch), linear
    warm-up then cosine decay to ``min_lr_ratio * lr``, AdamW, gradients clipped to ``grad_clip``,
    seeded. CUDA (bf16 autocast) when available, else CPU float32; the model stays on that device.
    ``should_stop`` is checked before every step (:class:`distill._train.TrainingStopped` when true).
    ``progress`` shows a progress bar.
    """
    # ---- data: tokenize once; batches are padded to their own longest sequence
    dev = torch.device(device) if device is not None else pick_device()
    cuda = dev.type == "cuda"
    seqs, starts, _, skipped = _encode(policy, examples)
    if not seqs:
        raise ValueError(f"no usable examples ({skipped} skipped: completion longer than the context)")
    n = len(seqs)
    bs = min(batch_size, n)
    if steps is None:
        steps = max(1, math.ceil((1.0 if epochs is None else epochs) * n / bs))
    pad = policy.tokenizer.pad_token_id
    pad = policy.tokenizer.eos_token_id if pad is None else pad

    # ---- model and optimizer: only the adapter's parameters train
    torch.manual_seed(seed)
    shuffle = torch.Generator().manual_seed(seed)
    model = policy.model.to(dev)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay, fused=cuda)

    def lr_at(step: int) -> float:
        return cosine_lr(step, lr=lr, warmup=warmup, steps=steps, min_lr_ratio=min_lr_ratio)

    batches = batch_order(n, bs, shuffle)  # fresh permutations, wrapping across epochs

    log.info(
        "hf_train.start", examples=n, skipped=skipped, steps=steps, batch_size=bs, device=str(dev), lr=lr
    )
    losses: list[torch.Tensor] = []
    tokens_seen = examples_seen = tokens_timed = examples_timed = 0
    t_start = t_timed = time.perf_counter()
    columns = (
        TextColumn("[bold]distill (hf)"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("train", total=steps, loss="-")
        for step in range(steps):
            if should_stop is not None and should_stop():  # as distill.train: give up between steps
                raise TrainingStopped(f"stopped at step {step} of {steps}")
            batch = next(batches)
            x, attn, y, m = _batch([seqs[i] for i in batch], [starts[i] for i in batch], pad, dev)

            # forward / backward / step: mean loss over the completion tokens of the batch
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            with _autocast(dev):
                nll = _token_nll(policy, x, attn, y)
            loss = (nll * m).sum() / m.sum().clamp_min(1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()

            # bookkeeping (the first step is warm-up, left out of the throughput)
            losses.append(loss.detach())
            real = int(attn.sum())
            tokens_seen += real
            examples_seen += len(batch)
            if step == 0 and steps > 1:
                if cuda:
                    torch.cuda.synchronize(dev)
                t_timed = time.perf_counter()
            else:
                tokens_timed += real
                examples_timed += len(batch)
            if (step + 1) % log_every == 0 or step + 1 == steps:
                bar.update(task, advance=0, loss=f"{losses[-1].item():.4f}")
                log.debug("hf_train.step", step=step + 1, loss=round(losses[-1].item(), 5), lr=lr_at(step))
            bar.advance(task)
    if cuda:
        torch.cuda.synchronize(dev)
    model.eval()
    t_end = time.perf_counter()

    # ---- report (FLOPs per token: forward 2N, backward through the frozen base 2N, adapter grads)
    total, trainable = policy.num_params(), policy.num_params(trainable=True)
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
        dtype="bfloat16" if cuda else "float32",
        compiled=False,
        flops_per_token=4.0 * total + 2.0 * trainable,
        params=total,
    )
    log.info(
        "hf_train.done",
        steps=steps,
        final_loss=round(report.final_loss, 5),
        trainable=trainable,
        wall_s=round(report.wall_s, 2),
    )
    return report


@torch.no_grad()
def evaluate(
    policy: HFPolicy, examples: Sequence[tuple[str, str]], *, batch_size: int = 16
) -> dict[str, float]:
    """Held-out completion loss in the byte policy's unit, on the model's device.

    ``loss``: summed token NLL of the completion tokens and EOS over the completion bytes plus one
    per example (the byte policy's EOS) -- nats per completion byte, comparable across backends and
    tokenizers; also ``bits_per_byte``, ``tokens``, ``bytes``, ``examples``, ``skipped``.
    """
    dev = policy.device
    seqs, starts, nbytes, skipped = _encode(policy, examples)
    pad = policy.tokenizer.pad_token_id
    pad = policy.tokenizer.eos_token_id if pad is None else pad
    was_training = policy.model.training
    policy.model.eval()
    total, tokens = 0.0, 0
    try:
        for i in range(0, len(seqs), batch_size):
            x, attn, y, m = _batch(seqs[i : i + batch_size], starts[i : i + batch_size], pad, dev)
            with _autocast(dev):
                nll = _token_nll(policy, x, attn, y)
            total += float((nll * m).sum())
            tokens += int(m.sum())
    finally:
        policy.model.train(was_training)
    count = sum(nbytes)
    loss = total / count if count else float("nan")
    return {
        "loss": loss,
        "bits_per_byte": loss / math.log(2),
        "tokens": float(tokens),
        "bytes": float(count),
        "examples": float(len(seqs)),
        "skipped": float(skipped),
    }
