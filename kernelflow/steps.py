"""One step vocabulary for every way of writing a workflow.

YAML step mappings, ``@kf.task(...)`` options and ``kf.shell(...)``-style
step objects in a cell all arrive here as a plain dict of options and leave
as one validated :class:`~kernelflow.model.Task`. Key names are the YAML
ones (``forEach`` and ``for_each`` both work); every check happens here, so
the two front ends cannot drift apart.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping, MutableMapping, Protocol

from .durations import parse_duration
from .exceptions import DefinitionError, OptionError
from .expressions import ExpressionError, Ref, parse_condition, refs_in_value
from .model import DEFAULT_OPTIONS, EMPTY_SPEC, Param, StepSpec, Task, TaskOptions

DEFAULT_MAX_ITERATIONS = 100
FOREACH_FAILURE_POLICIES = ("fail", "continue")

ALIASES = {
    "forEach": "for_each",
    "maxParallel": "max_parallel",
    "continueOnFailure": "continue_on_failure",
    "onTimeout": "on_timeout",
    "backTo": "back_to",
    "skipTo": "skip_to",
    "circuitBreaker": "circuit_breaker",
    "retryOn": "retry_on",
    "maxAttempts": "max_attempts",
    "retryDelay": "retry_delay",
    "maxDelay": "max_delay",
    "maxIterations": "max_iterations",
    "onFailure": "on_failure",
    "maxOutput": "max_output",
    "inheritEnv": "inherit_env",
}

RETRY_KEYS = ("retries", "max_attempts", "backoff", "retry_delay", "max_delay", "jitter", "retry_on")
COMMON_KEYS = (
    "id", "run", "needs", "after", "input", "output", "when", "switch", "for_each", "back_to", "skip_to",
    "continue_on_failure", "fallback", "compensate", "circuit_breaker", "timeout", "on_timeout", "executor",
    "approval", "sleep", *RETRY_KEYS,
)  # fmt: skip
KIND_KEYS = {
    "shell": ("argv", "shell", "cwd", "env", "inherit_env", "max_output", "stdin"),
    "http": ("method", "url", "headers", "json", "params", "max_body"),
    "notebook": ("notebook", "parameters", "kernel"),
}
SLEEP_KEYS = ("id", "sleep", "needs", "after", "when")
ALL_KEYS = COMMON_KEYS + tuple(k for keys in KIND_KEYS.values() for k in keys)


class Locate(Protocol):
    """Where a step (``key=None``) or one of its keys is written, for error messages."""

    def __call__(self, key: str | None = None) -> str | None: ...


def cell_locator(line: int | None, origin: str = "cell") -> Locate:
    """All keys of a Python step are reported at its line."""
    where = f"{origin} line {line}" if line else None
    return lambda key=None: where


@dataclass
class BuiltStep:
    """A validated step: the task, plus callables for refs other than its own."""

    task: Task
    function: Callable[..., Any] | None
    callables: dict[str, Callable[..., Any]] = field(default_factory=dict)
    aux_hashes: dict[str, str] = field(default_factory=dict)
    subworkflow: tuple[str, str | None] | None = None  # (name, pinned version)


def canonical_keys(raw: Mapping[str, Any], locate: Locate, what: str) -> dict[str, Any]:
    """Aliases resolved, unknown keys refused with a suggestion."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise DefinitionError(f"{what}: keys must be text, got {key!r}", location=locate(None))
        name = ALIASES.get(key, key)
        if name not in ALL_KEYS:
            # Suggest in the spelling the user writes: camelCase typos get the
            # camelCase alias (forEch -> forEach), others the canonical key (retrys -> retries).
            pools = [list(ALIASES), list(ALL_KEYS)] if any(c.isupper() for c in name) else [list(ALL_KEYS), list(ALIASES)]
            close = difflib.get_close_matches(name, pools[0], n=1) or difflib.get_close_matches(name, pools[1], n=1)
            raise DefinitionError(
                f"{what}: unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                location=locate(key),
                hint="the step keys are: " + ", ".join(k for k in ALL_KEYS if k != "id"),
            )
        if name in out:
            raise DefinitionError(f"{what}: {key!r} is given twice (as {name!r})", location=locate(key))
        out[name] = value
    return out


