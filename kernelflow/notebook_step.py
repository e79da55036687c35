"""The notebook step: execute another notebook with parameters, return what it records.

:func:`run_notebook` is what a ``run: notebook`` step (and ``kf.notebook(...)``)
does. The child notebook runs in a fresh kernel through papermill, on the same
store, with its parameters checked against its ``parameters`` cell first. Its
``kf.record(name, value)`` calls become the step's output (``{name: value}``).

The executed notebook is kept with the run's artifacts
(``artifacts/<run>/<task>.<attempt>.ipynb`` in the folder store) and a
``TaskArtifact`` event links it to the attempt, so the step's details, the
CLI and SQL can point at it, also when the child failed half-way.

A timeout stops the child's kernel (SIGKILL to its process), as does an
interrupted run.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

import orjson

from .step_errors import StepCancelledError, StepError, StepTimeoutError

__all__ = ["kill_running", "run_notebook"]

_kernels: dict[int, tuple[str, Any]] = {}  # id(manager) -> (task id, manager)
_lock = threading.Lock()


def run_notebook(
    notebook: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    kernel: str | None = None,
    cwd: str | None = None,
    base_dir: Path | None = None,
    timeout: float | None = None,
    task_id: str = "notebook",
    mask: Callable[[str], str] = lambda s: s,
) -> dict[str, Any]:
    """Execute ``notebook`` with ``parameters``; return the values it recorded with ``kf.record``.

    Raises :class:`StepError` (notebook missing, bad parameter, a cell
    failed: the message names the cell and the executed notebook) or
    :class:`StepTimeoutError`.
    """
    from .durable import current_context
    from .exceptions import InputError
    from .notebook_exec import check_parameters, execute
    from .records import SCOPE_ENV, records

    where = f"notebook step {task_id!r}"
    path = Path(notebook).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    if path.suffix != ".ipynb":
        raise StepError(mask(f"{where}: {notebook!r} is not a notebook (.ipynb)"), task_id=task_id)
    if not path.is_file():
        raise StepError(mask(f"{where}: notebook {notebook!r} not found (looked for {path})"), task_id=task_id)
    try:
        values = check_parameters(path, dict(parameters or {}), what=f"{where} ({path.name})")
    except InputError as exc:
        raise StepError(mask(str(exc)), task_id=task_id) from None

    ctx = current_context()
    run = ctx.run if ctx is not None else None
    output = _output_path(run, ctx, task_id, path)
    env = {"KERNELFLOW_VIA": "notebook-step"}
    if run is not None:
        env["KERNELFLOW_BATCH_ID"] = f"{run.run_id}/{task_id}.{ctx.attempt}"
        env[SCOPE_ENV] = orjson.dumps({"run_id": run.run_id, "task_id": task_id, "attempt": ctx.attempt}).decode()
        location = getattr(run.store, "path", None)
        if location is not None:
            env["KERNELFLOW_HOME"] = str(location)  # the child writes its runs and artifacts to this store
        from . import events as ev

        run._emit(ev.TASK_ARTIFACT, ctx.task_id, ctx.attempt, {
            "kind": "notebook", "path": str(output), "notebook": str(path), "parameters": _jsonable(values),
        })  # fmt: skip

    started: list[Any] = []
    timer = None
    timed_out = threading.Event()
    if timeout is not None:
        timer = threading.Timer(timeout, lambda: (timed_out.set(), _kill(started)))
        timer.daemon = True
        timer.start()
    try:
        result = execute(
            path, output, values, env=env, cwd=Path(cwd) if cwd else path.parent, kernel=kernel,
            on_kernel=lambda km: _register(task_id, km, started),
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - a dead kernel, a missing kernelspec: say which notebook
        if timed_out.is_set():
            raise StepTimeoutError(
                f"{where}: {path.name} ran past its timeout of {timeout:g}s and its kernel was stopped; "
                f"executed notebook so far: {output}",
                timeout=float(timeout or 0), task_id=task_id,
            ) from None  # fmt: skip
        if any(getattr(km, "_kf_cancelled", False) for km in started):
            raise StepCancelledError(f"{where}: cancelled; its kernel was stopped", task_id=task_id) from None
        raise StepError(mask(f"{where}: {path.name} could not run: {type(exc).__name__}: {exc}"), task_id=task_id) from None
    finally:
        if timer is not None:
            timer.cancel()
        _unregister(started)
    if result.failure:
        raise StepError(mask(f"{where}: {path.name} failed at {result.failure}; executed notebook: {output}"), task_id=task_id)
    return records(output)


def kill_running(task_id: str | None = None) -> int:
    """Stop the kernels of running notebook steps (all, or ``task_id``'s); returns how many."""
    with _lock:
        targets = [km for tid, km in _kernels.values() if task_id is None or tid == task_id]
    for km in targets:
        km._kf_cancelled = True
    return _kill(targets)


def _kill(managers: list[Any]) -> int:
    count = 0
    for km in list(managers):
        pid = getattr(getattr(km, "provisioner", None), "pid", None)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
                count += 1
            except ProcessLookupError:
                pass
    return count


def _register(task_id: str, km: Any, started: list[Any]) -> None:
    started.append(km)
    with _lock:
        _kernels[id(km)] = (task_id, km)


def _unregister(started: list[Any]) -> None:
    with _lock:
        for km in started:
            _kernels.pop(id(km), None)


def _output_path(run: Any, ctx: Any, task_id: str, notebook: Path) -> Path:
    from .store.artifacts import safe_component

    item = "".join(f".{i}" for i in (getattr(ctx, "item", None) or ())) if ctx is not None else ""
    if run is not None and getattr(run.store, "path", None) is not None:
        folder = Path(run.store.path) / "artifacts" / safe_component(run.run_id)
        return folder / f"{safe_component(task_id)}{item}.{ctx.attempt}.ipynb"
    return notebook.parent / "out" / f"{notebook.stem}.ipynb"


def _jsonable(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value, default=repr))
