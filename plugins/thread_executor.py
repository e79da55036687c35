"""The built-in ``threads`` executor: tasks run on threads of the current process.

It registers through the same hook (and the same entry-point group) a
third-party executor would use. Threads share the kernel's memory, so
outputs pass to dependents without copying; the flip side is that Python
cannot stop a thread, so on timeout the engine records the timeout and stops
waiting, while the abandoned attempt finishes (or not) in the background and
its result is ignored.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import traceback
from typing import Any, Callable

from kernelflow.executor_api import ExecutorSpec, TaskCall, TaskOutcome
from kernelflow.plugins.hookspecs import hookimpl
from kernelflow import task_logs
from kernelflow.task_logs import capture

_STOP = object()


class _Handle:
    __slots__ = ("cancelled", "started")

    def __init__(self) -> None:
        self.cancelled = False
        self.started = False

    def cancel(self) -> bool:
        # Only an attempt that has not started can be stopped from outside.
        self.cancelled = True
        return not self.started


class ThreadExecutor:
    """A small pool of worker threads, started on demand.

    A hand-rolled pool rather than ``concurrent.futures``: the engine already
    tracks attempts and caps them at ``max_parallel``, so Futures would only
    add per-task allocation and locking on the hot path. The pool grows past
    ``max_workers`` only when attempts abandoned after a timeout still hold
    threads, so a hung task cannot starve the rest of the run.
    """

    name = "threads"

    def __init__(self, max_workers: int) -> None:
        self._max_workers = max(1, max_workers)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._holding_logs = False

    def submit(self, call: TaskCall, report: Callable[[TaskOutcome], None]) -> _Handle:
        handle = _Handle()
        if not self._holding_logs:
            # Keep the output router in place until shutdown instead of
            # installing it around every attempt (most of a no-op task's cost).
            task_logs.hold()
            self._holding_logs = True
        if call.alone and call.timeout is None:
            # Nothing else can happen in this run until this attempt ends, and
            # no timeout needs watching: run it here. Handing it to a worker
            # would cost two thread wake-ups (~60 µs on a 2-core VM) per task.
            handle.started = True
            report(run_attempt(call, inline=True))
            return handle
        with self._lock:
            if self._idle <= 0:
                worker = threading.Thread(
                    target=self._work, name=f"kernelflow-{call.run_id}-{len(self._workers)}", daemon=True
                )
                self._workers.append(worker)
                worker.start()
            else:
                self._idle -= 1
        self._queue.put((call, report, handle))
        return handle

    def _work(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is _STOP:
                return
            call, report, handle = item
            if handle.cancelled:
                with self._lock:
                    self._idle += 1
                continue
            handle.started = True
            outcome = run_attempt(call)
            # Count ourselves idle before reporting: the engine reacts to the
            # report by submitting the next task, which this thread should take.
            with self._lock:
                self._idle += 1
            report(outcome)

    def shutdown(self, wait: bool = False) -> None:
        if self._holding_logs:
            self._holding_logs = False
            task_logs.let_go()
        for _ in self._workers:
            self._queue.put(_STOP)
        if wait:
            for worker in self._workers:
                worker.join()


def run_attempt(call: TaskCall, inline: bool = False) -> TaskOutcome:
    """Call the task function (awaiting it if it is async) and capture the outcome.

    ``inline``: on the thread driving the run, where an interrupt (the stop
    button in Jupyter) must stop the run rather than count as a task failure.
    """
    with capture() as out:
        try:
            value = call.fn(**call.kwargs)
            if value is not None and inspect.isawaitable(value):
                value = asyncio.run(_await(value))
            error, tb = None, None
        except KeyboardInterrupt:
            if inline:
                raise
            value, error, tb = None, KeyboardInterrupt(), "KeyboardInterrupt\n"
        except BaseException as exc:  # noqa: BLE001 - the task's failure is data for the engine
            value, error, tb = None, exc, format_user_traceback(exc)
    return TaskOutcome(call, value=value, error=error, traceback=tb, logs=out.text or None, logs_truncated=out.truncated)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def format_user_traceback(exc: BaseException) -> str:
    """The traceback from the user's code down, without our frames above it."""
    from kernelflow.durable import WRAPPER_CODES

    tb = exc.__traceback__
    # The first frames are run_attempt and the context wrapper; the user's function starts below them.
    while tb is not None and (tb.tb_frame.f_code is run_attempt.__code__ or tb.tb_frame.f_code in WRAPPER_CODES):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


@hookimpl
def kernelflow_register_executors() -> list[ExecutorSpec]:
    return [ExecutorSpec("threads", ThreadExecutor, "threads in the current process (the default)")]
