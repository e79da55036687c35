"""Compile YAML workflow bodies and files into the one :class:`Workflow` model.

A ``%%workflow NAME`` cell whose body is YAML, and a file loaded with
``kf.load("flow.yaml")``, both come here::

    name: nightly                      # files; in a cell the magic names it
    inputs: {date: str, limit: {type: int, default: 10}}
    max_parallel: 4
    tasks:
      - id: fetch
        run: shell
        argv: [curl, -sf, "https://example.org/{{inputs.date}}.json"]
      - id: parse
        run: python:parse_json
        needs: [fetch]

Every step's keys go to :func:`kernelflow.steps.build_step` unchanged, so a
YAML step and a decorated Python task are validated by the same code.

PyYAML's constructed values forget where they came from, so the document is
composed to nodes (which carry line and column) and turned into Python
values here. That is also where YAML's traps are closed: duplicate keys
(PyYAML silently keeps the last), non-text keys (``yes:`` is ``True``),
alias bombs, recursive aliases, unknown tags and numbers JSON cannot hold.
Every problem is one :class:`DefinitionError` naming ``<origin> line L,
column C``; nothing is registered or bound here (this is a pure function).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.events import CollectionEndEvent, CollectionStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .exceptions import CycleError, DefinitionError
from .expressions import ExpressionError, parse_condition, parse_template
from .model import (
    DEFAULT_EXECUTOR,
    INPUT_TYPES,
    RESERVED_INPUT_NAMES,
    InputDecl,
    Task,
    Workflow,
    gc_paused,
)
from .steps import ALIASES, KIND_KEYS, build_step

__all__ = ["compile_yaml", "load", "looks_like_yaml", "read_schedules"]

#: Collections may nest this deep in the text (PyYAML's composer recurses per level).
MAX_NESTING = 64
#: Values that aliases may add in total: a "billion laughs" document stops here.
MAX_ALIAS_NODES = 100_000
_INT64 = 2**63

# Top-level keys, with their camelCase spellings, to the canonical name.
TOP_KEYS = {
    "name": "name",
    "inputs": "inputs",
    "tasks": "tasks",
    "steps": "tasks",
    "max_parallel": "max_parallel",
    "maxParallel": "max_parallel",
    "executor": "executor",
    "max_foreach_depth": "max_foreach_depth",
    "maxForeachDepth": "max_foreach_depth",
    "max_subworkflow_depth": "max_subworkflow_depth",
    "maxSubworkflowDepth": "max_subworkflow_depth",
    "alerts": "alerts",
    "schedule": "schedule",
}
_LIMIT_DEFAULTS = {"max_foreach_depth": 3, "max_subworkflow_depth": 5}
INPUT_KEYS = ("type", "default")

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null")}
_TIMESTAMP = _TAG + "timestamp"
_STR = _TAG + "str"
_MERGE = _TAG + "merge"

_ALERTS_HINT = "e.g. alerts: {error_rate: {rate: 0.3}, channels: [ops]}; docs/alerts.md lists every check and setting"
_RECURSIVE_HINT = "an alias (*name) cannot stand inside what it names: copy the values there instead"
_YAML_HINT = "fix the YAML on that line: indent with spaces, and quote values that contain ': ', '#', '{{' or start with '@' or '`'"


# --------------------------------------------------------------------------- locations


@dataclass(frozen=True)
class _Where:
    """Turns 0-based marks of the composed text into the user's line and column."""

    origin: str
    first_line: int

    def at(self, line0: int, column0: int | None = None) -> str:
        text = f"{self.origin} line {line0 + self.first_line}"
        return text if column0 is None else f"{text}, column {column0 + 1}"

    def node(self, node: Node) -> str:
        return self.at(node.start_mark.line, node.start_mark.column)

    def line_of(self, node: Node) -> int:
        return node.start_mark.line + self.first_line


