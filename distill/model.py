"""The history-conditioned proposer: a small set transformer over an instance's trials, in one file.

What it does (OptFormer / Decision-Pretrained Transformer, in miniature): given what has been
tried on *this* task instance so far, it outputs a distribution over the next recipe, trained on
pooled trajectories to put its mass on recipes that turned out to be among an instance's best.

**Encoding** (numeric, over the task's knobs, :func:`agents._task.knobs`; one model serves every
family: a space is laid out on ``max_knobs`` slots, padded and masked):

* a knob value is a number ``u`` in [0, 1] (floats and ints scaled to their bounds, in log space
  for log knobs) or, for a categorical (``Literal`` or ``bool``), the index of its choice (an
  embedding per (slot, choice));
* each trial of the history is one token: its knob values plus its outcome, normalised per
  instance (:data:`N_OUTCOME` features: rank quantile among the instance's results as
  ``History.normalized()`` computes it, z against the instance's baseline replicates (squashed),
  whether that z exists, failed-run flag, recency ``log1p(age)``);
* the input is capped at the best ``n_best`` and the latest ``n_latest`` trials (their union);
* a learned *query* token carries the space (the kind of each slot) and the history's size.

No instance name is ever fed: a held-out instance of a known family looks like any other.

**Model**: pre-norm transformer blocks without positional encoding (the trials are a set; recency
is a feature), key-padding mask. The query token's output parameterises a mixture of
``n_components`` joint components; each has a Gaussian (mean, std) per numeric slot in [0, 1]
and a softmax per categorical slot. Sampling picks a component, samples each knob, clips to
[0, 1], maps back through the knobs and validates with the task's space (:meth:`HistoryModel.sample`).

**Persistence**: safetensors with ``{"format": FORMAT, "config": <HistoryConfig JSON>}`` in the
header. Loading bounds every dimension of the config and checks that the header declares exactly
the tensors of that config (names, shapes, float32, byte size) before allocating anything;
nothing is ever unpickled. :func:`load_proposer` is the ``hive.policies`` entry point.
"""

from __future__ import annotations

import json
import math
import random
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, NamedTuple

import torch
from pydantic import BaseModel
from safetensors.torch import load as _st_load
from torch import Tensor, nn
from torch.nn import functional as F

from agents._proposer import History, Proposer, ProposerUnavailable
from agents._task import Knob, knobs

from ._st_header import MAX_HEADER_BYTES, read_header

BACKEND = "history"
"""``meta.json``'s ``backend`` for this model (the ``hive.policies`` entry-point name)."""
FORMAT = "hive-history/1"
"""Value of ``__metadata__["format"]`` in a saved model; anything else is refused."""
N_OUTCOME = 5
"""Outcome features per trial token: rank quantile, squashed z, has-z, failed, recency."""
N_GLOBAL = 3
"""Features of the whole history on the query token: log size, has baselines, failed share."""
NUMBER, CATEGORICAL = 1, 2
"""Slot kinds (0 is an empty slot)."""
BOUNDS: Mapping[str, tuple[int, int]] = {
    "max_knobs": (1, 64),
    "max_choices": (2, 64),
    "n_best": (0, 512),
    "n_latest": (1, 512),
    "n_layer": (1, 16),
    "n_head": (1, 16),
    "n_embd": (8, 1024),
    "n_components": (1, 64),
}
"""Inclusive bounds of every integer dimension, checked before anything is allocated."""
MAX_PARAMS = 64_000_000
MAX_ELITE_FAMILIES = 64
"""Families an elite memory may hold (a forged header with more is refused)."""
MAX_ELITES = 64
"""Elite recipes per family (one per training instance, at most)."""
MAX_ELITE_KNOBS = 64
"""Keys per elite recipe."""
ELITE_TRIALS = 8
"""A model proposes from its family's elites until this many of them were tried on the instance."""


