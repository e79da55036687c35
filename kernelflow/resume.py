"""Continuing a run from its history: resume after a crash or a gate, and fork.

Resume folds the run's events (the one reducer), keeps every task that
succeeded — its output is loaded, the task does not run again — and sends
every task that was interrupted, failed or never reached back to pending
with a ``TaskReset`` (at-least-once: a task that was running when its
process died runs again, with the same idempotency key). Gates keep waiting,
answered gates go on, sleeping steps sleep what is left.

Fork starts a *new* run that copies the outputs of everything upstream of a
step from an earlier run and runs the rest.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from . import events as ev
from .exceptions import InputError, KernelflowError
from .reducer import RunState, fold

if TYPE_CHECKING:  # pragma: no cover
    from .model import Workflow
    from .run import Run


class ResumeError(KernelflowError):
    """A run cannot be resumed (unknown, finished, driven elsewhere, code missing)."""


class RunBusyError(ResumeError):
    """The run's lease is held: another driver (or an approval being recorded) has it."""


@dataclass
class ResumePlan:
    """What :func:`restore` needs: the history, and what the caller asked."""

    events: list[ev.Event]
    state: RunState
    replace: Mapping[str, Any] = field(default_factory=dict)
    release_breakpoints: bool = True


def load_history(store: Any, run_id: str) -> tuple[list[ev.Event], RunState]:
    """The run's events and their fold, or a clear error for an unknown run."""
    if not isinstance(run_id, str) or not run_id:
        raise ResumeError(f"a run id is text like 'r-3f9a1c07be', got {run_id!r}")
    events = store.read_run(run_id)
    if not events:
        raise ResumeError(f"no run {run_id!r} in the store at {store.location}; kf.history() lists the runs it has")
    return events, fold(events, run_id)


def started_payload(events: list[ev.Event]) -> Mapping[str, Any]:
    return next((e.payload for e in reversed(events) if e.type == ev.RUN_STARTED), {})


def find_workflow(state: RunState, started: Mapping[str, Any], workflow: Workflow | None) -> Workflow:
    """The code to continue with: given, defined in this process, loaded from
    the run's source file, or rebuilt from the store when it needs no Python."""
    from . import catalog
    from .model import Workflow

    if workflow is not None:
        if not isinstance(workflow, Workflow):
            raise ResumeError(f"workflow= must be a Workflow, got {type(workflow).__name__}")
        if workflow.name != state.workflow:
            raise ResumeError(
                f"run {state.run_id} is a run of workflow {state.workflow!r}, not {workflow.name!r}"
            )
        return workflow
    ns = catalog.user_namespace()
    found = catalog.find(state.workflow, namespace=ns)
    if found is None and started.get("source"):
        from .yaml_compiler import load

        try:
            found = load(started["source"], namespace=ns)
        except Exception as exc:  # noqa: BLE001 - say what was tried
            raise ResumeError(
                f"run {state.run_id}: could not load its workflow from {started['source']}: {exc}"
            ) from None
    if found is None:
        found = catalog.find(state.workflow, state.workflow_version, namespace=ns)
    if found is None:
        raise ResumeError(
            f"the code of workflow {state.workflow!r} (run {state.run_id}) is not loaded in this process; "
            "run the cell that defines it (or kf.load its file), then resume again"
            + (f"; or `kernelflow resume {state.run_id}` re-runs its notebook {started['notebook']} in resume mode"
               if started.get("notebook") else "")
        )
    return found


