"""The template and condition language of workflow steps.

Templates put values into step definitions: ``"https://x.org/{{inputs.date}}.json"``,
``"{{tasks.parse.output.ids}}"``, ``"{{forEach.$parent.item}}"``. Conditions
decide ``when:``, ``back_to`` and ``skip_to``:
``{{inputs.n}} > 3 && tasks.check.output.ok == true``.

Both are parsed by a small hand-written lexer and recursive-descent parser
rather than a grammar library, so that every syntax error names the exact
column and a fix, and so that no input string can raise anything but
:class:`ExpressionError` (nesting is bounded; nothing recurses per character).
Parsed expressions are cached by text: the engine evaluates the same ones for
every task and every forEach item.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import numbers
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .exceptions import DefinitionError, KernelflowError

__all__ = [
    "ROOTS",
    "Condition",
    "EvaluationError",
    "ExpressionError",
    "Ref",
    "Template",
    "parse_condition",
    "parse_template",
    "refs_in_value",
    "render_value",
]

ROOTS = ("inputs", "tasks", "forEach", "secrets", "output")

#: Parentheses and ``!`` may nest this deep; deeper is an :class:`ExpressionError`.
MAX_DEPTH = 64

Location = str | Callable[[int], str] | None


class ExpressionError(DefinitionError):
    """A template or condition is not valid syntax.

    ``expression`` is the text that was parsed and ``column`` the 1-based
    column of the problem within it (``None`` when the input was not text).
    """

    def __init__(
        self,
        message: str,
        *,
        location: str | None = None,
        hint: str | None = None,
        expression: str | None = None,
        column: int | None = None,
    ):
        self.expression = expression
        self.column = column
        super().__init__(message, location=location, hint=hint)


class EvaluationError(KernelflowError):
    """A valid expression could not be evaluated with the values of this run.

    ``expression`` is the whole template or condition, ``ref`` the reference
    that failed (``"tasks.parse.output.kind"``) or ``None`` when the problem is
    not a reference (comparing a string with a number, say).
    """

    def __init__(self, message: str, *, expression: str, ref: str | None = None, location: str | None = None):
        self.message = message
        self.expression = expression
        self.ref = ref
        self.location = location
        super().__init__(f"{location}: {message}" if location else message)


@dataclass(frozen=True)
class Ref:
    """One reference: ``tasks.parse.output.ids`` is root ``"tasks"``, path ``("parse", "output", "ids")``."""

    root: str
    path: tuple[str | int, ...]
    text: str
    column: int

    def resolve(self, ctx: Mapping[str, Any], *, expression: str | None = None, location: Location = None) -> Any:
        """The value this reference names in ``ctx``; :class:`EvaluationError` if it is not there."""
        return _resolve(self, ctx, self.text if expression is None else expression, location)


# --------------------------------------------------------------------------- errors while parsing


class _Problem(Exception):
    """A syntax problem found by the (cached, location-free) parser; turned into ExpressionError."""

    def __init__(self, message: str, column: int, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.column = column
        self.hint = hint


def _excerpt(text: str, column: int, width: int = 80) -> str:
    """The expression as quoted in messages: all of it, or a window around the column when long."""
    if len(text) <= width:
        return repr(text)
    start = max(0, min(column - 1 - width // 2, len(text) - width))
    piece = text[start : start + width]
    return ("…" if start > 0 else "") + repr(piece) + ("…" if start + width < len(text) else "")


def _location_at(location: Location, column: int) -> str | None:
    return location(column) if callable(location) else location


def _expression_error(kind: str, text: str, problem: _Problem, location: Location) -> ExpressionError:
    return ExpressionError(
        f"{problem.message} at column {problem.column} of {kind} {_excerpt(text, problem.column)}",
        location=_location_at(location, problem.column),
        hint=problem.hint,
        expression=text,
        column=problem.column,
    )


def _check_text(text: object, location: Location) -> None:
    if not isinstance(text, str):
        got = "None" if text is None else f"{type(text).__name__} {_short(text)}"
        raise ExpressionError(
            f"expected text, got {got}",
            location=_location_at(location, 1),
            hint="write the template or condition as a string",
        )


def _short(value: Any, limit: int = 40) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a foreign object's __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- references

_ROOT_NAME = re.compile(r"[^\W\d]\w*")
_SEGMENT = re.compile(r"\$?\w+")
_NAME_OK = re.compile(r"\$?[^\W\d]\w*\Z")
_INT_OK = re.compile(r"[0-9]{1,18}\Z")
_BRACKET_INT = re.compile(r"-?[0-9]+")
_SPACES = re.compile(r"\s*")
_STRING_RUN = {"'": re.compile(r"[^'\\]*"), '"': re.compile(r'[^"\\]*')}
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r", "0": "\0"}
_ROOTS_HINT = "references start with one of: " + ", ".join(ROOTS)


def _did_you_mean(word: str, choices: tuple[str, ...]) -> str | None:
    by_lower = {c.lower(): c for c in choices}
    if word.lower() in by_lower:
        return by_lower[word.lower()]
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def _unknown_root(name: str, column: int) -> _Problem:
    suggestion = _did_you_mean(name, ROOTS)
    message = f"unknown reference root {name!r}"
    if suggestion:
        message += f" (did you mean {suggestion!r}?)"
    return _Problem(message, column, _ROOTS_HINT)


def _scan_string(text: str, pos: int) -> tuple[str, int]:
    """The string literal starting at ``text[pos]`` (a quote) and the position after it."""
    quote = text[pos]
    run = _STRING_RUN[quote]
    out: list[str] = []
    p = pos + 1
    n = len(text)
    while True:
        stop = run.match(text, p).end()  # linear: each character is looked at once
        out.append(text[p:stop])
        if stop >= n:
            raise _Problem(
                "unterminated string",
                pos + 1,
                f"end the string with {quote} (write \\{quote} for a {quote} inside it)",
            )
        if text[stop] == quote:
            return "".join(out), stop + 1
        escape = text[stop + 1] if stop + 1 < n else ""
        if not escape:
            raise _Problem("unterminated string", pos + 1, f"end the string with {quote}")
        if escape not in _ESCAPES:
            raise _Problem(
                f"unknown escape {chr(92) + escape!r} in a string",
                stop + 1,
                "the escapes are \\\\ \\' \\\" \\n \\t \\r \\0; write \\\\ for a backslash",
            )
        out.append(_ESCAPES[escape])
        p = stop + 2


def _segment_text(key: str | int) -> str:
    if isinstance(key, int):
        return f".{key}" if key >= 0 else f"[{key}]"
    return f".{key}" if _NAME_OK.match(key) else f"[{key!r}]"


def _scan_ref(text: str, pos: int) -> tuple[Ref, int]:
    """The reference starting at ``text[pos]`` and the position just after it."""
    m = _ROOT_NAME.match(text, pos)
    if not m:
        found = text[pos] if pos < len(text) else ""
        raise _Problem(
            f"expected a reference like inputs.name, found {found!r}" if found else "expected a reference like inputs.name",
            pos + 1,
            _ROOTS_HINT,
        )
    root = m.group()
    if root not in ROOTS:
        raise _unknown_root(root, pos + 1)
    path: list[str | int] = []
    p = m.end()
    n = len(text)
    while p < n:
        c = text[p]
        if c == ".":
            m = _SEGMENT.match(text, p + 1)
            seg = m.group() if m else ""
            if _INT_OK.match(seg):
                path.append(int(seg))
            elif _NAME_OK.match(seg):
                path.append(seg)
            else:
                shown = f" (found {seg!r})" if seg else ""
                raise _Problem(
                    f"expected a name or an index after '.'{shown}",
                    p + 2,
                    "names are letters, digits and _ (not starting with a digit), optionally after $; "
                    "indexes are numbers; other keys go in brackets: ['my-key']",
                )
            p = m.end() if m else p + 1
        elif c == "[":
            q = _SPACES.match(text, p + 1).end()
            if q < n and text[q] in "'\"":
                key, q = _scan_string(text, q)
                path.append(key)
            elif (mi := _BRACKET_INT.match(text, q)) and len(mi.group()) <= 19:
                path.append(int(mi.group()))
                q = mi.end()
            else:
                raise _Problem(
                    "expected an index like [0] or a quoted key like ['my-key'] after '['",
                    q + 1,
                    "write an integer or a quoted key inside the brackets",
                )
            q = _SPACES.match(text, q).end()
            if q >= n or text[q] != "]":
                raise _Problem("expected ']'", q + 1, "close the bracket with ]")
            p = q + 1
        else:
            break
    if root == "secrets" and not path:
        raise _Problem("a secret reference needs a name", pos + 1, "write secrets.NAME, like {{secrets.API_TOKEN}}")
    return Ref(root, tuple(path), text[pos:p], pos + 1), p


def _scan_braced(text: str, pos: int) -> tuple[Ref, int]:
    """The ``{{ ref }}`` starting at ``text[pos]`` (``{{``) and the position after its ``}}``."""
    if text.find("}}", pos + 2) < 0:
        raise _Problem("unclosed '{{'", pos + 1, "close the reference with }}, like {{inputs.name}}")
    q = _SPACES.match(text, pos + 2).end()
    if text.startswith("}}", q):
        raise _Problem("empty '{{ }}'", pos + 1, "put a reference inside, like {{inputs.name}}")
    ref, q = _scan_ref(text, q)
    q = _SPACES.match(text, q).end()
    if q >= len(text):  # the only "}}" was inside a quoted key
        raise _Problem("unclosed '{{'", pos + 1, "close the reference with }}, like {{inputs.name}}")
    if not text.startswith("}}", q):
        hint = "a {{ }} holds one reference, like {{tasks.parse.output.ids}}"
        if text[q] == "-" and text[q - 1] not in " \t\r\n" and ref.path:
            hint = _dash_hint(ref, text, q)
        raise _Problem(f"expected '}}}}' after {ref.text!r}, found {_token_at(text, q)!r}", q + 1, hint)
    return ref, q + 2


def _dash_hint(ref: Ref, text: str, dash: int) -> str:
    """For ``inputs.my-key``: suggest ``inputs['my-key']``."""
    return f"keys with dashes need brackets and quotes: {_prefix(ref, len(ref.path) - 1)}[{_dashed_word(text, dash)!r}]"


def _dashed_word(text: str, dash: int) -> str:
    start = dash
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
        start -= 1
    end = dash
    while end < len(text) and (text[end].isalnum() or text[end] in "_-"):
        end += 1
    return text[start:end]


_TOKENISH = re.compile(r"\w+|==|!=|<=|>=|&&|\|\||\S")


def _token_at(text: str, pos: int) -> str:
    m = _TOKENISH.match(text, pos)
    return m.group() if m else text[pos : pos + 1]


# --------------------------------------------------------------------------- resolving references

_MISSING_ROOT = {
    "inputs": "no workflow inputs are available here",
    "tasks": "no task outputs are available here",
    "forEach": "this step is not inside a forEach, so there is no forEach item",
    "secrets": "no secrets provider is configured",
    "output": "there is no step output here (output is available once the step has run)",
}


def _fields_of(value: Any) -> str:
    if isinstance(value, Mapping):
        keys = [str(k) for k in list(value)[:21]]
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        keys = [f.name for f in dataclasses.fields(value) if not f.name.startswith("_")][:21]
    else:
        return ""
    if not keys:
        return " (it is empty)"
    shown = ", ".join(keys[:20]) + (", …" if len(keys) > 20 else "")
    return f" (fields: {shown})"


def _missing(ref: Ref, i: int, container: Any) -> str:
    """Why ``ref.path[i]`` is not in ``container``, in the words of the step vocabulary."""
    key = ref.path[i]
    fields = _fields_of(container)
    if ref.root == "inputs" and i == 0:
        return f"the workflow has no input {key!r}" + fields.replace("fields:", "inputs:")
    if ref.root == "tasks" and i == 0:
        return f"there is no task {key!r} here" + fields.replace("fields:", "tasks:")
    if ref.root == "tasks" and i == 2 and ref.path[1] == "output":
        return f"the output of task {ref.path[0]!r} has no field {key!r}{fields}"
    if ref.root == "forEach" and key == "$parent":
        return "there is no enclosing forEach loop"
    if ref.root == "output" and i == 0:
        return f"the output has no field {key!r}{fields}"
    return f"{_prefix(ref, i)} has no field {key!r}{fields}"


def _prefix(ref: Ref, i: int) -> str:
    return ref.root + "".join(_segment_text(k) for k in ref.path[:i])


def _resolve(ref: Ref, ctx: Mapping[str, Any], expression: str, location: Location) -> Any:
    def fail(message: str) -> EvaluationError:
        return EvaluationError(
            f"{{{{{ref.text}}}}}: {message}",
            expression=expression,
            ref=ref.text,
            location=_location_at(location, ref.column),
        )

    if ref.root not in ctx:
        raise fail(_MISSING_ROOT[ref.root])
    value = ctx[ref.root]
    for i, key in enumerate(ref.path):
        if i == 0 and ref.root == "secrets":
            # Providers resolve lazily and only promise __getitem__ raising KeyError.
            try:
                value = value[key]
            except KeyError:
                raise fail(f"no secrets provider has a secret named {key!r}") from None
            except TypeError:
                raise fail(_MISSING_ROOT["secrets"]) from None
        elif isinstance(value, Mapping):
            if key in value:
                value = value[key]
            elif isinstance(key, int) and str(key) in value:
                value = value[str(key)]
            else:
                raise fail(_missing(ref, i, value))
        elif isinstance(value, (list, tuple)):
            if not isinstance(key, int):
                raise fail(f"{_prefix(ref, i)} is a list; use an index like .0, not {key!r}")
            if not -len(value) <= key < len(value):
                raise fail(f"index {key} is out of range: {_prefix(ref, i)} has {len(value)} item(s)")
            value = value[key]
        elif value is None:
            raise fail(f"{_prefix(ref, i)} is null, so it has no field {key!r}")
        elif isinstance(value, (str, bytes, int, float, complex)):
            raise fail(f"{_prefix(ref, i)} is a {type(value).__name__}, so it has no field {key!r}")
        elif isinstance(key, int):
            raise fail(f"{_prefix(ref, i)} is a {type(value).__name__}, it cannot be indexed with {key}")
        elif key.startswith("_"):
            # Attribute walking is for data; private and dunder names would reach internals.
            raise fail(f"{key!r} is private; references cannot read names starting with _")
        else:
            try:
                value = getattr(value, key)
            except AttributeError:
                raise fail(_missing(ref, i, value)) from None
            except Exception as exc:  # a property of the user's object that fails
                raise fail(
                    f"reading {key!r} of {_prefix(ref, i)} (a {type(value).__name__}) raised {type(exc).__name__}: {exc}"
                ) from exc
    return value


# --------------------------------------------------------------------------- templates


def _to_text(value: Any) -> str:
    """How a value reads inside a longer string: null is empty, booleans lower-case, containers JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
        except (TypeError, ValueError, RecursionError):  # odd keys, cycles: still render something
            return str(value)
    return str(value)


