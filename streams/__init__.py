"""streams: the event contract and the transport of the hive log (NATS JetStream).

Imports nothing else of hive's. The public surface is ``__all__``.
"""

from ._codec import UPCASTERS, DecodeError, decode, encode, upcaster
from ._connect import DEFAULT_URL, DUPLICATE_WINDOW_S, connect, ensure_stream, stream_config
from ._consumer import ConsumerLost, LogEntry, LogReader
from ._events import (
    EVENT_TYPES,
    EVENTS_BY_KIND,
    MAX_EVENT_BYTES,
    AgentHeartbeat,
    AgentStarted,
    AgentStopped,
    AnyEvent,
    DeploymentFinished,
    Event,
    ExperimentFinished,
    ExperimentStarted,
    GuidancePublished,
    ModelPublished,
    ModelRejected,
    TraceEvent,
    current_version,
    json_schema,
    utcnow,
)
from ._examples import example
from ._publisher import Publisher
from ._query_client import DEFAULT_MAX_ROWS, DEFAULT_TIMEOUT_S, QueryError, QueryResult, remote_query
from ._server import DURABILITY_DOC, Durability, EmbeddedServer, ServerError, find_nats_server
from ._subjects import (
    MODEL_BUCKET,
    POINTER_BUCKET,
    QUERY_SUBJECT,
    STATUS_SUBJECT,
    STREAM,
    STREAM_SUBJECTS,
    subject_agent,
    subject_for,
)

__all__ = [
    "DEFAULT_MAX_ROWS",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_URL",
    "DUPLICATE_WINDOW_S",
    "DURABILITY_DOC",
    "EVENTS_BY_KIND",
    "EVENT_TYPES",
    "MAX_EVENT_BYTES",
    "MODEL_BUCKET",
    "POINTER_BUCKET",
    "QUERY_SUBJECT",
    "STATUS_SUBJECT",
    "STREAM",
    "STREAM_SUBJECTS",
    "UPCASTERS",
    "AgentHeartbeat",
    "AgentStarted",
    "AgentStopped",
    "AnyEvent",
    "ConsumerLost",
    "DecodeError",
    "DeploymentFinished",
    "Durability",
    "EmbeddedServer",
    "Event",
    "ExperimentFinished",
    "ExperimentStarted",
    "GuidancePublished",
    "LogEntry",
    "LogReader",
    "ModelPublished",
    "ModelRejected",
    "Publisher",
    "QueryError",
    "QueryResult",
    "ServerError",
    "TraceEvent",
    "connect",
    "current_version",
    "decode",
    "encode",
    "ensure_stream",
    "example",
    "find_nats_server",
    "json_schema",
    "remote_query",
    "stream_config",
    "subject_agent",
    "subject_for",
    "upcaster",
    "utcnow",
]
