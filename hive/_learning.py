"""Does the hive learn? Deployment success on held-out instances, by model generation.

Deployers work on instances nobody researched (``family/100000+``), one new instance per
deployment, and measure each proposal against the family's incumbent (the best-known recipe) on
that instance with the same seed. Generation 0 proposes by mutating the incumbent; generation
``k >= 1`` samples the shared model. The read side answers "is generation >= 1 better than 0?"
with :func:`generations` over any DuckDB connection (the live service, a snapshot, a file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

GENERATIONS_SQL = """
SELECT model_version, count(*) AS deployments, count(*) FILTER (WHERE success) AS successes
FROM deployments
WHERE reference = 'incumbent' AND status = 'ok' AND success IS NOT NULL
GROUP BY model_version ORDER BY model_version
"""
"""Judged deployments against the incumbent and their successes, per model version."""


@dataclass(frozen=True)
class Generations:
    """Deployment successes against the incumbent: ``version -> (deployments, successes)``."""

    by_version: dict[int, tuple[int, int]] = field(default_factory=dict)

    def _pool(self, later: bool) -> tuple[int, int]:
        rows = [v for k, v in self.by_version.items() if (k >= 1) == later]
        return sum(n for n, _ in rows), sum(s for _, s in rows)

    @property
    def gen0(self) -> tuple[int, int]:
        """``(deployments, successes)`` without a model."""
        return self._pool(later=False)

    @property
    def later(self) -> tuple[int, int]:
        """``(deployments, successes)`` with any model generation >= 1."""
        return self._pool(later=True)

    @staticmethod
    def _rate(pair: tuple[int, int]) -> float | None:
        return pair[1] / pair[0] if pair[0] else None

    @property
    def rate0(self) -> float | None:
        """Success rate of generation 0 (None without deployments)."""
        return self._rate(self.gen0)

    @property
    def rate_later(self) -> float | None:
        """Success rate of generations >= 1 together (None without deployments)."""
        return self._rate(self.later)

    @property
    def margin(self) -> float | None:
        """``rate_later - rate0``: how much the distilled models improved on generation 0."""
        if self.rate0 is None or self.rate_later is None:
            return None
        return self.rate_later - self.rate0

    @property
    def z(self) -> float | None:
        """Two-proportion z statistic of the margin (pooled standard error)."""
        (n0, s0), (n1, s1) = self.gen0, self.later
        if not n0 or not n1:
            return None
        p = (s0 + s1) / (n0 + n1)
        se = math.sqrt(p * (1 - p) * (1 / n0 + 1 / n1))
        return None if se == 0 or self.margin is None else self.margin / se

    def summary(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        (n0, s0), (n1, s1) = self.gen0, self.later
        return {
            "by_version": {
                str(k): {"deployments": n, "successes": s, "rate": round(s / n, 4) if n else None}
                for k, (n, s) in sorted(self.by_version.items())
            },
            "gen0": {"deployments": n0, "successes": s0, "rate": _r(self.rate0)},
            "gen1_plus": {"deployments": n1, "successes": s1, "rate": _r(self.rate_later)},
            "margin": _r(self.margin),
            "z": _r(self.z),
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def generations(con: Any) -> Generations:
    """Read :data:`GENERATIONS_SQL` from a DuckDB connection (or anything with ``execute``)."""
    rows = con.execute(GENERATIONS_SQL).fetchall()
    return Generations({int(v): (int(n), int(s)) for v, n, s in rows})
