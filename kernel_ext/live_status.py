"""Live DAGs for runs driven in this kernel.

A run started from a cell shows a :class:`~kernelflow.widgets.dag.DagWidget`
in that cell's output, updated as events arrive (batched, at most one push
per ``UPDATE_INTERVAL``, so a fast 500-task run spends its time on tasks).
When the driver stops, the output is re-sent so the saved notebook's static
picture (``text/html``) shows the colours of that moment, and a run that now
waits at approval gates shows an approval widget for each.

A resumed run (``run.resume()``, an approval answered, the watcher) reuses
the widget already showing it instead of adding another; when it stops
again, the same outputs (the DAG and the gates' widgets) are re-sent, so an
executed notebook keeps the final state, not the state at the gate.
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
        if widget is None:
            widget = DagWidget.for_run(run, layout_now=False)
            widget.plain_first = True
            widget.display_handle = display(widget, display_id=True)
            widget.plain_first = False
        widget.attach(run)
        self.widget = widget

    def on_events(self, run: Run, events: Sequence[Event]) -> None:
        self.widget.push(run.state)

    def on_finish(self, run: Run) -> None:
        self.widget.detach(run)
        if self.widget.display_handle is not None:
            self.widget.display_handle.update(self.widget)
        for gate in self.widget.gate_widgets.values():
            gate.refresh()
            if gate.display_handle is not None:
                gate.display_handle.update(gate)
        self._show_new_gates(run)

    def _show_new_gates(self, run: Run) -> None:
        if not any(g.get("kind") == "approval" for g in run.state.waiting.values()):
            return
        from IPython.display import display

        from kernelflow.widgets.approval import approval_widgets_for

        for gate in approval_widgets_for(run):
            key = (gate.task, gate.seq)
            if key not in self.widget.gate_widgets:
                self.widget.gate_widgets[key] = gate
                gate.display_handle = display(gate, display_id=True)


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


def show_alert(run: Run, alert: Any) -> None:
    """An alert banner where the run shows, as the detector raises it."""
    from IPython.display import display

    from kernelflow.widgets.alert import AlertWidget

    display(AlertWidget(alert))
