"""The one reducer: fold a run's events into its state.

``apply(state, event)`` is the only transition function. It does no I/O,
reads no clock and depends on nothing but its arguments; it changes only the
state it is given (in place, so the engine can fold thousands of events
without copying). The engine's own view of a run is this fold, and
:func:`fold` rebuilds the same state from the store, so the two cannot drift.
The SQL views in ``store/views.sql`` compute the same statuses; a property
test keeps all three in agreement.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable

from . import events as ev

RUN_STATUS_BY_EVENT = {
    ev.RUN_STARTED: "running",
    ev.RUN_SUCCEEDED: "succeeded",
    ev.RUN_FAILED: "failed",
    ev.RUN_SUSPENDED: "waiting",  # only gates or breakpoints are left; nothing runs
    ev.RUN_RESUMED: "running",
}
TASK_STATUS_BY_EVENT = {
    ev.TASK_SCHEDULED: "scheduled",
    ev.TASK_STARTED: "running",
    ev.TASK_SUCCEEDED: "succeeded",
    ev.TASK_RETRYING: "retrying",
    ev.TASK_FAILED: "failed",
    ev.TASK_TIMED_OUT: "timed_out",
    ev.TASK_SKIPPED: "skipped",
    ev.TASK_RESET: "pending",
    ev.APPROVAL_REQUESTED: "waiting",
    ev.BREAKPOINT_HIT: "waiting",
    # An answer (or expiry) decides; the engine then starts, fails or skips the task.
    ev.APPROVAL_GRANTED: "scheduled",
    ev.APPROVAL_REJECTED: "scheduled",
    ev.APPROVAL_EXPIRED: "scheduled",
    ev.BREAKPOINT_RELEASED: "scheduled",
    ev.SLEEP_STARTED: "sleeping",
}
TASK_STATUSES = tuple(dict.fromkeys(("pending", *TASK_STATUS_BY_EVENT.values())))
FINAL_TASK_STATUSES = frozenset({"succeeded", "failed", "timed_out", "skipped"})
FINAL_RUN_STATUSES = frozenset({"succeeded", "failed"})


class FoldError(ValueError):
    """Events that cannot belong to one run in this order (a gap, another run)."""


@dataclass(slots=True)
class TaskState:
    """What is known about one task of a run."""

    task_id: str
    status: str = "pending"
    attempt: int = 0
    scheduled_at: int | None = None
    started_at: int | None = None
    ended_at: int | None = None
    error: dict[str, Any] | None = None
    reason: str | None = None
    output: Any = None
    output_ref: dict[str, Any] | None = None
    output_type: str | None = None
    output_stored: bool = False
    iteration: int = 0
    gate: dict[str, Any] | None = None
    """The approval or breakpoint this task waits at (or last waited at):
    ``kind`` (approval|breakpoint), ``seq``, ``requested_at`` and the request's payload."""
    answer: dict[str, Any] | None = None
    """How the gate was answered: ``type`` (the answer event) and its payload."""
    wake_at: int | None = None
    """A sleep step's wake-up time (UTC µs)."""
    replaced: dict[str, Any] | None = None
    """Set when a breakpoint before this task was released: the inputs replaced then."""

    @property
    def done(self) -> bool:
        return self.status in FINAL_TASK_STATUSES


@dataclass(slots=True)
class RunState:
    """What is known about one run after folding its events so far."""

    run_id: str
    workflow: str = ""
    workflow_version: str = ""
    status: str = "pending"
    inputs: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, TaskState] = field(default_factory=dict)
    started_at: int | None = None
    ended_at: int | None = None
    last_seq: int = -1
    error: str | None = None
    failed_tasks: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status in FINAL_RUN_STATUSES

    @property
    def waiting(self) -> dict[str, dict[str, Any]]:
        """Tasks waiting at an approval gate or breakpoint -> their gate."""
        return {tid: t.gate or {} for tid, t in self.tasks.items() if t.status == "waiting"}

    def counts(self) -> dict[str, int]:
        """Number of tasks in each status (every status present, zeros included)."""
        out = dict.fromkeys(TASK_STATUSES, 0)
        for t in self.tasks.values():
            out[t.status] += 1
        return out

    def copy(self) -> RunState:
        return copy.deepcopy(self)


