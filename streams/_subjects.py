"""Names on the wire: the stream, its subjects, the query subject, the model buckets."""

from __future__ import annotations

from ._events import Event

STREAM = "HIVE"
"""The one JetStream stream holding every event (one sequence = one checkpoint)."""
STREAM_SUBJECTS = ["hive.traces.>", "hive.agents.>", "hive.models.>"]
QUERY_SUBJECT = "hive.query.sql"
"""Request/reply subject of the materializer's read-only SQL service."""
STATUS_SUBJECT = "hive.query.status"
"""Request/reply subject of the materializer's status (applied sequence, counts)."""
MODEL_BUCKET = "hive_models"
"""JetStream Object Store bucket holding model artifacts."""
POINTER_BUCKET = "hive_pointer"
"""JetStream KV bucket whose key ``<name>`` points at the current model version."""


def subject_for(event: Event) -> str:
    """The subject an event is published on.

    * traces: ``hive.traces.<agent_type>.<agent_id>``
    * lifecycle: ``hive.agents.<agent_id>.<started|heartbeat|stopped>``
    * models: ``hive.models.<name>``
    """
    if event.CHANNEL == "traces":
        return f"hive.traces.{event.agent_type}.{event.agent_id}"
    if event.CHANNEL == "agents":
        return f"hive.agents.{event.agent_id}.{event.kind.removeprefix('Agent').lower()}"
    return f"hive.models.{getattr(event, 'name', 'policy')}"


def subject_agent(subject: str) -> str | None:
    """The agent id a subject belongs to, or None for subjects not owned by one agent."""
    parts = subject.split(".")
    if len(parts) == 4 and parts[:2] == ["hive", "traces"]:
        return parts[3]
    if len(parts) == 4 and parts[:2] == ["hive", "agents"]:
        return parts[2]
    return None
