"""What a task can ask while it runs: its context, and recorded time, randomness and side effects.

``kf.now()``, ``kf.random()``, ``kf.remember(fn, ...)`` and ``kf.sleep(s)``
called inside a task record their result as a ``SideEffectRecorded`` event
before returning it. When the task runs again for the same logical step —
a retry, a resume after a crash, a replay — the same calls return the
recorded values instead, so the task sees the world it saw the first time
and a remembered side effect (a payment, an e-mail) is not made twice.

Calls are matched by kind and position: the third ``kf.now()`` of a step gets
the third recorded time. A "step" is one task in one loop iteration (and one
``forEach`` item): its :attr:`TaskContext.scope`, which is also the root of the
idempotency key. Outside a task the functions simply do the live thing.
"""

from __future__ import annotations

import contextvars
import inspect
import random as _random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

import orjson

from .exceptions import KernelflowError

if TYPE_CHECKING:  # pragma: no cover
    from .run import Run

T = TypeVar("T")
INLINE_LIMIT = 2048


@dataclass
class TaskContext:
    """Where the calling code runs: returned by :func:`context` inside a task."""

    run_id: str
    workflow: str
    task_id: str
    attempt: int
    iteration: int = 0
    item: tuple[int, ...] = ()
    """The forEach item path when the task body runs once per item."""
    run: Run | None = field(default=None, repr=False)
    _counters: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def scope(self) -> str:
        """``task#iteration`` (plus ``[i,j]`` for a forEach item): one logical step."""
        base = f"{self.task_id}#{self.iteration}"
        return base + ("[" + ",".join(map(str, self.item)) + "]" if self.item else "")

    @property
    def idempotency_key(self) -> str:
        """Stable for this step across retries, resumes and replays: pass it
        to external services so a repeated call (at-least-once) is recognised."""
        return f"{self.run_id}/{self.scope}"

    def _next(self, kind: str) -> int:
        n = self._counters.get(kind, 0)
        self._counters[kind] = n + 1
        return n


_CURRENT: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar("kernelflow_task", default=None)


def context() -> TaskContext:
    """The running task's context: ``run_id``, ``task_id``, ``attempt``,
    ``iteration``, ``item`` and ``idempotency_key``.

    Raises :class:`KernelflowError` outside a task.
    """
    ctx = _CURRENT.get()
    if ctx is None:
        raise KernelflowError(
            "kf.context() is only available inside a running task; call it from a task function"
        )
    return ctx


def current_context() -> TaskContext | None:
    """The running task's context, or None outside a task (unlike :func:`context`, no error)."""
    return _CURRENT.get()


