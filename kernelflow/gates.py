"""Approval gates: what a gate asks (its spec), what it shows, and checking an answer.

A gate is declared with ``@kf.approval("Publish {n} rows?", ...)`` above a task
function, or with ``approval:`` on a YAML step. The run pauses before the
step with an ``ApprovalRequested`` event; an answer from any process
(:mod:`kernelflow.approvals`) lets it go on. This module is pure: it
validates declarations, renders messages and previews, and validates input.
"""

from __future__ import annotations

import importlib
import string
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .durations import parse_duration
from .exceptions import DefinitionError, InputError

ON_TIMEOUT = ("reject", "approve", "skip", "fail")
ON_REJECT = ("fail", "skip")
SIMPLE_TYPES: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "int": int,
    "float": (int, float),
    "bool": bool,
    "list": list,
    "dict": dict,
    "any": object,
}
APPROVAL_KEYS = ("message", "preview", "input", "timeout", "on_timeout", "on_reject")
PREVIEW_ROWS = 10

_models: dict[str, type] = {}
"""Pydantic models named by gates defined in this process (ref -> class)."""


@dataclass(frozen=True)
class Approval:
    """The answer a gated task function receives as its ``approval`` parameter."""

    granted: bool
    by: Mapping[str, Any]
    input: Any = None
    """The approver's input: a dict, or an instance of the gate's pydantic model."""
    comment: str | None = None
    expired: bool = False
    answered_at: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def parse_approval(value: Any, locate: Callable[[str | None], str | None], what: str, params: tuple[str, ...] | None) -> dict[str, Any]:
    """The normalised gate declaration (JSON-able), or a :class:`DefinitionError`.

    ``params``: the gated function's parameter names (single-brace
    ``{name}`` fields in the message are checked against them and ``n``);
    None for a gate without a function (only ``{{templates}}``).
    """
    if isinstance(value, str):
        value = {"message": value}
    if not isinstance(value, Mapping):
        raise DefinitionError(
            f"{what}: approval must be a message or a mapping, got {type(value).__name__} {value!r:.60}",
            location=locate("approval"),
            hint="approval: {message: 'Ship it?', timeout: 24h, input: {note: str}}",
        )
    unknown = [k for k in value if k not in APPROVAL_KEYS]
    if unknown:
        import difflib

        close = difflib.get_close_matches(str(unknown[0]), APPROVAL_KEYS, n=1)
        raise DefinitionError(
            f"{what}: approval has no key {unknown[0]!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
            location=locate("approval"),
            hint="approval keys: " + ", ".join(APPROVAL_KEYS),
        )
    message = value.get("message", "Approve this step?")
    if not isinstance(message, str) or not message.strip():
        raise DefinitionError(f"{what}: approval message must be non-empty text, got {message!r}", location=locate("approval"))
    if params is not None and "{{" not in message:
        fields = _format_fields(message, locate, what)
        allowed = set(params) | {"n"}
        bad = [f for f in fields if f not in allowed]
        if bad:
            raise DefinitionError(
                f"{what}: the approval message uses {{{bad[0]}}}, which is not a parameter of the task",
                location=locate("approval"),
                hint="use the task's parameters (" + ", ".join(sorted(allowed)) + "), or {{templates}}; "
                "write {{ and }} for literal braces",
            )
    out: dict[str, Any] = {"message": message}
    preview = value.get("preview")
    if preview is not None:
        if not isinstance(preview, str):
            raise DefinitionError(f"{what}: approval preview must be a parameter name or a template, got {preview!r}", location=locate("approval"))
        if params is not None and "{{" not in preview and preview not in params:
            raise DefinitionError(
                f"{what}: approval preview {preview!r} is not a parameter of the task",
                location=locate("approval"),
                hint="parameters: " + ", ".join(params),
            )
        out["preview"] = preview
    out["input"] = _input_schema(value.get("input"), locate, what)
    timeout = value.get("timeout")
    if timeout is not None:
        try:
            out["timeout"] = parse_duration(timeout, what="approval timeout")
        except ValueError as exc:
            raise DefinitionError(f"{what}: {exc}", location=locate("approval"), hint="timeout: 24h") from None
    on_timeout = value.get("on_timeout", "reject")
    if on_timeout not in ON_TIMEOUT:
        raise DefinitionError(
            f"{what}: approval on_timeout must be one of {', '.join(ON_TIMEOUT)}, got {on_timeout!r}",
            location=locate("approval"),
        )
    if "on_timeout" in value and timeout is None:
        raise DefinitionError(f"{what}: approval on_timeout is set but there is no timeout", location=locate("approval"), hint="add timeout: 24h")
    on_reject = value.get("on_reject", "fail")
    if on_reject not in ON_REJECT:
        raise DefinitionError(
            f"{what}: approval on_reject must be fail or skip, got {on_reject!r}", location=locate("approval")
        )
    out.update(on_timeout=on_timeout, on_reject=on_reject)
    return out


