"""Steps that are not one Python function, written in a Python cell.

In a ``%%workflow`` cell, assigning one of these to a top-level name makes a
task of that name, exactly like the YAML step with the same keys::

    fetch = kf.shell(["curl", "-sf", "https://example.org/{{inputs.date}}.json"], timeout="30s")
    notify = kf.http("POST", "https://hooks.example.org/x", json={"n": "{{tasks.count.output}}"})
    render = kf.notebook("report.ipynb", parameters={"day": "{{inputs.day}}"})
    report = kf.subworkflow(etl, input={"url": "{{inputs.url}}"})
    route = kf.switch("{{tasks.parse.output.kind}}", cases={"a": handle_a}, default=other)
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from .decorators import check_options


class StepDef:
    """A step written in Python: its options, in the YAML step vocabulary."""

    __slots__ = ("options",)

    def __init__(self, options: Mapping[str, Any], what: str) -> None:
        self.options = check_options(options, what)

    def __repr__(self) -> str:
        run = self.options.get("run") or ("switch" if "switch" in self.options else "?")
        return f"<kernelflow step run={run!r}>"


def step(**options: Any) -> StepDef:
    """Any step, by its YAML keys (``kf.step(run="python:clean", needs=["fetch"], retries=2)``)."""
    return StepDef(options, "kf.step(...)")


def shell(
    argv: Sequence[str] | str,
    *,
    shell: bool = False,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    inherit_env: bool | None = None,
    max_output: int | str | None = None,
    stdin: str | None = None,
    **options: Any,
) -> StepDef:
    """A shell step: runs ``argv`` (a list; no shell interpolation) in a subprocess.

    ``shell=True`` runs one string through ``/bin/sh`` instead: unsafe with
    untrusted values. A ``timeout`` kills the whole process group; a non-zero
    exit fails the step with the exit code and the tail of stderr. The
    output is ``{"exit_code", "stdout", "stderr", ...}``. Other options are the
    common step options (``when``, ``retries``, ``timeout``, ...).
    """
    extra = {k: v for k, v in (("cwd", cwd), ("env", env), ("inherit_env", inherit_env), ("max_output", max_output), ("stdin", stdin)) if v is not None}
    if isinstance(argv, tuple):
        argv = list(argv)
    return StepDef({"run": "shell", "argv": argv, "shell": shell, **extra, **options}, "kf.shell(...)")


def http(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    params: Mapping[str, Any] | None = None,
    max_body: int | str | None = None,
    **options: Any,
) -> StepDef:
    """An HTTP step: 2xx succeeds with the response JSON (or text) as output;
    other statuses fail with the status and an excerpt of the body."""
    extra: dict[str, Any] = {
        k: v for k, v in (("headers", headers), ("params", params), ("max_body", max_body)) if v is not None
    }
    if json is not None:
        extra["json"] = json
    return StepDef({"run": "http", "method": method, "url": url, **extra, **options}, "kf.http(...)")


def notebook(
    path: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    kernel: str | None = None,
    **options: Any,
) -> StepDef:
    """A notebook step: execute the notebook at ``path`` with papermill and
    ``parameters`` (values or templates such as ``"{{inputs.date}}"``).

    The output is what the notebook recorded with ``kf.record(name, value)``,
    as ``{name: value}``. Parameters are checked against the notebook's cell
    tagged ``parameters`` before its kernel starts. The executed notebook is
    kept with the run's artifacts and linked from the step's details. A
    ``timeout`` stops the notebook's kernel. Other options are the common
    step options (``retries``, ``when``, ...).
    """
    extra: dict[str, Any] = {"parameters": dict(parameters)} if parameters is not None else {}
    if kernel is not None:
        extra["kernel"] = kernel
    return StepDef({"run": "notebook", "notebook": path, **extra, **options}, "kf.notebook(...)")


def subworkflow(
    target: Any,
    *,
    version: str | None = None,
    input: Mapping[str, Any] | None = None,  # noqa: A002 - the YAML key's name
    output: Mapping[str, str] | None = None,
    **options: Any,
) -> StepDef:
    """Run another workflow (a :class:`~kernelflow.Workflow` or its name) as one step.

    ``input`` maps its inputs to values or templates; its output (the child
    run's output) can be reshaped with ``output``. ``version`` pins a
    recorded version (default: the definition current when the step runs).
    """
    name = getattr(target, "name", target)
    if not isinstance(name, str):
        from .exceptions import OptionError

        raise OptionError(f"kf.subworkflow takes a workflow or its name, got {type(target).__name__} {target!r}")
    pinned = version if version is not None else None
    ref = f"workflow:{name}" + (f"@{pinned}" if pinned else "")
    extra = {k: v for k, v in (("input", input), ("output", output)) if v is not None}
    return StepDef({"run": ref, **extra, **options}, "kf.subworkflow(...)")


def switch(
    value: str,
    cases: Mapping[Any, Callable[..., Any] | str],
    default: Callable[..., Any] | str | None = None,
    **options: Any,
) -> StepDef:
    """Run the case matching ``value`` (a template), or ``default``; no match
    and no default fails the step. Cases are functions or refs; they receive
    the step's inputs by parameter name, like tasks."""
    spec: dict[str, Any] = {"value": value, "cases": dict(cases)}
    if default is not None:
        spec["default"] = default
    return StepDef({"switch": spec, **options}, "kf.switch(...)")
