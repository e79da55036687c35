"""A task attempt that runs in another process: what goes there, what comes back.

The process and Dask executors send the user's function, its arguments and
its task context (without the run: the run, its store and its events stay
with the orchestrator) pickled with cloudpickle, so functions and classes
defined in notebook cells travel by value. The other side runs the attempt
with the context set and its prints captured, and sends back a
:class:`RemoteResult`.

Whatever cannot travel is named: the task, the argument or the function, and
the type of the object, never a bare pickling traceback from inside a pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Callable

import cloudpickle

from .durable import TaskContext, bind
from .executor_api import TaskCall, TaskOutcome
from .step_errors import StepError


class UnpicklableTaskError(StepError):
    """A task's function, argument or result cannot be pickled to cross to or
    from another process; the message names the task and the object."""


class RemoteTaskError(Exception):
    """Stands in for an exception raised in another process that could not be
    pickled back; keeps its type name and message."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteTaskError, (self.type_name, self.message))


@dataclass(frozen=True, slots=True)
class RemoteResult:
    """What an attempt in another process sends back."""

    value: Any = None
    error: BaseException | None = None
    traceback: str | None = None
    logs: str | None = None
    logs_truncated: bool = False


def remote_parts(call: TaskCall) -> tuple[Callable[..., Any], dict[str, Any], TaskContext]:
    """The user's function, its keyword arguments and its context without the run."""
    fn = getattr(call.fn, "__wrapped__", call.fn)
    ctx = call.context
    if isinstance(ctx, TaskContext):
        ctx = dataclasses.replace(ctx, run=None, _counters={})
    else:
        ctx = TaskContext(call.run_id, "", call.task_id, call.attempt)
    return fn, dict(call.kwargs), ctx


def pack(call: TaskCall, where: str, *, keep: Collection[str] = ()) -> bytes:
    """The attempt pickled for :func:`run_packed`; the arguments named in
    ``keep`` are left out (an executor passes them itself, e.g. Dask futures).

    Raises :class:`UnpicklableTaskError` naming the task and the object that
    cannot be pickled; ``where`` says where it was going ("a Dask worker").
    """
    fn, kwargs, ctx = remote_parts(call)
    sent = {k: v for k, v in kwargs.items() if k not in keep}
    try:
        return cloudpickle.dumps((fn, sent, ctx))
    except Exception as exc:  # noqa: BLE001 - find which part it was, below
        raise unpicklable_error(call.task_id, fn, sent, where, exc) from None


def unpicklable_error(task_id: str, fn: Callable[..., Any], kwargs: Mapping[str, Any], where: str,
                      exc: BaseException) -> UnpicklableTaskError:  # fmt: skip
    """The error for an attempt that did not pickle: which part, which object."""
    for name, value in kwargs.items():
        try:
            cloudpickle.dumps(value)
        except Exception as inner:  # noqa: BLE001
            return UnpicklableTaskError(
                f"task {task_id!r}: argument {name!r} is a {_type_name(value)}, which cannot be sent to {where} "
                f"({type(inner).__name__}: {inner}). Pass something picklable (a path, a query, plain data) "
                "and open the resource inside the task, or run this task on executor 'threads'",
                task_id=task_id,
            )
    name = getattr(fn, "__qualname__", None) or repr(fn)
    return UnpicklableTaskError(
        f"task {task_id!r}: its function {name} cannot be sent to {where} ({type(exc).__name__}: {exc}). "
        "It probably refers to an object that cannot be pickled (a lock, a connection, an open file): "
        "create that object inside the function, or run this task on executor 'threads'",
        task_id=task_id,
    )


def execute(fn: Callable[..., Any], kwargs: Mapping[str, Any], ctx: TaskContext) -> RemoteResult:
    """Run one attempt here (in the worker process), with ``ctx`` as the task
    context and prints captured; every exception is returned, not raised."""
    from .plugins.thread_executor import format_user_traceback
    from .task_logs import capture

    with capture() as out:
        try:
            value = bind(ctx, fn)(**kwargs)
            if inspect.isawaitable(value):
                value = asyncio.run(_await(value))
            error, tb = None, None
        except BaseException as exc:  # noqa: BLE001 - the task's failure is data for the orchestrator
            value, error, tb = None, _sendable(exc), format_user_traceback(exc)
    return RemoteResult(value, error, tb, out.text or None, out.truncated)


def run_packed(payload: bytes, kept: Mapping[str, Any] | None = None, where: str = "the orchestrator") -> bytes:
    """Worker side of :func:`pack`: run the attempt and return the pickled
    :class:`RemoteResult` (a result that cannot be pickled becomes an
    :class:`UnpicklableTaskError` naming the task and the value's type)."""
    fn, kwargs, ctx = cloudpickle.loads(payload)
    if kept:
        kwargs.update(kept)
    result = execute(fn, kwargs, ctx)
    try:
        return cloudpickle.dumps(result)
    except Exception as exc:  # noqa: BLE001
        error = UnpicklableTaskError(
            f"task {ctx.task_id!r} returned a {_type_name(result.value)}, which cannot be sent back to {where} "
            f"({type(exc).__name__}: {exc}); return plain data (or write it to a file and return the path)",
            task_id=ctx.task_id,
        )
        return cloudpickle.dumps(RemoteResult(None, error, None, result.logs, result.logs_truncated))


def outcome(call: TaskCall, result: RemoteResult | bytes) -> TaskOutcome:
    """The engine's :class:`TaskOutcome` for what came back."""
    if isinstance(result, (bytes, bytearray)):
        result = cloudpickle.loads(result)
    assert isinstance(result, RemoteResult)
    return TaskOutcome(call, value=result.value, error=result.error, traceback=result.traceback,
                       logs=result.logs, logs_truncated=result.logs_truncated)  # fmt: skip


def _sendable(exc: BaseException) -> BaseException:
    try:
        cloudpickle.loads(cloudpickle.dumps(exc))
    except Exception:  # noqa: BLE001 - send its type and message instead
        return RemoteTaskError(type(exc).__qualname__, str(exc))
    return exc


def _type_name(value: Any) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ in ("builtins", "__main__") else f"{t.__module__}.{t.__qualname__}"


async def _await(awaitable: Any) -> Any:
    return await awaitable
