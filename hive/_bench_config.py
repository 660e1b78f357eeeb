"""``hive bench learning``'s settings, apart from the benchmark so the CLI reads their defaults at
start-up without importing the benchmark (and ``agents``) for every ``hive`` command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["BenchConfig"]


@dataclass
class BenchConfig:
    """Settings of one benchmark run (the CLI options)."""

    families: list[str]
    train_instances: int = 48
    train_seconds: float = 420.0
    heldout: int = 6
    seeds: int = 3
    budget: int = 200
    agents: int = 4
    distill_every: int = 1500
    jobs: int = 2
    out: Path = Path("bench-learning")
    quick: bool = False
    final_generation: bool = True
    """After the training swarm stops, one more distiller generation over everything it collected
    (what its distiller would do next): the model evaluated then does not depend on how many
    generations a loaded machine fitted into ``train_seconds``."""
