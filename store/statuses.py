"""Which event sets which status: the one place the store maps event types to statuses.

The SQL views in ``views.sql`` do not spell these mappings out: they join
small lookup tables generated from the dicts below (:func:`lookup_tables_sql`).
Run and task statuses (and the initial ones) are taken from
:mod:`kernelflow.reducer`, which folds the same events in Python. Defined
here: the per-attempt mapping (finer than the reducer's), which event writes
which field of a task or run (``TASK_FIELD_EFFECTS``, ``RUN_FIELD_EFFECTS``:
what ``state_at`` needs to rebuild a past state), and the approval statuses.
"""

from __future__ import annotations

from kernelflow import events as ev
from kernelflow.reducer import (
    FINAL_RUN_STATUSES,
    RUN_STATUS_BY_EVENT,
    TASK_STATUS_BY_EVENT,
    RunState,
    TaskState,
)

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

ATTEMPT_INTERRUPTED: dict[str, tuple[str, bool]] = {
    ev.TASK_RESET: ("interrupted", True),
}
"""Events that end an attempt nothing else ended: a resume's ``TaskReset``
(``payload.resume`` true) closes the attempt a crash cut short; the task runs
again as a new attempt. A loop's ``TaskReset`` follows an attempt that already
ended, so it changes nothing here."""

ATTEMPT_RUNNING = TASK_STATUS[ev.TASK_STARTED]
"""An attempt with ``TaskStarted`` and no ending event yet."""
ATTEMPT_SCHEDULED = TASK_STATUS[ev.TASK_SCHEDULED]
"""An attempt with only ``TaskScheduled`` so far (queued for a slot)."""

# --- what each event does to the fields time travel shows ------------------------
# ``state_at`` rebuilds a task's fields, not just its status, so it must know
# which events write which field. ``reducer.apply`` says it in code; these
# tables say the same as data for the SQL, and tests/test_time_travel_sql.py
# checks them against the fold itself, event sequence by event sequence.
SET = "set"
"""The field takes the event's value (``ts`` for times, a payload key for data)."""
CLEAR = "clear"
"""The field goes back to nothing (NULL)."""
NEXT = "next"
"""A counter: the event's own number when it carries one, else the previous value + 1."""

_ENDS_ATTEMPT = {"ended_at": SET, "error": SET}
TASK_FIELD_EFFECTS: dict[str, dict[str, str]] = {
    ev.TASK_SCHEDULED: {},
    # attempt: ``event.attempt`` unless it is missing or 0
    ev.TASK_STARTED: {"attempt": NEXT, "started_at": SET, "ended_at": CLEAR, "error": CLEAR},
    ev.TASK_SUCCEEDED: {"ended_at": SET, "output": SET},  # output and output_ref together
    ev.TASK_RETRYING: _ENDS_ATTEMPT,
    ev.TASK_FAILED: _ENDS_ATTEMPT,
    ev.TASK_TIMED_OUT: _ENDS_ATTEMPT,
    ev.TASK_SKIPPED: {"ended_at": SET, "reason": SET},
    # iteration: ``payload.iteration`` when the key is there; the attempt count goes on
    ev.TASK_RESET: {
        "iteration": NEXT,
        "started_at": CLEAR,
        "ended_at": CLEAR,
        "error": CLEAR,
        "reason": CLEAR,
        "output": CLEAR,
    },
    # Gates and sleeps set the status (and gate/answer/wake_at, which the
    # approvals view reads from the events themselves), none of these fields.
    ev.APPROVAL_REQUESTED: {},
    ev.APPROVAL_GRANTED: {},
    ev.APPROVAL_REJECTED: {},
    ev.APPROVAL_EXPIRED: {},
    ev.BREAKPOINT_HIT: {},
    ev.BREAKPOINT_RELEASED: {},
    ev.SLEEP_STARTED: {},
}
"""Status-bearing task event type -> ``{field: SET | CLEAR | NEXT}`` for the
fields ``state_at`` shows (attempt, iteration, started_at, ended_at, output,
error, reason). Every type of ``TASK_STATUS`` is listed, so a new one cannot
be added to the reducer without deciding here what it writes."""
TASK_FIELDS = ("attempt", "iteration", "started_at", "ended_at", "output", "error", "reason")

