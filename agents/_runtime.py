"""The agent runtime: runs one or more agents in a process against a running hive.

One :class:`AgentRuntime` per process shares the NATS connection, the publisher, the local
read model (fed from the log) and the model slot among its agents; each agent gets a
heartbeat task and, if active, a work loop. SIGTERM/SIGINT stop everything gracefully.

The runtime rides out a paused or restarting server: its own NATS calls (stream info, the
lifecycle events, queries) retry timeouts with capped exponential backoff, heartbeats skip a
beat instead of failing, and the log reader re-creates its consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

import streams
from streams import AgentHeartbeat, AgentStarted, AgentStopped, DecodeError, Event

from ._agent import Agent
from ._backoff import Backoff, retry_transient
from ._heartbeat import heartbeat_file, touch_heartbeat
from ._read_model import SwarmView

log = structlog.get_logger("agents.runtime")


@dataclass
class ModelSlot:
    """The shared model an agent process currently uses; swapped atomically between experiments."""

    version: int = 0
    serial: int = 0
    policy: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    signature: str = ""
    """The signature of the pointer the loaded model came from (to skip re-reading it)."""


@dataclass
class AgentContext:
    """What the runtime hands an agent: identity, task, and the shared services of its process."""

    agent_id: str
    task: str | None
    publisher: streams.Publisher
    view: SwarmView
    query: Callable[..., Any]
    slot: ModelSlot
    js: Any
    log: Any
    token: str = "0"
    options: dict[str, Any] = field(default_factory=dict)
    on_ack: Callable[[Event, Any], None] | None = None
    """Called with every event the agent published and the stream's ack (tests, accounting)."""

    def policy(self) -> Any:
        """The loaded shared model, or None."""
        return self.slot.policy

    def model_version(self) -> int:
        """The loaded shared model's version (0 = none)."""
        return self.slot.version


