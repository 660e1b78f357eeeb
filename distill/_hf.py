"""Optional backend: a local causal LM (``transformers``) with a LoRA adapter (``peft``).

Installed with the ``hf`` extra (``pip install 'hive-swarm[hf]'``). This module imports
transformers and peft only when a model is loaded, so importing it costs nothing without the extra;
the default byte policy never touches it.

* **Base model**: a local directory (``save_pretrained`` output with safetensors weights), read with
  ``local_files_only=True`` -- never a hub, never a pickle. :func:`base_fingerprint` identifies it
  (its ``config.json`` and tokenizer files), so an agent can tell it holds the base an adapter was
  trained on.
* **Adapter**: :class:`HFPolicy` is the base plus a peft LoRA adapter. Only the adapter is saved:
  safetensors bytes with the format, the LoRA settings and the base's fingerprint in
  ``__metadata__``; loading checks all three before the tensors reach peft.
* **Training**: :func:`train` fits the adapter on the same ``(prompt, completion)`` pairs as the byte
  policy, with the loss on the completion only. :func:`evaluate` reports held-out loss in the byte
  policy's unit -- nats per completion byte, the end of the action counting as one byte -- so the
  distiller's gate compares candidates from either backend.
* **Decoding**: :func:`sample_actions` / :func:`propose` / :func:`valid_action_rate` use the byte
  policy's action grammar (``distill._decode``): a token is allowed when the grammar accepts each of
  its bytes in turn, which works for tokens spanning several bytes (BPE).

A sequence is ``tokens(prompt) tokens(PROMPT_SUFFIX) tokens(completion) EOS``: the prompt
(``render_prompt`` output) is tokenized with the tokenizer's special tokens (a BOS where the model
uses one) and cut at its end when too long for the context, as in the byte policy; the completion
is tokenized on its own, into tokens the decoder can write (:func:`completion_ids`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import structlog
import torch
from pydantic import BaseModel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch.nn import functional as F

from distill._decode import (
    ProposalStats,
    _cpu_threads,
    _pick,
    _validate,
    _Walker,
    action_grammar,
    propose_with,
)
from distill._train import TrainingStopped, TrainReport, batch_order, cosine_lr, peak_flops, pick_device
from distill.model import EOS, MAX_HEADER_BYTES

log = structlog.get_logger(__name__)

FORMAT = "hive-hf-lora/1"
"""Value of ``__metadata__["format"]`` in a saved adapter; anything else is refused."""
EXTRA_HINT = "pip install 'hive-swarm[hf]'"
PROMPT_SUFFIX = "\naction:"
"""Appended to the prompt: where the action begins."""
TOP_K = 512
"""Tokens checked against the grammar at each decoding step (those with the highest logits among
the tokens whose first byte fits; all of them only if none of these does)."""
MAX_CONTEXT = 2048
"""Longest sequence used, whatever the model's own limit (prompts and actions are short)."""
_VOLATILE_CONFIG_KEYS = frozenset({"_name_or_path", "transformers_version"})
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt")


class MissingExtra(ImportError):
    """``transformers`` / ``peft`` are not installed (the ``hf`` extra)."""


class BaseModelError(ValueError):
    """The base model directory is missing, is not a causal LM, or is not an adapter's base."""


def require_extra() -> None:
    """Raise :class:`MissingExtra` (with the install command) unless transformers and peft import."""
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise MissingExtra(f"the hf backend needs transformers and peft ({e}): {EXTRA_HINT}") from None


# ---------------------------------------------------------------------------- base model


