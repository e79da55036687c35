"""Check workflow files and notebooks without running anything (``kernelflow validate``).

* A YAML file is compiled exactly as ``kernelflow run`` compiles it
  (:func:`kernelflow.yaml_compiler.load`, no namespace, the file's folder on
  ``sys.path`` for ``module:function`` refs). Compiling runs no step and
  records nothing; it does import the modules that ``module:function`` refs
  name, as a run would.
* A notebook's ``%%workflow`` cells are found and checked one by one:

  - a YAML body fully (:func:`kernelflow.yaml_compiler.compile_yaml`).
    ``python:NAME`` refs are looked up among the functions the notebook's
    code cells define at top level, as *stubs*: each ``def`` is re-made with
    its parameters (defaults replaced by ``None``), no decorators and an
    empty body, so no line of the user's code runs. A sub-workflow may call
    a workflow defined by an earlier ``%%workflow`` cell.
  - a Python body for syntax and structure: the checks
    :func:`kernelflow.cell_compiler.compile_cell` makes *before* it executes
    the cell (syntax, tasks defined twice, ``*args``, a workflow named like a
    task, unknown dependencies and cycles through parameters). Executing
    the cell is what would check decorators' options, so that is not done.

Every problem names the file, and for a notebook the cell (its position in
the notebook, counting from 1, all cells included) and the line within the
cell (line 1 is the ``%%workflow`` line).
"""

from __future__ import annotations

import ast
import json
import linecache
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .exceptions import DefinitionError, KernelflowError


@dataclass
class Checked:
    """A workflow that compiled: where it is, its name and how many tasks it has."""

    path: str
    name: str
    tasks: int
    cell: int | None = None
    body: str = "yaml"
    """``yaml`` or ``python`` (a Python cell, checked for structure only)."""


@dataclass
class Problem:
    """Why a file or cell does not compile."""

    path: str
    location: str
    message: str
    hint: str | None = None
    cell: int | None = None


@dataclass
class Report:
    """What :func:`check_paths` found."""

    checked: list[Checked] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """``{"ok", "workflows": [...], "problems": [...]}`` (``kernelflow validate --json``)."""
        return {"ok": self.ok, "workflows": [asdict(c) for c in self.checked],
                "problems": [asdict(p) for p in self.problems]}  # fmt: skip


def check_paths(paths: list[str]) -> Report:
    """Check each ``.yaml``/``.yml`` file and ``.ipynb`` notebook in ``paths``."""
    report = Report()
    for text in paths:
        path = Path(text)
        if path.suffix in (".yaml", ".yml"):
            _check_yaml_file(path, report)
        elif path.suffix == ".ipynb":
            _check_notebook(path, report)
        else:
            report.problems.append(
                Problem(text, text, "neither a workflow file (.yaml, .yml) nor a notebook (.ipynb)",
                        "pass workflow files and notebooks"))  # fmt: skip
    return report


def _problem(path: str, exc: KernelflowError, cell: int | None = None) -> Problem:
    if isinstance(exc, DefinitionError):
        location, message, hint = exc.location or path, exc.message, exc.hint
    else:
        location, message, hint = path, str(exc), None
    if cell is not None:
        # The compilers say "cell line 4" (line 1 is the magic); name the notebook and the cell too.
        rest = location[len("cell "):] if location.startswith("cell ") else location
        location = f"{path} cell {cell} {rest}" if rest.startswith("line") else f"{path} cell {cell}: {rest}"
    elif not location.startswith(path):
        location = f"{path}: {location}"
    return Problem(path, location, message, hint, cell)


def _check_yaml_file(path: Path, report: Report) -> None:
    from .yaml_compiler import load

    text = os.fspath(path)
    if not path.is_file():
        report.problems.append(Problem(text, text, "file not found", "check the path"))
        return
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # as `kernelflow run` does: modules beside the file are importable
    try:
        wf = load(path, {})
    except KernelflowError as exc:
        report.problems.append(_problem(text, exc))
        return
    finally:
        sys.path.remove(folder)
    report.checked.append(Checked(text, wf.name, len(wf.tasks)))


# --- notebooks ----------------------------------------------------------------------


