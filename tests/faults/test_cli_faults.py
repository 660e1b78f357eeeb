"""The CLI under the failures a user can cause: one clear ``Error:`` line, a non-zero exit, no
traceback, a bounded wait; and long-running commands obey SIGTERM/SIGINT while still trying to
connect to a server that is not there. Every case runs the real entry point as a subprocess."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import streams

from ..conftest import CHILD_ENV, run_hive

BAD_PORT_URL = "nats://127.0.0.1:99999"


def _closed_port_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"nats://127.0.0.1:{port}"


def _assert_one_clear_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "Traceback" not in out, out
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, r.stderr
    for needle in needles:
        assert needle in errors[0], r.stderr
    assert len(r.stderr.strip().splitlines()) <= 3, r.stderr  # the line, not a page of noise


def _events_file(tmp_path: Path) -> Path:
    f = tmp_path / "events.jsonl"
    f.write_bytes(streams.encode(streams.example("ExperimentFinished")) + b"\n")
    return f


def _args(command: str, url: str, tmp_path: Path) -> list[str]:
    return {
        "status": ["status", "--nats", url],
        "rebuild": ["rebuild", "--nats", url, "--db", str(tmp_path / "r.duckdb")],
        "model-list": ["model", "list", "--nats", url],
        "publish": ["publish", "--nats", url, str(_events_file(tmp_path))],
        "materialize": ["materialize", "--nats", url, "--db", str(tmp_path / "m.duckdb")],
    }[command]


@pytest.mark.parametrize(
    "command",
    [
        "status",
        "rebuild",
        pytest.param("publish", marks=pytest.mark.faults_full),
        pytest.param("model-list", marks=pytest.mark.faults_full),
        pytest.param("materialize", marks=pytest.mark.faults_full),
    ],
)
def test_port_out_of_range_is_one_line(command: str, tmp_path: Path) -> None:
    """`--nats nats://127.0.0.1:99999` gives one "invalid NATS URL" line naming the URL, exit != 0,
    no traceback (it printed a 63-line nats-py traceback)."""
    r = run_hive(*_args(command, BAD_PORT_URL, tmp_path), timeout=60)
    _assert_one_clear_error(r, "invalid NATS URL", BAD_PORT_URL)


@pytest.mark.parametrize(
    "command",
    [
        "rebuild",
        "status",
        pytest.param("model-list", marks=pytest.mark.faults_full),
        pytest.param("publish", marks=pytest.mark.faults_full),
    ],
)
def test_one_shot_commands_give_up_on_an_unreachable_server(command: str, tmp_path: Path) -> None:
    """One-shot commands against a server that is not there stop trying after a bounded connect
    time and say they cannot reach NATS (`hive rebuild` used to retry forever)."""
    url = _closed_port_url()
    t0 = time.monotonic()
    r = run_hive(*_args(command, url, tmp_path), timeout=60)
    assert time.monotonic() - t0 < 30
    _assert_one_clear_error(r, "NATS", url)


def test_rebuild_refuses_a_file_that_is_not_duckdb(tmp_path: Path) -> None:
    """`hive rebuild --db FILE` on a file that is not DuckDB says so in one line, names the file,
    and leaves it alone (it printed a DuckDB IOException traceback)."""
    db = tmp_path / "notes.duckdb"
    db.write_text("these are my notes, not a database\n")
    r = run_hive("rebuild", "--nats", _closed_port_url(), "--db", str(db), timeout=60)
    _assert_one_clear_error(r, "not a DuckDB database", str(db))
    assert db.read_text() == "these are my notes, not a database\n"


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "hive", *args],
        env={**CHILD_ENV, "HIVE_LOG_LEVEL": "info"},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def _wait_until_connecting(p: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """Wait until the child has reported a failed connect attempt (it is in its retry loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert p.poll() is None, log.read_text(errors="replace")
        if "Connect call failed" in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"no connect attempt logged: {log.read_text(errors='replace')[-2000:]}")


@pytest.mark.parametrize(
    ("command", "sig"),
    [
        ("materialize", signal.SIGTERM),
        ("materialize", signal.SIGINT),
        ("agent", signal.SIGTERM),
        pytest.param("agent", signal.SIGINT, marks=pytest.mark.faults_full),
    ],
)
def test_long_running_commands_obey_signals_while_connecting(
    command: str, sig: signal.Signals, tmp_path: Path
) -> None:
    """`hive materialize` and `hive agent run` against an unreachable server exit within 5 s of
    SIGTERM or SIGINT, without a traceback (they ignored both while retrying the connect)."""
    url = _closed_port_url()
    args = (
        ["materialize", "--nats", url, "--db", str(tmp_path / "m.duckdb")]
        if command == "materialize"
        else ["agent", "run", "researcher", "--nats", url, "--task", "branin/0", "--no-model"]
    )
    log = tmp_path / "child.log"
    p = _start(args, log)
    try:
        _wait_until_connecting(p, log)
        t0 = time.monotonic()
        p.send_signal(sig)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{command} still running 5 s after {sig.name}")
        assert time.monotonic() - t0 <= 5
        assert "Traceback" not in log.read_text(errors="replace")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_status_survives_what_the_server_lacks(nats_server: streams.EmbeddedServer) -> None:
    """`hive status --json` on a server with no HIVE stream, a "materializer" answering an empty
    status, and a monitoring URL that is not HTTP prints what it can (exit 0, no traceback) and
    does not create the stream."""
    import asyncio
    import json
    import threading

    url = nats_server.url
    port = url.rsplit(":", 1)[1]
    ready, done = threading.Event(), threading.Event()
    result: dict[str, object] = {}

    async def responder() -> None:  # a real subscriber on the status subject, answering {}
        client = await streams.connect(url, name="odd-materializer")
        try:

            async def answer(msg: Any) -> None:
                await msg.respond(b"{}")

            await client.subscribe(streams.STATUS_SUBJECT, cb=answer)
            await client.flush()
            ready.set()
            while not done.is_set():
                await asyncio.sleep(0.05)
            result["has_stream"] = streams.STREAM in [
                s.config.name for s in await client.jetstream().streams_info()
            ]
        finally:
            await client.close()

    t = threading.Thread(target=lambda: asyncio.run(responder()))
    t.start()
    try:
        assert ready.wait(30)
        r = run_hive("status", "--nats", url, "--monitor", f"http://127.0.0.1:{port}", "--json", timeout=60)
        table = run_hive("status", "--nats", url, "--monitor", f"http://127.0.0.1:{port}", timeout=60)
    finally:
        done.set()
        t.join(30)
    assert r.returncode == 0 and "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    st = json.loads(r.stdout)
    assert st["stream"]["exists"] is False and st["stream"]["last_seq"] == 0
    assert st["durability"]["setting"] == "unknown"
    assert st["materializer"]["running"] is True
    assert table.returncode == 0 and "Traceback" not in table.stdout + table.stderr, table.stderr
    assert result["has_stream"] is False


def test_status_without_jetstream_is_one_line(tmp_path: Path) -> None:
    """`hive status` against a NATS server without JetStream says so in one line (exit != 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = subprocess.Popen(
        [streams.find_nats_server(), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as c:
                if c.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        r = run_hive(
            "status", "--nats", f"nats://127.0.0.1:{port}", "--monitor", "http://127.0.0.1:1", timeout=60
        )
        _assert_one_clear_error(r, "JetStream")
    finally:
        srv.terminate()
        srv.wait(10)