def bind(ctx: TaskContext, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` wrapped so that it runs with ``ctx`` as the current task context."""

    def with_context(**kwargs: Any) -> Any:
        token = _CURRENT.set(ctx)
        try:
            result = fn(**kwargs)
        finally:
            _CURRENT.reset(token)
        if result is not None and inspect.isawaitable(result):  # None: most tasks, and cheap to rule out
            return _awaited_with(ctx, result)
        return result

    with_context.__wrapped__ = fn  # type: ignore[attr-defined]
    return with_context


def _wrapper_codes() -> frozenset[Any]:
    probe = bind(TaskContext("", "", "", 0), lambda: None)
    return frozenset({probe.__code__, _awaited_with.__code__})


async def _awaited_with(ctx: TaskContext, awaitable: Any) -> Any:
    # A coroutine body runs when awaited, after with_context returned: set the context again there.
    token = _CURRENT.set(ctx)
    try:
        return await awaitable
    finally:
        _CURRENT.reset(token)


WRAPPER_CODES = _wrapper_codes()
"""Code objects of our wrappers: executors leave them out of user tracebacks."""


class Recorded:
    """Side effects recorded for one run, by ``(scope, kind, call)``; filled
    from the run's history on resume and replay, and as calls are made."""

    def __init__(self, entries: Mapping[tuple[str, str, int], Mapping[str, Any]] | None = None) -> None:
        self._entries: dict[tuple[str, str, int], Mapping[str, Any]] = dict(entries or {})
        self._lock = threading.Lock()

    @classmethod
    def from_events(cls, events: Any) -> Recorded:
        from . import events as ev

        entries = {}
        for e in events:
            if e.type == ev.SIDE_EFFECT_RECORDED:
                p = e.payload
                entries[(p.get("scope"), p.get("kind"), int(p.get("call", 0)))] = p
        return cls(entries)

    def get(self, scope: str, kind: str, call: int) -> Mapping[str, Any] | None:
        with self._lock:
            return self._entries.get((scope, kind, call))

    def put(self, payload: Mapping[str, Any]) -> None:
        with self._lock:
            self._entries[(payload["scope"], payload["kind"], int(payload["call"]))] = payload

    def __len__(self) -> int:
        return len(self._entries)


def _record(ctx: TaskContext, kind: str, call: int, value: Any, extra: Mapping[str, Any] | None = None) -> None:
    run = ctx.run
    assert run is not None
    payload: dict[str, Any] = {"kind": kind, "call": call, "scope": ctx.scope, **(extra or {})}
    try:
        encoded = orjson.dumps(value)
        inline = len(encoded) <= INLINE_LIMIT and orjson.loads(encoded) == value
    except (TypeError, orjson.JSONEncodeError):
        inline = False
    if inline:
        payload["value"] = value
    else:
        try:
            ref = run.store.save_artifact(run.run_id, f"{ctx.task_id}.{kind}{call}", ctx.attempt, value)
        except TypeError as exc:
            raise KernelflowError(
                f"task {ctx.task_id!r}: kf.{kind}() cannot record its result: {exc}"
            ) from None
        payload["value_ref"] = dict(ref)
    run._record_side_effect(ctx, payload)


def _recorded_value(ctx: TaskContext, entry: Mapping[str, Any]) -> Any:
    if "value_ref" in entry and ctx.run is not None:
        return ctx.run.store.load_artifact(entry["value_ref"])
    return entry.get("value")


def now() -> datetime:
    """The current time (UTC, timezone-aware). Inside a task it is recorded, and
    a retry, resume or replay of the same step gets the recorded time."""
    ctx = _CURRENT.get()
    if ctx is None or ctx.run is None:
        return datetime.now(timezone.utc)
    call = ctx._next("now")
    entry = ctx.run._recorded.get(ctx.scope, "now", call)
    if entry is not None:
        return datetime.fromisoformat(str(entry["value"]))
    value = datetime.now(timezone.utc)
    _record(ctx, "now", call, value.isoformat())
    return value


def random() -> float:
    """A float in [0, 1). Inside a task it comes from a generator seeded by the
    run and step (so runs are reproducible) and is recorded."""
    ctx = _CURRENT.get()
    if ctx is None or ctx.run is None:
        return _random.random()
    call = ctx._next("random")
    entry = ctx.run._recorded.get(ctx.scope, "random", call)
    if entry is not None:
        return float(entry["value"])
    rng = _random.Random(f"{ctx.run_id}/{ctx.scope}/{call}")
    value = rng.random()
    _record(ctx, "random", call, value)
    return value


def remember(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)`` once per step and record its result.

    Use it for side effects and for anything that may differ between calls
    (an API read, a payment): on retry, resume and replay the recorded result
    is returned and ``fn`` is not called again. Exceptions are not recorded:
    a call that raised is made again next time. The result must be storable
    (JSON, a table, or picklable).
    """
    ctx = _CURRENT.get()
    if ctx is None or ctx.run is None:
        return fn(*args, **kwargs)
    call = ctx._next("remember")
    entry = ctx.run._recorded.get(ctx.scope, "remember", call)
    if entry is not None:
        return _recorded_value(ctx, entry)  # type: ignore[no-any-return]
    value = fn(*args, **kwargs)
    name = getattr(fn, "__qualname__", None) or repr(fn)
    _record(ctx, "remember", call, value, {"name": name})
    return value


def sleep(seconds: float) -> None:
    """Sleep durably: the wake-up time is recorded, so a step that runs again
    after a crash sleeps only what is left. Outside a task: ``time.sleep``."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise KernelflowError(f"kf.sleep() needs a number of seconds >= 0, got {seconds!r}")
    ctx = _CURRENT.get()
    if ctx is None or ctx.run is None:
        time.sleep(seconds)
        return
    call = ctx._next("sleep")
    entry = ctx.run._recorded.get(ctx.scope, "sleep", call)
    if entry is not None:
        wake_at = float(entry["value"])
    else:
        wake_at = time.time() + seconds
        _record(ctx, "sleep", call, wake_at, {"seconds": seconds})
    if ctx.run._replaying:
        return  # a replay does not wait
    left = wake_at - time.time()
    if left > 0:
        time.sleep(left)
