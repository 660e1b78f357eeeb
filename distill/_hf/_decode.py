"""The hf backend's grammar-constrained decoding (multi-byte tokens checked byte by byte)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
import torch
from pydantic import BaseModel

from distill._byte_model import EOS
from distill._decode import (
    ProposalStats,
    _cpu_threads,
    _pick,
    _Walker,
    action_grammar,
    propose_with,
    valid_rate_with,
)

from ._base import (
    TOP_K,
    HFPolicy,
)
from ._train import (
    _autocast,
    prompt_ids,
)

log = structlog.get_logger(__name__)

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
    return propose_with(lambda n: sample_actions(policy, prompt, space, n, **options), space, max_tries)


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
    options: dict[str, Any] = {
        "temperature": temperature,
        "generator": generator,
        "mask_bounds": mask_bounds,
        "threads": threads,
    }
    return valid_rate_with(lambda p, k: sample_actions(policy, p, space, k, **options), prompts, space, n)
