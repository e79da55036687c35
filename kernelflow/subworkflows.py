"""Sub-workflows: a step that runs another workflow as a child run.

At definition time the call graph is checked: the called workflow must
exist, take the inputs given, and not lead back to the caller (a call
cycle) or nest deeper than ``max_subworkflow_depth``. At run time the child
is a run of its own, in the same store, whose ``RunStarted`` names its parent
run and task; the same cycle and depth checks guard workflows changed since.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, Mapping

from .catalog import find, user_namespace
from .exceptions import DefinitionError

if TYPE_CHECKING:  # pragma: no cover
    from .model import Workflow
    from .run import Run


def _target(task: Any) -> tuple[str, str | None]:
    return task.spec.action["workflow"], task.spec.action.get("version")


def check_calls(wf: Workflow, namespace: Mapping[str, Any] | None = None) -> None:
    """Fail at definition time on an unknown sub-workflow, wrong inputs, a call cycle or too deep a nesting."""
    ns = namespace if namespace is not None else user_namespace()
    where = (lambda t: f"{wf.origin} line {t.line}" if t.line else None)  # noqa: E731
    for task in wf.tasks:
        if task.spec.kind != "workflow":
            continue
        name, version = _target(task)
        child = find(name, version, ns)
        if child is None:
            known = [k for k, v in (ns or {}).items() if type(v).__name__ == "Workflow"]
            close = difflib.get_close_matches(name, known, n=1)
            pinned = f" at version {version}" if version else ""
            raise DefinitionError(
                f"task {task.id!r} calls workflow {name!r}{pinned}, which is not defined"
                + (f" (did you mean {close[0]!r}?)" if close else ""),
                location=where(task),
                hint=f"define workflow {name!r} in an earlier cell (or load it) before this one",
            )
        given = set(task.spec.input)
        inputs = {i.name: i for i in child.inputs}
        for key in given:
            if key not in inputs:
                close = difflib.get_close_matches(key, list(inputs), n=1)
                raise DefinitionError(
                    f"task {task.id!r} passes input {key!r} to workflow {name!r}, which has no such input"
                    + (f" (did you mean {close[0]!r}?)" if close else ""),
                    location=where(task),
                    hint=f"its inputs: {', '.join(inputs) or 'none'}",
                )
        missing = [i.name for i in child.inputs if i.required and i.name not in given]
        if missing:
            raise DefinitionError(
                f"task {task.id!r} calls workflow {name!r} without its required input(s) {', '.join(map(repr, missing))}",
                location=where(task),
                hint="add them under input: {" + ", ".join(f"{m}: ..." for m in missing) + "}",
            )
        try:
            path = _cycle_from(child, wf.name, ns, [wf.name, name], wf.max_subworkflow_depth)
        except DefinitionError as exc:
            raise DefinitionError(f"task {task.id!r}: {exc.message}", location=where(task), hint=exc.hint) from None
        if path is not None:
            raise DefinitionError(
                f"task {task.id!r} makes a call cycle: {' -> '.join(path)}",
                location=where(task),
                hint="a workflow may not call itself, directly or through others; use back_to for loops",
            )


def _cycle_from(
    wf: Workflow, root: str, ns: Mapping[str, Any] | None, path: list[str], limit: int
) -> list[str] | None:
    if len(path) - 1 > limit:
        raise DefinitionError(
            f"sub-workflow calls nest {len(path) - 1} deep ({' -> '.join(path)}); the limit is {limit}",
            hint="flatten the calls, or raise max_subworkflow_depth",
        )
    for task in wf.tasks:
        if task.spec.kind != "workflow":
            continue
        name, version = _target(task)
        if name == root:
            return path + [name]
        child = find(name, version, ns)
        if child is None or name in path:
            continue
        found = _cycle_from(child, root, ns, path + [name], limit)
        if found is not None:
            return found
    return None


def call_subworkflow(parent: Run, task_id: str, name: str, version: str | None, inputs: Mapping[str, Any]) -> Any:
    """Run the child workflow to its end (on the calling thread) and return its output."""
    from .api import run_workflow
    from .engine import StepFailed

    stack = list(parent.parent_info.get("call_stack") or []) + [parent.workflow.name]
    limit = parent.workflow.max_subworkflow_depth
    if name in stack:
        raise StepFailed(f"sub-workflow call cycle: {' -> '.join(stack + [name])}")
    if len(stack) > limit:
        raise StepFailed(f"sub-workflow calls nest deeper than the limit of {limit}: {' -> '.join(stack + [name])}")
    child = find(name, version, user_namespace())
    if child is None:
        pinned = f" at version {version}" if version else ""
        raise StepFailed(f"workflow {name!r}{pinned} is not defined in this process nor recorded in the store")
    info = {
        "parent_run_id": parent.run_id,
        "parent_task": task_id,
        "call_stack": stack,
        "depth": len(stack),
    }
    run = run_workflow(child, {**inputs, "raise_on_failure": False}, wait=True, parent_info=info, masker=parent.masker)
    if run.status != "succeeded":
        detail = run.state.error or run.status
        raise StepFailed(f"sub-workflow {name!r} (run {run.run_id}) failed: {detail}")
    return run.output
