"""The public functions behind ``import kernelflow as kf``."""

from __future__ import annotations

import difflib
import secrets
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .engine import drive
from .exceptions import InputError, OptionError
from .plugin_host import call_each, executors, get_plugin_manager
from .run import Run
from .store_access import open_store

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

    from .model import Workflow


def new_run_id() -> str:
    """A short random id like ``r-3f9a1c07be``."""
    return "r-" + secrets.token_hex(5)


def check_executors(wf: Workflow, location_of: Callable[[str], str | None] | None = None) -> None:
    """Fail at definition time if the workflow or a task names an executor nobody registered."""
    known = executors()
    wanted = [(None, wf.executor)] + [(t.id, t.options.executor) for t in wf.tasks if t.options.executor]
    for tid, name in wanted:
        if name not in known:
            names = ", ".join(sorted(known)) or "none"
            where = (location_of(tid) if location_of else None) if tid else None
            owner = f"task {tid!r}" if tid else f"workflow {wf.name!r}"
            raise OptionError(
                f"{owner} asks for executor {name!r}, which is not registered (registered: {names})",
                location=where,
                hint="pick a registered executor, or install the plugin that provides this one",
            )


def check_inputs(wf: Workflow, inputs: Mapping[str, Any]) -> None:
    """Unknown or missing inputs fail before anything is recorded."""
    declared = {i.name: i for i in wf.inputs}
    unknown = [name for name in inputs if name not in declared]
    if unknown:
        name = unknown[0]
        hint = difflib.get_close_matches(name, list(declared), n=1)
        known = ", ".join(declared) or "none (it takes no inputs)"
        raise InputError(
            f"workflow {wf.name!r} has no input {name!r}; its inputs are: {known}"
            + (f". Did you mean {hint[0]!r}?" if hint else "")
        )
    for spec in wf.inputs:
        if spec.required and spec.name not in inputs:
            needing = [t for t in spec.used_by if not _has_default(wf, t, spec.name)] or list(spec.used_by)
            close = difflib.get_close_matches(spec.name, list(wf.task_ids), n=1)
            maybe = f" If {spec.name!r} was meant to be the task {close[0]!r}, rename the parameter." if close else ""
            raise InputError(
                f"workflow {wf.name!r} needs input {spec.name!r} (a parameter of task "
                f"{', '.join(repr(t) for t in needing)}); pass {wf.name}.run({spec.name}=...)." + maybe
            )
    missing_code = [t.id for t in wf.tasks if t.spec.kind == "python" and t.id not in wf.functions]
    missing_code += [ref for t in wf.tasks for ref in t.spec.refs() if ref not in wf.callables]
    if missing_code:
        raise InputError(
            f"workflow {wf.name!r} has no code for task(s) {', '.join(missing_code)} "
            "(it was loaded from a definition whose functions are not in the namespace); "
            "run the cell that defines them, or pass namespace=globals() to Workflow.from_json"
        )


def _has_default(wf: Workflow, task_id: str, param: str) -> bool:
    return any(p.name == param and p.has_default for p in wf[task_id].params)


def run_workflow(
    workflow: Workflow,
    inputs: dict[str, Any],
    *,
    wait: bool,
    parent_info: Mapping[str, Any] | None = None,
    masker: Any = None,
) -> Run:
    """Start a run of ``workflow``; with ``wait`` drive it here and return it finished
    (or suspended at a gate). Options among ``inputs``: ``raise_on_failure``,
    ``run_id``, ``break_before`` (task ids), ``deterministic``."""
    raise_on_failure = inputs.pop("raise_on_failure", True)
    run_id = inputs.pop("run_id", None) or new_run_id()
    options = _run_options(workflow, inputs.pop("break_before", None), inputs.pop("deterministic", False))
    if parent_info is None:
        from .batch_resume import resumed_in_batch

        resumed = resumed_in_batch(workflow, wait=wait, raise_on_failure=raise_on_failure)
        if resumed is not None:
            return resumed
    check_inputs(workflow, inputs)
    for decl in workflow.declared_inputs or ():
        if decl.name in inputs:
            if not decl.accepts(inputs[decl.name]):
                value = inputs[decl.name]
                raise InputError(
                    f"workflow {workflow.name!r}: input {decl.name!r} must be {decl.type}, "
                    f"got {type(value).__name__} {value!r:.80}"
                )
        elif decl.has_default:
            inputs[decl.name] = decl.default
    store = open_store()
    run = prepare_run(
        workflow, run_id, inputs, store, raise_on_failure=raise_on_failure, parent_info=parent_info, masker=masker, options=options
    )
    run._lease = store.lease(run_id)
    if run._lease is None:
        raise InputError(f"run id {run_id!r} is in use by another run being driven now; pick another run_id")
    return start_run(run, wait=wait)


