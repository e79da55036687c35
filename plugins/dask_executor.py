"""The built-in ``dask`` executor: Python tasks run on the workers of a Dask cluster.

Which cluster: the session of :func:`kernelflow.use_dask`, else
``$KERNELFLOW_DASK_ADDRESS``, else a ``LocalCluster`` started on first use
(:func:`kernelflow.dask_api.session_for_run`). Importing this module does not
import Dask; a run that needs it without Dask installed fails with one error
saying ``pip install "kernelflow[dask]"``.

Each attempt travels as :mod:`kernelflow.remote_attempt` packs it (the
function, its arguments and its task context, pickled with cloudpickle) and
becomes one Dask task with a readable key (``clean-a1-r-3f9a1c07be-12``:
task, attempt, run, a counter). The orchestrator records every event: the
worker only runs the function and sends back its value (or exception) and its
prints. Completion is reported from the future's done callback, and the
values of finished attempts are fetched in batches on the client's event
loop: no thread per task on the client side.

What the engine asks of an executor, and how Dask answers:

- timeout and interrupt: the engine calls ``handle.cancel()``, which cancels
  the future (``client.cancel``). A task still waiting on the scheduler never
  starts; a Python function already running on a worker cannot be stopped:
  the worker marks the task cancelled, lets the function finish on its thread
  (which stays busy until then) and throws the result away.
- a worker that dies running an attempt: the future fails with Dask's
  ``KilledWorker`` once the scheduler's ``allowed-failures`` are used up (0
  for clusters kernelflow starts, so at once), and the attempt fails with a
  :class:`WorkerDiedError` naming the task and the worker; kernelflow's retry
  policy then decides (a new attempt, recorded).
- outputs: by default the value comes back and is recorded like any output.
  With ``kf.use_dask(keep_outputs=True)``, an output that only Dask tasks
  read stays on the cluster (:class:`DaskOutput`) and is handed to them as a
  future; see docs/dask.md.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, Callable

from kernelflow.executor_api import ExecutorSpec, TaskCall, TaskOutcome
from kernelflow.plugins.hookspecs import hookimpl
from kernelflow.step_errors import StepError, WorkerDiedError

WHERE = "a Dask worker"


class DaskTaskError(StepError):
    """Dask itself failed an attempt (cancelled from elsewhere, the client closed,
    a kept output lost); the message says what happened and what to do."""


class DaskOutput:
    """A task output kept on the Dask cluster (``use_dask(keep_outputs=True)``).

    ``key`` is the Dask key holding it; ``type_name`` and ``repr`` describe the
    value (computed on the worker). ``result()`` fetches the value while the
    cluster still has it. What the store records is this description only:
    loaded again (a resumed or forked run, time travel) it has no future, and
    ``result()`` raises :class:`DaskTaskError` saying so.
    """

    __slots__ = ("future", "key", "type_name", "repr", "task_id")

    def __init__(self, future: Any, key: str, type_name: str, text: str, task_id: str) -> None:
        self.future = future
        self.key = key
        self.type_name = type_name
        self.repr = text
        self.task_id = task_id

    @property
    def live(self) -> bool:
        """Whether the value can still be fetched from the cluster."""
        fut = self.future
        if fut is None or fut.status in ("cancelled", "lost"):
            return False
        return getattr(fut.client, "status", "") not in ("closed", "closing")

    def result(self, timeout: float | None = None) -> Any:
        """The value, fetched from the cluster."""
        if not self.live:
            raise DaskTaskError(self.gone_message(), task_id=self.task_id)
        return self.future.result(timeout=timeout).value

    def gone_message(self, reader: str | None = None) -> str:
        who = f"task {reader!r} needs" if reader else "this is"
        return (
            f"{who} the output of task {self.task_id!r} ({self.type_name}), which was kept on the Dask cluster "
            f"(use_dask(keep_outputs=True), key {self.key!r}) and is no longer there: outputs kept on a cluster are "
            "not durable, so a resumed or forked run, or one whose cluster was closed, cannot load them. "
            f"Run the workflow again from {self.task_id!r} (e.g. run.fork({self.task_id!r})), "
            "or use keep_outputs=False so outputs are recorded in the store"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # The store keeps what the value was, never the future.
        return (DaskOutput, (None, self.key, self.type_name, self.repr, self.task_id))

    def __repr__(self) -> str:
        where = "on the Dask cluster" if self.live else "was on the Dask cluster, gone"
        return f"<DaskOutput of {self.task_id!r} {where}: {self.type_name} {self.repr}>"


class _Handle:
    __slots__ = ("futures", "cancelled", "executor")

    def __init__(self, executor: DaskExecutor) -> None:
        self.executor = executor
        self.futures: tuple[Any, ...] = ()
        self.cancelled = False

    def cancel(self) -> bool:
        # After this the attempt never reports, whatever Dask still does with it.
        # Finished futures are cancelled too: that frees their results on the workers.
        self.cancelled = True
        futures, self.futures = self.futures, ()
        if futures:
            try:
                self.executor.client.cancel(list(futures), reason="kernelflow cancelled the attempt (timeout or interrupt)")
            except Exception:  # noqa: BLE001 - a closed client has nothing left to cancel
                pass
        return True


class DaskExecutor:
    """Runs attempts on a Dask cluster; one instance per run, sharing the session's client."""

    name = "dask"

    def __init__(self, max_parallel: int) -> None:
        from kernelflow.dask_api import DaskError, session_for_run

        # No Dask, or no scheduler at $KERNELFLOW_DASK_ADDRESS: each attempt
        # fails with that message (and the retry policy applies), rather than
        # the engine reporting a broken plugin.
        self.unusable: DaskError | None = None
        try:
            self.session = session_for_run()
        except DaskError as exc:
            self.unusable = exc
        else:
            self.client = self.session.client
            self.keep_outputs = self.session.keep_outputs
        self._counter = itertools.count()
        self._keepable: dict[str, bool] = {}
        # Finished futures waiting for their values to be fetched, in one batch, on the event loop.
        self._lock = threading.Lock()
        self._finished: list[tuple[Any, TaskCall, Callable[[TaskOutcome], None], _Handle]] = []
        self._flushing = False

    def submit(self, call: TaskCall, report: Callable[[TaskOutcome], None]) -> _Handle:
        from kernelflow.remote_attempt import UnpicklableTaskError, pack

        handle = _Handle(self)
        if self.unusable is not None:
            error = DaskTaskError(f"task {call.task_id!r}: {self.unusable}", task_id=call.task_id)
            report(TaskOutcome(call, error=error, traceback=f"{type(error).__name__}: {error}\n"))
            return handle
        kept: dict[str, Any] = {}
        for name, value in call.kwargs.items():
            if isinstance(value, DaskOutput):
                if not value.live or value.future.client is not self.client:
                    error = DaskTaskError(value.gone_message(call.task_id), task_id=call.task_id)
                    report(TaskOutcome(call, error=error, traceback=f"{type(error).__name__}: {error}\n"))
                    return handle
                kept[name] = value.future
        try:
            payload = pack(call, WHERE, keep=kept)
        except UnpicklableTaskError as exc:
            report(TaskOutcome(call, error=exc, traceback=f"{type(exc).__name__}: {exc}\n"))
            return handle
        keep = self.keep_outputs and self._keep(call)
        key = self._key(call)
        client = self.client
        try:
            future = client.submit(_attempt, payload, kept, keep, key=key, pure=False)
            if keep:
                summary = client.submit(_summary, future, key=key + "-summary", pure=False)
                handle.futures = (future, summary)
            else:
                summary = future
                handle.futures = (future,)
        except Exception as exc:  # noqa: BLE001 - a closed client, a lost scheduler
            error = DaskTaskError(
                f"task {call.task_id!r} (attempt {call.attempt}): could not send it to the Dask scheduler "
                f"({type(exc).__name__}: {exc}); was the session closed? kf.use_dask() connects again",
                task_id=call.task_id,
            )
            report(TaskOutcome(call, error=error, traceback=f"{type(error).__name__}: {error}\n"))
            return handle
        summary.add_done_callback(lambda fut: self._done(fut, call, report, handle))
        return handle

    def shutdown(self, wait: bool = False) -> None:
        pass  # the session outlives the run; attempts still running were cancelled by the engine

    # --- completion -------------------------------------------------------------------------

    def _done(self, fut: Any, call: TaskCall, report: Callable[[TaskOutcome], None], handle: _Handle) -> None:
        """On Dask's callback thread: failures are reported here, values fetched in a batch."""
        if handle.cancelled:
            return
        status = fut.status
        if status == "finished":
            with self._lock:
                self._finished.append((fut, call, report, handle))
                if self._flushing:
                    return
                self._flushing = True
            self.client.loop.add_callback(self._flush)
            return
        if status == "cancelled":
            error: BaseException = DaskTaskError(
                f"task {call.task_id!r} (attempt {call.attempt}): its Dask future was cancelled outside kernelflow "
                "(the client was closed, the cluster restarted, or someone cancelled the key); "
                "kernelflow's retry policy applies",
                task_id=call.task_id,
            )
        else:
            try:
                exc = fut.exception(timeout=10)
            except Exception as inner:  # noqa: BLE001
                exc = inner
            error = _dask_error(call, exc)
        report(TaskOutcome(call, error=error, traceback=f"{type(error).__name__}: {error}\n"))

    async def _flush(self) -> None:
        """On the client's event loop: fetch the values of every finished attempt at once."""
        while True:
            with self._lock:
                batch, self._finished = self._finished, []
                if not batch:
                    self._flushing = False
                    return
            try:
                await self._fetch([item for item in batch if not item[3].cancelled])
            except BaseException as exc:  # noqa: BLE001 - never leave attempts unreported, nor the flag set
                for _fut, call, report, handle in batch:
                    if not handle.cancelled:
                        error = _dask_error(call, exc)
                        report(TaskOutcome(call, error=error, traceback=f"{type(error).__name__}: {error}\n"))

    async def _fetch(self, live: list[tuple[Any, TaskCall, Callable[[TaskOutcome], None], _Handle]]) -> None:
        from kernelflow.remote_attempt import outcome

        try:
            results = await self.client.gather([item[0] for item in live], asynchronous=True)
        except BaseException:  # noqa: BLE001 - one failed (data lost, cancelled meanwhile): fetch one by one
            results = []
            for fut, *_ in live:
                try:
                    results.append(await self.client.gather(fut, asynchronous=True))
                except BaseException as exc:  # noqa: BLE001 - Dask's CancelledError is a BaseException
                    results.append(exc)
        for (fut, call, report, handle), result in zip(live, results):
            if handle.cancelled:
                continue
            if isinstance(result, BaseException):
                error = _dask_error(call, result)
                report(TaskOutcome(call, error=error, traceback=f"{type(error).__name__}: {error}\n"))
                continue
            try:
                done = outcome(call, result)
            except Exception as exc:  # noqa: BLE001 - the value's class may not exist here
                error = DaskTaskError(
                    f"task {call.task_id!r} returned a value that cannot be loaded here "
                    f"({type(exc).__name__}: {exc}); install the same packages where the workflow runs "
                    "as on the workers, or return plain data",
                    task_id=call.task_id,
                )
                report(TaskOutcome(call, error=error, traceback=f"{type(error).__name__}: {error}\n"))
                continue
            if isinstance(done.value, _Kept):
                if not handle.futures:
                    continue  # cancelled meanwhile
                described = done.value
                value = DaskOutput(handle.futures[0], handle.futures[0].key, described.type_name,
                                   described.text, call.task_id)  # fmt: skip
                done = TaskOutcome(call, value=value, logs=done.logs, logs_truncated=done.logs_truncated)
            report(done)

    # --- naming and keeping -----------------------------------------------------------------

    def _key(self, call: TaskCall) -> str:
        """``task-a<attempt>[-i<item path>]-<run id>-<n>``: Dask groups keys by the task id."""
        item = getattr(call.context, "item", ())
        where = "-i" + ".".join(map(str, item)) if item else ""
        return f"{call.task_id}-a{call.attempt}{where}-{call.run_id}-{next(self._counter)}"

    def _keep(self, call: TaskCall) -> bool:
        """Keep this attempt's output on the cluster? Only when every task that
        reads it is a plain Python task that also runs on Dask."""
        ctx = call.context
        if getattr(ctx, "item", ()) or getattr(ctx, "run", None) is None:
            return False  # forEach items go into the loop's summary, built here
        tid = call.task_id
        cached = self._keepable.get(tid)
        if cached is None:
            cached = self._keepable[tid] = _only_dask_readers(ctx.run.workflow, tid, self.name)
        return cached


