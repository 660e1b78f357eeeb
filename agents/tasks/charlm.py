"""``charlm``: really train a tiny byte-level transformer language model and report ``val_bpb``.

The corpus (``agents/tasks/data/corpus.txt``, standard-library docstrings) is split 90/10 into
train and validation bytes. A run trains on ``budget`` tokens (bytes) of random windows of the
train split, then measures bits per byte on the first :data:`EVAL_BYTES` of the validation split
in non-overlapping windows of ``block_size``.

Instances: ``charlm`` (= ``charlm/0``) trains the recipe's architecture as given. Another index
``charlm/<i>`` is a variant drawn from ``"charlm/<i>"``: a width multiplier (0.5x to 2x on
``n_embd``, rounded to a multiple of ``n_head``, capped at :data:`MAX_WIDTH`), a depth offset
(-1, 0 or +1 on ``n_layer``) and a context multiplier (0.5x to 2x on ``block_size``), so the
best learning rate, warm-up and batch size move between instances the way they move with scale
(the muP-like shift of the best lr with width). Determinism: ``torch.manual_seed(seed)`` plus a
seeded generator for batches, on :data:`THREADS` CPU threads (results are bit-identical
for a fixed thread count; other counts differ in the last digits).
"""

from __future__ import annotations

import functools
import math
import os
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from agents._task import Task, TaskFailed

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch
    from torch import nn
    from torch.nn import functional as F

EVAL_BYTES = 16_384
"""Validation bytes scored by every run (the same bytes whatever the recipe)."""
EXPLODED_LOSS = 2 * math.log(256)
"""A training loss above this (twice a uniform guess) counts as divergence."""
THREADS = max(1, int(os.environ.get("HIVE_TASK_THREADS", "1")))
"""Torch threads per run (env ``HIVE_TASK_THREADS``, default 1): a swarm runs many tasks side by side,
and more threads than free cores slows a run down by an order of magnitude."""
MAX_WIDTH = 192
"""Largest residual width an instance variant scales a recipe to (keeps runs to seconds)."""
WIDTH_MULTIPLIERS = (0.5, 0.75, 1.0, 1.5, 2.0)
CONTEXT_MULTIPLIERS = (0.5, 1.0, 2.0)
LOSS_WINDOW = 5
SPLIT_CHUNK = 2048


