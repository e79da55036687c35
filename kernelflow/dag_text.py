"""A plain-text picture of a workflow's DAG, for terminals and text/plain outputs.

Tasks are listed level by level (a task's level is one more than its
deepest dependency), each with what it needs, its inputs, options and, when a
run state is given, its status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .model import Workflow
    from .reducer import RunState

STATUS_MARK = {
    "pending": "·",
    "scheduled": "○",
    "running": "▶",
    "retrying": "↻",
    "succeeded": "✓",
    "failed": "✗",
    "timed_out": "⌛",
    "skipped": "–",
}


def render_text(wf: Workflow, state: RunState | None = None, *, max_tasks: int = 200) -> str:
    """The DAG as lines of text; with ``state``, each task shows its status."""
    header = f"workflow {wf.name} · version {wf.version} · {len(wf.tasks)} task{'s' if len(wf.tasks) != 1 else ''}"
    if wf.max_parallel != 8 or wf.executor != "threads":
        header += f" · max_parallel={wf.max_parallel} · executor={wf.executor}"
    if state is not None:
        counts = ", ".join(f"{n} {s}" for s, n in state.counts().items() if n)
        header += f"\nrun {state.run_id}: {state.status} ({counts})"
    inputs = [f"{i.name}{'' if i.required else '?'}" for i in wf.inputs]
    lines = [header]
    if inputs:
        lines.append("inputs: " + ", ".join(inputs) + ("   (? = optional)" if any(not i.required for i in wf.inputs) else ""))
    shown = 0
    for depth, level in enumerate(wf.levels()):
        for tid in level:
            if shown == max_tasks:
                lines.append(f"  … {len(wf.tasks) - shown} more tasks")
                return "\n".join(lines)
            task = wf[tid]
            mark = ""
            if state is not None:
                status = state.tasks[tid].status if tid in state.tasks else "pending"
                mark = f"{STATUS_MARK.get(status, '?')} "
            needs = f" ← {', '.join(task.upstream)}" if task.upstream else ""
            own_inputs = [p.name for p in task.inputs]
            takes = f" ({', '.join(own_inputs)})" if own_inputs else ""
            opts = task.options.describe()
            extra = f"  [{opts}]" if opts else ""
            lines.append(f"  {'  ' * depth}{mark}{tid}{takes}{needs}{extra}")
            shown += 1
    return "\n".join(lines)