def _only_dask_readers(wf: Any, tid: str, name: str) -> bool:
    index = wf._index
    spec = index[tid].spec
    if spec.output is not None or spec.back_to or spec.skip_to or spec.compensate or spec.for_each or spec.kind != "python":
        return False
    readers = wf.downstream()[tid]
    if not readers:
        return False  # its output is (part of) the run's output: bring it back
    for r in readers:
        task = index[r]
        s = task.spec
        if s.kind != "python" or (task.options.executor or wf.executor) != name:
            return False
        if tid in s.task_refs or s.approval is not None or s.compensate or s.for_each:
            return False  # templates, gates and compensations read the value here
    return True


def _dask_error(call: TaskCall, exc: BaseException) -> BaseException:
    """What an attempt that Dask failed is recorded as."""
    if type(exc).__name__ == "KilledWorker":
        worker = getattr(getattr(exc, "last_worker", None), "address", None) or "?"
        tries = getattr(exc, "allowed_failures", 0) + 1
        return WorkerDiedError(
            f"task {call.task_id!r} (attempt {call.attempt}): the Dask worker {worker} running it died "
            f"(killed, out of memory or crashed; {tries} worker{'s' if tries != 1 else ''} died running it, "
            "see the worker's log); kernelflow's retry policy applies",
            task_id=call.task_id,
            worker=None if worker == "?" else worker,
        )
    if isinstance(exc, StepError):
        return exc
    return DaskTaskError(
        f"task {call.task_id!r} (attempt {call.attempt}): Dask failed the attempt: {type(exc).__name__}: {exc}",
        task_id=call.task_id,
    )