def kind_of(run: Any, raw: Mapping[str, Any], has_function: bool, locate: Locate, what: str) -> tuple[str, str]:
    """(kind, ref) from the ``run:`` value."""
    if "sleep" in raw:
        if run is not None or has_function or "switch" in raw:
            raise DefinitionError(
                f"{what}: sleep is a step of its own and cannot also run something",
                location=locate("sleep"),
                hint="put the sleep in a separate step that the next one depends on (after: [...])",
            )
        return "sleep", ""
    if run is None:
        if "switch" in raw:
            return "switch", ""
        if has_function:
            return "python", ""
        if "approval" in raw:
            return "approval", ""
        raise DefinitionError(
            f"{what} has nothing to run",
            location=locate(None),
            hint="add run: python:NAME, module:function, shell, http, notebook or workflow:NAME (or a switch:)",
        )
    if callable(run):
        return "python", ""
    if not isinstance(run, str) or not run.strip():
        raise DefinitionError(
            f"{what}: run must be text such as python:NAME, module:function, shell, http, notebook or workflow:NAME, got {run!r}",
            location=locate("run"),
        )
    run = run.strip()
    if run in ("shell", "http", "notebook"):
        return run, run
    if run.startswith("workflow:"):
        return "workflow", run
    if ":" in run:
        return "python", run
    close = difflib.get_close_matches(run, ["shell", "http", "notebook"], n=1)
    raise DefinitionError(
        f"{what}: run: {run!r} is not something kernelflow can run"
        + (f" (did you mean {close[0]!r}?)" if close else ""),
        location=locate("run"),
        hint=f"write run: python:{run} for a function in the notebook, module:function for an importable one, "
        "shell, http, notebook or workflow:NAME",
    )


