"""The contract between the engine and an executor plugin.

An executor runs one attempt of one task somewhere (a thread, a process, a
cluster) and reports back through a callback. The engine does everything
else: events, retries, timeouts, passing outputs along.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class TaskCall:
    """One attempt of one task, as handed to an executor."""

    run_id: str
    task_id: str
    attempt: int
    fn: Callable[..., Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    timeout: float | None = None  # seconds; the engine enforces it too
    # True when nothing else of this run is running or waiting: an executor
    # may then run the attempt on the calling thread (the engine has nothing
    # else to do meanwhile), saving a thread handoff per task in a chain.
    alone: bool = False
    # Where the attempt runs in the run (task, attempt, iteration, forEach item):
    # an executor that runs ``fn`` in another process rebuilds the task context
    # there from it (see kernelflow.remote_attempt). ``fn`` is already bound to it.
    context: Any = None


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """What came back from an attempt: a value, or the exception it raised."""

    call: TaskCall
    value: Any = None
    error: BaseException | None = None
    traceback: str | None = None  # formatted where the exception happened
    logs: str | None = None  # what the attempt printed or logged (tail), when captured
    logs_truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


class Handle(Protocol):
    def cancel(self) -> bool:
        """Try to stop the attempt; return True if it will not report back."""


@runtime_checkable
class Executor(Protocol):
    """Runs task attempts. One instance serves one run."""

    name: str

    def submit(self, call: TaskCall, report: Callable[[TaskOutcome], None]) -> Handle:
        """Start the attempt and return at once; call ``report`` exactly once
        (from any thread) when it ends, unless it was cancelled."""

    def shutdown(self, wait: bool = False) -> None:
        """Release workers; called when the run ends."""


ExecutorFactory = Callable[[int], Executor]
"""Builds an executor for one run, given the run's ``max_parallel``."""


@dataclass(frozen=True)
class ExecutorSpec:
    """What an executor plugin registers: a name, a factory and a description.

    ``remote``: the executor runs attempts outside this process (a process
    pool, a cluster), so only Python steps go to it; shell, HTTP, notebook and
    sub-workflow steps of the same workflow run on threads here (they start
    their own processes or requests anyway). ``health``: a check that
    ``kernelflow doctor`` calls (is the cluster reachable?), returning a
    :class:`kernelflow.health.Health`.
    """

    name: str
    factory: ExecutorFactory
    description: str = ""
    remote: bool = False
    health: Callable[[], Any] | None = None
