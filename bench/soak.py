"""The soak (``make soak``): the swarm under load while a random component is killed or paused.

What runs, each a real process stopped by PID at the end (also on Ctrl-C or an error):

* NATS: a 3-node JetStream cluster (``streams.EmbeddedCluster``, an R3 stream) when the checkout
  has it, otherwise one ``streams.EmbeddedServer`` (``--nodes 1`` forces that);
* ``hive materialize`` (DuckDB file + query/status service);
* ``--agents`` ``hive agent run researcher`` processes on a cheap synthetic task;
* in this process, a paced load generator publishing ``ExperimentFinished`` events and
  recording exactly which ones the stream acknowledged (the checker's *acked* set).

Every ``--every`` seconds one component, chosen at random (first the kind: a NATS node, the
materializer or an agent; then one of that kind), is either killed with SIGKILL and restarted
``--restart-delay`` seconds later, or paused with SIGSTOP for ``--pause`` seconds (longer than the
clients' timeouts) and continued. The soak plays supervisor: a component that exits on its own is
restarted too, and that exit is reported (an *unexpected exit*: the component did not ride out a
fault).

Every ``--sample`` seconds it records the materializer's lag (stream last sequence minus the
applied sequence from ``streams.STATUS_SUBJECT``), the RSS and open file descriptors of every
component, and the DuckDB WAL size. At the end it stops the faults, heals everything, stops the
load and the agents, waits for the materializer to catch up, stops it, and runs the Jepsen-style
checker of ``tests/faults/checker.py`` (nothing acked lost, nothing applied twice, the checkpoint
agrees). It writes ``soak.json`` and ``soak.png`` (lag and memory over time, faults marked) under
``--out`` and prints one summary line. The exit status is 1 if an invariant failed.

usage: python bench/soak.py [--minutes 30] [--every 60] [--out bench/results/soak] [--seed N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil

import streams

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import soak_report  # noqa: E402

from tests.faults.checker import applied_state, check, load_event, read_stream  # noqa: E402

LINGER_S = 10.0
"""Seconds an agent process whose only agent failed may take to exit before the soak restarts it."""

CHILD_ENV = {**os.environ, "HIVE_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}


def log(msg: str) -> None:
    """A progress line on stdout, prefixed with the wall-clock time."""
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tail(path: Path, n: int = 1500) -> str:
    """The last ``n`` characters of a log file (empty if there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def quiet(name: str) -> dict[str, Any]:
    """Connect options for the soak's own clients: nats-py's default error callback prints a
    traceback on every dropped connection, which the soak causes on purpose."""

    async def on_error(e: Exception) -> None:
        return None

    return {"name": name, "error_cb": on_error}


# --------------------------------------------------------------------------------------------
# Components


class Component:
    """Something the soak runs, faults and restarts. Subclasses start a process and name its pid."""

    kind = "component"

    def __init__(self, name: str) -> None:
        self.name = name
        self.starts = 0
        self.down_by_fault = False  # killed on purpose, awaiting its scheduled restart
        self.paused = False

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        raise NotImplementedError

    def alive(self) -> bool:
        """Whether the process is running (a paused process is alive)."""
        raise NotImplementedError

    def exit_code(self) -> int | None:
        """The exit status once it has exited on its own."""
        return None

    def start(self) -> None:
        """Start (or restart) the process."""
        raise NotImplementedError

    def kill9(self) -> None:
        """SIGKILL, as a crash would, and reap it."""
        raise NotImplementedError

    def stop(self, timeout: float = 20) -> bool:
        """Stop gracefully (SIGTERM, then SIGKILL after ``timeout``), by PID; False if SIGKILL was needed."""
        raise NotImplementedError

    def pause(self) -> None:
        """SIGSTOP the process."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        """SIGCONT the process (no-op unless paused)."""
        if self.paused and self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    def log_tail(self) -> str:
        """The end of the component's log."""
        return ""


class HiveProc(Component):
    """A ``python -m hive ARGS`` child in its own session, its output appended to a log file."""

    def __init__(self, name: str, kind: str, args: list[str], log_path: Path, nice: int = 0) -> None:
        super().__init__(name)
        self.kind = kind
        self.args = args
        self.log_path = log_path
        self.nice = nice
        self.p: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self.p.pid if self.p is not None and self.p.poll() is None else None

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.p is not None and self.p.poll() is None

    def exit_code(self) -> int | None:
        """The exit status once it has exited."""
        return None if self.p is None else self.p.poll()

    def start(self) -> None:
        """Start the child (a new session, so a terminal's Ctrl-C reaches only the soak)."""
        nice = self.nice
        with open(self.log_path, "ab") as out:
            out.write(f"\n==== soak: start #{self.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
            out.flush()
            self.p = subprocess.Popen(
                [sys.executable, "-m", "hive", *self.args],
                env=CHILD_ENV,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=(lambda: os.nice(nice)) if nice else None,
            )
        self.starts += 1
        self.paused = False

    def kill9(self) -> None:
        """SIGKILL and reap."""
        if self.p is not None and self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait(10)
        self.paused = False

    def stop(self, timeout: float = 20) -> bool:
        """SIGCONT if paused, SIGTERM, wait; SIGKILL after ``timeout``. False if SIGTERM was not enough."""
        if self.p is None or self.p.poll() is not None:
            return True
        self.resume()
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            return False

    def log_tail(self) -> str:
        """The end of the child's log."""
        return tail(self.log_path)


class NatsNode(Component):
    """One ``nats-server``: a node of an ``EmbeddedCluster`` or a lone ``EmbeddedServer``."""

    kind = "nats"

    def __init__(self, name: str, server: Any, cluster: Any = None, index: int = 0) -> None:
        super().__init__(name)
        self.server = server
        self.cluster = cluster
        self.index = index

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        proc = self.server.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def alive(self) -> bool:
        """Whether the server process runs."""
        return self.pid is not None

    def exit_code(self) -> int | None:
        """The exit status once it has exited."""
        proc = self.server.proc
        return None if proc is None else proc.poll()

    def start(self) -> None:
        """(Re)start on the same ports and store; a cluster node waits until it is healthy."""
        if self.starts:
            self.server.stop()  # removes the killed process's run directory; the store is kept
        if self.starts and self.cluster is not None:
            self.cluster.restart(self.index, 60.0)
        else:
            self.server.start(30.0)
        self.starts += 1
        self.paused = False

    def kill9(self) -> None:
        """SIGKILL the server; its store is kept."""
        self.server.kill()
        self.paused = False

    def stop(self, timeout: float = 10) -> bool:
        """SIGCONT if paused, then stop by PID."""
        self.resume()
        self.server.stop(timeout)
        return True

    def log_tail(self) -> str:
        """The end of the server's log."""
        return tail(Path(self.server.log_file)) if self.server.log_file else ""


# --------------------------------------------------------------------------------------------
# The load generator


class PacedLoad:
    """Publishes ``ExperimentFinished`` at ``rate``/s, one awaited PubAck at a time, recording the acked ids.

    A publish that errors or times out is retried with the same ``event_id`` (so a stored event
    whose ack was lost is deduplicated, never counted twice); only an ack adds to :attr:`acked`.
    """

    def __init__(self, url: str, rate: float, agent: str = "soak-load") -> None:
        self.url, self.rate, self.agent = url, rate, agent
        self.acked: set[str] = set()
        self.attempted = 0
        self.errors = 0
        self.last_error = ""
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def event(self, i: int) -> streams.ExperimentFinished:
        """The ``i``-th event (deterministic id; a separate task so it does not disturb the agents)."""
        return load_event(self.agent, i, f"branin/soak-{i % 7}")

    async def _run(self) -> None:
        nc = await streams.connect(self.url, **quiet("soak-load"))
        try:
            pub = streams.Publisher(nc.jetstream())
            t0 = time.monotonic()
            i = 0
            while not self._stop.is_set():
                ev = self.event(i)
                self.attempted = i + 1
                while not self._stop.is_set():
                    try:
                        await pub.publish(ev, timeout=2.0)
                    except Exception as e:  # retried with the same id until acked
                        self.errors += 1
                        self.last_error = f"{type(e).__name__}: {e}"[:200]
                        await asyncio.sleep(0.2)
                        continue
                    self.acked.add(ev.event_id)
                    break
                i += 1
                delay = t0 + i / self.rate - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)

    def start(self) -> PacedLoad:
        """Start publishing in the running event loop."""
        self._task = asyncio.ensure_future(self._run())
        return self

    async def stop(self) -> set[str]:
        """Stop publishing (an in-flight publish is finished or abandoned); return the acked ids."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._task, 30)
        return self.acked


# --------------------------------------------------------------------------------------------
# The soak


@dataclass
class Fault:
    """One injected fault: when (s since start), what, to which component, and for how long."""

    t: float
    kind: str  # "kill" | "pause"
    target: str
    pid: int | None
    held_s: float = 0.0
    restarted_after_s: float | None = None


@dataclass
class Crash:
    """A component that exited on its own (not by the soak's SIGKILL)."""

    t: float
    name: str
    exit_code: int | None
    after_fault: str | None
    log_tail: str


@dataclass
class Failure:
    """An error a component logged (level error or critical), e.g. an agent task that died."""

    t: float
    name: str
    event: str
    error: str
    after_fault: str | None


@dataclass
class Soak:
    """The soak's state: components, faults, samples; :meth:`run` does everything."""

    args: argparse.Namespace
    data: Path
    url: str = ""
    components: list[Component] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    crashes: list[Crash] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    unclean_stops: list[str] = field(default_factory=list)
    log_offsets: dict[str, int] = field(default_factory=dict)
    conn_errors: dict[str, int] = field(default_factory=dict)
    agent_failed_at: dict[str, float] = field(default_factory=dict)
    lingering: list[str] = field(default_factory=list)
    phase: str = "soak"
    samples: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    nats: Any = None
    t0: float = 0.0
    nodes: int = 1

    def now(self) -> float:
        """Seconds since the soak started."""
        return round(time.monotonic() - self.t0, 2)

    @property
    def db(self) -> Path:
        """The materializer's DuckDB file."""
        return self.data / "hive.duckdb"

    def named(self, kind: str) -> list[Component]:
        """The components of one kind."""
        return [c for c in self.components if c.kind == kind]

    # ---- start-up ----------------------------------------------------------------------------

    def start_nats(self) -> None:
        """The cluster when the checkout has one and ``--nodes`` > 1, else one server."""
        cluster_cls: Any = getattr(streams, "EmbeddedCluster", None)
        want = self.args.nodes
        if want > 1 and cluster_cls is None:
            self.notes.append("streams.EmbeddedCluster not available: ran against one EmbeddedServer")
            want = 1
        self.nodes = want
        logs = self.data / "logs"
        if want > 1:
            self.nats = cluster_cls(want, store_dir=self.data / "nats", log_dir=logs)
            self.nats.start()
            self.url = self.nats.url
            for i, srv in enumerate(self.nats.servers):
                node = NatsNode(f"nats-{i + 1}", srv, self.nats, i)
                node.starts = 1
                self.components.append(node)
        else:
            self.nats = streams.EmbeddedServer(store_dir=self.data / "nats", log_file=logs / "nats.log")
            self.nats.start()
            self.url = self.nats.url
            node = NatsNode("nats", self.nats)
            node.starts = 1
            self.components.append(node)

    async def provision_stream(self) -> None:
        """Create the HIVE stream (R3 on a cluster) before any client's ``ensure_stream`` does."""
        nc = await streams.connect(self.url, **quiet("soak-setup"))
        try:
            js = nc.jetstream()
            if self.nodes > 1:
                with contextlib.suppress(Exception):
                    await js.add_stream(streams.stream_config(replicas=min(3, self.nodes)))
            await streams.ensure_stream(js)
            info = await js.stream_info(streams.STREAM)
            self.notes.append(f"stream replicas={info.config.num_replicas}")
        finally:
            await nc.close()

    def start_hive(self) -> None:
        """The materializer and the agents."""
        logs = self.data / "logs"
        a = self.args
        mat = HiveProc(
            "materializer",
            "materializer",
            ["materialize", "--nats", self.url, "--db", str(self.db)],
            logs / "materializer.log",
        )
        mat.start()
        self.components.append(mat)
        for i in range(a.agents):
            cmd = [
                "agent",
                "run",
                a.agent_type,
                "--nats",
                self.url,
                "--task",
                a.task,
                "--count",
                str(a.per_agent),
            ]
            cmd += ["--id", f"soak-{a.agent_type}-{i + 1}", "--no-model"]
            if a.budget is not None:
                cmd += ["--budget", str(a.budget)]
            p = HiveProc(f"agent-{i + 1}", "agent", cmd, logs / f"agent-{i + 1}.log", nice=a.agent_nice)
            p.start()
            self.components.append(p)

    # ---- faults and supervision --------------------------------------------------------------

    async def restart(self, c: Component) -> None:
        """Start a component again (a NATS restart blocks on health checks: done in a thread)."""
        try:
            await asyncio.to_thread(c.start)
        except Exception as e:
            log(f"restart of {c.name} failed: {type(e).__name__}: {e}; will retry")
            self.notes.append(f"{self.now()}s: restart of {c.name} failed: {e}")

    async def inject(self, rng: random.Random) -> None:
        """One fault: a random kind of component, a random one of it, killed or paused."""
        kinds = [k for k in ("nats", "materializer", "agent") if self.named(k)]
        target = rng.choice(self.named(rng.choice(kinds)))
        if not target.alive():
            return
        action = rng.choice(self.args.actions)
        f = Fault(self.now(), action, target.name, target.pid)
        self.faults.append(f)
        if action == "kill":
            log(f"fault: kill -9 {target.name} (pid {target.pid})")
            target.down_by_fault = True
            await asyncio.to_thread(target.kill9)
            await asyncio.sleep(self.args.restart_delay)
            await self.restart(target)
            target.down_by_fault = False
            f.restarted_after_s = round(self.now() - f.t, 2)
        else:
            log(f"fault: SIGSTOP {target.name} (pid {target.pid}) for {self.args.pause:.0f}s")
            target.pause()
            await asyncio.sleep(self.args.pause)
            target.resume()
            f.held_s = round(self.now() - f.t, 2)

    async def faults_loop(self, stop: asyncio.Event) -> None:
        """A fault every ``--every`` seconds (the first one after the first interval)."""
        rng = random.Random(self.args.seed)
        k = 0
        while not stop.is_set():
            k += 1
            delay = self.args.every * k - self.now()  # a fixed cadence, whatever a fault took
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
            await self.inject(rng)

    def last_fault(self) -> str | None:
        """The latest fault, as text (what preceded a failure)."""
        last = self.faults[-1] if self.faults else None
        return f"{last.kind} {last.target} at {last.t}s" if last else None

    def scan_logs(self) -> list[Component]:
        """Record new error-level log events of every hive process; return agents whose agent failed.

        An agent process runs ``--per-agent`` agents; when one logs ``agent_failed`` and it ran
        only one, the process should exit; if it lingers on for ``LINGER_S``, alive but useless,
        the soak (the supervisor) restarts it and reports it.
        """
        dead: list[Component] = []
        for c in self.components:
            if not isinstance(c, HiveProc):
                continue
            off = self.log_offsets.get(c.name, 0)
            try:
                with open(c.log_path, "rb") as f:
                    f.seek(off)
                    chunk = f.read()
            except OSError:
                continue
            end = chunk.rfind(b"\n") + 1
            self.log_offsets[c.name] = off + end
            for line in chunk[:end].splitlines():
                if not line.startswith(b"{"):
                    continue
                with contextlib.suppress(ValueError):
                    d = orjson.loads(line)
                    if not isinstance(d, dict) or d.get("level") not in ("error", "critical"):
                        continue
                    if str(d.get("logger", "")).startswith("nats"):
                        # nats-py's own "encountered error" on a dropped or refused connection:
                        # the expected echo of a killed or paused node, counted, not a failure.
                        self.conn_errors[c.name] = self.conn_errors.get(c.name, 0) + 1
                        continue
                    exc = str(d.get("exception") or d.get("error") or "").strip().splitlines()
                    f_ = Failure(
                        self.now(), c.name, str(d.get("event")), exc[-1] if exc else "", self.last_fault()
                    )
                    self.failures.append(f_)
                    log(f"COMPONENT ERROR: {c.name} {f_.event}: {f_.error} (last fault: {f_.after_fault})")
                    if f_.event == "agent_failed" and c.kind == "agent" and self.args.per_agent == 1:
                        dead.append(c)
        return dead

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart anything that exited on its own (an unexpected exit) or whose only agent failed."""
        while not stop.is_set():
            for c in self.scan_logs():
                self.agent_failed_at.setdefault(c.name, self.now())
            for name, t in list(self.agent_failed_at.items()):
                c = next(c for c in self.components if c.name == name)
                if not c.alive() or c.down_by_fault:
                    del self.agent_failed_at[name]  # it exited: restarted below as an unexpected exit
                elif self.now() - t > LINGER_S:
                    del self.agent_failed_at[name]
                    log(f"restarting {c.name}: its only agent failed, the process lingers on")
                    self.lingering.append(f"{self.now()}s {c.name}")
                    c.down_by_fault = True
                    if not await asyncio.to_thread(c.stop, 10):
                        self.unclean_stops.append(f"{self.now()}s {c.name} (its agent had failed)")
                    await self.restart(c)
                    c.down_by_fault = False
            for c in self.components:
                if c.down_by_fault or c.alive():
                    continue
                last = self.faults[-1] if self.faults else None
                crash = Crash(
                    self.now(),
                    c.name,
                    c.exit_code(),
                    f"{last.kind} {last.target} at {last.t}s" if last else None,
                    c.log_tail()[-1200:],
                )
                self.crashes.append(crash)
                log(
                    f"UNEXPECTED EXIT: {c.name} exit={crash.exit_code} "
                    f"(last fault: {crash.after_fault}); restarting"
                )
                await self.restart(c)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    # ---- sampling ----------------------------------------------------------------------------

    def proc_metrics(self) -> dict[str, dict[str, int | None]]:
        """RSS (bytes, with children) and open fds of every component, None where it is down."""
        out: dict[str, dict[str, int | None]] = {}
        for c in self.components:
            rss = fds = None
            if c.pid is not None:
                with contextlib.suppress(psutil.Error):
                    p = psutil.Process(c.pid)
                    procs = [p, *p.children(recursive=True)]
                    rss = fds = 0
                    for q in procs:
                        with contextlib.suppress(psutil.Error):
                            rss += q.memory_info().rss
                            fds += q.num_fds()
            out[c.name] = {"rss": rss, "fds": fds}
        return out

    async def sample(self, nc: Any, load: PacedLoad) -> dict[str, Any]:
        """One sample: lag, stream size, resources, WAL and database sizes, load counters."""
        s: dict[str, Any] = {"t": self.now(), "phase": self.phase}
        info: Any
        status: Any
        info, status = await asyncio.gather(
            asyncio.wait_for(nc.jetstream().stream_info(streams.STREAM), 2.5),
            nc.request(streams.STATUS_SUBJECT, b"{}", timeout=2.5),
            return_exceptions=True,
        )
        last_seq = applied = None
        errors = {}
        if isinstance(info, BaseException):
            errors["stream_info"] = type(info).__name__
        else:
            last_seq = info.state.last_seq
            s["stream_bytes"] = info.state.bytes
        if isinstance(status, BaseException):
            errors["status"] = type(status).__name__
        else:
            applied = orjson.loads(status.data)["applied_seq"]
        if errors:
            s["errors"] = errors  # no answer within 2.5 s: a paused or restarting component
        s["stream_last_seq"] = last_seq
        s["applied_seq"] = applied
        s["lag"] = max(0, last_seq - applied) if last_seq is not None and applied is not None else None
        s["procs"] = await asyncio.to_thread(self.proc_metrics)
        wal = self.db.with_name(self.db.name + ".wal")
        s["wal_bytes"] = wal.stat().st_size if wal.exists() else 0
        s["db_bytes"] = self.db.stat().st_size if self.db.exists() else 0
        s["acked"] = len(load.acked)
        s["load_errors"] = load.errors
        s["down"] = [c.name for c in self.components if not c.alive()]
        s["paused"] = [c.name for c in self.components if c.paused]
        return s

    async def sample_loop(self, stop: asyncio.Event, load: PacedLoad) -> None:
        """A sample every ``--sample`` seconds, with a progress line."""
        nc = await streams.connect(self.url, **quiet("soak-sampler"))
        try:
            while not stop.is_set():
                s = await self.sample(nc, load)
                self.samples.append(s)
                rss = sum((p["rss"] or 0) for p in s["procs"].values()) / soak_report.MiB
                log(
                    f"t={s['t']:6.0f}s seq={s['stream_last_seq']} applied={s['applied_seq']} lag={s['lag']} "
                    f"acked={s['acked']} rss={rss:.0f}MiB wal={s['wal_bytes'] / soak_report.MiB:.1f}MiB "
                    f"down={s['down'] or '-'} paused={s['paused'] or '-'}"
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.args.sample)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)

    # ---- the end -----------------------------------------------------------------------------

    async def quiesce(self, load: PacedLoad) -> tuple[set[str], dict[str, Any]]:
        """Heal, stop the load and the agents, wait for the materializer to catch up, stop it."""
        for c in self.components:
            c.resume()
        for c in self.components:
            if not c.alive():
                await self.restart(c)
        acked = await load.stop()
        log(f"load stopped: {len(acked)} acked of {load.attempted} attempted ({load.errors} publish errors)")
        for c in self.named("agent"):
            if not await asyncio.to_thread(c.stop):
                self.unclean_stops.append(f"{self.now()}s {c.name} (end of soak)")
                log(f"{c.name} did not stop within 20 s of SIGTERM: killed")
        self.scan_logs()
        caught_up: dict[str, Any] = {"caught_up": False}
        q0 = self.now()
        nc = await streams.connect(self.url, **quiet("soak-quiesce"))
        try:
            deadline = time.monotonic() + self.args.drain_timeout
            stable = 0
            while time.monotonic() < deadline:
                s = await self.sample(nc, load)
                self.samples.append(s)
                if s["lag"] == 0:
                    stable += 1
                    if stable >= 3:
                        caught_up = {
                            "caught_up": True,
                            "after_s": round(s["t"] - q0, 1),
                            "seq": s["applied_seq"],
                        }
                        break
                else:
                    stable = 0
                await asyncio.sleep(1.0)
            log(f"materializer caught up: {caught_up}")
        finally:
            await nc.close()
        for c in self.named("materializer"):
            if not await asyncio.to_thread(c.stop):
                self.unclean_stops.append(f"{self.now()}s {c.name} (end of soak)")
        self.scan_logs()
        return acked, caught_up

    async def run(self) -> dict[str, Any]:
        """Start everything, soak, quiesce and check; return the report."""
        a = self.args
        main_task = asyncio.current_task()
        if main_task is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
        (self.data / "logs").mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        await asyncio.to_thread(self.start_nats)
        await self.provision_stream()
        self.start_hive()
        log(f"started: {', '.join(f'{c.name}={c.pid}' for c in self.components)}; url {self.url}")
        load = PacedLoad(self.url, a.rate).start()
        stop_faults, stop_rest = asyncio.Event(), asyncio.Event()
        faults = asyncio.ensure_future(self.faults_loop(stop_faults))
        rest = [
            asyncio.ensure_future(self.sample_loop(stop_rest, load)),
            asyncio.ensure_future(self.supervise(stop_rest)),
        ]
        try:
            await asyncio.sleep(a.minutes * 60)
        finally:
            stop_faults.set()  # a fault in progress finishes (its restart or SIGCONT), still sampled
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(faults, return_exceptions=True), a.pause + 90)
            stop_rest.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*rest, return_exceptions=True), 30)
        self.phase = "drain"
        log("faults stopped; healing and draining")
        acked, caught_up = await self.quiesce(load)
        stored = await read_stream(self.url)
        applied = await asyncio.to_thread(applied_state, self.db)
        verdict = check(acked, stored, applied, quiescent=True)
        log(f"checker: {verdict.summary()}")
        soak_samples = [s for s in self.samples if s["phase"] == "soak"]
        bounds = soak_report.resource_bounds(soak_samples, pct=a.bound_pct)
        unbounded = [k for k, v in bounds.items() if not v["bounded"]]
        invariants = {
            "nothing_acked_lost": not (verdict.lost_from_stream or verdict.lost_from_db),
            "nothing_applied_twice": not (verdict.applied_twice or verdict.wrong_seq),
            "checkpoint_agrees": not (verdict.unaccounted_seqs or verdict.checkpoint_behind),
            "materializer_caught_up": bool(caught_up.get("caught_up")),
            "no_unexpected_exits": not self.crashes,
            "no_component_errors": not self.failures,
            "stops_on_sigterm": not self.unclean_stops,
            "resources_bounded": not unbounded,
        }
        return {
            "title": (
                f"hive soak: {a.minutes:g} min, a fault every {a.every:g}s, "
                f"{'cluster of ' + str(self.nodes) if self.nodes > 1 else 'single nats-server'}, "
                f"{a.agents}x{a.per_agent} {a.agent_type} on {a.task}, load {a.rate:g}/s"
            ),
            "config": {k: v for k, v in vars(a).items() if k != "out"} | {"nodes": self.nodes},
            "elapsed_s": self.now(),
            "invariants": invariants,
            "unbounded": unbounded,
            "verdict": asdict(verdict),
            "caught_up": caught_up,
            "load": {
                "attempted": load.attempted,
                "acked": len(acked),
                "errors": load.errors,
                "last_error": load.last_error,
            },
            "faults": [asdict(f) for f in self.faults],
            "crashes": [asdict(c) for c in self.crashes],
            "failures": [asdict(f) for f in self.failures],
            "unclean_stops": self.unclean_stops,
            "client_connection_errors": self.conn_errors,
            "lingering_agent_processes": self.lingering,
            "restarts": {c.name: c.starts - 1 for c in self.components},
            "bounds": bounds,
            "notes": self.notes,
            "samples": self.samples,
        }

    def teardown(self) -> None:
        """Stop every process by PID, whatever happened (agents, then materializer, then NATS)."""
        for c in sorted(self.components, key=lambda c: ["agent", "materializer", "nats"].index(c.kind)):
            with contextlib.suppress(Exception):
                if isinstance(c, HiveProc):
                    c.stop(10)
                else:
                    c.resume()
        if self.nats is not None:
            with contextlib.suppress(Exception):
                self.nats.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=30.0, help="how long faults are injected")
    ap.add_argument("--every", type=float, default=60.0, help="seconds between faults")
    ap.add_argument(
        "--out", type=Path, default=Path("bench/results/soak"), help="soak.json and soak.png go here"
    )
    ap.add_argument("--nodes", type=int, default=3, help="NATS nodes (1: a single server)")
    ap.add_argument("--agents", type=int, default=3, help="agent processes")
    ap.add_argument("--per-agent", type=int, default=1, help="agents in each process (--count)")
    ap.add_argument("--agent-type", default="researcher")
    ap.add_argument("--task", default="branin/0")
    ap.add_argument("--budget", type=float, default=None, help="override the task's budget")
    ap.add_argument("--agent-nice", type=int, default=10, help="niceness of agent processes (as hive up)")
    ap.add_argument("--rate", type=float, default=20.0, help="load generator events per second")
    ap.add_argument(
        "--pause", type=float, default=12.0, help="SIGSTOP duration (above the clients' 2-10 s timeouts)"
    )
    ap.add_argument("--restart-delay", type=float, default=2.0, help="seconds a killed component stays down")
    ap.add_argument("--actions", nargs="+", default=["kill", "pause"], choices=["kill", "pause"])
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    ap.add_argument(
        "--bound-pct", type=float, default=50.0, help="last-third max may exceed first-third max by this %%"
    )
    ap.add_argument(
        "--drain-timeout", type=float, default=180.0, help="seconds to wait for the materializer at the end"
    )
    ap.add_argument("--seed", type=int, default=None, help="fault schedule seed (default: random, recorded)")
    ap.add_argument(
        "--data", type=Path, default=None, help="data dir (default: a temporary one, removed unless --keep)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the data dir (logs, store, DuckDB)")
    args = ap.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the soak; write soak.json / soak.png; print the summary line; 1 if an invariant failed."""
    args = parse_args(argv)
    tmp = args.data is None
    data = Path(tempfile.mkdtemp(prefix="hive-soak-")) if tmp else args.data
    data.mkdir(parents=True, exist_ok=True)
    soak = Soak(args, data)
    log(f"data dir {data}; seed {args.seed}")
    # Ctrl-C cancels the run (a shell may have started us with SIGINT ignored: restore it);
    # SIGTERM does the same (see Soak.run). Either way teardown stops every process by PID.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    report: dict[str, Any] | None = None
    try:
        report = asyncio.run(soak.run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted: stopping every process")
    finally:
        soak.teardown()
        if tmp and not args.keep:
            shutil.rmtree(data, ignore_errors=True)
        elif report is not None:
            report["data_dir"] = str(data)
    if report is None:
        return 130
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(report, indent=1, default=str))
    soak_report.plot(report, args.out / "soak.png")
    for name, ok in report["invariants"].items():
        log(f"invariant {name}: {'ok' if ok else 'FAILED'}")
    for k in report["unbounded"]:
        b = report["bounds"][k]
        log(
            f"unbounded {k}: first-third max {b['first_third_max']} "
            f"last-third max {b['last_third_max']} (limit {b['limit']:.0f})"
        )
    for c in report["crashes"]:
        log(f"unexpected exit at {c['t']}s: {c['name']} exit={c['exit_code']} after {c['after_fault']}")
    for f in report["failures"]:
        log(f"component error at {f['t']}s: {f['name']} {f['event']}: {f['error']} after {f['after_fault']}")
    for g in report["lingering_agent_processes"]:
        log(f"agent process lingered on after its only agent failed: {g}")
    for u in report["unclean_stops"]:
        log(f"did not stop on SIGTERM within the grace period: {u}")
    print(soak_report.summary_line(report), flush=True)
    return 0 if all(report["invariants"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
