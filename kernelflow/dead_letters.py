"""The dead letter queue: runs that failed for good, waiting for a decision.

A run is in the queue from the moment it fails (not interrupted, not a
sub-workflow's child) until someone retries it — with the same or changed
inputs, as a new run — or discards it. Each decision is an event appended to
the failed run (``DeadLetterRetried``, ``DeadLetterDiscarded``), under the
store's per-run lock so two processes deciding at once cannot collide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import orjson

from . import events as ev
from .exceptions import KernelflowError

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

    from .run import Run


class DeadLetterError(KernelflowError):
    """The run is not in the dead letter queue, or cannot be retried as asked."""


class DeadLetterQueue:
    """``kf.dlq``: call it to list; ``.retry(run_id, **inputs)``; ``.discard(run_id, reason)``."""

    def __call__(self, workflow: str | None = None) -> pl.DataFrame:
        """Dead letters, oldest first: run_id, workflow, version, failed_at, error, inputs, tasks_failed."""
        from .store_access import open_store

        query = "SELECT * FROM dead_letters"
        if workflow is None:
            return open_store().sql(query)
        return open_store().sql(query + " WHERE workflow = ?", [workflow])

    def retry(self, run_id: str, *, wait: bool = True, raise_on_failure: bool = True, **inputs: Any) -> Run:
        """Run the failed run's workflow again, with its inputs updated by ``inputs``.

        The workflow is the version that failed if this process knows it,
        else the current definition of that name. Returns the new run
        (finished when ``wait``; it raises like ``wf.run`` if it fails).
        """
        from .api import run_workflow
        from .catalog import find, user_namespace

        started, _ = self._dead_letter(run_id)
        name, version = started.workflow, started.workflow_version
        ns = user_namespace()
        wf = find(name, version, ns) or find(name, None, ns)
        if wf is None:
            raise DeadLetterError(
                f"cannot retry run {run_id}: workflow {name!r} is not defined in this process; "
                "run the cell (or kf.load the file) that defines it, then retry"
            )
        recorded = dict(started.payload.get("inputs") or {})
        unusable = [k for k, v in recorded.items() if k not in inputs and _was_summarised(v)]
        if unusable:
            raise DeadLetterError(
                f"cannot retry run {run_id} with its recorded inputs: {', '.join(unusable)} were not JSON values "
                "and only a summary was recorded; pass them again: "
                f"kf.dlq.retry({run_id!r}, {', '.join(f'{k}=...' for k in unusable)})"
            )
        new_inputs = {**recorded, **inputs}
        from .api import new_run_id

        new_id = new_run_id()
        self._decide(run_id, ev.DEAD_LETTER_RETRIED, {"new_run_id": new_id, "inputs": _safe(inputs), "version": wf.version})
        return run_workflow(wf, {**new_inputs, "run_id": new_id, "raise_on_failure": raise_on_failure}, wait=wait)

    def discard(self, run_id: str, reason: str = "") -> None:
        """Take the run out of the queue for good (the decision is recorded with ``reason``)."""
        self._dead_letter(run_id)
        self._decide(run_id, ev.DEAD_LETTER_DISCARDED, {"reason": reason})

    def _dead_letter(self, run_id: str) -> tuple[ev.Event, list[ev.Event]]:
        from .store_access import open_store

        store = open_store()
        events = store.read_run(run_id)
        if not events:
            raise DeadLetterError(f"no run {run_id!r} in the store at {store.location}; list dead letters with kf.dlq()")
        in_queue = store.sql("SELECT 1 FROM dead_letters WHERE run_id = ?", [run_id]).height > 0
        if not in_queue:
            types = {e.type for e in events}
            if types & {ev.DEAD_LETTER_RETRIED, ev.DEAD_LETTER_DISCARDED}:
                why = "it was already retried or discarded"
            elif events[-1].type != ev.RUN_FAILED:
                why = "it did not fail"
            else:
                why = "it was interrupted (resume it instead) or is a sub-workflow's child run"
            raise DeadLetterError(f"run {run_id} is not in the dead letter queue: {why}")
        started = next(e for e in reversed(events) if e.type == ev.RUN_STARTED)
        return started, events

    def _decide(self, run_id: str, type_: str, payload: Mapping[str, Any]) -> None:
        from .events import Event, current_actor, now_us
        from .store_access import open_store

        store = open_store()
        with store.run_lock(run_id):
            events = store.read_run(run_id)
            if any(e.type in (ev.DEAD_LETTER_RETRIED, ev.DEAD_LETTER_DISCARDED) for e in events):
                raise DeadLetterError(f"run {run_id} was decided meanwhile by another process; see kf.dlq()")
            last = events[-1]
            store.append(
                Event(run_id, last.seq + 1, now_us(), type_, last.workflow, last.workflow_version, None, None,
                      dict(payload), current_actor())  # fmt: skip
            )


def _was_summarised(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"type", "repr"}


def _safe(inputs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in inputs.items():
        try:
            orjson.dumps(v)
            out[k] = v
        except TypeError:
            out[k] = {"type": type(v).__name__, "repr": repr(v)[:200]}
    return out


dlq = DeadLetterQueue()
