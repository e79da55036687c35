"""Every error kernelflow raises on purpose derives from :class:`KernelflowError`.

Messages follow one rule: say what is wrong, where (cell line, task id or
file), and how to fix it. In IPython the errors render as that message alone
(``_render_traceback_``), so users see their own cell line, not our internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .run import Run


class KernelflowError(Exception):
    """Root of kernelflow's errors."""

    def _render_traceback_(self) -> list[str]:
        # IPython calls this instead of printing a traceback through our code.
        return [f"{type(self).__name__}: {self}"]


class DefinitionError(KernelflowError):
    """A workflow definition is invalid; nothing was registered.

    ``location`` names where: ``"cell line 4"``, ``"flow.yaml line 3"`` or a
    task id; ``hint`` says how to fix it.
    """

    def __init__(self, message: str, *, location: str | None = None, hint: str | None = None):
        self.message = message
        self.location = location
        self.hint = hint
        text = f"{location}: {message}" if location else message
        if hint:
            text = f"{text}\n  fix: {hint}"
        super().__init__(text)


class CycleError(DefinitionError):
    """The dependencies form a cycle; ``cycle`` lists it, first id repeated last."""

    def __init__(self, cycle: list[str], *, location: str | None = None, hint: str | None = None):
        self.cycle = cycle
        super().__init__(
            "dependency cycle " + " -> ".join(cycle),
            location=location,
            hint=hint or "remove one of these dependencies so the tasks form a DAG",
        )


class OptionError(DefinitionError):
    """An option (decorator argument, magic flag) has a bad value."""


class InputError(KernelflowError):
    """Inputs passed to a run do not match the workflow's inputs; nothing was run."""


class StoreError(KernelflowError):
    """The store cannot be opened or written."""


class NotAStoreError(StoreError):
    """A folder exists where the store should be, but it is not a kernelflow store."""


class StoreVersionError(StoreError):
    """The store was written by a newer kernelflow than this one."""


class PluginError(KernelflowError):
    """A plugin is missing, misnamed or broke its hook contract."""


class RunNotFoundError(KernelflowError):
    """No run with this id is in the store (``run_id`` and ``store`` say which)."""

    def __init__(self, run_id: str, store: str):
        self.run_id = run_id
        self.store = store
        super().__init__(
            f"no run {run_id!r} in store {store}; list the runs there with kf.history() "
            "(or SELECT run_id FROM runs), or point kf.use_store() at the store that ran it"
        )


class TimeTravelError(KernelflowError):
    """A point in a run's history that does not exist: a seq out of range, a
    time before the run started, a task it does not have or that never finished."""


@dataclass(frozen=True)
class TaskFailure:
    """What went wrong in one attempt of a task, in plain data (it is stored)."""

    task_id: str
    attempt: int
    exc_type: str
    message: str
    traceback: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "exc_type": self.exc_type,
            "message": self.message,
            "traceback": self.traceback,
        }


class RunFailedError(KernelflowError):
    """A run ended failed. ``run`` is the :class:`~kernelflow.Run`; ``failures``
    the final :class:`TaskFailure` of each failed task. The original exception
    of the first failed task is chained as ``__cause__`` when it ran in this
    process."""

    def __init__(self, run: Run, failures: list[TaskFailure], message: str | None = None):
        self.run = run
        self.failures = failures
        if message is None:
            if failures:
                first = failures[0]
                message = (
                    f"run {run.run_id} of workflow {run.workflow.name!r} failed: "
                    f"task {first.task_id!r} raised {first.exc_type}: {first.message}"
                )
                if len(failures) > 1:
                    message += f" (and {len(failures) - 1} more failed task(s))"
            else:
                message = f"run {run.run_id} of workflow {run.workflow.name!r} failed"
        super().__init__(message)

    def _render_traceback_(self) -> list[str]:
        lines: list[str] = []
        for failure in self.failures:
            lines.append(f"--- task {failure.task_id!r}, attempt {failure.attempt} ---")
            lines.extend(failure.traceback.rstrip("\n").splitlines())
        lines.append(f"{type(self).__name__}: {self}")
        lines.append(
            f"  inspect it: run = err.run, or kf.sql(\"SELECT * FROM events WHERE run_id = '{self.run.run_id}'\")"
        )
        return lines


class RunSuspended(KernelflowError):
    """A batch run stopped at an approval gate or breakpoint; it is kept durably.
    The message says how to answer and resume it."""
