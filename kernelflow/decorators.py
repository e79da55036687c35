"""Decorators that add behaviour to task functions without wrapping them.

The function stays an ordinary function (callable and testable as is); the
options ride along on an attribute the compilers read.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, TypeVar, overload

from .exceptions import DefinitionError, OptionError
from .model import DEFAULT_OPTIONS, TaskOptions

F = TypeVar("F", bound=Callable[..., Any])
OPTIONS_ATTR = "__kernelflow_task__"


@overload
def task(fn: F) -> F: ...


@overload
def task(
    fn: None = None,
    *,
    retries: int = 0,
    backoff: str = "fixed",
    retry_delay: float | str = 1.0,
    max_delay: float | str = 300.0,
    timeout: float | str | None = None,
    executor: str | None = None,
    after: Iterable[str] | str = (),
) -> Callable[[F], F]: ...


def task(
    fn: Any = None,
    *,
    retries: int = 0,
    backoff: str = "fixed",
    retry_delay: float | str = 1.0,
    max_delay: float | str = 300.0,
    timeout: float | str | None = None,
    executor: str | None = None,
    after: Iterable[str] | str = (),
) -> Any:
    """Mark a function as a task and give it options.

    Use bare (``@kf.task``) or with options::

        @kf.task(retries=3, backoff="exponential", retry_delay="2s", timeout="30s")
        def clean(extract): ...

    ``retries``: extra attempts after a failure or timeout. ``backoff``:
    ``"fixed"`` waits ``retry_delay`` between attempts, ``"exponential"``
    doubles it each time, capped at ``max_delay``. ``timeout``: seconds or a
    string like ``"500ms"``, ``"30s"``, ``"5m"``. ``executor``: run this task
    on another executor than the workflow's. ``after``: tasks that must finish
    first without passing their output.
    """
    if fn is not None and not callable(fn):
        raise OptionError(
            f"@kf.task takes its options by keyword, e.g. @kf.task(retries=3); got {fn!r}"
        )
    options = TaskOptions.build(
        retries=retries,
        backoff=backoff,
        retry_delay=retry_delay,
        max_delay=max_delay,
        timeout=timeout,
        executor=executor,
        after=after,
    )

    def mark(f: F) -> F:
        if not inspect.isfunction(inspect.unwrap(f)):
            raise DefinitionError(
                f"@kf.task decorates functions defined with def; got {type(f).__name__} {f!r}",
                hint="put @kf.task directly above a `def`",
            )
        setattr(f, OPTIONS_ATTR, options)
        return f

    return mark(fn) if fn is not None else mark


def options_of(fn: Callable[..., Any]) -> TaskOptions:
    return getattr(fn, OPTIONS_ATTR, None) or DEFAULT_OPTIONS
