"""Decorators that add behaviour to task functions without wrapping them.

The function stays an ordinary function (callable and testable as is); the
options ride along on an attribute the compilers read and hand to
:func:`kernelflow.steps.build_step`, the same code that reads YAML steps.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Mapping, TypeVar, overload

from .exceptions import DefinitionError, OptionError
from .model import DEFAULT_OPTIONS, TaskOptions

F = TypeVar("F", bound=Callable[..., Any])
STEP_ATTR = "__kernelflow_step__"
ALERTS_ATTR = "__kernelflow_alerts__"
"""Where ``@kf.task(alerts=...)`` keeps a task's anomaly rules (read by the detector)."""

_UNSET: Any = object()


def _locate_nowhere(key: str | None = None) -> str | None:
    return None


def check_options(options: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Canonical option names, and the checks that need no workflow (types, ranges).

    Raising here puts the error on the decorator's line; what needs the whole
    workflow (template references, jump targets) is checked when it is built.
    """
    from . import steps

    try:
        return _check_options(options, what)
    except DefinitionError as exc:
        if exc.hint:
            raise
        raise steps.with_hint(exc) from None


def _check_options(options: Mapping[str, Any], what: str) -> dict[str, Any]:
    from . import steps

    opts = steps.canonical_keys(options, _locate_nowhere, what)
    steps._task_options(opts, steps._names(opts.get("needs", ()), "needs", _locate_nowhere, what), _locate_nowhere, what)
    if opts.get("for_each") is not None:
        steps._for_each(opts["for_each"], _locate_nowhere, what)
    for key in ("back_to", "skip_to"):
        if opts.get(key) is not None:
            steps._jump(opts[key], key, _locate_nowhere, what)
    if opts.get("when") is not None:
        from .expressions import parse_condition

        if not isinstance(opts["when"], str):
            raise OptionError(f"{what}: when must be a condition such as \"{{{{inputs.n}}}} > 3\", got {opts['when']!r}")
        parse_condition(opts["when"])
    return opts


@overload
def task(fn: F) -> F: ...


@overload
def task(fn: None = None, **options: Any) -> Callable[[F], F]: ...


def task(
    fn: Any = None,
    *,
    retries: int = _UNSET,
    max_attempts: int = _UNSET,
    backoff: str = _UNSET,
    retry_delay: float | str = _UNSET,
    max_delay: float | str = _UNSET,
    jitter: float = _UNSET,
    retry_on: Iterable[type[BaseException] | str] | type[BaseException] = _UNSET,
    timeout: float | str | None = _UNSET,
    on_timeout: str = _UNSET,
    executor: str | None = _UNSET,
    after: Iterable[str] | str = _UNSET,
    when: str = _UNSET,
    input: Mapping[str, Any] = _UNSET,  # noqa: A002 - the YAML key's name
    output: Mapping[str, str] = _UNSET,
    for_each: Mapping[str, Any] | str = _UNSET,
    back_to: str | Mapping[str, Any] = _UNSET,
    skip_to: str | Mapping[str, Any] = _UNSET,
    continue_on_failure: bool = _UNSET,
    fallback: Callable[..., Any] | str = _UNSET,
    compensate: Callable[..., Any] | str = _UNSET,
    circuit_breaker: Mapping[str, Any] | bool = _UNSET,
    alerts: Mapping[str, Any] = _UNSET,
) -> Any:
    """Mark a function as a task and give it options (the YAML step keys, in Python).

    Use bare (``@kf.task``) or with options::

        @kf.task(retries=3, backoff="exponential", retry_delay="2s", timeout="30s")
        def clean(extract): ...

    Attempts: ``retries`` extra attempts (or ``max_attempts`` in all) after a
    failure; ``backoff`` ``"fixed"``, ``"linear"`` or ``"exponential"`` from
    ``retry_delay``, capped at ``max_delay``; ``jitter`` spreads delays by a
    fraction; ``retry_on`` limits retries to these exception types.
    ``timeout`` (seconds or ``"500ms"``, ``"30s"``, ``"5m"``) with
    ``on_timeout`` ``"retry"`` (default), ``"fail"``, ``"skip"`` or
    ``"fallback"``. ``executor``: run on another executor than the workflow's.
    ``after``: tasks that must finish first without passing their output.

    Flow: ``when`` a condition (``"{{inputs.n}} > 3 && {{tasks.check.output.ok}}"``);
    ``input`` parameter values or templates; ``output`` a mapping of fields
    from the result (``{"ids": "{{output.items}}"}``); ``for_each``
    (``{"items": "{{tasks.parse.output.ids}}", "as": "id", "max_parallel": 5}``,
    see also :func:`for_each`); ``back_to`` / ``skip_to`` a task id or
    ``{"step": ..., "when": ..., "max_iterations": ...}``;
    ``continue_on_failure``: dependents run even if this fails.

    Resilience: ``fallback`` a function giving the output when the task fails
    for good, times out with ``on_timeout="fallback"`` or its circuit is open;
    ``compensate`` a function undoing the task when the run fails (called with
    the task's output; saga order: last completed first); ``circuit_breaker``
    ``True`` or ``{"failure_threshold": 5, "window": "60s", "break_duration": "30s",
    "half_open_probes": 1, "name": ...}`` (state shared by all runs).

    Monitoring: ``alerts`` this task's anomaly rules over the workflow's
    (``{"duration": {"z": 3}, "stuck": False}``; see docs/alerts.md).
    """
    if fn is not None and not callable(fn):
        raise OptionError(f"@kf.task takes its options by keyword, e.g. @kf.task(retries=3); got {fn!r}")
    given = {k: v for k, v in locals().items() if k not in ("fn", "alerts") and v is not _UNSET}
    opts = check_options(given, "@kf.task")
    if alerts is not _UNSET:
        from .alert_rules import DEFAULTS, parse_task_rules

        parse_task_rules(alerts, DEFAULTS, where="@kf.task(alerts=...)")  # checked here, on the decorator's line

    def mark(f: F) -> F:
        if not inspect.isfunction(inspect.unwrap(f)):
            raise DefinitionError(
                f"@kf.task decorates functions defined with def; got {type(f).__name__} {f!r}",
                hint="put @kf.task directly above a `def`",
            )
        current = dict(getattr(f, STEP_ATTR, {}))
        loops = current.pop("for_each", None)
        current.update(opts)
        if loops is not None and "for_each" not in opts:
            current["for_each"] = loops
        setattr(f, STEP_ATTR, current)
        if alerts is not _UNSET:
            setattr(f, ALERTS_ATTR, dict(alerts))
        return f

    return mark(fn) if fn is not None else mark


def for_each(
    items: str | list[Any],
    *,
    as_: str = "item",
    max_parallel: int | None = None,
    on_failure: str = "fail",
) -> Callable[[F], F]:
    """Run the task once per item; the item is passed as the parameter ``as_``.

    ``items`` is a list or a template giving one (``"{{tasks.parse.output.ids}}"``).
    Stack the decorator to nest loops (the top one is the outer loop; inner
    ``items`` may read ``{{forEach.item}}`` of the loop around them as
    ``{{forEach.$parent.item}}``... see docs/control-flow.md). The task's output is
    ``{"outputs": [...in item order...], "count", "succeeded", "failed", "errors"}``.
    ``on_failure``: ``"fail"`` (the task fails if an item fails) or ``"continue"``.
    """
    loop = {"items": items, "as": as_, "max_parallel": max_parallel, "on_failure": on_failure}
    from . import steps

    steps._for_each(loop, _locate_nowhere, "@kf.for_each")

    def mark(f: F) -> F:
        current = dict(getattr(f, STEP_ATTR, {}))
        loops = current.get("for_each") or []
        if isinstance(loops, Mapping):
            loops = [loops]
        # Decorators apply bottom-up: the one applied last is written on top, the outer loop.
        current["for_each"] = [loop, *loops]
        setattr(f, STEP_ATTR, current)
        return f

    return mark


def step_options_of(fn: Callable[..., Any]) -> dict[str, Any]:
    """The step options a decorator attached (empty for a plain function)."""
    return dict(getattr(fn, STEP_ATTR, None) or {})


def options_of(fn: Callable[..., Any]) -> TaskOptions:
    """Just the attempt options (retries, timeout, executor, after) of a decorated function."""
    from . import steps

    opts = step_options_of(fn)
    if not opts:
        return DEFAULT_OPTIONS
    needs = steps._names(opts.get("needs", ()), "needs", _locate_nowhere, "task") + steps._names(
        opts.get("after", ()), "after", _locate_nowhere, "task"
    )
    return steps._task_options(opts, needs, _locate_nowhere, "task")


def approval(
    message: str = "Approve this step?",
    *,
    preview: str | None = None,
    input: Mapping[str, Any] | type | None = None,  # noqa: A002 - the YAML key's name
    timeout: float | str | None = None,
    on_timeout: str = _UNSET,
    on_reject: str = "fail",
) -> Callable[[F], F]:
    """Pause the run before this task until a person approves it.

    ``message`` may name the task's parameters (``"Publish {n} rows to {table}?"``;
    ``{n}`` is the length of the data previewed) or hold ``{{templates}}``.
    ``preview``: the parameter whose value is shown (default: the first).
    ``input``: fields the approver fills in — ``{"table": str, "limit": int}``
    or a pydantic model; the task receives them as parameters of the same
    name, and the whole answer as a parameter named ``approval``
    (:class:`kernelflow.gates.Approval`). ``timeout`` with ``on_timeout``
    ``"reject"`` (default), ``"approve"``, ``"skip"`` or ``"fail"``.
    A rejection fails the task (``on_reject="fail"``) or skips it (``"skip"``).

    Answer with ``kf.approve(run_id, "task", **input)`` / ``kf.reject(...)``
    from any process, or ``kernelflow approve RUN TASK``.
    """
    gate: dict[str, Any] = {"message": message, "on_reject": on_reject}
    if preview is not None:
        gate["preview"] = preview
    if input is not None:
        gate["input"] = input
    if timeout is not None:
        gate["timeout"] = timeout
    if on_timeout is not _UNSET:
        gate["on_timeout"] = on_timeout
    from .gates import parse_approval

    parse_approval(gate, _locate_nowhere, "@kf.approval", None)  # shape errors now; names at definition

    def mark(f: F) -> F:
        if not inspect.isfunction(inspect.unwrap(f)):
            raise DefinitionError(
                f"@kf.approval decorates functions defined with def; got {type(f).__name__} {f!r}",
                hint="put @kf.approval directly above a `def` (or above @kf.task)",
            )
        current = dict(getattr(f, STEP_ATTR, {}))
        current["approval"] = gate
        setattr(f, STEP_ATTR, current)
        return f

    return mark