class CharLMRecipe(BaseModel):
    """Training knobs of the tiny byte-level transformer (the defaults are the baseline)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lr: float = Field(default=1e-3, ge=1e-4, le=3e-1, json_schema_extra={"log": True}, description="peak lr")
    warmup_frac: float = Field(default=0.1, ge=0.0, le=0.5, description="linear warm-up, fraction of steps")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        default="cosine", description="decay after warm-up"
    )
    n_layer: int = Field(default=2, ge=1, le=4, description="transformer blocks")
    n_embd: int = Field(default=64, ge=32, le=128, description="residual width")
    n_head: int = Field(default=4, ge=1, le=8, description="attention heads (head size n_embd // n_head)")
    batch_size: int = Field(
        default=16, ge=4, le=64, json_schema_extra={"log": True}, description="windows/step"
    )
    block_size: int = Field(default=64, ge=16, le=256, json_schema_extra={"log": True}, description="context")
    weight_decay: float = Field(default=0.1, ge=0.0, le=0.3, description="decoupled weight decay (matrices)")
    dropout: float = Field(default=0.0, ge=0.0, le=0.3)
    activation: Literal["gelu", "relu", "silu"] = "gelu"
    optimizer: Literal["adamw", "sgd"] = Field(default="adamw", description="sgd uses Nesterov momentum 0.9")
    grad_clip: float = Field(
        default=1.0, ge=0.0, le=5.0, description="max gradient norm; 0 disables clipping"
    )
    tie_weights: bool = Field(default=True, description="share the input embedding and the output head")


class _Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then an MLP."""

    def __init__(self, recipe: CharLMRecipe) -> None:
        super().__init__()
        self.n_head = recipe.n_head
        self.head_dim = max(1, recipe.n_embd // recipe.n_head)
        inner = self.n_head * self.head_dim
        self.dropout = recipe.dropout
        self.ln1 = nn.LayerNorm(recipe.n_embd)
        self.qkv = nn.Linear(recipe.n_embd, 3 * inner)
        self.proj = nn.Linear(inner, recipe.n_embd)
        self.ln2 = nn.LayerNorm(recipe.n_embd)
        activation = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}[recipe.activation]
        self.mlp = nn.Sequential(
            nn.Linear(recipe.n_embd, 4 * recipe.n_embd),
            activation(),
            nn.Linear(4 * recipe.n_embd, recipe.n_embd),
            nn.Dropout(recipe.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        x = x + F.dropout(self.proj(y.transpose(1, 2).reshape(b, t, -1)), dropout, self.training)
        return x + self.mlp(self.ln2(x))


class _ByteLM(nn.Module):
    """Token + position embeddings, ``n_layer`` blocks, a final norm and a 256-way head."""

    def __init__(self, recipe: CharLMRecipe) -> None:
        super().__init__()
        self.tok = nn.Embedding(256, recipe.n_embd)
        self.pos = nn.Embedding(recipe.block_size, recipe.n_embd)
        self.drop = nn.Dropout(recipe.dropout)
        self.blocks = nn.Sequential(*(_Block(recipe) for _ in range(recipe.n_layer)))
        self.ln_f = nn.LayerNorm(recipe.n_embd)
        self.head = nn.Linear(recipe.n_embd, 256, bias=False)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        if recipe.tie_weights:
            self.head.weight = self.tok.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.tok(idx) + self.pos(positions))
        return self.head(self.ln_f(self.blocks(x)))


@functools.cache
def corpus() -> bytes:
    """The shipped training corpus, as bytes."""
    return (resources.files("agents.tasks.data") / "corpus.txt").read_bytes()


@functools.cache
def _splits() -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation): every tenth :data:`SPLIT_CHUNK`-byte chunk of the corpus is validation."""
    data = torch.tensor(list(corpus()), dtype=torch.long)
    chunks = data.split(SPLIT_CHUNK)
    train = [c for i, c in enumerate(chunks) if i % 10 != 9]
    val = [c for i, c in enumerate(chunks) if i % 10 == 9]
    return torch.cat(train), torch.cat(val)


@contextmanager
def _threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _lr_factor(step: int, steps: int, recipe: CharLMRecipe) -> float:
    warmup = int(recipe.warmup_frac * steps)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, steps - warmup)
    if recipe.schedule == "cosine":
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    if recipe.schedule == "linear":
        return 1.0 - 0.9 * progress
    return 1.0


def _optimizer(model: nn.Module, recipe: CharLMRecipe) -> torch.optim.Optimizer:
    params = list({id(p): p for p in model.parameters()}.values())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.95))


class CharLM(Task):
    """Byte-level language modelling on the shipped corpus; minimise validation bits per byte.

    ``budget`` is the number of training tokens (bytes); steps = budget // (batch_size * block_size),
    at least one. Metrics: ``val_bpb`` (headline), ``val_loss`` (nats), ``train_loss_first`` and
    ``train_loss_last`` (means over the first/last few steps), ``steps``, ``tokens``, ``params``.
    """

    name: ClassVar[str] = "charlm"
    space: ClassVar[type[BaseModel]] = CharLMRecipe
    metric: ClassVar[str] = "val_bpb"
    direction: ClassVar[Literal["min", "max"]] = "min"
    default_budget: ClassVar[float] = 65_536.0
    deadline_s: ClassVar[float] = 120.0

    def __init__(self, instance: str = "0") -> None:
        try:
            index = int(instance or "0")
        except ValueError:
            raise ValueError(f"charlm instances are non-negative integers, not {instance!r}") from None
        if index < 0:
            raise ValueError(f"charlm instances are non-negative integers, not {instance!r}")
        super().__init__(str(index))
        self.index = index
        if index == 0:
            self.width_mult, self.depth_offset, self.context_mult = 1.0, 0, 1.0
        else:
            rng = random.Random(f"charlm/{index}")
            self.width_mult = rng.choice(WIDTH_MULTIPLIERS)
            self.depth_offset = rng.choice((-1, 0, 1))
            self.context_mult = rng.choice(CONTEXT_MULTIPLIERS)

    @property
    def ref(self) -> str:
        """``charlm`` for the default instance (as before instances existed), ``charlm/<i>`` otherwise."""
        return self.name if self.index == 0 else f"{self.name}/{self.index}"

    def architecture(self, recipe: BaseModel) -> CharLMRecipe:
        """The recipe as this instance trains it: width, depth and context scaled by the variant."""
        r = self.validate_recipe(recipe)
        assert isinstance(r, CharLMRecipe)
        if self.index == 0:
            return r
        width = max(r.n_head, min(MAX_WIDTH, round(r.n_embd * self.width_mult / r.n_head) * r.n_head))
        return r.model_copy(
            update={
                "n_embd": width,
                "n_layer": max(1, r.n_layer + self.depth_offset),
                "block_size": max(8, min(256, round(r.block_size * self.context_mult))),
            }
        )

    def run(self, recipe: BaseModel, seed: int, budget: float) -> dict[str, float]:
        """Train from scratch on ``budget`` tokens and score the validation split."""
        r = self.architecture(recipe)
        with _threads(THREADS), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return self._train(r, int(seed), float(budget))
            except RuntimeError as exc:
                raise TaskFailed(f"runtime error: {exc}") from exc

    def _train(self, r: CharLMRecipe, seed: int, budget: float) -> dict[str, float]:
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        train, val = _splits()
        model = _ByteLM(r)
        optimizer = _optimizer(model, r)
        tokens_per_step = r.batch_size * r.block_size
        steps = max(1, int(budget) // tokens_per_step)
        offsets = torch.arange(r.block_size + 1)
        losses: list[float] = []
        model.train()
        for step in range(steps):
            starts = torch.randint(0, len(train) - r.block_size - 1, (r.batch_size, 1), generator=generator)
            window = train[starts + offsets]
            logits = model(window[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, 256), window[:, 1:].reshape(-1))
            value = loss.item()
            if not math.isfinite(value) or value > EXPLODED_LOSS:
                raise TaskFailed(f"diverged: training loss {value:.4g} at step {step + 1}/{steps}")
            losses.append(value)
            for group in optimizer.param_groups:
                group["lr"] = r.lr * _lr_factor(step, steps, r)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if r.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
            optimizer.step()
        val_loss = self._evaluate(model, val, r.block_size)
        if not math.isfinite(val_loss):
            raise TaskFailed(f"diverged: validation loss {val_loss}")
        window_n = min(LOSS_WINDOW, max(1, steps // 4))
        return {
            "val_bpb": val_loss / math.log(2),
            "val_loss": val_loss,
            "train_loss_first": sum(losses[:window_n]) / window_n,
            "train_loss_last": sum(losses[-window_n:]) / window_n,
            "steps": float(steps),
            "tokens": float(steps * tokens_per_step),
            "params": float(sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())),
        }

    @staticmethod
    @torch.no_grad()
    def _evaluate(model: nn.Module, val: torch.Tensor, block_size: int) -> float:
        """Mean next-byte loss (nats) over the first EVAL_BYTES predictions of ``val``."""
        model.eval()
        rows = EVAL_BYTES // block_size
        full = rows * block_size
        pairs = [
            (
                val[i * block_size : j * block_size].view(-1, block_size),
                val[i * block_size + 1 : j * block_size + 1].view(-1, block_size),
            )
            for i, j in ((i, min(rows, i + 64)) for i in range(0, rows, 64))
        ]
        if full < EVAL_BYTES:
            pairs.append((val[full:EVAL_BYTES].unsqueeze(0), val[full + 1 : EVAL_BYTES + 1].unsqueeze(0)))
        total = sum(
            F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1), reduction="sum").item()
            for x, y in pairs
        )
        return total / EVAL_BYTES
