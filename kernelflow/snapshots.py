"""Snapshots: a run as it was at one point of its history (``run.at(...)``).

A snapshot is :func:`kernelflow.reducer.fold` over the run's stored events up
to that point: the same fold the engine keeps live and the SQL macro
``state_at`` computes, so the three agree on every past state. Taking one
only reads the store; outputs kept as artifacts are loaded when asked for.

A point is a ``seq`` (``int``), a time (a ``datetime``, naive meaning UTC, or
an ISO 8601 string), or a task id: the state right after that task's last
final event (succeeded, failed, timed out or skipped). A time stands for the
events recorded up to it: the history is cut before the first event with a
later timestamp, so a snapshot is always a prefix the reducer can fold, even
if a clock stepped back between two events.
"""

from __future__ import annotations

import difflib
import html
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from .events import Event, us_to_datetime
from .exceptions import KernelflowError, RunNotFoundError, TimeTravelError
from .reducer import (
    FINAL_TASK_STATUSES,
    TASK_STATUS_BY_EVENT,
    RunState,
    TaskState,
    fold,
)

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

    from .model import Workflow
    from .store_api import EventStore

Point = int | datetime | str
"""A seq, a time (naive = UTC) or ISO 8601 string, or a task id."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def read_events(store: EventStore, run_id: str) -> list[Event]:
    """The run's events by ``seq``; :class:`RunNotFoundError` if the store has none."""
    events = store.read_run(run_id)
    if not events:
        raise RunNotFoundError(run_id, getattr(store, "location", repr(store)))
    return events


def snapshot_at(store: EventStore, run_id: str, point: Point, workflow: Workflow | None = None) -> Snapshot:
    """The state of run ``run_id`` at ``point``, folded from ``store``'s events.

    ``workflow`` (optional) orders the tasks as it does and lets a task point
    name a task the run never got to. Nothing is written to the store.

    Raises
    ------
    RunNotFoundError
        The store has no event of ``run_id``.
    TimeTravelError
        ``point`` is a seq out of range, a time before the run started, a task
        the run does not have, a task that never finished, or of another type.
    """
    events = read_events(store, run_id)
    seq = _resolve(point, events, run_id, workflow)
    return Snapshot._of(store, events[: seq + 1], workflow)


def latest_snapshot(store: EventStore, run_id: str, workflow: Workflow | None = None) -> Snapshot:
    """The state of run ``run_id`` after every event stored so far."""
    events = read_events(store, run_id)
    return Snapshot._of(store, events, workflow)


# --- resolving a point to a seq -------------------------------------------------