class _Error(Exception):
    """A problem found while reading nodes (at ``node``), before the location is formatted."""

    def __init__(self, message: str, node: Node, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.node = node
        self.hint = hint


class _TooDeep(Exception):
    """Nesting beyond MAX_NESTING, found at ``mark`` (reported as a DefinitionError)."""

    def __init__(self, mark: Any):
        super().__init__()
        self.mark = mark


class _Loader(yaml.SafeLoader):
    """Pure-Python SafeLoader whose composer refuses deep nesting before it can exhaust the stack."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # type: ignore[override]
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise _TooDeep(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# libyaml composes ~5x faster; its composer recurses in C, so nesting is checked first
# (on the event stream, which is iterative) lest a deep document crash the process.
_CLoader: Any = getattr(yaml, "CSafeLoader", None)


def _compose(text: str) -> Node | None:
    """The document's root node (None when empty); PyYAML errors and :class:`_TooDeep` pass through."""
    if _CLoader is None:
        loader = _Loader(text)  # the reader refuses control characters already here
    else:
        depth = 0
        for event in yaml.parse(text, Loader=_CLoader):
            if isinstance(event, CollectionStartEvent):
                depth += 1
                if depth > MAX_NESTING:
                    raise _TooDeep(event.start_mark)
            elif isinstance(event, CollectionEndEvent):
                depth -= 1
        loader = _CLoader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- nodes to values


def _tag(node: Node) -> str:
    """A tag as written: ``!!set``, ``!!python/name:os.system``, ``!custom``."""
    return "!!" + node.tag[len(_TAG) :] if node.tag.startswith(_TAG) else node.tag


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return f"{node.value!r}"


class _Builder:
    """Python values from composed nodes: safe scalars, text keys, bounded aliases."""

    def __init__(self, where: _Where) -> None:
        self.where = where
        self.constructor = yaml.constructor.SafeConstructor()
        self._seen: set[int] = set()
        self._active: set[int] = set()
        self._alias_nodes = 0

    # -- mappings ----------------------------------------------------------------

    def items(self, node: MappingNode, *, scalar_keys: bool = False) -> list[tuple[Any, Node, Node]]:
        """``(key, key node, value node)`` in order, merge keys (``<<: *base``) applied.

        Keys must be text (``scalar_keys``: any scalar, for switch cases); a
        key given twice is an error naming both lines.
        """
        if id(node) in self._active:
            raise _Error("an alias refers to the mapping that contains it (a recursive structure)", node, _RECURSIVE_HINT)
        self._active.add(id(node))
        try:
            explicit: list[tuple[Any, Node, Node]] = []
            merged: list[tuple[Any, Node, Node]] = []
            first: dict[Any, Node] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE:
                    merged.extend(self._merged(value_node, scalar_keys))
                    continue
                key = self._key(key_node, node, scalar_keys)
                if key in first:
                    raise _Error(
                        f"key {key!r} is given twice in this mapping ({self.where.origin} lines "
                        f"{self.where.line_of(first[key])} and {self.where.line_of(key_node)})",
                        key_node,
                        "remove one of them (YAML would silently keep only the last)",
                    )
                first[key] = key_node
                explicit.append((key, key_node, value_node))
            # Explicit keys win over merged ones; among merged mappings the first wins (YAML's merge rule).
            for key, key_node, value_node in merged:
                if key not in first:
                    first[key] = key_node
                    explicit.append((key, key_node, value_node))
            return explicit
        finally:
            self._active.discard(id(node))

    def _merged(self, node: Node, scalar_keys: bool) -> list[tuple[Any, Node, Node]]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        out: list[tuple[Any, Node, Node]] = []
        for source in sources:
            if not isinstance(source, MappingNode):
                raise _Error("a merge key (<<) takes a mapping or a list of mappings", source, "<<: *defaults")
            self._count_alias(source, aliased=True)
            out.extend(self.items(source, scalar_keys=scalar_keys))
        return out

    def _key(self, node: Node, parent: MappingNode, scalar_keys: bool) -> Any:
        if not isinstance(node, ScalarNode):
            if isinstance(node, MappingNode) and node.flow_style and parent.flow_style:
                # `{{inputs.x}}` unquoted: a flow mapping whose key is a flow mapping.
                raise _Error(
                    "a mapping cannot be a key; an unquoted template {{...}} reads as one",
                    parent,
                    'quote templates: "{{inputs.date}}"',
                )
            raise _Error(f"keys must be text, got {_describe(node)}", node, "write each key as plain text, e.g. id: fetch")
        key = self.scalar(node)
        if isinstance(key, str):
            return key
        if scalar_keys:
            # Case labels compare as text, spelled as steps.build_step spells them
            # (true/false/null); as text, `yes:` and `1:` cannot collide (True == 1).
            if isinstance(key, bool):
                return "true" if key else "false"
            return "null" if key is None else str(key)
        raise _Error(
            f"key {node.value!r} is read by YAML as {type(key).__name__} {key!r}; keys must be text",
            node,
            f"quote it: '{node.value}':",
        )

    # -- values ------------------------------------------------------------------

    def _count_alias(self, node: Node, aliased: bool) -> bool:
        """Whether ``node`` is a repeat (an alias use); counts values that aliases add."""
        if id(node) in self._seen:
            aliased = True
        self._seen.add(id(node))
        if aliased:
            self._alias_nodes += 1
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise _Error(
                    f"aliases expand to more than {MAX_ALIAS_NODES} values",
                    node,
                    "use fewer nested aliases (this looks like a 'billion laughs' document)",
                )
        return aliased

    def value(self, node: Node, *, depth: int = 0, aliased: bool = False) -> Any:
        """The plain Python value (dict, list, str, int, float, bool, None) of a node."""
        aliased = self._count_alias(node, aliased)
        if depth > MAX_NESTING:
            raise _Error(f"values nest deeper than {MAX_NESTING} levels (through aliases)", node, "flatten the structure, or use fewer nested aliases")
        if isinstance(node, ScalarNode):
            return self.scalar(node)
        if id(node) in self._active:
            raise _Error("an alias refers to the collection that contains it (a recursive structure)", node, _RECURSIVE_HINT)
        if isinstance(node, SequenceNode):
            if node.tag != _TAG + "seq":
                raise _Error(f"the YAML tag {_tag(node)} is not supported here", node, "remove the tag")
            self._active.add(id(node))
            try:
                return [self.value(child, depth=depth + 1, aliased=aliased) for child in node.value]
            finally:
                self._active.discard(id(node))
        if isinstance(node, MappingNode):
            if node.tag != _TAG + "map":
                raise _Error(f"the YAML tag {_tag(node)} is not supported here", node, "remove the tag")
            pairs = self.items(node)
            self._active.add(id(node))
            try:
                return {key: self.value(v, depth=depth + 1, aliased=aliased) for key, _, v in pairs}
            finally:
                self._active.discard(id(node))
        raise _Error(f"unexpected YAML node {type(node).__name__}", node)  # pragma: no cover - PyYAML has three

    def scalar(self, node: ScalarNode) -> Any:
        if node.tag == _STR:
            return node.value  # the common case, without the constructor's bookkeeping
        if node.tag == _TIMESTAMP:
            # Dates stay text: JSON keeps them, and `date: str` inputs expect them so.
            return node.value
        if node.tag not in _SCALAR_TAGS:
            raise _Error(
                f"the YAML tag {_tag(node)} is not supported",
                node,
                "write plain values (text, numbers, true/false, null, lists, mappings)",
            )
        try:
            value = self.constructor.construct_object(node)
        except Exception as exc:  # noqa: BLE001 - PyYAML raises ValueError etc. for `!!int abc`
            raise _Error(
                f"cannot read {node.value!r} as {_tag(node)}: {exc}", node, f"remove the tag {_tag(node)}, or write a value of that type"
            ) from None
        if isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
            raise _Error(
                f"the number {node.value} is too large (whole numbers must fit in 64 bits)",
                node,
                "quote it to keep it as text",
            )
        return value


# --------------------------------------------------------------------------- a step's locator


@dataclass
class _Step:
    """One step as read: its id, its other keys, and where each value is written."""

    id: str
    node: MappingNode
    raw: dict[str, Any]
    value_nodes: dict[str, Node]


def _locator(step: _Step, where: _Where) -> Callable[[str | None], str | None]:
    """``locate(key)`` for build_step: the key's value, by its YAML or canonical name."""
    positions: dict[str, Node] = {}
    for key, node in step.value_nodes.items():
        positions.setdefault(key, node)
        positions.setdefault(ALIASES.get(key, key), node)

    def find(key: str) -> Node | None:
        if key in KIND_KEYS:
            # build_step scans a shell/http step's action under the key "shell"/"http":
            # point at the setting that holds a template (a bad `shell:` value itself
            # is reported under the same key, so that wins when it is not a bool).
            if key == "shell" and "shell" in positions and not isinstance(step.raw.get("shell"), bool):
                return positions["shell"]
            for k in KIND_KEYS[key]:
                if k in positions and "{{" in repr(step.raw.get(k)):
                    return positions[k]
            return positions.get({"shell": "argv", "http": "url"}.get(key, key)) or positions.get("run")
        return positions.get(key) or (positions.get("run") if key in ("python", "workflow") else None)

    def locate(key: str | None = None) -> str | None:
        node = find(key) if key is not None else None
        return where.node(node if node is not None else step.node)

    return locate


# --------------------------------------------------------------------------- compile


def compile_yaml(
    name: str | None,
    text: str,
    namespace: Mapping[str, Any] | None,
    *,
    origin: str = "cell",
    first_line: int = 2,
    max_parallel: int | None = None,
    executor: str | None = None,
) -> Workflow:
    """The workflow a YAML document defines (not bound or registered anywhere).

    ``name`` comes from ``%%workflow NAME`` (the document's ``name:`` must
    then agree) or, when ``None``, from the document. ``namespace`` is where
    ``python:NAME`` refs are found. ``origin`` names the text in errors
    (``"cell"`` or a file name) and ``first_line`` is the line number of the
    text's first line as the user sees it (2 in a cell: line 1 is the magic).
    ``max_parallel``/``executor`` (the magic's flags) override the document's.
    Raises :class:`DefinitionError` (or a subclass) for every problem.
    """
    return _compile(
        name,
        text,
        namespace,
        origin=origin,
        first_line=first_line,
        max_parallel=max_parallel,
        executor=executor,
        fallback_name=None,
    )


def _compile(
    name: str | None,
    text: str,
    namespace: Mapping[str, Any] | None,
    *,
    origin: str,
    first_line: int,
    max_parallel: int | None,
    executor: str | None,
    fallback_name: str | None,
) -> Workflow:
    where = _Where(origin, first_line)
    # The line the name comes from: the magic line of a cell, else the top of the file.
    header = f"{origin} line {max(first_line - 1, 1)}"
    if not isinstance(text, str):
        raise DefinitionError(
            f"a YAML workflow must be text, got {type(text).__name__}", location=header, hint="pass the YAML document as a str"
        )
    try:
        # A large document makes ~10 small objects a value; the cyclic collector's
        # passes over them would cost more than the parse and free nothing.
        with gc_paused():
            return _from_root(
                _compose(text),
                _Builder(where),
                name,
                text,
                namespace,
                where=where,
                header=header,
                max_parallel=max_parallel,
                executor=executor,
                fallback_name=fallback_name,
            )
    except _Error as exc:
        raise DefinitionError(exc.message, location=where.node(exc.node), hint=exc.hint) from None
    except _TooDeep as exc:
        raise DefinitionError(
            f"the YAML nests more than {MAX_NESTING} levels deep",
            location=where.at(exc.mark.line, exc.mark.column),
            hint="flatten the structure",
        ) from None
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, text, where) from None
    except RecursionError:  # pragma: no cover - MAX_NESTING keeps the composer well inside the limit
        raise DefinitionError("the YAML nests too deeply", location=where.at(0), hint="flatten the structure") from None


