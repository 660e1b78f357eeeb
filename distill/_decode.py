"""Constrained decoding: the policy writes an action that always parses and usually validates.

The action grammar is derived from the pydantic search space (see ``distill._prompt``)::

    {"<key1>":<value1>,"<key2>":<value2>,...}<EOS>

Structural text (braces, keys, colons, commas, the float's ``.`` and ``e``, the rest of a
Literal once its prefix is unique) is **forced**: fed to the model without sampling. At each free
position the logits are masked to what the grammar allows there:

* float  ``[-]D.DDe[+-]DD`` -- first digit 1-9 (a 0 only for ``0.00e+00`` when 0 is in range),
  ``-`` only when the lower bound is negative, the exponent limited to the decades the bounds reach
  (``1e-4 <= lr <= 0.3``: ``e-04`` .. ``e-01``);
* int    ``[-]digits`` -- no leading zeros, as many digits as values in the bounds can have
  (``16 <= width <= 512``: 2 or 3), ended by the next structural byte (``,`` or ``}``);
* choice (``Literal``/``bool``) -- the next bytes of the JSON texts that still match.

That grammar fixes the syntax and the magnitudes, not the exact bounds (``7.00e-01`` or ``640``
above still pass it). With ``mask_bounds=True`` (the default) the digits are narrowed further, token
by token, to those from which some completion still lies inside the field's bounds (``4`` then
``e+01`` is refused for ``x <= 15``): a sample is then in bounds by construction, and the model's
distribution is only renormalised where it strays. With ``mask_bounds=False`` the bounds are left to
the model: ``valid_action_rate(..., mask_bounds=False)`` measures what the model itself has learned.

Either way the parsed text is validated with pydantic (model validators, cross-field rules), and
:func:`propose` resamples on a validation failure (up to ``max_tries`` samples in all), then clips
the first sample into bounds (or uses the space's defaults when clipping is not enough) and says so
in :class:`ProposalStats`.

Samples are decoded as a batch with a key/value cache: the prompt is prefilled once, then every row
advances by the same number of tokens per forward (the shortest pending forced run, or one sampled
token), so rows stay aligned while their texts diverge.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

from distill._byte_model import EOS, Policy
from distill._prompt import (
    MAX_INT_DIGITS,
    FieldSpec,
    clip_value,
    encode_prompt,
    format_float_toward,
    render_action,
    space_fields,
)

_DIGITS = tuple(range(ord("0"), ord("9") + 1))
_NONZERO = tuple(range(ord("1"), ord("9") + 1))
_ZERO, _MINUS, _DOT, _E = ord("0"), ord("-"), ord("."), ord("e")
_ALL_EXPONENTS = tuple(f"{e:+03d}".encode() for e in range(-99, 100))


# ---------------------------------------------------------------------------- grammar


@dataclass(frozen=True)
class _Unit:
    """One piece of the action: fixed bytes, or the value slot of one field.

    Value slots also carry the magnitude limits derived from the field's bounds: a float's allowed
    exponent texts (``b"-04"``), an int's digit counts for positive and negative values.
    """

    fixed: tuple[int, ...] = ()
    kind: str = ""  # "float" | "int" | "choice" for value slots
    neg: bool = False  # a leading '-' is allowed
    pos: bool = True  # values > 0 are allowed
    zero: bool = False  # the value 0 is allowed
    pos_digits: tuple[int, int] | None = None  # int: (min, max) digits of a value > 0; None: no such values
    neg_digits: tuple[int, int] | None = None  # int: (min, max) digits of |value| for a value < 0
    exponents: tuple[bytes, ...] = ()  # float: allowed exponent texts
    choices: tuple[bytes, ...] = ()  # choice: JSON text of each option
    spec: FieldSpec | None = None  # float / int: the field (its exact bounds)

    @property
    def max_len(self) -> int:
        """Longest text of this unit."""
        if self.fixed:
            return len(self.fixed)
        if self.kind == "float":
            return 8 + self.neg
        if self.kind == "int":
            return max((self.pos_digits or (1, 1))[1], 1 + (self.neg_digits or (0, 0))[1])
        return max(len(c) for c in self.choices)


@dataclass(frozen=True)
class Grammar:
    """The compiled action grammar of a space: units in order and the longest action in tokens."""

    units: tuple[_Unit, ...]
    max_len: int


def _in_range(spec: FieldSpec, x: float) -> bool:
    lo_ok = spec.lo is None or (x > spec.lo if spec.lo_open else x >= spec.lo)
    hi_ok = spec.hi is None or (x < spec.hi if spec.hi_open else x <= spec.hi)
    return lo_ok and hi_ok


def _exponent(text: str) -> int:
    return int(text.split("e")[1])


def _float_unit(spec: FieldSpec) -> _Unit:
    """A float slot: ``[-]D.DDe[+-]DD`` with the exponent limited to what the bounds can reach."""
    zero = _in_range(spec, 0.0)
    neg = spec.lo is None or spec.lo < 0
    pos = spec.hi is None or spec.hi > 0
    if spec.lo is None or spec.hi is None:
        return _Unit(kind="float", neg=neg, pos=pos, zero=zero, exponents=_ALL_EXPONENTS, spec=spec)
    e_max = _exponent(format_float_toward(max(abs(spec.lo), abs(spec.hi)), up=False))
    crosses = spec.lo <= 0 <= spec.hi
    e_min = -99 if crosses else _exponent(format_float_toward(min(abs(spec.lo), abs(spec.hi)), up=True))
    exps = {f"{e:+03d}".encode() for e in range(max(e_min, -99), min(e_max, 99) + 1)}
    if zero:
        exps.add(b"+00")
    return _Unit(kind="float", neg=neg, pos=pos, zero=zero, exponents=tuple(sorted(exps)), spec=spec)


def _int_bounds(spec: FieldSpec) -> tuple[int | None, int | None]:
    """Inclusive integer bounds of an int field (``None``: unbounded)."""
    lo = None if spec.lo is None else math.floor(spec.lo) + 1 if spec.lo_open else math.ceil(spec.lo)
    hi = None if spec.hi is None else math.ceil(spec.hi) - 1 if spec.hi_open else math.floor(spec.hi)
    return lo, hi


def _int_unit(spec: FieldSpec) -> _Unit:
    """An int slot: ``[-]digits``, no leading zeros, digit counts limited by the bounds."""
    lo, hi = _int_bounds(spec)
    pos = neg = None
    if hi is None or hi >= 1:
        smallest = max(lo, 1) if lo is not None else 1
        pos = (len(str(smallest)), len(str(hi)) if hi is not None else MAX_INT_DIGITS)
    if lo is None or lo <= -1:
        smallest = -min(hi, -1) if hi is not None else 1
        neg = (len(str(smallest)), len(str(-lo)) if lo is not None else MAX_INT_DIGITS)
    zero = (lo is None or lo <= 0) and (hi is None or hi >= 0)
    return _Unit(
        kind="int",
        neg=neg is not None,
        pos=pos is not None,
        zero=zero,
        pos_digits=pos,
        neg_digits=neg,
        spec=spec,
    )


@lru_cache(maxsize=256)
def action_grammar(space: type[BaseModel]) -> Grammar:
    """Compile (and cache) the action grammar of ``space``."""
    units: list[_Unit] = []
    for i, spec in enumerate(space_fields(space)):
        key = ("," if i else "{") + json.dumps(spec.key, ensure_ascii=True) + ":"
        units.append(_Unit(fixed=tuple(key.encode())))
        if spec.kind == "float":
            units.append(_float_unit(spec))
        elif spec.kind == "int":
            units.append(_int_unit(spec))
        else:
            units.append(_Unit(kind="choice", choices=tuple(c.encode() for c in spec.choices)))
    units.append(_Unit(fixed=(*b"}", EOS)))
    return Grammar(tuple(units), sum(u.max_len for u in units))


def _continuations(unit: _Unit, value: bytes) -> tuple[tuple[int, ...], bool]:
    """Bytes that may extend a value slot holding ``value``, and whether the value may end here."""
    if unit.kind == "choice":
        nxt = sorted({c[len(value)] for c in unit.choices if len(c) > len(value) and c.startswith(value)})
        return tuple(nxt), value in unit.choices
    signed = value[:1] == b"-"
    body = value[1:] if signed else value
    k = len(body)
    if k == 0:  # the first digit, or a sign
        first: tuple[int, ...] = ()
        if signed or unit.pos:
            first = _NONZERO
        if unit.zero and not signed:
            first = (_ZERO, *first)
        return ((*first, _MINUS) if unit.neg and not signed else first), False
    if body[:1] == b"0":  # zero is written one way only: 0 / 0.00e+00
        if unit.kind == "int":
            return (), True
        return ((), True) if k == 8 else ((b"0.00e+00"[k],), False)
    if unit.kind == "int":
        lo, hi = (unit.neg_digits if signed else unit.pos_digits) or (1, 1)
        return (_DIGITS if k < hi else ()), k >= lo
    if k == 1:
        return (_DOT,), False
    if k in (2, 3):
        return _DIGITS, False
    if k == 4:
        return (_E,), False
    if k < 8:
        exp = body[5:]
        return tuple(sorted({e[len(exp)] for e in unit.exponents if e.startswith(exp)})), False
    return (), True


def _float_value(k: int, e: int) -> float:
    """What the text of 3-digit mantissa ``k`` (100..999) and exponent ``e`` parses to."""
    return float(f"{k // 100}.{k % 100:02d}e{e:+03d}")


def _float_feasible(unit: _Unit, value: bytes) -> bool:
    """Whether some completion of the float text ``value`` lies within the field's bounds."""
    spec = unit.spec
    assert spec is not None
    signed = value[:1] == b"-"
    body = value[1:] if signed else value
    if body[:1] == b"0":
        return _in_range(spec, 0.0)
    # bounds on the magnitude m: value = m (or -m when signed)
    inf = math.inf
    if signed:
        a, a_open = (-spec.hi, spec.hi_open) if spec.hi is not None else (-inf, False)
        b, b_open = (-spec.lo, spec.lo_open) if spec.lo is not None else (inf, False)
    else:
        a, a_open = (spec.lo, spec.lo_open) if spec.lo is not None else (-inf, False)
        b, b_open = (spec.hi, spec.hi_open) if spec.hi is not None else (inf, False)
    known = "".join(chr(body[i]) for i in (0, 2, 3) if i < len(body))
    k_lo, k_hi = int(known.ljust(3, "0")) if known else 100, int(known.ljust(3, "9")) if known else 999
    exps = sorted((int(e) for e in unit.exponents if e.startswith(body[5:])), reverse=True)

    def above_a(x: float) -> bool:
        return x > a if a_open else x >= a

    def below_b(x: float) -> bool:
        return x < b if b_open else x <= b

    for e in exps:
        if not above_a(_float_value(k_hi, e)) or not below_b(_float_value(k_lo, e)):
            continue
        # the smallest mantissa whose value clears the lower bound, then: is it under the upper one?
        k = k_lo
        if not above_a(_float_value(k, e)):
            q = a / 10.0 ** (e - 2)
            k = k_hi if q >= k_hi else max(k_lo, math.ceil(q))
            while k > k_lo and above_a(_float_value(k - 1, e)):
                k -= 1
            while k < k_hi and not above_a(_float_value(k, e)):
                k += 1
        if above_a(_float_value(k, e)) and below_b(_float_value(k, e)):
            return True
    return False


