"""The ``timed`` executor: each attempt on its own thread, its duration recorded.

An executor runs one attempt of one task and reports back once
(``kernelflow.executor_api``); the engine does the rest: events, retries,
timeouts, passing outputs along, and never submits more than the run's
``max_parallel`` attempts at once. So this one needs no pool of its own. A
thread per attempt also means an attempt the engine gave up on (a timeout:
Python cannot stop a thread) never holds a worker that its retry needs.

:func:`timings` returns what was measured: per attempt, when it started, how
long it ran, and how it ended.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from kernelflow.executor_api import TaskCall, TaskOutcome
from kernelflow.plugins.thread_executor import run_attempt

KEEP = 10_000
"""How many timings are kept (the oldest go first)."""


@dataclass(frozen=True)
class Timing:
    """One attempt, measured."""

    run_id: str
    task_id: str
    attempt: int
    started_at: float  # time.time() when the attempt began
    seconds: float  # how long the task function ran
    outcome: str  # "ok", "error", or "abandoned" (the engine stopped waiting: a timeout)


_lock = threading.Lock()
_timings: deque[Timing] = deque(maxlen=KEEP)


def timings(run_id: str | None = None) -> list[Timing]:
    """Timings recorded in this process, oldest first (only ``run_id``'s if given)."""
    with _lock:
        return [t for t in _timings if run_id is None or t.run_id == run_id]


def clear_timings() -> None:
    with _lock:
        _timings.clear()


class _Attempt:
    """The handle the engine keeps: ``cancel()`` says the result is no longer wanted."""

    __slots__ = ("cancelled", "lock", "started")

    def __init__(self) -> None:
        self.cancelled = False
        self.started = False
        self.lock = threading.Lock()

    def cancel(self) -> bool:
        with self.lock:
            self.cancelled = True
            return not self.started  # True: it will not report back


class TimedExecutor:
    """Runs each attempt on a new daemon thread and records a :class:`Timing`."""

    name = "timed"

    def __init__(self, max_parallel: int) -> None:
        # The engine caps concurrent attempts at max_parallel; kept for display.
        self.max_parallel = max_parallel
        self._threads: list[threading.Thread] = []

    def submit(self, call: TaskCall, report: Callable[[TaskOutcome], None]) -> _Attempt:
        handle = _Attempt()
        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(
            target=self._run, args=(call, report, handle), name=f"timed-{call.task_id}-{call.attempt}", daemon=True
        )
        self._threads.append(thread)
        thread.start()
        return handle

    def _run(self, call: TaskCall, report: Callable[[TaskOutcome], None], handle: _Attempt) -> None:
        with handle.lock:
            if handle.cancelled:
                return  # cancelled before it began: nothing runs, nothing reports
            handle.started = True
        started_at, start = time.time(), time.perf_counter()
        outcome = run_attempt(call)  # calls the task, captures its value or exception and its output
        seconds = time.perf_counter() - start
        abandoned = handle.cancelled
        kind = "abandoned" if abandoned else ("ok" if outcome.ok else "error")
        with _lock:
            _timings.append(Timing(call.run_id, call.task_id, call.attempt, started_at, seconds, kind))
        if not abandoned:
            report(outcome)  # exactly once, from this thread

    def shutdown(self, wait: bool = False) -> None:
        if wait:
            for thread in self._threads:
                thread.join()