@dataclass(frozen=True)
class HistoryConfig:
    """Shape of a :class:`HistoryModel`; stored with the weights (plain data, bounded)."""

    max_knobs: int = 16  # knob slots: a task with more knobs cannot use this model
    max_choices: int = 8  # choices per categorical knob
    n_best: int = 16  # the input holds the best n_best trials ...
    n_latest: int = 16  # ... and the latest n_latest (their union)
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    n_components: int = 8  # joint mixture components of the output
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name, (lo, hi) in BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"history model config: {name}={value!r} is not an int in [{lo}, {hi}]")
        if self.n_embd % self.n_head:
            raise ValueError("history model config: n_embd must be a multiple of n_head")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("history model config: dropout must be in [0, 1)")
        if self.param_count() > MAX_PARAMS:
            raise ValueError(f"history model of {self.param_count():,} parameters exceeds {MAX_PARAMS:,}")

    @property
    def context(self) -> int:
        """The most trial tokens the model sees."""
        return self.n_best + self.n_latest

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name and shape of every saved tensor of a model of this shape (computed, not allocated)."""
        K, M, C, d = self.max_knobs, self.max_choices, self.n_components, self.n_embd
        shapes: dict[str, tuple[int, ...]] = {
            "query": (d,),
            "num_in.weight": (d, 2 * K),
            "num_in.bias": (d,),
            "cat_emb.weight": (K * (M + 1), d),
            "out_in.weight": (d, N_OUTCOME),
            "out_in.bias": (d,),
            "slot_emb.weight": (K * 3, d),
            "glob_in.weight": (d, N_GLOBAL),
            "glob_in.bias": (d,),
        }
        for i in range(self.n_layer):
            block = {
                "ln_1.weight": (d,),
                "ln_1.bias": (d,),
                "attn.weight": (3 * d, d),
                "proj.weight": (d, d),
                "ln_2.weight": (d,),
                "ln_2.bias": (d,),
                "fc.weight": (4 * d, d),
                "fc.bias": (4 * d,),
                "fc_out.weight": (d, 4 * d),
                "fc_out.bias": (d,),
            }
            shapes.update({f"h.{i}.{k}": v for k, v in block.items()})
        shapes.update(
            {
                "ln_f.weight": (d,),
                "ln_f.bias": (d,),
                "head_mix.weight": (C, d),
                "head_mix.bias": (C,),
                "head_mu.weight": (C * K, d),
                "head_mu.bias": (C * K,),
                "head_sigma.weight": (C * K, d),
                "head_sigma.bias": (C * K,),
                "head_cat.weight": (C * K * M, d),
                "head_cat.bias": (C * K * M,),
            }
        )
        return shapes

    def param_count(self) -> int:
        """Parameters of a model of this shape, computed."""
        return sum(math.prod(s) for s in self.tensor_shapes().values())

    def to_json(self) -> str:
        """The config as compact JSON (keys sorted)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_mapping(cls, raw: Any) -> HistoryConfig:
        """A config from parsed JSON; unknown keys or wrong types raise ``ValueError`` (then bounds)."""
        if not isinstance(raw, Mapping):
            raise ValueError("history model config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown history model config keys: {sorted(unknown)[:5]}")
        for key, value in raw.items():
            want: tuple[type, ...] = (int, float) if key == "dropout" else (int,)
            if isinstance(value, bool) or not isinstance(value, want):
                raise ValueError(f"history model config {key}={value!r} has the wrong type")
        return cls(**raw)


# ---------------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class SpaceCode:
    """A task's knobs laid out on a model's slots: ``kinds`` and ``n_choices`` per slot (padded)."""

    knobs: tuple[Knob, ...]
    kinds: tuple[int, ...]
    n_choices: tuple[int, ...]


def space_code(space: type[BaseModel], cfg: HistoryConfig) -> SpaceCode:
    """The slot layout of ``space``; ``ValueError`` if it has more knobs or choices than ``cfg``."""
    ks = knobs(space)
    if len(ks) > cfg.max_knobs:
        raise ValueError(f"{len(ks)} knobs > the model's {cfg.max_knobs}")
    kinds, n_choices = [0] * cfg.max_knobs, [0] * cfg.max_knobs
    for i, k in enumerate(ks):
        n = len(k.choices) if k.kind == "choice" else 2 if k.kind == "bool" else 0
        if n > cfg.max_choices:
            raise ValueError(f"knob {k.name!r} has {n} choices > the model's {cfg.max_choices}")
        kinds[i] = CATEGORICAL if n else NUMBER
        n_choices[i] = n
    return SpaceCode(ks, tuple(kinds), tuple(n_choices))


