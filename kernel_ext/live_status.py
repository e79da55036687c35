"""Live status for runs started from a notebook cell.

Until the live DAG widget lands, the status is an HTML output updated in
place (``display_id``): counts and running tasks while the run goes, the
coloured DAG when it ends. Updates are throttled so a run of thousands of
quick tasks spends its time running tasks, not redrawing.
"""

from __future__ import annotations

import html
import time
from typing import Any, Sequence

from kernelflow.events import Event
from kernelflow.plugins.hookspecs import hookimpl
from kernelflow.run import Run
from kernelflow.widgets.dag_static import STATUS_COLORS

from .display import run_html

UPDATE_INTERVAL = 0.25  # seconds between redraws while a run goes on


class NotebookStatus:
    """A :class:`~kernelflow.observer_api.RunObserver` that redraws one output."""

    def __init__(self, run: Run) -> None:
        from IPython.display import HTML, display

        self._HTML = HTML
        self._last = 0.0
        self._handle = display(HTML(self._progress_html(run)), display_id=True)

    def on_events(self, run: Run, events: Sequence[Event]) -> None:
        now = time.monotonic()
        if now - self._last < UPDATE_INTERVAL:
            return
        self._last = now
        self._handle.update(self._HTML(self._progress_html(run)))

    def on_finish(self, run: Run) -> None:
        self._handle.update(self._HTML(run_html(run)))

    @staticmethod
    def _progress_html(run: Run) -> str:
        counts = run.state.counts()
        total = len(run.workflow.tasks)
        done = counts["succeeded"] + counts["failed"] + counts["timed_out"] + counts["skipped"]
        parts = " · ".join(
            f"<span style='color:{STATUS_COLORS[s][1]}'>{n} {s}</span>" for s, n in counts.items() if n
        )
        running = [t for t, s in run.state.tasks.items() if s.status in ("running", "retrying")][:8]
        now_running = f"<br>running: {html.escape(', '.join(running))}" if running else ""
        elapsed = run.duration or 0.0
        return (
            f"<div class='kernelflow-progress'><b>{html.escape(run.workflow.name)}</b> run "
            f"<code>{run.run_id}</code>: {run.status} · {done}/{total} done · {elapsed:.1f} s<br>"
            f"<progress max='{total}' value='{done}' style='width:20em'></progress> {parts}{now_running}</div>"
        )


class NotebookStatusPlugin:
    """Registered by the extension: watches runs started while a cell executes."""

    def __init__(self, ipython: Any) -> None:
        self._ipython = ipython

    @hookimpl
    def kernelflow_run_observers(self, run: Run) -> list[NotebookStatus] | None:
        # Only a kernel can update outputs in place; a terminal IPython gets none.
        if getattr(self._ipython, "kernel", None) is None:
            return None
        return [NotebookStatus(run)]