def apply(state: RunState, event: ev.Event) -> RunState:
    """Fold one event into ``state`` and return it.

    Events must come in ``seq`` order without gaps and belong to the run;
    anything else raises :class:`FoldError` (a store that lost or
    reordered events is a bug to surface, not to paper over).
    """
    if event.run_id != state.run_id:
        raise FoldError(f"event {event.event_id} belongs to run {event.run_id}, not {state.run_id}")
    if event.seq != state.last_seq + 1:
        raise FoldError(
            f"run {state.run_id}: expected seq {state.last_seq + 1}, got {event.seq} ({event.type})"
        )
    state.last_seq = event.seq
    kind = event.type
    payload = event.payload

    run_status = RUN_STATUS_BY_EVENT.get(kind)
    if run_status is not None:
        state.status = run_status
        if kind == ev.RUN_STARTED:
            state.workflow = event.workflow
            state.workflow_version = event.workflow_version
            state.started_at = event.ts
            state.ended_at = None  # a resumed run is running again
            state.error = None
            state.failed_tasks = []
            state.inputs = dict(payload.get("inputs") or {})
            for tid in payload.get("tasks") or ():
                state.tasks.setdefault(tid, TaskState(tid))
        elif kind == ev.RUN_RESUMED:
            state.workflow_version = event.workflow_version
            state.ended_at = None
            state.error = None
            state.failed_tasks = []
            for tid in payload.get("tasks") or ():
                state.tasks.setdefault(tid, TaskState(tid))
        elif kind != ev.RUN_SUSPENDED:
            state.ended_at = event.ts
            if kind == ev.RUN_FAILED:
                state.error = payload.get("error")
                state.failed_tasks = list(payload.get("failed_tasks") or ())
        return state

    task_status = TASK_STATUS_BY_EVENT.get(kind)
    if task_status is None or event.task_id is None:
        # Types this version does not know (written by a newer engine) only
        # advance seq, so older readers can still fold newer runs.
        return state
    task = state.tasks.get(event.task_id)
    if task is None:
        task = state.tasks[event.task_id] = TaskState(event.task_id)
    task.status = task_status
    if kind == ev.TASK_SCHEDULED:
        task.scheduled_at = event.ts
    elif kind == ev.TASK_STARTED:
        task.attempt = event.attempt or task.attempt + 1
        task.started_at = event.ts
        task.ended_at = None
        task.error = None
    elif kind == ev.TASK_SUCCEEDED:
        task.ended_at = event.ts
        task.output = payload.get("output")
        task.output_ref = payload.get("output_ref")
        task.output_type = payload.get("output_type")
        task.output_stored = bool(payload.get("stored"))
    elif kind == ev.TASK_SKIPPED:
        task.ended_at = event.ts
        task.reason = payload.get("reason")
    elif kind == ev.APPROVAL_REQUESTED or kind == ev.BREAKPOINT_HIT:
        task.gate = {
            "kind": "approval" if kind == ev.APPROVAL_REQUESTED else "breakpoint",
            "seq": event.seq,
            "requested_at": event.ts,
            **payload,
        }
        task.answer = None
    elif kind in ev.APPROVAL_ANSWERS:
        task.answer = {"type": kind, "seq": event.seq, "at": event.ts, **payload}
    elif kind == ev.BREAKPOINT_RELEASED:
        task.answer = {"type": kind, "seq": event.seq, "at": event.ts, **payload}
        task.replaced = dict(payload.get("replaced") or {})
    elif kind == ev.SLEEP_STARTED:
        task.wake_at = payload.get("wake_at")
    elif kind == ev.TASK_RESET:
        # Another iteration: the attempt count goes on (attempt numbers stay
        # unique per task), everything else starts over.
        task.iteration = payload.get("iteration", task.iteration + 1)
        task.scheduled_at = task.started_at = task.ended_at = None
        task.error = None
        task.reason = None
        task.output = task.output_ref = task.output_type = None
        task.output_stored = False
        task.gate = task.answer = None
        task.wake_at = None
        task.replaced = None
    else:  # retrying, failed, timed out: an attempt ended badly
        task.ended_at = event.ts
        task.error = payload.get("error")
    return state


def fold(events: Iterable[ev.Event], run_id: str | None = None) -> RunState:
    """The state of a run after all of ``events`` (which must be one run's, in order)."""
    state: RunState | None = None if run_id is None else RunState(run_id)
    for event in events:
        if state is None:
            state = RunState(event.run_id)
        apply(state, event)
    if state is None:
        raise FoldError("no events to fold and no run_id given")
    return state