def base_dir(path: str | Path) -> Path:
    """``path`` resolved, if it is a directory holding a ``config.json``; else :class:`BaseModelError`."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise BaseModelError(f"{path}: no such directory (the hf backend loads a local model, never a hub)")
    if not (p / "config.json").is_file():
        raise BaseModelError(f"{p}: not a transformers model directory (no config.json)")
    return p.resolve()


def base_fingerprint(path: str | Path) -> str:
    """``sha256:<hex>`` of the base's ``config.json`` (canonical JSON, minus the keys that change on
    every save) and of its tokenizer files: equal on every machine holding the same base model."""
    d = base_dir(path)
    try:
        config = json.loads((d / "config.json").read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BaseModelError(f"{d}/config.json is not JSON: {e}") from None
    if not isinstance(config, dict):
        raise BaseModelError(f"{d}/config.json is not a JSON object")
    h = hashlib.sha256()
    kept = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    h.update(json.dumps(kept, sort_keys=True, separators=(",", ":")).encode())
    for name in _TOKENIZER_FILES:
        if (d / name).is_file():
            h.update(f"\n{name}:".encode() + hashlib.sha256((d / name).read_bytes()).digest())
    return "sha256:" + h.hexdigest()


def load_base(path: str | Path) -> tuple[Any, Any]:
    """The causal LM (float32, eval mode) and tokenizer in directory ``path``.

    Local files only, safetensors weights only, no remote code. :class:`BaseModelError` when ``path``
    is not such a model or its tokenizer has no end-of-sequence token; :class:`MissingExtra` without
    the ``hf`` extra.
    """
    require_extra()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    d = base_dir(path)
    hf_logging.disable_progress_bar()  # no "Loading weights" bars in agents' logs
    try:
        tokenizer = AutoTokenizer.from_pretrained(d, local_files_only=True, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            d, local_files_only=True, use_safetensors=True, trust_remote_code=False
        )
    except Exception as e:  # transformers raises OSError, ValueError, KeyError, ... for a bad directory
        raise BaseModelError(f"{d}: not a causal LM with a tokenizer: {type(e).__name__}: {e}") from None
    if tokenizer.eos_token_id is None:
        raise BaseModelError(f"{d}: the tokenizer has no end-of-sequence token")
    return model.float().eval(), tokenizer


# ---------------------------------------------------------------------------- LoRA settings


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter's shape: rank ``r``, scale ``alpha`` (default ``2 r``), dropout, and the
    module names it wraps (``None``: peft's default for the architecture, resolved when created)."""

    r: int = 8
    alpha: int | None = None
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.r <= 1024:
            raise ValueError("LoRA rank r must be in [1, 1024]")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError("LoRA alpha must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("LoRA dropout must be in [0, 1)")
        if self.target_modules is not None and (
            not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules)
        ):
            raise ValueError("LoRA target_modules must be non-empty module names")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (``meta.json``, the adapter header)."""
        out = asdict(self)
        out["target_modules"] = list(self.target_modules) if self.target_modules is not None else None
        return out

    @classmethod
    def from_dict(cls, raw: Any) -> LoraSettings:
        """Parse :meth:`to_dict` output; ``ValueError`` on anything else."""
        if not isinstance(raw, dict) or set(raw) - {"r", "alpha", "dropout", "target_modules"}:
            raise ValueError(f"not LoRA settings: {raw!r}")
        targets = raw.get("target_modules")
        if targets is not None and not isinstance(targets, list):
            raise ValueError("LoRA target_modules must be a list")
        r, alpha, dropout = raw.get("r", 8), raw.get("alpha"), raw.get("dropout", 0.0)
        if not isinstance(r, int) or (alpha is not None and not isinstance(alpha, int)):
            raise ValueError("LoRA r and alpha must be integers")
        if not isinstance(dropout, int | float):
            raise ValueError("LoRA dropout must be a number")
        return cls(r, alpha, float(dropout), tuple(targets) if targets is not None else None)


def _wrap(model: Any, lora: LoraSettings) -> Any:
    """``model`` with a fresh LoRA adapter (peft), only the adapter trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=lora.r,
        lora_alpha=lora.alpha if lora.alpha is not None else 2 * lora.r,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules) if lora.target_modules is not None else None,
    )
    with warnings.catch_warnings():
        # GPT-2 style Conv1D layers: peft switches fan_in_fan_out on itself and says so
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        try:
            return get_peft_model(model, config)
        except ValueError as e:
            raise BaseModelError(
                f"cannot put a LoRA adapter on this model ({e}); name its modules with --lora-targets"
            ) from None


# ---------------------------------------------------------------------------- the policy