def resolve_python(
    ref: str, namespace: Mapping[str, Any] | None, locate: Locate, key: str, what: str
) -> Callable[..., Any]:
    """The function a ``python:NAME`` or ``module:function`` ref names, or a clear error."""
    kind, _, target = ref.partition(":")
    if kind == "python":
        ns = namespace or {}
        fn = ns.get(target)
        if fn is None or not callable(fn):
            names = [n for n, v in ns.items() if callable(v) and not n.startswith("_") and not isinstance(v, type)]
            close = difflib.get_close_matches(target, names, n=1)
            raise DefinitionError(
                f"{what}: {ref} names no function in the notebook"
                + (f" (did you mean python:{close[0]}?)" if close else ""),
                location=locate(key),
                hint=f"define `def {target}(...)` in an earlier cell, or write module:function for an importable one",
            )
        return fn
    if not kind or not target:
        raise DefinitionError(
            f"{what}: {ref!r} is not a function reference",
            location=locate(key),
            hint="write python:NAME (a notebook function) or module:function (importable)",
        )
    try:
        obj: Any = importlib.import_module(kind)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to see
        raise DefinitionError(
            f"{what}: cannot import module {kind!r} for {ref}: {type(exc).__name__}: {exc}",
            location=locate(key),
            hint="check the module name and that it is installed in this kernel",
        ) from None
    for part in target.split("."):
        if not hasattr(obj, part):
            raise DefinitionError(
                f"{what}: module {kind!r} has no {target!r} (from {ref})",
                location=locate(key),
                hint="check the function name after the colon",
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise DefinitionError(f"{what}: {ref} is not callable", location=locate(key))
    return obj


GENERIC_HINT = "docs/steps.md lists every step key and the values it accepts"


def with_hint(exc: DefinitionError) -> DefinitionError:
    """The same error, with the generic hint when it has none of its own."""
    if exc.hint:
        return exc
    new = type(exc).__new__(type(exc))
    DefinitionError.__init__(new, exc.message, location=exc.location, hint=GENERIC_HINT)
    return new


def build_step(
    task_id: str,
    raw: Mapping[str, Any],
    **kwargs: Any,
) -> BuiltStep:
    """Validate one step's options and build its :class:`Task` (see :func:`_build_step`)."""
    try:
        return _build_step(task_id, raw, **kwargs)
    except DefinitionError as exc:
        if exc.hint:
            raise
        raise with_hint(exc) from None


def _build_step(
    task_id: str,
    raw: Mapping[str, Any],
    *,
    task_ids: Collection[str],
    locate: Locate,
    workflow_name: str,
    namespace: Mapping[str, Any] | None = None,
    function: Callable[..., Any] | None = None,
    line: int | None = None,
    code_hash: str = "",
) -> BuiltStep:
    """Validate one step's options and build its :class:`Task`.

    ``function`` is the Python function behind a decorated task (its
    parameters are the task's); otherwise ``run:`` names what to call.
    ``task_ids`` are all the workflow's task ids (parameters named after one
    receive its output).
    """
    from .definitions import check_not_self_dependent, params_of, ref_of
    from .fingerprint import code_fingerprint

    what = f"task {task_id!r}"
    opts = canonical_keys(raw, locate, what)
    kind, ref = kind_of(opts.get("run"), opts, function is not None, locate, what)
    for k in opts:
        owner = next((kk for kk, keys in KIND_KEYS.items() if k in keys), None)
        if owner is not None and owner != kind:
            raise DefinitionError(
                f"{what}: {k!r} applies to {owner} steps, and this step runs {ref or kind}",
                location=locate(k),
                hint=f"remove {k!r}, or make the step run: {owner}",
            )
    callables: dict[str, Callable[..., Any]] = {}
    aux_hashes: dict[str, str] = {}

    def aux(value: Any, key: str) -> str:
        """A run ref for a case / fallback / compensation, its function remembered."""
        if callable(value) and not isinstance(value, str):
            fn = value
            r = ref_of(fn) if hasattr(fn, "__code__") else f"python:{getattr(fn, '__name__', key)}"
        elif isinstance(value, str) and value.startswith("workflow:"):
            raise DefinitionError(
                f"{what}: {key} may not be a sub-workflow ({value}); wrap the call in a Python function",
                location=locate(key),
            )
        elif isinstance(value, str):
            r = value.strip()
            fn = resolve_python(r, namespace, locate, key, what)
        else:
            raise DefinitionError(
                f"{what}: {key} must be a function or a ref like python:NAME, got {type(value).__name__} {value!r}",
                location=locate(key),
            )
        callables[r] = fn
        if hasattr(fn, "__code__"):
            aux_hashes[r] = code_fingerprint(fn)
        return r

    # -- what it calls ------------------------------------------------------------
    fn = function
    subworkflow = None
    action: dict[str, Any] = {}
    if kind == "python" and fn is None:
        run = opts["run"]
        if callable(run):
            fn = run
            ref = ref_of(fn) if hasattr(fn, "__code__") else f"python:{task_id}"
        else:
            fn = resolve_python(ref, namespace, locate, "run", what)
    elif kind == "python" and not ref:
        ref = f"python:{task_id}"
    if kind == "workflow":
        target = ref.partition(":")[2]
        name, _, version = target.partition("@")
        if not name.isidentifier():
            raise DefinitionError(
                f"{what}: {ref!r} does not name a workflow", location=locate("run"), hint="write workflow:NAME or workflow:NAME@VERSION"
            )
        if name == workflow_name:
            raise DefinitionError(
                f"{what} calls workflow {name!r}, the workflow being defined: a workflow may not call itself",
                location=locate("run"),
                hint="use back_to for a loop, or call a different workflow",
            )
        subworkflow = (name, version or None)
        action = {"workflow": name, "version": version or None}
    elif kind == "sleep":
        extra = [k for k in opts if k not in SLEEP_KEYS]
        if extra:
            raise DefinitionError(
                f"{what}: a sleep step waits and does nothing else, so {extra[0]!r} means nothing for it",
                location=locate(extra[0]),
                hint="allowed with sleep: " + ", ".join(k for k in SLEEP_KEYS if k != "id"),
            )
        try:
            action = {"seconds": parse_duration(opts["sleep"], what="sleep")}
        except ValueError as exc:
            raise DefinitionError(f"{what}: {exc}", location=locate("sleep"), hint="sleep: 10m") from None
    elif kind == "shell":
        action = _shell_action(opts, locate, what)
    elif kind == "http":
        action = _http_action(opts, locate, what)
    elif kind == "notebook":
        action = _notebook_action(opts, locate, what)

    switch = _switch(opts.get("switch"), locate, what, aux) if "switch" in opts else None
    if switch is not None and kind != "switch":
        raise DefinitionError(
            f"{what} has both run: and switch:; the switch's cases say what runs",
            location=locate("switch"),
            hint="remove run:, or move the switch to a step of its own",
        )

    # -- parameters -----------------------------------------------------------------
    params: tuple[Param, ...] = ()
    if kind == "python" and fn is not None:
        target_fn = getattr(fn, "__wrapped__", fn)
        if function is not None:
            params = params_of(target_fn, location=locate(None)) if hasattr(target_fn, "__code__") else ()
        else:
            params = _named_params(fn)  # run: module:function may take *args/**kwargs; input: fills the rest
    elif kind == "switch":
        merged: dict[str, Param] = {}
        for r in switch["cases"].values() if switch else ():
            merged.update({p.name: p for p in _params_of(callables[r]) if p.name not in merged})
        if switch and switch.get("default"):
            merged.update({p.name: p for p in _params_of(callables[switch["default"]]) if p.name not in merged})
        params = tuple(merged.values())
    check_not_self_dependent(task_id, params, location=locate(None))

    # -- flow and data ---------------------------------------------------------------
    needs = _names(opts.get("needs", ()), "needs", locate, what) + _names(opts.get("after", ()), "after", locate, what)
    input_map = opts.get("input", {})
    if not isinstance(input_map, Mapping) or not all(isinstance(k, str) and k.isidentifier() for k in input_map):
        raise DefinitionError(
            f"{what}: input must map parameter names to values or templates, got {input_map!r}",
            location=locate("input"),
            hint="input: {rows: '{{tasks.extract.output}}', limit: 10}",
        )
    output_map = opts.get("output")
    if output_map is not None and not (
        isinstance(output_map, Mapping) and all(isinstance(k, str) and k for k in output_map)
    ):
        raise DefinitionError(
            f"{what}: output must map field names to templates over {{{{output...}}}}, got {output_map!r}",
            location=locate("output"),
            hint="output: {ids: '{{output.items}}'}",
        )
    when = opts.get("when")
    if when is not None:
        if isinstance(when, bool):
            when = "true" if when else "false"
        if not isinstance(when, str):
            raise DefinitionError(
                f"{what}: when must be a condition such as \"{{{{inputs.n}}}} > 3\", got {when!r}",
                location=locate("when"),
            )
    for_each = _for_each(opts.get("for_each"), locate, what) if opts.get("for_each") is not None else ()
    back_to = _jump(opts.get("back_to"), "back_to", locate, what) if opts.get("back_to") is not None else None
    skip_to = _jump(opts.get("skip_to"), "skip_to", locate, what) if opts.get("skip_to") is not None else None
    continue_on_failure = opts.get("continue_on_failure", False)
    if not isinstance(continue_on_failure, bool):
        raise DefinitionError(
            f"{what}: continue_on_failure must be true or false, got {continue_on_failure!r}",
            location=locate("continue_on_failure"),
        )
    fallback = aux(opts["fallback"], "fallback") if opts.get("fallback") is not None else None
    compensate = aux(opts["compensate"], "compensate") if opts.get("compensate") is not None else None
    breaker = None
    if opts.get("circuit_breaker") not in (None, False):
        breaker = _circuit(opts["circuit_breaker"], f"{workflow_name}.{task_id}", locate, what)

    approval = None
    if opts.get("approval") is not None:
        from .gates import parse_approval

        gate_params = tuple(p.name for p in params) if kind == "python" and function is not None else None
        approval = parse_approval(opts["approval"], locate, what, gate_params)
    options = _task_options(opts, needs, locate, what)
    if options.on_timeout == "fallback" and fallback is None:
        raise DefinitionError(
            f"{what}: on_timeout: fallback needs a fallback step",
            location=locate("on_timeout"),
            hint="add fallback: python:NAME (called with the step's inputs), or choose fail, skip or retry",
        )
    if options.on_timeout != "retry" and options.timeout is None:
        raise DefinitionError(
            f"{what}: on_timeout is set but the step has no timeout",
            location=locate("on_timeout"),
            hint="add timeout: 30s (or remove on_timeout)",
        )

    # -- templates: parse all now, so a bad one is a definition error ------------
    loop_depth = len(for_each)
    task_refs: list[str] = []
    input_refs: list[str] = []

    def scan(value: Any, key: str, *, output_ok: bool = False, foreach_depth: int = loop_depth) -> None:
        try:
            refs = refs_in_value(value, location=locate(key))
        except ExpressionError:
            raise
        for r in refs:
            _check_ref(r, key, output_ok, foreach_depth, task_id, task_ids, locate, what)
            if r.root == "tasks":
                task_refs.append(str(r.path[0]))
            elif r.root == "inputs" and r.path:
                input_refs.append(str(r.path[0]))

    scan(input_map, "input")
    if approval is not None:
        scan({k: approval.get(k) for k in ("message", "preview") if approval.get(k) and "{{" in approval[k]}, "approval")
    for k, v in action.items():
        scan(v, k if k in opts else kind)
    if output_map is not None:
        scan(output_map, "output", output_ok=True)
    if when is not None:
        _check_condition(when, "when", locate)
        scan_condition = parse_condition(when, location=locate("when"))
        for r in scan_condition.refs:
            _check_ref(r, "when", False, 0, task_id, task_ids, locate, what)
            if r.root == "tasks":
                task_refs.append(str(r.path[0]))
            elif r.root == "inputs" and r.path:
                input_refs.append(str(r.path[0]))
    if switch is not None:
        scan(switch["value"], "switch", foreach_depth=loop_depth)
    for depth, loop in enumerate(for_each):
        scan(loop["items"], "for_each", foreach_depth=depth)
    for key, jump in (("back_to", back_to), ("skip_to", skip_to)):
        if jump and jump.get("when"):
            cond = parse_condition(jump["when"], location=locate(key))
            for r in cond.refs:
                _check_ref(r, key, True, 0, task_id, task_ids, locate, what)
                if r.root == "tasks":
                    task_refs.append(str(r.path[0]))
                elif r.root == "inputs" and r.path:
                    input_refs.append(str(r.path[0]))

    if kind == "python" and fn is not None and for_each:
        names = {p.name for p in params}
        for loop in for_each:
            if loop["as"] not in names and not any(p.name == loop["as"] for p in params):
                raise DefinitionError(
                    f"{what}: forEach binds each item to {loop['as']!r}, but {getattr(fn, '__name__', ref)} "
                    f"has no parameter {loop['as']!r}",
                    location=locate("for_each"),
                    hint=f"add a parameter {loop['as']!r} to the function, or set as: to one of its parameters",
                )
    if kind == "python" and fn is not None and hasattr(getattr(fn, "__wrapped__", fn), "__code__") and not (
        getattr(getattr(fn, "__wrapped__", fn), "__code__").co_flags & 0x08  # CO_VARKEYWORDS: takes anything
    ):
        names = {p.name for p in params}
        for k in input_map:
            if k not in names:
                raise DefinitionError(
                    f"{what}: input gives {k!r}, but {getattr(fn, '__name__', ref)} has no parameter {k!r}"
                    + _did_you_mean(k, names),
                    location=locate("input"),
                    hint="parameters: " + (", ".join(sorted(names)) or "(none)"),
                )

    deps = tuple(
        p.name for p in params if p.name in task_ids and p.name not in input_map and p.name != task_id
    )
    self_refs = [r for r in task_refs if r == task_id]
    if self_refs:
        raise DefinitionError(
            f"{what} reads its own output in a template ({{{{tasks.{task_id}...}}}})",
            location=locate(None),
            hint="use {{output...}} in output: and in back_to/skip_to conditions",
        )
    spec = StepSpec(
        kind=kind,
        action=action,
        input=dict(input_map),
        output=dict(output_map) if output_map is not None else None,
        when=when,
        switch=switch,
        for_each=for_each,
        back_to=back_to,
        skip_to=skip_to,
        continue_on_failure=continue_on_failure,
        fallback=fallback,
        compensate=compensate,
        circuit_breaker=breaker,
        approval=approval,
        task_refs=tuple(dict.fromkeys(task_refs)),
        input_refs=tuple(dict.fromkeys(input_refs)),
    )
    if spec == EMPTY_SPEC:
        spec = EMPTY_SPEC
    if not code_hash and fn is not None and hasattr(fn, "__code__"):
        code_hash = code_fingerprint(fn)
    task = Task(
        id=task_id,
        params=params,
        deps=deps,
        options=options,
        ref=ref,
        code_hash=code_hash,
        line=line,
        spec=spec,
    )
    return BuiltStep(task, fn, callables, aux_hashes, subworkflow)


# --- pieces ------------------------------------------------------------------------


def _params_of(fn: Callable[..., Any]) -> tuple[Param, ...]:
    from .definitions import params_of

    target = getattr(fn, "__wrapped__", fn)
    return params_of(target) if hasattr(target, "__code__") else ()


def _named_params(fn: Callable[..., Any]) -> tuple[Param, ...]:
    import inspect

    from .definitions import _short_repr

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: input: gives everything
        return ()
    out = []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        has_default = p.default is not p.empty
        out.append(Param(p.name, has_default, _short_repr(p.default) if has_default else None))
    return tuple(out)


def _did_you_mean(name: str, candidates: Collection[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _names(value: Any, key: str, locate: Locate, what: str) -> tuple[str, ...]:
    if value in (None, ()):
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise DefinitionError(
            f"{what}: {key} must be a list of task ids, got {value!r}",
            location=locate(key),
            hint=f"{key}: [extract, clean]",
        )
    return tuple(value)


def _check_condition(text: str, key: str, locate: Locate) -> None:
    parse_condition(text, location=locate(key))


def _check_ref(
    r: Ref,
    key: str,
    output_ok: bool,
    foreach_depth: int,
    task_id: str,
    task_ids: Collection[str],
    locate: Locate,
    what: str,
) -> None:
    where = locate(key)
    if r.root == "output" and not output_ok:
        raise DefinitionError(
            f"{what}: {{{{{r.text}}}}} in {key}: a step's own output is known only in output: "
            "and in back_to/skip_to conditions",
            location=where,
            hint="read another task's output with {{tasks.ID.output...}}",
        )
    if r.root == "forEach":
        parents = sum(1 for p in r.path if p == "$parent")
        if foreach_depth == 0:
            raise DefinitionError(
                f"{what}: {{{{{r.text}}}}} in {key}, outside any forEach loop",
                location=where,
                hint="forEach.item and forEach.index exist inside a step with forEach:",
            )
        if parents >= foreach_depth:
            raise DefinitionError(
                f"{what}: {{{{{r.text}}}}} goes up {parents} loop(s), but {key} is inside {foreach_depth}",
                location=where,
                hint="use one $parent less (forEach.$parent.item is the enclosing loop's item)",
            )
    if r.root == "tasks":
        if not r.path:
            raise DefinitionError(f"{what}: {{{{{r.text}}}}} names no task", location=where, hint="{{tasks.ID.output}}")
        tid = str(r.path[0])
        if tid not in task_ids:
            raise DefinitionError(
                f"{what}: {{{{{r.text}}}}} names task {tid!r}, which is not in this workflow"
                + _did_you_mean(tid, task_ids),
                location=where,
                hint="fix the task id in the template",
            )
        if len(r.path) > 1 and r.path[1] not in ("output", "status"):
            raise DefinitionError(
                f"{what}: {{{{{r.text}}}}}: after the task id comes output or status, not {r.path[1]!r}",
                location=where,
                hint=f"{{{{tasks.{tid}.output}}}} or {{{{tasks.{tid}.output.FIELD}}}}",
            )
    if r.root == "inputs" and not r.path:
        raise DefinitionError(f"{what}: {{{{{r.text}}}}} names no input", location=where, hint="{{inputs.NAME}}")


def _switch(value: Any, locate: Locate, what: str, aux: Callable[[Any, str], str]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise DefinitionError(
            f"{what}: switch must be a mapping with value, cases and optionally default, got {value!r}",
            location=locate("switch"),
            hint="switch: {value: '{{tasks.parse.output.kind}}', cases: {a: python:handle_a}, default: python:other}",
        )
    unknown = set(value) - {"value", "cases", "default"}
    if unknown:
        bad = sorted(map(str, unknown))[0]
        raise DefinitionError(
            f"{what}: switch has an unknown key {bad!r}" + _did_you_mean(bad, ["value", "cases", "default"]),
            location=locate("switch"),
            hint="switch takes value, cases and default",
        )
    if "value" not in value:
        raise DefinitionError(f"{what}: switch has no value to switch on", location=locate("switch"), hint="add value: '{{...}}'")
    cases = value.get("cases")
    if not isinstance(cases, Mapping) or not cases:
        raise DefinitionError(
            f"{what}: switch needs at least one case",
            location=locate("switch"),
            hint="cases: {a: python:handle_a, b: python:handle_b}",
        )
    out_cases = {}
    for case, target in cases.items():
        label = "null" if case is None else (str(case).lower() if isinstance(case, bool) else str(case))
        out_cases[label] = aux(target, "switch")
    default = value.get("default")
    return {
        "value": value["value"],
        "cases": out_cases,
        "default": aux(default, "switch") if default is not None else None,
    }


def _for_each(value: Any, locate: Locate, what: str) -> tuple[dict[str, Any], ...]:
    loops: list[dict[str, Any]] = []
    items = value if isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value) else [value]
    for loop in items:
        while loop is not None:
            if isinstance(loop, str):
                loop = {"items": loop}
            if not isinstance(loop, Mapping):
                raise DefinitionError(
                    f"{what}: forEach must be a mapping with items (and as, maxParallel, on_failure), got {loop!r}",
                    location=locate("for_each"),
                    hint="forEach: {items: '{{tasks.parse.output.ids}}', as: id, maxParallel: 5}",
                )
            loop = {ALIASES.get(k, k): v for k, v in loop.items()}
            unknown = set(loop) - {"items", "as", "max_parallel", "on_failure", "for_each"}
            if unknown:
                bad = sorted(map(str, unknown))[0]
                raise DefinitionError(
                    f"{what}: forEach has an unknown key {bad!r}"
                    + _did_you_mean(bad, ["items", "as", "maxParallel", "on_failure", "forEach"]),
                    location=locate("for_each"),
                    hint="forEach takes items, as, maxParallel, on_failure and a nested forEach",
                )
            if "items" not in loop:
                raise DefinitionError(f"{what}: forEach has no items", location=locate("for_each"), hint="items: '{{...}}' or a list")
            if not isinstance(loop["items"], (str, list, tuple)):
                raise DefinitionError(
                    f"{what}: forEach items must be a list or a template giving one, got {loop['items']!r}",
                    location=locate("for_each"),
                )
            name = loop.get("as", "item")
            if not isinstance(name, str) or not name.isidentifier():
                raise DefinitionError(f"{what}: forEach as must be a parameter name, got {name!r}", location=locate("for_each"))
            mp = loop.get("max_parallel")
            if mp is not None and (isinstance(mp, bool) or not isinstance(mp, int) or mp < 1):
                raise DefinitionError(
                    f"{what}: forEach maxParallel must be a whole number >= 1, got {mp!r}", location=locate("for_each")
                )
            policy = loop.get("on_failure", "fail")
            if policy not in FOREACH_FAILURE_POLICIES:
                raise DefinitionError(
                    f"{what}: forEach on_failure must be fail or continue, got {policy!r}",
                    location=locate("for_each"),
                    hint="fail: the step fails when an item fails; continue: failed items are counted and the step succeeds",
                )
            items_value = loop["items"]
            loops.append(
                {
                    "items": list(items_value) if isinstance(items_value, tuple) else items_value,
                    "as": name,
                    "max_parallel": mp,
                    "on_failure": policy,
                }
            )
            loop = loop.get("for_each")
    names = [lp["as"] for lp in loops]
    if len(set(names)) != len(names):
        raise DefinitionError(
            f"{what}: nested forEach loops bind the same name {names!r}",
            location=locate("for_each"),
            hint="give each loop its own as: name",
        )
    return tuple(loops)


def _jump(value: Any, key: str, locate: Locate, what: str) -> dict[str, Any]:
    if isinstance(value, str):
        value = {"step": value}
    if not isinstance(value, Mapping):
        raise DefinitionError(
            f"{what}: {key} must be a task id or a mapping with step and when, got {value!r}",
            location=locate(key),
            hint=f"{key}: {{step: fetch, when: \"{{{{output.done}}}} == false\"}}",
        )
    value = {ALIASES.get(k, k): v for k, v in value.items()}
    allowed = {"step", "when", "max_iterations"} if key == "back_to" else {"step", "when"}
    unknown = set(value) - allowed
    if unknown:
        bad = sorted(map(str, unknown))[0]
        raise DefinitionError(
            f"{what}: {key} has an unknown key {bad!r}" + _did_you_mean(bad, sorted(allowed)),
            location=locate(key),
            hint=f"{key} takes " + ", ".join(sorted(allowed)),
        )
    step = value.get("step")
    if not isinstance(step, str) or not step:
        raise DefinitionError(f"{what}: {key} needs a step to jump to, got {step!r}", location=locate(key))
    when = value.get("when")
    if when is not None and not isinstance(when, str):
        raise DefinitionError(f"{what}: {key} when must be a condition (text), got {when!r}", location=locate(key))
    out: dict[str, Any] = {"step": step, "when": when}
    # back_to without when always jumps: meaningful when another step leaves
    # the loop (a while loop: the test step skip_to's past it), a trap otherwise.
    if key == "back_to":
        limit = value.get("max_iterations", DEFAULT_MAX_ITERATIONS)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise DefinitionError(
                f"{what}: back_to max_iterations must be a whole number >= 1, got {limit!r}",
                location=locate(key),
            )
        out["max_iterations"] = limit
    return out


def _circuit(value: Any, default_name: str, locate: Locate, what: str) -> dict[str, Any]:
    from .circuit_breaker import CircuitConfig

    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        raise DefinitionError(
            f"{what}: circuit_breaker must be true or a mapping, got {value!r}",
            location=locate("circuit_breaker"),
            hint="circuit_breaker: {failure_threshold: 5, window: 60s, break_duration: 30s}",
        )
    name = value.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise DefinitionError(f"{what}: circuit_breaker name must be text, got {name!r}", location=locate("circuit_breaker"))
    try:
        config = CircuitConfig.from_options(value)
    except OptionError as exc:
        raise OptionError(exc.message, location=locate("circuit_breaker"), hint=exc.hint) from None
    assert config is not None
    return {"name": name, **config.to_dict()}


def _shell_action(opts: MutableMapping[str, Any], locate: Locate, what: str) -> dict[str, Any]:
    argv = opts.get("argv")
    use_shell = opts.get("shell", False)
    if not isinstance(use_shell, bool):
        raise DefinitionError(f"{what}: shell must be true or false, got {use_shell!r}", location=locate("shell"))
    if argv is None:
        raise DefinitionError(
            f"{what} runs shell but has no argv",
            location=locate(None),
            hint="argv: [ls, -l, data/] (a list: no shell interpolation)",
        )
    if use_shell:
        if not isinstance(argv, str):
            raise DefinitionError(
                f"{what}: with shell: true, argv must be one command string, got {argv!r}",
                location=locate("argv"),
                hint="argv: 'ls -l | wc -l'  (runs through /bin/sh: never put untrusted values in it)",
            )
    elif isinstance(argv, str):
        raise DefinitionError(
            f"{what}: argv must be a list of arguments, not a string",
            location=locate("argv"),
            hint=f"argv: {argv.split()!r}; or set shell: true to run a string through /bin/sh (unsafe with untrusted values)",
        )
    elif not isinstance(argv, list) or not argv or not all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in argv):
        raise DefinitionError(
            f"{what}: argv must be a non-empty list of text arguments, got {argv!r}",
            location=locate("argv"),
        )
    action: dict[str, Any] = {"argv": argv if use_shell else [str(a) for a in argv], "shell": use_shell}
    if opts.get("cwd") is not None:
        if not isinstance(opts["cwd"], str):
            raise DefinitionError(f"{what}: cwd must be a directory path, got {opts['cwd']!r}", location=locate("cwd"))
        action["cwd"] = opts["cwd"]
    if opts.get("env") is not None:
        action["env"] = _text_mapping(opts["env"], "env", locate, what)
    if "inherit_env" in opts:
        if not isinstance(opts["inherit_env"], bool):
            raise DefinitionError(f"{what}: inherit_env must be true or false", location=locate("inherit_env"))
        action["inherit_env"] = opts["inherit_env"]
    if opts.get("max_output") is not None:
        action["max_output"] = _size(opts["max_output"], "max_output", locate, what)
    if opts.get("stdin") is not None:
        if not isinstance(opts["stdin"], str):
            raise DefinitionError(f"{what}: stdin must be text", location=locate("stdin"))
        action["stdin"] = opts["stdin"]
    return action


def _text_mapping(value: Any, key: str, locate: Locate, what: str) -> dict[str, str]:
    """``env:`` and ``headers:``: names to text (numbers written unquoted in YAML become text)."""
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, (str, int, float)) and not isinstance(v, bool) for k, v in value.items()
    ):
        raise DefinitionError(f"{what}: {key} must map names to text values, got {value!r}", location=locate(key))
    return {k: str(v) for k, v in value.items()}