def _int_feasible(unit: _Unit, value: bytes) -> bool:
    """Whether some completion of the int text ``value`` lies within the field's bounds."""
    assert unit.spec is not None
    lo, hi = _int_bounds(unit.spec)
    signed = value[:1] == b"-"
    body = value[1:] if signed else value
    if body == b"0":
        return (lo is None or lo <= 0) and (hi is None or hi >= 0)
    digits = unit.neg_digits if signed else unit.pos_digits
    if digits is None:
        return False
    k = len(body)
    prefix = int(body) if body else 0
    for more in range(0 if k else 1, digits[1] - k + 1):
        scale = 10**more
        m_lo = prefix * scale if k else 10 ** (more - 1)
        m_hi = prefix * scale + scale - 1
        v_lo, v_hi = (-m_hi, -m_lo) if signed else (m_lo, m_hi)
        if (hi is None or v_lo <= hi) and (lo is None or v_hi >= lo):
            return True
    return False


@lru_cache(maxsize=1 << 16)
def _bounded_continuations(unit: _Unit, value: bytes) -> tuple[tuple[int, ...], bool]:
    """:func:`_continuations` narrowed to what can still end inside the field's bounds.

    Falls back to the plain grammar if nothing can (a range with no 3-significant-digit value).
    """
    cont, can_end = _continuations(unit, value)
    if unit.kind == "choice":
        return cont, can_end
    feasible = _float_feasible if unit.kind == "float" else _int_feasible
    narrowed = tuple(t for t in cont if feasible(unit, value + bytes((t,))))
    if can_end:
        assert unit.spec is not None
        number = float(value) if unit.kind == "float" else int(value)
        can_end = _in_range(unit.spec, number)
    return (narrowed, can_end) if narrowed or can_end else _continuations(unit, value)


