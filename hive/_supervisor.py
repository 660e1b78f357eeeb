"""``hive up``: the whole swarm on one machine — embedded NATS, materializer + query service,
distiller, and N agents as separate processes — with live progress, stopped cleanly by
Ctrl-C / SIGTERM or after ``--duration``. State lives in one directory; a second ``hive up``
on the same directory continues from the log.

``--secure`` runs it locked down exactly as compose does: credentials and the model-signing
keys are generated (or reused) in ``<data>/credentials`` (the same files as ``hive credentials``),
the embedded server gets their ``authorization`` block (bcrypt hashes, per-role permissions),
the materializer and the distiller connect as their roles (``HIVE_NATS_CREDENTIALS``), each
agent claims an identity from its type's pool (``HIVE_AGENT_POOL``) and the supervisor's own
connection (progress queries) is the admin's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.live import Live
from rich.table import Table

import streams
from streams import _auth

log = structlog.get_logger("hive.up")

PROGRESS_SQL = {
    "experiments": "SELECT count(*), count(*) FILTER (WHERE success), count(*) FILTER (WHERE status <> 'ok') "
    "FROM experiments",
    "deployments": "SELECT count(*), count(*) FILTER (WHERE success) FROM deployments",
    "best": "SELECT b.task, b.best_objective, avg(e.objective) FILTER (WHERE e.proposer = 'baseline') "
    "FROM best_per_task b JOIN experiments e USING (task) GROUP BY ALL ORDER BY b.task LIMIT 8",
    "agents": "SELECT liveness, count(*) FROM agent_liveness GROUP BY ALL",
    "models": "SELECT coalesce(max(version) FILTER (WHERE decision = 'published'), 0), "
    "count(*) FILTER (WHERE decision = 'rejected') FROM models",
    "abandoned": "SELECT count(*) FROM experiment_status WHERE state = 'abandoned'",
}


@dataclass
class UpConfig:
    """What ``hive up`` runs (the CLI's options)."""

    data_dir: Path = Path("./hive-data")
    agents: int = 4
    types: list[str] = field(default_factory=lambda: ["researcher", "deployer", "analyst"])
    task: str = "hartmann6/0"
    duration_s: float | None = 120.0
    nats_url: str | None = None
    port: int = 4222
    http_port: int = 8222
    distill: bool = True
    distill_every_traces: int = 200
    extra_agent_args: list[str] = field(default_factory=list)
    agent_nice: int = 10
    """Scheduling niceness added to agent processes: on a shared machine the agents' fast
    synthetic tasks would otherwise starve the materializer and the distiller, and a generation
    that takes minutes instead of seconds is what slows the hive's learning down."""
    secure: bool = False
    """Auth on: per-role credentials in ``<data>/credentials``, an embedded server that requires them."""
    cluster: int = 1
    """Embedded NATS nodes: above 1, a JetStream cluster on loopback (``<data>/nats-cluster``); from
    3 the stream and buckets are R3 and the swarm rides out the loss of one node."""
    durability: str = "default"
    """The embedded server's fsync policy: ``default``, ``always`` or an interval (``30s``)."""


_CREDENTIAL_ENV = (
    _auth.ENV_CREDENTIALS,
    _auth.ENV_POOL,
    "HIVE_NATS_USER",
    "HIVE_NATS_PASSWORD",
    "HIVE_NATS_INBOX_PREFIX",
    "HIVE_NATS_TLS_CA",
)
"""Login settings a ``--secure`` child must not inherit from the supervisor's environment."""
SIGNING_KEY_ENV = "HIVE_SIGNING_KEY"
"""The model-signing key's path: only the distiller may inherit it (it is given ``--key`` anyway)."""
MONITOR_FILE = "nats.monitor"
"""``<data>/nats.monitor``: the monitoring URL(s) of the embedded server, one a line, beside
``nats.url`` (``hive status`` reads the durability setting there)."""
STOP_WAIT_S = 30.0
"""How long a stopping child gets after SIGTERM before SIGKILL."""
CATCH_UP_S = 20.0
"""How long the final summary waits for the materializer to apply the agents' last events."""


def write_endpoints(data_dir: Path, url: str, monitor_urls: list[str] | None) -> None:
    """Record where a server of this state directory listens: ``nats.url`` (its client URL(s)) and
    ``nats.monitor`` (its monitoring URL(s), one a line; removed when unknown)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "nats.url").write_text(url + "\n")
    monitor = data_dir / MONITOR_FILE
    if monitor_urls:
        monitor.write_text("".join(f"{u}\n" for u in monitor_urls))
    else:
        monitor.unlink(missing_ok=True)


def _lower_priority(nice: int) -> None:
    """Run in a child before exec: add ``nice``, also to its session's autogroup.

    Each child starts its own session (``start_new_session``), and with Linux's autogroup
    scheduling a plain ``nice`` only ranks processes inside one session; the autogroup's own
    nice value is what ranks sessions against each other."""
    os.nice(nice)
    with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as f:
        f.write(str(nice))


def credentials_dir(data_dir: Path) -> Path:
    """Where ``hive up --secure`` keeps its credentials and signing keys: ``<data>/credentials``."""
    return Path(data_dir) / "credentials"


def secure_credentials(directory: Path, needed: dict[str, int]) -> _auth.CredentialSet:
    """The swarm's credentials in ``directory``: reused when complete and big enough for
    ``needed`` (agents per type), else generated afresh (new passwords; signing keys kept)."""
    from ._credentials_cli import load_swarm_credentials, write_swarm_credentials

    creds = load_swarm_credentials(directory, needed)
    if creds is None:
        per_type = max([1, *needed.values()])
        creds, _ = write_swarm_credentials(directory, per_type, list(needed))
        log.info("credentials_generated", directory=str(directory), agents_per_type=per_type)
    return creds


class Swarm:
    """The processes of one ``hive up``; :meth:`run` returns when the swarm has stopped."""

    def __init__(self, cfg: UpConfig, console: Console | None = None) -> None:
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self.server: streams.EmbeddedServer | streams.EmbeddedCluster | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stop = asyncio.Event()
        self.url = cfg.nats_url or ""
        self.logs = cfg.data_dir / "logs"
        self.creds_dir = credentials_dir(cfg.data_dir)
        self.creds: _auth.CredentialSet | None = None
        self._connecting = False
        self.connected = False
        """Whether it has connected to NATS (a run cancelled before that started nothing but a server)."""
        self.plots: list[Path] = []
        """The PNGs written into ``<data>/plots`` at the end (empty if they could not be drawn)."""

    def stop(self) -> None:
        """Ask the swarm to stop (agents first, then the distiller, materializer and server)."""
        self._stop.set()

    def started(self) -> bool:
        """False while connecting to NATS (a stop signal may then cancel :meth:`run` outright:
        nothing is running yet); True otherwise, when a stop must go through :meth:`stop`."""
        return not self._connecting

    def _spawn(self, name: str, *args: str, env: dict[str, str] | None = None, nice: int = 0) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        out = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child process
        base = dict(os.environ)
        if self.cfg.secure:  # exactly the role's login, nothing inherited
            for k in _CREDENTIAL_ENV:
                base.pop(k, None)
        if name != "distiller":  # the signing key is the distiller's alone
            base.pop(SIGNING_KEY_ENV, None)
        env = {**base, "HIVE_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "hive", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops the children
            preexec_fn=(lambda: _lower_priority(nice)) if nice else None,  # the supervisor is single-threaded
        )
        out.close()
        self._write_pids()

    def _write_pids(self) -> None:
        """Record the swarm's process ids in ``<data>/up.pids`` (for operators and tests)."""
        import json

        pids = {name: p.pid for name, p in self.procs.items()}
        if isinstance(self.server, streams.EmbeddedCluster):
            for i, pid in enumerate(self.server.pids, 1):
                if pid is not None:
                    pids[f"nats-server-{i}"] = pid
        elif self.server is not None and self.server.pid is not None:
            pids["nats-server"] = self.server.pid
        (self.cfg.data_dir / "up.pids").write_text(json.dumps(pids, indent=1))

    def agent_plan(self) -> list[tuple[str, str]]:
        """``(agent_type, agent_id)`` for each agent: types assigned round-robin.

        With ``secure`` the id only names the process and its log: the agent publishes as the
        identity it claims from its type's pool (``<type>-01`` …).
        """
        return [
            (self.cfg.types[i % len(self.cfg.types)], f"{self.cfg.types[i % len(self.cfg.types)]}-{i}")
            for i in range(self.cfg.agents)
        ]

    def agents_per_type(self) -> dict[str, int]:
        """How many agents of each type the plan runs, by type name (the pools ``--secure`` needs).

        A ``module:Class`` type counts under its class's ``type_name`` (what its agents claim as).
        """
        needed = dict.fromkeys((self._type_name(t) for t in self.cfg.types), 0)
        for agent_type, _ in self.agent_plan():
            needed[self._type_name(agent_type)] += 1
        return needed

    @staticmethod
    def _type_name(agent_type: str) -> str:
        from agents import load_agent_type

        return str(load_agent_type(agent_type).type_name)

    def _signing_keys(self) -> tuple[Path, Path]:
        """The distiller's key pair: ``<data>/credentials`` with ``secure`` (or when it already has
        one), else ``<data>/keys``. A pair already in ``<data>/keys`` moves along into the
        credentials directory, so models published before stay verifiable."""
        from ._credentials_cli import ensure_signing_keys, signing_key_paths

        legacy = self.cfg.data_dir / "keys"
        cpriv, cpub = signing_key_paths(self.creds_dir)
        lpriv, lpub = signing_key_paths(legacy)
        if cpriv.exists() or self.cfg.secure:
            if not cpriv.exists() and lpriv.exists():
                self.creds_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(cpriv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(lpriv.read_bytes())
                if lpub.exists():
                    cpub.write_bytes(lpub.read_bytes())
            priv, pub, _ = ensure_signing_keys(self.creds_dir)
            return priv, pub
        legacy.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(legacy, 0o700)  # it holds the private key (0600): not listable by others either
        priv, pub, _ = ensure_signing_keys(legacy)
        return priv, pub

    def distiller_threads(self) -> dict[str, str]:
        """``OMP_NUM_THREADS`` for the distiller: the cores the agents leave free (at least 1),
        unless already set. torch's thread pool competing with busy agents trains ~20x slower."""
        if os.environ.get("OMP_NUM_THREADS"):
            return {}
        cpus = os.cpu_count() or 1
        return {"OMP_NUM_THREADS": str(max(1, cpus - min(self.cfg.agents, cpus)))}

    def _role_env(self, role: str, agent_type: str | None = None) -> dict[str, str]:
        """The environment that logs a child in as ``role`` (empty without ``secure``)."""
        if not self.cfg.secure:
            return {}
        if role == "agent":
            assert agent_type is not None
            return {_auth.ENV_POOL: str(_auth.pool_file(self.creds_dir, self._type_name(agent_type)))}
        return {_auth.ENV_CREDENTIALS: str(_auth.credentials_file(self.creds_dir, role))}

    async def run(self) -> dict[str, Any]:
        """Start everything, show progress until stopped, stop everything; returns the final
        progress, read after the agents stopped and the materializer applied their last events.

        Signals are the caller's: the CLI runs this under :func:`hive._signals.until_signal` with
        :meth:`stop` and :meth:`started` (a cancel while connecting still stops what was started).
        At the end the plots are written into ``<data>/plots`` (:attr:`plots`).
        """
        cfg = self.cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        final: dict[str, Any] = {}
        if cfg.secure and cfg.nats_url:
            raise ValueError("--secure starts its own server; it cannot be combined with --nats")
        try:
            admin: dict[str, Any] = {}
            extra_config = ""
            if cfg.secure:
                needed = self.agents_per_type()
                self.creds = await asyncio.to_thread(secure_credentials, self.creds_dir, needed)
                admin = _auth.connect_options(self.creds.admin)
                # The same authorization block compose's nats.conf includes (written beside the
                # credentials as auth.conf = render_auth_config(user_entries(...))).
                extra_config = (self.creds_dir / _auth.AUTH_FILE).read_text()
            keys = self._signing_keys()
            if not self.url:
                self.server = await asyncio.to_thread(self._start_server, extra_config)
                self.url = self.server.url
            write_endpoints(cfg.data_dir, self.url, self._monitor_urls())
            self._connecting = True
            try:
                nc = await streams.connect(self.url, name="hive-up", **admin)
                self.connected = True
            finally:
                self._connecting = False
            try:
                if not self._stop.is_set():
                    await streams.ensure_stream(nc.jetstream())
                    self._spawn_all(keys)
                    last = await self._progress(nc)
                    await self._stop_agents()
                    final = await self._final(nc, last)
            finally:
                await nc.close()
        except PermissionError as e:  # a read-only state directory: say so, not "cannot reach NATS"
            where = e.filename or cfg.data_dir
            raise streams.ServerError(f"permission denied: cannot write {where}") from None
        finally:
            self._shutdown()
        if final:
            self.console.print(_render(final))
            self.console.print(f"hive up: final: {_line(final)}; {_agents_line(final)}", soft_wrap=True)
        self._write_plots()
        return final

    def _monitor_urls(self) -> list[str] | None:
        """The embedded server's monitoring URL(s) (None for a server of the user's: unknown)."""
        if isinstance(self.server, streams.EmbeddedCluster):
            return [u for u in self.server.http_urls if u]
        if self.server is not None and self.server.http_url:
            return [self.server.http_url]
        return None

    def _spawn_all(self, keys: tuple[Path, Path]) -> None:
        """Start the materializer, the distiller and the agents, and say what runs."""
        cfg = self.cfg
        self._spawn(
            "materializer",
            "materialize",
            "--nats",
            self.url,
            "--db",
            str(cfg.data_dir / "hive.duckdb"),
            env=self._role_env("materializer"),
        )
        if cfg.distill:
            self._spawn(
                "distiller",
                "distill",
                "--nats",
                self.url,
                "--every-traces",
                str(cfg.distill_every_traces),
                "--key",
                str(keys[0]),
                env={**self._role_env("distiller"), **self.distiller_threads()},
            )
        for agent_type, agent_id in self.agent_plan():
            ident = [] if cfg.secure else ["--id", agent_id]  # secure: claimed from the pool
            self._spawn(
                agent_id,
                "agent",
                "run",
                agent_type,
                "--nats",
                self.url,
                "--task",
                cfg.task,
                *ident,
                "--pubkey",
                str(keys[1]),
                *cfg.extra_agent_args,
                env=self._role_env("agent", agent_type),
                nice=cfg.agent_nice,
            )
        self.console.print(
            f"[bold]hive up[/bold]: NATS {self.url}"
            + (f" ({cfg.cluster}-node cluster)" if self._clustered() else "")
            + (f" (sync {cfg.durability})" if self.server and cfg.durability != "default" else "")
            + (f" (auth on, credentials in {self.creds_dir})" if cfg.secure else "")
            + f", state in {cfg.data_dir}, {cfg.agents} agents "
            f"({', '.join(cfg.types)}) on {cfg.task}"
            + (f", stopping after {cfg.duration_s:g}s" if cfg.duration_s else ", Ctrl-C to stop")
        )
        if cfg.secure:
            self.console.print(
                f"  log in as admin: HIVE_NATS_URL={self.url} {_auth.ENV_CREDENTIALS}="
                f'{_auth.credentials_file(self.creds_dir, "admin")} hive query "..."'
            )

    def _agent_names(self) -> list[str]:
        return [n for n in self.procs if n not in ("materializer", "distiller")]

    async def _stop_agents(self) -> None:
        """SIGTERM every agent and wait (without blocking the loop) until each has exited and so
        published its ``AgentStopped``; SIGKILL one that outlives :data:`STOP_WAIT_S`."""
        agents = [self.procs[n] for n in self._agent_names()]
        for p in agents:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        while any(p.poll() is None for p in agents) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for p in agents:
            if p.poll() is None:
                p.kill()

    async def _final(self, nc: Any, last: dict[str, Any]) -> dict[str, Any]:
        """The progress once the materializer has applied everything in the log (the agents'
        ``AgentStopped`` included), or after :data:`CATCH_UP_S`; ``last`` if it cannot be read."""
        import orjson

        mat = self.procs.get("materializer")
        deadline = time.monotonic() + CATCH_UP_S
        while mat is not None and mat.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                info = await nc.jetstream().stream_info(streams.STREAM)
                reply = await nc.request(streams.STATUS_SUBJECT, b"{}", timeout=2)
                if orjson.loads(reply.data)["applied_seq"] >= info.state.last_seq:
                    break
            await asyncio.sleep(0.2)
        with contextlib.suppress(Exception):
            return await self._snapshot(nc, last.get("elapsed_s", 0.0))
        return last

    def _write_plots(self) -> None:
        """Draw the PNGs of :mod:`hive._plot` from the stopped hive's database into ``<data>/plots``
        and print their paths (a failure is one line, never the end of the run)."""
        from ._plot import write_plots

        db = self.cfg.data_dir / "hive.duckdb"
        if not db.exists():
            return
        mat = self.procs.get("materializer")
        if mat is not None and mat.poll() is None:  # still owns the file (it would not stop)
            return
        try:
            self.plots = write_plots(db, self.cfg.data_dir / "plots")
        except Exception as e:
            log.warning("plots_failed", error=str(e) or type(e).__name__)
            self.console.print(f"hive up: no plots ({type(e).__name__}: {e})")
            return
        self.console.print("hive up: plots " + ", ".join(str(p) for p in self.plots), soft_wrap=True)

    def _clustered(self) -> bool:
        return isinstance(self.server, streams.EmbeddedCluster)

    def _start_server(self, extra_config: str) -> streams.EmbeddedServer | streams.EmbeddedCluster:
        """The embedded NATS: one server (``<data>/nats``) or a cluster (``<data>/nats-cluster``)."""
        cfg = self.cfg
        self.logs.mkdir(parents=True, exist_ok=True)
        if cfg.cluster > 1:
            return streams.EmbeddedCluster(
                cfg.cluster,
                port=cfg.port,
                http_port=cfg.http_port,
                store_dir=cfg.data_dir / "nats-cluster",
                log_dir=self.logs,
                durability=cfg.durability,
                extra_config=extra_config,
            ).start()
        return streams.EmbeddedServer(
            port=cfg.port,
            http_port=cfg.http_port,
            store_dir=cfg.data_dir / "nats",
            log_file=cfg.data_dir / "nats.log",
            durability=cfg.durability,
            extra_config=extra_config,
        ).start()

    async def _progress(self, nc: Any) -> dict[str, Any]:
        """Refresh the progress table (a live table on a terminal, a line every 5 s otherwise)."""
        t0 = time.monotonic()
        last: dict[str, Any] = {}
        live = Live(console=self.console, refresh_per_second=2) if self.console.is_terminal else None
        printed = -5.0
        with live if live is not None else contextlib.nullcontext():
            while not self._stop.is_set():
                elapsed = time.monotonic() - t0
                if self.cfg.duration_s and elapsed >= self.cfg.duration_s:
                    break
                mat = self.procs.get("materializer")
                if mat is not None and mat.poll() is not None:
                    self.console.print(
                        f"[red]materializer exited; see {self.logs / 'materializer.log'}[/red]"
                    )
                    break
                with contextlib.suppress(Exception):
                    last = await self._snapshot(nc, elapsed)
                if last and live is not None:
                    live.update(_render(last))
                elif last and elapsed - printed >= 5:
                    self.console.print(_line(last))
                    printed = elapsed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1.0)
        return last

    async def _snapshot(self, nc: Any, elapsed: float) -> dict[str, Any]:
        out: dict[str, Any] = {"elapsed_s": round(elapsed, 1)}
        for key, sql in PROGRESS_SQL.items():
            out[key] = (await streams.remote_query(nc, sql, timeout_s=2)).rows
        info = await nc.jetstream().stream_info(streams.STREAM)
        reply = await nc.request(streams.STATUS_SUBJECT, b"{}", timeout=2)
        import orjson

        out["lag"] = max(0, info.state.last_seq - orjson.loads(reply.data)["applied_seq"])
        return out

    def _shutdown(self) -> None:
        """Stop whatever still runs: agents, then the distiller, the materializer and the server."""
        order = [*self._agent_names(), "distiller", "materializer"]
        for group in (order[:-2], order[-2:-1], order[-1:]):
            for name in group:
                p = self.procs.get(name)
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for name in group:
                p = self.procs.get(name)
                if p is None:
                    continue
                try:
                    p.wait(STOP_WAIT_S)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if self.server is None and not self.procs:
            return  # nothing was started (e.g. the state directory is not writable)
        if self.server is not None:
            self.server.stop()
        self.console.print(
            f"hive up: stopped; state kept in {self.cfg.data_dir} "
            f'(query it with: hive query --db {self.cfg.data_dir / "hive.duckdb"} "...")'
        )


def _line(p: dict[str, Any]) -> str:
    ((n, s, f),) = p["experiments"]
    ((dn, ds),) = p["deployments"]
    ((mv, rej),) = p["models"]
    return (
        f"[{p['elapsed_s']:>6.1f}s] experiments {n} (success {s}, failed {f}), deployments {dn} "
        f"(success {ds}), model v{mv} ({rej} rejected), lag {p['lag']}"
    )


def _agents_line(p: dict[str, Any]) -> str:
    alive = {k: v for k, v in p["agents"]}
    return (
        f"agents: {alive.get('alive', 0)} alive, {alive.get('dead', 0)} dead, "
        f"{alive.get('stopped', 0)} stopped; abandoned experiments: {p['abandoned'][0][0]}"
    )


def _render(p: dict[str, Any]) -> Table:
    t = Table(title=_line(p), show_header=True, header_style="bold")
    t.add_column("task")
    t.add_column("best so far", justify="right")
    t.add_column("baseline (mean)", justify="right")
    for task, best, base in p["best"]:
        t.add_row(task, f"{best:.4g}", "" if base is None else f"{base:.4g}")
    t.caption = _agents_line(p)
    return t