def _yaml_error(exc: yaml.YAMLError, text: str, where: _Where) -> DefinitionError:
    """One DefinitionError for a PyYAML reader/scanner/parser/composer error."""
    if isinstance(exc, yaml.reader.ReaderError):
        pos = min(max(exc.position, 0), len(text))
        line0 = text.count("\n", 0, pos)
        col0 = pos - (text.rfind("\n", 0, pos) + 1)
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        return DefinitionError(
            f"invalid YAML: the character {char!r} is not allowed ({exc.reason})",
            location=where.at(line0, col0),
            hint="remove the control character (or write it as an escape inside a double-quoted string)",
        )
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    char = _char_at(text, mark.line, mark.column) if mark is not None else ""
    if "found character" in problem and "'" not in problem and char:
        problem += f" ({char!r})"  # libyaml does not say which character
    message = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
    hint = _YAML_HINT
    if char == "\t" or "tab" in problem:
        hint = "YAML indents with spaces, never tabs: replace the tab"
    elif "mapping values are not allowed" in problem:
        hint = "quote a value that contains ': ' (e.g. \"a: b\"), or fix the indentation"
    elif "single document" in (context or ""):
        hint = "a workflow is one YAML document: remove the '---' separator and what follows"
    elif "found character" in problem:
        hint = "quote the value that starts with this character"
    location = where.at(mark.line, mark.column) if mark is not None else where.at(0)
    return DefinitionError(message, location=location, hint=hint)