class _Walker:
    """Where one sample is in the grammar: which tokens may come next, and advancing by one.

    With ``bounds`` the numbers are also kept inside the fields' bounds, token by token.
    """

    def __init__(self, grammar: Grammar, bounds: bool = True) -> None:
        self.units = grammar.units
        self.bounds = bounds
        self.u = 0  # current unit
        self.k = 0  # bytes of the current fixed unit emitted
        self.value = b""  # bytes of the current value slot
        self.out: list[int] = []

    @property
    def done(self) -> bool:
        """True once EOS was emitted."""
        return self.u >= len(self.units)

    def allowed(self) -> tuple[int, ...]:
        """Token ids allowed at the current position."""
        unit = self.units[self.u]
        if unit.fixed:
            return (unit.fixed[self.k],)
        if self.bounds:
            cont, can_end = _bounded_continuations(unit, self.value)
        else:
            cont, can_end = _continuations(unit, self.value)
        # a value ends with the next unit's first byte (``,`` or ``}``), which is never a value byte
        return (*cont, self.units[self.u + 1].fixed[0]) if can_end else cont

    def feed(self, tok: int) -> None:
        """Advance by ``tok`` (which must be in :meth:`allowed`)."""
        self.out.append(tok)
        unit = self.units[self.u]
        if not unit.fixed:
            if tok in _continuations(unit, self.value)[0]:
                self.value += bytes((tok,))
                return
            self.u, self.k, self.value = self.u + 1, 0, b""  # ``tok`` is the next fixed unit's first byte
            unit = self.units[self.u]
        self.k += 1
        if self.k == len(unit.fixed):
            self.u, self.k = self.u + 1, 0

    def forced(self) -> list[int]:
        """Feed and return the run of tokens that are the only choice from here."""
        run: list[int] = []
        while not self.done:
            allowed = self.allowed()
            if len(allowed) != 1:
                break
            self.feed(allowed[0])
            run.append(allowed[0])
        return run

    def text(self) -> str:
        """The action text emitted so far (without EOS)."""
        return bytes(t for t in self.out if t < 256).decode("utf-8", "replace")


