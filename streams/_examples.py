"""One valid example of every event kind (``hive schema --example KIND``), for publishers in
other languages and for tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ._events import EVENTS_BY_KIND, Event

_AT = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
_RECIPE = {"lr": 0.003, "warmup_frac": 0.1, "n_layer": 2, "activation": "gelu"}

_EXAMPLES: dict[str, dict[str, Any]] = {
    "ExperimentStarted": dict(
        event_id="r-1/run-7/start",
        agent_id="r-1",
        agent_type="researcher",
        task="hartmann6/17",
        model_version=3,
        run_id="run-7",
        parent_id="r-2/run-3/finish",
        recipe=_RECIPE,
        seed=7,
        budget=1.0,
        deadline_s=60.0,
    ),
    "ExperimentFinished": dict(
        event_id="r-1/run-7/finish",
        agent_id="r-1",
        agent_type="researcher",
        task="hartmann6/17",
        model_version=3,
        run_id="run-7",
        parent_id="r-2/run-3/finish",
        recipe=_RECIPE,
        seed=7,
        budget=1.0,
        metrics={"value": -2.31},
        objective=-2.31,
        cost_s=0.004,
        status="ok",
        success=True,
        proposer="model-v3",
        proposer_reason="thompson: model-v3 0.31 > mutation 0.22 (18/52 improved on hartmann6)",
    ),
    "DeploymentFinished": dict(
        event_id="d-1/dep-2/finish",
        agent_id="d-1",
        agent_type="deployer",
        task="branin/901",
        model_version=3,
        run_id="dep-2",
        recipe=_RECIPE,
        metrics={"value": 0.52},
        objective=0.52,
        reference="incumbent",
        reference_recipe=_RECIPE,
        reference_objective=0.61,
        reference_task="branin/3",
        reference_score=0.42,
        cost_s=0.003,
        status="ok",
        success=True,
    ),
    "GuidancePublished": dict(
        event_id="a-1/guidance/12",
        agent_id="a-1",
        agent_type="analyst",
        task="charlm",
        topic="divergence",
        avoid={"lr": "> 0.1 with optimizer=sgd"},
        hint="lower lr or enable grad_clip",
        evidence=9,
    ),
    "AgentStarted": dict(
        event_id="r-1/started/1",
        agent_id="r-1",
        agent_type="researcher",
        host="box",
        pid=4242,
        task="hartmann6/0-31",
        heartbeat_s=5.0,
    ),
    "AgentHeartbeat": dict(
        event_id="r-1/heartbeat/1",
        agent_id="r-1",
        agent_type="researcher",
        state="running",
        model_version=3,
        experiments=12,
    ),
    "AgentStopped": dict(event_id="r-1/stopped/1", agent_id="r-1", agent_type="researcher", reason="SIGTERM"),
    "ModelPublished": dict(
        event_id="distiller/policy/4",
        agent_id="distiller",
        agent_type="distiller",
        name="policy",
        version=4,
        parent_version=3,
        sha256="0" * 64,
        size=1_234_567,
        trained_through_seq=5000,
        dataset_size=812,
        eval={"heldout_loss": 0.41, "valid_action_rate": 1.0},
        signature="base64-ed25519-signature",
    ),
    "ModelRejected": dict(
        event_id="distiller/policy/candidate-5",
        agent_id="distiller",
        agent_type="distiller",
        name="policy",
        candidate=5,
        champion_version=4,
        trained_through_seq=6000,
        dataset_size=900,
        eval={"heldout_loss": 0.47},
        reason="held-out loss 0.47 >= champion 0.41",
    ),
}


def example(kind: str) -> Event:
    """A valid example event of ``kind`` (raises KeyError with the known kinds otherwise)."""
    if kind not in EVENTS_BY_KIND:
        raise KeyError(f"unknown kind {kind!r}; known: {', '.join(EVENTS_BY_KIND)}")
    cls = EVENTS_BY_KIND[kind]
    return cls.model_validate({**_EXAMPLES[kind], "occurred_at": _AT}, strict=False)
