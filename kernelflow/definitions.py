"""Workflows from plain Python functions: ``kf.workflow(name, [f, g, h])``.

The rule is the same as in a ``%%workflow`` cell: each function is a task
named after it; a parameter named after another task receives that task's
output; every other parameter is a workflow input.
"""

from __future__ import annotations

import inspect
import types
from dataclasses import replace
from typing import Any, Callable, Iterable

from .exceptions import DefinitionError
from .fingerprint import code_fingerprint
from .model import DEFAULT_EXECUTOR, Param, Task, Workflow, gc_paused

_CO_VARARGS = inspect.CO_VARARGS
_CO_VARKEYWORDS = inspect.CO_VARKEYWORDS


def function_of(obj: Any, *, what: str) -> types.FunctionType:
    """The plain function behind ``obj`` (through functools.wraps), or a clear error."""
    target = inspect.unwrap(obj) if callable(obj) else obj
    if not isinstance(target, types.FunctionType):
        raise DefinitionError(
            f"{what} must be a function defined with def, got {type(obj).__name__} {obj!r}",
            hint="pass functions (not classes, partials, lambdas or values); wrap other callables in a def",
        )
    if target.__name__ == "<lambda>":
        raise DefinitionError(
            f"{what} is a lambda; tasks are named after their function",
            hint="define it with `def name(...):` so the task has an id",
        )
    return target


def params_of(fn: types.FunctionType, *, location: str | None = None) -> tuple[Param, ...]:
    """Parameters from the code object (fast: no inspect.signature on the hot path)."""
    code = fn.__code__
    if code.co_flags & (_CO_VARARGS | _CO_VARKEYWORDS):
        raise DefinitionError(
            f"task {fn.__name__!r} takes *args or **kwargs; every parameter must have a name",
            location=location,
            hint="name each dependency and input explicitly",
        )
    n_pos = code.co_argcount
    names = code.co_varnames[: n_pos + code.co_kwonlyargcount]
    defaults = fn.__defaults__ or ()
    kwdefaults = fn.__kwdefaults__ or {}
    first_default = n_pos - len(defaults)
    params = []
    for i, name in enumerate(names):
        if i < n_pos and i >= first_default:
            params.append(Param(name, True, _short_repr(defaults[i - first_default])))
        elif i >= n_pos and name in kwdefaults:
            params.append(Param(name, True, _short_repr(kwdefaults[name])))
        else:
            params.append(Param(name, False, None))
    return tuple(params)


def check_not_self_dependent(task_id: str, params: Iterable[Param], location: str | None = None) -> None:
    if any(p.name == task_id for p in params):
        raise DefinitionError(
            f"task {task_id!r} has a parameter named after itself, so it would depend on its own output",
            location=location,
            hint="rename the parameter (it is then a workflow input) or the function",
        )


def _short_repr(value: Any) -> str:
    text = repr(value)
    if " at 0x" in text:  # keep versions stable across processes
        return f"<{type(value).__name__}>"
    return text if len(text) <= 200 else text[:197] + "..."


def ref_of(fn: types.FunctionType) -> str:
    """``module:qualname`` for importable functions, ``python:name`` for notebook ones."""
    module = getattr(fn, "__module__", None)
    if module and module != "__main__" and "<locals>" not in fn.__qualname__:
        return f"{module}:{fn.__qualname__}"
    return f"python:{fn.__name__}"


def workflow(
    name: str,
    functions: Iterable[Callable[..., Any]],
    *,
    max_parallel: int = 8,
    executor: str = DEFAULT_EXECUTOR,
) -> Workflow:
    """Build a :class:`Workflow` from functions (the Python API twin of ``%%workflow``).

    >>> def extract(): return [1, 2, 3]
    >>> def total(extract): return sum(extract)
    >>> wf = workflow("demo", [extract, total])
    >>> wf.order
    ('extract', 'total')
    """
    if isinstance(functions, (str, bytes)) or not isinstance(functions, Iterable):
        raise DefinitionError(
            f"workflow {name!r}: functions must be a list of functions, got {type(functions).__name__}",
            hint=f"kf.workflow({name!r}, [extract, clean, publish])",
        )
    with gc_paused():
        wf = _workflow_from(name, list(functions), max_parallel, executor)
    from .api import check_executors  # the plugin host is only needed once the model is valid

    check_executors(wf)
    return wf


def _workflow_from(name: str, items: list[Any], max_parallel: int, executor: str) -> Workflow:
    from .catalog import remember
    from .decorators import step_options_of
    from .steps import build_step, cell_locator

    plain = [function_of(f, what=f"workflow {name!r}: item {i}") for i, f in enumerate(items)]
    task_names = {fn.__name__: None for fn in plain}  # ordered, and O(1) membership
    tasks = []
    functions: dict[str, Callable[..., Any]] = {}
    callables: dict[str, Callable[..., Any]] = {}
    aux_hashes: dict[str, str] = {}
    for obj, fn in zip(items, plain):
        options = step_options_of(obj)
        if not options:
            # The common case stays cheap: 10,000 plain functions build in ~100 ms.
            params = params_of(fn)
            check_not_self_dependent(fn.__name__, params)
            deps = tuple(p.name for p in params if p.name in task_names)
            tasks.append(Task(id=fn.__name__, params=params, deps=deps, ref=ref_of(fn), code_hash=code_fingerprint(fn)))
        else:
            built = build_step(
                fn.__name__,
                options,
                task_ids=task_names,
                locate=cell_locator(None),
                workflow_name=name,
                namespace=fn.__globals__,
                function=obj,
                code_hash=code_fingerprint(fn),
            )
            tasks.append(replace(built.task, ref=ref_of(fn)))
            callables.update(built.callables)
            aux_hashes.update(built.aux_hashes)
        functions[fn.__name__] = obj
    wf = Workflow.build(
        name,
        tasks,
        functions=functions,
        max_parallel=max_parallel,
        executor=executor,
        callables=callables,
        aux_hashes=aux_hashes,
    )
    remember(wf)
    return wf