@dataclass(frozen=True)
class Template:
    """A parsed template; ``render(ctx)`` fills in its references."""

    text: str
    refs: tuple[Ref, ...]
    is_single: bool
    parts: tuple[str | Ref, ...] = field(default=(), repr=False, compare=False)
    location: Location = field(default=None, repr=False, compare=False)

    def render(self, ctx: Mapping[str, Any]) -> Any:
        """The value itself for a single ``{{ref}}`` (type kept), else the text with each reference filled in."""
        if self.is_single:
            return _resolve(self.refs[0], ctx, self.text, self.location)
        if not self.refs:
            return self.text
        return "".join(part if isinstance(part, str) else self._as_text(part, ctx) for part in self.parts)

    def _as_text(self, ref: Ref, ctx: Mapping[str, Any]) -> str:
        value = _resolve(ref, ctx, self.text, self.location)
        try:
            return _to_text(value)
        except Exception as exc:  # a value whose __str__ fails
            raise EvaluationError(
                f"{{{{{ref.text}}}}}: cannot write {_describe(value)} into the text: {type(exc).__name__}: {exc}",
                expression=self.text,
                ref=ref.text,
                location=_location_at(self.location, ref.column),
            ) from exc


@lru_cache(maxsize=4096)
def _compile_template(text: str) -> Template:
    if "{{" not in text:
        return Template(text, (), False, (text,) if text else ())
    parts: list[str | Ref] = []
    pos = 0
    while (start := text.find("{{", pos)) >= 0:
        if start > pos:
            parts.append(text[pos:start])
        ref, pos = _scan_braced(text, start)
        parts.append(ref)
    if pos < len(text):
        parts.append(text[pos:])
    refs = tuple(p for p in parts if isinstance(p, Ref))
    return Template(text, refs, len(parts) == 1 and len(refs) == 1, tuple(parts))