def _char_at(text: str, line0: int, column0: int) -> str:
    lines = text.split("\n", line0 + 1)
    return lines[line0][column0 : column0 + 1] if line0 < len(lines) else ""


def _from_root(
    root: Node | None,
    build: _Builder,
    name: str | None,
    text: str,
    namespace: Mapping[str, Any] | None,
    *,
    where: _Where,
    header: str,
    max_parallel: int | None,
    executor: str | None,
    fallback_name: str | None,
) -> Workflow:
    shape_hint = "a YAML workflow is a mapping with a tasks: list, e.g.\n  tasks:\n    - id: hello\n      run: shell\n      argv: [echo, hi]"
    if root is None:
        raise DefinitionError("the YAML workflow is empty", location=where.at(0), hint=shape_hint)
    if not isinstance(root, MappingNode):
        raise _Error(f"a YAML workflow must be a mapping with a tasks: list, got {_describe(root)}", root, shape_hint)

    # -- top-level keys ------------------------------------------------------------
    top: dict[str, tuple[Node, Node]] = {}
    for key, key_node, value_node in build.items(root):
        canonical = TOP_KEYS.get(key)
        if canonical is None:
            close = difflib.get_close_matches(key, list(TOP_KEYS), n=1)
            raise _Error(
                f"unknown top-level key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                key_node,
                "the top-level keys are: name, inputs, tasks (or steps), max_parallel, executor, "
                "max_foreach_depth, max_subworkflow_depth, alerts, schedule",
            )
        if canonical in top:
            raise _Error(
                f"{key!r} repeats {canonical!r}, given already on line {where.line_of(top[canonical][0])}",
                key_node,
                f"{key!r} and {canonical!r} are the same key: keep one of them",
            )
        top[canonical] = (key_node, value_node)
    doc: dict[str, Any] = {}  # the document as values, for the source hash

    # -- name -------------------------------------------------------------------------
    if "name" in top:
        node = top["name"][1]
        doc_name = build.value(node)
        doc["name"] = doc_name
        if not isinstance(doc_name, str) or not doc_name.isidentifier():
            raise _Error(
                f"name must be a Python identifier (the workflow is bound to it), got {doc_name!r}",
                node,
                "use letters, digits and underscores, not starting with a digit, e.g. nightly_etl",
            )
        if name is not None and doc_name != name:
            raise _Error(
                f"the YAML says name: {doc_name}, but the cell defines workflow {name!r}",
                node,
                f"make them agree, or remove name: (the cell's %%workflow {name} names it)",
            )
        name = doc_name
    if name is None:
        name = fallback_name
        if name is None:
            raise DefinitionError(
                "the workflow has no name",
                location=header,
                hint="write %%workflow NAME, or add name: NAME to the YAML",
            )
        if not name.isidentifier():
            raise DefinitionError(
                f"the file name gives the workflow the name {name!r}, which is not a Python identifier",
                location=header,
                hint="add name: NAME to the file (letters, digits and underscores)",
            )
    elif not isinstance(name, str) or not name.isidentifier():
        raise DefinitionError(
            f"workflow name must be a Python identifier, got {name!r}",
            location=header,
            hint="write %%workflow my_flow (letters, digits, underscores)",
        )

    # -- schedule: (kept on the workflow; not part of its version) ------------------------------
    schedules: tuple[Any, ...] = ()
    if "schedule" in top:
        target = os.path.abspath(where.origin) if fallback_name is not None else None
        schedules = _schedules(top["schedule"][1], build, where, name, target)

    # -- workflow options ------------------------------------------------------------------
    settings: dict[str, Any] = {}
    for key in ("max_parallel", *_LIMIT_DEFAULTS):
        if key in top:
            node = top[key][1]
            value = build.value(node)
            doc[key] = value
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _Error(f"{key} must be a whole number >= 1, got {value!r}", node, f"e.g. {key}: 4")
            settings[key] = value
    if "executor" in top:
        node = top["executor"][1]
        value = build.value(node)
        doc["executor"] = value
        if not isinstance(value, str) or not value:
            raise _Error(
                f"executor must be an executor name such as 'threads', got {value!r}",
                node,
                "executor: threads (or processes, or the name a plugin registers)",
            )
        settings["executor"] = value
    if max_parallel is not None:
        settings["max_parallel"] = max_parallel  # the magic's flag wins over the document
    if executor is not None:
        settings["executor"] = executor

    # -- inputs -------------------------------------------------------------------------------
    declared: list[InputDecl] | None = None
    if "inputs" in top:
        declared, doc["inputs"] = _inputs(top["inputs"][1], build)
    declared_names = None if declared is None else [d.name for d in declared]

    # -- tasks: ids first, so every step knows them all ---------------------------------------------
    if "tasks" not in top:
        raise DefinitionError(
            "the YAML workflow has no tasks: list",
            location=where.node(root),
            hint=shape_hint,
        )
    tasks_key, tasks_node = top["tasks"]
    steps = _steps(tasks_key, tasks_node, build, where)
    doc["tasks"] = [{"id": s.id, **s.raw} for s in steps]
    ids = [s.id for s in steps]
    id_set = frozenset(ids)

    tasks: list[Task] = []
    functions: dict[str, Callable[..., Any]] = {}
    callables: dict[str, Callable[..., Any]] = {}
    aux_hashes: dict[str, str] = {}
    for step in steps:
        locate = _locator(step, where)
        built = build_step(
            step.id,
            step.raw,
            task_ids=id_set,
            locate=locate,
            workflow_name=name,
            namespace=namespace,
            line=where.line_of(step.node),
        )
        _check_targets(step, built.task, id_set, declared_names, locate)
        tasks.append(built.task)
        if built.function is not None:
            functions[step.id] = built.function
        callables.update(built.callables)
        aux_hashes.update(built.aux_hashes)

    # Whatever the model finds without a line (it knows tasks, not keys) is put at
    # tasks:, and a workflow-level executor problem at the executor's origin.
    fallback_location = where.node(tasks_key)
    if executor is not None:
        executor_location = header
    elif "executor" in top:
        executor_location = where.node(top["executor"][1])
    else:
        executor_location = fallback_location
    try:
        wf = Workflow.build(
            name,
            tasks,
            functions=functions,
            callables=callables,
            aux_hashes=aux_hashes,
            declared_inputs=declared,
            max_parallel=settings.get("max_parallel", 8),
            executor=settings.get("executor", DEFAULT_EXECUTOR),
            max_foreach_depth=settings.get("max_foreach_depth", 3),
            max_subworkflow_depth=settings.get("max_subworkflow_depth", 5),
            origin=where.origin,
            source=text,
            source_hash=_source_hash(doc, text),
            schedules=schedules,
        )
        from .api import check_executors
        from .subworkflows import check_calls

        check_calls(wf, namespace)

        check_executors(wf, location_of=lambda tid: f"{where.origin} line {wf[tid].line}")
    except DefinitionError as exc:
        if exc.location and " line" in exc.location:
            raise
        location = executor_location if "executor" in exc.message else fallback_location
        raise _relocated(exc, location) from None
    if "alerts" in top:
        from .alerting import payload_rules, set_rules

        key_node, value_node = top["alerts"]
        try:
            rules = payload_rules(build.value(value_node), where="", task_ids=tuple(ids))
        except DefinitionError as exc:
            raise _relocated(exc, where.node(key_node), default_hint=_ALERTS_HINT) from None
        set_rules(name, rules)
    from . import catalog

    catalog.remember(wf)  # resume, replay and sub-workflow calls find it by name
    return wf