def stored_inputs(store: Any, started: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    inputs = dict(started.get("inputs") or {})
    for name, ref in (started.get("input_refs") or {}).items():
        try:
            inputs[name] = store.load_artifact(ref)
        except Exception as exc:  # noqa: BLE001
            raise ResumeError(f"run {run_id}: input {name!r} cannot be loaded from the store: {exc}") from None
    return inputs


def resume(
    run_id: str,
    *,
    workflow: Workflow | None = None,
    replace: Mapping[str, Any] | None = None,
    wait: bool = True,
    raise_on_failure: bool = True,
    release_breakpoints: bool = True,
    into: Run | None = None,
    only_if: str | None = None,
) -> Run:
    """Continue run ``run_id`` where it stopped; returns its :class:`Run`.

    Succeeded tasks keep their outputs and do not run again; interrupted,
    failed and unreached tasks run (again). ``replace``: new values for the
    inputs of the task paused at a breakpoint (``{"param": value}``).
    ``workflow``: the code to continue with (default: the definition of the
    same name in this process, which may be a fixed, newer version).
    ``only_if``: resume only a run in this status (else :class:`ResumeError`).
    """
    from .api import prepare_run, start_run
    from .store_access import open_store

    store = open_store()
    load_history(store, run_id)  # unknown run: refuse before taking anything
    lease = store.lease(run_id)
    if lease is None:
        holder = store.lease_holder(run_id) or {}
        raise RunBusyError(
            f"run {run_id} is being driven right now"
            + (f" by pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}" if holder.get("pid") else "")
            + "; wait for it to finish or stop that process, then resume"
        )
    try:
        events, state = load_history(store, run_id)  # again: it may have moved before we held it
        if only_if is not None and state.status != only_if:
            raise ResumeError(f"run {run_id} is {state.status}, not {only_if}; left as it is")
        if state.status == "succeeded":
            raise ResumeError(
                f"run {run_id} already succeeded; there is nothing to resume. "
                f"To run steps again use run.fork('step') (kf.fork({run_id!r}, 'step'))"
            )
        if state.status == "pending":
            raise ResumeError(f"run {run_id} has no RunStarted event; it cannot be resumed")
        started = started_payload(events)
        wf = find_workflow(state, started, workflow)
        replace = dict(replace or {})
        if replace:
            paused = [t for t, g in state.waiting.items() if g.get("kind") == "breakpoint"]
            if not paused:
                raise ResumeError(f"replace= is for a run paused at a breakpoint; run {run_id} is {state.status}")
            target = paused[0]
            if target in wf and wf[target].spec.kind == "python":
                names = {p.name for p in wf[target].params}
                bad = [k for k in replace if k not in names]
                if bad:
                    raise InputError(
                        f"task {target!r} has no parameter {bad[0]!r}; its parameters: {', '.join(sorted(names)) or 'none'}"
                    )
        inputs = stored_inputs(store, started, run_id)
        options = {k: started[k] for k in ("break_before", "deterministic") if started.get(k)}
        run = prepare_run(
            wf, run_id, inputs, store, raise_on_failure=raise_on_failure, options=options, into=into,
            parent_info={k: started[k] for k in ("parent_run_id", "parent_task", "call_stack", "depth") if k in started},
        )  # fmt: skip
        from .durable import Recorded

        run.state = state
        run._seq = state.last_seq + 1
        run._recorded = Recorded.from_events(events)
        run._resume = ResumePlan(events, state, replace, release_breakpoints)
        run._lease = lease
        from .watcher import forget

        forget(run_id)  # continued here: a notebook watching it must not continue it again
    except BaseException:
        lease.release()
        raise
    return start_run(run, wait=wait)


# --- inside the driver -------------------------------------------------------------------


def restore(driver: Any, plan: ResumePlan) -> None:
    """Bring a new driver to where the run stopped, recording ``RunResumed``."""
    run = driver.run
    wf = driver.wf
    state = plan.state
    tasks = state.tasks
    old_version = state.workflow_version
    from_status = state.status
    keep: set[str] = set()
    reset: list[str] = []
    reset_set: set[str] = set()
    order_done: list[tuple[int, str]] = []
    succeeded_at = {e.task_id: e.seq for e in plan.events if e.type == ev.TASK_SUCCEEDED}
    continued = {e.task_id for e in plan.events if e.type == ev.TASK_FAILED and (e.payload or {}).get("continued")}
    for tid in wf.order:
        t = tasks.get(tid)
        ups = wf[tid].upstream
        if t is None or t.status == "pending":
            continue
        if t.status == "succeeded":
            keep.add(tid)
            order_done.append((succeeded_at.get(tid, 0), tid))
            continue
        upstream_redone = any(u in reset_set for u in ups)
        if t.status == "skipped" and not upstream_redone and not _skipped_by_failure(t):
            keep.add(tid)
            continue
        if t.status in ("waiting", "sleeping") and not upstream_redone:
            keep.add(tid)
            continue
        if t.status == "scheduled" and t.answer is not None and not upstream_redone:
            keep.add(tid)
            continue
        # A failure the run went on past (continue_on_failure) is an outcome, like a success:
        # a run continuing after a gate or a crash keeps it. Resuming a *failed* run retries it.
        if t.status == "failed" and from_status != "failed" and tid in continued and not upstream_redone:
            keep.add(tid)
            continue
        reset.append(tid)
        reset_set.add(tid)
    driver.emit(
        ev.RUN_RESUMED,
        payload={
            "from_status": from_status,
            "from_version": old_version,
            "version": wf.version,
            "interrupted": from_status == "running" or bool(state.error and "interrupted" in state.error),
            "reset": reset,
            "tasks": list(wf.order),
        },
    )
    for tid in reset:
        t = tasks[tid]
        run._iteration_base[tid] = t.attempt  # a fresh budget of retries
        driver.emit(ev.TASK_RESET, tid, t.attempt or None, {"iteration": t.iteration, "resume": True, "was": t.status})
    driver.completed = [tid for _, tid in sorted(order_done)]
    for tid in wf.order:
        t = tasks.get(tid)
        if tid in keep and t is not None and t.status == "succeeded":
            # Load only what a task still to run will read (and the final outputs).
            if not driver.down[tid] or any(tasks.get(d) is None or tasks[d].status != "succeeded" or d in reset_set
                                           for d in driver.down[tid]):  # fmt: skip
                driver.values[tid] = _output_of(run, t)
        elif tid in keep and t is not None and t.status == "skipped":
            driver.values[tid] = None
        elif tid in keep and t is not None and t.status == "failed":
            from .exceptions import TaskFailure

            err = t.error or {}
            run.continued[tid] = TaskFailure(tid, t.attempt, err.get("exc_type", ""), err.get("message", ""), err.get("traceback", ""))
            driver.values[tid] = None
    # Dependents count only what is not final yet.
    for tid in wf.order:
        driver.waiting[tid] = len({u for u in wf[tid].upstream if not tasks[u].done}) if tid in tasks else 0
    for tid in wf.order:
        t = tasks.get(tid)
        if t is None or tid not in keep:
            continue
        if t.status == "waiting":
            gate = t.gate or {}
            if gate.get("kind") == "breakpoint" and plan.release_breakpoints:
                release_breakpoint(driver, tid, plan.replace)
            else:
                driver.gates[tid] = {"kind": gate.get("kind", "approval"), "seq": gate.get("seq"), "expires_at": gate.get("expires_at")}
        elif t.status == "sleeping" and t.wake_at is not None:
            driver.sleep_until(tid, t.attempt, t.wake_at)
        elif t.status == "scheduled":
            driver.ready.append(tid)
    if driver.gates:
        driver.poll_gates()


def _skipped_by_failure(t: Any) -> bool:
    reason = t.reason or ""
    return reason.startswith("upstream task") or "the run failed" in reason


def _output_of(run: Run, t: Any) -> Any:
    if t.output_ref:
        return run.store.load_artifact(t.output_ref)
    return t.output


def release_breakpoint(driver: Any, tid: str, replace: Mapping[str, Any]) -> None:
    from .engine import _output_payload

    run = driver.run
    stored = {}
    for name, value in replace.items():
        payload = _output_payload(run, f"{tid}.replaced.{name}", driver.tasks_state[tid].attempt + 1, value)
        stored[name] = {k: payload[k] for k in ("output", "output_ref") if payload.get(k) is not None} or {"output": None}
    driver.emit(ev.BREAKPOINT_RELEASED, tid, driver.tasks_state[tid].attempt + 1, {"replaced": stored})
    driver.ready.append(tid)


def replaced_values(run: Run, replaced: Mapping[str, Any]) -> dict[str, Any]:
    """The breakpoint replacements recorded in ``BreakpointReleased``, loaded."""
    out = {}
    for name, stored in replaced.items():
        out[name] = run.store.load_artifact(stored["output_ref"]) if stored.get("output_ref") else stored.get("output")
    return out


# --- fork ----------------------------------------------------------------------------------


@dataclass
class Preset:
    """Outputs a fork copies from its parent run: task -> TaskSucceeded payload."""

    parent_run_id: str
    from_step: str
    outputs: dict[str, Mapping[str, Any]]


def fork(run_id: str, from_step: str, *, workflow: Workflow | None = None, wait: bool = True,
         raise_on_failure: bool = True, **new_inputs: Any) -> Run:  # fmt: skip
    """A new run of ``run_id``'s workflow that reuses the outputs of every task
    upstream of ``from_step`` and runs ``from_step`` and everything after it.
    ``new_inputs`` replace the parent run's inputs."""
    from .api import prepare_run, start_run
    from .store_access import open_store

    store = open_store()
    events, state = load_history(store, run_id)
    started = started_payload(events)
    wf = find_workflow(state, started, workflow)
    if from_step not in wf:
        close = difflib.get_close_matches(str(from_step), list(wf.task_ids), n=1)
        raise ResumeError(
            f"workflow {wf.name!r} has no step {from_step!r}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + f"; steps: {', '.join(wf.task_ids)}"
        )
    ancestors: set[str] = set()
    todo = list(wf[from_step].upstream)
    while todo:
        t = todo.pop()
        if t not in ancestors:
            ancestors.add(t)
            todo.extend(wf[t].upstream)
    outputs = {}
    for tid in wf.order:
        if tid not in ancestors:
            continue
        t = state.tasks.get(tid)
        if t is None or t.status != "succeeded":
            raise ResumeError(
                f"cannot fork run {run_id} from {from_step!r}: upstream step {tid!r} did not succeed there "
                f"({t.status if t else 'never ran'}); fork from {tid!r} instead"
            )
        outputs[tid] = {"output": t.output, "output_ref": t.output_ref, "output_type": t.output_type, "stored": t.output_stored}
    declared = {i.name for i in wf.inputs}
    unknown = [k for k in new_inputs if k not in declared]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(declared), n=1)
        raise InputError(
            f"workflow {wf.name!r} has no input {unknown[0]!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            + f"; its inputs: {', '.join(sorted(declared)) or 'none'}"
        )
    inputs = stored_inputs(store, started, run_id)
    changed = {k for k, v in new_inputs.items() if k not in inputs or inputs[k] != v}
    readers = {
        tid: sorted(changed & ({p.name for p in wf[tid].inputs} | set(wf[tid].spec.input_refs)))
        for tid in ancestors
    }
    stale = {t: names for t, names in readers.items() if names}
    if stale:
        tid, names = next(iter(sorted(stale.items())))
        raise InputError(
            f"input {names[0]!r} is read by step {tid!r}, upstream of {from_step!r}, whose output the fork would reuse; "
            f"fork from {tid!r} instead, or keep {names[0]!r} unchanged"
        )
    inputs.update(new_inputs)
    from .api import new_run_id

    run = prepare_run(wf, new_run_id(), inputs, store, raise_on_failure=raise_on_failure, options={
        k: started[k] for k in ("deterministic",) if started.get(k)})  # fmt: skip
    run.parent_info = {"forked_from": run_id, "from_step": from_step}
    run._preset = Preset(run_id, from_step, outputs)
    return start_run(run, wait=wait)


def apply_preset(driver: Any, preset: Preset) -> None:
    """Record the fork's reused outputs as the new run's own (with their origin)."""
    run = driver.run
    for tid in driver.wf.order:
        stored = preset.outputs.get(tid)
        if stored is None:
            continue
        driver.emit(ev.TASK_SUCCEEDED, tid, 0, {**stored, "reused_from": preset.parent_run_id})
        t = driver.tasks_state[tid]
        driver.values[tid] = _output_of(run, t)
        driver.completed.append(tid)
    for tid in driver.wf.order:
        driver.waiting[tid] = len({u for u in driver.wf[tid].upstream if not driver.tasks_state[u].done})