def _format_fields(message: str, locate: Callable[[str | None], str | None], what: str) -> list[str]:
    try:
        return [f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(message) if f]
    except ValueError as exc:
        raise DefinitionError(
            f"{what}: the approval message is not a valid format string ({exc})",
            location=locate("approval"),
            hint="write {{ and }} for literal braces",
        ) from None


RESERVED_FIELDS = ("run_id", "step", "by", "comment", "resume", "reason")
"""Names ``kf.approve``/``kf.reject`` and the CLI take for themselves: a field so named could not be answered."""


def _check_field_names(names: Any, locate: Callable[[str | None], str | None], what: str) -> None:
    taken = [n for n in names if n in RESERVED_FIELDS]
    if taken:
        raise DefinitionError(
            f"{what}: approval input field {taken[0]!r} clashes with an argument of kf.approve/kf.reject "
            f"({', '.join(RESERVED_FIELDS)}); rename the field",
            location=locate("approval"),
            hint=f"input: {{{taken[0]}_text: str}}",
        )


def _input_schema(value: Any, locate: Callable[[str | None], str | None], what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, type) and hasattr(value, "model_fields") and hasattr(value, "model_validate"):
        _check_field_names(value.model_fields, locate, what)
        ref = f"{value.__module__}:{value.__qualname__}"
        _models[ref] = value
        fields = {}
        for name, info in value.model_fields.items():
            ann = getattr(info.annotation, "__name__", "any")
            fields[name] = {"type": ann if ann in SIMPLE_TYPES else "any", "required": info.is_required()}
            if not info.is_required() and info.default is not None:
                fields[name]["default"] = info.default
            if info.description:
                fields[name]["description"] = info.description
        return {"fields": fields, "model": ref, "json_schema": value.model_json_schema()}
    if not isinstance(value, Mapping):
        raise DefinitionError(
            f"{what}: approval input must map field names to types (str, int, float, bool, list, dict) "
            f"or be a pydantic model, got {value!r:.60}",
            location=locate("approval"),
            hint="input: {table: str, limit: int}",
        )
    _check_field_names(value, locate, what)
    fields = {}
    for name, spec in value.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise DefinitionError(f"{what}: approval input field names must be identifiers, got {name!r}", location=locate("approval"))
        entry: dict[str, Any] = {}
        if isinstance(spec, Mapping):
            entry.update({k: v for k, v in spec.items() if k in ("default", "description")})
            spec = spec.get("type", "any")
        type_name = spec.__name__ if isinstance(spec, type) else spec
        if type_name not in SIMPLE_TYPES:
            raise DefinitionError(
                f"{what}: approval input field {name!r} has type {spec!r}; use one of {', '.join(SIMPLE_TYPES)}",
                location=locate("approval"),
            )
        entry["type"] = type_name
        entry["required"] = "default" not in entry
        fields[name] = entry
    return {"fields": fields, "model": None}


# --- at run time ----------------------------------------------------------------


def render_message(gate: Mapping[str, Any], kwargs: Mapping[str, Any], context: Mapping[str, Any] | None) -> str:
    """The gate's message with templates rendered and ``{param}`` / ``{n}`` filled in."""
    message = gate["message"]
    if "{{" in message and context is not None:
        from .expressions import parse_template

        return str(parse_template(message).render(context))
    if "{" not in message:
        return message
    values = dict(kwargs)
    data = _preview_value(gate, kwargs, context)
    try:
        values.setdefault("n", len(data))  # "Publish {n} rows?": rows of the data being approved
    except TypeError:
        values.setdefault("n", "?")
    try:
        return message.format_map(_Blanks(values))
    except (IndexError, ValueError, AttributeError):
        return message