_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "k": 1000, "mb": 1000**2, "m": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2}


def _size(value: Any, key: str, locate: Locate, what: str) -> int:
    import re

    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value) if isinstance(value, str) else None
    if m and m.group(2).lower() in _SIZE_UNITS and float(m.group(1)) > 0:
        return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise DefinitionError(
        f"{what}: {key} must be a positive size like 1000000, '64KB' or '1MB', got {value!r}",
        location=locate(key),
    )


HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


def _http_action(opts: Mapping[str, Any], locate: Locate, what: str) -> dict[str, Any]:
    method = opts.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
        raise DefinitionError(
            f"{what}: method must be one of {', '.join(HTTP_METHODS)}, got {method!r}",
            location=locate("method"),
        )
    url = opts.get("url")
    if not isinstance(url, str) or not url.strip():
        raise DefinitionError(f"{what} runs http but has no url", location=locate("url" if "url" in opts else None), hint="url: https://...")
    if "{{" not in url and not url.lower().startswith(("http://", "https://")):
        raise DefinitionError(
            f"{what}: url must start with http:// or https://, got {url!r}", location=locate("url")
        )
    action: dict[str, Any] = {"method": method.upper(), "url": url}
    if opts.get("headers") is not None:
        action["headers"] = _text_mapping(opts["headers"], "headers", locate, what)
    if "json" in opts:
        action["json"] = opts["json"]
    if opts.get("max_body") is not None:
        action["max_body"] = _size(opts["max_body"], "max_body", locate, what)
    if opts.get("params") is not None:
        if not isinstance(opts["params"], Mapping):
            raise DefinitionError(f"{what}: params must be a mapping, got {opts['params']!r}", location=locate("params"))
        action["params"] = dict(opts["params"])
    return action


