"""The engine: drives one run from its first event to its last.

Ready-set scheduling: a task is considered the moment its last upstream task
is done and starts as soon as fewer than ``max_parallel`` calls are running.
Every state change goes through ``Run._emit`` (store first, then the
reducer), so the engine's view of the run is exactly the fold of what it
recorded.

Skip rules (docs/control-flow.md):

1. a task whose upstream task failed for good (without
   ``continue_on_failure``) is skipped, and so is everything downstream;
2. a task whose ``when`` condition is false is skipped;
3. a task all of whose upstream tasks were skipped is skipped (unless it is
   a ``skip_to`` target); with some upstream skipped and others done, it runs
   and a skipped task's output reads as ``None``.

Steps that are more than one call (forEach items, fallbacks) are calls the
engine tracks under the task; loops reset a stretch of the graph with
``TaskReset`` events so the fold sees every iteration.
"""

from __future__ import annotations

import heapq
import inspect
import os
import queue
import random
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Mapping

import orjson

from . import events as ev
from .durations import format_duration
from .exceptions import KernelflowError, TaskFailure
from .executor_api import Executor, TaskCall, TaskOutcome
from .plugin_host import executor_spec
from .durable import TaskContext, bind
from .run import Run
from .run_origin import origin_fields

GATE_POLL_S = 0.2  # how often a driving process looks for answers given elsewhere
INLINE_OUTPUT_LIMIT = 2048  # bytes of JSON; larger or richer outputs become artifacts
_NONE_OUTPUT = {"output": None, "output_ref": None, "output_type": "NoneType", "stored": True}
_INLINE_TYPES = (bool, int, float, str, list, dict)


class StepFailed(KernelflowError):
    """A step could not run as defined (a bad template value, no matching case, a loop limit)."""


class Jump:
    """What a task returns to loop: ``return kf.back_to("fetch")`` / ``kf.skip_to("publish")``.

    ``output`` is recorded as the task's output.
    """

    __slots__ = ("kind", "step", "output")

    def __init__(self, kind: str, step: str, output: Any = None) -> None:
        self.kind = kind
        self.step = step
        self.output = output

    def __repr__(self) -> str:
        return f"<{self.kind} {self.step!r}>"


def back_to(step: str, output: Any = None) -> Jump:
    """Return this from a task to run ``step`` (a task it depends on, or itself) and
    everything after it again; ``output`` is this iteration's output."""
    return Jump("back_to", step, output)


def skip_to(step: str, output: Any = None) -> Jump:
    """Return this from a task to skip the tasks between it and ``step`` (downstream)."""
    return Jump("skip_to", step, output)


class _Tasks(Mapping[str, Any]):
    """``{{tasks.ID...}}`` in templates: outputs and statuses of this run so far."""

    __slots__ = ("values", "state")

    def __init__(self, values: dict[str, Any], state: Any) -> None:
        self.values = values
        self.state = state

    def __getitem__(self, tid: str) -> dict[str, Any]:
        task = self.state.tasks.get(tid)
        if task is None:
            raise KeyError(tid)
        return {"output": self.values.get(tid), "status": task.status}

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.state.tasks)

    def __len__(self) -> int:
        return len(self.state.tasks)


class _Frame:
    """One forEach loop instance: its items, results and how many run now."""

    __slots__ = ("tid", "level", "loop", "items", "scope", "results", "errors", "status", "next", "active",
                 "remaining", "parent", "parent_index", "path", "item_attempts")  # fmt: skip

    def __init__(self, tid: str, level: int, loop: Mapping[str, Any], items: list[Any], scope: dict[str, Any],
                 parent: _Frame | None, parent_index: int | None, path: tuple[int, ...]) -> None:  # fmt: skip
        self.tid = tid
        self.level = level
        self.loop = loop
        self.items = items
        self.scope = scope  # the forEach context of the loop around this one ({} at the top)
        self.results: list[Any] = [None] * len(items)
        self.errors: list[dict[str, Any]] = []
        self.status: list[str] = ["pending"] * len(items)
        self.next = 0
        self.active = 0
        self.remaining = len(items)
        self.parent = parent
        self.parent_index = parent_index
        self.path = path
        self.item_attempts: dict[int, int] = {}

    def can_start(self) -> bool:
        limit = self.loop.get("max_parallel")
        return self.next < len(self.items) and (limit is None or self.active < limit)

    def item_scope(self, index: int) -> dict[str, Any]:
        scope = {"item": self.items[index], "index": index}
        if self.scope:
            scope["$parent"] = self.scope
            scope["$root"] = self.scope.get("$root", self.scope)
        return scope

    def summary(self) -> dict[str, Any]:
        succeeded = self.status.count("succeeded")
        return {
            "outputs": self.results,
            "count": len(self.items),
            "succeeded": succeeded,
            "failed": len(self.items) - succeeded,
            "errors": self.errors,
        }


def drive(run: Run) -> None:
    """Run ``run`` to its end on the calling thread. Never raises for task
    failures (they are recorded); raises for what stops the engine itself
    (an interrupt, a store that cannot be written), after recording what it can."""
    _Driver(run).drive()


INTERRUPT_POLL_S = 0.5
"""Longest the driving thread waits for a completion before looking again (Ctrl-C)."""


