"""Executing a notebook headless with papermill, for ``kernelflow run`` and notebook steps.

Two things papermill leaves to us:

* **Parameters are checked before a kernel starts.** papermill only warns
  about a name the notebook's ``parameters`` cell does not define and passes
  any value through. Here an unknown name is an error (with the names the
  cell defines), and a value whose type does not fit the cell's default
  (``n = 12`` given ``"abc"``) is an error naming the cell line. A value for
  a text parameter is kept as text (``-p title 2024`` stays ``"2024"``).
* **The kernel's environment is set per execution** (store, batch id,
  notebook path, parameters), through the kernel manager rather than this
  process's ``os.environ``, so two notebook steps running at once in
  threads of one process cannot see each other's settings.
"""

from __future__ import annotations

import ast
import difflib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import orjson

from .exceptions import InputError, KernelflowError

_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "list": (list, tuple),
    "dict": (dict,),
    "tuple": (list, tuple),
}


@dataclass(frozen=True)
class NotebookParameter:
    """One name of a notebook's ``parameters`` cell."""

    name: str
    type_name: str | None  # "int", "float", "str", ...; None when any value fits
    default: str  # as written in the cell
    line: int | None  # line in the parameters cell
    text: str = ""  # that line, as written


@dataclass(frozen=True)
class Execution:
    """What a papermill execution left: the output notebook, and the failure if any."""

    output: Path
    failure: str | None = None  # "cell 3: RunFailedError: ..." or None
    ename: str | None = None

    @property
    def suspended(self) -> bool:
        return self.ename == "RunSuspended"