def _bounds(k: Knob) -> tuple[float, float]:
    return (math.log(k.low), math.log(k.high)) if k.log else (k.low, k.high)


def encode_value(k: Knob, value: Any) -> tuple[float, int]:
    """``(u, choice)``: a number scaled to [0, 1] (choice 0), or a categorical's 1-based choice index."""
    if k.kind == "choice":
        return 0.0, k.choices.index(value) + 1  # ValueError for an unknown choice
    if k.kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"knob {k.name!r}: {value!r} is not a bool")
        return 0.0, 2 if value else 1
    x = float(value)
    lo, hi = _bounds(k)
    if k.log:
        x = math.log(max(x, k.low))
    u = (x - lo) / (hi - lo) if hi > lo else 0.0
    return min(1.0, max(0.0, u)), 0


def decode_value(k: Knob, u: float, choice: int) -> Any:
    """The knob value of ``(u, choice)`` (inverse of :func:`encode_value`, within the bounds)."""
    if k.kind == "choice":
        return k.choices[min(len(k.choices), max(1, choice)) - 1]
    if k.kind == "bool":
        return choice == 2
    lo, hi = _bounds(k)
    x = lo + min(1.0, max(0.0, u)) * (hi - lo)
    if k.log:
        x = math.exp(x)
    x = min(k.high, max(k.low, x))
    return min(int(k.high), max(int(k.low), round(x))) if k.kind == "int" else x


def encode_recipe(
    code: SpaceCode, recipe: Mapping[str, Any], cfg: HistoryConfig
) -> tuple[list[float], list[int]]:
    """A recipe as slot values ``(numbers, choices)``, each ``max_knobs`` long (``ValueError`` if bad)."""
    nums, cats = [0.0] * cfg.max_knobs, [0] * cfg.max_knobs
    for i, k in enumerate(code.knobs):
        nums[i], cats[i] = encode_value(k, recipe.get(k.name, k.default))
    return nums, cats


def decode_recipe(code: SpaceCode, nums: Sequence[float], cats: Sequence[int]) -> dict[str, Any]:
    """The recipe dict of slot values (validate it with the task's space)."""
    return {k.name: decode_value(k, nums[i], cats[i]) for i, k in enumerate(code.knobs)}


class Context(NamedTuple):
    """One encoded history (plain lists): the model's input for one proposal or training example."""

    nums: list[list[float]]  # (T, max_knobs) knob values of each selected trial
    cats: list[list[int]]  # (T, max_knobs) choices
    outcome: list[list[float]]  # (T, N_OUTCOME)
    glob: list[float]  # (N_GLOBAL,)
    kinds: tuple[int, ...]
    n_choices: tuple[int, ...]


def select_trials(objectives: Sequence[float | None], n_best: int, n_latest: int) -> list[int]:
    """Indices (in order) of the best ``n_best`` finished trials and the latest ``n_latest``."""
    n = len(objectives)
    latest = set(range(max(0, n - n_latest), n))
    ok = [i for i, v in enumerate(objectives) if v is not None and math.isfinite(v)]
    best = sorted(ok, key=lambda i: (objectives[i], i))[:n_best]
    return sorted(latest.union(best))