RUN_FIELD_EFFECTS: dict[str, dict[str, str]] = {
    ev.RUN_STARTED: {
        "workflow": SET,
        "workflow_version": SET,
        "started_at": SET,
        "ended_at": CLEAR,
        "tasks": SET,  # payload.tasks are added (as pending) to the tasks known
    },
    ev.RUN_RESUMED: {"workflow_version": SET, "ended_at": CLEAR, "tasks": SET},
    ev.RUN_SUSPENDED: {},  # waiting is not an end: ended_at stays as it was
    ev.RUN_SUCCEEDED: {"ended_at": SET},
    ev.RUN_FAILED: {"ended_at": SET},
}
"""Run-level event type -> ``{field: SET | CLEAR}``, as ``reducer.apply`` folds them."""
RUN_FIELDS = ("workflow", "workflow_version", "started_at", "ended_at", "tasks")

APPROVAL_STATUS: dict[str, str] = {
    ev.APPROVAL_GRANTED: "granted",
    ev.APPROVAL_REJECTED: "rejected",
    ev.APPROVAL_EXPIRED: "expired",
}
"""The answer event -> the ``approvals.status`` of the request it answers."""
APPROVAL_PENDING = "pending"

DELIVERY_NOTIFIED: dict[str, bool] = {}
"""``AlertDelivery`` status -> whether a channel took the notification (``alerts.notified`` counts those)."""


def _delivery_statuses() -> dict[str, bool]:
    from kernelflow.alert_delivery import FAILED, GAVE_UP, SENT, SUPPRESSED

    return {SENT: True, FAILED: False, GAVE_UP: False, SUPPRESSED: False}


DELIVERY_NOTIFIED.update(_delivery_statuses())
"""``approvals.status`` of a request without an answer yet."""

INITIAL_RUN_STATUS: str = RunState("").status
"""A run before its first run-level event (the reducer's default)."""
_NEW_TASK = TaskState("")
INITIAL_TASK_STATUS: str = _NEW_TASK.status
"""A task known (listed by ``RunStarted``/``RunResumed``) without events of its own yet."""


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
        "CREATE OR REPLACE TEMP TABLE _attempt_interrupted AS "
        + _values(
            "type, status, will_retry",
            [(t, s, r) for t, (s, r) in ATTEMPT_INTERRUPTED.items()],
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
        "CREATE OR REPLACE TEMP TABLE _task_effect AS "
        + _values(
            "type, " + ", ".join(TASK_FIELDS),
            [(t, *(TASK_FIELD_EFFECTS[t].get(f) for f in TASK_FIELDS)) for t in TASK_FIELD_EFFECTS],
            ("VARCHAR",) * (1 + len(TASK_FIELDS)),
        ),
        "CREATE OR REPLACE TEMP TABLE _run_effect AS "
        + _values(
            "type, " + ", ".join(RUN_FIELDS),
            [(t, *(RUN_FIELD_EFFECTS[t].get(f) for f in RUN_FIELDS)) for t in RUN_FIELD_EFFECTS],
            ("VARCHAR",) * (1 + len(RUN_FIELDS)),
        ),
        "CREATE OR REPLACE TEMP TABLE _delivery_status AS "
        + _values("status, notified", list(DELIVERY_NOTIFIED.items()), ("VARCHAR", "BOOLEAN")),
        "CREATE OR REPLACE TEMP TABLE _approval_answer AS "
        + _values("type, status", list(APPROVAL_STATUS.items()), ("VARCHAR", "VARCHAR")),
        "CREATE OR REPLACE TEMP TABLE _initial AS "
        + _values(
            "run_status, task_status, attempt, iteration, approval_status",
            [(INITIAL_RUN_STATUS, INITIAL_TASK_STATUS, _NEW_TASK.attempt, _NEW_TASK.iteration, APPROVAL_PENDING)],
            ("VARCHAR", "VARCHAR", "BIGINT", "BIGINT", "VARCHAR"),
        ),
    ]
