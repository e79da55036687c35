"""The workflow model: immutable ``Workflow`` and ``Task`` objects.

Every way of defining a workflow (a ``%%workflow`` cell, ``kf.workflow()``,
a JSON definition) ends here. The model is plain data plus, kept apart and
never serialised, the Python callables that implement the tasks.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import heapq
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import orjson

from .durations import format_duration, parse_duration
from .exceptions import CycleError, DefinitionError, OptionError

FORMAT_VERSION = 1
BACKOFFS = ("fixed", "linear", "exponential")
ON_TIMEOUT = ("fail", "skip", "retry", "fallback")
DEFAULT_EXECUTOR = "threads"
# Keyword arguments of Workflow.run() and friends: an input may not share a name.
RESERVED_INPUT_NAMES = frozenset({"raise_on_failure", "run_id", "store", "observers"})


@contextlib.contextmanager
def gc_paused():
    """Pause the cyclic garbage collector while building a large definition.

    A 10,000-task workflow allocates ~100k small acyclic objects; the
    collector's generation passes over them cost ~40% of the build and free
    nothing. Reference counting still frees everything as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _option_error(message: str) -> OptionError:
    return OptionError(message, hint="use one of the accepted values above (help(kf.task) lists every option)")


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """How a task is attempted: retries, backoff, timeout, executor; all validated on construction.

    ``retries`` counts extra attempts (``max_attempts = retries + 1``).
    ``retry_on`` names the exception types that may be retried (by class
    name, matched against the exception's MRO; empty: every exception).
    ``jitter`` spreads each retry delay uniformly over ``delay * (1 ± jitter)``.
    ``on_timeout``: ``retry`` (a timeout is a failure like any other),
    ``fail`` (fail at once, no retry), ``skip`` (the task is skipped) or
    ``fallback`` (the step's fallback gives the output).
    """

    retries: int = 0
    backoff: str = "fixed"
    retry_delay: float = 1.0
    max_delay: float = 300.0
    timeout: float | None = None
    executor: str | None = None
    after: tuple[str, ...] = ()
    jitter: float = 0.0
    retry_on: tuple[str, ...] = ()
    on_timeout: str = "retry"

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise _option_error(f"retries must be a whole number >= 0, got {self.retries!r}")
        if self.backoff not in BACKOFFS:
            raise _option_error(f"backoff must be one of {', '.join(BACKOFFS)}, got {self.backoff!r}")
        if isinstance(self.retry_delay, bool) or not isinstance(self.retry_delay, (int, float)) or self.retry_delay < 0:
            raise _option_error(f"retry_delay must be a number of seconds >= 0, got {self.retry_delay!r}")
        if isinstance(self.max_delay, bool) or not isinstance(self.max_delay, (int, float)) or self.max_delay < 0:
            raise _option_error(f"max_delay must be a number of seconds >= 0, got {self.max_delay!r}")
        if self.executor is not None and (not isinstance(self.executor, str) or not self.executor):
            raise _option_error(f"executor must be an executor name such as 'threads', got {self.executor!r}")
        if not all(isinstance(a, str) for a in self.after):
            raise _option_error(f"after must be a list of task names, got {list(self.after)!r}")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter <= 1:
            raise _option_error(f"jitter must be a fraction between 0 and 1 (0.2 = ±20%), got {self.jitter!r}")
        if not all(isinstance(r, str) and r for r in self.retry_on):
            raise _option_error(f"retry_on must list exception types or their names, got {list(self.retry_on)!r}")
        if self.on_timeout not in ON_TIMEOUT:
            raise _option_error(f"on_timeout must be one of {', '.join(ON_TIMEOUT)}, got {self.on_timeout!r}")

    @classmethod
    def build(
        cls,
        *,
        retries: int | None = None,
        max_attempts: int | None = None,
        backoff: str = "fixed",
        retry_delay: float | str = 1.0,
        max_delay: float | str = 300.0,
        timeout: float | str | None = None,
        executor: str | None = None,
        after: Iterable[str] | str = (),
        jitter: float = 0.0,
        retry_on: Iterable[Any] | Any = (),
        on_timeout: str = "retry",
    ) -> TaskOptions:
        """Options from user-facing values (durations may be strings like ``"30s"``,
        ``retry_on`` exception classes or their names)."""
        if max_attempts is not None:
            if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
                raise _option_error(f"max_attempts must be a whole number >= 1, got {max_attempts!r}")
            if retries is not None and retries != max_attempts - 1:
                raise _option_error(
                    f"retries={retries!r} and max_attempts={max_attempts!r} disagree (max_attempts = retries + 1)"
                )
            retries = max_attempts - 1
        try:
            delay = 0.0 if retry_delay in (0, 0.0) else parse_duration(retry_delay, what="retry_delay")
            cap = parse_duration(max_delay, what="max_delay")
            limit = None if timeout is None else parse_duration(timeout, what="timeout")
        except ValueError as exc:
            raise _option_error(str(exc)) from None
        if isinstance(after, str):
            after = (after,)
        try:
            after_t = tuple(after)
        except TypeError:
            raise _option_error(f"after must be a list of task names, got {after!r}") from None
        if isinstance(retry_on, (str, type)):
            retry_on = (retry_on,)
        try:
            names = tuple(r.__name__ if isinstance(r, type) else r for r in retry_on)
        except TypeError:
            raise _option_error(f"retry_on must list exception types or their names, got {retry_on!r}") from None
        for r in retry_on:
            if isinstance(r, type) and not issubclass(r, BaseException):
                raise _option_error(f"retry_on must list exception types, got the class {r.__name__}")
        return cls(
            0 if retries is None else retries,
            backoff,
            float(delay),
            float(cap),
            limit,
            executor,
            after_t,
            jitter,
            names,
            on_timeout,
        )

    def delay_before(self, attempt: int, rand: float = 0.5) -> float:
        """Seconds to wait before ``attempt`` (2 for the first retry).

        ``rand`` in [0, 1) picks the point in the jitter band (0.5: none).
        """
        n = attempt - 1  # retries done so far, >= 1
        if self.backoff == "fixed":
            delay = self.retry_delay
        elif self.backoff == "linear":
            delay = self.retry_delay * n
        else:
            delay = self.retry_delay * 2 ** (n - 1)
        delay = min(delay, self.max_delay)
        if self.jitter:
            delay *= 1 + self.jitter * (2 * rand - 1)
        return delay

    def retries_error(self, exc: BaseException | None) -> bool:
        """Whether an attempt that raised ``exc`` may be retried under ``retry_on``."""
        if not self.retry_on or exc is None:
            return True
        names = set()
        for klass in type(exc).__mro__:
            names.add(klass.__name__)
            names.add(f"{klass.__module__}.{klass.__qualname__}")
        return any(r in names for r in self.retry_on)

    def to_dict(self) -> dict[str, Any]:
        return {
            "retries": self.retries,
            "backoff": self.backoff,
            "retry_delay": self.retry_delay,
            "max_delay": self.max_delay,
            "timeout": self.timeout,
            "executor": self.executor,
            "after": list(self.after),
            "jitter": self.jitter,
            "retry_on": list(self.retry_on),
            "on_timeout": self.on_timeout,
        }

    def key(self) -> tuple[Any, ...]:
        """The options as a tuple (for hashing)."""
        return (
            self.retries,
            self.backoff,
            self.retry_delay,
            self.max_delay,
            self.timeout,
            self.executor,
            self.after,
            self.jitter,
            self.retry_on,
            self.on_timeout,
        )

    def describe(self) -> str:
        """Non-default options, compactly: ``retries=3 exponential, timeout=30s``."""
        parts = []
        if self.retries:
            parts.append(f"retries={self.retries}" + (f" {self.backoff}" if self.backoff != "fixed" else ""))
        if self.timeout is not None:
            parts.append(f"timeout={format_duration(self.timeout)}")
            if self.on_timeout != "retry":
                parts.append(f"on_timeout={self.on_timeout}")
        if self.executor:
            parts.append(f"executor={self.executor}")
        return ", ".join(parts)


