"""Appending to a run nobody in this process drives: under the run's lease, after its last event.

Answers to gates, alerts raised after a run ended, and their deliveries are
recorded on the run they belong to. While a driver holds the run it numbers
the events; otherwise whoever takes the lease (it is free when no live
process drives the run) appends after the last stored event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .events import Event, current_actor, now_us


class NoSuchRun(LookupError):
    """The store has no event of that run."""


def append_if_free(
    store: Any,
    run_id: str,
    type_: str,
    task_id: str | None = None,
    attempt: int | None = None,
    payload: Mapping[str, Any] | None = None,
) -> Event | None:
    """Append one event to ``run_id`` if its lease is free; None when another process drives it."""
    lease = store.lease(run_id)
    if lease is None:
        return None
    try:
        events = store.read_run(run_id)
        if not events:
            raise NoSuchRun(f"no run {run_id!r} in the store at {getattr(store, 'location', store)}")
        last = events[-1]
        event = Event(run_id, last.seq + 1, now_us(), type_, last.workflow, last.workflow_version, task_id, attempt,
                      dict(payload or {}), current_actor())  # fmt: skip
        store.append(event)
        return event
    finally:
        lease.release()
