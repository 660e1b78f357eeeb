"""An agent written in another language joins a real hive: the Node.js example (nats.js) publishes
lifecycle and trace events by the documented wire contract, and every one is materialized."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import streams

from .conftest import wait_for

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "node-agent"


@pytest.fixture(scope="module")
def node_agent_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the example with its npm dependency installed (skips when node/npm are missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are not on PATH: the Node.js agent example cannot run here")
    d = tmp_path_factory.mktemp("node-agent")
    for name in ("agent.mjs", "package.json", "package-lock.json"):
        shutil.copy(EXAMPLE / name, d / name)
    r = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"], cwd=d, capture_output=True, text=True, timeout=180
    )
    if r.returncode != 0:
        pytest.skip(f"npm could not install the example's `nats` package: {r.stderr.strip()[-300:]}")
    return d


async def test_node_agent_events_are_materialized(
    nats_server: Any, nc: Any, spawn: Any, tmp_path: Path, node_agent_dir: Path
) -> None:
    """The Node agent's 12 experiments (start + finish), heartbeats and lifecycle are all valid
    (nothing dead-lettered), stored on their subjects, materialized, and read back by the agent
    itself through the query service; a second run under the same id adds new events (its
    incarnation token keeps ids unique), none deduplicated away."""
    db = tmp_path / "hive.duckdb"
    spawn("materialize", "--nats", nats_server.url, "--db", str(db))

    async def service_up() -> bool:
        try:
            await streams.remote_query(nc, "SELECT 1", timeout_s=2)
        except streams.QueryError:
            return False
        return True

    await wait_for(service_up, timeout=60, what="query service")
    env = {
        "PATH": "/usr/bin:/bin",
        "HIVE_NATS_URL": nats_server.url,
        "HIVE_AGENT_ID": "node-1",
        "HIVE_EXPERIMENTS": "12",
    }
    for _run in range(2):
        r = await asyncio.to_thread(
            subprocess.run,
            ["node", "agent.mjs"],
            cwd=node_agent_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stdout + r.stderr
    assert '"experiments":12' in r.stdout or '"experiments":24' in r.stdout

    async def counts() -> Any:
        res = await streams.remote_query(
            nc,
            "SELECT (SELECT count(*) FROM experiments WHERE agent_id = 'node-1'), "
            "(SELECT count(*) FROM experiment_starts WHERE agent_id = 'node-1'), "
            "(SELECT count(*) FROM dead_letters), "
            "(SELECT state FROM agents WHERE agent_id = 'node-1')",
        )
        return res.rows[0] if res.rows[0][0] == 24 else None

    got = await wait_for(counts, timeout=30, what="24 node experiments")
    assert list(got) == [24, 24, 0, "stopped"]
    info = await nc.jetstream().stream_info(streams.STREAM)
    assert info.state.messages == 2 * (1 + 12 * 3 + 1)  # every publish stored, no dedupe across runs