def encode_context(
    code: SpaceCode,
    recipes: Sequence[Mapping[str, Any]],
    objectives: Sequence[float | None],
    baselines: Sequence[float],
    cfg: HistoryConfig,
    cache: dict[int, tuple[list[float], list[int]] | None] | None = None,
) -> Context:
    """The model input for a history: its ``recipes`` with their objectives (lower is better; None
    = failed), in order, and the instance's baseline objectives. Only the selected trials are
    encoded (``cache`` keeps their codes by index across calls); one whose recipe does not encode
    is left out."""
    n = len(objectives)
    finished = sorted([v for v in objectives if v is not None and math.isfinite(v)] + list(baselines))
    pool = len(finished)
    mean = sum(baselines) / len(baselines) if baselines else 0.0
    var = sum((b - mean) ** 2 for b in baselines) / (len(baselines) - 1) if len(baselines) > 1 else 0.0
    sd = math.sqrt(var)
    cache = {} if cache is None else cache
    nums, cats, outcome = [], [], []
    for i in select_trials(objectives, cfg.n_best, cfg.n_latest):
        if i not in cache:
            try:
                cache[i] = encode_recipe(code, recipes[i], cfg)
            except (ValueError, KeyError, TypeError):
                cache[i] = None
        slots = cache[i]
        if slots is None:
            continue
        v = objectives[i]
        age = math.log1p(n - 1 - i) / math.log1p(1000.0)
        if v is None or not math.isfinite(v):
            feats = [1.0, 0.0, 0.0, 1.0, age]
        else:
            rank = bisect_left(finished, v) / (pool - 1) if pool > 1 else 0.0  # = History.normalized()
            z = math.asinh((v - mean) / sd) / 4.0 if sd > 0 else 0.0
            feats = [rank, z, 1.0 if sd > 0 else 0.0, 0.0, age]
        nums.append(slots[0])
        cats.append(slots[1])
        outcome.append(feats)
    failed = sum(1 for v in objectives if v is None or not math.isfinite(v))
    glob = [math.log1p(n) / math.log1p(1000.0), 1.0 if baselines else 0.0, failed / n if n else 0.0]
    return Context(nums, cats, outcome, glob, code.kinds, code.n_choices)


def encode_history(history: History, code: SpaceCode, cfg: HistoryConfig) -> Context:
    """:func:`encode_context` of an ``agents`` :class:`History`."""
    objectives = [t.objective if t.ok else None for t in history.trials]
    return encode_context(code, [t.recipe for t in history.trials], objectives, history.baselines, cfg)


class Batch(NamedTuple):
    """Contexts (and targets, when training) as padded tensors."""

    nums: Tensor  # (B, T, K) float
    cats: Tensor  # (B, T, K) long
    outcome: Tensor  # (B, T, N_OUTCOME) float
    mask: Tensor  # (B, T) bool: a real trial
    glob: Tensor  # (B, N_GLOBAL) float
    kinds: Tensor  # (B, K) long
    n_choices: Tensor  # (B, K) long
    target_nums: Tensor  # (B, K) float (zeros when proposing)
    target_cats: Tensor  # (B, K) long


def collate(
    contexts: Sequence[Context],
    cfg: HistoryConfig,
    targets: Sequence[tuple[list[float], list[int]]] | None = None,
) -> Batch:
    """Stack contexts (padded to the longest, at least 1) and their targets into a :class:`Batch`."""
    B, K = len(contexts), cfg.max_knobs
    T = max(1, max((len(c.nums) for c in contexts), default=1))
    zeros_k, zero_cats, zeros_o = [0.0] * K, [0] * K, [0.0] * N_OUTCOME
    nums = torch.tensor([c.nums + [zeros_k] * (T - len(c.nums)) for c in contexts], dtype=torch.float32)
    cats = torch.tensor([c.cats + [zero_cats] * (T - len(c.cats)) for c in contexts], dtype=torch.long)
    outcome = torch.tensor([c.outcome + [zeros_o] * (T - len(c.outcome)) for c in contexts])
    mask = torch.tensor([[True] * len(c.nums) + [False] * (T - len(c.nums)) for c in contexts])
    glob = torch.tensor([c.glob for c in contexts], dtype=torch.float32)
    kinds = torch.tensor([c.kinds for c in contexts], dtype=torch.long)
    n_choices = torch.tensor([c.n_choices for c in contexts], dtype=torch.long)
    if targets is None:
        tn, tc = torch.zeros(B, K), torch.zeros(B, K, dtype=torch.long)
    else:
        tn = torch.tensor([t[0] for t in targets], dtype=torch.float32)
        tc = torch.tensor([t[1] for t in targets], dtype=torch.long)
    return Batch(nums, cats, outcome, mask, glob, kinds, n_choices, tn, tc)


