"""``lmrecipe``: a surrogate of a language model's training recipe under a fixed compute budget.

Knobs: learning rate (log), width, depth, batch size, warm-up fraction, weight decay and the
schedule. The noise-free validation loss of an instance is a sum of terms with the structure
practitioners know, each with per-instance parameters::

    loss = E                                            # irreducible loss of the instance's data
         + A / N**0.34 + B / D**0.28                    # Chinchilla-style fit: N = 12 depth width^2
                                                        #   params, D = C / (6 N) tokens at compute C
         + k_aspect * log(width / depth / aspect*)^2    # too deep-and-thin or too shallow-and-wide
         + lr term(log lr - log lr*)                    # asymmetric: too high hurts 3x more
         + k_batch * log(batch / B_crit)^2              # below/above the critical batch size
         + warm-up term                                 # deep nets need warm-up (see below)
         + k_wd * (wd - wd*)^2 + schedule penalty

The best learning rate moves muP-like with width (``lr* ~ 1/width``) and with the square root of
the batch size (``lr* ~ sqrt(batch)``), around an instance shift. Deeper nets need more warm-up:
the fraction needed is ``need = min(0.3, w0 * depth / 24)``, a shortfall costs
``1.5 (depth / 12) (need - warmup)`` and an excess ``0.3 (warmup - need)``. Each instance draws
``E``, the compute ``C``, the lr shift, ``aspect*``, ``B_crit``, ``w0``, ``wd*`` and the schedule
penalties; the exponents and the directions of every shift are shared. :meth:`LMRecipe.optimum`
is the exact minimum over the space (every term but capacity+aspect reaches 0 inside the box;
those two are minimised per depth over integer widths).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from .surrogate import SurrogateTask

_A, _B, _ALPHA, _BETA = 406.4, 410.7, 0.34, 0.28
_WIDTH = (64, 4096)
_DEPTH = (2, 48)
_LR_BASE = math.log(1e-3)
"""log lr* at width 256 and batch 64, before the instance shift."""


class LMRecipe(BaseModel):
    """A language-model training recipe (the defaults are a plausible, untuned baseline)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lr: float = Field(default=3e-3, ge=1e-6, le=1.0, json_schema_extra={"log": True}, description="peak lr")
    width: int = Field(default=256, ge=_WIDTH[0], le=_WIDTH[1], json_schema_extra={"log": True})
    depth: int = Field(default=6, ge=_DEPTH[0], le=_DEPTH[1], description="transformer blocks")
    batch_size: int = Field(default=64, ge=8, le=2048, json_schema_extra={"log": True})
    warmup_frac: float = Field(default=0.0, ge=0.0, le=0.3, description="linear warm-up, fraction of steps")
    weight_decay: float = Field(default=0.0, ge=0.0, le=0.3)
    schedule: Literal["constant", "linear", "cosine"] = "constant"


class LMRecipeTask(SurrogateTask):
    """The ``lmrecipe`` family: tune an LM's recipe under the instance's compute budget (min loss)."""

    name: ClassVar[str] = "lmrecipe"
    space: ClassVar[type[BaseModel]] = LMRecipe

    def __init__(self, instance: str = "0") -> None:
        super().__init__(instance)
        rng = self.rng
        self.irreducible = rng.uniform(1.6, 2.2)
        self.compute = math.exp(rng.uniform(math.log(1e17), math.log(1e19)))
        self.lr_shift = rng.uniform(-1.2, 1.2)
        self.aspect = math.exp(rng.uniform(math.log(24.0), math.log(128.0)))
        self.critical_batch = round(math.exp(rng.uniform(math.log(32.0), math.log(512.0))))
        self.warmup_per_depth = rng.uniform(0.04, 0.12)
        self.best_wd = rng.uniform(0.02, 0.2)
        self.schedule_penalty = {
            "cosine": 0.0,
            "linear": rng.uniform(0.0, 0.02),
            "constant": rng.uniform(0.03, 0.08),
        }
        self._optimum = self.irreducible + self._best_shape()

    def best_log_lr(self, width: int, batch_size: int) -> float:
        """log lr* for a width and batch size: ~1/width (muP-like) and ~sqrt(batch)."""
        return _LR_BASE + self.lr_shift - math.log(width / 256) + 0.5 * math.log(batch_size / 64)

    def warmup_needed(self, depth: int) -> float:
        """The warm-up fraction a net of this depth needs (grows with depth, at most 0.3)."""
        return min(0.3, self.warmup_per_depth * depth / 24)

    def _shape(self, width: float, depth: int) -> float:
        """Capacity (params vs tokens at the instance's compute) plus the aspect-ratio term."""
        params = 12 * depth * width * width
        tokens = self.compute / (6 * params)
        capacity = _A / params**_ALPHA + _B / tokens**_BETA
        return capacity + 0.02 * math.log(width / depth / self.aspect) ** 2

    def _best_shape(self) -> float:
        """min over integer (width, depth) of :meth:`_shape` (convex in log width for each depth)."""
        best = math.inf
        lo, hi = math.log(_WIDTH[0]), math.log(_WIDTH[1])
        for depth in range(_DEPTH[0], _DEPTH[1] + 1):
            a, b = lo, hi
            for _ in range(80):  # golden-section search in log width
                m1, m2 = a + 0.382 * (b - a), a + 0.618 * (b - a)
                if self._shape(math.exp(m1), depth) < self._shape(math.exp(m2), depth):
                    b = m2
                else:
                    a = m1
            w = math.exp((a + b) / 2)
            for width in {max(_WIDTH[0], math.floor(w)), min(_WIDTH[1], math.ceil(w))}:
                best = min(best, self._shape(width, depth))
        return best

    def loss(self, recipe: BaseModel) -> float:
        """The noise-free validation loss (see the module docstring)."""
        assert isinstance(recipe, LMRecipe)
        gap = math.log(recipe.lr) - self.best_log_lr(recipe.width, recipe.batch_size)
        lr_term = (0.35 if gap > 0 else 0.12) * gap * gap
        batch_term = 0.03 * math.log(recipe.batch_size / self.critical_batch) ** 2
        need = self.warmup_needed(recipe.depth)
        short = max(0.0, need - recipe.warmup_frac)
        warm_term = 1.5 * (recipe.depth / 12) * short + 0.3 * max(0.0, recipe.warmup_frac - need)
        wd_term = 0.8 * (recipe.weight_decay - self.best_wd) ** 2
        return (
            self.irreducible
            + self._shape(recipe.width, recipe.depth)
            + lr_term
            + batch_term
            + warm_term
            + wd_term
            + self.schedule_penalty[recipe.schedule]
        )

    def optimum(self) -> float:
        """The exact minimum loss over the space."""
        return self._optimum

    def optimum_recipe(self) -> BaseModel:
        """A recipe reaching :meth:`optimum` (searched over integer widths and depths)."""
        best: tuple[float, int, int] = (math.inf, 0, 0)
        for depth in range(_DEPTH[0], _DEPTH[1] + 1):
            for width in range(_WIDTH[0], _WIDTH[1] + 1):
                value = self._shape(width, depth)
                if value < best[0]:
                    best = (value, width, depth)
        _, width, depth = best
        return LMRecipe(
            lr=math.exp(self.best_log_lr(width, self.critical_batch)),
            width=width,
            depth=depth,
            batch_size=self.critical_batch,
            warmup_frac=self.warmup_needed(depth),
            weight_decay=self.best_wd,
            schedule="cosine",
        )