def notebook_parameters(notebook: Path) -> dict[str, NotebookParameter] | None:
    """The parameters a notebook declares (its cell tagged ``parameters``), or None without such a cell."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cell = next((c for c in nb.cells if "parameters" in (c.get("metadata", {}).get("tags") or [])), None)
    if cell is None:
        return None
    language = (nb.metadata.get("kernelspec") or {}).get("language") or "python"
    if language != "python":
        return {}  # not checked: only Python parameter cells are read here
    try:
        tree = ast.parse(cell.source)
    except SyntaxError:
        return {}  # the kernel will report it, at its line
    out: dict[str, NotebookParameter] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, annotation = node.targets[0].id, None
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, annotation = node.target.id, node.annotation
        else:
            continue
        default = ast.get_source_segment(cell.source, node.value) or ""
        text = cell.source.splitlines()[node.lineno - 1].strip()
        out[name] = NotebookParameter(name, _type_of(annotation, node.value), default, node.lineno, text)
    return out


def _type_of(annotation: ast.expr | None, value: ast.expr) -> str | None:
    # A plain annotation (int, str, list[...]) wins; Optional, unions and
    # classes are not checked here. Without one, the literal default decides.
    if annotation is not None:
        base = annotation.value if isinstance(annotation, ast.Subscript) else annotation
        return base.id if isinstance(base, ast.Name) and base.id in _TYPES else None
    try:
        default = ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return type(default).__name__ if type(default).__name__ in _TYPES else None


def check_parameters(notebook: Path, given: Mapping[str, Any], *, raw: Mapping[str, str] | None = None, what: str | None = None) -> dict[str, Any]:
    """``given`` checked against the notebook's parameters cell; returns the values to inject.

    ``raw`` is the text each value was typed as (command line): a text
    parameter gets the text back even where it reads as a number.
    Raises :class:`InputError` naming the notebook, the parameter and the cell line.
    """
    where = what or f"notebook {notebook.name}"
    if not given:
        return {}
    declared = notebook_parameters(notebook)
    if declared is None:
        raise _input_error(
            f"{where} has no parameters cell, so {', '.join(map(repr, given))} cannot be set",
            "tag the cell that assigns the defaults with 'parameters' (in JupyterLab: the cell's property inspector)",
        )
    values: dict[str, Any] = {}
    for name, value in given.items():
        param = declared.get(name)
        if param is None:
            close = difflib.get_close_matches(name, list(declared), n=1)
            raise _input_error(
                f"{where} has no parameter {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                "its parameters cell defines: " + (", ".join(declared) or "nothing"),
            )
        values[name] = _fit(param, value, (raw or {}).get(name), where)
    return values


def _fit(param: NotebookParameter, value: Any, raw: str | None, where: str) -> Any:
    if param.type_name is None or value is None:
        return value
    if param.type_name == "str":
        return value if isinstance(value, str) else (raw if raw is not None else str(value))
    wanted = _TYPES[param.type_name]
    ok = isinstance(value, wanted) and not (isinstance(value, bool) and bool not in wanted)
    if ok:
        return list(value) if isinstance(value, tuple) else value
    at = f" (parameters cell line {param.line}: {param.text})" if param.line else ""
    raise _input_error(
        f"{where}: parameter {param.name!r} expects {param.type_name}{at}, got {type(value).__name__} {value!r}",
        f"give {'an' if param.type_name == 'int' else 'a'} {param.type_name}, like its default {param.default}",
    )


def _input_error(message: str, hint: str) -> InputError:
    return InputError(f"{message}\n  fix: {hint}")


def execute(
    notebook: Path,
    output: Path,
    parameters: Mapping[str, Any],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    kernel: str | None = None,
    progress: bool = False,
    timeout: float | None = None,
    on_kernel: Callable[[Any], None] | None = None,
) -> Execution:
    """Run ``notebook`` with papermill into ``output``, the kernel getting ``env`` on top of ours.

    A cell that raises ends the execution: the result carries the failure
    (the output notebook is written either way, as papermill does).
    ``on_kernel`` is called with the kernel manager once the kernel runs (so a
    caller can stop it); ``timeout`` limits each cell, as papermill's does.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    if not notebook.is_file():
        raise KernelflowError(f"notebook {notebook} not found")
    output.parent.mkdir(parents=True, exist_ok=True)
    import nbformat

    # papermill refuses a notebook that names no kernel or language (nbformat's new_notebook() names neither)
    spec = nbformat.read(str(notebook), as_version=4).metadata.get("kernelspec") or {}
    kernel = kernel or spec.get("name") or "python3"
    language = spec.get("language") or "python"
    kernel_env = {
        "KERNELFLOW_NOTEBOOK": str(notebook),
        "KERNELFLOW_OUTPUT_NOTEBOOK": str(output),
        "KERNELFLOW_PARAMETERS": orjson.dumps(dict(parameters), default=repr).decode(),
        **env,
    }
    try:
        papermill.execute_notebook(
            str(notebook), str(output), parameters=dict(parameters), cwd=str(cwd or notebook.parent),
            kernel_name=kernel, language=language, progress_bar=progress, log_output=False,
            kernel_manager_class=_manager_with(kernel_env, on_kernel),
            **({"execution_timeout": timeout} if timeout else {}),
        )  # fmt: skip
    except PapermillExecutionError as exc:
        return Execution(output, f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}", exc.ename)
    return Execution(output)


def _manager_with(extra: Mapping[str, str], on_kernel: Callable[[Any], None] | None) -> type:
    from jupyter_client.manager import AsyncKernelManager

    class KernelWithEnvironment(AsyncKernelManager):
        async def _async_pre_start_kernel(self, **kw: Any) -> Any:
            env = dict(kw.pop("env", None) or os.environ)
            env.update(extra)
            # The kernel process's own stderr carries only jupyter_client's start-up
            # noise ("running over TCP without encryption"), which would land in
            # the caller's notebook; what cells print reaches the output notebook.
            kw.setdefault("stderr", subprocess.DEVNULL)
            return await super()._async_pre_start_kernel(env=env, **kw)

        async def _async_post_start_kernel(self, **kw: Any) -> None:
            await super()._async_post_start_kernel(**kw)
            if on_kernel is not None:
                on_kernel(self)

    return KernelWithEnvironment