def _schedules(node: Node, build: _Builder, where: _Where, name: str, target: str | None) -> tuple[Any, ...]:
    """``schedule:`` as validated :class:`~kernelflow.schedules.Schedule` objects.

    A mapping (named after the workflow unless it says ``name:``) or a list
    of mappings with distinct names. ``target`` is the file itself (None in a
    cell: the notebook is only known when ``kf.schedule`` registers it).
    """
    from .schedules import parse_schedule

    example = "schedule: {cron: '0 6 * * *', timezone: Europe/Paris}"
    if isinstance(node, SequenceNode):
        if not node.value:
            raise _Error("schedule: is an empty list", node, example)
        entries = list(node.value)
    elif isinstance(node, MappingNode):
        entries = [node]
    else:
        raise _Error(f"schedule must be a mapping (or a list of mappings), got {_describe(node)}", node, example)
    out: list[Any] = []
    seen: dict[str, Node] = {}
    for entry in entries:
        if not isinstance(entry, MappingNode):
            raise _Error(f"each schedule must be a mapping, got {_describe(entry)}", entry, example)
        spec: dict[str, Any] = {}
        nodes: dict[str, Node] = {}
        for key, _, value_node in build.items(entry):
            spec[key] = build.value(value_node)
            nodes[key] = value_node

        def locate(key: str | None, nodes: dict[str, Node] = nodes, entry: Node = entry) -> str:
            return where.node(nodes[key]) if key in nodes else where.node(entry)

        if "target" in spec:
            raise _Error(
                "a schedule declared in a workflow runs this workflow: it takes no target:",
                nodes["target"],
                "remove target: (to schedule another file, declare the schedule there or use kf.schedule)",
            )
        schedule = parse_schedule(spec, name=name, target=target, locate=locate, check_target=target is not None,
                                  origin=where.origin if target is not None else "cell")  # fmt: skip
        if schedule.name in seen:
            raise DefinitionError(
                f"two schedules are named {schedule.name!r} ({where.origin} lines {where.line_of(seen[schedule.name])} "
                f"and {where.line_of(entry)})",
                location=where.node(entry),
                hint="give each schedule its own name: (the first one defaults to the workflow's name)",
            )
        seen[schedule.name] = entry
        out.append(schedule)
    return tuple(out)