def parse_elites(raw: Any) -> dict[str, list[dict[str, Any]]]:
    """The elite memory stored in a model's header (a JSON string, or absent), bounded and checked:
    ``{family: [recipe, ...]}`` with at most :data:`MAX_ELITE_FAMILIES` families,
    :data:`MAX_ELITES` recipes each, recipes of at most :data:`MAX_ELITE_KNOBS` scalar values;
    ``ValueError`` otherwise. Whether a recipe fits its task is checked when it is proposed."""
    if raw is None:
        return {}
    if not isinstance(raw, str):
        raise ValueError("history model elites must be a JSON string")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"history model elites are not JSON ({exc})") from None
    if not isinstance(data, dict) or len(data) > MAX_ELITE_FAMILIES:
        raise ValueError(f"history model elites must be an object of at most {MAX_ELITE_FAMILIES} families")
    for family, recipes in data.items():
        if not isinstance(recipes, list) or len(recipes) > MAX_ELITES:
            raise ValueError(f"history model elites of {family!r}: not a list of <= {MAX_ELITES} recipes")
        for recipe in recipes:
            if (
                not isinstance(recipe, dict)
                or len(recipe) > MAX_ELITE_KNOBS
                or not all(isinstance(v, (str, int, float, bool)) for v in recipe.values())
            ):
                raise ValueError(f"history model elites of {family!r}: a recipe is not flat scalars")
    return data


# ---------------------------------------------------------------------------------- model


