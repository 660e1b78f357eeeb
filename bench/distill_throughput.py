"""Throughput of one distillation generation: train the policy on synthetic examples, then propose.

Self-contained: examples come from a toy pydantic space rendered with ``render_prompt`` /
``render_action``, so no log or database is needed. Prints one human line and one JSON line::

    python bench/distill_throughput.py --examples 4096 --steps 100 --batch-size 64 --device auto

Reports training examples/s and tokens/s (real tokens, first step excluded as warm-up), MFU on CUDA
(``flops_per_token * tokens/s / peak``; ``--peak-flops`` overrides the peak, by default the dense bf16
peak of a known GPU: H100/H200 989e12), then the latency of :func:`distill.propose` on CPU (one
thread, as an agent runs it) and the first-try valid-action rate of the trained policy, as agents
decode (bounds masked) and without bound masking (what the model itself has learned).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from distill import (
    Policy,
    PolicyConfig,
    peak_flops,
    propose,
    render_action,
    render_prompt,
    train,
    valid_action_rate,
)


class BenchSpace(BaseModel):
    """A toy training-recipe space with every kind of knob the grammar supports."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    lr: float = Field(3e-3, ge=1e-5, le=1.0, json_schema_extra={"log": True})
    weight_decay: float = Field(0.1, ge=0.0, le=0.5)
    warmup: int = Field(100, ge=0, le=5000)
    width: int = Field(256, ge=32, le=2048)
    depth: int = Field(4, ge=1, le=24)
    optimizer: Literal["adamw", "sgd", "lion", "muon"] = "adamw"
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    nesterov: bool = False


GUIDANCE = ["lower lr", "avoid optimizer=sgd with lr > 0.1", "deeper helps", "try muon", "warmup >= 200"]


def _recipe(r: random.Random) -> dict[str, Any]:
    return {
        "lr": min(1.0, max(1e-5, 10 ** r.gauss(-2.7, 0.6))),
        "weight_decay": r.choice([0.0, 0.01, 0.05, 0.1, 0.2]),
        "warmup": r.choice([0, 50, 100, 200, 500, 1000]),
        "width": r.choice([64, 128, 256, 512, 1024]),
        "depth": r.randint(2, 12),
        "optimizer": r.choice(["adamw", "sgd", "lion", "muon"]),
        "schedule": r.choice(["cosine", "linear", "constant"]),
        "nesterov": r.random() < 0.5,
    }


def synthesize(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (prompt, completion) pairs: a parent recipe and guidance, a child recipe."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        parent = _recipe(r) if r.random() < 0.9 else None
        objective = math.exp(r.gauss(0, 1)) if parent else None
        guidance = r.sample(GUIDANCE, r.randint(0, 2))
        prompt = render_prompt(f"charlm/{r.randint(0, 999)}", parent, objective, guidance)
        out.append((prompt, render_action(_recipe(r), BenchSpace)))
    return out


def main() -> None:
    """Parse arguments, run the benchmark, print a human line and a JSON line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=4096, help="synthetic training examples")
    ap.add_argument("--steps", type=int, default=100, help="optimizer steps")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    ap.add_argument(
        "--peak-flops", type=float, default=None, help="peak FLOP/s for MFU (default: by GPU name)"
    )
    ap.add_argument("--n-layer", type=int, default=PolicyConfig.n_layer)
    ap.add_argument("--n-head", type=int, default=PolicyConfig.n_head)
    ap.add_argument("--n-embd", type=int, default=PolicyConfig.n_embd)
    ap.add_argument("--block-size", type=int, default=PolicyConfig.block_size)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=None, help="CPU intra-op threads for training")
    ap.add_argument("--proposals", type=int, default=50, help="proposals to time on CPU (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true", help="show a progress bar")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = None if args.device == "auto" else args.device
    config = PolicyConfig(
        n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size
    )
    examples = synthesize(args.examples, seed=args.seed)
    torch.manual_seed(args.seed)
    model = Policy(config)
    report = train(
        model,
        examples,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=device,
        compile=args.compile,
        progress=args.progress,
    )
    dev = torch.device(report.device)
    peak = args.peak_flops or peak_flops(dev) or (989e12 if dev.type == "cuda" else None)
    mfu = report.flops_per_token * report.tokens_per_s / peak if peak and dev.type == "cuda" else None

    # proposals as an agent makes them: on CPU, one intra-op thread
    model = model.to("cpu").eval()
    prompts = [p for p, _ in synthesize(max(args.proposals, 1), seed=args.seed + 1)]
    latencies: list[float] = []
    gen = torch.Generator().manual_seed(args.seed)
    for prompt in prompts[: args.proposals]:
        t0 = time.perf_counter()
        propose(model, prompt, BenchSpace, generator=gen)
        latencies.append(time.perf_counter() - t0)
    rate = raw_rate = None
    if args.proposals:
        rate = valid_action_rate(model, prompts[:10], BenchSpace, 20, generator=gen)
        raw_rate = valid_action_rate(model, prompts[:10], BenchSpace, 20, generator=gen, mask_bounds=False)

    result = {
        "device": report.device,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": report.dtype,
        "compiled": report.compiled,
        "params": report.params,
        "config": json.loads(config.to_json()),
        "examples": report.examples,
        "steps": report.steps,
        "batch_size": args.batch_size,
        "examples_per_s": round(report.examples_per_s, 1),
        "tokens_per_s": round(report.tokens_per_s),
        "flops_per_token": report.flops_per_token,
        "peak_flops": peak,
        "mfu": mfu,
        "first_loss": round(report.first_loss, 4),
        "final_loss": round(report.final_loss, 4),
        "train_wall_s": round(report.wall_s, 2),
        "cpu_threads": torch.get_num_threads(),
        "proposal_ms_mean": round(1000 * statistics.fmean(latencies), 2) if latencies else None,
        "proposal_ms_p50": round(1000 * statistics.median(latencies), 2) if latencies else None,
        "proposal_ms_max": round(1000 * max(latencies), 2) if latencies else None,
        "valid_action_rate": rate,
        "valid_action_rate_unmasked": raw_rate,
    }
    mfu_text = f", MFU {100 * mfu:.2f}%" if mfu is not None else ""
    proposal_text = (
        f"; propose {result['proposal_ms_p50']} ms p50 on CPU, first-try valid {rate:.3f}"
        f" ({raw_rate:.3f} without bound masking)"
        if latencies
        else ""
    )
    loss_text = f"loss {report.first_loss:.3f} -> {report.final_loss:.3f}"
    print(
        f"distill on {result['device_name']} ({report.dtype}): {report.examples_per_s:,.0f} examples/s, "
        f"{report.tokens_per_s:,.0f} tokens/s{mfu_text}, {loss_text}{proposal_text}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
