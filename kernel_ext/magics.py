"""The magics: ``%%workflow`` defines, ``%workflow run`` runs, ``%%kfsql`` queries."""

from __future__ import annotations

import argparse
import re
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from kernelflow.cell_compiler import compile_cell
from kernelflow.exceptions import DefinitionError, OptionError
from kernelflow.literals import parse_literal
from kernelflow.model import Workflow
from kernelflow.yaml_compiler import compile_yaml, looks_like_yaml

USAGE = (
    "%%workflow NAME [--max-parallel N] [--executor NAME] [--yaml | --python]   "
    "or   %workflow run NAME [input=value ...]"
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


@magics_class
class KernelflowMagics(Magics):
    """kernelflow's magics, registered by ``%load_ext kernelflow``."""

    @magic_arguments()
    @argument("name", help="the workflow's name; the workflow is bound to it in the namespace")
    @argument("--max-parallel", type=_positive_int, default=None, help="tasks running at once (default 8)")
    @argument("--executor", default=None, help="executor for tasks that do not name one (default threads)")
    @argument("--yaml", action="store_true", help="the body is YAML (detected when it starts with tasks:, inputs:...)")
    @argument("--python", action="store_true", help="the body is Python, even if it looks like YAML")
    @line_cell_magic
    def workflow(self, line: str, cell: str | None = None) -> Any:
        """Define a workflow from a cell (``%%workflow NAME``) or run one (``%workflow run NAME k=v``)."""
        if cell is None:
            return self._line(line)
        try:
            args = parse_argstring(self.workflow, line)
        except UsageError as exc:
            raise OptionError(str(exc), location="cell line 1", hint=f"usage: {USAGE}") from None
        if args.yaml and args.python:
            raise OptionError("--yaml and --python contradict each other", location="cell line 1", hint="pick one")
        if args.yaml or (not args.python and looks_like_yaml(cell)):
            wf = compile_yaml(
                args.name,
                cell,
                self.shell.user_ns,
                origin="cell",
                first_line=2,
                max_parallel=args.max_parallel,
                executor=args.executor,
            )
        else:
            cell_text = f"%%workflow {line}\n{cell}"
            filename = self.shell.compile.cache(cell_text, self.shell.execution_count)
            wf = compile_cell(
                args.name,
                cell,
                self.shell.user_ns,
                max_parallel=args.max_parallel or 8,
                executor=args.executor or "threads",
                filename=filename,
                first_line=2,
                cell_text=None,
            )
        self.shell.user_ns[args.name] = wf
        display(wf)
        return None

    def _line(self, line: str) -> Any:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise OptionError(f"cannot parse {line!r}: {exc}", hint=f"usage: {USAGE}") from None
        if not words or words[0] != "run" or len(words) < 2:
            raise OptionError(
                f"unknown use of %workflow: {line!r}",
                hint=f"usage: {USAGE}; a definition needs the cell form, %%workflow",
            )
        name, pairs = words[1], words[2:]
        wf = self.shell.user_ns.get(name)
        if not isinstance(wf, Workflow):
            what = "nothing" if wf is None else f"a {type(wf).__name__}"
            raise DefinitionError(
                f"{name!r} is {what}, not a workflow",
                hint=f"define it first in a cell that starts with %%workflow {name}",
            )
        inputs: dict[str, Any] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key.isidentifier():
                raise OptionError(
                    f"expected input=value, got {pair!r}",
                    hint=f"e.g. %workflow run {name} url=https://example.org n=3",
                )
            inputs[key] = parse_literal(value)
        return wf.run(**inputs)

    @magic_arguments()
    @argument("-o", "--output", default=None, help="also bind the result to this variable")
    @cell_magic
    def kfsql(self, line: str, cell: str) -> Any:
        """Query the kernelflow store with SQL; the result is a polars DataFrame.

        ``$name`` in the query (outside quotes and comments) is a parameter
        bound to the notebook variable ``name``: ``state_at($run_id, 12)``.
        Values are passed to DuckDB as parameters, never pasted into the SQL.
        """
        import kernelflow as kf

        try:
            args = parse_argstring(self.kfsql, line)
        except UsageError as exc:
            raise OptionError(str(exc), location="cell line 1", hint="usage: %%kfsql [-o NAME]") from None
        params = {}
        for name in sql_parameter_names(cell):
            if name not in self.shell.user_ns:
                raise OptionError(
                    f"the query uses ${name}, but the notebook has no variable {name!r}",
                    hint=f"set {name} = ... in a cell before this one (each $name is bound to the notebook's variable)",
                )
            params[name] = self.shell.user_ns[name]
        result = kf.sql(cell, params or None)
        if args.output:
            self.shell.user_ns[args.output] = result
        return result


_SQL_SKIP = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\$\$.*?\$\$", re.DOTALL)
_SQL_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def sql_parameter_names(query: str) -> list[str]:
    """The ``$name`` parameters of ``query``, in order of first use, skipping
    string literals (``'$.path'``), quoted identifiers, comments and ``$$`` strings."""
    names: list[str] = []
    for part in _SQL_SKIP.split(query):
        for name in _SQL_PARAM.findall(part):
            if name not in names:
                names.append(name)
    return names