class Block(nn.Module):
    """A pre-norm transformer block over a set: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, cfg: HistoryConfig) -> None:
        super().__init__()
        d = cfg.n_embd
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.Linear(d, 3 * d, bias=False)  # q, k, v at once
        self.proj = nn.Linear(d, d, bias=False)
        self.ln_2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.fc_out = nn.Linear(4 * d, d)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        """``x`` ``(B, S, d)``; ``keep`` ``(B, 1, 1, S)`` bool: which positions may be attended to."""
        B, S, d = x.shape
        q, k, v = self.attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (t.view(B, S, self.n_head, d // self.n_head).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p)
        x = x + F.dropout(self.proj(y.transpose(1, 2).reshape(B, S, d)), p, self.training)
        return x + F.dropout(self.fc_out(F.gelu(self.fc(self.ln_2(x)))), p, self.training)


class Mixture(NamedTuple):
    """The next-recipe distribution for a batch: ``n_components`` joint components."""

    log_pi: Tensor  # (B, C) component log-weights
    mu: Tensor  # (B, C, K) Gaussian means of the numeric slots, in [0, 1]
    log_sigma: Tensor  # (B, C, K) their log standard deviations, in [-7, 0]
    cat_logits: Tensor  # (B, C, K, M) categorical logits (invalid choices masked)


class HistoryModel(nn.Module):
    """History in, a mixture over the next recipe out (see the module docstring)."""

    def __init__(self, cfg: HistoryConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or HistoryConfig()
        K, M, C, d = cfg.max_knobs, cfg.max_choices, cfg.n_components, cfg.n_embd
        self.query = nn.Parameter(torch.zeros(d))  # the token whose output is the proposal
        self.num_in = nn.Linear(2 * K, d)  # numeric slot values and which slots are numeric
        self.cat_emb = nn.Embedding(K * (M + 1), d)  # one vector per (slot, choice); choice 0 = none
        self.out_in = nn.Linear(N_OUTCOME, d)  # the trial's normalised outcome
        self.slot_emb = nn.Embedding(K * 3, d)  # the space: kind of each slot (query token)
        self.glob_in = nn.Linear(N_GLOBAL, d)  # size of the history (query token)
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(d)
        self.head_mix = nn.Linear(d, C)
        self.head_mu = nn.Linear(d, C * K)
        self.head_sigma = nn.Linear(d, C * K)
        self.head_cat = nn.Linear(d, C * K * M)
        self.apply(self._init_weights)
        slots = torch.arange(K)
        self.register_buffer("slots", slots, persistent=False)
        self.elites: dict[str, list[dict[str, Any]]] = {}  # family -> its training instances' best recipes

    slots: Tensor

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, batch: Batch) -> Mixture:
        """The next-recipe mixture for each context of ``batch``."""
        cfg = self.cfg
        B, T, K = batch.nums.shape
        M, C = cfg.max_choices, cfg.n_components
        numeric = (batch.kinds == NUMBER).float()  # (B, K)
        # trial tokens: knob values + (slot, choice) embeddings + outcome
        num_feats = torch.cat([batch.nums * numeric[:, None, :], numeric[:, None, :].expand(B, T, K)], dim=-1)
        cat_index = self.slots * (M + 1) + batch.cats.clamp(0, M)  # (B, T, K)
        tok = self.num_in(num_feats) + self.cat_emb(cat_index).sum(dim=2) + self.out_in(batch.outcome)
        # the query token: which slots the space uses and how, and the history's size
        q = self.query + self.slot_emb(self.slots * 3 + batch.kinds).sum(dim=1) + self.glob_in(batch.glob)
        x = torch.cat([q[:, None, :], tok], dim=1)  # (B, 1 + T, d)
        keep = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=x.device), batch.mask], dim=1)
        keep4 = keep[:, None, None, :]
        for block in self.h:
            x = block(x, keep4)
        h = self.ln_f(x[:, 0]).float()  # heads in float32 (bf16 autocast stops at the trunk)
        with torch.autocast(device_type=h.device.type, enabled=False):
            log_pi = F.log_softmax(self.head_mix(h), dim=-1)
            mu = torch.sigmoid(self.head_mu(h)).view(B, C, K)
            log_sigma = (-3.5 + 3.5 * torch.tanh(self.head_sigma(h))).view(B, C, K)
            cat_logits = self.head_cat(h).view(B, C, K, M)
            valid = torch.arange(M, device=h.device)[None, :] < batch.n_choices[:, :, None]  # (B, K, M)
            cat_logits = cat_logits.masked_fill(~valid[:, None], -1e9)
        return Mixture(log_pi, mu, log_sigma, cat_logits)

    @staticmethod
    def log_prob(mix: Mixture, batch: Batch) -> Tensor:
        """Log-likelihood of each row's target recipe under its mixture, shape ``(B,)``."""
        numeric = (batch.kinds == NUMBER).float()[:, None, :]  # (B, 1, K)
        categorical = (batch.kinds == CATEGORICAL).float()[:, None, :]
        x = batch.target_nums[:, None, :]
        z = (x - mix.mu) * torch.exp(-mix.log_sigma)
        num_lp = ((-0.5 * z * z - mix.log_sigma - 0.5 * math.log(2 * math.pi)) * numeric).sum(-1)  # (B, C)
        choice = (batch.target_cats - 1).clamp(min=0)[:, None, :, None].expand(-1, mix.mu.size(1), -1, 1)
        cat_lp = F.log_softmax(mix.cat_logits, dim=-1).gather(-1, choice).squeeze(-1)
        cat_lp = (cat_lp * categorical).sum(-1)
        return torch.logsumexp(mix.log_pi + num_lp + cat_lp, dim=-1)

    @staticmethod
    def nll(mix: Mixture, batch: Batch) -> Tensor:
        """Mean negative log-likelihood of the batch's targets under the mixture."""
        return -HistoryModel.log_prob(mix, batch).mean()

    # ------------------------------------------------------------------ proposing

    @torch.inference_mode()
    def sample(
        self, context: Context, code: SpaceCode, rng: random.Random, temperature: float = 1.0
    ) -> dict[str, Any]:
        """One recipe dict for ``context``, deterministic given ``rng``: a component, then each knob."""
        mix = self(collate([context], self.cfg))
        weights = torch.softmax(mix.log_pi[0] / max(temperature, 1e-3), dim=-1).tolist()
        c = rng.choices(range(len(weights)), weights=weights)[0]
        mu, sigma = mix.mu[0, c].tolist(), torch.exp(mix.log_sigma[0, c]).tolist()
        probs = torch.softmax(mix.cat_logits[0, c] / max(temperature, 1e-3), dim=-1).tolist()  # (K, M)
        nums, cats = [0.0] * self.cfg.max_knobs, [0] * self.cfg.max_knobs
        for i, kind in enumerate(code.kinds):
            if kind == NUMBER:
                nums[i] = min(1.0, max(0.0, rng.gauss(mu[i], sigma[i] * temperature)))
            elif kind == CATEGORICAL:
                n = code.n_choices[i]
                cats[i] = rng.choices(range(1, n + 1), weights=probs[i][:n])[0]
        return decode_recipe(code, nums, cats)

    @torch.inference_mode()
    def score(self, context: Context, targets: Sequence[tuple[list[float], list[int]]]) -> list[float]:
        """Log-likelihood of each target (slot values, :func:`encode_recipe`) as the next proposal
        for ``context``: one forward pass, the mixture shared by every target."""
        if not targets:
            return []
        one = collate([context], self.cfg)
        mix = self(one)
        n = len(targets)
        mix = Mixture(*(t.expand(n, *t.shape[1:]) for t in mix))
        batch = one._replace(
            kinds=one.kinds.expand(n, -1),
            n_choices=one.n_choices.expand(n, -1),
            target_nums=torch.tensor([t[0] for t in targets], dtype=torch.float32),
            target_cats=torch.tensor([t[1] for t in targets], dtype=torch.long),
        )
        return self.log_prob(mix, batch).tolist()

    # ------------------------------------------------------------------ persistence

    def num_params(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def to_bytes(self) -> bytes:
        """The model as a safetensors blob (float32 weights, config JSON in ``__metadata__``)."""
        from safetensors.torch import save as st_save

        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.state_dict().items()}
        metadata = {"format": FORMAT, "config": self.cfg.to_json()}
        if self.elites:
            metadata["elites"] = json.dumps(self.elites, sort_keys=True, separators=(",", ":"))
        return st_save(tensors, metadata=metadata)

    @staticmethod
    def read_config(data: bytes) -> HistoryConfig:
        """The config in a model blob, bounded and matched against the header's tensors; ``ValueError``
        if it is not a hive history model (pickles, truncation, forged shapes)."""
        return HistoryModel._read_checked(data)[0]

    @staticmethod
    def _read_checked(data: bytes) -> tuple[HistoryConfig, dict[str, Any]]:
        """:meth:`read_config`, and the header's metadata it checked (one parse of the header)."""
        header, meta, data_bytes = read_header(data, FORMAT, "model")
        try:
            raw = json.loads(meta["config"])
        except json.JSONDecodeError as exc:
            raise ValueError(f"history model config is not JSON ({exc})") from None
        cfg = HistoryConfig.from_mapping(raw)  # bounded: a forged config stops here
        want = cfg.tensor_shapes()
        declared = {k: v for k, v in header.items() if k != "__metadata__"}
        if set(declared) != set(want):
            raise ValueError("history model tensors do not match its config")
        for name, shape in want.items():
            info = declared[name]
            if not isinstance(info, dict) or info.get("dtype") != "F32" or info.get("shape") != list(shape):
                raise ValueError(f"history model tensor {name} is not float32 of shape {list(shape)}")
        if data_bytes != 4 * cfg.param_count():
            raise ValueError("history model data size does not match its config")
        return cfg, meta

    @classmethod
    def from_bytes(cls, data: bytes) -> HistoryModel:
        """Rebuild a model from :meth:`to_bytes` output (CPU, eval mode), checked before allocating."""
        cfg, meta = cls._read_checked(data)
        elites = parse_elites(meta.get("elites"))
        model = cls(cfg)
        model.load_state_dict(_st_load(data), strict=True)
        model.elites = elites
        return model.eval()