DEFAULT_OPTIONS = TaskOptions()
_DEFAULT_OPTIONS_DICT = DEFAULT_OPTIONS.to_dict()


STEP_KINDS = ("python", "shell", "http", "notebook", "workflow", "switch")


@dataclass(frozen=True, slots=True)
class StepSpec:
    """What a step does beyond calling one Python function, as plain JSON-able data.

    Built and validated by :mod:`kernelflow.steps` (from YAML keys, decorator
    options or ``kf.shell``/``kf.http``/... in a cell); the engine reads it.
    Strings may hold templates (:mod:`kernelflow.expressions`). Treat the
    dicts as read-only.
    """

    kind: str = "python"
    action: Mapping[str, Any] = field(default_factory=dict)  # shell/http/workflow settings
    input: Mapping[str, Any] = field(default_factory=dict)  # parameter -> template or value
    output: Mapping[str, Any] | None = None  # output field -> template over {{output...}}
    when: str | None = None
    switch: Mapping[str, Any] | None = None  # {value, cases: {case: ref}, default: ref | None}
    for_each: tuple[Mapping[str, Any], ...] = ()  # outermost first: {items, as, max_parallel, on_failure}
    back_to: Mapping[str, Any] | None = None  # {step, when, max_iterations}
    skip_to: Mapping[str, Any] | None = None  # {step, when}
    continue_on_failure: bool = False
    fallback: str | None = None  # a run ref
    compensate: str | None = None  # a run ref
    circuit_breaker: Mapping[str, Any] | None = None
    approval: Mapping[str, Any] | None = None  # a gate before the step (kernelflow.gates)
    task_refs: tuple[str, ...] = ()  # tasks its templates read (validated, and waited for)
    input_refs: tuple[str, ...] = ()  # workflow inputs its templates read

    @property
    def is_plain(self) -> bool:
        return self is EMPTY_SPEC or self == EMPTY_SPEC

    def loop_names(self) -> tuple[str, ...]:
        """Parameter names the forEach loops bind (``as``)."""
        return tuple(loop["as"] for loop in self.for_each)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if value != getattr(EMPTY_SPEC, name):
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> StepSpec:
        if not d:
            return EMPTY_SPEC
        kw = dict(d)
        for name in ("for_each", "task_refs", "input_refs"):
            if name in kw:
                kw[name] = tuple(kw[name])
        return cls(**kw)

    def refs(self) -> tuple[str, ...]:
        """Every run ref it may call besides the task's own (switch cases, fallback, compensate)."""
        out = []
        if self.switch:
            out.extend(r for r in self.switch.get("cases", {}).values())
            if self.switch.get("default"):
                out.append(self.switch["default"])
        out.extend(r for r in (self.fallback, self.compensate) if r)
        return tuple(dict.fromkeys(out))