class _Driver:
    def __init__(self, run: Run) -> None:
        self.run = run
        wf = self.wf = run.workflow
        self.emit = run._emit
        self.index = wf._index
        self.down = wf.downstream()
        self.max_parallel = wf.max_parallel
        self.inputs = run.inputs
        self.values = run._values
        self.tasks_state = run.state.tasks
        self.masker = run.masker
        self.executors: dict[str, Executor] = {}
        self.completions: queue.SimpleQueue[TaskOutcome] = queue.SimpleQueue()
        self.report = self.completions.put
        # call key -> (attempt, handle, meta); key: task id, or (task id, "item", path, item attempt),
        # or (task id, "fallback"). Item tries share the task's attempt, so the item attempt in the
        # key is what keeps a late report or a stale deadline of an abandoned try off its retry.
        self.running: dict[Any, tuple[int, Any, dict[str, Any]]] = {}
        self.calls: dict[int, Any] = {}
        self.ready: deque[str] = deque()
        self.retry_heap: list[tuple[float, int, Any, int]] = []
        self.deadline_heap: list[tuple[float, int, Any, int]] = []
        self.counter = 0  # heap tie-breaker (keys of different types do not compare)
        self.failed: list[str] = []
        self.completed: list[str] = []  # succeeded tasks, in completion order (for compensation)
        self.frames: list[_Frame] = []  # forEach loops with items left to start
        self.loops: dict[str, int] = {}  # forEach tasks in progress -> attempt (their items hold the slots)
        self.jumps: dict[tuple[str, str], int] = {}
        self.forced: set[str] = set()  # skip_to targets: rule 3 does not apply
        self.waiting = {tid: len(set(self.index[tid].upstream)) for tid in wf.order}
        options = run.options
        self.deterministic = bool(options.get("deterministic"))
        if self.deterministic:
            # One task at a time in the workflow's fixed order, seeded jitter: reproducible runs.
            self.max_parallel = 1
        self.rng = random.Random(run.run_id) if self.deterministic else random.Random()
        self.break_before = frozenset(options.get("break_before") or ())
        # Durable waits: tasks at an approval gate or breakpoint -> their gate; sleeping tasks.
        self.gates: dict[str, dict[str, Any]] = {}
        self.sleepers: list[tuple[float, int, str, int]] = []
        self.next_poll = 0.0
        self.suspended = False
        self.plan: dict[str, tuple[Any, tuple[str, ...], tuple[str, ...], str, float | None]] = {}
        for tid in wf.order:
            task = self.index[tid]
            self.plan[tid] = (
                wf.functions.get(tid),
                task.deps,
                tuple(p.name for p in task.inputs if p.name in self.inputs),
                task.options.executor or wf.executor,
                task.options.timeout,
            )
        self._ancestors: dict[str, set[str]] | None = None

    # --- the loop -------------------------------------------------------------------

    def drive(self) -> None:
        with self.run._grouped():
            self._drive()

    def _drive(self) -> None:
        run, wf = self.run, self.wf
        if run._resume is not None:
            from .resume import restore

            restore(self, run._resume)
        else:
            inputs, input_refs = _stored_inputs(run, self.masker.value(self.inputs))
            self.emit(
                ev.RUN_STARTED,
                payload={
                    "inputs": inputs,
                    **({"input_refs": input_refs} if input_refs else {}),
                    "tasks": list(wf.order),
                    "max_parallel": self.max_parallel,
                    "executor": wf.executor,
                    **origin_fields(),
                    **({"source": wf.origin} if wf.origin not in ("cell", "") and os.path.isfile(wf.origin) else {}),
                    **{k: v for k, v in run.options.items() if v},
                    **run.parent_info,
                },
            )
            if run._preset:
                from .resume import apply_preset

                apply_preset(self, run._preset)
        try:
            for tid in wf.order:
                if self.waiting[tid] == 0 and self.tasks_state[tid].status == "pending":
                    self.consider(tid)
            self.loop()
        except BaseException as exc:
            self.cancel_all()
            try:
                self.emit(
                    ev.RUN_FAILED,
                    payload={
                        "failed_tasks": self.failed,
                        "error": self.masker.text(f"interrupted: {type(exc).__name__}: {exc}"),
                        "interrupted": True,
                    },
                )
            except Exception:  # noqa: BLE001 - the store itself may be what failed
                pass
            raise
        finally:
            for name, executor in self.executors.items():
                try:
                    executor.shutdown(wait=False)
                except Exception as exc:  # noqa: BLE001 - the run's outcome is already decided
                    from .plugin_host import executor_owner, plugin_failed

                    plugin_failed(executor_owner(name) or name, f"executor {name!r} shutdown", exc, "the run goes on")

        if self.suspended:
            return
        if self.failed:
            for tid in list(self.gates):
                # The run has failed: nobody needs to answer its gates any more.
                self.gates.pop(tid)
                self.emit(ev.TASK_SKIPPED, tid, None, {"reason": f"the run failed while {tid!r} was waiting", "cause": "run_failed"})
            self.compensate()
            first = run.failures[self.failed[0]]
            self.emit(
                ev.RUN_FAILED,
                payload={
                    "failed_tasks": self.failed,
                    "error": f"task {first.task_id!r} failed: {first.exc_type}: {first.message}",
                },
            )
        else:
            self.emit(ev.RUN_SUCCEEDED)

    def loop(self) -> None:
        completions = self.completions
        while True:
            self.fill()
            self.run._notify()
            if not self.running and not self.retry_heap and not self.sleepers:
                if self.ready or any(f.can_start() for f in self.frames):
                    continue  # capacity freed by work that finished synchronously
                if self.gates and not self.failed:
                    # Only gates are left: a last look for answers, then suspend.
                    if self.poll_gates():
                        continue
                    self.suspend()
                break
            wake = min(
                self.deadline_heap[0][0] if self.deadline_heap else float("inf"),
                self.retry_heap[0][0] if self.retry_heap else float("inf"),
                self.sleepers[0][0] if self.sleepers else float("inf"),
                self.next_poll if self.gates else float("inf"),
            )
            try:
                # Never an untimed wait: once polars is imported, a blocking
                # SimpleQueue.get() is not woken by SIGINT, and Ctrl-C (the
                # notebook's stop button) would wait for the next completion.
                outcome: TaskOutcome | None = completions.get(
                    timeout=min(INTERRUPT_POLL_S, max(0.0, wake - time.monotonic()))
                )
            except queue.Empty:
                outcome = None
            while outcome is not None:
                self.finished(outcome)
                try:
                    outcome = completions.get_nowait()
                except queue.Empty:
                    outcome = None
            now = time.monotonic()
            while self.deadline_heap and self.deadline_heap[0][0] <= now:
                _, _, key, attempt = heapq.heappop(self.deadline_heap)
                current = self.running.get(key)
                if current is not None and current[0] == attempt:
                    self.timed_out(key, attempt)
            while self.sleepers and self.sleepers[0][0] <= now:
                _, _, tid, attempt = heapq.heappop(self.sleepers)
                if self.tasks_state[tid].status == "sleeping":
                    self.task_succeeded(tid, attempt, None)
            if self.gates and now >= self.next_poll:
                self.poll_gates()
            while self.retry_heap and self.retry_heap[0][0] <= now:
                _, _, key, attempt = heapq.heappop(self.retry_heap)
                if isinstance(key, str):
                    if self.tasks_state[key].status == "retrying":
                        self.schedule(key, attempt)
                else:
                    frame, index = key
                    frame.active -= 1  # the slot held while waiting goes back to the item
                    self.start_item(frame, index, attempt)

    def fill(self) -> None:
        while len(self.running) < self.max_parallel:
            if self.ready:
                self.launch(self.ready.popleft())
                continue
            frame = next((f for f in self.frames if f.can_start()), None)
            if frame is None:
                return
            index = frame.next
            frame.next += 1
            if frame.next >= len(frame.items):  # every item handed out
                self.frames.remove(frame)
            self.start_item(frame, index, 1)

    # --- deciding whether a task runs ---------------------------------------------------

    def consider(self, tid: str) -> None:
        """All upstream tasks are done: skip it by the rules, or schedule it."""
        state = self.tasks_state[tid]
        if state.status != "pending":
            return
        task = self.index[tid]
        ups = task.upstream
        if ups and tid not in self.forced and all(self.tasks_state[u].status == "skipped" for u in ups):
            self.skip(tid, "all upstream tasks were skipped", {"upstream": list(ups)})
            return
        when = task.spec.when
        if when is not None:
            from .expressions import parse_condition

            try:
                result = parse_condition(when).evaluate(self.context())
            except Exception as exc:  # noqa: BLE001 - a bad value is this task's failure
                self.emit(ev.TASK_SCHEDULED, tid, state.attempt + 1)
                self.emit(ev.TASK_STARTED, tid, state.attempt + 1, {"executor": "engine"})
                self.fail_for_good(tid, state.attempt, self.error_of(exc, f"condition {when!r}: "), "error", exc)
                return
            self.emit(ev.CONDITION_EVALUATED, tid, None, {"when": when, "result": result})
            if not result:
                self.skip(tid, f"condition is false: {when}", {"when": when})
                return
        self.schedule(tid, state.attempt + 1)

    def schedule(self, tid: str, attempt: int) -> None:
        self.emit(ev.TASK_SCHEDULED, tid, attempt)
        self.ready.append(tid)

    def skip(self, tid: str, reason: str, extra: Mapping[str, Any] | None = None) -> None:
        self.emit(ev.TASK_SKIPPED, tid, None, {"reason": self.masker.text(reason), **(extra or {})})
        self.values[tid] = None
        self.done(tid)

    # --- durable waits ---------------------------------------------------------------------

    def request_approval(self, tid: str) -> None:
        """Pause ``tid`` at its gate: record what is asked; the run goes on elsewhere."""
        from .gates import make_preview, render_message

        task = self.index[tid]
        gate = task.spec.approval or {}
        state = self.tasks_state[tid]
        ctx = self.context()
        try:
            kwargs = self.kwargs_for(tid, self.plan[tid][0], None) if task.spec.kind == "python" else {}
            message = self.masker.text(render_message(gate, kwargs, ctx))
            preview = make_preview(gate, kwargs, ctx, self.masker.value)
        except Exception as exc:  # noqa: BLE001 - a template that cannot render is this task's failure
            attempt = state.attempt + 1  # TaskStarted moves state.attempt on: the failure is this same attempt
            self.emit(ev.TASK_STARTED, tid, attempt, {"executor": "gate"})
            self.fail_for_good(tid, attempt, self.error_of(exc, "approval message: "), "error", exc)
            return
        timeout = gate.get("timeout")
        requested_at = ev.now_us()
        expires_at = requested_at + int(timeout * 1_000_000) if timeout else None
        event = self.emit(
            ev.APPROVAL_REQUESTED,
            tid,
            state.attempt + 1,
            {
                "message": message,
                "preview": preview,
                "input_schema": {k: v for k, v in (gate.get("input") or {}).items() if k != "json_schema"} or None,
                "timeout_s": timeout,
                "expires_at": expires_at,
                "on_timeout": gate.get("on_timeout", "reject"),
                "on_reject": gate.get("on_reject", "fail"),
                "iteration": state.iteration,
            },
            ts=requested_at,
        )
        self.gates[tid] = {"kind": "approval", "seq": event.seq, "expires_at": expires_at}
        self.next_poll = 0.0

    def hit_breakpoint(self, tid: str) -> None:
        from .gates import preview_of

        state = self.tasks_state[tid]
        try:
            kwargs = self.kwargs_for(tid, self.plan[tid][0], None) if self.index[tid].spec.kind == "python" else {}
        except Exception:  # noqa: BLE001 - inputs that cannot be computed show as none
            kwargs = {}
        inputs = {k: self.masker.value(preview_of(v)) for k, v in kwargs.items()}
        self.emit(ev.BREAKPOINT_HIT, tid, state.attempt + 1, {"inputs": inputs, "iteration": state.iteration})
        self.gates[tid] = {"kind": "breakpoint", "seq": None, "expires_at": None}

    def apply_answer(self, tid: str, attempt: int, answer: Mapping[str, Any]) -> dict[str, Any] | None:
        """What the gate's answer means for the task. Returns the extra
        arguments for the task's function, or None when decided here."""
        from .gates import Approval, _model

        spec = self.index[tid].spec
        gate = spec.approval or {}
        kind = answer["type"]
        outcome = answer.get("outcome") if kind == ev.APPROVAL_EXPIRED else None
        by = answer.get("by") or {}
        who = by.get("name") or by.get("user") or "someone"
        if kind == ev.APPROVAL_GRANTED or outcome == "approve":
            data = dict(answer.get("input") or {})
            if outcome == "approve":  # nobody filled the form: the declared defaults
                fields = (gate.get("input") or {}).get("fields") or {}
                data = {name: f["default"] for name, f in fields.items() if "default" in f}
            model = _model((gate.get("input") or {}).get("model"))
            value: Any = data
            if model is not None:
                try:
                    value = model.model_validate(data)
                except Exception:  # noqa: BLE001 - validated when given; a changed model gets the dict
                    value = data
            approval = Approval(True, by, value, answer.get("comment"), expired=outcome == "approve", answered_at=answer.get("answered_at"))
            if spec.kind == "approval":
                self.emit(ev.TASK_STARTED, tid, attempt, {"executor": "gate"})
                self.task_succeeded(tid, attempt, {"approved": True, "by": by, "input": data, "comment": answer.get("comment"), "expired": outcome == "approve"})
                return None
            return {**data, "approval": approval}
        # An expiry's outcome is the gate's on_timeout: reject (then on_reject
        # decides, as for a rejection), skip or fail.
        on_reject = gate.get("on_reject", "fail")
        if kind == ev.APPROVAL_REJECTED:
            policy = on_reject
            why = f"rejected by {who}" + (f": {answer.get('reason')}" if answer.get("reason") else "")
        else:
            policy = on_reject if outcome == "reject" else outcome
            why = f"approval expired (on_timeout: {outcome})"
        if policy == "skip":
            self.skip(tid, why, {"cause": "approval"})
            return None
        self.emit(ev.TASK_STARTED, tid, attempt, {"executor": "gate"})
        exc = ApprovalRejected(why)
        self.fail_for_good(tid, attempt, self.error_of(exc), "error", exc)
        return None

    def poll_gates(self) -> bool:
        """Turn answers claimed by any process (and expiries) into events.
        Returns True if a gate was answered."""
        from .approvals import answer_event_from_claim, claim_expiry

        self.next_poll = time.monotonic() + GATE_POLL_S
        store = self.run.store
        answered = False
        now = ev.now_us()
        for tid, gate in list(self.gates.items()):
            if gate["kind"] != "approval":
                continue
            claim = store.answers.read(self.run.run_id, tid, gate["seq"])
            if claim is None and gate["expires_at"] is not None and gate["expires_at"] <= now:
                outcome = (self.index[tid].spec.approval or {}).get("on_timeout", "reject")
                claim = claim_expiry(store, self.run.run_id, tid, gate["seq"], gate["expires_at"], outcome)
            if claim is None:
                continue
            type_, payload, actor = answer_event_from_claim(claim)
            self.gates.pop(tid)
            self.emit(type_, tid, self.tasks_state[tid].attempt + 1, payload, actor=actor)
            self.ready.append(tid)
            answered = True
        return answered

    def suspend(self) -> None:
        """Only gates are left: record that the run waits, and let go of it."""
        from .approvals import how_to_answer

        waiting = []
        for tid, gate in self.gates.items():
            g = self.tasks_state[tid].gate or {}
            waiting.append({"task": tid, "kind": gate["kind"], "message": g.get("message"), "expires_at": gate["expires_at"]})
        self.emit(ev.RUN_SUSPENDED, payload={"waiting": waiting, "how": how_to_answer(self.run.run_id, waiting)})
        self.suspended = True

    # --- replay (kernelflow.replay) ---------------------------------------------------------

    def recorded_answer(self, tid: str, attempt: int) -> Mapping[str, Any] | None:
        found = self.run._replay_source.next_answer(tid)
        if found is None:
            exc = StepFailed(f"step {tid!r} reached its approval gate, which the recorded run never answered")
            self.emit(ev.TASK_STARTED, tid, attempt, {"executor": "replay"})
            self.fail_for_good(tid, attempt, self.error_of(exc), "error", exc)
            return None
        self.emit(found.type, tid, attempt, found.payload, actor=found.actor)
        return self.tasks_state[tid].answer

    def replay_recorded(self, tid: str, attempt: int) -> None:
        """A side-effect step: its recorded outcome, not a new call."""
        self.emit(ev.TASK_STARTED, tid, attempt, {"executor": "replay"})
        recorded = self.run._replay_source.state.tasks.get(tid)
        if recorded is None or recorded.status != "succeeded":
            status = recorded.status if recorded else "never ran"
            exc = StepFailed(
                f"step {tid!r} ({self.index[tid].spec.kind}) is a side effect; replay uses its recorded output, "
                f"but it has none (recorded: {status})"
            )
            self.fail_for_good(tid, attempt, self.error_of(exc), "error", exc)
            return
        payload = {k: getattr(recorded, k) for k in ("output", "output_ref", "output_type")}
        payload["stored"] = recorded.output_stored
        value = self.run.store.load_artifact(recorded.output_ref) if recorded.output_ref else recorded.output
        self.values[tid] = value
        self.emit(ev.TASK_SUCCEEDED, tid, attempt, payload)
        self.completed.append(tid)
        self.done(tid)

    def sleep_until(self, tid: str, attempt: int, wake_at_us: int) -> None:
        left = 0.0 if self.run._replaying else max(0.0, (wake_at_us - ev.now_us()) / 1_000_000)
        self.counter += 1
        heapq.heappush(self.sleepers, (time.monotonic() + left, self.counter, tid, attempt))

    def done(self, tid: str) -> None:
        """``tid`` reached a final status: its dependents may go."""
        for d in self.down[tid]:
            self.waiting[d] -= 1
            if self.waiting[d] == 0:
                self.consider(d)

    # --- starting work -------------------------------------------------------------------

    def context(self, for_each: Mapping[str, Any] | None = None, output: Any = None, with_output: bool = False) -> dict[str, Any]:
        ctx: dict[str, Any] = {
            "inputs": self.inputs,
            "tasks": _Tasks(self.values, self.run.state),
            "secrets": self.run.secrets,
        }
        if for_each:
            ctx["forEach"] = for_each
        if with_output:
            ctx["output"] = output
        return ctx

    def kwargs_for(self, tid: str, fn: Callable[..., Any] | None, scope: Mapping[str, Any] | None) -> dict[str, Any]:
        """Arguments for the task's function: outputs by name, inputs, then its ``input`` mapping."""
        _, deps, input_names, _, _ = self.plan[tid]
        values = self.values
        kwargs = {d: values[d] for d in deps}
        inputs = self.inputs
        for name in input_names:
            kwargs[name] = inputs[name]
        spec = self.index[tid].spec
        if spec.input:
            from .expressions import render_value

            kwargs.update(render_value(dict(spec.input), self.context(scope)))
        if spec.for_each and scope:
            # An item's scope holds one level per loop, innermost first: a call is made only
            # for an item of the innermost loop (outer items open frames).
            s: Any = scope
            for loop in reversed(spec.for_each):
                kwargs.setdefault(loop["as"], s["item"])
                s = s.get("$parent")
        if fn is not None and spec.kind == "switch":
            kwargs = _fit(fn, kwargs)
        replaced = self.tasks_state[tid].replaced
        if replaced:
            from .resume import replaced_values

            kwargs.update(replaced_values(self.run, replaced))
        return kwargs

    def executor_name(self, tid: str) -> str:
        name = self.plan[tid][3]
        if name != "threads" and self.index[tid].spec.kind not in ("python", "switch") and executor_spec(name).remote:
            # Shell, HTTP, notebook and sub-workflow steps start their own
            # processes or requests and need the run here: threads run them.
            return "threads"
        return name

    def executor_for(self, tid: str) -> Executor:
        name = self.executor_name(tid)
        executor = self.executors.get(name)
        if executor is None:
            executor = self.executors[name] = executor_spec(name).factory(self.max_parallel)
        return executor

    def launch(self, tid: str) -> None:
        task = self.index[tid]
        spec = task.spec
        state = self.tasks_state[tid]
        attempt = state.attempt + 1
        extra: dict[str, Any] | None = None
        if self.run._replaying and state.replaced is None:
            released = self.run._replay_source.next_release(tid)
            if released is not None:  # the run went on with replaced inputs: so does its replay
                self.emit(ev.BREAKPOINT_RELEASED, tid, attempt, released.payload, actor=released.actor)
        if tid in self.break_before and state.replaced is None and not self.run._replaying:
            self.hit_breakpoint(tid)
            return
        if spec.approval is not None:
            answer = state.answer if state.answer and state.answer["type"] in ev.APPROVAL_ANSWERS else None
            if answer is None and self.run._replaying:
                answer = self.recorded_answer(tid, attempt)
                if answer is None:
                    return
            if answer is None:
                self.request_approval(tid)
                return
            extra = self.apply_answer(tid, attempt, answer)
            if extra is None:
                return  # rejected, expired or a pure gate: decided here
        executor_name = self.executor_name(tid)
        if self.run._replaying and spec.kind in ("shell", "http", "notebook", "workflow"):
            self.replay_recorded(tid, attempt)
            return
        if spec.kind == "sleep":
            self.emit(ev.TASK_STARTED, tid, attempt, {"executor": "engine"})
            seconds = float(spec.action["seconds"])
            wake_at = ev.now_us() + int(seconds * 1_000_000)
            self.emit(ev.SLEEP_STARTED, tid, attempt, {"seconds": seconds, "wake_at": wake_at})
            self.sleep_until(tid, attempt, wake_at)
            return
        self.emit(ev.TASK_STARTED, tid, attempt, {"executor": executor_name})
        if spec.for_each:
            try:
                items = self.loop_items(tid, 0, {})
            except Exception as exc:  # noqa: BLE001
                self.attempt_failed(tid, attempt, self.error_of(exc), "error", exc)
                return
            self.loops[tid] = attempt
            self.open_frame(tid, 0, items, {}, None, None, ())
            return
        try:
            fn, kwargs, meta = self.prepare(tid, None)
            if extra:
                kwargs = _fit(fn, {**kwargs, **extra}) if fn is not None else kwargs
        except CircuitOpen as exc:
            if spec.fallback is not None:
                self.use_fallback(tid, attempt, str(exc))
            else:
                self.attempt_failed(tid, attempt, self.error_of(exc), "error", exc)
            return
        except Exception as exc:  # noqa: BLE001 - template values, switch without a match
            self.attempt_failed(tid, attempt, self.error_of(exc), "error", exc)
            return
        self.submit(tid, tid, attempt, fn, kwargs, meta)

    def prepare(self, tid: str, scope: Mapping[str, Any] | None) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """The callable and arguments for one call of ``tid`` (a task attempt or a forEach item)."""
        task = self.index[tid]
        spec = task.spec
        meta = self.ask_circuit(tid, spec.circuit_breaker)
        kind = spec.kind
        if kind == "python":
            fn = self.plan[tid][0]
            if fn is None:
                raise StepFailed(f"task {tid!r} has no function ({task.ref} was not found when the workflow was loaded)")
            return fn, self.kwargs_for(tid, fn, scope), meta
        if kind == "switch":
            fn = self.switch_target(tid, scope)
            return fn, self.kwargs_for(tid, fn, scope), meta
        if kind == "workflow":  # the child run keeps its own tasks' timeouts; the engine times the call
            return self.child_call(tid, scope), {}, meta
        call_of = _ACTION_CALLS.get(kind)
        if call_of is None:
            raise StepFailed(f"task {tid!r}: unknown step kind {kind!r}")
        from .expressions import render_value

        action = render_value(dict(spec.action), self.context(scope))
        meta["own_timeout"] = True  # the step enforces its timeout itself (kills the process, aborts the request)
        return call_of(self, tid, action, task.options.timeout, self.masker.text), {}, meta

    def ask_circuit(self, tid: str, breaker: Mapping[str, Any] | None) -> dict[str, Any]:
        """Ask the task's circuit breaker before a call: raises :class:`CircuitOpen` when the
        circuit refuses it; the call's meta (whether it is the half-open probe) otherwise."""
        if breaker is None or self.run._replaying:
            return {}
        from .resilience import circuit_before

        decision, asked_at = circuit_before(self.run, tid, breaker)
        if decision.transition:
            self.emit(ev.CIRCUIT_CHANGED, tid, None, {"circuit": breaker["name"], "transition": decision.transition, "reason": decision.reason})
        if not decision.allowed:
            raise CircuitOpen(decision.reason)
        return {"probe": decision.probe, "asked_at": asked_at}

    def switch_target(self, tid: str, scope: Mapping[str, Any] | None) -> Callable[..., Any]:
        """The function of the case a switch step's value matches (recorded as ``SwitchMatched``)."""
        from .expressions import parse_template

        switch = self.index[tid].spec.switch
        assert switch is not None
        value = parse_template(str(switch["value"])).render(self.context(scope)) if isinstance(switch["value"], str) else switch["value"]
        label = "null" if value is None else (str(value).lower() if isinstance(value, bool) else str(value))
        target = switch["cases"].get(label)
        case = label if target is not None else "default"
        if target is None:
            target = switch.get("default")
        if target is None:
            cases = ", ".join(switch["cases"])
            raise StepFailed(
                f"switch of task {tid!r}: no case matches {value!r} (cases: {cases}) and there is no default; "
                "add the case or a default"
            )
        self.emit(ev.SWITCH_MATCHED, tid, None, {"value": self.masker.value(_jsonable(value)), "case": case, "target": target})
        fn = self.wf.callables.get(target)
        if fn is None:
            raise StepFailed(f"switch of task {tid!r}: {target} was not found when the workflow was loaded")
        return fn

    def shell_call(self, tid: str, action: dict[str, Any], timeout: float | None, mask: Callable[[str], str]) -> Callable[[], Any]:
        from .shell_step import run_shell

        argv = action["argv"]
        if isinstance(argv, list):
            # A template that is a whole argument keeps its type ({{inputs.n}} -> 2);
            # a command line takes text, so numbers become their text.
            argv = [_arg_text(a) for a in argv]
        if action.get("env"):
            action["env"] = {k: _arg_text(v) for k, v in action["env"].items()}

        def call_shell() -> Any:
            return run_shell(
                argv,
                shell=action.get("shell", False),
                cwd=action.get("cwd"),
                env=action.get("env"),
                inherit_env=action.get("inherit_env", True),
                timeout=timeout,
                max_output=action.get("max_output", 1_000_000),
                stdin=action.get("stdin"),
                task_id=tid,
                mask=mask,
            )

        return call_shell

    def http_call(self, tid: str, action: dict[str, Any], timeout: float | None, mask: Callable[[str], str]) -> Callable[[], Any]:
        from .http_step import http_request

        def call_http() -> Any:
            return http_request(
                action["method"],
                action["url"],
                headers=action.get("headers"),
                json=action.get("json"),
                params=action.get("params"),
                timeout=timeout if timeout is not None else 30.0,
                **({"max_body": action["max_body"]} if "max_body" in action else {}),
                task_id=tid,
                mask=mask,
            )

        return call_http

    def notebook_call(self, tid: str, action: dict[str, Any], timeout: float | None, mask: Callable[[str], str]) -> Callable[[], Any]:
        from .notebook_step import run_notebook

        origin = self.wf.origin
        # A relative notebook path is read from the defining file's folder (a YAML file, a
        # notebook); a workflow from a cell or from code has no such folder: the working one.
        base = Path(origin).resolve().parent if origin not in ("cell", "") and os.path.isfile(origin) else None

        def call_notebook() -> Any:
            return run_notebook(
                action["notebook"],
                action.get("parameters"),
                kernel=action.get("kernel"),
                base_dir=base,
                timeout=timeout,
                task_id=tid,
                mask=mask,
            )

        return call_notebook

    def child_call(self, tid: str, scope: Mapping[str, Any] | None) -> Callable[[], Any]:
        from .expressions import render_value
        from .subworkflows import call_subworkflow

        spec = self.index[tid].spec
        context = self.context(scope)
        action = render_value(dict(spec.action), context)
        child_inputs = render_value(dict(spec.input), context)
        run = self.run

        def call_child() -> Any:
            return call_subworkflow(run, tid, action["workflow"], action.get("version"), child_inputs)

        return call_child

    def submit(self, key: Any, tid: str, attempt: int, fn: Callable[..., Any], kwargs: dict[str, Any], meta: dict[str, Any]) -> None:
        timeout = self.plan[tid][4]
        own = meta.get("own_timeout", False)
        alone = not self.running and not self.ready and not self.retry_heap and not self.frames and not self.gates and not self.sleepers
        path = meta["frame"].path + (meta["index"],) if meta.get("kind") == "item" else ()
        ctx = TaskContext(self.run.run_id, self.wf.name, tid, attempt, self.tasks_state[tid].iteration, path, self.run)
        call = TaskCall(self.run.run_id, tid, attempt, bind(ctx, fn), kwargs, None if own else timeout, alone, ctx)
        self.running[key] = (attempt, None, meta)
        self.calls[id(call)] = key
        run = self.run
        run._flush()  # the attempt's side effects may follow at once
        # An attempt run inline on this thread records its side effects directly.
        holder, run._holder = run._holder, None
        try:
            handle = self.executor_for(tid).submit(call, self.report)
        except Exception as exc:  # noqa: BLE001 - a broken executor plugin fails this attempt, not the engine
            self.report(self.executor_broke(tid, call, exc))
            return
        finally:
            run._holder = holder
        if key in self.running and self.running[key][0] == attempt and self.running[key][1] is None:
            self.running[key] = (attempt, handle, meta)
        if timeout is not None and not own:
            self.counter += 1
            heapq.heappush(self.deadline_heap, (time.monotonic() + timeout, self.counter, key, attempt))

    def executor_broke(self, tid: str, call: TaskCall, exc: Exception) -> TaskOutcome:
        """The outcome of an attempt whose executor raised instead of starting it:
        a failed attempt (retried like any other) naming the executor's plugin."""
        from .exceptions import PluginError
        from .plugin_host import describe, executor_owner
        from .plugins.thread_executor import format_user_traceback

        try:
            name = self.executor_name(tid)
        except Exception:  # noqa: BLE001 - the executor's name is what we can say
            name = self.plan[tid][3]
        owner = executor_owner(name)
        if owner is None and isinstance(exc, PluginError):
            return TaskOutcome(call, error=exc, traceback="")  # no plugin registers it (any more)
        error = PluginError(
            f"executor {name!r} from {describe(owner)} raised instead of starting the attempt: "
            f"{type(exc).__name__}: {exc}"
        )
        error.__cause__ = exc
        return TaskOutcome(call, error=error, traceback=format_user_traceback(exc))

    # --- forEach ---------------------------------------------------------------------------

    def loop_items(self, tid: str, level: int, scope: Mapping[str, Any]) -> list[Any]:
        from .expressions import parse_template

        loop = self.index[tid].spec.for_each[level]
        raw = loop["items"]
        if isinstance(raw, str):
            items = parse_template(raw).render(self.context(scope or None))
        else:
            from .expressions import render_value

            items = render_value(raw, self.context(scope or None))
        if isinstance(items, tuple):
            items = list(items)
        if not isinstance(items, list):
            raise StepFailed(
                f"forEach of task {tid!r}: items must be a list, but {raw!r} gave {type(items).__name__} {items!r:.80}"
            )
        return items

    def open_frame(self, tid: str, level: int, items: list[Any], scope: dict[str, Any],
                   parent: _Frame | None, parent_index: int | None, path: tuple[int, ...]) -> None:  # fmt: skip
        frame = _Frame(tid, level, self.index[tid].spec.for_each[level], items, scope, parent, parent_index, path)
        self.emit(ev.FOREACH_STARTED, tid, None, {"path": list(path), "count": len(items)})
        if not items:
            self.frame_done(frame)
            return
        self.frames.append(frame)

    def start_item(self, frame: _Frame, index: int, item_attempt: int) -> None:
        tid = frame.tid
        frame.active += 1
        frame.status[index] = "running"
        frame.item_attempts[index] = item_attempt
        scope = frame.item_scope(index)
        depth = len(self.index[tid].spec.for_each)
        if frame.level + 1 < depth:
            try:
                items = self.loop_items(tid, frame.level + 1, scope)
            except Exception as exc:  # noqa: BLE001
                self.item_finished(frame, index, None, exc, "")
                return
            self.open_frame(tid, frame.level + 1, items, scope, frame, index, frame.path + (index,))
            return
        try:
            fn, kwargs, meta = self.prepare(tid, scope)
        except Exception as exc:  # noqa: BLE001
            self.item_finished(frame, index, None, exc, "")
            return
        meta.update({"kind": "item", "frame": frame, "index": index})
        self.submit((tid, "item", frame.path + (index,), item_attempt), tid, self.loops[tid], fn, kwargs, meta)

    def item_finished(self, frame: _Frame, index: int, value: Any, exc: BaseException | None, tb: str) -> None:
        tid = frame.tid
        path = list(frame.path + (index,))
        frame.active -= 1
        options = self.index[tid].options
        if exc is not None:
            item_attempt = frame.item_attempts[index]  # set by start_item
            error = self.error_of(exc, traceback=tb)
            if item_attempt <= options.retries and options.retries_error(exc):
                delay = options.delay_before(item_attempt + 1, self.rng.random())
                self.emit(ev.FOREACH_ITEM, tid, None, {"path": path, "index": index, "status": "retrying", "error": error, "delay_s": delay})
                frame.active += 1  # the retry holds the item's slot in its loop
                self.counter += 1
                heapq.heappush(self.retry_heap, (time.monotonic() + delay, self.counter, (frame, index), item_attempt + 1))
                frame.status[index] = "retrying"
                return
            frame.status[index] = "failed"
            frame.errors.append({"index": index, **{k: error[k] for k in ("exc_type", "message")}})
            self.emit(ev.FOREACH_ITEM, tid, None, {"path": path, "index": index, "status": "failed", "error": error})
        else:
            frame.status[index] = "succeeded"
            frame.results[index] = value
            self.emit(ev.FOREACH_ITEM, tid, None, {"path": path, "index": index, "status": "succeeded"})
        frame.remaining -= 1
        if frame.remaining == 0:  # fill dropped the frame when it handed out its last item
            self.frame_done(frame)

    def frame_done(self, frame: _Frame) -> None:
        summary = frame.summary()
        failed = summary["failed"] and frame.loop["on_failure"] == "fail"
        if frame.parent is not None:
            parent = frame.parent
            if failed:
                first = frame.errors[0]
                exc = StepFailed(f"{summary['failed']} of {summary['count']} inner items failed; first: item {first['index']}: {first['exc_type']}: {first['message']}")
                self.item_finished(parent, frame.parent_index or 0, None, exc, "")
            else:
                self.item_finished(parent, frame.parent_index or 0, summary, None, "")
            return
        tid = frame.tid
        attempt = self.loops.pop(tid)
        if failed:
            first = frame.errors[0]
            exc = StepFailed(
                f"forEach of task {tid!r}: {summary['failed']} of {summary['count']} items failed; "
                f"first: item {first['index']}: {first['exc_type']}: {first['message']}"
            )
            # Each item has had its retries already: the loop as a whole is not retried.
            if self.index[tid].spec.fallback is not None:
                self.use_fallback(tid, attempt, str(exc), self.error_of(exc))
            else:
                self.fail_for_good(tid, attempt, self.error_of(exc), "error", exc)
        else:
            self.task_succeeded(tid, attempt, summary)

    # --- outcomes -----------------------------------------------------------------------------

    def finished(self, outcome: TaskOutcome) -> None:
        call = outcome.call
        key = self.calls.pop(id(call), None)
        if key is None:
            return
        current = self.running.get(key)
        if current is None or current[0] != call.attempt:
            return  # a late report from an attempt already given up on (timeout, loop reset)
        meta = current[2]
        del self.running[key]
        if outcome.logs:
            self.emit(ev.TASK_LOGGED, call.task_id, call.attempt, {
                "text": self.masker.text(outcome.logs), "truncated": outcome.logs_truncated,
                **({"item": meta["index"]} if meta.get("kind") == "item" else {}),
            })  # fmt: skip
        self.circuit_after(call.task_id, meta, outcome.error)
        if meta.get("kind") == "item":
            self.item_finished(meta["frame"], meta["index"], outcome.value, outcome.error, outcome.traceback or "")
            return
        tid = call.task_id
        if outcome.error is None:
            self.task_succeeded(tid, call.attempt, outcome.value, fallback=meta.get("fallback"))
            return
        exc = outcome.error
        if meta.get("fallback"):
            # The fallback itself failed: nothing is left to try.
            error = self.error_of(exc, "fallback failed: ", outcome.traceback or "")
            self.fail_for_good(tid, call.attempt, error, "error", exc)
            return
        from .step_errors import StepTimeoutError

        reason = "timeout" if isinstance(exc, StepTimeoutError) else "error"
        self.attempt_failed(tid, call.attempt, self.error_of(exc, traceback=outcome.traceback or ""), reason, exc)

    def task_succeeded(self, tid: str, attempt: int, value: Any, fallback: str | None = None) -> None:
        spec = self.index[tid].spec
        jump = None
        if isinstance(value, Jump):
            jump, value = value, value.output
        if spec.output is not None:
            from .expressions import render_value

            try:
                value = render_value(dict(spec.output), self.context(output=value, with_output=True))
            except Exception as exc:  # noqa: BLE001
                self.attempt_failed(tid, attempt, self.error_of(exc, "output mapping: "), "error", exc)
                return
        if jump is None:
            try:
                jump = self.declared_jump(tid, value)
            except Exception as exc:  # noqa: BLE001
                self.fail_for_good(tid, attempt, self.error_of(exc), "error", exc)
                return
        if jump is not None:
            problem = self.check_jump(tid, jump)
            if problem is not None:
                self.fail_for_good(tid, attempt, self.error_of(problem), "error", problem)
                return
        try:
            payload = _NONE_OUTPUT if value is None else _output_payload(self.run, tid, attempt, value)
        except UnstorableOutputError as exc:
            self.fail_for_good(tid, attempt, self.error_of(exc), "error", exc)
            return
        if fallback:
            payload = {**payload, "fallback": fallback}
        self.values[tid] = value
        self.emit(ev.TASK_SUCCEEDED, tid, attempt, payload)
        self.completed.append(tid)
        if jump is not None and jump.kind == "back_to":
            self.go_back(tid, jump.step)
            return
        if jump is not None:
            self.go_forward(tid, jump.step)
        self.done(tid)

    def attempt_failed(self, tid: str, attempt: int, error: dict[str, Any], reason: str, exc: BaseException | None) -> None:
        options = self.index[tid].options
        spec = self.index[tid].spec
        if reason == "timeout" and options.on_timeout != "retry":
            if options.on_timeout == "skip":
                self.emit(ev.TASK_TIMED_OUT, tid, attempt, {"timeout_s": options.timeout, "error": error, "then": "skip"})
                self.skip(tid, f"timed out after {format_duration(options.timeout or 0)} (on_timeout: skip)", {"timeout_s": options.timeout})
                return
            if options.on_timeout == "fallback":
                self.use_fallback(tid, attempt, f"timed out after {format_duration(options.timeout or 0)}")
                return
            self.fail_for_good(tid, attempt, error, reason, exc)
            return
        retriable = options.retries_error(exc) if reason == "error" else True
        base = self.base_attempt(tid)
        if retriable and attempt - base <= options.retries:
            delay = 0.0 if self.run._replaying else options.delay_before(attempt - base + 1, self.rng.random())
            self.emit(
                ev.TASK_RETRYING,
                tid,
                attempt,
                {"error": error, "reason": reason, "delay_s": delay, "next_attempt": attempt + 1},
            )
            self.counter += 1
            heapq.heappush(self.retry_heap, (time.monotonic() + delay, self.counter, tid, attempt + 1))
            return
        if spec.fallback is not None:
            self.use_fallback(tid, attempt, f"failed: {error['exc_type']}: {error['message']}", error)
            return
        self.fail_for_good(tid, attempt, error, reason, exc)

    def base_attempt(self, tid: str) -> int:
        """Attempts of earlier loop iterations (attempt numbers go on across iterations)."""
        return self.run._iteration_base.get(tid, 0)

    def use_fallback(self, tid: str, attempt: int, why: str, error: dict[str, Any] | None = None) -> None:
        ref = self.index[tid].spec.fallback
        assert ref is not None  # every caller checks that the task has a fallback
        fn = self.wf.callables.get(ref)
        if fn is None:
            problem = StepFailed(f"task {tid!r}: fallback {ref} was not found when the workflow was loaded")
            self.fail_for_good(tid, attempt, error or self.error_of(problem), "error", problem)
            return
        self.emit(ev.FALLBACK_USED, tid, attempt, {"reason": self.masker.text(why), "fallback": ref})
        kwargs = _fit(fn, self.kwargs_for(tid, None, None))
        self.submit((tid, "fallback"), tid, attempt, fn, kwargs, {"fallback": ref, "own_timeout": True})

    def fail_for_good(self, tid: str, attempt: int, error: dict[str, Any], reason: str, exc: BaseException | None) -> None:
        spec = self.index[tid].spec
        options = self.index[tid].options
        if reason == "timeout":
            self.emit(ev.TASK_TIMED_OUT, tid, attempt, {"timeout_s": options.timeout, "error": error})
        else:
            self.emit(ev.TASK_FAILED, tid, attempt, {"error": error, **({"continued": True} if spec.continue_on_failure else {})})
        failure = TaskFailure(tid, attempt, error["exc_type"], error["message"], error["traceback"])
        if exc is not None:
            self.run._exceptions[tid] = _masked_exception(exc, self.masker)
        if spec.continue_on_failure:
            self.run.continued[tid] = failure
            self.values[tid] = None
            self.done(tid)
            return
        self.run.failures[tid] = failure
        self.failed.append(tid)
        self.skip_downstream(tid)

    def skip_downstream(self, tid: str) -> None:
        todo = deque(self.down[tid])
        while todo:
            d = todo.popleft()
            if self.tasks_state[d].status == "pending":
                self.emit(ev.TASK_SKIPPED, d, None, {"reason": f"upstream task {tid!r} failed", "upstream": tid})
                todo.extend(self.down[d])

    def timed_out(self, key: Any, attempt: int) -> None:
        _, handle, meta = self.running.pop(key)
        if handle is not None:
            handle.cancel()
        tid = key if isinstance(key, str) else key[0]
        limit = self.index[tid].options.timeout
        assert limit is not None  # a deadline is set only for a task with a timeout
        exc = TimeoutError(f"task {tid!r} ran longer than its timeout of {format_duration(limit)}")
        self.circuit_after(tid, meta, exc)
        if meta.get("kind") == "item":
            self.item_finished(meta["frame"], meta["index"], None, exc, "")
            return
        error = {"exc_type": "TimeoutError", "message": str(exc), "traceback": ""}
        self.attempt_failed(tid, attempt, error, "timeout", None)

    def circuit_after(self, tid: str, meta: Mapping[str, Any], exc: BaseException | None) -> None:
        breaker = self.index[tid].spec.circuit_breaker
        if breaker is None or "probe" not in meta:
            return
        from .resilience import circuit_after

        transition = circuit_after(
            self.run, breaker, success=exc is None, probe=meta["probe"], started_at=meta.get("asked_at")
        )
        if transition:
            self.emit(ev.CIRCUIT_CHANGED, tid, None, {"circuit": breaker["name"], "transition": transition})

    # --- loops ---------------------------------------------------------------------------------

    def declared_jump(self, tid: str, value: Any) -> Jump | None:
        spec = self.index[tid].spec
        for kind in ("back_to", "skip_to"):
            jump = getattr(spec, kind)
            if not jump:
                continue
            when = jump.get("when")
            if when is None:
                return Jump(kind, jump["step"], value)
            from .expressions import parse_condition

            if parse_condition(when).evaluate(self.context(output=value, with_output=True)):
                return Jump(kind, jump["step"], value)
        return None

    def ancestors(self) -> dict[str, set[str]]:
        if self._ancestors is None:
            out: dict[str, set[str]] = {}
            for tid in self.wf.order:
                acc: set[str] = set()
                for up in self.index[tid].upstream:
                    acc.add(up)
                    acc |= out[up]
                out[tid] = acc
            self._ancestors = out
        return self._ancestors

    def check_jump(self, tid: str, jump: Jump) -> StepFailed | None:
        target = jump.step
        if target not in self.index:
            return StepFailed(f"task {tid!r} returned {jump.kind}({target!r}), but there is no task {target!r}")
        anc = self.ancestors()
        if jump.kind == "back_to":
            if target != tid and target not in anc[tid]:
                return StepFailed(f"task {tid!r} returned back_to({target!r}), but {target!r} does not run before it")
            declared = self.index[tid].spec.back_to
            limit = (declared or {}).get("max_iterations", 100)
            count = self.jumps.get((tid, target), 0) + 1
            if count > limit:
                return StepFailed(
                    f"loop from {tid!r} back to {target!r} exceeded its limit of {limit} iterations; "
                    "raise max_iterations or fix the loop's condition"
                )
            self.jumps[(tid, target)] = count
        elif tid not in anc[target]:
            return StepFailed(f"task {tid!r} returned skip_to({target!r}), but {target!r} does not depend on it")
        return None

    def go_back(self, tid: str, target: str) -> None:
        """Run ``target`` and everything downstream of it again."""
        anc = self.ancestors()
        body = [t for t in self.wf.order if t == target or target in anc[t]]
        iteration = self.jumps[(tid, target)]
        self.emit(ev.LOOP_JUMPED, tid, None, {"kind": "back_to", "to": target, "iteration": iteration, "reset": body})
        for t in body:
            for key in [k for k in self.running if (k if isinstance(k, str) else k[0]) == t]:
                handle = self.running.pop(key)[1]
                if handle is not None:
                    handle.cancel()
            self.frames = [f for f in self.frames if f.tid != t]
            self.loops.pop(t, None)
            self.ready = deque(r for r in self.ready if r != t)
            state = self.tasks_state[t]
            if state.status == "pending":
                continue  # not reached in this iteration: nothing to reset
            self.run._iteration_base[t] = state.attempt
            if t in self.failed:
                self.failed.remove(t)
                self.run.failures.pop(t, None)
            self.values.pop(t, None)
            if t in self.completed:
                self.completed.remove(t)
            self.emit(ev.TASK_RESET, t, state.attempt or None, {"iteration": state.iteration + 1, "loop_from": tid})
        body_set = set(body)
        # A retry due to a task just reset would fire into its next pass (early, and at the old
        # attempt); one due to an item of a loop just reset would start an item of a discarded frame.
        self.retry_heap = [r for r in self.retry_heap if (r[2] if isinstance(r[2], str) else r[2][0].tid) not in body_set]
        heapq.heapify(self.retry_heap)
        # A fresh pass through the region: skip_to exemptions and the counters
        # of loops nested inside it start over (the outer loop's count goes on).
        self.forced -= body_set
        for key in [k for k in self.jumps if k != (tid, target) and k[0] in body_set and k[1] in body_set]:
            del self.jumps[key]
        for t in body:
            self.waiting[t] = len({u for u in self.index[t].upstream if u in body_set or not self.tasks_state[u].done})
        self.consider(target)

    def go_forward(self, tid: str, target: str) -> None:
        anc = self.ancestors()
        between = [t for t in self.wf.order if tid in anc[t] and t in anc[target]]
        skipped = [t for t in between if self.tasks_state[t].status == "pending"]
        self.emit(ev.LOOP_JUMPED, tid, None, {"kind": "skip_to", "to": target, "skipped": skipped})
        self.forced.add(target)
        for t in skipped:
            self.emit(ev.TASK_SKIPPED, t, None, {"reason": f"skipped by skip_to from {tid!r}", "skip_to": target})
            self.values[t] = None
        for t in skipped:
            for d in self.down[t]:
                self.waiting[d] -= 1
                if self.waiting[d] == 0 and d not in between:
                    self.consider(d)

    # --- the end -------------------------------------------------------------------------------

    def compensate(self) -> None:
        """Saga: undo what completed, last completed first."""
        for tid in reversed(self.completed):
            ref = self.index[tid].spec.compensate
            if ref is None:
                continue
            fn = self.wf.callables.get(ref)
            self.emit(ev.COMPENSATION_STARTED, tid, None, {"compensate": ref})
            try:
                if fn is None:
                    raise StepFailed(f"compensation {ref} was not found when the workflow was loaded")
                available = {**self.kwargs_for(tid, None, None), tid: self.values.get(tid), "output": self.values.get(tid)}
                self.run._flush()
                fn(**_fit(fn, available))
            except Exception as exc:  # noqa: BLE001 - one failed undo must not stop the others
                self.emit(ev.COMPENSATION_FAILED, tid, None, {"compensate": ref, "error": self.error_of(exc)})
            else:
                self.emit(ev.COMPENSATION_SUCCEEDED, tid, None, {"compensate": ref})

    def cancel_all(self) -> None:
        for _, handle, _meta in self.running.values():
            if handle is not None:
                handle.cancel()
        try:
            from .notebook_step import kill_running as stop_notebooks
            from .shell_step import kill_running

            kill_running()
            stop_notebooks()
        except Exception:  # noqa: BLE001 - best effort while stopping
            pass

    def error_of(self, exc: BaseException, prefix: str = "", traceback: str = "") -> dict[str, Any]:
        mask = self.masker.text
        return {"exc_type": type(exc).__name__, "message": mask(prefix + str(exc)), "traceback": mask(traceback)}