# --- on the worker --------------------------------------------------------------------------


class _Kept:
    """What a kept output looks like from the orchestrator: its type and repr."""

    __slots__ = ("type_name", "text")

    def __init__(self, type_name: str, text: str) -> None:
        self.type_name = type_name
        self.text = text

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Kept, (self.type_name, self.text))


def _attempt(payload: bytes, kept: dict[str, Any], keep: bool) -> Any:
    """Run one attempt on the worker. Upstream outputs kept on the cluster
    arrive as the RemoteResult of their attempt; the task gets their values."""
    import cloudpickle

    from kernelflow.remote_attempt import RemoteResult, execute, run_packed

    values = {k: v.value if isinstance(v, RemoteResult) else v for k, v in kept.items()}
    if not keep:
        return run_packed(payload, values, "the orchestrator")
    fn, kwargs, ctx = cloudpickle.loads(payload)
    kwargs.update(values)
    return execute(fn, kwargs, ctx)  # stays in the worker's memory; _summary describes it


def _summary(result: Any) -> Any:
    """What comes back for a kept attempt: its error and prints, and the value's
    type and repr instead of the value (None and loop jumps come back as they are)."""
    from kernelflow.remote_attempt import RemoteResult, _type_name

    value = result.value
    if result.error is not None or value is None or type(value).__name__ == "Jump":
        return result
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001
        text = f"<repr failed: {type(exc).__name__}>"
    if len(text) > 200:
        text = text[:199] + "…"
    return RemoteResult(_Kept(_type_name(value), text), None, None, result.logs, result.logs_truncated)


# --- registration ---------------------------------------------------------------------------


def _health() -> Any:
    from kernelflow.dask_api import health

    return health()


@hookimpl
def kernelflow_register_executors() -> list[ExecutorSpec]:
    return [
        ExecutorSpec(
            "dask",
            DaskExecutor,
            "Python tasks on a Dask cluster (kf.use_dask(), $KERNELFLOW_DASK_ADDRESS, or a local cluster)",
            remote=True,
            health=_health,
        )
    ]
