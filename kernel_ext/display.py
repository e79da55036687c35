"""How IPython shows workflows and runs: HTML with the DAG, and plain text."""

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
    return dag_html(run.workflow, run.state) + table


def register_formatters(ipython: Any) -> None:
    formatters = ipython.display_formatter.formatters
    formatters["text/html"].for_type(Workflow, workflow_html)
    formatters["text/html"].for_type(Run, run_html)
    formatters["text/plain"].for_type(Workflow, lambda wf, p, cycle: p.text(render_text(wf)))
    formatters["text/plain"].for_type(
        Run, lambda run, p, cycle: p.text(run.summary() + "\n" + render_text(run.workflow, run.state))
    )


def unregister_formatters(ipython: Any) -> None:
    formatters = ipython.display_formatter.formatters
    for mime in ("text/html", "text/plain"):
        for cls in (Workflow, Run):
            try:
                formatters[mime].pop(cls)
            except KeyError:
                pass
