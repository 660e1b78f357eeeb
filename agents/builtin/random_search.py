"""Random search: the baseline every comparison needs."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from .researcher import Researcher


class RandomSearch(Researcher):
    """Same loop as the researcher, but every proposal is a uniform sample of the search space
    (no parent, no model, no guidance): what any learning proposer has to beat."""

    type_name: ClassVar[str] = "random"

    def propose(self, parent: BaseModel | None) -> tuple[BaseModel, str]:
        """A uniform random recipe."""
        return self.task.sample(self.rng), "random"