def _notebook_action(opts: Mapping[str, Any], locate: Locate, what: str) -> dict[str, Any]:
    path = opts.get("notebook")
    if not isinstance(path, str) or not path.strip():
        raise DefinitionError(
            f"{what} runs a notebook but names none" if path is None else f"{what}: notebook must be a path, got {path!r}",
            location=locate("notebook") or locate(None),
            hint="notebook: reports/child.ipynb (relative to the workflow file, or to the current folder)",
        )
    if "{{" not in path and not path.strip().endswith(".ipynb"):
        raise DefinitionError(f"{what}: notebook {path!r} is not a .ipynb file", location=locate("notebook"))
    action: dict[str, Any] = {"notebook": path.strip()}
    parameters = opts.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, Mapping) or not all(isinstance(k, str) and k.isidentifier() for k in parameters):
            raise DefinitionError(
                f"{what}: parameters must map parameter names to values, got {parameters!r}",
                location=locate("parameters"),
                hint="parameters: {date: '{{inputs.date}}', n: 10}",
            )
        action["parameters"] = dict(parameters)
    if opts.get("kernel") is not None:
        if not isinstance(opts["kernel"], str):
            raise DefinitionError(f"{what}: kernel must be a kernel name such as python3", location=locate("kernel"))
        action["kernel"] = opts["kernel"]
    return action


