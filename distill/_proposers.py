"""Published models as ``agents`` proposers: the ``hive.policies`` loaders and :func:`load_published`.

Three backends, selected by ``meta.json``'s ``backend``:

* ``history`` (the default model, :mod:`distill.model`): conditioned on the instance's trials;
* ``byte`` (the first model; ``backend`` absent means byte): the byte-level policy, prompted with
  the instance's best trial so far as the parent (its only view of the history);
* ``hf``: a LoRA adapter on a local causal LM, prompted as ``byte``; it needs the same base model
  on this machine (env ``HIVE_HF_MODEL``) and the ``hf`` extra.

Every loader gets *verified* bytes (sha256 and signature checked by the caller), bounds the
model's dimensions before allocating and raises ``ValueError`` on anything it refuses.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from pydantic import BaseModel

from agents._proposer import History, Proposer

from . import _hf
from ._byte_model import Policy
from ._decode import propose as byte_propose
from ._prompt import render_prompt
from .model import BACKEND, load_proposer, parse_meta

HF_MODEL_ENV = "HIVE_HF_MODEL"


class TextPolicyProposer(Proposer):
    """A text policy (``byte`` or ``hf``) prompted with the instance's best trial as the parent."""

    name: ClassVar[str] = "model"

    def __init__(self, model: Any, version: int = 0, temperature: float = 1.0) -> None:
        self.model = model
        self.version = version
        self.temperature = temperature

    def propose(self, history: History, rng: random.Random) -> BaseModel:
        """Constrained decoding of a recipe of ``history.task.space`` (always schema-valid)."""
        best = history.best
        prompt = render_prompt(
            history.task.ref,
            dict(best.recipe) if best else None,
            best.objective if best else None,
            list(history.guidance)[-3:],
        )
        gen = torch.Generator().manual_seed(rng.randrange(2**31 - 1))
        fn: Any = _hf.propose if isinstance(self.model, _hf.HFPolicy) else byte_propose
        recipe, _stats = fn(
            self.model, prompt, history.task.space, generator=gen, temperature=self.temperature
        )
        return history.task.validate_recipe(recipe)


def _named(model: Any, version: int) -> Proposer:
    cls = type(f"TextPolicyProposerV{version}", (TextPolicyProposer,), {"name": f"model-v{version}"})
    proposer: Proposer = cls(model, version)
    return proposer


def load_byte(weights: bytes, meta: bytes | Mapping[str, Any], version: int) -> Proposer:
    """The ``hive.policies`` loader of the ``byte`` backend (the config is bounded before allocating)."""
    parse_meta(meta)
    try:
        model = Policy.from_bytes(weights)
    except Exception as e:  # safetensors refuses pickles, truncation, garbage; bounds refuse forgeries
        raise ValueError(f"weights are not a valid safetensors policy: {type(e).__name__}: {e}") from None
    return _named(model.eval(), version)


def load_hf(weights: bytes, meta: bytes | Mapping[str, Any], version: int) -> Proposer:
    """The ``hive.policies`` loader of the ``hf`` backend: the adapter on env ``HIVE_HF_MODEL``'s base."""
    info = parse_meta(meta)
    base = os.environ.get(HF_MODEL_ENV)
    if not base:
        raise ValueError(f"model v{version} is an hf adapter: set {HF_MODEL_ENV} to its base model")
    try:
        _hf.require_extra()
    except _hf.MissingExtra as e:
        raise ValueError(f"model v{version}: {e}") from None
    fingerprint = info.get("base_fingerprint")
    if not isinstance(fingerprint, str):
        raise ValueError(f"model v{version} is an hf adapter whose meta has no base_fingerprint")
    try:
        model = _hf.HFPolicy.from_bytes(base, weights, fingerprint=fingerprint)
    except ValueError as e:
        raise ValueError(f"model v{version} refused: {e}") from None
    except Exception as e:
        raise ValueError(f"model v{version}: not a valid adapter: {type(e).__name__}: {e}") from None
    return _named(model, version)


LOADERS = {BACKEND: load_proposer, "byte": load_byte, "hf": load_hf}
"""The backends this package provides, by ``meta["backend"]``."""


def load_published(weights: bytes, meta: bytes | Mapping[str, Any], version: int) -> Proposer:
    """A published model (verified weights + ``meta.json``) as a proposer named ``model-v<version>``.

    Dispatches on ``meta["backend"]`` (absent: ``byte``); ``ValueError`` for an unknown backend or
    anything a loader refuses."""
    info = parse_meta(meta)
    backend = info.get("backend", "byte")
    loader = LOADERS.get(backend) if isinstance(backend, str) else None
    if loader is None:
        raise ValueError(f"model v{version} has an unknown backend {backend!r} ({', '.join(LOADERS)})")
    return loader(weights, info, version)