def parse_template(text: str, *, location: Location = None) -> Template:
    """Parse ``text`` as a template; :class:`ExpressionError` if a ``{{ }}`` in it is not a valid reference.

    ``location`` says where the text sits in the user's file: a string used
    as is, or a callable taking the 1-based column of the problem.
    """
    _check_text(text, location)
    try:
        template = _compile_template(text)
    except _Problem as problem:
        raise _expression_error("template", text, problem, location) from None
    return template if location is None else dataclasses.replace(template, location=location)


def render_value(value: Any, ctx: Mapping[str, Any], *, location: Location = None) -> Any:
    """Render every string inside nested dicts, lists and tuples (keys are left alone)."""
    if isinstance(value, str):
        return parse_template(value, location=location).render(ctx)
    if isinstance(value, Mapping):
        return {k: render_value(v, ctx, location=location) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, ctx, location=location) for v in value]
    if isinstance(value, tuple):
        return tuple(render_value(v, ctx, location=location) for v in value)
    return value


def refs_in_value(value: Any, *, location: Location = None) -> tuple[Ref, ...]:
    """Every reference in every string of a nested dict/list/tuple value, in order."""
    found: list[Ref] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.extend(parse_template(item, location=location).refs)
        elif isinstance(item, Mapping):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
    return tuple(found)