def is_history_model(data: bytes) -> bool:
    """Whether ``data`` claims to be a history model (its header's format), without checking it."""
    try:
        n = int.from_bytes(data[:8], "little")
        if n > MAX_HEADER_BYTES or n > len(data) - 8:
            return False
        return f'"format":"{FORMAT}"' in data[8 : 8 + n].decode("utf-8", "replace").replace(" ", "")
    except Exception:
        return False


Elite = tuple[BaseModel, tuple[list[float], list[int]]]
"""An elite recipe validated against a task's space, and its slot values."""


class HistoryProposer(Proposer):
    """A :class:`HistoryModel` as an ``agents`` proposer (:func:`load_proposer` names it ``model-v<N>``).

    While fewer than :data:`ELITE_TRIALS` of the model's elites for the instance's family have run
    on the instance, it proposes the untried elite the network finds most likely given the
    instance's history (recall: the hive's best recipes, ranked by what this instance has shown);
    after that, or without elites, it samples the network."""

    name: ClassVar[str] = "model"

    def __init__(self, model: HistoryModel, version: int = 0, temperature: float = 1.0) -> None:
        self.model = model.eval()
        self.version = version
        self.temperature = temperature
        self._codes: dict[type[BaseModel], SpaceCode | None] = {}
        self._elites: dict[tuple[str, type[BaseModel]], list[Elite]] = {}

    def code(self, space: type[BaseModel]) -> SpaceCode | None:
        """The slot layout of ``space`` for this model (None if the model cannot represent it)."""
        if space not in self._codes:
            try:
                self._codes[space] = space_code(space, self.model.cfg)
            except (ValueError, TypeError):
                self._codes[space] = None
        return self._codes[space]

    def elites(self, history: History, code: SpaceCode) -> list[Elite]:
        """The family's elites still to try on the instance (validated and encoded once per space);
        none once :data:`ELITE_TRIALS` of them have run there. An elite that does not fit the
        task's space is left out."""
        task = history.task
        key = (task.name, task.space)
        if key not in self._elites:
            usable = []
            for raw in self.model.elites.get(task.name, ()):
                try:
                    valid = task.validate_recipe(raw)
                    usable.append((valid, encode_recipe(code, valid.model_dump(), self.model.cfg)))
                except (ValueError, TypeError, KeyError):  # pydantic's ValidationError is a ValueError
                    continue
            self._elites[key] = usable
        untried = [e for e in self._elites[key] if not history.seen(e[0])]
        return untried if len(self._elites[key]) - len(untried) < ELITE_TRIALS else []

    def propose(self, history: History, rng: random.Random) -> BaseModel:
        """The most likely untried elite (see the class docstring), else a sample of the network,
        conditioned on the instance's history."""
        code = self.code(history.task.space)
        if code is None:
            raise ProposerUnavailable(f"{history.task.ref}: its space does not fit this model's slots")
        context = encode_history(history, code, self.model.cfg)
        elites = self.elites(history, code)
        if elites:
            scores = self.model.score(context, [slots for _, slots in elites])
            return elites[max(range(len(elites)), key=scores.__getitem__)][0]
        return history.task.validate_recipe(self.model.sample(context, code, rng, self.temperature))