# ---------------------------------------------------------------------------- sampling


def _pick(allowed: tuple[int, ...], logits: list[float], temperature: float, u: float) -> int:
    """Sample one of ``allowed`` from ``softmax(logits[allowed] / temperature)`` using uniform ``u``.

    ``temperature <= 0`` is greedy (``u`` unused). Masking = renormalising over the allowed tokens.
    """
    scores = [logits[t] for t in allowed]
    top = max(scores)
    if temperature <= 0:
        return allowed[scores.index(top)]
    weights = [math.exp((s - top) / temperature) for s in scores]
    target = u * sum(weights)
    acc = 0.0
    for tok, w in zip(allowed, weights, strict=True):
        acc += w
        if target < acc:
            return tok
    return allowed[-1]


def _device(model: Policy) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def _cpu_threads(device: torch.device, threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads on CPU, restoring the previous setting afterwards.

    Decoding feeds one token (or a short forced run) per forward: the matrices are tiny and extra
    threads only add synchronisation, which is ruinous when cores are shared with other processes.
    """
    before = torch.get_num_threads()
    change = device.type == "cpu" and threads is not None and threads != before
    if change:
        torch.set_num_threads(threads)  # type: ignore[arg-type]
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(before)


@torch.no_grad()
def sample_actions(
    model: Policy,
    prompt: str,
    space: type[BaseModel],
    n: int,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    mask_bounds: bool = True,
    threads: int | None = 1,
) -> list[str]:
    """Decode ``n`` grammar-conforming action texts for ``prompt`` in one batch (no validation).

    ``temperature`` 0 is greedy. ``generator`` (a CPU ``torch.Generator``) makes it reproducible.
    ``mask_bounds``: also mask, token by token, the digits that would leave a field's bounds (see
    the module doc); ``False`` leaves the bounds to the model. On CPU the decode runs with
    ``threads`` intra-op threads (``None``: leave torch's setting).
    """
    if n < 1:
        return []
    grammar = action_grammar(space)
    cfg = model.config
    budget = cfg.block_size - 2 - grammar.max_len
    if budget < 16:
        raise ValueError(
            f"block_size {cfg.block_size} too small for actions of up to {grammar.max_len} tokens"
        )
    device = _device(model)
    was_training = model.training
    model.eval()
    with _cpu_threads(device, threads):
        try:
            return _decode(model, prompt, grammar, budget, n, temperature, generator, mask_bounds, device)
        finally:
            model.train(was_training)


def _decode(
    model: Policy,
    prompt: str,
    grammar: Grammar,
    budget: int,
    n: int,
    temperature: float,
    generator: torch.Generator | None,
    mask_bounds: bool,
    device: torch.device,
) -> list[str]:
    """Prefill the prompt once, then advance all rows in lockstep (see the module doc)."""
    walkers = [_Walker(grammar, mask_bounds) for _ in range(n)]
    head = walkers[0].forced()  # the action's forced start ('{"key":'), the same for every row
    for w in walkers[1:]:
        w.forced()
    fed = [t for t in head if t != EOS]  # EOS (an all-forced action) is never fed
    prompt_ids = torch.tensor([encode_prompt(prompt, budget) + fed], dtype=torch.long, device=device)
    logits, cache = model.forward_cached(prompt_ids)  # prompt and forced start in one forward
    cache = cache.expand(n)
    last = logits.float().cpu().expand(n, -1)  # logits after each row's last fed token
    queues: list[list[int]] = [[] for _ in range(n)]
    rows = list(range(n))  # sample index of each batch row
    while rows:
        # 1) rows with nothing left to feed need a sampled token
        need = [r for r, i in enumerate(rows) if not queues[i]]
        if need:
            # at most a dozen tokens are allowed at a free position: sample among them in Python
            # (cheaper than masking the whole vocabulary), with uniforms from the seeded generator
            table = last.tolist()
            uniforms = torch.rand(len(need), generator=generator).tolist()
            for r, u in zip(need, uniforms, strict=True):
                i = rows[r]
                tok = _pick(walkers[i].allowed(), table[r], temperature, u)
                walkers[i].feed(tok)
                queues[i] = [tok, *walkers[i].forced()]
        # 2) drop finished rows (nothing after the last sampled token needs logits; EOS is never fed)
        for i in rows:
            if walkers[i].done:
                queues[i] = []
        keep = [r for r, i in enumerate(rows) if queues[i]]
        if not keep:
            break
        if len(keep) < len(rows):
            cache = cache.select(torch.tensor(keep, device=device))
            rows = [rows[r] for r in keep]
        # 3) every row feeds the same number of its pending tokens
        step = min(len(queues[i]) for i in rows)
        chunk = torch.tensor([queues[i][:step] for i in rows], dtype=torch.long, device=device)
        for i in rows:
            del queues[i][:step]
        logits, cache = model.forward_cached(chunk, cache)
        last = logits.float().cpu()
    return [w.text() for w in walkers]


def _validate(text: str, space: type[BaseModel]) -> tuple[BaseModel | None, str | None]:
    """The recipe, or ``None`` and a one-line reason (``"width: Input should be ... (input 640)"``)."""
    try:
        return space.model_validate(json.loads(text)), None
    except json.JSONDecodeError as exc:
        return None, f"not JSON: {exc}"[:300]
    except ValidationError as exc:
        parts = [
            f"{'.'.join(map(str, e['loc'])) or '(recipe)'}: {e['msg']} (input {e.get('input')!r})"
            for e in exc.errors(include_url=False)
        ]
        return None, "; ".join(parts)[:300]


@dataclass(frozen=True)
class ProposalStats:
    """How a proposal came about.

    ``tries``: samples drawn until one validated (``max_tries`` if none did); ``first_try_valid``;
    ``fallback``: ``None``, ``"clipped"`` (first sample clipped into bounds) or ``"default"`` (the
    space's defaults); ``text``: the action text of the returned recipe; ``errors``: validation
    messages of rejected samples (each cut to 300 chars).
    """

    tries: int
    first_try_valid: bool
    fallback: str | None
    text: str
    latency_s: float
    errors: tuple[str, ...] = field(default=())


def propose(
    model: Policy,
    prompt: str,
    space: type[BaseModel],
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    max_tries: int = 5,
    mask_bounds: bool = True,
    threads: int | None = 1,
) -> tuple[BaseModel, ProposalStats]:
    """Sample one valid recipe of ``space`` for ``prompt`` (always returns a schema-valid recipe).

    One sample first; if it fails validation, ``max_tries - 1`` more in one batch; if none validates,
    the first is clipped into bounds (``fallback="clipped"``), and if even that fails (a model
    validator), the space's defaults are used (``fallback="default"``). ``mask_bounds`` and
    ``threads``: as in :func:`sample_actions` (with the bounds masked, validation fails only on model
    validators or on a range that holds no 3-significant-digit float).
    """
    options: dict[str, Any] = {
        "temperature": temperature,
        "generator": generator,
        "mask_bounds": mask_bounds,
        "threads": threads,
    }
    return propose_with(lambda n: sample_actions(model, prompt, space, n, **options), space, max_tries)


def propose_with(
    sample: Callable[[int], list[str]], space: type[BaseModel], max_tries: int = 5
) -> tuple[BaseModel, ProposalStats]:
    """:func:`propose`'s validation, resampling and fallback around any sampler of action texts.

    ``sample(n)`` returns ``n`` decoded action texts; other backends (``distill._hf``) share this.
    """
    t0 = time.perf_counter()
    errors: list[str] = []
    texts = sample(1)
    checked = [_validate(texts[0], space)]
    if checked[0][0] is None and max_tries > 1:
        more = sample(max_tries - 1)
        texts += more
        checked += [_validate(t, space) for t in more]
    for tries, (text, (recipe, err)) in enumerate(zip(texts, checked, strict=True), start=1):
        if recipe is not None:
            stats = ProposalStats(tries, tries == 1, None, text, time.perf_counter() - t0, tuple(errors))
            return recipe, stats
        errors.append(err or "")
    fallback = "clipped"
    try:
        raw = json.loads(texts[0])
        clipped = {s.key: clip_value(s, raw[s.key]) for s in space_fields(space) if s.key in raw}
        recipe = space.model_validate(clipped)
    except (ValidationError, json.JSONDecodeError, TypeError):
        fallback = "default"
        recipe = space()
    text = render_action(recipe, space)
    return recipe, ProposalStats(len(texts), False, fallback, text, time.perf_counter() - t0, tuple(errors))


def valid_action_rate(
    model: Policy,
    prompts: Sequence[str],
    space: type[BaseModel],
    n: int,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    mask_bounds: bool = True,
    threads: int | None = 1,
) -> float:
    """Fraction of samples that validate on the first try: ``n`` samples per prompt, no resampling.

    Decoded as :func:`propose` decodes (``mask_bounds=True``: what agents get); with
    ``mask_bounds=False`` it measures how well the model itself has learned the bounds.
    """
    options: dict[str, Any] = {
        "temperature": temperature,
        "generator": generator,
        "mask_bounds": mask_bounds,
        "threads": threads,
    }
    return valid_rate_with(lambda p, k: sample_actions(model, p, space, k, **options), prompts, space, n)


def valid_rate_with(
    sample: Callable[[str, int], list[str]], prompts: Sequence[str], space: type[BaseModel], n: int
) -> float:
    """:func:`valid_action_rate` around any sampler: ``sample(prompt, k)`` returns ``k`` action texts."""
    ok = total = 0
    for prompt in prompts:
        for text in sample(prompt, n):
            ok += _validate(text, space)[0] is not None
            total += 1
    return ok / total if total else 0.0
