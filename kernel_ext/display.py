"""How IPython shows workflows and runs.

In a kernel: the DAG widget (its MIME bundle also carries the static HTML).
Elsewhere (a terminal IPython): HTML with the DAG as SVG, and plain text.
"""

from __future__ import annotations

import html
from typing import Any

from kernelflow.dag_text import render_text
from kernelflow.model import Workflow
from kernelflow.run import Run
from kernelflow.widgets.dag_static import dag_html


def workflow_html(wf: Workflow) -> str:
    return dag_html(wf)


def run_html(run: Run) -> str:
    return dag_html(run.workflow, run.state) + table_html(run)


def table_html(run: Run) -> str:
    """The run's tasks as a table: status, attempt, duration, problem."""
    rows = []
    for row in run.tasks.iter_rows(named=True):
        duration = "" if row["duration_ms"] is None else f"{row['duration_ms']:.1f} ms"
        rows.append(
            "<tr>"
            f"<td>{html.escape(row['task'])}</td><td class='kf-{row['status']}'>{row['status']}</td>"
            f"<td>{row['attempt']}</td><td>{duration}</td><td>{html.escape(row['problem'] or '')}</td>"
            "</tr>"
        )
    table = (
        "<table class='kernelflow-run'><thead><tr><th>task</th><th>status</th><th>attempt</th>"
        "<th>duration</th><th>problem</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )
    return table


def workflow_bundle(wf: Workflow) -> Any:
    from kernelflow.widgets.dag import DagWidget

    return DagWidget.for_workflow(wf)._repr_mimebundle_()


def run_bundle(run: Run) -> Any:
    from kernelflow.widgets.dag import DagWidget, live_widget

    # The cell that ran it already shows its live DAG: the run's value adds the summary table.
    if live_widget(run.run_id) is not None:
        return {"text/html": table_html(run), "text/plain": run.summary()}
    return DagWidget.for_run(run)._repr_mimebundle_()


def register_formatters(ipython: Any) -> None:
    if getattr(ipython, "kernel", None) is not None:
        bundles = ipython.display_formatter.mimebundle_formatter
        bundles.for_type(Workflow, workflow_bundle)
        bundles.for_type(Run, run_bundle)
    formatters = ipython.display_formatter.formatters
    formatters["text/html"].for_type(Workflow, workflow_html)
    formatters["text/html"].for_type(Run, run_html)
    formatters["text/plain"].for_type(Workflow, lambda wf, p, cycle: p.text(render_text(wf)))
    formatters["text/plain"].for_type(
        Run, lambda run, p, cycle: p.text(run.summary() + "\n" + render_text(run.workflow, run.state))
    )


def unregister_formatters(ipython: Any) -> None:
    for cls in (Workflow, Run):
        try:
            ipython.display_formatter.mimebundle_formatter.pop(cls)
        except KeyError:
            pass
    formatters = ipython.display_formatter.formatters
    for mime in ("text/html", "text/plain"):
        for cls in (Workflow, Run):
            try:
                formatters[mime].pop(cls)
            except KeyError:
                pass
