"""Compile the Python body of a ``%%workflow`` cell into a :class:`Workflow`.

The cell runs as ordinary Python in the user's namespace. Every top-level
``def`` whose name does not start with ``_`` is a task (``_helpers`` are
not). Line numbers in errors and tracebacks are the cell's own: line 1 is the
``%%workflow`` line, so the body starts on line 2.

Structure (syntax, duplicate tasks, *args, cycles through parameters) is
checked before the cell runs; whatever fails, nothing is bound to the
workflow's name.
"""

from __future__ import annotations

import ast
import hashlib
import linecache
import types
from typing import Any, Callable, MutableMapping

from dataclasses import replace

from .catalog import remember
from .decorators import step_options_of
from .definitions import check_not_self_dependent, function_of
from .exceptions import DefinitionError, KernelflowError
from .fingerprint import strip_docstrings
from .model import DEFAULT_EXECUTOR, Param, Task, Workflow, gc_paused
from .steps import build_step, cell_locator


def compile_cell(
    name: str,
    body: str,
    namespace: MutableMapping[str, Any],
    *,
    max_parallel: int = 8,
    executor: str = DEFAULT_EXECUTOR,
    filename: str | None = None,
    first_line: int = 2,
    cell_text: str | None = None,
) -> Workflow:
    """Run ``body`` in ``namespace`` and return the workflow it defines (not yet bound).

    ``first_line`` is the cell line of the body's first line; ``filename`` is
    the name tracebacks show (IPython passes its cell filename) and
    ``cell_text`` the whole cell, registered with linecache so tracebacks from
    tasks quote the user's lines.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise DefinitionError(
            f"workflow name must be a Python identifier, got {name!r}",
            location="cell line 1",
            hint="write %%workflow my_flow (letters, digits, underscores)",
        )
    filename = filename or f"<workflow {name}>"
    padded = "\n" * (first_line - 1) + body
    if cell_text is not None or filename.startswith("<"):
        text = cell_text if cell_text is not None else padded
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)

    tree, code, defs, assigned, static_tasks = check_structure(
        name, padded, filename, first_line, max_parallel=max_parallel, executor=executor
    )
    with gc_paused():
        # The code object is independent of the tree, so fingerprinting may
        # strip docstrings in place: one pass, no copies.
        task_hashes, source_hash = _fingerprints(tree)
    try:
        exec(code, namespace)  # noqa: S102 - the cell is the user's own code
    except KernelflowError as exc:
        line = _cell_line(exc, filename)
        if isinstance(exc, DefinitionError) and exc.location is None and line:
            raise type(exc)(exc.message, location=f"cell line {line}", hint=exc.hint) from None
        raise
    except Exception as exc:
        line = _cell_line(exc, filename)
        raise DefinitionError(
            f"the cell raised {type(exc).__name__}: {exc}",
            location=f"cell line {line}" if line else None,
            hint="fix the error; the workflow was not defined (definitions made before it stay in the namespace)",
        ) from exc

    from .step_factories import StepDef

    steps_here = {sid: namespace.get(sid) for sid in assigned}
    for sid, value in steps_here.items():
        if not isinstance(value, StepDef):
            raise DefinitionError(
                f"{sid!r} was assigned a step on cell line {assigned[sid].lineno}, but holds "
                f"{type(value).__name__} after the cell ran",
                location=f"cell line {assigned[sid].lineno}",
                hint=f"assign {sid!r} only once in the cell",
            )
    # A function used as a switch case, fallback or compensation belongs to that step.
    used = _functions_used_by_steps(
        [step_options_of(namespace.get(t.id)) for t in static_tasks] + [v.options for v in steps_here.values()]
    )
    task_ids = [t.id for t in static_tasks if namespace.get(t.id) not in used] + list(assigned)
    task_set = set(task_ids)
    tasks = []
    functions: dict[str, Callable[..., Any]] = {}
    callables: dict[str, Callable[..., Any]] = {}
    aux_hashes: dict[str, str] = {}
    for static in static_tasks:
        obj = namespace.get(static.id)
        if static.id not in task_ids:
            continue
        where = f"cell line {static.line}"
        try:
            function_of(obj, what=f"{static.id!r}")  # raises unless a plain function is behind it
        except DefinitionError as exc:
            raise DefinitionError(
                f"task {static.id!r} is not a function after its decorators: {exc.message}",
                location=where,
                hint="remove the decorator that replaces it, or rename it with a leading _ to make it a helper",
            ) from None
        options = step_options_of(obj)
        if not options:
            # The common case stays cheap: a plain function is exactly its static task.
            tasks.append(replace(static, deps=tuple(d for d in static.deps if d in task_set), ref=f"python:{static.id}", code_hash=task_hashes[static.id]))
            functions[static.id] = obj
            continue
        built = build_step(
            static.id,
            options,
            task_ids=task_ids,
            locate=cell_locator(static.line),
            workflow_name=name,
            namespace=namespace,
            function=obj,
            line=static.line,
            code_hash=task_hashes[static.id],
        )
        # Found again by name in the notebook namespace.
        tasks.append(replace(built.task, ref=f"python:{static.id}"))
        functions[static.id] = obj
        callables.update(built.callables)
        aux_hashes.update(built.aux_hashes)
    for sid, node in assigned.items():
        built = build_step(
            sid,
            steps_here[sid].options,
            task_ids=task_ids,
            locate=cell_locator(node.lineno),
            workflow_name=name,
            namespace=namespace,
            line=node.lineno,
        )
        tasks.append(built.task)
        if built.function is not None:
            functions[sid] = built.function
        callables.update(built.callables)
        aux_hashes.update(built.aux_hashes)
    tasks.sort(key=lambda t: t.line or 0)
    wf = Workflow.build(
        name,
        tasks,
        functions=functions,
        max_parallel=max_parallel,
        executor=executor,
        source=body,
        source_hash=source_hash,
        callables=callables,
        aux_hashes=aux_hashes,
    )
    from .api import check_executors
    from .subworkflows import check_calls

    check_calls(wf, namespace)
    check_executors(wf, location_of=lambda tid: f"cell line {wf[tid].line}")
    remember(wf)
    return wf


STEP_FACTORIES = frozenset({"shell", "http", "notebook", "subworkflow", "switch", "step"})


def _step_assignments(tree: ast.Module) -> dict[str, ast.Assign]:
    """``name = kf.shell(...)`` (any of the step factories) at the top level."""
    found: dict[str, ast.Assign] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        call = node.value
        if not isinstance(call, ast.Call):
            continue
        func = call.func
        attr = func.attr if isinstance(func, ast.Attribute) else None
        if attr in STEP_FACTORIES and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            target = node.targets[0].id
            if target.startswith("_"):
                continue
            if target in found:
                raise DefinitionError(
                    f"task {target!r} is defined twice (cell lines {found[target].lineno} and {node.lineno})",
                    location=f"cell line {node.lineno}",
                    hint=f"rename one of the two steps named {target!r}",
                )
            found[target] = node
    return found


def _functions_used_by_steps(options: list[dict[str, Any]]) -> set[Any]:
    used: set[Any] = set()
    for opts in options:
        for key in ("fallback", "compensate"):
            if callable(opts.get(key)):
                used.add(opts[key])
        switch = opts.get("switch")
        if isinstance(switch, dict):
            used.update(v for v in (switch.get("cases") or {}).values() if callable(v))
            if callable(switch.get("default")):
                used.add(switch["default"])
        if callable(opts.get("run")):
            used.add(opts["run"])
    return used


def _task_defs(tree: ast.Module) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    defs: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            if node.name in defs:
                raise DefinitionError(
                    f"task {node.name!r} is defined twice (cell lines {defs[node.name].lineno} and {node.lineno})",
                    location=f"cell line {node.lineno}",
                    hint=f"rename or delete one of the two definitions of {node.name!r}",
                )
            defs[node.name] = node
    return defs


def _static_tasks(defs: dict[str, ast.FunctionDef | ast.AsyncFunctionDef], steps: set[str] = frozenset()) -> list[Task]:
    tasks = []
    for tid, node in defs.items():
        where = f"cell line {node.lineno}"
        args = node.args
        if args.vararg or args.kwarg:
            raise DefinitionError(
                f"task {tid!r} takes *args or **kwargs; every parameter must have a name",
                location=where,
                hint="name each dependency and input explicitly",
            )
        positional = args.posonlyargs + args.args
        defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
        try:
            params = [_param(a, d) for a, d in zip(positional, defaults)]
            params += [_param(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
        except RecursionError:  # ast.unparse recurses once per level of the default's expression
            raise DefinitionError(
                f"task {tid!r}: a parameter's default value nests too deeply to be recorded",
                location=where,
                hint="compute the default in a helper function and give the parameter a simple default",
            ) from None
        check_not_self_dependent(tid, params, location=where)
        deps = tuple(p.name for p in params if p.name in defs or p.name in steps)
        tasks.append(Task(id=tid, params=tuple(params), deps=deps, line=node.lineno))
    return tasks


def _fingerprints(tree: ast.Module) -> tuple[dict[str, str], str]:
    """Per-task code hashes and the whole cell's hash (helpers and imports are
    behaviour too), from one dump of each top-level statement."""
    strip_docstrings(tree)
    whole = hashlib.sha256()
    tasks: dict[str, str] = {}
    for node in tree.body:
        dumped = ast.dump(node, annotate_fields=False).encode()  # without positions (the default)
        whole.update(dumped)
        whole.update(b"\x00")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            tasks[node.name] = hashlib.sha256(dumped).hexdigest()[:16]
    return tasks, whole.hexdigest()[:16]


def _param(arg: ast.arg, default: ast.expr | None) -> Param:
    if default is None:
        return Param(arg.arg)  # no default
    return Param(arg.arg, True, ast.unparse(default))


def _cell_line(exc: BaseException, filename: str) -> int | None:
    """The deepest traceback line that is in the cell."""
    line = None
    tb: types.TracebackType | None = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def check_structure(
    name: str, padded: str, filename: str, first_line: int, *, max_parallel: int = 8, executor: str = DEFAULT_EXECUTOR
) -> tuple[ast.Module, types.CodeType, dict[str, Any], dict[str, Any], list[Task]]:
    """Every check of a Python cell body that needs no execution: syntax, tasks
    defined twice, no tasks, a workflow named like a task, and the wiring
    (cycles, unknown dependencies). Returns the tree, its code, the task ``def``
    nodes, the step assignments and the tasks as far as the source tells. Used
    by :func:`compile_cell` before it runs anything and by ``kernelflow validate``.
    """
    # Python reads CRLF as LF, but puts a block missing at the end of the cell one
    # line further down than with LF: parse the cell as Python reads it.
    padded = padded.replace("\r\n", "\n")
    try:
        tree = ast.parse(padded, filename)
        # Some syntax errors only the compiler finds: 'return' or 'yield' outside
        # a function, a duplicate argument, 'nonlocal' at the top level.
        with gc_paused():
            code = compile(tree, filename, "exec")
    except SyntaxError as exc:
        line = exc.lineno or first_line
        # The compiler's errors carry no text: quote the line from the cell.
        lines = padded.split("\n")
        code_line = (exc.text or (lines[line - 1] if 0 < line <= len(lines) else "")).strip()
        raise DefinitionError(
            f"syntax error: {exc.msg}" + (f": {code_line}" if code_line else ""),
            location=f"cell line {line}",
            hint="fix the Python syntax on that line; nothing was defined",
        ) from None
    except (RecursionError, MemoryError) as exc:
        # Python's parser gives up on expressions nested thousands deep without
        # saying where; such an expression is all but certainly on the longest line.
        lines = padded.split("\n")
        longest = max(range(len(lines)), key=lambda i: len(lines[i])) + 1
        raise DefinitionError(
            f"Python cannot parse the cell: an expression nests too deeply ({type(exc).__name__} in its parser); "
            f"the longest line is line {longest}",
            location=f"cell line {longest}",
            hint="split the deeply nested expression into several statements; nothing was defined",
        ) from None

    defs = _task_defs(tree)
    assigned = _step_assignments(tree)
    for sid, node in assigned.items():
        if sid in defs:
            raise DefinitionError(
                f"task {sid!r} is defined twice (cell lines {defs[sid].lineno} and {node.lineno})",
                location=f"cell line {node.lineno}",
                hint=f"rename one of the two definitions of {sid!r}",
            )
    if not defs and not assigned:
        raise DefinitionError(
            f"the cell defines no tasks for workflow {name!r}",
            location="cell line 1",
            hint="define at least one top-level function with def (names starting with _ are helpers), "
            "or assign a step: fetch = kf.shell([...])",
        )
    if name in defs or name in assigned:
        line = defs[name].lineno if name in defs else assigned[name].lineno
        raise DefinitionError(
            f"the workflow is named {name!r} like one of its tasks (cell line {line}), "
            "and binding the workflow would hide the task",
            location="cell line 1",
            hint="rename the workflow or the task",
        )
    with gc_paused():
        static_tasks = _static_tasks(defs, set(assigned))
        static_steps = [Task(id=sid, params=(), deps=(), line=node.lineno) for sid, node in assigned.items()]
        # Validate the wiring before running anything (cycles, unknown deps, duplicates).
        Workflow.build(name, static_tasks + static_steps, max_parallel=max_parallel, executor=executor)
    return tree, code, defs, assigned, static_tasks
