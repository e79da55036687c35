"""Which event sets which status: the one place the store maps event types to statuses.

The SQL views in ``views.sql`` do not spell these mappings out: they join
small lookup tables generated from the dicts below (:func:`lookup_tables_sql`).
Run and task statuses are taken from :mod:`kernelflow.reducer`, which folds
the same events in Python; only the per-attempt mapping (finer than the
reducer's) is defined here.
"""

from __future__ import annotations

from kernelflow import events as ev
from kernelflow.reducer import FINAL_RUN_STATUSES, RUN_STATUS_BY_EVENT, TASK_STATUS_BY_EVENT

# Run and task statuses are the reducer's own tables: the SQL cannot disagree
# with the fold about which event means what.
RUN_STATUS: dict[str, str] = dict(RUN_STATUS_BY_EVENT)
"""Run-level events; a run's status is that of its last one by ``seq``."""

TASK_STATUS: dict[str, str] = dict(TASK_STATUS_BY_EVENT)
"""Task-level events; a task's status in its run is that of its last one by ``seq``."""

TASK_COUNT_BUCKET: dict[str, str] = {
    "succeeded": "succeeded",
    "failed": "failed",
    "timed_out": "failed",
    "skipped": "skipped",
}
"""Task status -> which ``runs.tasks_<bucket>`` column counts it (others: none)."""

# Attempts are the store's finer grain (the reducer keeps only a task's
# latest attempt), so their mapping lives here.
ATTEMPT_END: dict[str, tuple[str, bool]] = {
    ev.TASK_SUCCEEDED: ("succeeded", False),
    ev.TASK_RETRYING: ("failed", True),  # or 'timed_out', see ATTEMPT_END_BY_REASON
    ev.TASK_FAILED: ("failed", False),
    ev.TASK_TIMED_OUT: ("timed_out", False),
}
"""Events that end an attempt: ``type -> (attempt status, will_retry)``."""

ATTEMPT_END_BY_REASON: dict[tuple[str, str], str] = {
    (ev.TASK_RETRYING, "timeout"): "timed_out",
    (ev.TASK_RETRYING, "error"): "failed",
}
"""Overrides of the attempt status by ``payload.reason`` of the ending event."""

ATTEMPT_RUNNING = TASK_STATUS[ev.TASK_STARTED]
"""An attempt with ``TaskStarted`` and no ending event yet."""
ATTEMPT_SCHEDULED = TASK_STATUS[ev.TASK_SCHEDULED]
"""An attempt with only ``TaskScheduled`` so far (queued for a slot)."""


def _lit(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "'" + str(value).replace("'", "''") + "'"


def _values(columns: str, rows: list[tuple[object, ...]], types: tuple[str, ...]) -> str:
    # A typed empty relation when there are no rows keeps the views bindable.
    if not rows:
        cols = ", ".join(f"NULL::{t} AS {c.strip()}" for c, t in zip(columns.split(","), types))
        return f"SELECT {cols} WHERE false"
    body = ",\n  ".join("(" + ", ".join(_lit(v) for v in row) + ")" for row in rows)
    casts = ", ".join(f"{c.strip()}::{t} AS {c.strip()}" for c, t in zip(columns.split(","), types))
    return f"SELECT {casts} FROM (VALUES\n  {body}\n) AS t({columns})"


def lookup_tables_sql() -> list[str]:
    """``CREATE`` statements for the lookup tables the views join."""
    return [
        "CREATE OR REPLACE TEMP TABLE _run_status AS "
        + _values(
            "type, status, ends_run",
            [(t, s, s in FINAL_RUN_STATUSES) for t, s in RUN_STATUS.items()],
            ("VARCHAR", "VARCHAR", "BOOLEAN"),
        ),
        "CREATE OR REPLACE TEMP TABLE _attempt_end AS "
        + _values(
            "type, status, will_retry",
            [(t, s, r) for t, (s, r) in ATTEMPT_END.items()],
            ("VARCHAR", "VARCHAR", "BOOLEAN"),
        ),
        "CREATE OR REPLACE TEMP TABLE _attempt_end_by_reason AS "
        + _values(
            "type, reason, status",
            [(t, r, s) for (t, r), s in ATTEMPT_END_BY_REASON.items()],
            ("VARCHAR", "VARCHAR", "VARCHAR"),
        ),
        "CREATE OR REPLACE TEMP TABLE _task_status AS "
        + _values(
            "type, status, bucket",
            [(t, s, TASK_COUNT_BUCKET.get(s)) for t, s in TASK_STATUS.items()],
            ("VARCHAR", "VARCHAR", "VARCHAR"),
        ),
        "CREATE OR REPLACE TEMP TABLE _attempt_open_status AS "
        + _values(
            "started, status",
            [(True, ATTEMPT_RUNNING), (False, ATTEMPT_SCHEDULED)],
            ("BOOLEAN", "VARCHAR"),
        ),
    ]