EMPTY_SPEC = StepSpec()


@dataclass(frozen=True, slots=True)
class Param:
    """A task parameter: a dependency (named after a task) or a workflow input."""

    name: str
    has_default: bool = False
    default_repr: str | None = None


@dataclass(frozen=True, slots=True)
class Task:
    """One step of a workflow.

    ``deps`` are the tasks whose outputs are passed in as parameters of the
    same name; ``options.after`` adds order-only dependencies.
    """

    id: str
    params: tuple[Param, ...]
    deps: tuple[str, ...]
    options: TaskOptions = DEFAULT_OPTIONS
    ref: str = ""
    code_hash: str = ""
    line: int | None = None
    spec: StepSpec = EMPTY_SPEC

    @property
    def inputs(self) -> tuple[Param, ...]:
        """Parameters the workflow's inputs fill: not dependencies, not given by
        the step's ``input`` mapping, not bound by its forEach loops, not filled
        by the answer to its approval gate."""
        spec = self.spec
        if spec is EMPTY_SPEC:
            taken = set(self.deps)
        else:
            taken = set(self.deps) | set(spec.input) | set(spec.loop_names())
            if spec.approval is not None:
                taken |= {"approval", *((spec.approval.get("input") or {}).get("fields") or {})}
        return tuple(p for p in self.params if p.name not in taken)

    @property
    def upstream(self) -> tuple[str, ...]:
        """Every task this one waits for: data dependencies, then ``after``
        (YAML ``needs``), then the tasks its templates read."""
        extra = self.options.after + self.spec.task_refs
        if not extra:
            return self.deps
        return tuple(dict.fromkeys(self.deps + extra))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ref": self.ref,
            "params": [
                {"name": p.name, "has_default": p.has_default, "default": p.default_repr} for p in self.params
            ],
            "deps": list(self.deps),
            "options": self.options.to_dict(),
            "code_hash": self.code_hash,
            "line": self.line,
            **({"spec": self.spec.to_dict()} if self.spec is not EMPTY_SPEC else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Task:
        raw = d.get("options")
        if not raw or raw == _DEFAULT_OPTIONS_DICT:
            options = DEFAULT_OPTIONS
        else:
            opts = dict(raw)
            opts["after"] = tuple(opts.get("after") or ())
            opts["retry_on"] = tuple(opts.get("retry_on") or ())
            options = TaskOptions(**opts)
        return cls(
            id=d["id"],
            params=tuple([Param(p["name"], p["has_default"], p.get("default")) for p in d.get("params", ())]),
            deps=tuple(d.get("deps", ())),
            options=options,
            ref=d.get("ref", ""),
            code_hash=d.get("code_hash", ""),
            line=d.get("line"),
            spec=StepSpec.from_dict(d.get("spec")),
        )


INPUT_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool, "list": list, "dict": dict, "any": object}


