"""Progress for the ``kernelflow`` command: a rich bar on a terminal, plain lines elsewhere.

A run driven by the CLI (``kernelflow run flow.yaml``, ``kernelflow resume``)
is watched by a :class:`~kernelflow.observer_api.RunObserver` that this module
attaches through the ``kernelflow_run_observers`` hook for as long as the
command runs (:func:`watch_runs`): the engine calls it with the run's events
on the thread that drives the run, so the bar moves with the run's own
events, not with polling. Only the top-level run gets it (a sub-workflow's run
shows as its parent's task).

On a terminal (stderr is a TTY) the bar shows tasks done / total, the elapsed
time and the tasks running now. Anywhere else (a pipe, a CI log) each task's
end is one plain line on stderr. ``--no-progress`` and ``--json`` turn both off.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from . import events as ev
from .plugins.hookspecs import hookimpl
from .reducer import FINAL_TASK_STATUSES

_ENDS = {ev.TASK_SUCCEEDED: "✓", ev.TASK_FAILED: "✗", ev.TASK_TIMED_OUT: "✗", ev.TASK_SKIPPED: "·", ev.TASK_RETRYING: "↻"}


def progress_mode(*, disabled: bool, stream: TextIO | None = None) -> str | None:
    """``"bar"`` on a terminal, ``"lines"`` elsewhere, ``None`` when turned off."""
    if disabled:
        return None
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def _counts(run: Any) -> tuple[int, int, list[str]]:
    tasks = run.state.tasks
    total = max(len(tasks), len(getattr(run.workflow, "tasks", ()) or ()))
    done = sum(1 for t in tasks.values() if t.status in FINAL_TASK_STATUSES)
    running = [tid for tid, t in tasks.items() if t.status == "running"]
    return done, total, running


class BarProgress:
    """A rich progress bar for one run: tasks done / total and the running tasks."""

    def __init__(self, run: Any, stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[running]}"),
            console=Console(file=stream or sys.stderr),
            transient=False,
        )
        done, total, _ = _counts(run)
        self._task = self._progress.add_task(f"{run.workflow.name} {run.run_id}", total=total or None,
                                             completed=done, running="")  # fmt: skip
        self._progress.start()

    def on_events(self, run: Any, events: Sequence[Any]) -> None:
        done, total, running = _counts(run)
        shown = ", ".join(running[:4]) + (f" +{len(running) - 4}" if len(running) > 4 else "")
        self._progress.update(self._task, completed=done, total=total or None,
                              running=f"running: {shown}" if shown else "")  # fmt: skip

    def on_finish(self, run: Any) -> None:
        done, total, _ = _counts(run)
        self._progress.update(self._task, completed=done, total=total or None, running=run.status)
        self._progress.stop()


class LineProgress:
    """One plain line on ``stream`` per task that ends (for logs and pipes)."""

    def __init__(self, run: Any, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr

    def on_events(self, run: Any, events: Sequence[Any]) -> None:
        done, total, _ = _counts(run)
        for e in events:
            mark = _ENDS.get(e.type)
            if mark is None or e.task_id is None:
                continue
            what = e.type.removeprefix("Task").lower().replace("timedout", "timed out")
            print(f"{mark} {e.task_id} {what} ({done}/{total} done)", file=self._stream, flush=True)

    def on_finish(self, run: Any) -> None:
        pass


class _ProgressPlugin:
    """Gives the first top-level run started while it is registered a progress observer."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._lock = threading.Lock()
        self._given = False

    @hookimpl
    def kernelflow_run_observers(self, run: Any) -> list[Any] | None:
        if run.parent_info.get("parent_run_id"):
            return None
        with self._lock:
            if self._given:
                return None
            self._given = True
        return [BarProgress(run) if self.mode == "bar" else LineProgress(run)]


@contextmanager
def watch_runs(mode: str | None) -> Iterator[None]:
    """While the block runs, the first top-level run started in this process shows ``mode`` progress."""
    if mode is None:
        yield
        return
    from .plugin_host import register, unregister

    plugin = _ProgressPlugin(mode)
    register(plugin, name=f"kernelflow-cli-progress-{id(plugin)}")
    try:
        yield
    finally:
        unregister(plugin)


@contextmanager
def spinner(message: str, mode: str | None) -> Iterator[None]:
    """A spinner with ``message`` on a terminal while the block runs (work with no steps to count)."""
    if mode != "bar":
        yield
        return
    from rich.console import Console

    with Console(file=sys.stderr).status(message):
        yield
