"""Shared fixtures: real nats-server processes on random loopback ports, temporary stores,
real DuckDB files, and helpers to run hive commands as child processes (stopped by PID)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import streams


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[streams.EmbeddedServer]:
    """A fresh nats-server with JetStream on a random loopback port and a temporary store."""
    srv = streams.EmbeddedServer(store_dir=tmp_path / "nats", http_port=0)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def nc(nats_server: streams.EmbeddedServer) -> AsyncIterator[Any]:
    """A connected NATS client with the hive stream provisioned."""
    client = await streams.connect(nats_server.url, name="test")
    await streams.ensure_stream(client.jetstream())
    try:
        yield client
    finally:
        await client.close()


CHILD_ENV = {**os.environ, "HIVE_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}


class Proc:
    """A hive child process, killed by PID at teardown whatever happened."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.log = log
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        self.p = subprocess.Popen(
            [sys.executable, "-m", "hive", *args],
            env={**CHILD_ENV, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def kill9(self) -> None:
        """SIGKILL, as a crash would."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit code."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return self.p.returncode

    def output(self) -> str:
        """What the process printed so far (stdout and stderr)."""
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start ``python -m hive ARGS...`` children; all are stopped at teardown."""
    procs: list[Proc] = []
    counter = iter(range(10_000))

    def start(*args: str, env: dict[str, str] | None = None) -> Proc:
        p = Proc(list(args), env, tmp_path / f"proc-{next(counter)}.log")
        procs.append(p)
        return p

    try:
        yield start
    finally:
        for p in procs:
            p.stop(5)


def run_hive(
    *args: str, input: bytes | None = None, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a hive command to completion and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "hive", *args],
        input=input.decode() if input else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**CHILD_ENV, **(env or {})},
    )


def db_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` from a DuckDB file opened read-only (no materializer may own it)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def pid_alive(pid: int) -> bool:
    """Whether a process with this id still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def wait_for(
    cond: Callable[[], Any], timeout: float = 30, every: float = 0.1, what: str = "condition"
) -> Any:
    """Await until ``cond()`` (sync or async) returns a truthy value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
            if asyncio.iscoroutine(last):
                last = await last
        except Exception as e:  # keep trying until the deadline
            last = e
        if last and not isinstance(last, Exception):
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")
