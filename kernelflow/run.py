"""``Run``: the handle users hold for one execution of a workflow."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .events import SIDE_EFFECT_RECORDED, Event, current_actor, now_us, us_to_datetime
from .exceptions import KernelflowError, RunFailedError, RunSuspended, TaskFailure
from .reducer import RunState, apply

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

    from .model import Workflow
    from .observer_api import RunObserver
    from .store_api import EventStore

_EMPTY: Mapping[str, Any] = {}


class Run:
    """One execution of a workflow.

    ``status`` and ``state`` are live while the run goes on; they are the
    fold of the run's events (:mod:`kernelflow.reducer`), the same fold
    anyone can rebuild from the store. ``run["task"]`` is a task's output,
    ``run.output`` the run's (the single final task's output, or a dict of
    final tasks' outputs), ``run.events`` its events as a polars DataFrame.
    """

    def __init__(
        self,
        workflow: Workflow,
        run_id: str,
        inputs: Mapping[str, Any],
        store: EventStore,
        *,
        raise_on_failure: bool = True,
        parent_info: Mapping[str, Any] | None = None,
        masker: Any = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        from .durable import Recorded
        from .secrets import Masker, Secrets

        self.run_id = run_id
        self.workflow = workflow
        self.inputs = dict(inputs)
        self.store = store
        self.raise_on_failure = raise_on_failure
        self.state = RunState(run_id)
        self.failures: dict[str, TaskFailure] = {}
        # Tasks that failed with continue_on_failure: recorded, not failing the run.
        self.continued: dict[str, TaskFailure] = {}
        # Sub-workflow runs: parent_run_id, parent_task, call_stack (workflow names), depth.
        self.parent_info: dict[str, Any] = dict(parent_info or {})
        # A sub-workflow's run shares its parent's masker: secrets the parent
        # resolved and passed down are masked in the child's events too.
        self.masker = masker if masker is not None else Masker()
        self.secrets = Secrets(self.masker)
        self._iteration_base: dict[str, int] = {}
        self._values: dict[str, Any] = {}
        self._exceptions: dict[str, BaseException] = {}
        self._seq = 0
        self._actor = current_actor()
        self._observers: list[RunObserver] = []
        self._observer_plugins: dict[int, str] = {}  # id(observer) -> the plugin that attached it
        self._unseen: list[Event] = []
        self._done = threading.Event()
        self._on_done: list[Callable[[Run], None]] = []
        self._lock = threading.Lock()
        self.engine_error: BaseException | None = None
        # Run options recorded in RunStarted: break_before, deterministic.
        self.options: dict[str, Any] = dict(options or {})
        self._resume: Any = None  # a resume plan (kernelflow.resume) when continuing a run
        self._preset: Any = None  # outputs a fork reuses (kernelflow.resume)
        self._recorded = Recorded()  # kf.now/random/remember/sleep results, by step and call
        self._replaying = False
        self._lease: Any = None
        self._emit_lock = threading.Lock()
        # Group commit: events the driving thread records between two actions
        # wait here and reach the store in one write (see _grouped).
        self._held: list[Event] = []
        self._holder: int | None = None

    # --- recording (the engine's only way to change state) -------------------

    def _emit(
        self,
        type_: str,
        task_id: str | None = None,
        attempt: int | None = None,
        payload: Mapping[str, Any] = _EMPTY,
        actor: Mapping[str, Any] | None = None,
        ts: int | None = None,
    ) -> Event:
        # Tasks record side effects from worker threads: seq must stay gapless.
        with self._emit_lock:
            event = Event(
                self.run_id,
                self._seq,
                ts or now_us(),
                type_,
                self.workflow.name,
                self.workflow.version,
                task_id,
                attempt,
                payload,
                actor or self._actor,
            )
            if self._holder == threading.get_ident():
                self._held.append(event)
            else:
                # Any other thread's event goes to the store at once, after
                # what the driver holds, so the store keeps seq order.
                if self._held:
                    self._write_held()
                self.store.append(event)
            self._seq += 1
            apply(self.state, event)
            if self._observers:
                self._unseen.append(event)
        return event

    def _write_held(self) -> None:
        held, self._held = self._held, []
        append_many = getattr(self.store, "append_many", None)
        if append_many is not None and len(held) > 1:
            append_many(held)
        else:
            for event in held:
                self.store.append(event)

    def _flush(self) -> None:
        """Hand the events the driver holds to the store (one write)."""
        if self._held:
            with self._emit_lock:
                if self._held:
                    self._write_held()

    @contextmanager
    def _grouped(self) -> Iterator[None]:
        """While the engine decides what happens next, hold the events it
        records on this thread and write them together.

        Nothing may depend on an event the OS has not got, so the engine
        calls :meth:`_flush` before every action that could: starting an
        attempt (the task's side effects), waiting (the process may be
        killed meanwhile), running a compensation, notifying observers, and
        leaving (the lease is released after). While an attempt runs inline
        on this thread the engine sets ``_holder`` to None, so the task's own
        records (kf.now, kf.remember, ...) are written at once. A chain
        task's scheduled, started and succeeded events thus cost one write
        (one fsync with fsync on) instead of three.
        """
        self._holder = threading.get_ident()
        try:
            yield
        finally:
            self._holder = None
            self._flush()

    def _record_side_effect(self, ctx: Any, payload: Mapping[str, Any]) -> None:
        """Called by kf.now/random/remember/sleep inside a task (any thread)."""
        self._emit(SIDE_EFFECT_RECORDED, ctx.task_id, ctx.attempt, payload)
        self._recorded.put(payload)

    def _notify(self) -> None:
        self._flush()  # observers see what is stored
        if not self._unseen:
            return
        batch, self._unseen = self._unseen, []
        for observer in list(self._observers):
            try:
                observer.on_events(self, batch)
            except Exception as exc:  # noqa: BLE001 - a display must not take the run down
                self._drop_observer(observer, exc, "on_events")

    def _finish(self) -> None:
        # Outputs kept as artifacts leave memory with the run; run[task] loads them again.
        for tid, task in self.state.tasks.items():
            if task.output_ref and tid in self._values:
                del self._values[tid]
        self._notify()
        for observer in list(self._observers):
            try:
                observer.on_finish(self)
            except Exception as exc:  # noqa: BLE001
                self._drop_observer(observer, exc, "on_finish")
        with self._lock:
            self._done.set()
            callbacks, self._on_done = self._on_done, []
        for callback in callbacks:
            callback(self)

    def _watch(self, observers: Any, plugin: str) -> None:
        """Attach ``observers`` that ``plugin`` returned from ``kernelflow_run_observers``."""
        for observer in observers:
            self._observers.append(observer)
            self._observer_plugins[id(observer)] = plugin

    def _drop_observer(self, observer: RunObserver, exc: BaseException, method: str = "on_events") -> None:
        import warnings

        from .plugin_host import PluginWarning, describe

        self._observers.remove(observer)
        plugin = self._observer_plugins.pop(id(observer), None)
        warnings.warn(
            f"run {self.run_id}: " + (f"kernelflow {describe(plugin)}: " if plugin else "")
            + f"observer {type(observer).__name__} raised {type(exc).__name__}: {exc} (in {method}); "
            "it was detached, the run goes on",
            PluginWarning,
            stacklevel=2,
        )

    # --- what users read ---------------------------------------------------------

    @property
    def status(self) -> str:
        """``pending``, ``running``, ``waiting`` (suspended at an approval gate or
        breakpoint), ``succeeded`` or ``failed``."""
        return self.state.status

    @property
    def waiting(self) -> dict[str, dict[str, Any]]:
        """Tasks waiting at an approval gate or breakpoint -> what they wait for."""
        return self.state.waiting

    def how_to_continue(self) -> str:
        """What to do about a suspended run (the same text the run prints)."""
        from .approvals import how_to_answer

        waiting = [{"task": t, "kind": g.get("kind", "approval")} for t, g in self.waiting.items()]
        return how_to_answer(self.run_id, waiting)

    # --- durable execution -------------------------------------------------------

    def resume(self, *, replace: Mapping[str, Any] | None = None, wait: bool = True) -> Run:
        """Continue this run where it stopped (failed, interrupted, or paused at a
        breakpoint): completed tasks keep their outputs and do not run again.
        ``replace``: new values for the inputs of the task paused at a breakpoint.
        Uses the workflow's current definition in this process (a fixed version
        is fine). Updates and returns this handle."""
        from .resume import resume

        return resume(self.run_id, workflow=None, replace=replace, wait=wait,
                      raise_on_failure=self.raise_on_failure, into=self)  # fmt: skip

    def fork(self, from_step: str, *, wait: bool = True, **new_inputs: Any) -> Run:
        """A new run that reuses this run's outputs of every step upstream of
        ``from_step`` and runs the rest, with ``new_inputs`` replacing inputs.
        The new run records this one as its parent (``forked_from``)."""
        from .resume import fork

        return fork(self.run_id, from_step, workflow=self.workflow, wait=wait, raise_on_failure=self.raise_on_failure, **new_inputs)

    def replay(self) -> Any:
        """Re-execute this finished run against its recorded history, without
        repeating recorded side effects, with the workflow's current definition
        in this process (as :meth:`resume` does); returns a report of the first
        step whose behaviour now differs (see :mod:`kernelflow.replay`)."""
        from .replay import replay

        return replay(self.run_id)

    def at(self, point: Any) -> Any:
        """The run as it was at ``point``: a ``seq`` (int), a time (datetime or
        ISO text, UTC) or a step id (just after it finished). See docs/time-travel.md."""
        from .snapshots import snapshot_at

        return snapshot_at(self.store, self.run_id, point, self.workflow)

    def step_inputs(self, task_id: str) -> dict[str, Any]:
        """The arguments ``task_id`` is (or would be) called with, from the
        outputs known now: inspect them at a breakpoint, change them, then
        ``run.resume(replace={...})``."""
        if task_id not in self.workflow:
            raise KeyError(f"workflow {self.workflow.name!r} has no task {task_id!r}; tasks: {', '.join(self.workflow.task_ids)}")
        task = self.workflow[task_id]
        out: dict[str, Any] = {}
        for p in task.params:
            if p.name in task.deps:
                out[p.name] = self[p.name]
            elif p.name in self.inputs:
                out[p.name] = self.inputs[p.name]
        return out

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def __getitem__(self, task_id: str) -> Any:
        """The output of ``task_id`` in this run."""
        if task_id not in self.workflow:
            raise KeyError(
                f"workflow {self.workflow.name!r} has no task {task_id!r}; tasks: {', '.join(self.workflow.task_ids)}"
            )
        if task_id in self._values:
            return self._values[task_id]
        task = self.state.tasks.get(task_id)
        if task is None or task.status != "succeeded":
            status = task.status if task else "pending"
            detail = ""
            if task is not None and task.error:
                detail = f": {task.error.get('exc_type')}: {task.error.get('message')}"
            elif task is not None and task.reason:
                detail = f": {task.reason}"
            raise KernelflowError(
                f"task {task_id!r} of run {self.run_id} has no output (status {status}{detail})"
            )
        if task.output_ref:
            return self.store.load_artifact(task.output_ref)
        return task.output

    @property
    def output(self) -> Any:
        """The output of the final task, or ``{task: output}`` when several tasks are final."""
        if self.status == "waiting":
            raise KernelflowError(f"run {self.run_id} is waiting, so it has no output yet.\n{self.how_to_continue()}")
        if self.status != "succeeded":
            raise KernelflowError(
                f"run {self.run_id} is {self.status}, so it has no output; "
                "read the outputs of tasks that succeeded with run['task']"
            )
        sinks = self.workflow.sinks()
        if len(sinks) == 1:
            return self[sinks[0]]
        return {tid: self[tid] for tid in sinks}

    @property
    def events(self) -> pl.DataFrame:
        """This run's events from the store, in ``seq`` order."""
        return self.store.sql("SELECT * FROM events WHERE run_id = ? ORDER BY seq", [self.run_id])

    @property
    def tasks(self) -> pl.DataFrame:
        """One row per task: status, attempt, start/end (UTC), duration, error or skip reason."""
        import polars as pl

        rows = []
        for tid in self.workflow.order:
            t = self.state.tasks.get(tid)
            if t is None:
                continue
            duration = (t.ended_at - t.started_at) / 1000 if t.started_at and t.ended_at else None
            problem = t.reason or (f"{t.error.get('exc_type')}: {t.error.get('message')}" if t.error else None)
            rows.append(
                {
                    "task": tid,
                    "status": t.status,
                    "attempt": t.attempt,
                    "started_at": us_to_datetime(t.started_at).replace(tzinfo=None) if t.started_at else None,
                    "ended_at": us_to_datetime(t.ended_at).replace(tzinfo=None) if t.ended_at else None,
                    "duration_ms": duration,
                    "problem": problem,
                }
            )
        return pl.DataFrame(
            rows,
            schema={
                "task": pl.String,
                "status": pl.String,
                "attempt": pl.Int64,
                "started_at": pl.Datetime("us"),
                "ended_at": pl.Datetime("us"),
                "duration_ms": pl.Float64,
                "problem": pl.String,
            },
        )

    @property
    def duration(self) -> float | None:
        """Seconds from start to end (to now while running)."""
        if self.state.started_at is None:
            return None
        end = self.state.ended_at or now_us()
        return (end - self.state.started_at) / 1_000_000

    def wait(self, timeout: float | None = None) -> Run:
        """Block until the run ends; raise :class:`RunFailedError` if it failed
        (unless started with ``raise_on_failure=False``). Returns the run."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"run {self.run_id} still {self.status} after {timeout} s; call wait() again")
        self._raise_if_failed()
        return self

    async def wait_async(self) -> Run:
        """``await run.wait_async()``: wait without blocking the event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def wake(_: Run) -> None:
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(None))

        with self._lock:
            if self._done.is_set():
                future.set_result(None)
            else:
                self._on_done.append(wake)
        await future
        self._raise_if_failed()
        return self

    def _raise_if_failed(self) -> None:
        if self.engine_error is not None:
            raise self.engine_error
        if self.status == "waiting" and self.raise_on_failure:
            from .watcher import batch_mode

            if batch_mode():
                # A batch process ends here, saying how to answer and go on.
                raise RunSuspended(f"run {self.run_id} of workflow {self.workflow.name!r} is suspended, waiting.\n{self.how_to_continue()}")
        if self.status == "failed" and self.raise_on_failure:
            failures = [self.failures[t] for t in self.state.failed_tasks if t in self.failures]
            error = RunFailedError(self, failures, message=self._failure_message(failures))
            first = next((self._exceptions[f.task_id] for f in failures if f.task_id in self._exceptions), None)
            raise error from first

    def _failure_message(self, failures: list[TaskFailure]) -> str | None:
        if failures:
            return None
        return f"run {self.run_id} of workflow {self.workflow.name!r} failed: {self.state.error}"

    # --- display -------------------------------------------------------------------

    def summary(self) -> str:
        """A few lines for terminals and logs: status, duration, counts, failures."""
        counts = {k: v for k, v in self.state.counts().items() if v}
        parts = ", ".join(f"{n} {status}" for status, n in counts.items())
        duration = self.duration
        took = f" in {duration:.3f} s" if duration is not None else ""
        lines = [f"run {self.run_id} of {self.workflow.name} (version {self.workflow.version}): {self.status}{took}; {parts}"]
        if self.status == "waiting":
            lines.extend("  " + line for line in self.how_to_continue().splitlines())
        for tid in self.state.failed_tasks:
            err = self.state.tasks[tid].error or {}
            lines.append(f"  {tid}: {err.get('exc_type')}: {err.get('message')}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Run {self.run_id} of {self.workflow.name!r}: {self.status}>"
