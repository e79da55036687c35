"""Events: every state change of a run, as a small immutable record.

An event is appended to the store before anything that depends on it happens;
:mod:`kernelflow.reducer` folds a run's events into its state. Event type names
are stable: they are stored, queried in SQL and documented in ``docs/events.md``.
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

import orjson

# --- event types -------------------------------------------------------------
# Run level
RUN_STARTED = "RunStarted"
RUN_SUCCEEDED = "RunSucceeded"
RUN_FAILED = "RunFailed"
# Task level
TASK_SCHEDULED = "TaskScheduled"  # ready: all dependencies done, queued for a slot
TASK_STARTED = "TaskStarted"  # handed to its executor; starts an attempt
TASK_SUCCEEDED = "TaskSucceeded"
TASK_RETRYING = "TaskRetrying"  # an attempt failed or timed out; another follows
TASK_FAILED = "TaskFailed"  # the last attempt failed
TASK_TIMED_OUT = "TaskTimedOut"  # the last attempt ran past its timeout
TASK_SKIPPED = "TaskSkipped"  # will not run (payload.reason says why)
TASK_RESET = "TaskReset"  # a loop (back_to) sends the task back to pending for another iteration
# Flow and resilience (history; only TaskReset changes a status)
CONDITION_EVALUATED = "ConditionEvaluated"  # payload: when, result
SWITCH_MATCHED = "SwitchMatched"  # payload: value, case, target
FOREACH_STARTED = "ForEachStarted"  # payload: path, count
FOREACH_ITEM = "ForEachItem"  # payload: path, index, status (succeeded|failed|retrying), error
LOOP_JUMPED = "LoopJumped"  # payload: kind (back_to|skip_to), to, iteration, reset|skipped
FALLBACK_USED = "FallbackUsed"  # payload: reason, fallback
CIRCUIT_CHANGED = "CircuitChanged"  # payload: circuit, transition, reason
COMPENSATION_STARTED = "CompensationStarted"
COMPENSATION_SUCCEEDED = "CompensationSucceeded"
COMPENSATION_FAILED = "CompensationFailed"
# A failed run is in the dead letter queue until one of these is appended to it.
DEAD_LETTER_RETRIED = "DeadLetterRetried"  # payload: new_run_id, inputs (the changed ones)
DEAD_LETTER_DISCARDED = "DeadLetterDiscarded"  # payload: reason
# Durable execution (docs/durability.md)
RUN_SUSPENDED = "RunSuspended"  # run -> waiting: only gates/breakpoints are left; payload: waiting [{task, kind}], how
RUN_RESUMED = "RunResumed"  # run -> running again; payload: from_status, from_version, version, interrupted, reset
APPROVAL_REQUESTED = "ApprovalRequested"  # task -> waiting; payload: message, preview, input_schema, timeout_s, expires_at, on_timeout, on_reject, iteration
APPROVAL_GRANTED = "ApprovalGranted"  # task -> scheduled; payload: by, answered_at, input, comment
APPROVAL_REJECTED = "ApprovalRejected"  # task -> scheduled; payload: by, answered_at, reason
APPROVAL_EXPIRED = "ApprovalExpired"  # task -> scheduled; payload: expires_at, outcome (approve|reject|skip|fail)
BREAKPOINT_HIT = "BreakpointHit"  # task -> waiting (wf.run(break_before=...)); payload: inputs (preview)
BREAKPOINT_RELEASED = "BreakpointReleased"  # task -> scheduled; payload: replaced {param: stored value}
SLEEP_STARTED = "SleepStarted"  # a sleep step -> sleeping; payload: seconds, wake_at (UTC us)
SIDE_EFFECT_RECORDED = "SideEffectRecorded"  # kf.now/random/remember/sleep inside a task; payload: kind, call, scope, value | value_ref
ALERT_RAISED = "AlertRaised"  # an anomaly (docs/alerts.md); payload: kernelflow.widgets.alert.Alert.to_dict() + key, channels
ALERT_DELIVERY = "AlertDelivery"  # a channel's attempt to notify; payload: alert_seq, channel, status (sent|failed|gave_up|suppressed), attempt, error, suppressed (count folded in)
TASK_ARTIFACT = "TaskArtifact"  # a file an attempt produced, kept for the user; payload: kind (notebook), path, notebook, parameters
TASK_LOGGED = "TaskLogged"  # what an attempt printed/logged (tail; secrets masked); payload: text, truncated, item (forEach index)

RUN_EVENT_TYPES = (RUN_STARTED, RUN_SUCCEEDED, RUN_FAILED, RUN_SUSPENDED, RUN_RESUMED)
TASK_EVENT_TYPES = (
    TASK_SCHEDULED,
    TASK_STARTED,
    TASK_SUCCEEDED,
    TASK_RETRYING,
    TASK_FAILED,
    TASK_TIMED_OUT,
    TASK_SKIPPED,
    TASK_RESET,
)
FLOW_EVENT_TYPES = (
    CONDITION_EVALUATED,
    SWITCH_MATCHED,
    FOREACH_STARTED,
    FOREACH_ITEM,
    LOOP_JUMPED,
    FALLBACK_USED,
    CIRCUIT_CHANGED,
    COMPENSATION_STARTED,
    COMPENSATION_SUCCEEDED,
    COMPENSATION_FAILED,
    DEAD_LETTER_RETRIED,
    DEAD_LETTER_DISCARDED,
    TASK_LOGGED,
    TASK_ARTIFACT,
    ALERT_RAISED,
    ALERT_DELIVERY,
)
DURABLE_EVENT_TYPES = (
    APPROVAL_REQUESTED,
    APPROVAL_GRANTED,
    APPROVAL_REJECTED,
    APPROVAL_EXPIRED,
    BREAKPOINT_HIT,
    BREAKPOINT_RELEASED,
    SLEEP_STARTED,
    SIDE_EFFECT_RECORDED,
)
"""Task-level events of durable waits and recorded side effects."""
APPROVAL_ANSWERS = (APPROVAL_GRANTED, APPROVAL_REJECTED, APPROVAL_EXPIRED)
EVENT_TYPES = RUN_EVENT_TYPES + TASK_EVENT_TYPES + FLOW_EVENT_TYPES + DURABLE_EVENT_TYPES

# Columns of the `events` table, in order. The store and the SQL views use it.
EVENT_FIELDS = (
    "event_id",
    "run_id",
    "seq",
    "ts",
    "type",
    "workflow",
    "workflow_version",
    "task_id",
    "attempt",
    "payload",
    "actor",
)


def now_us() -> int:
    """UTC now in microseconds since the epoch (the unit of ``Event.ts``)."""
    return time.time_ns() // 1000


def us_to_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc)


@dataclass(frozen=True, slots=True)
class Event:
    """One state change of one run.

    ``seq`` counts from 0 per run without gaps; ``ts`` is UTC microseconds
    since the epoch; ``payload`` is JSON-serialisable; ``actor`` says who
    caused it (user, host, pid, via).
    """

    run_id: str
    seq: int
    ts: int
    type: str
    workflow: str
    workflow_version: str
    task_id: str | None = None
    attempt: int | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)
    actor: Mapping[str, Any] = field(default_factory=dict)

    @property
    def event_id(self) -> str:
        """Globally unique: run ids are unique and seq is unique within a run."""
        return f"{self.run_id}:{self.seq}"

    @property
    def timestamp(self) -> datetime:
        return us_to_datetime(self.ts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "run_id": self.run_id,
            "seq": self.seq,
            "ts": self.ts,
            "type": self.type,
            "workflow": self.workflow,
            "workflow_version": self.workflow_version,
            "task_id": self.task_id,
            "attempt": self.attempt,
            "payload": self.payload,
            "actor": self.actor,
        }

    def to_json_line(self) -> bytes:
        """One newline-terminated JSON object: the on-disk form in segments."""
        return orjson.dumps(self.to_dict(), default=_json_fallback) + b"\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Event:
        payload = d.get("payload") or {}
        actor = d.get("actor") or {}
        if isinstance(payload, (str, bytes)):
            payload = orjson.loads(payload)
        if isinstance(actor, (str, bytes)):
            actor = orjson.loads(actor)
        ts = d["ts"]
        if isinstance(ts, datetime):
            if ts.tzinfo is None:
                ts = ts.replace(tzinfo=timezone.utc)
            ts = int(ts.timestamp() * 1_000_000)
        return cls(
            run_id=d["run_id"],
            seq=int(d["seq"]),
            ts=int(ts),
            type=d["type"],
            workflow=d["workflow"],
            workflow_version=d["workflow_version"],
            task_id=d.get("task_id"),
            attempt=None if d.get("attempt") is None else int(d["attempt"]),
            payload=payload,
            actor=actor,
        )


def _json_fallback(value: Any) -> Any:
    # Payloads are built by the engine from JSON-safe values; anything else
    # (a numpy scalar in an error message, say) is stored as its repr rather
    # than losing the event.
    return repr(value)


_ACTOR: dict[str, Any] | None = None


def current_actor() -> dict[str, Any]:
    """Who is acting in this process: user, host, pid and ``via``.

    ``via`` is ``$KERNELFLOW_VIA`` when set (the CLI sets ``papermill`` or
    ``cli`` for the processes it starts), else ``notebook`` inside a Jupyter
    kernel and ``python`` otherwise.
    """
    global _ACTOR
    pid = os.getpid()
    if _ACTOR is None or _ACTOR["pid"] != pid:
        try:
            user = getpass.getuser()
        except Exception:  # no passwd entry in some containers
            user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
        via = os.environ.get("KERNELFLOW_VIA")
        if not via:
            via = "notebook" if "ipykernel" in sys.modules else "python"
        _ACTOR = {"user": user, "host": socket.gethostname(), "pid": pid, "via": via}
    return _ACTOR
