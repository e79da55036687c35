"""A DAG picture that needs no JavaScript: SVG from Graphviz, wrapped in HTML.

The SVG sits inside ``text/html`` (as an ``<img>`` with a data URI, see
:mod:`.fallback`) because untrusted JupyterLab notebooks and nbconvert prefer
HTML over ``image/svg+xml``; where no ``dot`` binary exists, the HTML carries
the text rendering instead, which is still true, just plainer.
"""

from __future__ import annotations

import html
import shutil
from functools import lru_cache
from typing import TYPE_CHECKING

from kernelflow.dag_text import render_text

from .fallback import svg_img

if TYPE_CHECKING:  # pragma: no cover
    from kernelflow.model import Workflow
    from kernelflow.reducer import RunState

# fill, border. One palette for every view so a status looks the same everywhere.
STATUS_COLORS: dict[str, tuple[str, str]] = {
    "pending": ("#f4f4f5", "#a1a1aa"),
    "scheduled": ("#e0f2fe", "#38bdf8"),
    "running": ("#dbeafe", "#2563eb"),
    "retrying": ("#fef3c7", "#d97706"),
    "succeeded": ("#dcfce7", "#16a34a"),
    "failed": ("#fee2e2", "#dc2626"),
    "timed_out": ("#fee2e2", "#b91c1c"),
    "skipped": ("#f4f4f5", "#71717a"),
    "waiting": ("#f3e8ff", "#9333ea"),  # an approval gate or a breakpoint
    "sleeping": ("#ede9fe", "#7c3aed"),
}
SVG_TASK_LIMIT = 300  # beyond this a static picture is unreadable; show the text listing


@lru_cache(maxsize=1)
def has_dot() -> bool:
    """Whether Graphviz's ``dot`` binary is on PATH."""
    return shutil.which("dot") is not None


def dag_svg(wf: Workflow, state: RunState | None = None) -> str | None:
    """The DAG as an SVG string, or ``None`` without ``dot`` or for very large DAGs."""
    if not has_dot() or len(wf.tasks) > SVG_TASK_LIMIT:
        return None
    import graphviz

    graph = graphviz.Digraph(wf.name, format="svg")
    graph.attr(rankdir="LR", bgcolor="transparent", nodesep="0.25", ranksep="0.45")
    graph.attr("node", shape="box", style="rounded,filled", fontname="Helvetica", fontsize="11", height="0.3")
    graph.attr("edge", color="#71717a", arrowsize="0.6")
    for task in wf.tasks:
        status = "pending"
        if state is not None and task.id in state.tasks:
            status = state.tasks[task.id].status
        fill, border = STATUS_COLORS.get(status, STATUS_COLORS["pending"])
        label = task.id
        opts = task.options.describe()
        tooltip = f"{task.id}: {status}" + (f" ({opts})" if opts else "")
        graph.node(task.id, label=label, fillcolor=fill, color=border, tooltip=tooltip, id=f"task-{task.id}",
                   **{"class": f"kf-task kf-{status}"})
        for dep in task.deps:
            graph.edge(dep, task.id)
        for dep in task.options.after:
            if dep not in task.deps:
                graph.edge(dep, task.id, style="dashed")
    svg = graph.pipe(encoding="utf-8")
    # Drop the XML prolog and doctype; dot writes '-' as '&#45;', which nothing needs.
    return svg[svg.index("<svg") :].replace("&#45;", "-")


def dag_html(wf: Workflow, state: RunState | None = None, *, picture: bool = True) -> str:
    """HTML for a notebook output: a header line and the SVG (or the text DAG; always with ``picture=False``)."""
    head = f"<b>{html.escape(wf.name)}</b> · version <code>{wf.version}</code> · {len(wf.tasks)} tasks"
    if state is not None:
        counts = " · ".join(
            f"<span class='kf-count kf-{s}' style='color:{STATUS_COLORS.get(s, ('', '#000'))[1]}'>{n} {s}</span>"
            for s, n in state.counts().items()
            if n
        )
        head += f"<br>run <code>{html.escape(state.run_id)}</code>: <b>{html.escape(state.status)}</b> · {counts}"
    if wf.inputs:
        ins = ", ".join(html.escape(i.name) + ("" if i.required else "?") for i in wf.inputs)
        head += f"<br>inputs: {ins}"
    svg = dag_svg(wf, state) if picture else None
    text = render_text(wf, state)
    body = svg_img(svg, text, "kf-dag-picture") if svg is not None else f"<pre>{html.escape(text)}</pre>"
    return f"<div class='kernelflow-dag' data-workflow='{html.escape(wf.name)}'><div>{head}</div>{body}</div>"