class UnstorableOutputError(StepFailed):
    """A task returned a value the store cannot keep (not picklable, not a table)."""


class ApprovalRejected(StepFailed):
    """An approval gate was rejected (or expired with a failing outcome)."""


class CircuitOpen(StepFailed):
    """The step's circuit breaker is open: the call was not made."""


def _fit(fn: Callable[..., Any], available: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``available`` that ``fn`` accepts by name."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return dict(available)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(available)
    return {k: v for k, v in available.items() if k in params}


# The steps that run something outside the engine and enforce their own timeout: how each
# one's call is made from its rendered action (a sub-workflow is prepared by child_call).
_ACTION_CALLS: dict[str, Callable[..., Callable[[], Any]]] = {
    "shell": _Driver.shell_call,
    "http": _Driver.http_call,
    "notebook": _Driver.notebook_call,
}


def _arg_text(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return value


def _jsonable(value: Any) -> Any:
    try:
        orjson.dumps(value)
        return value
    except TypeError:
        return repr(value)[:200]


def _masked_exception(exc: BaseException, masker: Any) -> BaseException:
    """The exception to chain from ``RunFailedError``: itself, or, if a secret
    shows anywhere in its printed form (args, attributes, chained causes), a
    stand-in carrying only the masked text."""
    if not masker:
        return exc
    import traceback

    try:
        if not masker.contains("".join(traceback.format_exception(exc))):
            return exc
    except Exception:  # noqa: BLE001 - an exception that cannot print is replaced too
        pass
    return SecretMaskedError(f"{type(exc).__name__}: {masker.text(str(exc))}")


class SecretMaskedError(KernelflowError):
    """Stands in for a task's exception whose printed form held a secret (masked here)."""


def _output_payload(run: Run, tid: str, attempt: int, value: Any) -> dict[str, Any]:
    """Small JSON values go inline in the event; others become artifacts in the store."""
    kind = type(value)
    masker = run.masker
    if kind in _INLINE_TYPES:
        try:
            encoded = orjson.dumps(value)
            if len(encoded) <= INLINE_OUTPUT_LIMIT and orjson.loads(encoded) == value:
                return {"output": masker.value(value), "output_ref": None, "output_type": kind.__name__, "stored": True}
        except (TypeError, orjson.JSONEncodeError):
            pass
    if masker:
        value = masker.value(value)  # what can be masked is; docs/control-flow.md#secrets says what cannot
    try:
        ref = run.store.save_artifact(run.run_id, tid, attempt, value)
    except TypeError as exc:
        # Losing an output silently would break resume, fork and time travel later.
        raise UnstorableOutputError(f"task {tid!r} returned a value that cannot be stored: {exc}") from None
    return {"output": None, "output_ref": dict(ref), "output_type": kind.__name__, "stored": True}


def _stored_inputs(run: Run, inputs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Inputs for ``RunStarted``: small JSON values inline; others shown by type
    and repr, and kept as artifacts so a resume, fork or replay can load them."""
    safe: dict[str, Any] = {}
    refs: dict[str, Any] = {}
    for name, value in inputs.items():
        try:
            encoded = orjson.dumps(value)
            ok = len(encoded) <= INLINE_OUTPUT_LIMIT and orjson.loads(encoded) == value
        except (TypeError, orjson.JSONEncodeError):
            ok = False
        if ok:
            safe[name] = value
            continue
        safe[name] = {"type": type(value).__name__, "repr": repr(value)[:200]}
        try:
            refs[name] = dict(run.store.save_artifact(run.run_id, f"input.{name}", 0, value))
        except Exception:  # noqa: BLE001 - unstorable: a resume will say this input must be given again
            pass
    return safe, refs
