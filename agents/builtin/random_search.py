"""Random search: the baseline every comparison needs."""

from __future__ import annotations

import random
from typing import ClassVar

from pydantic import BaseModel

from .._proposer import History, Proposer
from .researcher import Researcher


class UniformProposer(Proposer):
    """A uniform sample of the search space, named ``random`` on the traces."""

    name: ClassVar[str] = "random"

    def propose(self, history: History, rng: random.Random) -> BaseModel:
        """Ignore the history: sample the space."""
        return history.task.sample(rng)


class RandomSearch(Researcher):
    """Same loop as the researcher (campaigns, baselines, no re-runs), but every proposal is a
    uniform sample of the search space (no model, no other arm): what any learning proposer has
    to beat."""

    type_name: ClassVar[str] = "random"
    use_models: ClassVar[bool] = False

    def arms(self) -> list[Proposer]:
        """Only the uniform sampler."""
        return [UniformProposer()]
