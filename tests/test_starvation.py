"""The portfolio starves a deliberately bad proposer on a real hive: real nats-server, the real
materializer and real researchers (``hive agent run``), each with one extra arm that always
proposes from the worst region of the space (``tests.custom_agents.WorstCornerProposer``, added
through ``Researcher.arms``, the public way to give a researcher more proposers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streams

from .conftest import wait_for

BAD = "worst-corner"
FULL_TASK = "hartmann6/0"
"""Worked by researchers with the built-in portfolio (mutation, prior, TPE) plus the bad arm."""
FULL_TRIALS, FULL_LAST = 400, 200
"""N and M: trials (baselines excluded) before the shares are read, and the window at the end."""
FULL_BAD_MAX = 0.07
"""Uniform over 4 arms would be 0.25; the exploration floor alone gives 0.05 / 4 = 0.0125."""
PAIR_TASK = "ackley/0"
"""Worked by a researcher with two arms only, mutation and the bad one (another family: the
proposer statistics are per family, so the two portfolios learn apart). Not branin: with three
of its five knobs discrete, mutation keeps repeating finished recipes there, and the portfolio
then asks the next arm, which with two arms is the bad one (measured: 8-14 % of the trials)."""
PAIR_TRIALS, PAIR_LAST = 400, 200
PAIR_BAD_MAX = 0.1
"""Uniform over 2 arms would be 0.5; the floor alone gives 0.05 / 2 = 0.025."""


async def test_bandit_starves_a_deliberately_bad_proposer(
    nats_server: Any, nc: Any, spawn: Any, tmp_path: Path
) -> None:
    """On one real hive:

    * two researchers work hartmann6/0 with the built-in portfolio plus ``worst-corner`` (the
      worst of 64 prior samples by the true objective). Within N = 400 trials the bandit starves
      it: among the last M = 200 in the ``experiments`` table its share is below 0.07 (uniform:
      0.25), and mutation and TPE, the arms that improve, hold more than 0.85 between them;
    * one researcher works ackley/0 with only mutation and ``worst-corner``: among trials
      201-400 the bad arm's share is below 0.1 (uniform: 0.5) and mutation's above 0.85.

    In both, the bad arm was tried and its results were worse than the baseline's on average
    (it really is bad). Mutation alone is not asserted high on hartmann6: TPE competes with it
    there and took 10-90 % of a window from run to run.

    Chance of a false failure: measured, the bad arm ran 0-4 times per 100 trials after the first
    100 with four arms (about 1.5 %: the floor's 1.25 % plus rare Thompson draws), about 3
    expected in the last 200: 14 or more is a tail below 1e-4. With two arms it ran 2-6 times per
    100 (the floor's 2.5 %, plus picks after mutation repeated itself), about 9 expected in 200:
    20 or more is a tail of about 2e-4. A CPU-starved run is slower (the wait allows 120 s), not
    different."""
    db = tmp_path / "starve.duckdb"
    url = nats_server.url
    spawn("materialize", "--nats", url, "--db", str(db))
    common = ["--nats", url, "--no-model"]
    full = spawn(
        "agent", "run", "tests.custom_agents:BadProposerResearcher", "--task", FULL_TASK, "--count", "2",
        "--id", "full", *common,
    )  # fmt: skip
    pair = spawn(
        "agent", "run", "tests.custom_agents:MutationOrWorstResearcher", "--task", PAIR_TASK,
        "--id", "pair", *common,
    )  # fmt: skip

    async def query(sql: str) -> list[Any]:
        return list((await streams.remote_query(nc, sql)).rows)

    async def enough() -> bool:
        rows = dict(
            await query("SELECT task, count(*) FROM experiments WHERE proposer <> 'baseline' GROUP BY task")
        )
        return rows.get(FULL_TASK, 0) >= FULL_TRIALS and rows.get(PAIR_TASK, 0) >= PAIR_TRIALS

    await wait_for(enough, timeout=120, every=0.5, what="the trials of both portfolios")
    for p in (full, pair):
        assert p.stop() == 0, p.output()[-3000:]

    async def shares(task: str, trials: int, last: int) -> dict[str, float]:
        rows = await query(
            f"SELECT proposer FROM experiments WHERE proposer <> 'baseline' AND task = '{task}' ORDER BY seq"
        )
        window = [p for (p,) in rows][trials - last : trials]
        assert len(window) == last, (task, len(rows))
        return {p: round(window.count(p) / last, 4) for p in sorted(set(window))}

    for task in (FULL_TASK, PAIR_TASK):
        ((n_bad, bad_mean, baseline),) = await query(
            f"SELECT count(*) FILTER (WHERE proposer = '{BAD}'), "
            f"avg(objective) FILTER (WHERE proposer = '{BAD}'), "
            f"avg(objective) FILTER (WHERE proposer = 'baseline') FROM experiments WHERE task = '{task}'"
        )
        assert n_bad >= 1, f"the bad arm was never tried on {task}"
        assert bad_mean > baseline, (task, bad_mean, baseline)  # it really is bad

    full_shares = await shares(FULL_TASK, FULL_TRIALS, FULL_LAST)
    assert set(full_shares) <= {"mutation", "prior", "tpe", BAD}, full_shares
    assert full_shares.get(BAD, 0.0) < FULL_BAD_MAX, full_shares
    assert full_shares.get("mutation", 0.0) + full_shares.get("tpe", 0.0) > 0.85, full_shares
    pair_shares = await shares(PAIR_TASK, PAIR_TRIALS, PAIR_LAST)
    assert pair_shares.get(BAD, 0.0) < PAIR_BAD_MAX, pair_shares
    assert pair_shares.get("mutation", 0.0) > 0.85, pair_shares
    print("shares of the last trials:", {FULL_TASK: full_shares, PAIR_TASK: pair_shares})
