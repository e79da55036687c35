"""Where a run comes from: the notebook, its papermill parameters and output, the trigger.

Recorded in each run's ``RunStarted`` payload (``notebook``, ``parameters``,
``output_notebook``, ``batch_id``, ``trigger``), so a batch run can be found,
explained and resumed later.

``kernelflow run`` and the scheduler say it outright through environment
variables the kernel inherits. Plain papermill says nothing to the kernel, so
it is recovered from what papermill leaves behind:

* the parameters from the cell papermill injects (it starts with
  ``# Parameters`` and assigns literals), read back from IPython's input
  history, so it works whether or not ``%load_ext kernelflow`` ran first;
* the input and output paths from ``PAPERMILL_INPUT_PATH`` /
  ``PAPERMILL_OUTPUT_PATH`` when papermill injected them (``--inject-paths``),
  else from the command line of the ``papermill`` process that started the
  kernel (Linux ``/proc``; the kernel is its child).
"""

from __future__ import annotations

import ast
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import orjson

NOTEBOOK_ENV = "KERNELFLOW_NOTEBOOK"
PARAMETERS_ENV = "KERNELFLOW_PARAMETERS"
OUTPUT_ENV = "KERNELFLOW_OUTPUT_NOTEBOOK"
BATCH_ENV = "KERNELFLOW_BATCH_ID"
TRIGGER_ENV = "KERNELFLOW_TRIGGER"

#: What papermill's Python translator writes first in the cell it injects.
_INJECTED_HEADER = "# Parameters\n"

_papermill_cli: dict[str, Any] | None = None
_papermill_batch: str | None = None


def origin_fields() -> dict[str, Any]:
    """The ``RunStarted`` fields that say where this run comes from (only those known)."""
    fields: dict[str, Any] = {}
    parameters = _json_env(PARAMETERS_ENV)
    injected = None
    if parameters is None:
        injected = injected_parameters()
        if injected is not None:
            parameters = {k: v for k, v in injected.items() if not k.startswith("PAPERMILL_")}
    cli = {} if os.environ.get(BATCH_ENV) else _papermill_command_line()
    notebook = (
        os.environ.get(NOTEBOOK_ENV)
        or (injected or {}).get("PAPERMILL_INPUT_PATH")
        or cli.get("input")
        or os.environ.get("JPY_SESSION_NAME")
    )
    output = os.environ.get(OUTPUT_ENV) or (injected or {}).get("PAPERMILL_OUTPUT_PATH") or cli.get("output")
    batch = os.environ.get(BATCH_ENV)
    if batch is None and (injected is not None or cli):
        batch = _papermill_batch_id()  # plain papermill: one batch per kernel, so `kernelflow resume` can match runs
    for key, value in (("notebook", notebook), ("batch_id", batch)):
        fields[key] = value  # always present (None when unknown), as before
    if parameters:
        fields["parameters"] = parameters
    if output:
        fields["output_notebook"] = output
    trigger = _json_env(TRIGGER_ENV)
    if trigger:
        fields["trigger"] = trigger
    return fields


def injected_parameters() -> dict[str, Any] | None:
    """The parameters papermill injected into this kernel, or None outside papermill.

    Only literal assignments are kept; anything else in the cell is ignored.
    """
    ip = _ipython()
    if ip is None:
        return None
    history = getattr(getattr(ip, "history_manager", None), "input_hist_raw", None) or []
    for source in reversed(history):
        if isinstance(source, str) and source.startswith(_INJECTED_HEADER):
            return _literal_assignments(source)
    return None


def _literal_assignments(source: str) -> dict[str, Any]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    values: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
    return values


def _ipython() -> Any:
    if "IPython" not in sys.modules:
        return None
    from IPython import get_ipython

    return get_ipython()


def _json_env(name: str) -> Any:
    text = os.environ.get(name)
    if not text:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def _papermill_command_line() -> dict[str, Any]:
    """Input and output notebooks from the ``papermill IN OUT ...`` process that started this kernel."""
    global _papermill_cli
    if _papermill_cli is None:
        _papermill_cli = _read_papermill_command_line(os.getppid())
    return _papermill_cli


def _read_papermill_command_line(pid: int) -> dict[str, Any]:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return {}
    args = [a.decode(errors="replace") for a in argv if a]
    # `papermill ...` or `python -m papermill ...`
    start = next((i for i, a in enumerate(args) if os.path.basename(a) == "papermill"), None)
    if start is None:
        return {}
    positional, i = [], start + 1
    while i < len(args):
        a = args[i]
        if a in ("-p", "--parameters", "-r", "--parameters_raw"):
            i += 3
            continue
        if a.startswith("-"):
            # Options with a value; flags take none. Unknown options are
            # assumed to be flags: at worst a path is not recorded.
            i += 2 if a in _VALUE_OPTIONS else 1
            continue
        positional.append(a)
        i += 1
    found: dict[str, Any] = {}
    if positional:
        found["input"] = str(Path(cwd, positional[0]))
    if len(positional) > 1 and positional[1] != "-":
        found["output"] = str(Path(cwd, positional[1]))
    return found


_VALUE_OPTIONS = {
    "-f", "--parameters_file", "-y", "--parameters_yaml", "-b", "--parameters_base64", "-k", "--kernel",
    "-l", "--language", "--engine", "--cwd", "--log-level", "--start-timeout", "--start_timeout",
    "--execution-timeout", "--stdout-file", "--stderr-file",
}  # fmt: skip


def _papermill_batch_id() -> str:
    global _papermill_batch
    if _papermill_batch is None:
        _papermill_batch = "pm-" + secrets.token_hex(5)
    return _papermill_batch
