"""The ``best_per_task`` view (migration 5): the same answer as the first form, from one row."""

from __future__ import annotations

from pathlib import Path

from hive._store import open_store

FIRST_FORM = """
SELECT task, arg_min(run_key, objective) AS run_key, min(objective) AS best_objective,
       arg_min(recipe, objective) AS recipe, arg_min(agent_id, objective) AS agent_id,
       arg_min(model_version, objective) AS model_version, count(*) AS experiments
FROM experiments WHERE status = 'ok' AND objective IS NOT NULL GROUP BY task
"""

ROWS = """
INSERT INTO experiments BY NAME
SELECT 'a' || (i % 5) || '/run-' || i || '/finish' AS event_id, i + 1 AS seq,
       'a' || (i % 5) || '/run-' || i AS run_key, 'a' || (i % 5) AS agent_id, 'researcher' AS agent_type,
       'branin/' || (i % 7) AS task, i // 100 AS model_version, 'run-' || i AS run_id,
       json_object('x', i) AS recipe, CASE WHEN i % 11 = 0 THEN 'error' ELSE 'ok' END AS status,
       CASE WHEN i % 13 = 0 THEN NULL ELSE hash(i) % 100000 / 7.0 END AS objective
FROM range(?) t(i)
"""


def test_best_per_task_matches_the_first_form(tmp_path: Path) -> None:
    """Over rows with failures and missing objectives, the view returns what the first definition
    (four ``arg_min`` aggregates) returned, with the same columns."""
    con = open_store(tmp_path / "h.duckdb")
    con.execute(ROWS, [5000])
    view = con.execute("SELECT * FROM best_per_task ORDER BY task")
    columns = [d[0] for d in view.description or []]
    assert columns == [
        "task",
        "run_key",
        "best_objective",
        "recipe",
        "agent_id",
        "model_version",
        "experiments",
    ]
    assert view.fetchall() == con.execute(FIRST_FORM + " ORDER BY task").fetchall()
    con.close()


def test_a_tie_reports_one_row(tmp_path: Path) -> None:
    """Two experiments tie for the best objective: every column comes from one of them."""
    con = open_store(tmp_path / "h.duckdb")
    con.execute(ROWS, [0])
    for seq, agent, version in ((1, "a", 3), (2, "b", 4), (3, "c", 5)):
        con.execute(
            "INSERT INTO experiments (event_id, seq, run_key, agent_id, agent_type, task, model_version, "
            "run_id, recipe, status, objective) VALUES (?, ?, ?, ?, 'researcher', 't/0', ?, ?, ?, 'ok', ?)",
            [
                f"e{seq}",
                seq,
                f"{agent}/r{seq}",
                agent,
                version,
                f"r{seq}",
                f'{{"k": {seq}}}',
                1.0 if seq < 3 else 2.0,
            ],
        )
    (row,) = con.execute(
        "SELECT run_key, recipe, agent_id, model_version, experiments FROM best_per_task"
    ).fetchall()
    assert row in (("a/r1", '{"k": 1}', "a", 3, 3), ("b/r2", '{"k": 2}', "b", 4, 3))
    con.close()
