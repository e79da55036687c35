"""The engine: drives one run from its first event to its last.

Ready-set scheduling: a task is scheduled the moment its last dependency
succeeds and starts as soon as fewer than ``max_parallel`` tasks are
running. Independent branches go on when a task fails; the failed task's
dependents are skipped; the run ends failed. Every state change goes through
``Run._emit`` (store first, then the reducer), so the engine's view of the
run is exactly the fold of what it recorded.
"""

from __future__ import annotations

import heapq
import os
import queue
import time
import warnings
from collections import deque
from typing import Any

import orjson

from . import events as ev
from .durations import format_duration
from .exceptions import TaskFailure
from .executor_api import Executor, TaskCall, TaskOutcome
from .plugin_host import executor_spec
from .run import Run

INLINE_OUTPUT_LIMIT = 2048  # bytes of JSON; larger or richer outputs become artifacts
_NONE_OUTPUT = {"output": None, "output_ref": None, "output_type": "NoneType", "stored": True}
_INLINE_TYPES = (bool, int, float, str, list, dict)


def drive(run: Run) -> None:
    """Run ``run`` to its end on the calling thread. Never raises for task
    failures (they are recorded); raises for what stops the engine itself
    (an interrupt, a store that cannot be written), after recording what it can."""
    wf = run.workflow
    emit = run._emit
    index = wf._index
    down = wf.downstream()
    max_parallel = wf.max_parallel
    inputs = run.inputs
    # Per-task constants, computed once rather than per attempt.
    plan: dict[str, tuple[Any, tuple[str, ...], tuple[str, ...], str, float | None]] = {}
    for tid in wf.order:
        task = index[tid]
        fn = wf.functions.get(tid)
        plan[tid] = (
            fn,
            task.deps,
            tuple(p.name for p in task.inputs if p.name in inputs),
            task.options.executor or wf.executor,
            task.options.timeout,
        )
    waiting = {tid: len(set(index[tid].upstream)) for tid in wf.order}
    values = run._values
    tasks_state = run.state.tasks
    executors: dict[str, Executor] = {}
    completions: queue.SimpleQueue[TaskOutcome] = queue.SimpleQueue()
    report = completions.put
    running: dict[str, tuple[int, Any]] = {}
    ready: deque[str] = deque()
    retry_heap: list[tuple[float, str, int]] = []
    deadline_heap: list[tuple[float, str, int]] = []
    failed: list[str] = []

    def schedule(tid: str, attempt: int) -> None:
        emit(ev.TASK_SCHEDULED, tid, attempt)
        ready.append(tid)

    def launch(tid: str) -> None:
        fn, deps, input_names, executor_name, timeout = plan[tid]
        attempt = tasks_state[tid].attempt + 1
        kwargs = {d: values[d] for d in deps}
        for name in input_names:
            kwargs[name] = inputs[name]
        executor = executors.get(executor_name)
        if executor is None:
            executor = executors[executor_name] = executor_spec(executor_name).factory(max_parallel)
        emit(ev.TASK_STARTED, tid, attempt, {"executor": executor_name})
        alone = not running and not ready and not retry_heap
        handle = executor.submit(TaskCall(run.run_id, tid, attempt, fn, kwargs, timeout, alone), report)
        running[tid] = (attempt, handle)
        if timeout is not None:
            heapq.heappush(deadline_heap, (time.monotonic() + timeout, tid, attempt))

    def attempt_failed(tid: str, attempt: int, error: dict[str, Any], reason: str, exc: BaseException | None) -> None:
        options = index[tid].options
        if attempt <= options.retries:
            delay = options.delay_before(attempt + 1)
            emit(
                ev.TASK_RETRYING,
                tid,
                attempt,
                {"error": error, "reason": reason, "delay_s": delay, "next_attempt": attempt + 1},
            )
            heapq.heappush(retry_heap, (time.monotonic() + delay, tid, attempt + 1))
            return
        if reason == "timeout":
            emit(ev.TASK_TIMED_OUT, tid, attempt, {"timeout_s": options.timeout, "error": error})
        else:
            emit(ev.TASK_FAILED, tid, attempt, {"error": error})
        run.failures[tid] = TaskFailure(tid, attempt, error["exc_type"], error["message"], error["traceback"])
        if exc is not None:
            run._exceptions[tid] = exc
        failed.append(tid)
        skip_downstream(tid)

    def skip_downstream(tid: str) -> None:
        todo = deque(down[tid])
        while todo:
            d = todo.popleft()
            if tasks_state[d].status == "pending":
                emit(ev.TASK_SKIPPED, d, None, {"reason": f"upstream task {tid!r} failed", "upstream": tid})
                todo.extend(down[d])

    def finished(outcome: TaskOutcome) -> None:
        call = outcome.call
        tid = call.task_id
        current = running.get(tid)
        if current is None or current[0] != call.attempt:
            return  # a late report from an attempt already given up on (timeout)
        del running[tid]
        if outcome.error is None:
            value = outcome.value
            payload = _NONE_OUTPUT if value is None else _output_payload(run, tid, call.attempt, value)
            values[tid] = value
            emit(ev.TASK_SUCCEEDED, tid, call.attempt, payload)
            for d in down[tid]:
                waiting[d] -= 1
                if waiting[d] == 0:
                    schedule(d, 1)
        else:
            exc = outcome.error
            error = {
                "exc_type": type(exc).__name__,
                "message": str(exc),
                "traceback": outcome.traceback or "",
            }
            attempt_failed(tid, call.attempt, error, "error", exc)

    def timed_out(tid: str, attempt: int) -> None:
        _, handle = running.pop(tid)
        handle.cancel()
        limit = index[tid].options.timeout or 0
        error = {
            "exc_type": "TimeoutError",
            "message": f"task {tid!r} ran longer than its timeout of {format_duration(limit)}",
            "traceback": "",
        }
        attempt_failed(tid, attempt, error, "timeout", None)

    emit(
        ev.RUN_STARTED,
        payload={
            "inputs": _json_safe_inputs(inputs),
            "tasks": list(wf.order),
            "max_parallel": max_parallel,
            "executor": wf.executor,
            "notebook": os.environ.get("KERNELFLOW_NOTEBOOK") or os.environ.get("JPY_SESSION_NAME"),
            "batch_id": os.environ.get("KERNELFLOW_BATCH_ID"),
        },
    )
    try:
        for tid in wf.order:
            if waiting[tid] == 0:
                schedule(tid, 1)
        while True:
            while ready and len(running) < max_parallel:
                launch(ready.popleft())
            run._notify()
            if not running and not retry_heap:
                break
            wake = min(
                deadline_heap[0][0] if deadline_heap else float("inf"),
                retry_heap[0][0] if retry_heap else float("inf"),
            )
            try:
                if wake == float("inf"):
                    outcome = completions.get()
                else:
                    outcome = completions.get(timeout=max(0.0, wake - time.monotonic()))
            except queue.Empty:
                outcome = None
            while outcome is not None:
                finished(outcome)
                try:
                    outcome = completions.get_nowait()
                except queue.Empty:
                    outcome = None
            now = time.monotonic()
            while deadline_heap and deadline_heap[0][0] <= now:
                _, tid, attempt = heapq.heappop(deadline_heap)
                if running.get(tid, (None,))[0] == attempt:
                    timed_out(tid, attempt)
            while retry_heap and retry_heap[0][0] <= now:
                _, tid, attempt = heapq.heappop(retry_heap)
                schedule(tid, attempt)
    except BaseException as exc:
        for _, handle in running.values():
            handle.cancel()
        try:
            emit(
                ev.RUN_FAILED,
                payload={"failed_tasks": failed, "error": f"interrupted: {type(exc).__name__}: {exc}", "interrupted": True},
            )
        except Exception:  # noqa: BLE001 - the store itself may be what failed
            pass
        raise
    finally:
        for executor in executors.values():
            executor.shutdown(wait=False)

    if failed:
        first = run.failures[failed[0]]
        emit(ev.RUN_FAILED, payload={"failed_tasks": failed, "error": f"task {first.task_id!r} failed: {first.exc_type}: {first.message}"})
    else:
        emit(ev.RUN_SUCCEEDED)