def _task_options(opts: Mapping[str, Any], needs: tuple[str, ...], locate: Locate, what: str) -> TaskOptions:
    keys = [k for k in (*RETRY_KEYS, "timeout", "on_timeout", "executor") if k in opts]
    if not keys and not needs:
        return DEFAULT_OPTIONS
    kwargs = {k: opts[k] for k in keys}
    for k in ("retry_delay", "max_delay", "timeout"):
        value = kwargs.get(k)
        if isinstance(value, str):
            try:
                kwargs[k] = parse_duration(value, what=k) if value.strip() not in ("0", "0s") else 0.0
            except ValueError as exc:
                raise OptionError(f"{what}: {exc}", location=locate(k)) from None
    for k in ("retries", "max_attempts"):
        if k in kwargs and (isinstance(kwargs[k], bool) or not isinstance(kwargs[k], int) or kwargs[k] < (0 if k == "retries" else 1)):
            low = 0 if k == "retries" else 1
            raise OptionError(f"{what}: {k} must be a whole number >= {low}, got {kwargs[k]!r}", location=locate(k))
    if "timeout" in kwargs and kwargs["timeout"] is not None:
        t = kwargs["timeout"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
            raise OptionError(
                f"{what}: timeout must be a duration greater than zero (30, '500ms', '30s', '5m'), got {t!r}",
                location=locate("timeout"),
            )
    try:
        return TaskOptions.build(**kwargs, after=needs)
    except OptionError as exc:
        key = next((k for k in keys if k in exc.message), keys[0] if keys else "needs")
        raise OptionError(f"{what}: {exc.message}", location=locate(key), hint=exc.hint) from None
    except TypeError as exc:
        raise OptionError(f"{what}: {exc}", location=locate(None)) from None