def parse_meta(meta: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    """``meta.json`` as a mapping (``ValueError`` if it is not a JSON object)."""
    info = json.loads(meta) if isinstance(meta, (bytes, str)) else meta
    if not isinstance(info, Mapping):
        raise ValueError("model meta is not a JSON object")
    return info


def load_proposer(weights: bytes, meta: bytes | Mapping[str, Any], version: int) -> Proposer:
    """The ``hive.policies`` loader of the ``history`` backend: a proposer named ``model-v<version>``.

    The config in ``meta`` (if any) is bounded and must equal the one in the weights' header; the
    header's tensors are checked against it before anything is allocated."""
    info = parse_meta(meta)
    if info.get("backend", BACKEND) != BACKEND:
        raise ValueError(f"model v{version} is a {info.get('backend')!r} model, not {BACKEND!r}")
    declared = HistoryConfig.from_mapping(info["config"]) if "config" in info else None
    try:
        cfg = HistoryModel.read_config(weights)
    except Exception as e:
        raise ValueError(f"model v{version}: {e}") from None
    if declared is not None and declared != cfg:
        raise ValueError(f"model v{version}: meta.json's config differs from the weights' header")
    model = HistoryModel.from_bytes(weights)
    named = type(f"HistoryProposerV{version}", (HistoryProposer,), {"name": f"model-v{version}"})
    proposer: Proposer = named(model, version)
    return proposer