def read_schedules(
    path: str | os.PathLike[str] | None = None,
    *,
    text: str | None = None,
    origin: str | None = None,
    first_line: int = 1,
    name: str | None = None,
    target: str | os.PathLike[str] | None = None,
) -> list[Any]:
    """The schedules a YAML workflow declares (``schedule:``), without compiling its tasks.

    The scheduler reads files with this: no module is imported and ``python:``
    refs need no namespace. Give ``path`` (the target is the file), or
    ``text`` with its ``origin``, ``first_line`` and the ``target`` the
    schedules run (a notebook whose cell holds the YAML) and ``name`` (the
    cell's ``%%workflow NAME``). A document without ``schedule:`` gives ``[]``;
    a bad one raises :class:`DefinitionError` with its line.
    """
    if text is None:
        if path is None:
            raise TypeError("read_schedules() needs a path or text=")
        origin = origin or os.fsdecode(os.fspath(path))
        try:
            text = Path(path).read_bytes().decode("utf-8-sig")
        except OSError as exc:
            raise DefinitionError(
                f"cannot read workflow file {origin!r}: {exc.strerror or exc}",
                location=origin,
                hint="check that it is a readable file",
            ) from None
        except UnicodeDecodeError:
            raise DefinitionError("the file is not UTF-8 text", location=origin, hint="save the file as UTF-8") from None
        target = path if target is None else target
        name = name or Path(origin).stem
    where = _Where(origin or "cell", first_line)
    build = _Builder(where)
    try:
        root = _compose(text)
        if not isinstance(root, MappingNode):
            return []
        top = {k: v for k, _, v in build.items(root)}  # name: and schedule: have no other spelling
        if "schedule" not in top:
            return []
        doc_name = build.value(top["name"]) if "name" in top else None
        label = doc_name if isinstance(doc_name, str) and doc_name else name
        absolute = os.path.abspath(os.fspath(target)) if target is not None else None
        return list(_schedules(top["schedule"], build, where, str(label or "workflow"), absolute))
    except _Error as exc:
        raise DefinitionError(exc.message, location=where.node(exc.node), hint=exc.hint) from None
    except _TooDeep as exc:
        raise DefinitionError(f"the YAML nests more than {MAX_NESTING} levels deep",
                              location=where.at(exc.mark.line, exc.mark.column), hint="flatten the structure") from None  # fmt: skip
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, text, where) from None


def _inputs(node: Node, build: _Builder) -> tuple[list[InputDecl], Any]:
    """Declared inputs from ``inputs:`` (``name: type`` or ``name: {type: T, default: V}``)."""
    types = ", ".join(INPUT_TYPES)
    if isinstance(node, ScalarNode) and build.scalar(node) is None:
        return [], None
    if not isinstance(node, MappingNode):
        raise _Error(
            f"inputs must map input names to types, got {_describe(node)}",
            node,
            "inputs: {date: str, limit: {type: int, default: 10}}",
        )
    declared: list[InputDecl] = []
    as_doc: dict[str, Any] = {}
    for key, key_node, value_node in build.items(node):
        as_doc[key] = build.value(value_node)
        if not key.isidentifier():
            raise _Error(f"input name must be a Python identifier, got {key!r}", key_node, "inputs: {date: str}")
        if key in RESERVED_INPUT_NAMES:
            raise _Error(
                f"input {key!r} is reserved for run options",
                key_node,
                f"rename it; reserved names: {', '.join(sorted(RESERVED_INPUT_NAMES))}",
            )
        type_node: Node = value_node
        default_node: Node | None = None
        if isinstance(value_node, MappingNode):
            spec = {k: (kn, vn) for k, kn, vn in build.items(value_node)}
            for k, (kn, _) in spec.items():
                if k not in INPUT_KEYS:
                    close = difflib.get_close_matches(k, INPUT_KEYS, n=1)
                    raise _Error(
                        f"input {key!r}: unknown key {k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                        kn,
                        "an input takes type and default: {type: int, default: 3}",
                    )
            type_node = spec["type"][1] if "type" in spec else None  # type: ignore[assignment]
            default_node = spec["default"][1] if "default" in spec else None
            type_name = build.value(type_node) if type_node is not None else "any"
        else:
            type_name = build.value(value_node)
        where_type = type_node if type_node is not None else value_node
        if not isinstance(type_name, str) or type_name not in INPUT_TYPES:
            close = difflib.get_close_matches(str(type_name), list(INPUT_TYPES), n=1)
            raise _Error(
                f"input {key!r}: type must be one of {types}, got {type_name!r}"
                + (f" (did you mean {close[0]!r}?)" if close else ""),
                where_type,
                f"{key}: str, or {key}: {{type: int, default: 3}}",
            )
        if default_node is None:
            declared.append(InputDecl(key, type_name))
            continue
        default = build.value(default_node)
        decl = InputDecl(key, type_name, True, default)
        if not decl.accepts(default):
            raise _Error(
                f"input {key!r}: the default {default!r} is not of type {type_name}",
                default_node,
                f"give a {type_name} default, or use type: any",
            )
        declared.append(decl)
    return declared, as_doc