def _resolve(point: Point, events: list[Event], run_id: str, workflow: Workflow | None) -> int:
    last = events[-1].seq
    if isinstance(point, bool):  # an int subclass, never meant as a seq
        raise _bad_type(point)
    if isinstance(point, int):
        if 0 <= point <= last:
            return point
        raise TimeTravelError(
            f"run {run_id} has no seq {point}: its events are seq 0 to {last}; pick a seq in that range"
        )
    if isinstance(point, datetime):
        return _seq_at_time(point, events, run_id)
    if isinstance(point, str):
        known = _known_tasks(events, workflow)
        if point in known:
            return _seq_after_task(point, events, run_id)
        when = _parse_time(point)
        if when is not None:
            return _seq_at_time(when, events, run_id)
        close = difflib.get_close_matches(point, known, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise TimeTravelError(
            f"run {run_id} has no task {point!r}, and it is not an ISO timestamp either; "
            f"its tasks are: {', '.join(known) or 'none'}.{hint}"
        )
    raise _bad_type(point)


def _bad_type(point: object) -> TimeTravelError:
    return TimeTravelError(
        f"cannot travel to {point!r} ({type(point).__name__}): give a seq (int), a datetime "
        "(naive means UTC) or ISO timestamp string, or a task id"
    )


def _parse_time(text: str) -> datetime | None:
    try:
        # Python 3.10's fromisoformat does not read a trailing Z.
        return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        return None


def _to_us(when: datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (when - _EPOCH) // timedelta(microseconds=1)


def _seq_at_time(when: datetime, events: list[Event], run_id: str) -> int:
    us = _to_us(when)
    if us < events[0].ts:
        started = _format_time(us_to_datetime(events[0].ts))
        raise TimeTravelError(
            f"run {run_id} started at {started}; {_format_time(when)} is before it. "
            "Times without a zone are UTC; pick a time after the start, or seq 0"
        )
    for event in events:
        if event.ts > us:
            return event.seq - 1
    return events[-1].seq


def _known_tasks(events: list[Event], workflow: Workflow | None) -> list[str]:
    known = dict.fromkeys(fold(events).tasks)
    if workflow is not None:
        known.update(dict.fromkeys(workflow.task_ids))
    return list(known)


def _seq_after_task(task_id: str, events: list[Event], run_id: str) -> int:
    for event in reversed(events):
        if event.task_id == task_id and TASK_STATUS_BY_EVENT.get(event.type) in FINAL_TASK_STATUSES:
            return event.seq
    task = fold(events).tasks.get(task_id)
    now = task.status if task is not None else "not started"
    raise TimeTravelError(
        f"task {task_id!r} never finished in run {run_id} (it is {now} at seq {events[-1].seq}), "
        "so there is no state right after it; pick a seq or a time instead"
    )


def _format_time(when: datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f UTC")


# --- the snapshot ------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class Snapshot:
    """A run as it was right after event ``seq`` (recorded at ``ts``, UTC).

    ``state`` is the reducer's :class:`~kernelflow.reducer.RunState` at that
    point; ``tasks``, ``outputs`` and ``pending_approvals`` read it.
    ``snap["task"]`` (or ``snap.output("task")``) is a task's output as known
    then, loaded from the store's artifacts when it was kept as one.
    """

    run_id: str
    seq: int
    """The last event folded in."""
    ts: datetime
    """When that event was recorded (UTC, timezone-aware)."""
    state: RunState
    """The fold of the run's events up to ``seq``; treat it as read-only."""
    store: EventStore = field(repr=False)
    workflow: Workflow | None = field(default=None, repr=False)
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def _of(cls, store: EventStore, events: list[Event], workflow: Workflow | None) -> Snapshot:
        last = events[-1]
        return cls(last.run_id, last.seq, us_to_datetime(last.ts), fold(events), store, workflow)

    @property
    def status(self) -> str:
        """The run's status then (``running``, ``waiting``, ``succeeded``, ...)."""
        return self.state.status

    @property
    def inputs(self) -> dict[str, Any]:
        """The run's inputs, as recorded when it started."""
        return dict(self.state.inputs)

    @property
    def task_ids(self) -> list[str]:
        """The tasks known then, in the workflow's order when it is known."""
        known = self.state.tasks
        ordered = [t for t in self.workflow.order if t in known] if self.workflow is not None else []
        seen = set(ordered)
        return ordered + [t for t in known if t not in seen]

    @property
    def tasks(self) -> pl.DataFrame:
        """One row per task: ``task, status, attempt, iteration, started_at,
        ended_at`` (naive UTC) and ``problem`` (the error or skip reason)."""
        import polars as pl

        rows = []
        for tid in self.task_ids:
            t = self.state.tasks[tid]
            rows.append(
                {
                    "task": tid,
                    "status": t.status,
                    "attempt": t.attempt,
                    "iteration": t.iteration,
                    "started_at": _naive(t.started_at),
                    "ended_at": _naive(t.ended_at),
                    "problem": problem(t),
                }
            )
        return pl.DataFrame(
            rows,
            schema={
                "task": pl.String,
                "status": pl.String,
                "attempt": pl.Int64,
                "iteration": pl.Int64,
                "started_at": pl.Datetime("us"),
                "ended_at": pl.Datetime("us"),
                "problem": pl.String,
            },
        )

    @property
    def outputs(self) -> Mapping[str, Any]:
        """Task -> output, for every task whose output was known and kept then.

        A read-only mapping; outputs kept as artifacts are loaded from the
        store on first access (and then remembered)."""
        return _Outputs(self)

    @property
    def pending_approvals(self) -> list[dict[str, Any]]:
        """The approval gates waiting for an answer then: ``task, message,
        requested_at, expires_at`` (UTC datetimes) and ``input_schema``."""
        out = []
        for tid, gate in self.state.waiting.items():
            if gate.get("kind") != "approval":
                continue  # a breakpoint: released by its notebook, not answered
            expires = gate.get("expires_at")
            out.append(
                {
                    "task": tid,
                    "message": gate.get("message"),
                    "requested_at": us_to_datetime(gate["requested_at"]) if gate.get("requested_at") else None,
                    "expires_at": us_to_datetime(expires) if isinstance(expires, int) else None,
                    "input_schema": gate.get("input_schema"),
                }
            )
        return out

    def output(self, task_id: str) -> Any:
        """The output of ``task_id`` as known at this point.

        Raises :class:`~kernelflow.exceptions.KernelflowError` naming the
        task's status then if it had none (not run yet, failed, skipped, or an
        output that could not be stored)."""
        if task_id in self._loaded:
            return self._loaded[task_id]
        task = self.state.tasks.get(task_id)
        if task is None:
            known = self.task_ids
            close = difflib.get_close_matches(task_id, known, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise TimeTravelError(
                f"run {self.run_id} has no task {task_id!r} at seq {self.seq}; "
                f"its tasks then: {', '.join(known) or 'none'}.{hint}"
            )
        if not has_output(task):
            why = problem(task)
            detail = f": {why}" if why else ""
            if task.status == "succeeded":
                detail = ": its output could not be stored when it ran"
            raise KernelflowError(
                f"task {task_id!r} of run {self.run_id} has no output at seq {self.seq} "
                f"(status {task.status}{detail}); travel to a later point, e.g. run.at({task_id!r})"
            )
        value = self.store.load_artifact(task.output_ref) if task.output_ref else task.output
        self._loaded[task_id] = value
        return value

    def __getitem__(self, task_id: str) -> Any:
        """``snap["task"]``: the same as :meth:`output`."""
        return self.output(task_id)

    # --- display -------------------------------------------------------------------

    def _headline(self) -> str:
        counts = ", ".join(f"{n} {status}" for status, n in self.state.counts().items() if n)
        name = f" ({self.state.workflow})" if self.state.workflow else ""
        return (
            f"run {self.run_id}{name} at seq {self.seq}, {_format_time(self.ts)}: "
            f"{self.status}" + (f"; {counts}" if counts else "")
        )

    def __repr__(self) -> str:
        return f"<Snapshot of {self._headline()}>"

    def _repr_html_(self) -> str:
        parts = [f"<div><b>Snapshot</b> of {html.escape(self._headline())}</div>", self.tasks._repr_html_()]
        pending = self.pending_approvals
        if pending:
            items = "".join(
                f"<li><code>{html.escape(p['task'])}</code>: {html.escape(str(p['message'] or ''))}</li>"
                for p in pending
            )
            parts.append(f"<div>Waiting for approval:<ul>{items}</ul></div>")
        return "\n".join(parts)


def problem(task: TaskState) -> str | None:
    """A task's error (``"ExcType: message"``) or skip reason, if any."""
    if task.reason:
        return task.reason
    if task.error:
        return f"{task.error.get('exc_type')}: {task.error.get('message')}"
    return None


def has_output(task: TaskState) -> bool:
    """Whether the task's output is known and can be read (inline or as an artifact)."""
    return task.status == "succeeded" and (task.output_ref is not None or task.output_stored)


def _naive(us: int | None) -> datetime | None:
    return us_to_datetime(us).replace(tzinfo=None) if us is not None else None


class _Outputs(Mapping[str, Any]):
    """The outputs a snapshot knows, loaded on access (through the snapshot's cache)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._keys = [t for t in snapshot.task_ids if has_output(snapshot.state.tasks[t])]

    def __getitem__(self, task_id: str) -> Any:
        if task_id not in self._keys:
            raise KeyError(task_id)
        return self._snapshot.output(task_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._keys

    def __repr__(self) -> str:
        return f"<outputs of run {self._snapshot.run_id} at seq {self._snapshot.seq}: {', '.join(self._keys)}>"