@dataclass(frozen=True, slots=True)
class InputDecl:
    """A declared workflow input (YAML ``inputs:``): a type name and an optional default."""

    name: str
    type: str = "any"
    has_default: bool = False
    default: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "has_default": self.has_default, "default": self.default}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputDecl:
        return cls(d["name"], d.get("type", "any"), d.get("has_default", False), d.get("default"))

    def accepts(self, value: Any) -> bool:
        expected = INPUT_TYPES.get(self.type, object)
        if self.type in ("int", "float") and isinstance(value, bool):
            return False
        return isinstance(value, expected)


@dataclass(frozen=True, slots=True)
class WorkflowInput:
    """An input of the workflow: a task parameter that is not a task's name.

    ``required`` when at least one task that takes it has no default; when
    it is not passed, each task falls back to its own default.
    """

    name: str
    required: bool
    used_by: tuple[str, ...]


@dataclass(frozen=True)
class Workflow:
    """An immutable, validated workflow definition.

    ``version`` is a hash of the definition and the tasks' code: edits to
    comments, whitespace or docstrings keep it; any edit to behaviour changes
    it. The callables are held apart (``functions``) and are not part of the
    JSON form; :meth:`from_json` takes a namespace to find them again.
    """

    name: str
    tasks: tuple[Task, ...]
    max_parallel: int = 8
    executor: str = DEFAULT_EXECUTOR
    source: str = ""
    source_hash: str = ""
    version: str = ""
    functions: Mapping[str, Callable[..., Any]] = field(default_factory=dict, compare=False, repr=False)
    declared_inputs: tuple[InputDecl, ...] | None = None
    max_foreach_depth: int = 3
    max_subworkflow_depth: int = 5
    origin: str = "cell"
    # Callables for run refs other than the tasks' own (switch cases, fallbacks,
    # compensations), by ref; and their code fingerprints (part of the version).
    callables: Mapping[str, Callable[..., Any]] = field(default_factory=dict, compare=False, repr=False)
    aux_hashes: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    # When it runs by itself (YAML ``schedule:``; kernelflow.schedules.Schedule objects).
    # Not part of the version, the JSON form or equality: when a workflow runs
    # does not change what it does, and the scheduler reads schedules from the file.
    schedules: tuple[Any, ...] = field(default=(), compare=False, repr=False)
    _index: dict[str, Task] = field(default_factory=dict, compare=False, repr=False)
    _order: tuple[str, ...] = field(default=(), compare=False, repr=False)
    _inputs: tuple[WorkflowInput, ...] = field(default=(), compare=False, repr=False)

    # Construction goes through build() so every Workflow is validated.
    @classmethod
    def build(
        cls,
        name: str,
        tasks: Iterable[Task],
        *,
        functions: Mapping[str, Callable[..., Any]] | None = None,
        max_parallel: int = 8,
        executor: str = DEFAULT_EXECUTOR,
        source: str = "",
        source_hash: str = "",
        declared_inputs: Iterable[InputDecl] | None = None,
        max_foreach_depth: int = 3,
        max_subworkflow_depth: int = 5,
        origin: str = "cell",
        callables: Mapping[str, Callable[..., Any]] | None = None,
        aux_hashes: Mapping[str, str] | None = None,
        schedules: Iterable[Any] = (),
    ) -> Workflow:
        """Validate and freeze a workflow; raises :class:`DefinitionError` subclasses.

        ``declared_inputs`` (YAML ``inputs:``), when given, are the only inputs
        templates may read; without them a template's ``{{inputs.x}}`` makes
        ``x`` a required input. ``origin`` names where lines are counted
        (``"cell"`` or a file name) in error locations. ``schedules`` are
        validated :class:`kernelflow.schedules.Schedule` objects, kept as they are.
        """
        with gc_paused():
            wf = cls._build(
                name,
                tasks,
                functions,
                max_parallel,
                executor,
                source,
                source_hash,
                None if declared_inputs is None else tuple(declared_inputs),
                max_foreach_depth,
                max_subworkflow_depth,
                origin,
                dict(callables or {}),
                dict(aux_hashes or {}),
            )
        schedules = tuple(schedules)
        if schedules:
            object.__setattr__(wf, "schedules", schedules)
        return wf

    @classmethod
    def _build(
        cls,
        name: str,
        tasks: Iterable[Task],
        functions: Mapping[str, Callable[..., Any]] | None,
        max_parallel: int,
        executor: str,
        source: str,
        source_hash: str,
        declared_inputs: tuple[InputDecl, ...] | None = None,
        max_foreach_depth: int = 3,
        max_subworkflow_depth: int = 5,
        origin: str = "cell",
        callables: dict[str, Callable[..., Any]] | None = None,
        aux_hashes: dict[str, str] | None = None,
    ) -> Workflow:
        if not isinstance(name, str) or not name.isidentifier():
            raise DefinitionError(
                f"workflow name must be a Python identifier (it is bound as a variable), got {name!r}",
                hint="use letters, digits and underscores, not starting with a digit, e.g. etl_daily",
            )
        if isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1:
            raise _option_error(f"max_parallel must be a whole number >= 1, got {max_parallel!r}")
        if not isinstance(executor, str) or not executor:
            raise _option_error(f"executor must be an executor name such as 'threads', got {executor!r}")
        for what, limit in (("max_foreach_depth", max_foreach_depth), ("max_subworkflow_depth", max_subworkflow_depth)):
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise _option_error(f"{what} must be a whole number >= 1, got {limit!r}")
        task_list = tuple(tasks)
        index = _index_tasks(task_list, origin)
        order = _topological_order(task_list, index, origin)
        _check_flow(task_list, index, origin, max_foreach_depth)
        inputs = _collect_inputs(task_list, index, origin, declared_inputs)
        wf = cls(
            name=name,
            tasks=task_list,
            max_parallel=max_parallel,
            executor=executor,
            source=source,
            source_hash=source_hash,
            functions=dict(functions or {}),
            declared_inputs=declared_inputs,
            max_foreach_depth=max_foreach_depth,
            max_subworkflow_depth=max_subworkflow_depth,
            origin=origin,
            callables=callables or {},
            aux_hashes=aux_hashes or {},
            _index=index,
            _order=order,
            _inputs=inputs,
        )
        object.__setattr__(wf, "version", _version_of(wf))
        return wf

    # --- lookups -------------------------------------------------------------

    def __getitem__(self, task_id: str) -> Task:
        try:
            return self._index[task_id]
        except KeyError:
            raise KeyError(f"workflow {self.name!r} has no task {task_id!r}; tasks: {', '.join(self._index)}") from None

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._index

    def __len__(self) -> int:
        return len(self.tasks)

    @property
    def task_ids(self) -> tuple[str, ...]:
        return tuple(self._index)

    @property
    def order(self) -> tuple[str, ...]:
        """Task ids in a topological order (stable: definition order among equals)."""
        return self._order

    @property
    def inputs(self) -> tuple[WorkflowInput, ...]:
        return self._inputs

    def downstream(self) -> dict[str, list[str]]:
        """Task id -> the tasks that wait for it."""
        out: dict[str, list[str]] = {t.id: [] for t in self.tasks}
        for t in self.tasks:
            for up in t.upstream:
                out[up].append(t.id)
        return out

    def sinks(self) -> tuple[str, ...]:
        """Tasks nothing depends on: their outputs are the run's output."""
        down = self.downstream()
        return tuple(t for t in self._order if not down[t])

    def levels(self) -> list[list[str]]:
        """Tasks grouped by depth (longest path from a root)."""
        depth: dict[str, int] = {}
        for tid in self._order:
            ups = self._index[tid].upstream
            depth[tid] = 1 + max((depth[u] for u in ups), default=-1)
        levels: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for tid in self._order:
            levels[depth[tid]].append(tid)
        return levels

    # --- serialisation --------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernelflow_workflow": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "max_parallel": self.max_parallel,
            "executor": self.executor,
            "source": self.source,
            "source_hash": self.source_hash,
            "inputs": [{"name": i.name, "required": i.required, "used_by": list(i.used_by)} for i in self._inputs],
            "tasks": [t.to_dict() for t in self.tasks],
            **(
                {"declared_inputs": [d.to_dict() for d in self.declared_inputs]}
                if self.declared_inputs is not None
                else {}
            ),
            **(
                {"max_foreach_depth": self.max_foreach_depth, "max_subworkflow_depth": self.max_subworkflow_depth}
                if (self.max_foreach_depth, self.max_subworkflow_depth) != (3, 5)
                else {}
            ),
            **({"origin": self.origin} if self.origin != "cell" else {}),
            **({"aux_hashes": dict(self.aux_hashes)} if self.aux_hashes else {}),
        }

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2).decode()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], namespace: Mapping[str, Any] | None = None) -> Workflow:
        """Rebuild (and re-validate) a workflow from :meth:`to_dict` output.

        Task functions are looked up by their ``ref``: ``python:NAME`` in
        ``namespace``, ``module:qualname`` by import. Missing functions are
        left out of ``functions`` (the definition is still usable for display
        and history); running such a workflow names what is missing.
        """
        fmt = d.get("kernelflow_workflow")
        if fmt != FORMAT_VERSION:
            raise DefinitionError(
                f"not a kernelflow workflow definition (format {fmt!r}, expected {FORMAT_VERSION})",
                hint="pass the output of Workflow.to_dict()/to_json()",
            )
        with gc_paused():
            tasks = [Task.from_dict(t) for t in d["tasks"]]
        functions = {t.id: fn for t in tasks if (fn := resolve_ref(t.ref, namespace)) is not None}
        callables = {
            ref: fn for t in tasks for ref in t.spec.refs() if (fn := resolve_ref(ref, namespace)) is not None
        }
        declared = d.get("declared_inputs")
        wf = cls.build(
            d["name"],
            tasks,
            functions=functions,
            max_parallel=d.get("max_parallel", 8),
            executor=d.get("executor", DEFAULT_EXECUTOR),
            source=d.get("source", ""),
            source_hash=d.get("source_hash", ""),
            declared_inputs=None if declared is None else [InputDecl.from_dict(x) for x in declared],
            max_foreach_depth=d.get("max_foreach_depth", 3),
            max_subworkflow_depth=d.get("max_subworkflow_depth", 5),
            origin=d.get("origin", "cell"),
            callables=callables,
            aux_hashes=d.get("aux_hashes"),
        )
        recorded = d.get("version")
        if recorded and recorded != wf.version:
            raise DefinitionError(
                f"definition of {d['name']!r} says version {recorded} but its content hashes to {wf.version}",
                hint="the JSON was edited by hand; remove the 'version' field to accept the new content",
            )
        return wf

    @classmethod
    def from_json(cls, text: str | bytes, namespace: Mapping[str, Any] | None = None) -> Workflow:
        return cls.from_dict(orjson.loads(text), namespace)

    def with_options(self, *, max_parallel: int | None = None, executor: str | None = None) -> Workflow:
        """A copy with workflow-level options changed (a new version)."""
        return Workflow.build(
            self.name,
            self.tasks,
            functions=self.functions,
            max_parallel=self.max_parallel if max_parallel is None else max_parallel,
            executor=self.executor if executor is None else executor,
            source=self.source,
            source_hash=self.source_hash,
            declared_inputs=self.declared_inputs,
            max_foreach_depth=self.max_foreach_depth,
            max_subworkflow_depth=self.max_subworkflow_depth,
            origin=self.origin,
            callables=self.callables,
            aux_hashes=self.aux_hashes,
            schedules=self.schedules,
        )

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r} version {self.version}: {len(self.tasks)} tasks>"

    # Running lives in kernelflow.api; these thin methods keep the model the
    # one object users hold (etl.run(...)), without the model importing the engine.
    def run(self, **inputs: Any) -> Any:
        """Run to completion here and return the :class:`~kernelflow.Run`; raises
        :class:`~kernelflow.RunFailedError` if it fails (``raise_on_failure=False`` returns it)."""
        from .api import run_workflow

        return run_workflow(self, inputs, wait=True)

    def start(self, **inputs: Any) -> Any:
        """Start in the background and return the :class:`~kernelflow.Run` at once."""
        from .api import run_workflow

        return run_workflow(self, inputs, wait=False)

    async def arun(self, **inputs: Any) -> Any:
        """``await wf.arun(...)``: run without blocking the event loop (Jupyter's included)."""
        from .api import run_workflow

        run = run_workflow(self, inputs, wait=False)
        return await run.wait_async()


