"""The hf backend's base model, LoRA settings and :class:`HFPolicy` (adapter I/O, fingerprint)."""

from __future__ import annotations

import hashlib
import inspect
import json
import warnings
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import structlog
import torch
from pydantic import BaseModel
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from distill._st_header import parse_header

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
    header, _ = parse_header(data)
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