def _steps(key_node: Node, node: Node, build: _Builder, where: _Where) -> list[_Step]:
    """Each step's id (validated, unique) and its other keys, with where their values are."""
    if not isinstance(node, SequenceNode) or not node.value:
        got = "nothing" if isinstance(node, ScalarNode) and node.value in ("", "~", "null") else _describe(node)
        raise _Error(
            f"tasks must be a non-empty list of steps, got {got}",
            node if not (isinstance(node, ScalarNode) and node.value == "") else key_node,
            "tasks:\n    - id: fetch\n      run: shell\n      argv: [echo, hi]",
        )
    steps: list[_Step] = []
    seen: dict[str, MappingNode] = {}
    build._count_alias(node, False)
    for index, step_node in enumerate(node.value, 1):
        build._count_alias(step_node, False)
        if not isinstance(step_node, MappingNode):
            raise _Error(
                f"step {index} must be a mapping with an id, got {_describe(step_node)}",
                step_node,
                "- id: fetch\n    run: python:fetch",
            )
        if step_node.tag != _TAG + "map":
            raise _Error(f"the YAML tag {_tag(step_node)} is not supported here", step_node, "remove the tag")
        raw: dict[str, Any] = {}
        value_nodes: dict[str, Node] = {}
        task_id: Any = None
        id_node: Node | None = None
        for key, _, value_node in build.items(step_node):
            if key == "id":
                id_node = value_node
                task_id = build.value(value_node)
                continue
            raw[key] = _step_value(key, value_node, build)
            value_nodes[key] = value_node
        if id_node is None:
            raise _Error(
                f"step {index} has no id",
                step_node,
                "give every step an id: - id: fetch (letters, digits, underscores)",
            )
        if not isinstance(task_id, str) or not task_id.isidentifier():
            raise _Error(
                f"step {index}: id must be a Python identifier, got {task_id!r}",
                id_node,
                "use letters, digits and underscores, not starting with a digit, e.g. fetch_data",
            )
        if task_id in seen:
            raise _Error(
                f"task {task_id!r} is defined twice ({where.origin} lines {where.line_of(seen[task_id])} "
                f"and {where.line_of(step_node)})",
                id_node,
                f"rename one of the two steps called {task_id!r}; task ids must be unique",
            )
        seen[task_id] = step_node
        steps.append(_Step(task_id, step_node, raw, value_nodes))
    return steps


def _step_value(key: str, node: Node, build: _Builder) -> Any:
    """A step key's value; a switch's case labels may be any scalar (``1:``, ``yes:``)."""
    if ALIASES.get(key, key) != "switch" or not isinstance(node, MappingNode) or node.tag != _TAG + "map":
        return build.value(node)
    build._count_alias(node, False)
    out: dict[str, Any] = {}
    for sub, _, sub_node in build.items(node):
        if sub == "cases" and isinstance(sub_node, MappingNode) and sub_node.tag == _TAG + "map":
            build._count_alias(sub_node, False)
            out[sub] = {label: build.value(v, depth=2) for label, _, v in build.items(sub_node, scalar_keys=True)}
        else:
            out[sub] = build.value(sub_node, depth=1)
    return out


def _check_targets(
    step: _Step,
    task: Task,
    ids: frozenset[str],
    declared: list[str] | None,
    locate: Callable[[str | None], str | None],
) -> None:
    """Names the model would only report by the step's line, reported at their key instead."""
    for key, value in step.raw.items():
        canonical = ALIASES.get(key, key)
        if canonical in ("needs", "after"):
            for target in [value] if isinstance(value, str) else value or ():
                if target not in ids:
                    raise DefinitionError(
                        f"task {step.id!r}: {key} names {target!r}, which is not a task of this workflow"
                        + _did_you_mean(target, ids),
                        location=locate(key),
                        hint="name an existing step id",
                    )
    for key in ("back_to", "skip_to"):
        jump = getattr(task.spec, key)
        if jump and jump["step"] not in ids:
            raise DefinitionError(
                f"task {step.id!r}: {key} names {jump['step']!r}, which is not a task of this workflow"
                + _did_you_mean(jump["step"], ids),
                location=locate(key),
                hint="name an existing step id",
            )
    if declared is not None:
        for name in task.spec.input_refs:
            if name not in declared:
                raise DefinitionError(
                    f"task {step.id!r} reads {{{{inputs.{name}}}}}, but the workflow declares no input {name!r}"
                    + _did_you_mean(name, declared),
                    location=locate(_key_reading_input(step.raw, name)),
                    hint=f"declare it under inputs: ({name}: str), or fix the name",
                )


