"""The agent base class: one small contract for active and reactive agents.

Contract (what the runtime guarantees and what a subclass provides)
-------------------------------------------------------------------
* ``type_name`` (class attribute): the registry name, also ``agent_type`` on every event and
  the middle token of the agent's trace subject ``hive.traces.<type_name>.<agent_id>``.
* The runtime publishes ``AgentStarted`` before :meth:`setup`, an ``AgentHeartbeat`` every
  ``heartbeat_s`` seconds, and ``AgentStopped`` after :meth:`teardown` on a graceful stop
  (SIGTERM / Ctrl-C / ``stop()``). A crash publishes nothing: liveness shows the agent dead.
* **Active** agents override :meth:`step`: one unit of work (propose → run → publish). The
  runtime calls it in a loop until it returns ``False`` or a stop is requested; a stop never
  interrupts a step, it waits up to ``stop_grace_s`` for it and then abandons it (the started
  experiment then shows as abandoned once its deadline passes).
* **Reactive** agents declare typed handlers with :func:`on`::

      @on(ExperimentFinished)
      async def seen(self, event: ExperimentFinished) -> None: ...

  The runtime feeds them every matching event appended to the log after the agent started
  (``replay = True`` on the class: from the beginning of the log), in log order, one at a time.
  An agent may be both active and reactive.
* Inside an agent: ``self.publish(event)`` (awaits the stream's ack), ``self.new_event(cls, ...)``
  (fills the envelope and an ``event_id`` that is deterministic within this process and carries
  the runtime's incarnation token, so a restarted agent never reuses an id of its earlier run),
  ``self.query(sql, params)`` (the
  materializer's read-only SQL), ``self.view`` (a local read model of the swarm: best recipe
  per task, noise floors, guidance) and ``self.policy`` (the shared model, when one is loaded).
* ``publish``, ``query`` and the runtime's own NATS calls ride out a paused or restarting server:
  a timeout or a lost connection is retried with capped exponential backoff (``nats_timeout_s``
  per attempt, ``backoff`` for the waits and the patience); a publish retried keeps its
  ``event_id``, so the stream stores it once.
* Handlers and steps must not block the event loop: run CPU-bound work with
  ``await self.in_thread(fn, ...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from streams import Event, TraceEvent

from ._backoff import Backoff, retry_transient

if TYPE_CHECKING:
    from ._runtime import AgentContext

E = TypeVar("E", bound=Event)
Handler = Callable[[Any, Any], Awaitable[None]]
T = TypeVar("T")


def on(*event_types: type[Event]) -> Callable[[Handler], Handler]:
    """Register an ``async def handler(self, event)`` for the given event classes."""
    if not event_types:
        raise TypeError("@on needs at least one event class")

    def mark(fn: Handler) -> Handler:
        if not asyncio.iscoroutinefunction(fn):
            raise TypeError(f"@on handler {fn.__qualname__} must be an async def")
        existing: tuple[type[Event], ...] = getattr(fn, "__hive_on__", ())
        fn.__hive_on__ = existing + tuple(event_types)  # type: ignore[attr-defined]
        return fn

    return mark


class Agent:
    """Base of every agent type (see the module docstring for the full contract)."""

    type_name: ClassVar[str] = "agent"
    heartbeat_s: ClassVar[float] = 5.0
    stop_grace_s: ClassVar[float] = 10.0
    replay: ClassVar[bool] = False
    nats_timeout_s: ClassVar[float] = 10.0
    """How long one publish or query attempt waits for the server before it is retried."""
    backoff: ClassVar[Backoff] = Backoff()
    """Waits between retries of a NATS call that timed out, and how long to keep retrying."""
    handlers: ClassVar[dict[type[Event], list[str]]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        table: dict[type[Event], list[str]] = {}
        for klass in reversed(cls.__mro__):
            for name, fn in vars(klass).items():
                for et in getattr(fn, "__hive_on__", ()):
                    names = table.setdefault(et, [])
                    if name not in names:
                        names.append(name)
        cls.handlers = table

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.agent_id = ctx.agent_id
        self.log = ctx.log
        self._counter = itertools.count(1)
        self._executor: ThreadPoolExecutor | None = None
        self.experiments = 0
        self.state = "idle"

    # ------------------------------------------------------------------ overridables
    @classmethod
    def is_active(cls) -> bool:
        """True when the class overrides :meth:`step` (it runs a work loop)."""
        return cls.step is not Agent.step

    async def setup(self) -> None:
        """Called once after ``AgentStarted`` is published, before any step or handler."""

    async def step(self) -> bool:
        """One unit of work for active agents; return False to stop the agent."""
        raise NotImplementedError

    async def teardown(self) -> None:
        """Called once on a graceful stop, before ``AgentStopped`` is published."""

    # ------------------------------------------------------------------ services
    @property
    def task_ref(self) -> str | None:
        """The task instance this agent was started on (``--task``), if any."""
        return self.ctx.task

    @property
    def view(self) -> Any:
        """The local read model of the swarm (``agents.SwarmView``)."""
        return self.ctx.view

    @property
    def policy(self) -> Any:
        """The shared model currently loaded (``None`` until one is published)."""
        return self.ctx.policy()

    @property
    def model_version(self) -> int:
        """Version of the shared model this agent's next action comes from (0 = none)."""
        return self.ctx.model_version()

    def next_id(self, label: str) -> str:
        """A unique event id, ``<agent_id>/<label>/<incarnation>-<n>``: deterministic within this
        process (a retried publish keeps it and is deduplicated) and different after a restart
        (the incarnation token is drawn afresh at every process start)."""
        return f"{self.agent_id}/{label}/{self.ctx.token}-{next(self._counter)}"

    def new_event(self, cls: type[E], *, event_id: str | None = None, **fields: Any) -> E:
        """Build an event with this agent's envelope filled in (and the model version on traces)."""
        envelope: dict[str, Any] = {"agent_id": self.agent_id, "agent_type": self.type_name}
        if issubclass(cls, TraceEvent) and "model_version" not in fields:
            envelope["model_version"] = self.model_version
        return cls(event_id=event_id or self.next_id(cls.__name__), **envelope, **fields)

    async def publish(self, event: Event, *, patience_s: float | None = None) -> None:
        """Publish an event of this agent on its own subject and wait for the stream's ack.

        A timeout or a lost connection is retried (same ``event_id``: stored once) for
        ``patience_s`` (default: ``backoff.patience_s``) before the error is raised."""
        if event.agent_id != self.agent_id:
            raise ValueError(f"agent {self.agent_id} may only publish its own events, not {event.agent_id}'s")
        policy = self.backoff
        if patience_s is not None:
            policy = Backoff(policy.first_s, policy.cap_s, patience_s)
        ack = await retry_transient(
            lambda: self.ctx.publisher.publish(event, timeout=self.nats_timeout_s),
            what=f"publish {event.kind}",
            backoff=policy,
            logger=self.log,
        )
        if self.ctx.on_ack is not None:
            self.ctx.on_ack(event, ack)

    async def query(
        self, sql: str, params: list[Any] | None = None, timeout_s: float = 10.0
    ) -> list[dict[str, Any]]:
        """Rows (as dicts) from the materializer's read-only SQL service (retried while the
        service does not answer, as :meth:`publish`)."""
        return await self.ctx.query(sql, params, timeout_s, backoff=self.backoff)

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work on this agent's own worker thread (one per agent)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"agent-{self.agent_id}")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close_executor(self) -> None:
        """Release the worker thread (the runtime calls this at the end)."""
        if self._executor is not None:
            with contextlib.suppress(Exception):
                self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