# --- validation ----------------------------------------------------------------


def _where(task: Task, origin: str = "cell") -> str | None:
    return f"{origin} line {task.line}" if task.line else None


def _index_tasks(tasks: tuple[Task, ...], origin: str = "cell") -> dict[str, Task]:
    index: dict[str, Task] = {}
    for t in tasks:
        if not isinstance(t, Task):
            raise DefinitionError(f"expected a Task, got {type(t).__name__} {t!r}")
        if not isinstance(t.id, str) or not t.id.isidentifier():
            raise DefinitionError(
                f"task id must be a Python identifier, got {t.id!r}",
                location=_where(t, origin),
                hint="rename the task using letters, digits and underscores",
            )
        if t.id in index:
            first = index[t.id]
            lines = [f"{origin} line {x.line}" for x in (first, t) if x.line]
            where = f" ({' and '.join(lines)})" if lines else ""
            raise DefinitionError(
                f"task {t.id!r} is defined twice{where}",
                location=_where(t, origin),
                hint=f"rename one of the two definitions of {t.id!r}; task ids must be unique",
            )
        index[t.id] = t
    for t in tasks:
        for up in t.upstream:
            if up not in index:
                raise DefinitionError(
                    f"task {t.id!r} depends on {up!r}, which is not a task of this workflow",
                    location=_where(t, origin),
                    hint=f"define a task named {up!r} or remove it from {t.id!r}'s dependencies"
                    + _did_you_mean(up, index),
                )
            if up == t.id:
                raise CycleError([t.id, t.id], location=_where(t, origin))
    return index


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _topological_order(tasks: tuple[Task, ...], index: dict[str, Task], origin: str = "cell") -> tuple[str, ...]:
    """Kahn's algorithm, ties broken by definition order; a cycle raises with its path."""
    position = {t.id: i for i, t in enumerate(tasks)}
    waiting = {t.id: len(set(t.upstream)) for t in tasks}
    down: dict[str, list[str]] = {t.id: [] for t in tasks}
    for t in tasks:
        for up in set(t.upstream):
            down[up].append(t.id)
    ready = [position[t] for t, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        tid = tasks[heapq.heappop(ready)].id
        order.append(tid)
        for d in down[tid]:
            waiting[d] -= 1
            if waiting[d] == 0:
                heapq.heappush(ready, position[d])
    if len(order) != len(tasks):
        cycle = _find_cycle({t for t, n in waiting.items() if n > 0}, index)
        lines = [index[t].line for t in cycle[:-1] if index[t].line]
        where = f"{origin} lines {', '.join(map(str, lines))}" if lines else None
        raise CycleError(cycle, location=where)
    return tuple(order)


def _find_cycle(remaining: set[str], index: dict[str, Task]) -> list[str]:
    # Every task left after Kahn's algorithm waits on another one left, so
    # walking upstream inside that set must revisit a task: that is a cycle.
    start = min(remaining)
    path: list[str] = []
    seen: dict[str, int] = {}
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(u for u in index[node].upstream if u in remaining)
    cycle = path[seen[node] :] + [node]
    cycle.reverse()  # upstream walk -> show it in dependency order: a -> b means b needs a
    return cycle


def _collect_inputs(
    tasks: tuple[Task, ...],
    index: dict[str, Task],
    origin: str = "cell",
    declared: tuple[InputDecl, ...] | None = None,
) -> tuple[WorkflowInput, ...]:
    found: dict[str, tuple[bool, list[str]]] = {}
    for d in declared or ():
        if d.name in RESERVED_INPUT_NAMES:
            raise DefinitionError(
                f"input {d.name!r} is reserved for run options",
                location=origin if origin != "cell" else None,
                hint=f"rename the input; reserved names: {', '.join(sorted(RESERVED_INPUT_NAMES))}",
            )
        found[d.name] = (not d.has_default, [])
    known = None if declared is None else {d.name for d in declared}
    for t in tasks:
        for name in t.spec.input_refs:
            if known is not None and name not in known:
                raise DefinitionError(
                    f"task {t.id!r} reads {{{{inputs.{name}}}}}, but the workflow declares no input {name!r}",
                    location=_where(t, origin),
                    hint=f"declare it under inputs: ({name}: str) or fix the name" + _did_you_mean(name, known),
                )
            required, users = found.get(name, (True, []))
            users.append(t.id)
            found[name] = (required, users)
        if not t.params:
            continue
        for p in t.inputs:
            if p.name in RESERVED_INPUT_NAMES:
                raise DefinitionError(
                    f"task {t.id!r} has a parameter named {p.name!r}, which is reserved for run options",
                    location=_where(t, origin),
                    hint=f"rename the parameter; reserved names: {', '.join(sorted(RESERVED_INPUT_NAMES))}",
                )
            if known is not None and p.name not in known and not p.has_default:
                raise DefinitionError(
                    f"task {t.id!r} needs a value for its parameter {p.name!r}, and nothing gives one",
                    location=_where(t, origin),
                    hint=f"pass it with input: {{{p.name}: ...}}, declare an input named {p.name!r}, "
                    "or give the parameter a default",
                )
            if known is not None and p.name not in known:
                continue  # its default applies; declared workflows take no undeclared inputs
            required, users = found.get(p.name, (False, []))
            users.append(t.id)
            declared_optional = known is not None and not found[p.name][0]
            found[p.name] = (False if declared_optional else (required or not p.has_default), users)
    return tuple(WorkflowInput(n, req, tuple(dict.fromkeys(users))) for n, (req, users) in found.items())


def _check_flow(tasks: tuple[Task, ...], index: dict[str, Task], origin: str, max_foreach_depth: int) -> None:
    """Template task references, loop jump targets and forEach nesting."""
    ancestors: dict[str, set[str]] | None = None
    for t in tasks:
        spec = t.spec
        if spec is EMPTY_SPEC:
            continue
        for ref in spec.task_refs:
            if ref not in index:
                raise DefinitionError(
                    f"task {t.id!r} reads {{{{tasks.{ref}...}}}}, but there is no task {ref!r}",
                    location=_where(t, origin),
                    hint="fix the task name in the template" + _did_you_mean(ref, index),
                )
        if len(spec.for_each) > max_foreach_depth:
            raise DefinitionError(
                f"task {t.id!r} nests {len(spec.for_each)} forEach loops; the limit is {max_foreach_depth}",
                location=_where(t, origin),
                hint="flatten the loops, or raise the limit with max_foreach_depth",
            )
        for key in ("back_to", "skip_to"):
            jump = getattr(spec, key)
            if not jump:
                continue
            target = jump["step"]
            if target not in index:
                raise DefinitionError(
                    f"task {t.id!r} has {key} {target!r}, which is not a task of this workflow",
                    location=_where(t, origin),
                    hint="name an existing task" + _did_you_mean(target, index),
                )
            if ancestors is None:
                ancestors = _ancestors(tasks, index)
            if key == "back_to" and target != t.id and target not in ancestors[t.id]:
                raise DefinitionError(
                    f"task {t.id!r} jumps back_to {target!r}, which does not run before it",
                    location=_where(t, origin),
                    hint=f"back_to must name {t.id!r} itself or a task it depends on (directly or not); "
                    "use skip_to to jump forward",
                )
            if key == "skip_to" and t.id not in ancestors[target]:
                raise DefinitionError(
                    f"task {t.id!r} has skip_to {target!r}, which does not depend on it",
                    location=_where(t, origin),
                    hint="skip_to must name a task downstream of this one; use back_to to go back",
                )


def _ancestors(tasks: tuple[Task, ...], index: dict[str, Task]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for tid in _topological_order(tasks, index):
        acc: set[str] = set()
        for up in index[tid].upstream:
            acc.add(up)
            acc |= out[up]
        out[tid] = acc
    return out


def _version_of(wf: Workflow) -> str:
    # The version hashes behaviour only: names, wiring, options and code
    # fingerprints, never line numbers (moving a cell's code must not change it).
    body = {
        "name": wf.name,
        "max_parallel": wf.max_parallel,
        "executor": wf.executor,
        "source_hash": wf.source_hash,
        "tasks": [
            (t.id, t.params, t.deps, t.options.key(), t.code_hash)
            + ((t.spec.to_dict(),) if t.spec is not EMPTY_SPEC else ())
            for t in wf.tasks
        ],
        **({"inputs": [d.to_dict() for d in wf.declared_inputs]} if wf.declared_inputs is not None else {}),
        **(
            {"limits": [wf.max_foreach_depth, wf.max_subworkflow_depth]}
            if (wf.max_foreach_depth, wf.max_subworkflow_depth) != (3, 5)
            else {}
        ),
        **({"aux": sorted(wf.aux_hashes.items())} if wf.aux_hashes else {}),
    }
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS, default=_hashable)).hexdigest()[:12]


def _hashable(value: Any) -> Any:
    if isinstance(value, Param):
        return (value.name, value.has_default, value.default_repr)
    raise TypeError(f"cannot hash {type(value).__name__}")


def resolve_ref(ref: str, namespace: Mapping[str, Any] | None) -> Callable[..., Any] | None:
    """The callable a task ref names, or None if it cannot be found."""
    kind, _, target = ref.partition(":")
    if kind == "python":
        fn = (namespace or {}).get(target)
        return fn if callable(fn) else None
    if not kind or not target:
        return None
    import importlib

    try:
        obj: Any = importlib.import_module(kind)
        for part in target.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj if callable(obj) else None