def _output_payload(run: Run, tid: str, attempt: int, value: Any) -> dict[str, Any]:
    """Small JSON values go inline in the event; others become artifacts in the store."""
    kind = type(value)
    if kind in _INLINE_TYPES:
        try:
            encoded = orjson.dumps(value)
            if len(encoded) <= INLINE_OUTPUT_LIMIT and orjson.loads(encoded) == value:
                return {"output": value, "output_ref": None, "output_type": kind.__name__, "stored": True}
        except (TypeError, orjson.JSONEncodeError):
            pass
    try:
        ref = run.store.save_artifact(run.run_id, tid, attempt, value)
    except Exception as exc:  # noqa: BLE001 - an unstorable output must not fail a task that worked
        warnings.warn(
            f"run {run.run_id}: the output of task {tid!r} ({kind.__name__}) cannot be stored: {exc}. "
            "It was passed to dependent tasks, but it cannot be loaded from the store later; "
            "return picklable values (or polars/pyarrow tables) to keep it.",
            RuntimeWarning,
            stacklevel=2,
        )
        return {
            "output": None,
            "output_ref": None,
            "output_type": kind.__name__,
            "stored": False,
            "output_repr": repr(value)[:200],
        }
    return {"output": None, "output_ref": dict(ref), "output_type": kind.__name__, "stored": True}


def _json_safe_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    safe = {}
    for name, value in inputs.items():
        try:
            encoded = orjson.dumps(value)
            ok = len(encoded) <= INLINE_OUTPUT_LIMIT and orjson.loads(encoded) == value
        except (TypeError, orjson.JSONEncodeError):
            ok = False
        safe[name] = value if ok else {"type": type(value).__name__, "repr": repr(value)[:200]}
    return safe