def _cells(path: Path) -> list[dict[str, Any]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KernelflowError("file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KernelflowError(f"not a readable notebook: {exc}") from None
    cells = doc.get("cells") if isinstance(doc, dict) else None
    if not isinstance(cells, list):
        raise KernelflowError("not a notebook: no list of cells (nbformat 4 expected)")
    return [c for c in cells if isinstance(c, dict)]


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _check_notebook(path: Path, report: Report) -> None:
    text = os.fspath(path)
    try:
        cells = _cells(path)
    except KernelflowError as exc:
        report.problems.append(Problem(text, text, str(exc)))
        return
    code = [(i, _source(c)) for i, c in enumerate(cells, 1) if c.get("cell_type") == "code"]
    namespace = _stub_namespace(text, code)
    found = 0
    for number, source in code:
        if not source.lstrip().startswith("%%workflow"):
            continue
        found += 1
        lines = source.lstrip().split("\n", 1)
        try:
            wf_name, body, checked = _check_cell(lines[0], lines[1] if len(lines) > 1 else "", namespace, text, number)
        except KernelflowError as exc:
            report.problems.append(_problem(text, exc, number))
            continue
        report.checked.append(checked)
        if checked.body == "yaml":
            namespace[wf_name] = body  # a later cell's sub-workflow step may call it
    if not found:
        report.problems.append(Problem(text, text, "the notebook has no %%workflow cell", "nothing to check"))


def _check_cell(magic: str, body: str, namespace: dict[str, Any], path: str, number: int) -> tuple[str, Any, Checked]:
    from .exceptions import OptionError
    from .kernel_ext.magics import KernelflowMagics
    from .yaml_compiler import compile_yaml, looks_like_yaml

    line = magic[len("%%workflow"):].strip()
    try:
        # The magic's own parser, so validate accepts exactly what the cell would.
        args = KernelflowMagics.workflow.parser.parse_argstring(line)
    except Exception as exc:  # noqa: BLE001 - IPython's UsageError (or SystemExit-free argparse errors)
        raise OptionError(str(exc), location="cell line 1", hint="usage: %%workflow NAME [--max-parallel N] "
                          "[--executor NAME] [--yaml | --python]") from None  # fmt: skip
    if args.yaml or (not args.python and looks_like_yaml(body)):
        wf = compile_yaml(args.name, body, namespace, origin="cell", first_line=2,
                          max_parallel=args.max_parallel, executor=args.executor)  # fmt: skip
        return args.name, wf, Checked(path, wf.name, len(wf.tasks), number, "yaml")
    tasks = check_python_structure(args.name, body)
    return args.name, None, Checked(path, args.name, tasks, number, "python")


def check_python_structure(name: str, body: str, *, first_line: int = 2) -> int:
    """The checks ``compile_cell`` makes before executing a Python body; returns
    the number of tasks it defines. Raises :class:`DefinitionError` (``cell line N``)."""
    from .cell_compiler import check_structure

    if not name.isidentifier():
        raise DefinitionError(f"workflow name must be a Python identifier, got {name!r}", location="cell line 1")
    _tree, _code, _defs, assigned, static = check_structure(name, "\n" * (first_line - 1) + body, "<cell>", first_line)
    return len(static) + len(assigned)


def _stub_namespace(path: str, code: list[tuple[int, str]]) -> dict[str, Any]:
    """Stand-ins for the functions the notebook defines at top level, made without running its code."""
    namespace: dict[str, Any] = {}
    for number, source in code:
        stripped = source.lstrip()
        if stripped.startswith("%%workflow"):
            parts = stripped.split("\n", 1)
            source = parts[1] if len(parts) > 1 else ""
            if _looks_yaml(source):
                continue
        elif stripped.startswith("%%"):
            continue  # another cell magic: not Python
        try:
            tree = ast.parse(_without_ipython_syntax(source))
        except SyntaxError:
            continue  # the cell's own check (if it is a workflow cell) reports it
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                namespace[node.name] = _stub(node, f"<{path} cell {number}>")
    return namespace


def _looks_yaml(body: str) -> bool:
    from .yaml_compiler import looks_like_yaml

    return looks_like_yaml(body)


def _without_ipython_syntax(source: str) -> str:
    """Line magics and shell escapes (``%pip``, ``!ls``) as comments, so the rest parses."""
    return "\n".join("#" + line if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _stub(node: ast.FunctionDef | ast.AsyncFunctionDef, filename: str) -> Any:
    args = node.args
    none = ast.Constant(value=None)
    stub_args = ast.arguments(
        posonlyargs=[ast.arg(a.arg) for a in args.posonlyargs],
        args=[ast.arg(a.arg) for a in args.args],
        vararg=ast.arg(args.vararg.arg) if args.vararg else None,
        kwonlyargs=[ast.arg(a.arg) for a in args.kwonlyargs],
        kw_defaults=[None if d is None else none for d in args.kw_defaults],
        kwarg=ast.arg(args.kwarg.arg) if args.kwarg else None,
        defaults=[none for _ in args.defaults],
    )
    kind = ast.AsyncFunctionDef if isinstance(node, ast.AsyncFunctionDef) else ast.FunctionDef
    extra: dict[str, Any] = {"type_params": []} if sys.version_info >= (3, 12) else {}
    fn = kind(name=node.name, args=stub_args, body=[ast.Pass()], decorator_list=[], returns=None, type_comment=None, **extra)
    module = ast.fix_missing_locations(ast.Module(body=[fn], type_ignores=[]))
    source = ast.unparse(module) + "\n"
    # Registered with linecache so anything that reads a function's source finds the stub's.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - a def with an empty body, nothing of the user's
    return namespace[node.name]


__all__ = ["Checked", "Problem", "Report", "check_paths", "check_python_structure"]
