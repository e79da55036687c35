"""Live DAGs for runs driven in this kernel.

A run started from a cell shows a :class:`~kernelflow.widgets.dag.DagWidget`
in that cell's output, updated as events arrive (batched, at most one push
per ``UPDATE_INTERVAL``, so a fast 500-task run spends its time on tasks).
When the driver stops, the output is re-sent once so the saved notebook's
static picture (``text/html``) shows the final colours, and a run that now
waits at approval gates shows an approval widget for each.

A resumed run (``run.resume()``, an approval answered, the watcher) reuses
the widget already showing it instead of adding another.
"""

from __future__ import annotations

from typing import Any, Sequence

from kernelflow.events import Event
from kernelflow.plugins.hookspecs import hookimpl
from kernelflow.run import Run
from kernelflow.widgets.dag import DagWidget, live_widget


class LiveDag:
    """A :class:`~kernelflow.observer_api.RunObserver` that keeps one DAG widget current."""

    def __init__(self, run: Run) -> None:
        from IPython.display import display

        widget = live_widget(run.run_id)
        self._handle = None
        if widget is None:
            widget = DagWidget.for_run(run)
            self._handle = display(widget, display_id=True)
        widget.attach(run)
        self.widget = widget
        self._gates_shown: set[tuple[str, int]] = set()

    def on_events(self, run: Run, events: Sequence[Event]) -> None:
        self.widget.push(run.state)

    def on_finish(self, run: Run) -> None:
        self.widget.detach(run)
        if self._handle is not None:
            self._handle.update(self.widget)
        self._show_gates(run)

    def _show_gates(self, run: Run) -> None:
        if not any(g.get("kind") == "approval" for g in run.state.waiting.values()):
            return
        from IPython.display import display

        from kernelflow.widgets.approval import approval_widgets_for

        fresh = []
        for widget in approval_widgets_for(run):
            key = (widget.task, widget.seq)
            if key not in self._gates_shown:
                self._gates_shown.add(key)
                fresh.append(widget)
        for widget in fresh:
            display(widget)


class NotebookStatusPlugin:
    """Registered by the extension: a live DAG for each run this kernel drives."""

    def __init__(self, ipython: Any) -> None:
        self._ipython = ipython

    @hookimpl
    def kernelflow_run_observers(self, run: Run) -> list[LiveDag] | None:
        # Widgets need a kernel to talk to; a terminal IPython gets none.
        if getattr(self._ipython, "kernel", None) is None:
            return None
        return [LiveDag(run)]