def _run_options(wf: Workflow, break_before: Any, deterministic: Any) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if break_before:
        names = [break_before] if isinstance(break_before, str) else list(break_before)
        for name in names:
            if not isinstance(name, str) or name not in wf:
                close = difflib.get_close_matches(str(name), list(wf.task_ids), n=1)
                raise InputError(
                    f"break_before names {name!r}, which is not a step of workflow {wf.name!r}"
                    + (f" (did you mean {close[0]!r}?)" if close else "")
                    + f"; steps: {', '.join(wf.task_ids)}"
                )
        options["break_before"] = names
    if not isinstance(deterministic, bool):
        raise InputError(f"deterministic must be True or False, got {deterministic!r}")
    if deterministic:
        options["deterministic"] = True
    return options


def prepare_run(
    workflow: Workflow,
    run_id: str,
    inputs: Mapping[str, Any],
    store: Any,
    *,
    raise_on_failure: bool = True,
    parent_info: Mapping[str, Any] | None = None,
    masker: Any = None,
    options: Mapping[str, Any] | None = None,
    into: Run | None = None,
    observed: bool = True,
) -> Run:
    """A :class:`Run` ready to drive (``into``: re-initialise that handle instead
    of making a new one, so ``run.resume()`` updates the object users hold;
    ``observed=False``: no plugin observers, for runs nobody watches live)."""
    _register_once(store, workflow)
    if into is not None:
        Run.__init__(into, workflow, run_id, inputs, store, raise_on_failure=raise_on_failure,
                     parent_info=parent_info, masker=masker, options=options)  # fmt: skip
        run = into
    else:
        run = Run(workflow, run_id, inputs, store, raise_on_failure=raise_on_failure, parent_info=parent_info,
                  masker=masker, options=options)  # fmt: skip
    if observed:
        # Each plugin on its own: one that raises is reported and skipped, the run goes on.
        for plugin, found in call_each("kernelflow_run_observers", run=run):
            run._watch(found, plugin)
    return run


def start_run(run: Run, *, wait: bool) -> Run:
    """Drive ``run`` here (``wait``) or on a background thread; it must hold its lease."""
    if wait:
        _drive(run, reraise=True)
        return run.wait()
    threading.Thread(target=_drive, args=(run,), name=f"kernelflow-run-{run.run_id}", daemon=True).start()
    return run


_registered: weakref.WeakKeyDictionary[Any, set[tuple[str, str]]] = weakref.WeakKeyDictionary()


def _register_once(store: Any, workflow: Workflow) -> None:
    # to_dict() of a large workflow costs more than the run of a small one;
    # each store records a version once, so ask it once per process.
    seen = _registered.setdefault(store, set())
    key = (workflow.name, workflow.version)
    if key not in seen:
        store.register_workflow(workflow.to_dict())
        seen.add(key)


def _drive(run: Run, reraise: bool = False) -> None:
    try:
        drive(run)
    except BaseException as exc:
        run.engine_error = exc
        _let_go(run)
        run._finish()
        if reraise:
            raise
        return
    _let_go(run)
    run._finish()


def _let_go(run: Run) -> None:
    lease, run._lease = run._lease, None
    if lease is not None:
        lease.release()
    if run.status == "waiting":
        from .watcher import watch_if_interactive

        watch_if_interactive(run)


def sql(query: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> pl.DataFrame:
    """Query the store with SQL; returns a polars DataFrame.

    Views: ``events``, ``runs``, ``task_attempts``, ``workflows``, ``approvals``,
    ``dead_letters``; table macros ``state_at(run_id, seq_or_ts)`` and
    ``runs_active_at(ts)`` (see docs/sql.md).
    """
    return open_store().sql(query, params)


def workflows() -> pl.DataFrame:
    """Every workflow version the store has seen run, newest first."""
    return open_store().sql("SELECT name, version, registered_at, tasks, runs, last_run_at FROM workflows ORDER BY registered_at DESC")


def history(limit: int = 20) -> pl.DataFrame:
    """The most recent runs, newest first."""
    return open_store().sql(
        "SELECT run_id, workflow, workflow_version, status, started_at, duration_s, tasks_total, "
        "tasks_succeeded, tasks_failed, tasks_skipped FROM runs ORDER BY started_at DESC LIMIT ?",
        [limit],
    )


def diff(run_a: Any, run_b: Any) -> pl.DataFrame:
    """Per-task differences between two runs (``Run`` objects or run ids):
    status, duration and output side by side (see docs/time-travel.md)."""
    from .diffs import diff_runs

    # Run objects know their store (as run.at does); ids are looked up in the default one.
    return diff_runs(getattr(run_a, "store", None) or open_store(), run_a, run_b)


def plugin_names() -> list[str]:
    """Names of the registered plugins."""
    pm = get_plugin_manager()
    return sorted(name for name, _ in pm.list_name_plugin())


__all__ = ["check_executors", "check_inputs", "diff", "history", "new_run_id", "plugin_names", "run_workflow", "sql", "workflows"]
