"""``augreg``: a surrogate of fine-tuning an image classifier, where regularisation trades off
against the instance's (hidden) dataset size.

Each instance draws a dataset size ``n`` (log-uniform, 1e3 to 1e6 examples) and reports the
noise-free validation error as a function of the recipe. The shape shared by every instance is
one latent variable: ``s = (log10 n - 3) / 3`` (0 = small data, 1 = large data) moves *every*
knob's optimum at once, in known directions:

* dropout* = 0.45 (1 - s) + jitter, label smoothing* = 0.15 (1 - s) + jitter;
* log10 weight decay* = -2 - 3 s + jitter (small data wants strong decay);
* log epochs* = log 100 - 2.3 s + jitter (small data wants many passes over it);
* augmentation: which policy is best depends on ``s`` (``randaug`` on small data, ``flip`` in
  the middle, ``none`` on large), and ``aug_strength`` only matters when it is not ``none``
  (a conditional knob): strength* = 0.9 - 0.7 s + jitter;
* ``pretrained`` helps by ``0.25 (1 - s)`` minus a per-instance domain-mismatch cost.

So a few trials reveal how much regularisation the instance wants, and that tells where every
other knob should go: knowledge that transfers between instances although their optima differ.
Observation noise is 2% of the instance's baseline-to-optimum gap per evaluation (larger datasets
have smaller gaps to gain and larger, more precise validation splits). Each term is a weighted
squared distance (in natural units, log for decay and epochs) plus the
categorical penalties; :meth:`AugRegTask.optimum` is its exact minimum over the space.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from .surrogate import SurrogateTask

AUGMENTATIONS: tuple[str, ...] = ("none", "flip", "randaug", "mixup")
_EPOCHS = (1, 300)


class AugRegRecipe(BaseModel):
    """A fine-tuning recipe (the defaults are a plausible, untuned baseline)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    augment: Literal["none", "flip", "randaug", "mixup"] = "flip"
    aug_strength: float = Field(default=0.5, ge=0.0, le=1.0, description="ignored when augment is none")
    dropout: float = Field(default=0.1, ge=0.0, le=0.6)
    weight_decay: float = Field(default=1e-4, ge=1e-7, le=1e-1, json_schema_extra={"log": True})
    label_smoothing: float = Field(default=0.0, ge=0.0, le=0.3)
    epochs: int = Field(default=10, ge=_EPOCHS[0], le=_EPOCHS[1], json_schema_extra={"log": True})
    pretrained: bool = False


class AugRegTask(SurrogateTask):
    """The ``augreg`` family: regularise a classifier for the instance's hidden dataset size (min error)."""

    name: ClassVar[str] = "augreg"
    space: ClassVar[type[BaseModel]] = AugRegRecipe
    metric: ClassVar[str] = "val_error"

    def __init__(self, instance: str = "0") -> None:
        super().__init__(instance)
        rng = self.rng
        self.dataset_size = round(10 ** rng.uniform(3.0, 6.0))
        s = (math.log10(self.dataset_size) - 3) / 3
        self.size_position = s
        self.floor = rng.uniform(0.05, 0.25) + 0.15 * (1 - s)
        self.best_dropout = min(0.6, max(0.0, 0.45 * (1 - s) + rng.uniform(-0.05, 0.05)))
        self.best_smoothing = min(0.3, max(0.0, 0.15 * (1 - s) + rng.uniform(-0.03, 0.03)))
        self.best_log_wd = -2.0 - 3.0 * s + rng.uniform(-0.4, 0.4)
        self.best_log_epochs = math.log(100.0) - 2.3 * s + rng.uniform(-0.3, 0.3)
        self.best_strength = min(1.0, max(0.0, 0.9 - 0.7 * s + rng.uniform(-0.1, 0.1)))
        # Which augmentation wins moves with s: randaug (small), flip (middle), none (large).
        self.aug_penalty = {
            "none": 0.12 * (1 - s) ** 2,
            "flip": 0.05 * abs(s - 0.5),
            "randaug": 0.08 * s * s,
            "mixup": 0.02 + 0.05 * s + rng.uniform(0.0, 0.02),
        }
        self.pretrained_gain = 0.25 * (1 - s) - rng.uniform(0.0, 0.1)
        self._optimum = (
            self.floor
            + self._best_epochs_term()
            + min(self._augment_terms())
            + min(0.0, -self.pretrained_gain)
        )
        # Measurement noise: 2% of the baseline's gap (a big dataset has a big, precise val split).
        self.noise_sd = 0.02 * (self.loss(self.space()) - self._optimum)

    def _epochs_term(self, epochs: int) -> float:
        return 0.03 * (math.log(epochs) - self.best_log_epochs) ** 2

    def _best_epochs_term(self) -> float:
        """The epochs term at its best integer number of epochs (convex in log epochs)."""
        e = math.exp(self.best_log_epochs)
        candidates = {min(_EPOCHS[1], max(_EPOCHS[0], v)) for v in (math.floor(e), math.ceil(e))}
        return min(self._epochs_term(v) for v in candidates)

    def _augment_terms(self) -> list[float]:
        """The augmentation term of each policy at its best strength (strength* is in the box)."""
        return [self.aug_penalty[a] for a in AUGMENTATIONS]

    def loss(self, recipe: BaseModel) -> float:
        """The noise-free validation error (see the module docstring)."""
        assert isinstance(recipe, AugRegRecipe)
        augment = self.aug_penalty[recipe.augment]
        if recipe.augment != "none":
            augment += 0.15 * (recipe.aug_strength - self.best_strength) ** 2
        return (
            self.floor
            + 0.5 * (recipe.dropout - self.best_dropout) ** 2
            + 0.8 * (recipe.label_smoothing - self.best_smoothing) ** 2
            + 0.01 * (math.log10(recipe.weight_decay) - self.best_log_wd) ** 2
            + self._epochs_term(recipe.epochs)
            + augment
            - (self.pretrained_gain if recipe.pretrained else 0.0)
        )

    def optimum(self) -> float:
        """The exact minimum validation error over the space."""
        return self._optimum

    def optimum_recipe(self) -> BaseModel:
        """A recipe reaching :meth:`optimum`."""
        terms = self._augment_terms()
        e = math.exp(self.best_log_epochs)
        epochs = min(
            {min(_EPOCHS[1], max(_EPOCHS[0], v)) for v in (math.floor(e), math.ceil(e))},
            key=self._epochs_term,
        )
        return AugRegRecipe(
            augment=AUGMENTATIONS[terms.index(min(terms))],  # type: ignore[arg-type]
            aug_strength=self.best_strength,
            dropout=self.best_dropout,
            weight_decay=10**self.best_log_wd,
            label_smoothing=self.best_smoothing,
            epochs=epochs,
            pretrained=self.pretrained_gain > 0,
        )