# --------------------------------------------------------------------------- conditions: lexer

_CMP_OPS = ("==", "!=", "<=", ">=", "<", ">")
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_WORDISH = re.compile(r"[\w.$]")
_WORDISH_RUN = re.compile(r"[\w.$]*")
_WRONG_OPERATORS = {"===": "==", "!==": "!=", "<>": "!=", "=>": ">=", "=<": "<=", "=": "==", "&": "&&", "|": "||"}
# Longest first; a lone "=", "&" or "|" is only wrong when it does not start "==", "&&" or "||".
_WRONG_OPERATOR = re.compile(r"===|!==|<>|=>|=<|=(?!=)|&(?!&)|\|(?!\|)")
_WRONG_WORDS = {"and": "&&", "or": "||", "not": "!"}
_LITERAL_WORDS = {"true": True, "false": False, "null": None}
_OPERATORS_HINT = "conditions use == != < <= > >= && || ! and parentheses"


@dataclass(frozen=True)
class _Token:
    kind: str  # "op", "lit", "ref" or "end"
    value: Any
    start: int  # 0-based offsets into the text
    end: int


class _Lexer:
    """Tokens on demand, so the first problem by position is the one reported."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.previous: _Token | None = None

    def next(self) -> _Token:
        text = self.text
        p = _SPACES.match(text, self.pos).end()
        token = self._scan(text, p)
        self.pos = token.end
        self.previous = token
        return token

    def _scan(self, text: str, p: int) -> _Token:
        n = len(text)
        if p >= n:
            return _Token("end", None, n, n)
        c = text[p]
        if text.startswith("{{", p):
            ref, end = _scan_braced(text, p)
            return _Token("ref", ref, p, end)
        wrong = _WRONG_OPERATOR.match(text, p)
        if wrong:
            right = _WRONG_OPERATORS[wrong.group()]
            raise _Problem(f"{wrong.group()!r} is not an operator (did you mean {right!r}?)", p + 1, f"use {right!r}")
        for op in ("&&", "||", *_CMP_OPS, "!", "(", ")"):
            if text.startswith(op, p):
                return _Token("op", op, p, p + len(op))
        if c in "'\"":
            value, end = _scan_string(text, p)
            return _Token("lit", value, p, end)
        if c == "-" or c == "." or c.isdigit():
            m = _NUMBER.match(text, p)
            if m:
                return self._number(text, p, m.group())
            return self._unexpected(text, p)
        m = _ROOT_NAME.match(text, p)
        if m:
            return self._word(text, p, m.group())
        return self._unexpected(text, p)

    def _number(self, text: str, p: int, literal: str) -> _Token:
        end = p + len(literal)
        if end < len(text) and _WORDISH.match(text, end):
            bad = literal + _WORDISH_RUN.match(text, end).group()
            raise _Problem(f"malformed number {bad!r}", p + 1, "write a number like 3, -2 or 0.5")
        if re.fullmatch(r"-?[0-9]+", literal):
            if len(literal) > 4000:  # int() refuses very long digit strings
                raise _Problem("number too long", p + 1, "write a shorter number")
            value: Any = int(literal)
        else:
            value = float(literal)
        return _Token("lit", value, p, end)

    def _word(self, text: str, p: int, word: str) -> _Token:
        end = p + len(word)
        if word in _LITERAL_WORDS:
            return _Token("lit", _LITERAL_WORDS[word], p, end)
        if word in ROOTS:
            ref, end = _scan_ref(text, p)
            return _Token("ref", ref, p, end)
        if word.lower() in _WRONG_WORDS:
            right = _WRONG_WORDS[word.lower()]
            raise _Problem(f"{word!r} is not an operator (did you mean {right!r}?)", p + 1, f"use {right!r}")
        if word.lower() in ("true", "false", "null", "none", "nil"):
            right = "null" if word.lower() in ("none", "nil") else word.lower()
            raise _Problem(f"{word!r} is not a value (did you mean {right!r}?)", p + 1, "the literals are true, false and null")
        if end < len(text) and text[end] in ".[":
            raise _unknown_root(word, p + 1)
        suggestion = _did_you_mean(word, ROOTS)
        also = f" (did you mean {suggestion!r}?)" if suggestion else ""
        raise _Problem(
            f"{word!r} is not a value or a reference{also}",
            p + 1,
            f"quote text as a string ('{word}'); " + _ROOTS_HINT,
        )

    def _unexpected(self, text: str, p: int) -> _Token:
        c = text[p]
        hint = _OPERATORS_HINT + "; there is no arithmetic"
        previous = self.previous
        if c == "-" and previous is not None and previous.kind == "ref" and previous.end == p and previous.value.path:
            hint = _dash_hint(previous.value, text, p)
        elif text.startswith("}}", p):
            raise _Problem("unexpected '}}' without an opening '{{'", p + 1, "write references as {{inputs.name}} or inputs.name")
        raise _Problem(f"unexpected character {c!r}", p + 1, hint)


# --------------------------------------------------------------------------- conditions: parser and nodes


@dataclass(frozen=True)
class _Lit:
    value: Any


@dataclass(frozen=True)
class _RefNode:
    ref: Ref


@dataclass(frozen=True)
class _Not:
    operand: Any


@dataclass(frozen=True)
class _And:
    operands: tuple[Any, ...]


@dataclass(frozen=True)
class _Or:
    operands: tuple[Any, ...]


@dataclass(frozen=True)
class _Cmp:
    op: str
    left: Any
    right: Any
    source: str  # the comparison as written, for error messages
    column: int


class _Parser:
    """Recursive descent; each level of ``(`` or ``!`` counts towards :data:`MAX_DEPTH`."""

    def __init__(self, text: str):
        self.text = text
        self.lexer = _Lexer(text)
        self.tok = self.lexer.next()
        self.prev_end = 0
        self.prev_tok: _Token | None = None
        self.depth = 0
        self.refs: list[Ref] = []

    def advance(self) -> None:
        self.prev_end = self.tok.end
        self.prev_tok = self.tok
        self.tok = self.lexer.next()

    def is_op(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.value in ops

    def enter(self, start: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Problem(
                f"the condition nests deeper than {MAX_DEPTH} levels",
                start + 1,
                f"simplify it: at most {MAX_DEPTH} nested parentheses or '!'",
            )

    def parse(self) -> Any:
        if self.tok.kind == "end":
            raise _Problem("the condition is empty", 1, "write a condition like {{inputs.n}} > 3")
        node = self.parse_or()
        if self.tok.kind != "end":
            if self.is_op(")"):
                raise _Problem("unmatched ')'", self.tok.start + 1, "remove it or add the '(' it closes")
            raise _Problem(
                f"expected an operator, found {self.text[self.tok.start : self.tok.end]!r}",
                self.tok.start + 1,
                "join conditions with && or ||; " + _OPERATORS_HINT,
            )
        return node

    def parse_or(self) -> Any:
        operands = [self.parse_and()]
        while self.is_op("||"):
            self.advance()
            operands.append(self.parse_and())
        return operands[0] if len(operands) == 1 else _Or(tuple(operands))

    def parse_and(self) -> Any:
        operands = [self.parse_not()]
        while self.is_op("&&"):
            self.advance()
            operands.append(self.parse_not())
        return operands[0] if len(operands) == 1 else _And(tuple(operands))

    def parse_not(self) -> Any:
        # A loop, not recursion, so "!!!!…" costs no stack.
        bangs = 0
        while self.is_op("!"):
            self.enter(self.tok.start)
            bangs += 1
            self.advance()
        node = self.parse_cmp()
        self.depth -= bangs
        for _ in range(bangs):
            node = _Not(node)
        return node

    def parse_cmp(self) -> Any:
        start = self.tok.start
        left = self.parse_operand()
        if not self.is_op(*_CMP_OPS):
            return left
        op_token = self.tok
        self.advance()
        right = self.parse_operand()
        if self.is_op(*_CMP_OPS):
            source = self.text[start : self.prev_end]
            raise _Problem(
                f"comparisons cannot be chained ({source!r} is followed by {self.tok.value!r})",
                self.tok.start + 1,
                "combine two comparisons with &&, like a < b && b < c",
            )
        return _Cmp(op_token.value, left, right, self.text[start : self.prev_end], op_token.start + 1)

    def parse_operand(self) -> Any:
        tok = self.tok
        if tok.kind == "lit":
            self.advance()
            return _Lit(tok.value)
        if tok.kind == "ref":
            self.advance()
            self.refs.append(tok.value)
            return _RefNode(tok.value)
        if self.is_op("("):
            self.enter(tok.start)
            self.advance()
            node = self.parse_or()
            if self.tok.kind == "end":
                raise _Problem("'(' is never closed", tok.start + 1, "add the missing ')'")
            if not self.is_op(")"):
                raise _Problem(
                    f"expected an operator or ')', found {self.text[self.tok.start : self.tok.end]!r}",
                    self.tok.start + 1,
                    "join conditions with && or ||, and close each '(' with ')'",
                )
            self.depth -= 1
            self.advance()
            return node
        if tok.kind == "end":
            last = self.prev_tok
            raise _Problem(
                "the condition ends where a value was expected"
                + (f" (after {self.text[last.start : last.end]!r})" if last else ""),
                len(self.text) + 1,
                "add a value: a literal, a reference or a parenthesised condition",
            )
        raise _Problem(
            f"expected a value, found {tok.value!r}",
            tok.start + 1,
            "values are literals ('text', 3, true, null), references (inputs.n, {{tasks.t.output}}) or ( … )",
        )


@dataclass(frozen=True)
class Condition:
    """A parsed condition; ``evaluate(ctx)`` says whether it holds."""

    text: str
    refs: tuple[Ref, ...]
    tree: Any = field(default=None, repr=False, compare=False)
    location: Location = field(default=None, repr=False, compare=False)

    def evaluate(self, ctx: Mapping[str, Any]) -> bool:
        """True or False; :class:`EvaluationError` for missing references or incomparable values."""
        return _truth(self._eval(self.tree, ctx), self.text, self.text, self.location)

    def _eval(self, node: Any, ctx: Mapping[str, Any]) -> Any:
        if isinstance(node, _Lit):
            return node.value
        if isinstance(node, _RefNode):
            return _resolve(node.ref, ctx, self.text, self.location)
        if isinstance(node, _And):
            return all(_truth(self._eval(n, ctx), self.text, self.text, self.location) for n in node.operands)
        if isinstance(node, _Or):
            return any(_truth(self._eval(n, ctx), self.text, self.text, self.location) for n in node.operands)
        if isinstance(node, _Not):
            return not _truth(self._eval(node.operand, ctx), self.text, self.text, self.location)
        left = self._eval(node.left, ctx)
        right = self._eval(node.right, ctx)
        return _compare(node, left, right, self.text, self.location)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"bool {'true' if value else 'false'}"
    if isinstance(value, (str, int, float, list, tuple, dict)):
        shown = _short(value)
        if "\n" not in shown:
            return f"{type(value).__name__} {shown}"
    # Frames and arbitrary objects have long, multi-line reprs; the type says enough.
    return f"a {type(value).__name__}"


def _truth(value: Any, source: str, expression: str, location: Location) -> bool:
    if isinstance(value, bool):
        return value
    try:
        return bool(value)
    except Exception:  # noqa: BLE001 - e.g. a DataFrame refuses to be true or false
        raise EvaluationError(
            f"{source}: cannot use {_describe(value)} as true or false",
            expression=expression,
            location=_location_at(location, 1),
        ) from None


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _compare(node: _Cmp, left: Any, right: Any, expression: str, location: Location) -> bool:
    op = node.op

    def fail() -> EvaluationError:
        return EvaluationError(
            f"{node.source}: cannot compare {_describe(left)} with {_describe(right)} using {op}",
            expression=expression,
            location=_location_at(location, node.column),
        )

    if op in ("==", "!="):
        if isinstance(left, bool) or isinstance(right, bool):
            # true == 1 would be Python's answer; here booleans only equal booleans.
            equal = isinstance(left, bool) and isinstance(right, bool) and left == right
        else:
            try:
                equal = bool(left == right)
            except Exception:  # noqa: BLE001 - arrays and frames compare element-wise
                raise fail() from None
        return equal if op == "==" else not equal
    if not ((_is_number(left) and _is_number(right)) or (isinstance(left, str) and isinstance(right, str))):
        raise fail()
    if op == "<":
        return left < right
    if op == "<=":
        return left <= right
    if op == ">":
        return left > right
    return left >= right


@lru_cache(maxsize=4096)
def _compile_condition(text: str) -> Condition:
    parser = _Parser(text)
    tree = parser.parse()
    return Condition(text, tuple(parser.refs), tree)


def parse_condition(text: str, *, location: Location = None) -> Condition:
    """Parse ``text`` as a condition; :class:`ExpressionError` naming the column if it is not valid.

    ``location`` says where the text sits in the user's file: a string used
    as is, or a callable taking the 1-based column of the problem.
    """
    _check_text(text, location)
    try:
        condition = _compile_condition(text)
    except _Problem as problem:
        raise _expression_error("condition", text, problem, location) from None
    return condition if location is None else dataclasses.replace(condition, location=location)
