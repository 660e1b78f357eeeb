"""Campaigns: task specs, per-instance budgets under races (real nats-server), researchers working
a campaign end to end, ``--require-model`` waiting."""

from __future__ import annotations

import asyncio
import random
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

import streams
from agents import AgentRuntime, Campaign, History, Proposer, parse_campaign, parse_instances, recipe_key
from agents.builtin.researcher import Researcher

PARABOLA = "tests.custom_agents:Parabola"


def test_task_specs_expand_to_bounded_instance_lists() -> None:
    """Ranges, lists and single instances expand in order without duplicates; bad specs say why."""
    assert parse_campaign("hartmann6/0-2") == ["hartmann6/0", "hartmann6/1", "hartmann6/2"]
    assert parse_campaign("branin/0,branin/3-4,branin/0") == ["branin/0", "branin/3", "branin/4"]
    assert parse_campaign("charlm") == ["charlm"]
    assert parse_campaign(f"{PARABOLA}/1-2") == [f"{PARABOLA}/1", f"{PARABOLA}/2"]
    for bad, why in [
        ("", "empty"),
        ("branin/5-1", "1 < 5"),
        ("branin/0-99999", "at most"),
        ("nosuch/0-3", "unknown task"),
        ("branin/0,,branin/1", "empty item"),
        ("branin/x", "non-negative integers"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_campaign(bad)
    assert parse_instances("1000-1999") == range(1000, 2000)
    with pytest.raises(ValueError, match="LOW-HIGH"):
        parse_instances("9-1")


async def test_racing_clients_never_take_an_instance_past_its_budget(nats_server: Any, nc: Any) -> None:
    """Four Campaign clients on two connections race over three instances with a budget of 7:
    every instance is taken exactly 7 times in all, and each client ends with None (spent)."""
    refs = ["branin/0", "branin/1", "branin/2"]
    nc2 = await streams.connect(nats_server.url)
    try:
        conns = [nc, nc2, nc, nc2]
        clients = [await Campaign(c.jetstream(), refs, 7, start=i).open() for i, c in enumerate(conns)]

        async def drain(c: Campaign) -> list[str]:
            got: list[str] = []
            while (ref := await c.next_instance()) is not None:
                got.append(ref)
            return got

        results = await asyncio.gather(*(drain(c) for c in clients))
    finally:
        await nc2.close()
    taken = [r for got in results for r in got]
    assert sorted(taken) == sorted(refs * 7)
    # the clients really raced (more than one took work); not every one need win a unit: under a
    # loaded CI machine one client lost all 21 races once, which the budget does not forbid
    assert sum(1 for got in results if got) >= 2, [len(got) for got in results]
    assert [await clients[0].used(r) for r in refs] == [7, 7, 7]


class Repeater(Proposer):
    """Proposes the baseline first, then mutations of it: repeats are likely without the check."""

    name: ClassVar[str] = "repeater"

    def propose(self, history: History, rng: random.Random) -> BaseModel:
        """The baseline or one of two fixed neighbours of it."""
        base = history.task.baseline()
        choices = [base, *(history.task.mutate(base, random.Random(i)) for i in range(2))]
        return rng.choice(choices)


class RepeatingResearcher(Researcher):
    """A researcher whose portfolio is a proposer that keeps repeating itself, and prior."""

    type_name: ClassVar[str] = "researcher"

    def arms(self) -> list[Proposer]:
        """A repeater and mutation."""
        from agents import MutationProposer

        return [Repeater(), MutationProposer()]


async def test_two_researchers_share_a_campaign_within_budget_and_never_rerun(nats_server: Any) -> None:
    """Two researchers (separate runtimes, as separate processes would be) work a 3-instance
    campaign with a budget of 8 experiments each and stop when it is spent: each instance ran
    exactly 8 experiments (the 3 baseline seeds, then proposals), no recipe ran twice on an instance (their
    portfolio includes an arm that keeps repeating itself), and every proposal names its proposer
    and the reason it was chosen."""
    events: list[streams.Event] = []
    spec = f"{PARABOLA}/0-2"

    def run(agent_id: str) -> Any:
        rt = AgentRuntime(nats_server.url, on_ack=lambda ev, ack: events.append(ev))
        return rt.run([(RepeatingResearcher, agent_id, spec)], options={"instance_budget": 8}, duration_s=60)

    await asyncio.gather(run("res-a"), run("res-b"))
    done = [e for e in events if isinstance(e, streams.ExperimentFinished)]
    per: dict[str, list[streams.ExperimentFinished]] = {}
    for e in done:
        per.setdefault(e.task, []).append(e)
    assert sorted(per) == parse_campaign(spec)
    assert {t: len(v) for t, v in per.items()} == {t: 8 for t in per}
    for evs in per.values():
        proposals = [e for e in evs if e.proposer != "baseline"]
        keys = [recipe_key(e.recipe) for e in proposals]
        assert len(keys) == len(set(keys)), "a recipe ran twice on one instance"
        # a finished run keeps its claim, so not even a baseline seed runs twice (the other agent's
        # read model may not have seen the finish yet when it plans)
        assert sorted(e.seed for e in evs if e.proposer == "baseline") == [0, 1, 2]
        assert all(e.proposer in {"repeater", "mutation", "prior"} and e.proposer_reason for e in proposals)
    assert {e.agent_id for e in done} == {"res-a", "res-b"}


class Fixed(Proposer):
    """A stand-in for a loaded model (what a ``hive.policies`` loader returns)."""

    name: ClassVar[str] = "model-v1"

    def propose(self, history: History, rng: random.Random) -> BaseModel:
        """A prior sample."""
        return history.task.sample(rng)


async def test_require_model_waits_for_the_first_model_then_proposes_with_it(nats_server: Any) -> None:
    """A researcher with ``require_model`` publishes nothing until a model is in its slot (put
    there 1.5 s after start, as the watcher does on a publish), then its portfolio has the model
    arm; with no model at all it stops with the reason after ``model_wait_s``."""
    events: list[tuple[float, streams.Event]] = []
    loop = asyncio.get_running_loop()
    rt = AgentRuntime(nats_server.url, on_ack=lambda ev, ack: events.append((loop.time(), ev)))
    t0 = loop.time()
    run = asyncio.create_task(
        rt.run(
            [(Researcher, "req-1", f"{PARABOLA}/0")],
            options={"require_model": True, "model_wait_s": 30, "instance_budget": 12},
            duration_s=20,
        )
    )
    await asyncio.sleep(1.5)
    assert not [e for _, e in events if isinstance(e, streams.ExperimentStarted)]
    loaded_at = loop.time()
    rt.slot.policy, rt.slot.version = Fixed(), 1
    await run
    started = [(t, e) for t, e in events if isinstance(e, streams.ExperimentFinished)]
    assert started and all(t >= loaded_at for t, _ in started) and loaded_at - t0 >= 1.4
    assert len(started) == 12
    (agent,) = rt.agents
    assert isinstance(agent, Researcher) and "model-v1" in [a.name for a in agent.portfolio.arms]

    stopped: list[streams.Event] = []
    rt2 = AgentRuntime(nats_server.url, on_ack=lambda ev, ack: stopped.append(ev))
    await rt2.run(
        [(Researcher, "req-2", f"{PARABOLA}/1")], options={"require_model": True, "model_wait_s": 0.5}
    )
    (last,) = [e for e in stopped if isinstance(e, streams.AgentStopped)]
    assert "ModelRequired" in last.reason
    assert not [e for e in stopped if isinstance(e, streams.ExperimentStarted)]


def test_proposer_reason_and_trajectories_through_the_materializer(tmp_path: Any) -> None:
    """Traces applied by the materializer keep ``proposer_reason`` (None for an upcast v2 trace);
    ``trajectories`` numbers each instance's trials from 1 in log order without the baseline,
    with best-so-far and improvement; ``proposer_stats`` gives each proposer's share and
    improvement rate per family; both are the same whatever the batching."""
    from datetime import UTC, datetime, timedelta

    import duckdb
    import orjson

    from hive import apply_batch, open_store

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    plan = [("baseline", 5.0), ("mutation", 4.0), ("model-v1", 6.0), ("mutation", 3.0), ("tpe", 3.5)]
    entries = []
    for i, (proposer, objective) in enumerate(plan):
        ev = streams.ExperimentFinished(
            event_id=f"r-1/run-{i}/finish",
            agent_id="r-1",
            agent_type="researcher",
            task="branin/2",
            run_id=f"run-{i}",
            recipe={"x1": float(i)},
            seed=i,
            budget=1.0,
            cost_s=0.01,
            status="ok",
            objective=objective,
            proposer=proposer,
            proposer_reason=None if proposer == "baseline" else f"thompson pick {i}",
            occurred_at=t0 + timedelta(seconds=i),
        )
        data = streams.encode(ev)
        if i == 4:  # an old v2 trace: no reason
            d = orjson.loads(data)
            d.pop("proposer_reason")
            data = orjson.dumps({**d, "schema_version": 2})
        entries.append(streams.LogEntry(i + 1, streams.subject_for(ev), data, t0))
    results = []
    for size in (1, 5):
        db = tmp_path / f"b{size}.duckdb"
        con = open_store(db)
        for j in range(0, len(entries), size):
            apply_batch(con, entries[j : j + size])
        con.close()
        ro = duckdb.connect(str(db), read_only=True)
        traj = ro.execute(
            "SELECT trial, proposer, proposer_reason, best_so_far, improved FROM trajectories ORDER BY trial"
        ).fetchall()
        stats = ro.execute(
            "SELECT proposer, experiments, share, improvement_rate FROM proposer_stats ORDER BY proposer"
        ).fetchall()
        ro.close()
        results.append((traj, stats))
    traj, stats = results[0]
    assert results[0] == results[1]
    assert traj == [
        (1, "mutation", "thompson pick 1", 4.0, True),
        (2, "model-v1", "thompson pick 2", 4.0, False),
        (3, "mutation", "thompson pick 3", 3.0, True),
        (4, "tpe", None, 3.0, False),
    ]
    assert stats == [("model-v1", 1, 0.25, 0.0), ("mutation", 2, 0.5, 1.0), ("tpe", 1, 0.25, 0.0)]
