"""The byte-level policy (backend ``byte``, the first model): a causal transformer over recipe text.

Text is UTF-8 bytes (tokens 0..255) plus four special tokens. A training sequence is::

    BOS  prompt bytes  SEP  completion bytes  EOS

and the loss can be restricted to the completion (see :meth:`Policy.forward`). Decoding lives in
``distill._decode``; this file only offers :meth:`Policy.forward_cached`, one forward step with a
key/value cache, which the decoder drives.

Architecture: GPT-2 style pre-norm blocks (causal self-attention via ``scaled_dot_product_attention``,
4x GELU MLP), tied input/output embedding, two departures that make a tiny byte model learn number
syntax much faster: rotary position embedding (relative positions) instead of learned absolute
ones, and the previous byte's embedding added at the input (a bigram feature).

Weights are stored as **safetensors** with the :class:`PolicyConfig` as JSON in the file's
``__metadata__`` header, so one ``.safetensors`` file (or its bytes) is a complete, self-describing
model. Nothing here ever unpickles: loading parses the header itself, rejects anything that is not a
hive policy file, and hands the tensors to ``safetensors``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load as _st_load
from torch import Tensor, nn
from torch.nn import functional as F

from ._st_header import read_header

BOS, SEP, EOS, PAD = 256, 257, 258, 259
"""Special tokens: begin of sequence, end of prompt, end of completion, padding (never a target)."""
N_BYTES = 256
VOCAB_SIZE = 260
"""256 byte values plus the four specials."""

FORMAT = "hive-policy/1"
"""Value of ``__metadata__["format"]`` in a saved policy; anything else is refused."""
MAX_VOCAB_SIZE = 1 << 16
MAX_BLOCK_SIZE = 8192
MAX_LAYERS = 64
MAX_HEADS = 64
MAX_EMBD = 4096
MAX_PARAMS = 256_000_000
"""Bounds on a policy's shape, checked before anything is allocated: a config read from a file
(a published model) cannot make a process build a model of many gigabytes. The byte policy is
far below them (the default has under a million parameters)."""


@dataclass(frozen=True)
class KVCache:
    """Keys and values of the positions fed so far, for :meth:`Policy.forward_cached`.

    ``keys`` / ``values``: per layer a preallocated buffer ``(batch, n_head, block_size, head_dim)``
    whose first ``length`` positions are filled (keys already rotated), so a decoding step writes
    one slot instead of copying the whole cache; ``last``: the last token fed ``(batch, 1)`` (the
    next position's previous byte). ``forward_cached`` writes into the buffers and returns the
    advanced cache: the cache passed in must not be used again.
    """

    keys: list[Tensor]
    values: list[Tensor]
    length: int
    last: Tensor

    def expand(self, n: int) -> KVCache:
        """A batch-1 cache copied to ``n`` rows (each row then decodes on its own)."""
        keys = [k.expand(n, -1, -1, -1).clone() for k in self.keys]
        values = [v.expand(n, -1, -1, -1).clone() for v in self.values]
        return KVCache(keys, values, self.length, self.last.expand(n, -1).clone())

    def select(self, rows: Tensor) -> KVCache:
        """Only the batch rows ``rows`` (a 1-D index tensor)."""
        keys = [k.index_select(0, rows) for k in self.keys]
        values = [v.index_select(0, rows) for v in self.values]
        return KVCache(keys, values, self.length, self.last.index_select(0, rows))


@dataclass(frozen=True)
class PolicyConfig:
    """Shape of a :class:`Policy`. Stored next to the weights as JSON, so it must stay plain data."""

    vocab_size: int = VOCAB_SIZE
    block_size: int = 384  # longest sequence (prompt + completion) the model sees
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm (False: a bit faster, as good)

    def __post_init__(self) -> None:
        if not VOCAB_SIZE <= self.vocab_size <= MAX_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be in [{VOCAB_SIZE} (bytes + specials), {MAX_VOCAB_SIZE}]")
        if not 16 <= self.block_size <= MAX_BLOCK_SIZE:
            raise ValueError(f"block_size must be in [16, {MAX_BLOCK_SIZE}]")
        if not 1 <= self.n_layer <= MAX_LAYERS or not 1 <= self.n_head <= MAX_HEADS:
            raise ValueError(f"n_layer and n_head must be in [1, {MAX_LAYERS}] and [1, {MAX_HEADS}]")
        if not 0 < self.n_embd <= MAX_EMBD or self.n_embd % (2 * self.n_head):
            raise ValueError(f"n_embd must be a multiple of 2 * n_head (rotary halves) in (0, {MAX_EMBD}]")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.param_count() > MAX_PARAMS:
            raise ValueError(f"policy of {self.param_count():,} parameters exceeds the bound {MAX_PARAMS:,}")

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name and shape of every saved tensor of a :class:`Policy` of this shape (computed, not
        allocated): what a policy file's safetensors header must declare, exactly."""
        C, b = self.n_embd, self.bias
        shapes: dict[str, tuple[int, ...]] = {
            "wte.weight": (self.vocab_size, C),
            "wte_prev.weight": (self.vocab_size, C),
        }
        for i in range(self.n_layer):
            layer = {
                "ln_1.weight": (C,),
                "attn.c_attn.weight": (3 * C, C),
                "attn.c_proj.weight": (C, C),
                "ln_2.weight": (C,),
                "mlp.c_fc.weight": (4 * C, C),
                "mlp.c_proj.weight": (C, 4 * C),
            }
            if b:
                layer.update(
                    {
                        "ln_1.bias": (C,),
                        "attn.c_attn.bias": (3 * C,),
                        "attn.c_proj.bias": (C,),
                        "ln_2.bias": (C,),
                        "mlp.c_fc.bias": (4 * C,),
                        "mlp.c_proj.bias": (C,),
                    }
                )
            shapes.update({f"h.{i}.{k}": v for k, v in layer.items()})
        shapes["ln_f.weight"] = (C,)
        if b:
            shapes["ln_f.bias"] = (C,)
        return shapes

    def param_count(self) -> int:
        """Parameters of a :class:`Policy` of this shape (as :meth:`Policy.num_params`), computed."""
        return sum(math.prod(shape) for shape in self.tensor_shapes().values())

    def to_json(self) -> str:
        """The config as compact JSON (keys sorted)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PolicyConfig:
        """Parse :meth:`to_json` output; unknown keys or wrong types raise ``ValueError``."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("policy config must be a JSON object")
        known = {f.name: f for f in fields(cls)}
        unknown = set(raw) - set(known)
        if unknown:
            raise ValueError(f"unknown policy config keys: {sorted(unknown)}")
        for key, value in raw.items():
            want = {"dropout": (int, float), "bias": (bool,)}.get(key, (int,))
            if not isinstance(value, want) or (key != "bias" and isinstance(value, bool)):
                raise ValueError(f"policy config {key}={value!r} has the wrong type")
        return cls(**raw)


def _rope_table(block_size: int, head_size: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """Rotary embedding tables ``(cos, sin)``, each ``(block_size, head_size // 2)``."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
    angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Apply rotary position embedding to ``x`` ``(B, nh, T, hs)`` (halves form, as GPT-NeoX)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (flash attention via ``scaled_dot_product_attention``)."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        cache: tuple[Tensor, Tensor] | None = None,
        start: int = 0,
    ) -> Tensor:
        """Causal attention for ``x`` ``(B, T, C)`` at positions ``start ..``.

        ``rope`` is the (cos, sin) table of those positions. With ``cache`` (key and value buffers),
        the new keys/values are written at ``start ..`` and the queries also see the ``start``
        positions before them.
        """
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        hs = C // self.n_head
        q = _rotate(q.view(B, T, self.n_head, hs).transpose(1, 2), *rope)  # (B, nh, T, hs)
        k = _rotate(k.view(B, T, self.n_head, hs).transpose(1, 2), *rope)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        mask: Tensor | None = None
        causal = start == 0
        if cache is not None:
            S = start + T
            cache[0][:, :, start:S] = k
            cache[1][:, :, start:S] = v
            k, v = cache[0][:, :, :S], cache[1][:, :, :S]
            if start and T > 1:  # a chunk after cached positions: all of the past, causal within
                mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=start)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """The position-wise feed-forward block (4x expansion, GELU)."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the MLP."""
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        cache: tuple[Tensor, Tensor] | None = None,
        start: int = 0,
    ) -> Tensor:
        """Run the block (``cache`` / ``start`` as in :class:`CausalSelfAttention`)."""
        x = x + self.attn(self.ln_1(x), rope, cache, start)
        x = x + self.mlp(self.ln_2(x))
        return x


class Policy(nn.Module):
    """Byte-level causal transformer with rotary positions; the output head is tied to the embedding."""

    rope_cos: Tensor
    rope_sin: Tensor

    def __init__(self, config: PolicyConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PolicyConfig()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wte_prev = nn.Embedding(config.vocab_size, config.n_embd)  # embedding of the previous byte
        cos, sin = _rope_table(config.block_size, config.n_embd // config.n_head)
        self.register_buffer("rope_cos", cos, persistent=False)  # not weights: not saved
        self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        # init as GPT-2: N(0, 0.02), residual projections scaled down by depth
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # ------------------------------------------------------------------ compute

    def _trunk(self, idx: Tensor, cache: KVCache | None) -> Tensor:
        B, T = idx.size()
        start = 0 if cache is None else cache.length
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        rope = (self.rope_cos[start : start + T], self.rope_sin[start : start + T])
        # token embedding plus the embedding of the byte before (PAD before the first): a cheap bigram
        # feature (cf. modded-nanogpt's "smear"); without it a small byte model spends many steps
        # learning previous-token attention just to tell the "2" of "32," from the "2" of "128,".
        if cache is None or start == 0:
            first = torch.full((B, 1), PAD, dtype=idx.dtype, device=idx.device)
        else:
            first = cache.last
        prev = torch.cat([first, idx[:, :-1]], dim=1)
        x = self.drop(self.wte(idx) + self.wte_prev(prev))
        for i, block in enumerate(self.h):
            x = block(x, rope, None if cache is None else (cache.keys[i], cache.values[i]), start)
        return self.ln_f(x)

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, loss_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Logits ``(B, T, vocab)`` for token ids ``idx`` ``(B, T)``, and the mean loss if ``targets`` given.

        ``targets`` are the next tokens, ``-1`` where there is none. ``loss_mask`` (bool or 0/1, same
        shape) further restricts which positions count, e.g. only completion bytes; the loss is the
        mean cross-entropy over the counted positions (0 if there are none).
        """
        x = self._trunk(idx, None)
        logits = F.linear(x, self.wte.weight)  # tied head
        if targets is None:
            return logits, None
        per_token = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1, reduction="none"
        )
        weight = (targets.reshape(-1) != -1).float()
        if loss_mask is not None:
            weight = weight * loss_mask.reshape(-1).float()
        loss = (per_token * weight).sum() / weight.sum().clamp_min(1.0)
        return logits, loss

    def forward_cached(self, idx: Tensor, past: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """Feed ``idx`` ``(B, T)`` after the cached positions; return last-position logits ``(B, vocab)``.

        With ``past=None`` this is a prefill (the cache buffers are allocated). Every row has the same
        number of cached positions. ``past`` is updated in place: use the returned cache from then on.
        Call under ``torch.no_grad()`` in eval mode.
        """
        if past is None:
            c = self.config
            shape = (idx.size(0), c.n_head, c.block_size, c.n_embd // c.n_head)
            w = self.wte.weight
            keys = [w.new_empty(shape) for _ in range(c.n_layer)]
            values = [w.new_empty(shape) for _ in range(c.n_layer)]
            past = KVCache(keys, values, 0, idx[:, :0])
        x = self._trunk(idx, past)
        present = KVCache(past.keys, past.values, past.length + idx.size(1), idx[:, -1:])
        return F.linear(x[:, -1, :], self.wte.weight), present

    # ------------------------------------------------------------------ accounting

    def num_params(self) -> int:
        """Number of parameters (the token embedding counts once: the output head shares it)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs (forward + backward) per token, PaLM appendix B: ``6N + 12 L H Q T``.

        ``seq_len`` is the attention context length T (default ``block_size``).
        """
        c = self.config
        T = c.block_size if seq_len is None else seq_len
        return 6.0 * self.num_params() + 12.0 * c.n_layer * c.n_embd * T

    # ------------------------------------------------------------------ persistence

    def to_bytes(self) -> bytes:
        """The model as a safetensors blob (float32 weights, config JSON in ``__metadata__``)."""
        from safetensors.torch import save as st_save

        tensors = {  # clones: tied weights must not share storage in a safetensors file
            k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in self.state_dict().items()
        }
        return st_save(tensors, metadata={"format": FORMAT, "config": self.config.to_json()})

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_bytes` to ``path`` (atomically, via a temporary sibling) and return the path."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(self.to_bytes())
        tmp.replace(path)
        return path

    @staticmethod
    def read_config(data: bytes) -> PolicyConfig:
        """The config stored in a policy blob; ``ValueError`` if it is not a hive safetensors policy."""
        header, meta, data_bytes = read_header(data, FORMAT, "policy")
        config = PolicyConfig.from_json(meta["config"])  # bounded: a forged config stops here
        _check_tensors(header, config, data_bytes)
        return config

    @classmethod
    def from_bytes(cls, data: bytes) -> Policy:
        """Rebuild a policy from :meth:`to_bytes` output (on CPU, in eval mode).

        The config is bounded and the header's tensors must be exactly those of a policy of that
        config (names, shapes, float32, byte size) before any tensor or module is allocated."""
        config = cls.read_config(data)
        tensors = _st_load(data)
        model = cls(config)
        model.load_state_dict(tensors, strict=True)
        return model.eval()

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Load a policy written by :meth:`save`. Never unpickles; other files raise ``ValueError``."""
        return cls.from_bytes(Path(path).read_bytes())


def _check_tensors(header: dict[str, object], config: PolicyConfig, data_bytes: int) -> None:
    """``ValueError`` unless the safetensors header declares exactly the tensors of a policy of
    ``config`` (names and shapes), as float32, filling the ``data_bytes`` after the header."""
    want = config.tensor_shapes()
    declared = {k: v for k, v in header.items() if k != "__metadata__"}
    if set(declared) != set(want):
        missing, extra = sorted(set(want) - set(declared)), sorted(set(declared) - set(want))
        raise ValueError(
            f"policy tensors do not match its config (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for name, shape in want.items():
        info = declared[name]
        if not isinstance(info, dict) or info.get("dtype") != "F32" or info.get("shape") != list(shape):
            raise ValueError(f"policy tensor {name} is not float32 of shape {list(shape)} as its config says")
    expected = 4 * config.param_count()
    if data_bytes != expected:
        raise ValueError(f"policy data is {data_bytes} bytes; its config declares {expected}")