def _header_metadata(data: bytes) -> dict[str, Any]:
    """The ``__metadata__`` of a safetensors blob; ``ValueError`` for anything else (e.g. a pickle)."""
    if len(data) < 8:
        raise ValueError("not a safetensors file: too short")
    n = int.from_bytes(data[:8], "little")
    if n < 2 or n > MAX_HEADER_BYTES or n > len(data) - 8:
        raise ValueError("not a safetensors file: bad header length (pickle or torch.save files are refused)")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a safetensors file: header is not JSON ({e})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def is_adapter(data: bytes) -> bool:
    """Whether ``data`` is a saved hf adapter (as opposed to a byte policy or anything else)."""
    try:
        return _header_metadata(data).get("format") == FORMAT
    except ValueError:
        return False


class HFPolicy:
    """A local causal LM with a LoRA adapter: what the hf backend trains, publishes and decodes with.

    Build one with :meth:`create` (a fresh adapter) or :meth:`from_bytes` (a saved one);
    :meth:`to_bytes` saves the adapter alone. ``model`` is the peft model, ``tokenizer`` the base's.
    """

    def __init__(self, model: Any, tokenizer: Any, base: Path, fingerprint: str, lora: LoraSettings) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.base = base
        self.fingerprint = fingerprint
        self.lora = lora
        self._candidates: dict[tuple[int, ...], torch.Tensor] = {}
        self._fits: dict[tuple[type[BaseModel], bool], dict[tuple[int, int, bytes, int], bool]] = {}

    @classmethod
    def create(cls, base: str | Path, lora: LoraSettings | None = None, *, seed: int = 0) -> HFPolicy:
        """The base model in directory ``base`` with a fresh adapter (seeded; LoRA starts as a no-op)."""
        lora = lora or LoraSettings()
        d = base_dir(base)
        fingerprint = base_fingerprint(d)
        model, tokenizer = load_base(d)
        torch.manual_seed(seed)
        peft_model = _wrap(model, lora)
        chosen = peft_model.peft_config["default"].target_modules  # names (a set), or a regex: re-inferred
        targets = None if isinstance(chosen, str) else tuple(sorted(chosen))
        resolved = LoraSettings(lora.r, lora.alpha, lora.dropout, targets)  # saved explicitly
        return cls(peft_model.eval(), tokenizer, d, fingerprint, resolved)

    @classmethod
    def from_bytes(cls, base: str | Path, data: bytes, *, fingerprint: str | None = None) -> HFPolicy:
        """Rebuild a policy from :meth:`to_bytes` output on the base model in directory ``base``.

        Refuses (``ValueError``) anything that is not a hive adapter -- pickles included, nothing is
        unpickled -- and (:class:`BaseModelError`) a base whose fingerprint differs from the one the
        adapter was trained on, or from ``fingerprint`` when given (e.g. from ``meta.json``).
        """
        require_extra()
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        meta = _header_metadata(data)
        if meta.get("format") != FORMAT:
            raise ValueError(f"safetensors file is not a {FORMAT} adapter")
        try:
            lora = LoraSettings.from_dict(json.loads(meta.get("lora", "")))
        except (json.JSONDecodeError, ValueError) as e:
            raise ValueError(f"adapter has bad LoRA settings: {e}") from None
        recorded = meta.get("base_fingerprint")
        if not isinstance(recorded, str):
            raise ValueError("adapter does not record its base model's fingerprint")
        d = base_dir(base)
        local = base_fingerprint(d)
        for wanted in (recorded, fingerprint):
            if wanted is not None and wanted != local:
                raise BaseModelError(
                    f"the adapter was trained on base {meta.get('base_model')!r} ({str(wanted)[:23]}…), "
                    f"but {d} is a different model ({local[:23]}…)"
                )
        try:
            tensors = st_load(data)
        except Exception as e:  # safetensors' own error: truncated or corrupt
            raise ValueError(f"not a safetensors file: {e}") from None
        model, tokenizer = load_base(d)
        peft_model = _wrap(model, lora)
        expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(peft_model).items()}
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if got != expected:
            diff = sorted(set(got) ^ set(expected)) or [k for k in got if got[k] != expected[k]]
            raise ValueError(f"adapter tensors do not fit the base model: {diff[:3]}")
        result = set_peft_model_state_dict(peft_model, tensors)
        unexpected = list(getattr(result, "unexpected_keys", None) or [])
        if unexpected:
            raise ValueError(f"adapter tensors not used by the model: {unexpected[:3]}")
        return cls(peft_model.eval(), tokenizer, d, local, lora)

    def to_bytes(self) -> bytes:
        """The adapter's weights (float32) as safetensors, with the format, the LoRA settings and the
        base's name and fingerprint in ``__metadata__``. The base's weights are not included."""
        from peft import get_peft_model_state_dict

        tensors = {
            k: v.detach().to("cpu", torch.float32).contiguous().clone()
            for k, v in get_peft_model_state_dict(self.model).items()
        }
        metadata = {
            "format": FORMAT,
            "lora": json.dumps(self.lora.to_dict(), sort_keys=True),
            "base_model": self.base.name,
            "base_fingerprint": self.fingerprint,
        }
        return st_save(tensors, metadata=metadata)

    def meta(self) -> dict[str, Any]:
        """What ``meta.json`` records about this model (the backend, its base, the LoRA settings)."""
        return {
            "backend": "hf",
            "base_model": self.base.name,
            "base_fingerprint": self.fingerprint,
            "base_model_type": getattr(self.model.config, "model_type", None),
            "lora": self.lora.to_dict(),
            "params": self.num_params(),
            "trainable_params": self.num_params(trainable=True),
        }

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> HFPolicy:
        """Move the model to ``device``; returns ``self``."""
        self.model.to(device)
        return self

    def num_params(self, trainable: bool = False) -> int:
        """Parameters of base and adapter (``trainable``: the adapter's only)."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad or not trainable)

    @property
    def context(self) -> int:
        """Longest sequence in tokens: the model's limit, at most :data:`MAX_CONTEXT`."""
        cfg = self.model.config
        limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        return min(int(limit or MAX_CONTEXT), MAX_CONTEXT)

    @cached_property
    def token_bytes(self) -> list[bytes | None]:
        """The bytes each token id stands for (``None``: special, empty, or not whole UTF-8 text).

        Each token is decoded after a fixed prefix and the prefix's text removed, so tokenizers that
        drop a leading space of the first token (sentencepiece) still give the token's real bytes.
        """
        tok = self.tokenizer
        special = set(tok.all_special_ids)
        prefix_ids = tok.encode("0", add_special_tokens=False)
        prefix = tok.decode(prefix_ids, clean_up_tokenization_spaces=False)
        texts = tok.batch_decode(
            [[*prefix_ids, i] for i in range(len(tok))], clean_up_tokenization_spaces=False
        )
        out: list[bytes | None] = []
        for i, text in enumerate(texts):
            piece = text[len(prefix) :] if i not in special and text.startswith(prefix) else ""
            out.append(piece.encode("utf-8") if piece and "\ufffd" not in piece else None)
        return out

    @cached_property
    def token_ids(self) -> dict[bytes, int]:
        """The (lowest) token id of each byte string in :attr:`token_bytes`."""
        ids: dict[bytes, int] = {}
        for i, data in enumerate(self.token_bytes):
            if data:
                ids.setdefault(data, i)
        return ids

    @cached_property
    def longest_token(self) -> int:
        """Bytes in the longest token."""
        return max(map(len, self.token_ids), default=1)

    def candidates(self, allowed: tuple[int, ...]) -> torch.Tensor:
        """Ids of the tokens whose first byte is in ``allowed`` (the grammar's next bytes), cached."""
        found = self._candidates.get(allowed)
        if found is None:
            vocab = getattr(self.model.config, "vocab_size", None) or len(self.token_bytes)
            bytes_ = set(allowed)
            ids = [i for i, data in enumerate(self.token_bytes[:vocab]) if data and data[0] in bytes_]
            found = self._candidates[allowed] = torch.tensor(ids, dtype=torch.long)
        return found

    def fits_memo(self, space: type[BaseModel], bounds: bool) -> dict[tuple[int, int, bytes, int], bool]:
        """Memo of whether a token fits a grammar position ``(unit, offset, value so far, token)`` of
        ``space``'s grammar: the same positions recur across rows, steps and prompts."""
        memo = self._fits.setdefault((space, bounds), {})
        if len(memo) > 1_000_000:  # bounded: positions include every number prefix seen
            memo.clear()
        return memo

    @cached_property
    def _cache_kwarg(self) -> str:
        """The base model's name for the key/value cache argument (``cache`` from transformers 5)."""
        params = inspect.signature(self.model.get_base_model().forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    @cached_property
    def _keeps_last_logits(self) -> bool:
        """Whether the base model can compute logits for the last position only (``logits_to_keep``)."""
        return "logits_to_keep" in inspect.signature(self.model.get_base_model().forward).parameters


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
    history = torch.stack(losses).float().cpu().tolist()
    tail = history[-max(1, min(10, len(history) // 10)) :]
    timed = max(t_end - t_timed, 1e-9)
    total, trainable = policy.num_params(), policy.num_params(trainable=True)
    fpt = 4.0 * total + 2.0 * trainable
    peak = peak_flops(dev)
    report = TrainReport(
        steps=steps,
        examples=n,
        skipped=skipped,
        examples_seen=examples_seen,
        tokens_seen=tokens_seen,
        wall_s=t_end - t_start,
        examples_per_s=examples_timed / timed,
        tokens_per_s=tokens_timed / timed,
        first_loss=history[0],
        final_loss=sum(tail) / len(tail),
        losses=history,
        device=str(dev),
        dtype="bfloat16" if cuda else "float32",
        compiled=False,
        flops_per_token=fpt,
        mfu=fpt * tokens_timed / timed / peak if peak else None,
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


# ---------------------------------------------------------------------------- constrained decoding


def _accepts(walker: _Walker, data: bytes) -> bool:
    """Whether the grammar, from ``walker``'s state, accepts every byte of ``data`` in turn."""
    w = _Walker.__new__(_Walker)  # a shallow copy of the grammar position ...
    w.__dict__.update(walker.__dict__)
    w.out = []  # ... that must not append to the original's output
    for b in data:
        if w.done or b not in w.allowed():
            return False
        w.feed(b)
    return True


def _choose(
    policy: HFPolicy,
    walker: _Walker,
    logits: torch.Tensor,
    temperature: float,
    u: float,
    top_k: int,
    memo: dict[tuple[int, int, bytes, int], bool],
) -> int | None:
    """A token for ``walker`` from one row of next-token ``logits``, or ``None`` if no token fits.

    Candidates: the tokens whose first byte the grammar allows here; the ``top_k`` of them with the
    highest logits are checked byte by byte, and only if none of those fits, all of them. The token
    is sampled from the softmax of the fitting ones' logits at ``temperature`` (0: greedy).
    """
    table = policy.token_bytes
    cands = policy.candidates(walker.allowed())
    if cands.numel() == 0:
        return None
    ranked = cands[torch.topk(logits[cands], top_k).indices] if cands.numel() > top_k else cands
    state = (walker.u, walker.k, walker.value)

    def fits(t: int) -> bool:
        key = (*state, t)
        ok = memo.get(key)
        if ok is None:
            data = table[t] or b""
            ok = memo[key] = len(data) == 1 or _accepts(walker, data)  # one byte: checked already
        return ok

    valid = [t for t in ranked.tolist() if fits(t)]
    if not valid and cands.numel() > top_k:  # the likeliest all break the grammar: try every candidate
        valid = [t for t in cands.tolist() if fits(t)]
    if not valid:
        return None
    scores = logits[valid].tolist()
    return valid[_pick(tuple(range(len(valid))), scores, temperature, u)]


def _finish(walker: _Walker) -> bool:
    """Feed the end of the action if it is all that is left; ``True`` once the walker is done."""
    if not walker.done and walker.allowed() == (EOS,):
        walker.feed(EOS)
    return walker.done


def _forward(policy: HFPolicy, ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
    """Last-position logits ``(B, vocab)`` (float32, on CPU) after feeding ``ids``, and the new cache."""
    kwargs: dict[str, Any] = {"input_ids": ids, "use_cache": True}
    if cache is not None:
        kwargs[policy._cache_kwarg] = cache
    if policy._keeps_last_logits:
        kwargs["logits_to_keep"] = 1
    with _autocast(policy.device):
        out = policy.model(**kwargs)
    cache = out["cache"] if "cache" in out else out["past_key_values"]
    return out.logits[:, -1, :].float().cpu(), cache


@torch.no_grad()
def decode(
    policy: HFPolicy,
    prompt: str,
    space: type[BaseModel],
    n: int,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    mask_bounds: bool = True,
    top_k: int = TOP_K,
) -> list[tuple[str, int]]:
    """``n`` action texts for ``prompt`` decoded in one batch, each with the number of tokens it took.

    Every row feeds one token per forward (rows that finished feed EOS, ignored). A row for which no
    token fits the grammar stops there (its text then fails validation).
    """
    grammar = action_grammar(space)
    budget = policy.context - grammar.max_len - 1
    if budget < 8:
        raise ValueError(f"context {policy.context} too small for actions of up to {grammar.max_len} bytes")
    eos = policy.tokenizer.eos_token_id
    memo = policy.fits_memo(space, mask_bounds)
    walkers = [_Walker(grammar, mask_bounds) for _ in range(n)]
    stuck = [False] * n
    counts = [0] * n
    was_training = policy.model.training
    policy.model.eval()
    try:
        ids = torch.tensor([prompt_ids(policy, prompt, budget)] * n, device=policy.device)
        logits, cache = _forward(policy, ids, None)
        for _ in range(grammar.max_len):
            uniforms = torch.rand(n, generator=generator).tolist()
            fed = []
            for i, w in enumerate(walkers):
                tok = (
                    None
                    if stuck[i] or _finish(w)
                    else _choose(policy, w, logits[i], temperature, uniforms[i], top_k, memo)
                )
                if tok is None:
                    stuck[i] = stuck[i] or not w.done
                    fed.append(eos)
                    continue
                for b in policy.token_bytes[tok] or b"":
                    w.feed(b)
                counts[i] += 1
                fed.append(tok)
            if all(stuck[i] or _finish(w) for i, w in enumerate(walkers)):
                break
            logits, cache = _forward(policy, torch.tensor(fed, device=policy.device)[:, None], cache)
    finally:
        policy.model.train(was_training)
    return [(w.text(), c) for w, c in zip(walkers, counts, strict=True)]


def sample_actions(
    policy: HFPolicy,
    prompt: str,
    space: type[BaseModel],
    n: int,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    mask_bounds: bool = True,
    threads: int | None = 1,
    top_k: int = TOP_K,
) -> list[str]:
    """Decode ``n`` grammar-conforming action texts (no validation), as :func:`distill.sample_actions`."""
    if n < 1:
        return []
    with _cpu_threads(policy.device, threads):
        rows = decode(
            policy,
            prompt,
            space,
            n,
            temperature=temperature,
            generator=generator,
            mask_bounds=mask_bounds,
            top_k=top_k,
        )
    return [text for text, _ in rows]


def propose(
    policy: HFPolicy,
    prompt: str,
    space: type[BaseModel],
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    max_tries: int = 5,
    mask_bounds: bool = True,
    threads: int | None = 1,
) -> tuple[BaseModel, ProposalStats]:
    """One schema-valid recipe of ``space`` for ``prompt``: validation, resampling and fallback exactly
    as :func:`distill.propose`, with the same :class:`~distill.ProposalStats`."""
    options: dict[str, Any] = {
        "temperature": temperature,
        "generator": generator,
        "mask_bounds": mask_bounds,
        "threads": threads,
    }

    def sample(n: int) -> list[str]:
        return sample_actions(policy, prompt, space, n, **options)

    return propose_with(sample, space, max_tries)


def valid_action_rate(
    policy: HFPolicy,
    prompts: Sequence[str],
    space: type[BaseModel],
    n: int,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    mask_bounds: bool = True,
    threads: int | None = 1,
) -> float:
    """Fraction of samples that validate on the first try (``n`` per prompt), as
    :func:`distill.valid_action_rate`."""
    ok = total = 0
    for prompt in prompts:
        texts = sample_actions(
            policy,
            prompt,
            space,
            n,
            temperature=temperature,
            generator=generator,
            mask_bounds=mask_bounds,
            threads=threads,
        )
        ok += sum(_validate(t, space)[0] is not None for t in texts)
        total += len(texts)
    return ok / total if total else 0.0