def _key_reading_input(raw: Mapping[str, Any], name: str) -> str | None:
    """The step key whose templates or conditions read ``inputs.<name>``."""
    for key, value in raw.items():
        canonical = ALIASES.get(key, key)
        for text in _strings(value):
            refs = []
            try:
                refs.extend(parse_template(text).refs)
            except ExpressionError:
                pass
            if canonical in ("when", "back_to", "skip_to"):
                try:
                    refs.extend(parse_condition(text).refs)
                except ExpressionError:
                    pass
            if any(r.root == "inputs" and r.path and r.path[0] == name for r in refs):
                return key
    return None


def _strings(value: Any) -> list[str]:
    out: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return out


def _did_you_mean(name: str, candidates: Any) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _relocated(exc: DefinitionError, location: str, *, default_hint: str | None = None) -> DefinitionError:
    """The same error, placed at ``location`` (with ``default_hint`` if it has no hint of its own)."""
    hint = exc.hint or default_hint
    if isinstance(exc, CycleError):
        return CycleError(exc.cycle, location=location, hint=hint)
    try:
        return type(exc)(exc.message, location=location, hint=hint)
    except TypeError:  # a subclass with another signature
        return DefinitionError(exc.message, location=location, hint=hint)


def _source_hash(doc: Mapping[str, Any], text: str) -> str:
    """A hash of the document's content, not its text: comments, spacing, quoting
    and key order do not change a YAML workflow's version (as for Python cells)."""
    import orjson

    try:
        data = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except (TypeError, ValueError):  # e.g. mixed key types orjson cannot sort
        data = text.encode()
    return hashlib.sha256(data).hexdigest()[:16]


# --------------------------------------------------------------------------- files


def load(path: str | os.PathLike[str], namespace: Mapping[str, Any] | None = None) -> Workflow:
    """``kf.load("flow.yaml")``: the workflow a YAML file defines (not registered).

    Its name is the file's ``name:``, else the file name without extension.
    ``python:NAME`` refs are looked up in ``namespace``; by default the
    IPython user namespace when running in IPython, else the caller's globals.
    Errors name the file as given, with line and column.
    """
    origin = os.fsdecode(os.fspath(path))
    if namespace is None:
        namespace = _ipython_namespace()
        if namespace is None:
            namespace = sys._getframe(1).f_globals
    try:
        data = Path(origin).read_bytes()
    except FileNotFoundError:
        raise DefinitionError(
            f"no workflow file {origin!r} (looked in {os.getcwd()})",
            location=origin,
            hint="check the path; relative paths start at the current directory",
        ) from None
    except OSError as exc:
        raise DefinitionError(
            f"cannot read workflow file {origin!r}: {exc.strerror or exc}",
            location=origin,
            hint="check that it is a readable file",
        ) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DefinitionError(
            f"the file is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})",
            location=f"{origin} line {line}",
            hint="save the file as UTF-8",
        ) from None
    return _compile(
        None,
        text,
        namespace,
        origin=origin,
        first_line=1,
        max_parallel=None,
        executor=None,
        fallback_name=Path(origin).stem,
    )


def _ipython_namespace() -> dict[str, Any] | None:
    """The running IPython's user namespace, if any (without importing IPython when unused)."""
    if "IPython" not in sys.modules:
        return None
    try:
        ip = sys.modules["IPython"].get_ipython()
    except Exception:  # noqa: BLE001 - no usable IPython: fall back to the caller's globals
        return None
    return getattr(ip, "user_ns", None)  # None when no shell is running


# --------------------------------------------------------------------------- detection

_FIRST_KEY = re.compile(r"[A-Za-z_][\w-]*[ \t]*:(?:[ \t]|$)")
_TASKS_KEY = re.compile(r"^(?:tasks|steps)[ \t]*:(?:[ \t#]|$)", re.MULTILINE)


def looks_like_yaml(body: str) -> bool:
    """Whether a ``%%workflow`` body is YAML (a mapping with a top-level ``tasks:``/``steps:``).

    Cheap and never raises. Python stays Python: ``tasks = [1]``, ``x: int = 3``
    and ``def``/``import``/``@`` bodies are not YAML. A body that is valid
    Python *and* valid YAML (``tasks: [..]`` on one line) counts as YAML only
    if its ``tasks:`` really is a list.
    """
    try:
        first = None
        for line in body.splitlines():
            stripped = line.strip()
            if not stripped or stripped.startswith(("#", "%YAML")) or stripped in ("---", "..."):
                continue
            first = line
            break
        # Windows line endings: `$` in _TASKS_KEY does not match before "\r\n".
        if first is None or not _FIRST_KEY.match(first) or not _TASKS_KEY.search("\n".join(body.splitlines())):
            return False
        import ast

        try:
            ast.parse(body)
        except SyntaxError:
            return True  # YAML-shaped, and not Python
        except Exception:  # noqa: BLE001 - e.g. RecursionError/MemoryError on odd input: not Python either
            return True
        # Both parse: YAML only if the document is a mapping whose tasks: is a list.
        root = _compose(body)
        return isinstance(root, MappingNode) and any(
            isinstance(k, ScalarNode) and k.value in ("tasks", "steps") and isinstance(v, SequenceNode)
            for k, v in root.value
        )
    except Exception:  # noqa: BLE001 - detection must never raise
        return False