async def close_quickly(nc: Any, timeout: float = 3.0) -> None:
    """Drain a connection (flushing what was published), but never wait past ``timeout``:
    nats-py's drain can otherwise hold a stopping process for its 30 s drain timeout."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.drain(), timeout)
    with contextlib.suppress(Exception):
        if not nc.is_closed:
            await nc.close()


class AgentRuntime:
    """Runs agents of any registered type in this process until stopped.

    ``model_watcher``: an optional coroutine factory ``(js, slot) -> awaitable`` that keeps the
    model slot current (the distillation package provides one). ``keepers``: coroutine
    factories ``(nc, runtime) -> awaitable`` run beside the agents and cancelled at the end
    (e.g. renewing a claimed identity; one may call ``runtime.stop()``). ``on_ack``: called
    with ``(event, ack)`` for every event an agent of this runtime saw acknowledged.
    """

    def __init__(
        self,
        nats_url: str,
        *,
        connect_options: dict[str, Any] | None = None,
        model_watcher: Callable[[Any, ModelSlot], Any] | None = None,
        keepers: list[Callable[[Any, AgentRuntime], Any]] | None = None,
        on_ack: Callable[[Event, Any], None] | None = None,
    ) -> None:
        self.nats_url = nats_url
        self.keepers = keepers or []
        self.connect_options = connect_options or {}
        self.model_watcher = model_watcher
        self.on_ack = on_ack
        self.view = SwarmView()
        self.slot = ModelSlot()
        self.agents: list[Agent] = []
        self._stop = asyncio.Event()
        self._closing = False
        self._view_ready = asyncio.Event()
        self.nc: Any = None
        # The incarnation token: drawn afresh at every process start, it is in every event id the
        # agents of this process make, so a restarted agent never reuses an id of an earlier run
        # (the stream would drop such an event as a duplicate within its dedupe window).
        self.token = f"{os.getpid()}-{secrets.token_hex(6)}"
        self.heartbeat_file = heartbeat_file()
        """Touched at every heartbeat (``$HIVE_HEARTBEAT_FILE``; None: no file)."""

    def stop(self) -> None:
        """Ask every agent to finish its current step and stop."""
        self._stop.set()

    async def run(
        self,
        specs: list[tuple[type[Agent], str, str | None]],
        *,
        duration_s: float | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        """Run agents given as ``(class, agent_id, task)`` until stopped or ``duration_s`` passes."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop)
        self.nc = await streams.connect(self.nats_url, name="hive-agents", **self.connect_options)
        js = self.nc.jetstream()
        await retry_transient(lambda: streams.ensure_stream(js), what="ensure stream", logger=log)
        publisher = streams.Publisher(js)
        bg: list[asyncio.Task[Any]] = [asyncio.create_task(k(self.nc, self)) for k in self.keepers]
        try:
            info = await retry_transient(
                lambda: js.stream_info(streams.STREAM), what="stream info", logger=log
            )
            start_seq = info.state.last_seq
            for cls, agent_id, task in specs:
                ctx = AgentContext(
                    agent_id=agent_id,
                    task=task,
                    publisher=publisher,
                    view=self.view,
                    query=self._query,
                    slot=self.slot,
                    js=js,
                    log=log.bind(agent_id=agent_id, agent_type=cls.type_name),
                    token=self.token,
                    options=dict(options or {}),
                    on_ack=self.on_ack,
                )
                self.agents.append(cls(ctx))
            started = await asyncio.gather(*(self._start(a) for a in self.agents))
            self.agents = [a for a, ok in zip(self.agents, started, strict=True) if ok]
            if self.model_watcher is not None:
                bg.append(asyncio.create_task(self.model_watcher(js, self.slot)))
            # Handlers see events only once their agent is set up; the view is complete before
            # any agent takes a step.
            bg.append(asyncio.create_task(self._feed(start_seq, [cls for cls, _, _ in specs])))
            await asyncio.wait_for(self._view_ready.wait(), 120)
            if duration_s is not None:
                bg.append(asyncio.create_task(self._stop_after(duration_s)))
            await asyncio.gather(*(self._live(a) for a in self.agents))
        finally:
            self._closing = True
            for t in bg:
                t.cancel()
            if bg:  # bounded: a task that swallowed its cancellation must not hang the stop
                await asyncio.wait(bg, timeout=10)
            for t in bg:
                if t.done() and not t.cancelled():
                    t.exception()  # retrieved, so asyncio does not log it as never retrieved
            await close_quickly(self.nc)

    async def _stop_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.stop()

    async def _query(
        self,
        sql: str,
        params: list[Any] | None = None,
        timeout_s: float = 10.0,
        backoff: Backoff | None = None,
    ) -> list[dict[str, Any]]:
        res = await retry_transient(
            lambda: streams.remote_query(self.nc, sql, params=params, timeout_s=timeout_s),
            what="query",
            backoff=backoff,
            logger=log,
            transient=_unanswered_query,
        )
        return [dict(zip(res.columns, row, strict=True)) for row in res.rows]

    async def _feed(self, start_seq: int, classes: list[type[Agent]]) -> None:
        """Fold the log into the read model and dispatch new events to the agents' handlers."""
        wanted = {et for cls in classes for et in cls.handlers}
        reader = streams.LogReader(self.nc, filter_subject=">" if wanted else "hive.traces.>")
        await retry_transient(reader.start, what="log reader", logger=log)
        me = asyncio.current_task()
        try:
            # Not `while True`: Python 3.11's asyncio.wait_for can swallow a cancellation that
            # races with its inner future completing (seen here: a stopped runtime hung in this
            # loop), so the loop also ends on a pending cancel request or the closing flag.
            while not self._closing and not (me is not None and me.cancelling()):
                try:
                    batch = await reader.fetch(500, timeout=0.5)
                except Exception as e:  # ConsumerLost or a connection error: re-create the consumer and go on
                    log.warning("log_reader_reset", error=str(e))
                    await asyncio.sleep(0.5)
                    with contextlib.suppress(Exception):
                        await reader.reset()
                    continue
                for entry in batch:
                    try:
                        ev = streams.decode(entry.data, entry.subject)
                    except DecodeError:
                        continue
                    self.view.apply(ev, entry.seq)
                    for agent in self.agents:
                        if agent.handlers and (entry.seq > start_seq or agent.replay):
                            await self._dispatch(agent, ev)
                if not batch or reader.last_seq >= start_seq:
                    self._view_ready.set()
        finally:
            await reader.close()

    async def _dispatch(self, agent: Agent, ev: Event) -> None:
        for et, names in agent.handlers.items():
            if isinstance(ev, et):
                for name in names:
                    try:
                        await getattr(agent, name)(ev)
                    except Exception:
                        agent.log.exception("handler_failed", handler=name, event_id=ev.event_id)

    async def _start(self, agent: Agent) -> bool:
        """Publish ``AgentStarted`` and run ``setup``; a failed setup stops the agent at once."""
        await agent.publish(
            agent.new_event(
                AgentStarted,
                event_id=f"{agent.agent_id}/started/{self.token}",
                host=socket.gethostname()[:200],
                pid=os.getpid(),
                task=agent.ctx.task,
                heartbeat_s=agent.heartbeat_s,
            )
        )
        try:
            await agent.setup()
            return True
        except Exception as e:
            agent.log.exception("agent_setup_failed")
            await self._stopped(agent, f"setup failed: {type(e).__name__}: {e}")
            return False

    async def _stopped(self, agent: Agent, reason: str) -> None:
        with contextlib.suppress(Exception):  # a stop must not wait long for a server that is gone
            await agent.publish(
                agent.new_event(
                    AgentStopped, event_id=f"{agent.agent_id}/stopped/{self.token}", reason=reason[:200]
                ),
                patience_s=min(agent.backoff.patience_s, agent.stop_grace_s),
            )
        agent.close_executor()

    async def _live(self, agent: Agent) -> None:
        """One agent's life after setup: (heartbeats ‖ steps or handlers) → teardown → stopped."""
        reason = "stopped"
        hb = asyncio.create_task(self._heartbeats(agent))
        try:
            if agent.is_active():
                reason = await self._work(agent)
            else:
                await self._stop.wait()
                reason = "signal"
        except Exception as e:
            agent.log.exception("agent_failed")
            reason = f"error: {type(e).__name__}: {e}"
        finally:
            hb.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hb
            with contextlib.suppress(Exception):
                await agent.teardown()
            await self._stopped(agent, reason)

    async def _work(self, agent: Agent) -> str:
        while not self._stop.is_set():
            step = asyncio.create_task(agent.step())
            stop = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait({step, stop}, return_when=asyncio.FIRST_COMPLETED)
            if step not in done:  # a stop arrived mid-step: give the step a grace period
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(step), agent.stop_grace_s)
                if not step.done():
                    step.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await step
                    return "signal (step abandoned)"
            stop.cancel()
            if step.exception() is not None:
                raise step.exception()  # type: ignore[misc]
            if step.result() is False:
                return "done"
        return "signal"

    async def _heartbeats(self, agent: Agent) -> None:
        n = 0
        while True:
            n += 1
            with contextlib.suppress(Exception):  # not retried: the next beat supersedes a lost one
                await agent.publish(
                    agent.new_event(
                        AgentHeartbeat,
                        event_id=f"{agent.agent_id}/heartbeat/{self.token}-{n}",
                        state=agent.state[:200],
                        model_version=agent.model_version,
                        experiments=agent.experiments,
                    ),
                    patience_s=0.0,
                )
            touch_heartbeat(self.heartbeat_file)  # the container health check reads its age
            await asyncio.sleep(agent.heartbeat_s)


def _unanswered_query(e: BaseException) -> bool:
    """A query that nobody answered in time (server paused, materializer restarting): retry it.
    A refusal or a failed statement is not retried."""
    return isinstance(e, streams.QueryError) and (
        "did not answer in time" in str(e) or "no query service is answering" in str(e)
    )