class _Blanks(dict):  # type: ignore[type-arg]
    """Fields the approver fills in ({table}) are not known yet: they stay as written."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _preview_value(gate: Mapping[str, Any], kwargs: Mapping[str, Any], context: Mapping[str, Any] | None) -> Any:
    preview = gate.get("preview")
    if preview is None:
        return next(iter(kwargs.values()), None)
    if "{{" in preview and context is not None:
        from .expressions import parse_template

        return parse_template(preview).render(context)
    return kwargs.get(preview)


def make_preview(gate: Mapping[str, Any], kwargs: Mapping[str, Any], context: Mapping[str, Any] | None, mask: Callable[[Any], Any]) -> Any:
    """A small JSON preview of the data being approved (a table's first rows, a
    truncated list, a repr), with secrets masked; None when there is nothing."""
    value = _preview_value(gate, kwargs, context)
    if value is None:
        return None
    return mask(preview_of(value))


def preview_of(value: Any) -> Any:
    """A JSON-able preview of any value."""
    import orjson

    pl = sys.modules.get("polars")
    if pl is not None and isinstance(value, pl.DataFrame):
        head = value.head(PREVIEW_ROWS)
        return {
            "type": "table",
            "columns": head.columns,
            "dtypes": [str(t) for t in head.dtypes],
            "rows": [list(map(_cell, r)) for r in head.rows()],
            "height": value.height,
        }
    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(value, pa.Table):
        return preview_of(pl.from_arrow(value)) if pl is not None else {"type": "table", "height": value.num_rows}
    if isinstance(value, (list, tuple)):
        return {"type": "list", "items": [_cell(v) for v in value[:PREVIEW_ROWS]], "length": len(value)}
    try:
        encoded = orjson.dumps(value)
        if len(encoded) <= 2048:
            return {"type": "value", "value": orjson.loads(encoded)}
    except TypeError:
        pass
    return {"type": "repr", "repr": repr(value)[:500]}


def _cell(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return repr(v)[:80]


def input_schema_text(schema: Mapping[str, Any] | None) -> str:
    """``table: str, limit: int = 10`` for messages and the CLI."""
    if not schema:
        return "(no input)"
    parts = []
    for name, f in schema["fields"].items():
        part = f"{name}: {f['type']}"
        if "default" in f:
            part += f" = {f['default']!r}"
        parts.append(part)
    return ", ".join(parts)


def validate_input(schema: Mapping[str, Any] | None, given: Mapping[str, Any], where: str) -> tuple[dict[str, Any], Any]:
    """``(json_input, value_for_the_task)`` or an :class:`InputError` listing every problem.

    With a pydantic model known in this process the model validates (and the
    task receives the model instance); otherwise the declared simple types do.
    """
    given = dict(given)
    if not schema:
        if given:
            raise InputError(f"{where} takes no input, but got {', '.join(given)}; approve without input")
        return {}, {}
    fields: Mapping[str, Mapping[str, Any]] = schema["fields"]
    model = _model(schema.get("model"))
    if model is not None:
        from pydantic import ValidationError

        try:
            instance = model.model_validate(given)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors())
            raise InputError(f"{where}: the input is not valid: {problems}. Expected: {input_schema_text(schema)}") from None
        return instance.model_dump(mode="json"), instance
    problems = []
    unknown = [k for k in given if k not in fields]
    if unknown:
        problems.append(f"unknown field(s) {', '.join(unknown)}")
    out: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in given:
            if f.get("required", True):
                problems.append(f"{name} is required")
            elif "default" in f:
                out[name] = f["default"]
            continue
        value = given[name]
        expected = SIMPLE_TYPES.get(f["type"], object)
        if f["type"] == "float" and isinstance(value, str):
            value = _coerce(value, float)
        elif f["type"] == "int" and isinstance(value, str):
            value = _coerce(value, int)
        elif f["type"] == "bool" and isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            value = value.lower() in ("true", "yes")
        if not isinstance(value, expected) or (f["type"] in ("int", "float") and isinstance(value, bool)):
            problems.append(f"{name} must be {f['type']}, got {type(value).__name__} {value!r:.40}")
            continue
        out[name] = value
    if problems:
        raise InputError(f"{where}: the input is not valid: {'; '.join(problems)}. Expected: {input_schema_text(schema)}")
    return out, out


def _coerce(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        return text


def _model(ref: str | None) -> type | None:
    if not ref:
        return None
    if ref in _models:
        return _models[ref]
    module, _, qual = ref.partition(":")
    if module == "__main__":
        return None  # a notebook's class: only known in the process that defined it
    try:
        obj: Any = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except Exception:  # noqa: BLE001 - not importable here: fall back to the declared field types
        return None
    return obj if isinstance(obj, type) else None
