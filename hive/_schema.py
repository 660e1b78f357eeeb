"""The DuckDB schema: tables, views and versioned migrations.

Table and view names are part of the interface (users query them): ``experiments``
(finished runs), ``experiment_starts``,
``deployments``, ``guidance``, ``agents``, ``models``, ``dead_letters``, ``checkpoint``; views
``experiment_status``, ``best_per_task``, ``success_by_model``, ``deployment_success``,
``agent_liveness``, ``trajectories``, ``proposer_stats``.

Migrations are append-only: each entry is applied once, in order, and recorded in
``schema_migrations``. Never edit a shipped migration; add a new one.
"""

from __future__ import annotations

import contextlib

import duckdb
import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

# Arrow schemas of the rows the projections produce, one per table (column order = table order).
ARROW: dict[str, pa.Schema] = {
    "experiment_starts": pa.schema(
        [
            ("event_id", pa.string()),
            ("seq", pa.int64()),
            ("run_key", pa.string()),
            ("agent_id", pa.string()),
            ("agent_type", pa.string()),
            ("task", pa.string()),
            ("model_version", pa.int64()),
            ("run_id", pa.string()),
            ("parent_id", pa.string()),
            ("recipe", pa.string()),
            ("seed", pa.int64()),
            ("budget", pa.float64()),
            ("deadline_s", pa.float64()),
            ("started_at", TS),
        ]
    ),
    "experiments": pa.schema(
        [
            ("event_id", pa.string()),
            ("seq", pa.int64()),
            ("run_key", pa.string()),
            ("agent_id", pa.string()),
            ("agent_type", pa.string()),
            ("task", pa.string()),
            ("model_version", pa.int64()),
            ("run_id", pa.string()),
            ("parent_id", pa.string()),
            ("recipe", pa.string()),
            ("seed", pa.int64()),
            ("budget", pa.float64()),
            ("metrics", pa.string()),
            ("objective", pa.float64()),
            ("cost_s", pa.float64()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("success", pa.bool_()),
            ("proposer", pa.string()),
            ("finished_at", TS),
            ("proposer_reason", pa.string()),
        ]
    ),
    "deployments": pa.schema(
        [
            ("event_id", pa.string()),
            ("seq", pa.int64()),
            ("agent_id", pa.string()),
            ("agent_type", pa.string()),
            ("task", pa.string()),
            ("model_version", pa.int64()),
            ("run_id", pa.string()),
            ("recipe", pa.string()),
            ("metrics", pa.string()),
            ("objective", pa.float64()),
            ("reference", pa.string()),
            ("reference_recipe", pa.string()),
            ("reference_objective", pa.float64()),
            ("reference_task", pa.string()),
            ("reference_score", pa.float64()),
            ("cost_s", pa.float64()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("success", pa.bool_()),
            ("proposer", pa.string()),
            ("occurred_at", TS),
        ]
    ),
    "guidance": pa.schema(
        [
            ("event_id", pa.string()),
            ("seq", pa.int64()),
            ("agent_id", pa.string()),
            ("agent_type", pa.string()),
            ("task", pa.string()),
            ("model_version", pa.int64()),
            ("topic", pa.string()),
            ("avoid", pa.string()),
            ("hint", pa.string()),
            ("evidence", pa.int64()),
            ("occurred_at", TS),
        ]
    ),
    "agents": pa.schema(
        [
            ("agent_id", pa.string()),
            ("agent_type", pa.string()),
            ("seq", pa.int64()),
            ("host", pa.string()),
            ("pid", pa.int64()),
            ("task", pa.string()),
            ("heartbeat_s", pa.float64()),
            ("started_at", TS),
            ("last_seen", TS),
            ("state", pa.string()),
            ("model_version", pa.int64()),
            ("experiments", pa.int64()),
            ("stopped_at", TS),
            ("stop_reason", pa.string()),
        ]
    ),
    "models": pa.schema(
        [
            ("event_id", pa.string()),
            ("seq", pa.int64()),
            ("decision", pa.string()),
            ("name", pa.string()),
            ("version", pa.int64()),
            ("parent_version", pa.int64()),
            ("sha256", pa.string()),
            ("size", pa.int64()),
            ("trained_through_seq", pa.int64()),
            ("dataset_size", pa.int64()),
            ("eval", pa.string()),
            ("signature", pa.string()),
            ("reason", pa.string()),
            ("agent_id", pa.string()),
            ("occurred_at", TS),
        ]
    ),
    "dead_letters": pa.schema(
        [
            ("seq", pa.int64()),
            ("subject", pa.string()),
            ("reason", pa.string()),
            ("raw", pa.binary()),
            ("logged_at", TS),
        ]
    ),
}

ARROW["agent_events"] = pa.schema([("event_id", pa.string()), *ARROW["agents"]])
"""One row per agent lifecycle event, folded into ``agents`` by the store (not a table itself)."""

_V1 = """
CREATE TABLE checkpoint (
    stream VARCHAR PRIMARY KEY,
    last_seq BIGINT NOT NULL
);
CREATE TABLE experiment_starts (
    event_id VARCHAR PRIMARY KEY, seq BIGINT NOT NULL, run_key VARCHAR NOT NULL,
    agent_id VARCHAR NOT NULL, agent_type VARCHAR NOT NULL, task VARCHAR NOT NULL,
    model_version BIGINT, run_id VARCHAR NOT NULL, parent_id VARCHAR, recipe JSON, seed BIGINT,
    budget DOUBLE, deadline_s DOUBLE, started_at TIMESTAMPTZ
);
CREATE TABLE experiments (
    event_id VARCHAR PRIMARY KEY, seq BIGINT NOT NULL, run_key VARCHAR NOT NULL,
    agent_id VARCHAR NOT NULL, agent_type VARCHAR NOT NULL, task VARCHAR NOT NULL,
    model_version BIGINT, run_id VARCHAR NOT NULL, parent_id VARCHAR, recipe JSON, seed BIGINT,
    budget DOUBLE, metrics JSON, objective DOUBLE, cost_s DOUBLE, status VARCHAR NOT NULL,
    error VARCHAR, success BOOLEAN, proposer VARCHAR, finished_at TIMESTAMPTZ
);
CREATE TABLE deployments (
    event_id VARCHAR PRIMARY KEY, seq BIGINT NOT NULL, agent_id VARCHAR NOT NULL,
    agent_type VARCHAR NOT NULL, task VARCHAR NOT NULL, model_version BIGINT, run_id VARCHAR,
    recipe JSON, metrics JSON, objective DOUBLE, baseline_objective DOUBLE, cost_s DOUBLE,
    status VARCHAR, error VARCHAR, success BOOLEAN, occurred_at TIMESTAMPTZ
);
CREATE TABLE guidance (
    event_id VARCHAR PRIMARY KEY, seq BIGINT NOT NULL, agent_id VARCHAR NOT NULL,
    agent_type VARCHAR NOT NULL, task VARCHAR NOT NULL, model_version BIGINT, topic VARCHAR,
    avoid JSON, hint VARCHAR, evidence BIGINT, occurred_at TIMESTAMPTZ
);
CREATE TABLE agents (
    agent_id VARCHAR PRIMARY KEY, agent_type VARCHAR NOT NULL, seq BIGINT NOT NULL, host VARCHAR,
    pid BIGINT, task VARCHAR, heartbeat_s DOUBLE, started_at TIMESTAMPTZ, last_seen TIMESTAMPTZ,
    state VARCHAR, model_version BIGINT, experiments BIGINT, stopped_at TIMESTAMPTZ, stop_reason VARCHAR
);
CREATE TABLE models (
    event_id VARCHAR PRIMARY KEY, seq BIGINT NOT NULL, decision VARCHAR NOT NULL, name VARCHAR NOT NULL,
    version BIGINT, parent_version BIGINT, sha256 VARCHAR, size BIGINT, trained_through_seq BIGINT,
    dataset_size BIGINT, eval JSON, signature VARCHAR, reason VARCHAR, agent_id VARCHAR,
    occurred_at TIMESTAMPTZ
);
CREATE TABLE dead_letters (
    seq BIGINT PRIMARY KEY, subject VARCHAR, reason VARCHAR NOT NULL, raw BLOB, logged_at TIMESTAMPTZ
);
CREATE VIEW experiment_status AS
SELECT coalesce(f.run_key, s.run_key) AS run_key, coalesce(f.agent_id, s.agent_id) AS agent_id,
    coalesce(f.agent_type, s.agent_type) AS agent_type, coalesce(f.task, s.task) AS task,
    coalesce(f.model_version, s.model_version) AS model_version, coalesce(f.recipe, s.recipe) AS recipe,
    s.started_at, s.deadline_s, f.finished_at, f.objective, f.success, f.error,
    coalesce(f.status, CASE WHEN s.started_at + to_seconds(s.deadline_s) < now() THEN 'abandoned'
                            ELSE 'running' END) AS state
FROM experiment_starts s FULL OUTER JOIN experiments f ON s.run_key = f.run_key;
CREATE VIEW best_per_task AS
SELECT task, arg_min(run_key, objective) AS run_key, min(objective) AS best_objective,
       arg_min(recipe, objective) AS recipe, arg_min(agent_id, objective) AS agent_id,
       arg_min(model_version, objective) AS model_version, count(*) AS experiments
FROM experiments WHERE status = 'ok' AND objective IS NOT NULL GROUP BY task;
CREATE VIEW success_by_model AS
SELECT model_version, count(*) AS traces, count(*) FILTER (WHERE success) AS successes,
       avg(CASE WHEN success THEN 1.0 ELSE 0.0 END) AS success_rate,
       count(*) FILTER (WHERE source = 'experiment') AS experiments,
       count(*) FILTER (WHERE source = 'deployment') AS deployments
FROM (SELECT model_version, success, 'experiment' AS source FROM experiments
      UNION ALL SELECT model_version, success, 'deployment' FROM deployments)
GROUP BY model_version ORDER BY model_version;
CREATE VIEW agent_liveness AS
SELECT agent_id, agent_type, task, state, model_version, experiments, started_at, last_seen, stopped_at,
    CASE WHEN stopped_at IS NOT NULL AND stopped_at >= last_seen THEN 'stopped'
         WHEN last_seen + to_seconds(3 * heartbeat_s) >= now() THEN 'alive'
         ELSE 'dead' END AS liveness
FROM agents;
"""

_V2 = """
ALTER TABLE deployments RENAME COLUMN baseline_objective TO reference_objective;
ALTER TABLE deployments ADD COLUMN reference VARCHAR;
ALTER TABLE deployments ADD COLUMN reference_recipe JSON;
ALTER TABLE deployments ADD COLUMN proposer VARCHAR;
ALTER TABLE deployments ADD COLUMN reference_task VARCHAR;
ALTER TABLE deployments ADD COLUMN reference_score DOUBLE;
UPDATE deployments SET reference = 'baseline',
    proposer = CASE WHEN model_version > 0 THEN 'model' ELSE 'best-known' END;
CREATE VIEW deployment_success AS
SELECT model_version, reference, count(*) AS deployments, count(*) FILTER (WHERE success) AS successes,
       avg(CASE WHEN success THEN 1.0 ELSE 0.0 END) AS success_rate,
       avg(reference_objective - objective) AS mean_gain
FROM deployments WHERE status = 'ok'
GROUP BY model_version, reference ORDER BY reference, model_version;
"""
"""DeploymentFinished v2: a deployment names its reference (incumbent or baseline) and proposer."""

_V3 = """
CREATE TABLE agent_event_ids (event_id VARCHAR PRIMARY KEY, seq BIGINT NOT NULL);
"""
"""The agent lifecycle events already folded into ``agents``: a copy of one republished after the
duplicate window changes nothing, in whichever batch it arrives (as for every other table)."""

_V4 = """
ALTER TABLE experiments ADD COLUMN proposer_reason VARCHAR;
CREATE VIEW trajectories AS
WITH ordered AS (
    SELECT task, split_part(task, '/', 1) AS family, seq, event_id, agent_id, proposer, proposer_reason,
        model_version, recipe, objective, status, finished_at,
        min(CASE WHEN status = 'ok' THEN objective END) OVER (
            PARTITION BY task ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
        ) AS incumbent_before
    FROM experiments
)
SELECT task, family,
    row_number() OVER (PARTITION BY task ORDER BY seq) AS trial,
    seq, event_id, agent_id, proposer, proposer_reason, model_version, recipe, objective, status,
    min(CASE WHEN status = 'ok' THEN objective END) OVER (
        PARTITION BY task ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS best_so_far,
    coalesce(status = 'ok' AND objective < incumbent_before, false) AS improved,
    finished_at
FROM ordered WHERE proposer IS DISTINCT FROM 'baseline';
CREATE VIEW proposer_stats AS
SELECT family, proposer, date_trunc('minute', finished_at) AS bucket,
    count(*) AS experiments,
    count(*) / sum(count(*)) OVER (PARTITION BY family, date_trunc('minute', finished_at)) AS share,
    count(*) FILTER (WHERE improved) AS improvements,
    avg(CASE WHEN improved THEN 1.0 ELSE 0.0 END) AS improvement_rate,
    avg(CASE WHEN status = 'ok' THEN 1.0 ELSE 0.0 END) AS ok_rate
FROM trajectories
GROUP BY family, proposer, bucket ORDER BY family, bucket, proposer;
"""
"""ExperimentFinished v3: why the portfolio chose the proposer; each instance's trajectory in
order (1-based ``trial``, baseline replicates excluded, ``best_so_far``, ``improved`` = beat the
instance's incumbent, baselines included); proposer share and improvement rate per family and
minute."""

_V5 = """
CREATE OR REPLACE VIEW best_per_task AS
WITH best AS (
    SELECT task, arg_min(seq, objective) AS seq, min(objective) AS best_objective, count(*) AS experiments
    FROM experiments WHERE status = 'ok' AND objective IS NOT NULL GROUP BY task
)
SELECT b.task, e.run_key, b.best_objective, e.recipe, e.agent_id, e.model_version, b.experiments
FROM best b JOIN experiments e ON e.seq = b.seq;
"""
"""``best_per_task`` finds each task's best sequence first and reads the best row's columns once:
the first form carried every row's recipe and run key through four ``arg_min`` aggregates, which
over 1M experiments cost 116-156 ms against 15-17 ms (``hive bench ingest``, BENCHMARKS.md). The
columns and their meaning are unchanged; all of them now come from the same row on a tie."""

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "initial schema: traces, agents, models, dead letters, views", _V1),
    (2, "deployments: reference (incumbent/baseline), its recipe/objective/source/score, proposer", _V2),
    (3, "agent_event_ids: agent events already folded into agents (batch-independent dedupe)", _V3),
    (4, "experiments.proposer_reason; views trajectories and proposer_stats", _V4),
    (5, "best_per_task: the best sequence per task first, then that row (10x faster at 1M)", _V5),
]
"""``(version, description, sql)``: applied in order, each once."""

SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Apply the migrations this database lacks, each in its own transaction; returns the version."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, description VARCHAR, applied_at TIMESTAMPTZ DEFAULT now())"
    )
    row = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    have = int(row[0]) if row else 0
    if have > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema v{have} is newer than this hive (v{SCHEMA_VERSION}); upgrade hive"
        )
    for version, description, sql in MIGRATIONS:
        if version <= have:
            continue
        con.execute("BEGIN")
        try:
            for stmt in con.extract_statements(sql):
                con.execute(stmt)
            con.execute(
                "INSERT INTO schema_migrations (version, description) VALUES (?, ?)", [version, description]
            )
            con.execute("COMMIT")
        except Exception:
            with contextlib.suppress(duckdb.TransactionException):  # a failed COMMIT ended it
                con.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION
