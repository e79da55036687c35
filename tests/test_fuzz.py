"""Fuzzing at kernelflow's boundaries (issue 10).

Four targets, one rule: every input either works or raises kernelflow's own
error with a location (a cell line, a file path, a column), never another
exception, never a hang.

* ``%%workflow`` cell bodies, Python and YAML, dispatched as the magic does;
* the template and condition language;
* the command line, ``kernelflow.cli.main(argv)`` in-process;
* the store's readers on damaged segment and events files.

Examples per test are bounded for CI (the file runs in well under a minute);
``KERNELFLOW_FUZZ_SCALE=20`` runs twenty times as many (docs/quality.md).
Generated inputs are either random text or real, valid inputs mangled: lines
deleted, duplicated, truncated, values of the wrong type in known keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import kernelflow as kf
from kernelflow.cell_compiler import compile_cell
from kernelflow.cli import main
from kernelflow.events import EVENT_FIELDS
from kernelflow.exceptions import DefinitionError, KernelflowError
from kernelflow.expressions import (
    ROOTS,
    Condition,
    EvaluationError,
    ExpressionError,
    Template,
    parse_condition,
    parse_template,
)
from kernelflow.model import Workflow
from kernelflow.store import FolderStore
from kernelflow.store.problems import StoreDamageWarning
from kernelflow.store_access import close_stores, use_store
from kernelflow.yaml_compiler import compile_yaml, load, looks_like_yaml

SCALE = float(os.environ.get("KERNELFLOW_FUZZ_SCALE", "1"))

# Generated cell bodies hold stray backslashes; compiling them warns (then errs, in later Pythons).
pytestmark = pytest.mark.filterwarnings(
    "ignore:invalid escape sequence:DeprecationWarning", "ignore:invalid escape sequence:SyntaxWarning"
)


def limit(seconds: float) -> float:
    """A test's time limit (pytest-timeout: a hang fails the test), grown with the examples."""
    return seconds * max(1.0, SCALE)


def fuzz(examples: int, *, deadline_ms: int = 2000) -> settings:
    """Bounded examples (times ``$KERNELFLOW_FUZZ_SCALE``), each within a deadline.

    The deadline is generous (CI shares two cores with other jobs): it catches
    a parser gone quadratic or a read that waits, not a slow machine.
    """
    return settings(
        max_examples=max(1, round(examples * SCALE)),
        deadline=deadline_ms,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


# =========================================================================== cell bodies

# Valid bodies to mangle. Their top level only defines things (no loops, no I/O),
# so any mangling of their lines is safe to execute.
PYTHON_BODIES = [
    '''import kernelflow as kf

def extract(n: int = 3):
    return [{"id": i, "value": i * 1.5} for i in range(n)]

@kf.task(retries=2, retry_delay="10ms", timeout="30s")
def clean(extract):
    return [row for row in extract if row["id"] % 3 != 0]

def _helper(x):
    return x * 10

def stats(clean, title="daily"):
    return {"rows": len(clean), "title": title, "scaled": [_helper(r["id"]) for r in clean]}
''',
    '''import kernelflow as kf

def parse(kind):
    return {"kind": kind, "n": 5}

def handle_a(parse, kind):
    return ["a", parse["n"], kind]

def other(kind):
    return ["other", kind]

route = kf.switch("{{tasks.parse.output.kind}}", cases={"a": handle_a}, default=other)
fetch = kf.shell(["echo", "{{inputs.kind}}"], after=["parse"])

@kf.task(when="{{tasks.parse.output.n}} > 3 && {{inputs.kind}} != 'x'",
         for_each={"items": "{{tasks.parse.output.ids}}", "as": "x", "maxParallel": 2})
def each(x, parse):
    return x

@kf.task(back_to={"step": "parse", "when": "{{output}} < 3", "max_iterations": 4})
def check(each):
    return len(each)
''',
]

# Lines a user might type by mistake, or that probe the compiler's corners.
PYTHON_ODDITIES = [
    "def", "def a(:", "def a(*args):\n    pass", "def b(**kw):\n    pass", "def extract(extract):\n    pass",
    "def 名前(extract):\n    return 1", "def ℌ(x):\n    pass", "def _private(clean):\n    pass",
    "async def fetch_async(extract):\n    return 1", "class Thing:\n    pass", "lambda: 0", "\t", "    ", "\ufeff",
    "@kf.task(retries='x')", "@kf.task(retries=-1)", "@kf.task(timeout=-5)", "@kf.task(timeout='soon')",
    "@kf.task(when='{{')", "@kf.task(when='inputs.n >')", "@kf.task(for_each={'items': 3})",
    "@kf.task(after=['nope'])", "@kf.task(executor='warp')", "@kf.task(nope=1)", "@kf.task", "@kf.task()",
    "@kf.task(back_to='nope')", "@kf.task(skip_to={'step': 'extract'})", "@kf.task(fallback=3)",
    "@kf.task(retry_on=['NotAnError'])", "@kf.task(circuit_breaker={'window': 'x'})", "@staticmethod",
    "x = kf.shell([])", "x = kf.shell('echo hi')", "y = kf.http('FETCH', 'ftp://x')", "z = kf.switch(3)",
    "w = kf.step(run='python:nowhere')", "v = kf.step(sleep='forever')", "u = kf.subworkflow('nope')",
    "route = 1", "extract = 2", "import nonexistent_module_for_fuzzing", "x = 1 / 0", "x = [][1]", "x = {}['k']",
    "del kf", "kf = None", "return 1", "yield 2", "global g", "nonlocal n", "await x", "pass", "# comment",
    "'''", '"""unclosed', "\\", "(", "x = (", "tasks:", "- id: a", "tasks = [1]", "inputs: {n: int}",
]


def parse_json(fetch=None):
    return {"ids": [1, 2, 3], "kind": "a"}


def process(id):
    return id * 2


def handle_a(parse):
    return "a"


def other(parse=None):
    return "other"


def rollback(fetch=None):
    return None


YAML_NAMESPACE = {
    "parse_json": parse_json,
    "process": process,
    "handle_a": handle_a,
    "other": other,
    "rollback": rollback,
}

YAML_BODIES = [
    """inputs: {date: str, limit: {type: int, default: 10}}
max_parallel: 4
tasks:
  - id: fetch
    run: shell
    argv: [curl, -sf, "https://example.org/{{inputs.date}}.json"]
    retries: 2
    retryDelay: 10ms
    timeout: 30s
    compensate: python:rollback
  - id: parse
    run: python:parse_json
    needs: [fetch]
    when: "{{inputs.limit}} > 3 && {{tasks.fetch.status}} == 'succeeded'"
  - id: each
    forEach: {items: "{{tasks.parse.output.ids}}", as: id, maxParallel: 5}
    run: python:process
  - id: route
    switch: {value: "{{tasks.parse.output.kind}}", cases: {a: python:handle_a}, default: python:other}
  - id: post
    run: http
    method: post
    url: "https://example.org/{{inputs.date}}"
    json: {ids: "{{tasks.parse.output.ids}}"}
    after: [each]
    circuit_breaker: {failure_threshold: 2, window: 60s}
""",
    """tasks:
  - id: fetch
    run: shell
    argv: [echo, hi]
    skip_to: {step: done, when: "{{output.skip}} == true"}
  - id: check
    run: python:parse_json
    back_to: {step: fetch, when: "{{output.again}}", maxIterations: 3}
  - id: done
    run: python:other
    input: {parse: "{{tasks.check.output}}"}
""",
]

YAML_ODDITIES = [
    "tasks:", "steps:", "inputs:", "  - id: x", "  - id: 1", "  - id: fetch", "  -", "- id: a", "    run: shell",
    "    run: python:nowhere", "    run: nonexistent_module_for_fuzzing:f", "    run: math:nope", "    run: workflow:nope",
    "    needs: [nope]", "    needs: fetch", "    needs: [", "    when: {{inputs.date}} > 1", "    when: '{{'",
    "    forEach: {items: 3}", "    argv: []", "    argv: echo", "    url: 3", "    timeout: -1s", "    retries: yes",
    "    retries: 1e400", "    retries: 99999999999999999999999", "    method: FETCH", "    shell: maybe",
    "    nope: 1", "name: other", "name: 3", "max_parallel: 0", "executor: warp", "schedule: {cron: nope}",
    "schedule: [{cron: '* * * * *'}, {cron: '* * * * *'}]", "alerts: 3", "alerts: [{when: nope}]",
    "inputs: {run_id: str}", "inputs: {n: {type: int, default: x}}", "inputs: {a-b: str}", "&a [*a]", "*nope",
    "<<: *nope", "? [a, b]\n: c", "!!python/object:os.system x", "!custom 1", "%YAML 1.1", "---", "...",
    "yes: no", "\t- id: tab", "key: 'unclosed", 'key: "bad \\q escape"', "{{inputs.date}}: x", "@at", "`tick",
    "\x00", "\x1b[0m", "é: ü", "🙂: 1",
]


def body_edits(base: str, extra: list[str]) -> st.SearchStrategy[str]:
    """``base`` with one to four of its lines deleted, duplicated, cut, re-indented or swapped, or lines of ``extra`` inserted."""

    @st.composite
    def edited(draw: Any) -> str:
        lines = base.split("\n")
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, max(len(lines) - 1, 0)))
            op = draw(st.sampled_from(["delete", "duplicate", "cut", "indent", "dedent", "tab", "insert", "swap"]))
            if not lines:
                lines = [draw(st.sampled_from(extra))]
            elif op == "delete":
                del lines[i]
            elif op == "duplicate":
                lines.insert(i, lines[i])
            elif op == "cut":
                lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
            elif op == "indent":
                lines[i] = "  " + lines[i]
            elif op == "dedent":
                lines[i] = lines[i].lstrip()
            elif op == "tab":
                lines[i] = lines[i].replace("    ", "\t", 1)
            elif op == "insert":
                lines.insert(i, draw(st.sampled_from(extra)))
            else:
                j = draw(st.integers(0, len(lines) - 1))
                lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines)

    return edited()


def define(body: str, name: str = "wf", syntax: str | None = None) -> Workflow:
    """Compile a ``%%workflow`` body as the magic does: YAML if it looks like YAML
    (or ``syntax="yaml"``, the ``--yaml`` flag), else Python. Line 1 is the magic."""
    if syntax == "yaml" or (syntax is None and looks_like_yaml(body)):
        return compile_yaml(name, body, dict(YAML_NAMESPACE), origin="cell", first_line=2)
    return compile_cell(name, body, {"kf": kf}, first_line=2)


# "cell line 4", "cell line 4, column 7", "flow.yaml lines 6, 9" (a cycle through several lines).
LOCATION = re.compile(r"(?P<origin>.+?) lines? (?P<line>\d+)(?:, column (?P<column>\d+)|(?:, \d+)*)")


def assert_located(err: DefinitionError, text: str, origin: str = "cell", first_line: int = 2) -> None:
    """The error names a line of ``text`` (counting the magic line when ``first_line`` is 2), and a fix."""
    assert err.location, f"no location: {err}"
    where = LOCATION.fullmatch(err.location)
    assert where is not None and where["origin"] == origin, f"location {err.location!r}: {err}"
    # Column and line may point just past the end (an unterminated string, a missing key).
    last = first_line + text.count("\n") + 1
    assert first_line - 1 <= int(where["line"]) <= last, f"line out of range in {err.location!r}: {err}"
    if where["column"] is not None:
        assert int(where["column"]) >= 1, err.location
    assert err.message.strip(), "an empty message"
    assert err.hint and err.hint.strip(), f"no fix in: {err}"


def compiles_or_is_located(body: str, syntax: str | None = None) -> None:
    try:
        wf = define(body, syntax=syntax)
    except DefinitionError as err:
        event(f"error: {type(err).__name__}")  # --hypothesis-show-statistics: how deep the inputs get
        assert_located(err, body)
    else:
        event("compiled")
        assert isinstance(wf, Workflow) and wf.name == "wf" and wf.tasks


def test_the_bodies_to_mangle_are_valid():
    for body in PYTHON_BODIES + YAML_BODIES:
        assert define(body).tasks


@pytest.mark.timeout(limit(60))
@fuzz(150)
@given(st.one_of(*(body_edits(b, PYTHON_ODDITIES) for b in PYTHON_BODIES)))
def test_mangled_python_bodies(body):
    compiles_or_is_located(body)


@pytest.mark.timeout(limit(60))
@fuzz(100)
@given(st.one_of(*(body_edits(b, PYTHON_ODDITIES) for b in PYTHON_BODIES), *(body_edits(b, YAML_ODDITIES) for b in YAML_BODIES)))
def test_windows_line_endings_change_nothing(body):
    """A body saved with CRLF line endings compiles, or fails at the same place, as with LF."""
    outcomes = []
    for text in (body, body.replace("\n", "\r\n")):
        try:
            outcomes.append(("compiled", define(text).task_ids))
        except DefinitionError as err:
            outcomes.append((type(err).__name__, err.location))
    assert outcomes[0] == outcomes[1]


@pytest.mark.timeout(limit(60))
@fuzz(150)
@given(st.one_of(st.text(max_size=300), st.lists(st.sampled_from(PYTHON_ODDITIES + YAML_ODDITIES), max_size=8).map("\n".join)))
def test_random_bodies(body):
    compiles_or_is_located(body)


# Expressions nested thousands deep: Python's parser runs out of stack or memory on some.
NESTINGS = ["-", "not ", "(", "[", "{", "a.", "1+", "f(", "x[", "lambda: ", "1 if 1 else ", "await ", "*", "~"]


# Where such an expression may sit: evaluated at the top level, as a task's default
# (which is recorded as text), in a decorator, or in a task's body (compiled, not run).
NESTING_PLACES = [
    "x = {}1\n",
    "def deep(clean, n={}1):\n    return n\n",
    "@kf.task(retries={}1)\ndef deep(clean):\n    pass\n",
    "def deep(clean):\n    return {}1\n",
]


@pytest.mark.timeout(limit(60))
@fuzz(60)
@given(st.sampled_from(PYTHON_BODIES), st.sampled_from(NESTING_PLACES), st.sampled_from(NESTINGS),
       st.one_of(st.integers(1, 1500), st.integers(1, 30_000)))  # fmt: skip
def test_deeply_nested_python(body, place, nesting, depth):
    compiles_or_is_located(body + "\n" + place.format(nesting * depth))


@pytest.mark.timeout(limit(60))
@fuzz(60)
@given(st.text(min_size=1, max_size=20), st.sampled_from(PYTHON_BODIES))
def test_odd_workflow_names(name, body):
    try:
        wf = compile_cell(name, body, {"kf": kf}, first_line=2)
    except DefinitionError as err:
        assert_located(err, body)
    else:
        assert wf.name == name and name.isidentifier()


# Values of any type, often the wrong one for the key they are put under.
WRONG_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        ["{{", "}}", "{{inputs.nope}}", "{{tasks.fetch.output}}", "{{forEach.item}}", "python:nowhere",
         "math:nope", "nonexistent_module_for_fuzzing:f", "workflow:nope", "shell", "http", "notebook",
         "-1", "0", "1e309", "10s", "-5s", "soon", "fetch", "parse", "", " ", "\t", "é", "a\nb", "*"]
    ),
    st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=4), st.none()), max_size=3),
    st.dictionaries(st.sampled_from(["step", "when", "items", "as", "value", "cases", "x", ""]),
                    st.one_of(st.integers(-3, 3), st.text(max_size=4)), max_size=3),
)  # fmt: skip


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a parsed YAML document (dict keys and list indexes)."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out += _paths(child, (*prefix, index))
    return out


@st.composite
def yaml_with_wrong_values(draw: Any) -> str:
    """A valid YAML body with one to three values replaced by values of other types, or keys removed."""
    doc = yaml.safe_load(draw(st.sampled_from(YAML_BODIES)))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(WRONG_VALUES)
    style = draw(st.sampled_from([False, None, True]))
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=style, allow_unicode=draw(st.booleans()), width=10**6)


@pytest.mark.timeout(limit(60))
@fuzz(150)
@given(yaml_with_wrong_values())
def test_yaml_with_values_of_the_wrong_type(body):
    compiles_or_is_located(body, syntax="yaml")


@pytest.mark.timeout(limit(60))
@fuzz(150)
@given(st.one_of(*(body_edits(b, YAML_ODDITIES) for b in YAML_BODIES)))
def test_mangled_yaml_bodies(body):
    # As the magic would: a body mangled until it no longer looks like YAML is read as Python.
    compiles_or_is_located(body)
    compiles_or_is_located(body, syntax="yaml")


@pytest.mark.timeout(limit(60))
@fuzz(60)
@given(body=st.one_of(*(body_edits(b, YAML_ODDITIES) for b in YAML_BODIES)), junk=st.binary(max_size=8), at=st.integers(0, 10**4))
def test_yaml_files_with_mangled_bytes(tmp_path_factory, body, junk, at):
    """``kf.load(path)``: the location is the file as given, then the line."""
    data = body.encode()
    at = at % (len(data) + 1)
    path = tmp_path_factory.mktemp("flows") / "flow.yaml"
    path.write_bytes(data[:at] + junk + data[at:])
    try:
        wf = load(path, dict(YAML_NAMESPACE))
    except DefinitionError as err:
        assert err.location and err.location.startswith(str(path)), err
        if err.location != str(path):
            assert_located(err, (data[:at] + junk + data[at:]).decode(errors="replace"), origin=str(path), first_line=1)
    else:
        assert wf.name == "flow"


# =========================================================================== templates and conditions

# A grammar of valid conditions and templates, built with the text and the
# references it must parse to. Mutating its output gives near-valid expressions.
ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\x00": "\\0"}


def quoted(text: str) -> str:
    """``text`` as a single-quoted string literal of the expression language (its escapes only)."""
    return "'" + "".join(ESCAPES.get(c, c) for c in text) + "'"


_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True).filter(lambda w: w not in ROOTS)
_path_piece = st.one_of(
    _names.map(lambda n: (f".{n}", n)),
    st.sampled_from(["$parent", "$root", "$x"]).map(lambda n: (f".{n}", n)),
    st.integers(0, 99).map(lambda i: (f".{i}", i)),
    st.integers(-99, 99).map(lambda i: (f"[{i}]", i)),
    st.integers(-9, 9).map(lambda i: (f"[ {i} ]", i)),
    st.text(st.characters(codec="utf-8"), max_size=6).map(lambda k: (f"[{quoted(k)}]", k)),
    st.sampled_from(["my-key", "a b", "é", "1x", "it's", 'say "hi"', "back\\slash"]).map(lambda k: (f"[{quoted(k)}]", k)),
)


@st.composite
def references(draw: Any) -> tuple[str, tuple[str, tuple[Any, ...]]]:
    """A reference as written, and (root, path) it must parse to."""
    root = draw(st.sampled_from(ROOTS))
    pieces = draw(st.lists(_path_piece, min_size=1 if root == "secrets" else 0, max_size=4))
    if root == "secrets" and pieces and not isinstance(pieces[0][1], str):
        pieces[0] = (".TOKEN", "TOKEN")
    return root + "".join(text for text, _ in pieces), (root, tuple(value for _, value in pieces))


_literals = st.one_of(
    st.sampled_from(["true", "false", "null"]),
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(st.characters(codec="utf-8"), max_size=8).map(quoted),
)
_space = st.sampled_from(["", " ", "  ", "\t", "\n"])


@st.composite
def conditions(draw: Any, depth: int = 0) -> tuple[str, list[tuple[str, tuple[Any, ...]]]]:
    """A valid condition, and the (root, path) of each reference in it, in order."""
    kind = draw(st.sampled_from(["ref", "lit", "cmp", "cmp", "not", "and", "or", "paren"] if depth < 4 else ["ref", "lit", "cmp"]))
    if kind in ("ref", "lit", "cmp"):
        operands = []
        for _ in range(2 if kind == "cmp" else 1):
            if kind == "lit" or (kind == "cmp" and draw(st.booleans())):
                operands.append((draw(_literals), []))
            else:
                text, ref = draw(references())
                if draw(st.booleans()):
                    text = "{{" + draw(_space) + text + draw(_space) + "}}"
                operands.append((text, [ref]))
        if kind != "cmp":
            return operands[0]
        op = draw(st.sampled_from(["==", "!=", "<", "<=", ">", ">="]))
        (left, lrefs), (right, rrefs) = operands
        return f"{left}{draw(_space)}{op}{draw(_space)}{right}", lrefs + rrefs
    if kind in ("not", "paren"):
        text, refs = draw(conditions(depth + 1))
        if kind == "paren" or draw(st.booleans()):
            text = f"({draw(_space)}{text}{draw(_space)})"
        return (f"!{draw(_space)}{text}" if kind == "not" else text), refs
    # && and || bind looser than comparisons and ! , so operands need no parentheses.
    parts = [draw(conditions(depth + 1)) for _ in range(draw(st.integers(2, 3)))]
    op = draw(_space) + ("&&" if kind == "and" else "||") + draw(_space)
    return op.join(text for text, _ in parts), [r for _, refs in parts for r in refs]


@st.composite
def templates(draw: Any) -> tuple[str, list[tuple[str, tuple[Any, ...]]]]:
    """A valid template: text around ``{{ reference }}`` pieces, and their (root, path)."""
    plain = st.text(st.characters(codec="utf-8", exclude_characters="{"), max_size=8)
    out, refs = [draw(plain)], []
    for _ in range(draw(st.integers(0, 3))):
        text, ref = draw(references())
        out.append("{{" + draw(_space) + text + draw(_space) + "}}" + draw(plain))
        refs.append(ref)
    return "".join(out), refs


# Characters that matter to the grammar, for near-valid mutations.
GRAMMAR_CHARS = list("{}[]()'\"\\.$!&|=<>- \t\n0") + ["{{", "}}", "&&", "||", "==", "inputs", "tasks.", "é", "\x00"]


@st.composite
def near_valid(draw: Any, valid: st.SearchStrategy[tuple[str, Any]]) -> str:
    """A valid expression with one to three characters deleted, inserted, swapped or the text cut."""
    text = draw(valid)[0]
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["delete", "insert", "swap", "cut", "double"]))
        if op == "delete":
            text = text[:i] + text[i + 1 :]
        elif op == "insert":
            text = text[:i] + draw(st.sampled_from(GRAMMAR_CHARS)) + text[i:]
        elif op == "swap" and i + 1 < len(text):
            text = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
        elif op == "cut":
            text = text[:i]
        else:
            text = text[:i] + text[i:] + text[i:]
    return text


def ref_tuples(parsed: Condition | Template) -> list[tuple[str, tuple[Any, ...]]]:
    return [(r.root, r.path) for r in parsed.refs]


def where(column: int) -> str:
    """A location callable, as the YAML compiler passes one: the column within the user's line."""
    return f"flow.yaml line 7, column {column + 10}"


def assert_evaluation_error(err: EvaluationError) -> None:
    """A reference that is not there, or values that do not compare: said where, in the user's file."""
    assert err.location and err.location.startswith("flow.yaml line 7, column "), err
    assert err.message.strip() and err.expression


def assert_expression_error(err: ExpressionError, text: str) -> None:
    """The error names the column (within the text, or just past its end) and says how to fix it."""
    assert err.expression == text
    assert err.column is not None and 1 <= err.column <= len(text) + 1, (err.column, text)
    assert f"at column {err.column} of " in err.message
    assert err.location == where(err.column)
    assert err.hint, f"no fix in: {err}"


class Hostile:
    """A task output that fights back: properties that raise, no truth value, odd equality."""

    ok = 1

    @property
    def broken(self) -> Any:
        raise ValueError("this property always fails")

    def __bool__(self) -> bool:
        raise TypeError("no truth value")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("cannot compare")

    __hash__ = object.__hash__

    def __str__(self) -> str:
        raise RuntimeError("cannot print")

    def __repr__(self) -> str:
        return "Hostile()"


class Secrets:
    """A lazy secrets provider: only ``__getitem__``, KeyError when missing."""

    def __getitem__(self, name: str) -> str:
        if name == "TOKEN":
            return "s3cret"
        raise KeyError(name)


EXPRESSION_CONTEXT: dict[str, Any] = {
    "inputs": {"n": 3, "x": [1, "a", None, 2.5], "0": True, "my-key": {"é": "v"}, "nan": float("nan"), "big": 10**40,
               "hostile": Hostile(), "none": None, "nested": [[1, [2, [3]]]]},
    "tasks": {"t": {"output": {"a": 1.5, "list": [1, 2, 3], "obj": Hostile()}, "status": "succeeded"}},
    "forEach": {"item": "i", "index": 0, "$parent": {"item": [0], "index": 1}, "$root": {"item": "r", "index": 2}},
    "secrets": Secrets(),
    "output": {"rows": [{"id": 1}], "again": False},
}  # fmt: skip

# Paths into the context, to aim generated references at values that exist.
CONTEXT_REFS = [
    "inputs.n", "inputs.x", "inputs.x.1", "inputs.x[-1]", "inputs['my-key']['é']", "inputs.nan", "inputs.big",
    "inputs.hostile", "inputs.hostile.ok", "inputs.hostile.broken", "inputs.hostile.nope", "inputs.hostile._x",
    "inputs.none", "inputs.none.x", "inputs.nested.0.1.1.0", "inputs.0", "inputs.n.x", "tasks.t.output.obj",
    "tasks.t.output.obj.broken", "tasks.t.output.list.5", "tasks.t.status", "forEach.$parent.item.0",
    "forEach.$root.$parent", "secrets.TOKEN", "secrets.NOPE", "output.rows.0.id", "output.again",
]  # fmt: skip


@pytest.mark.timeout(limit(60))
@fuzz(200)
@given(conditions())
def test_generated_conditions_parse_to_their_references(generated):
    text, refs = generated
    condition = parse_condition(text, location=where)
    assert ref_tuples(condition) == refs
    try:
        assert condition.evaluate(EXPRESSION_CONTEXT) in (True, False)
    except EvaluationError as err:
        assert_evaluation_error(err)


@pytest.mark.timeout(limit(60))
@fuzz(200)
@given(templates())
def test_generated_templates_parse_to_their_references(generated):
    text, refs = generated
    template = parse_template(text, location=where)
    assert ref_tuples(template) == refs
    if not refs:
        assert template.render({}) == text
    try:
        template.render(EXPRESSION_CONTEXT)
    except EvaluationError as err:
        assert err.ref is not None
        assert_evaluation_error(err)


@pytest.mark.timeout(limit(60))
@fuzz(300)
@given(st.one_of(near_valid(conditions()), near_valid(templates())), st.sampled_from(["condition", "template"]))
def test_near_valid_expressions_parse_or_name_the_column(text, kind):
    parse = parse_condition if kind == "condition" else parse_template
    try:
        parsed = parse(text, location=where)
    except ExpressionError as err:
        assert_expression_error(err, text)
        return
    try:
        result = parsed.evaluate(EXPRESSION_CONTEXT) if kind == "condition" else parsed.render(EXPRESSION_CONTEXT)
    except EvaluationError as err:
        assert_evaluation_error(err)
    else:
        if kind == "condition":
            assert result in (True, False)


@pytest.mark.timeout(limit(60))
@fuzz(300)
@given(
    refs=st.tuples(*[st.sampled_from(CONTEXT_REFS)] * 3),
    compare=st.sampled_from(["==", "!=", "<", ">="]),
    join=st.sampled_from(["&&", "||"]),
    braces=st.booleans(),
    bang=st.sampled_from(["", "!"]),
)
def test_references_to_odd_values_evaluate_or_raise_evaluation_errors(refs, compare, join, braces, bang):
    a, b, c = ("{{" + r + "}}" if braces else r for r in refs)
    condition = parse_condition(f"{bang}{a} {compare} {b} {join} {bang}{c}", location=where)
    try:
        assert condition.evaluate(EXPRESSION_CONTEXT) in (True, False)
    except EvaluationError as err:
        assert_evaluation_error(err)
    template = parse_template("v={{" + refs[0] + "}} {{" + refs[1] + "}}", location=where)
    try:
        assert isinstance(template.render(EXPRESSION_CONTEXT), str)
    except EvaluationError as err:
        assert_evaluation_error(err)


# =========================================================================== the command line

OK_FLOW = """inputs: {n: {type: int, default: 2}}
tasks:
  - id: count
    run: shell
    argv: [echo, "{{inputs.n}}"]
"""
FAILING_FLOW = """tasks:
  - id: boom
    run: shell
    argv: ["false"]
"""
GATED_FLOW = """tasks:
  - id: count
    run: shell
    argv: [echo, "1"]
  - id: review
    needs: [count]
    approval: {message: "Ship it?", input: {note: str}}
"""


@pytest.fixture(scope="module")
def cli_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A folder with workflow files and a store holding a succeeded, a failed and a
    waiting run, made by the CLI itself. Each example works on a copy of it."""
    root = tmp_path_factory.mktemp("cli-world")
    (root / "ok.yaml").write_text(OK_FLOW)
    (root / "failing.yaml").write_text(FAILING_FLOW)
    (root / "gated.yaml").write_text(GATED_FLOW)
    (root / "broken.yaml").write_text("tasks:\n  - id: a\n    run: shel\n")
    (root / "garbage.ipynb").write_text("not a notebook")
    (root / "empty.ipynb").write_text("{}")
    (root / "notes.txt").write_text("hello")
    (root / "not-a-store").mkdir()
    (root / "not-a-store" / "notes.txt").write_text("hello")
    run_ids = []
    for flow, code in (("ok.yaml", 0), ("failing.yaml", 1), ("gated.yaml", 3)):
        result = run_cli(root, ["--store", "store", "run", flow, "--no-progress", "--json"])
        assert result[0] == code, result
        run_ids.append(json.loads(result[1])["run_id"])
    return {"root": root, "run_ids": run_ids}


def run_cli(cwd: Path, argv: list[str]) -> tuple[int, str, str]:
    """``kernelflow ARGV`` in-process, in ``cwd`` with its store in ``cwd/store``:
    (exit code, stdout, stderr).

    What the CLI changes in this process (environment, default store, import
    path, working directory) is put back, so examples do not leak into each other.
    """
    out, err = io.StringIO(), io.StringIO()
    environ, path, here = dict(os.environ), list(sys.path), os.getcwd()
    os.chdir(cwd)
    os.environ["KERNELFLOW_HOME"] = str(cwd / "store")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse: usage errors (2) and --help (0)
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(environ)
        sys.path[:] = path
        close_stores()
        use_store(None)
    return code, out.getvalue(), err.getvalue()


# Each command: its positionals (kinds of value) and its options (kind of value, or None for a flag).
# Not `scheduler start` (it serves until stopped) and not `doctor` (a second per call, no parsing of its own).
COMMANDS: dict[str, tuple[list[str], dict[str, str | None]]] = {
    "run": (["file"], {"-p": "pair", "--parameter": "pair", "-o": "file", "--output": "file", "--no-progress": None, "--json": None}),
    "validate": (["file", "file"], {"--json": None}),
    "history": ([], {"--workflow": "word", "--status": "status", "--since": "age", "--limit": "number", "--json": None}),
    "show": (["run"], {"--json": None}),
    "logs": (["run", "word"], {"-f": None, "--follow": None, "--interval": "number", "--json": None}),
    "stats": ([], {"--workflow": "word", "--since": "age", "--json": None}),
    "dlq": (["dlq", "run"], {"--workflow": "word", "-p": "pair", "--file": "file", "--reason": "word", "--json": None}),
    "resume": (["run"], {"--file": "file", "--notebook": "file", "-o": "file", "--no-progress": None, "--json": None}),
    "approve": (["run", "word"], {"-i": "pair", "--input": "pair", "--comment": "word", "--by": "word", "--resume": None}),
    "reject": (["run", "word"], {"--reason": "word", "--by": "word", "--resume": None}),
    "gc": ([], {"--older-than": "age", "--yes": None, "--json": None, "--no-progress": None, "--store": "file"}),
    "sql": (["sql"], {"--format": "format", "--json": None}),
    "metrics": ([], {"--json": None}),
    "plugins": ([], {"--json": None}),
    "scheduler status": ([], {"--json": None, "--store": "file"}),
    "scheduler list": ([], {"--json": None}),
    "scheduler history": ([], {"--schedule": "word", "--limit": "number", "--json": None}),
    "scheduler add": (["file"], {"--name": "word", "--cron": "cron", "--every": "age", "--timezone": "zone", "--overlap": "policy",
                                 "--missed": "policy", "--max-catch-up": "number", "-p": "pair", "--disabled": None}),
    "scheduler remove": (["word"], {}),
    "scheduler trigger": (["word", "file"], {"-p": "pair", "--wait": "number"}),
}  # fmt: skip
VALUES: dict[str, list[str]] = {
    "file": ["ok.yaml", "failing.yaml", "gated.yaml", "broken.yaml", "missing.yaml", "garbage.ipynb", "empty.ipynb",
             "missing.ipynb", "notes.txt", "not-a-store", "store", "new-store", ".", "/dev/null", "flow.yml", "out/x.ipynb"],
    "word": ["n", "x", "count", "review", "boom", "ok", "failing", "é", "🙂", "\t", "a\nb", "x" * 300, "-", "--", "", " "],
    "age": ["-5m", "0s", "2h", "3d", "2w", "90m", "soon", "2024-01-01", "2024-13-45", "2024-01-01T10:00", "1e9", "nan",
            "99999999999d", "9" * 40 + "s"],
    "number": ["-1", "0", "1", "0.01", "1e9", "nan", "inf", "-inf", "x", "99999999999999999999"],
    "status": ["running", "waiting", "succeeded", "failed", "nope"],
    "format": ["table", "csv", "json", "xml"],
    "dlq": ["list", "retry", "discard", "nope"],
    "cron": ["* * * * *", "0 6 * * mon", "61 * * * *", "@daily", "nope", ""],
    "zone": ["UTC", "Europe/Paris", "Mars/Olympus", ""],
    "policy": ["skip", "queue", "allow", "catch_up", "nope"],
    "sql": ["SELECT 1", "SELECT * FROM runs", "SELECT nope FROM runs", "SELECT * FROM nope", "DROP VIEW events",
            "SELECT 1; SELECT 2", "SELECT * FROM state_at('r-0', 3)", "", "SELECT '\\xff'::BLOB", "DESCRIBE events",
            "SELECT [1, 2] AS l, {'a': NULL} AS s", "SELECT list(payload) FROM events"],
}  # fmt: skip


@st.composite
def argvs(draw: Any, run_ids: list[str]) -> list[str]:
    """A command line: usually a known command with its positionals and options, values of
    the expected kind or of any kind; then a word or two dropped, repeated or added."""
    anything = st.one_of(*(st.sampled_from(v) for v in VALUES.values()), st.sampled_from(run_ids), st.text(max_size=12))
    pools = {**{kind: st.sampled_from(v) for kind, v in VALUES.items()}, "run": st.sampled_from(run_ids + ["r-0000000000"])}

    def value(kind: str) -> list[str]:
        if draw(st.integers(0, 5)) == 0:
            return [draw(anything)]
        if kind == "pair":
            return [draw(pools["word"]), draw(st.one_of(pools["number"], pools["word"]))]
        return [draw(pools[kind])]

    if draw(st.integers(0, 9)) == 0:  # any words at all
        return draw(st.lists(st.one_of(anything, st.sampled_from([c.split()[0] for c in COMMANDS])), max_size=6))
    command = draw(st.sampled_from(sorted(COMMANDS)))
    positionals, options = COMMANDS[command]
    words = [w for kind in positionals[: draw(st.integers(0, len(positionals)))] for w in value(kind)]
    for _ in range(draw(st.integers(0, 3)) if options else 0):
        option = draw(st.sampled_from(sorted(options)))
        words += [option] + ([] if options[option] is None else value(options[option]))  # type: ignore[arg-type]
    words = command.split() + words
    if draw(st.booleans()):
        words = ["--store", draw(st.sampled_from(["store", "store", "new-store", "not-a-store", "notes.txt", "/dev/null"]))] + words
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 3)) == 0 else 0):
        i = draw(st.integers(0, len(words)))
        op = draw(st.sampled_from(["drop", "repeat", "add"]))
        if op == "drop" and i < len(words):
            del words[i]
        elif op == "repeat" and i < len(words):
            words.insert(i, words[i])
        else:
            words.insert(i, draw(anything))
    return words


@pytest.mark.timeout(limit(120))
@fuzz(80, deadline_ms=20_000)
@given(data=st.data())
def test_command_lines_exit_with_a_code_and_a_message(cli_world, tmp_path_factory, data):
    argv = data.draw(argvs(cli_world["run_ids"]), label="argv")
    if "start" in argv:  # `scheduler start` serves until it is stopped
        return
    cwd = tmp_path_factory.mktemp("cli")
    shutil.copytree(cli_world["root"], cwd, dirs_exist_ok=True)
    code, out, err = run_cli(cwd, argv)
    event(f"exit {code}")
    assert "Traceback" not in err, err  # on stdout it may be a task's own (kernelflow logs)
    assert code in (0, 1, 2, 3), (code, err)
    if code == 2:  # bad usage: argparse's "usage: ... error: ..." or kernelflow's "error: ..."
        assert re.search(r"^(kernelflow[\w ]*: )?error: ", err, re.MULTILINE), err
    elif code != 0:  # refused, failed or suspended: an error line, or the documented outcome (a run summary, JSON)
        assert err.strip() or out.strip(), f"exit {code} without a word: {argv}"


# =========================================================================== the store's readers

SEGMENT_NAME = "deadhost-4242-1-00000000.jsonl"  # as left by a writer on another host


def numbers(n: int = 3) -> list[int]:
    return list(range(n))


def summary(numbers: list[int]) -> dict[str, Any]:
    return {"sum": sum(numbers), "é": [None, 1.5]}


@pytest.fixture(scope="module")
def store_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Real events of two runs of a real workflow: run A compacted into an events
    file of a template store, run B's as the bytes of the segment its writer left."""
    scratch = tmp_path_factory.mktemp("store-scratch")
    wf = kf.workflow("fuzzed", [numbers, summary])
    use_store(str(scratch / "source"))
    try:
        runs = [wf.run(n=n) for n in (3, 4)]
        source = kf.open_store()
        events = {name: source.read_run(run.run_id) for name, run in zip("AB", runs)}
    finally:
        close_stores()
        use_store(None)
    template = scratch / "template"
    with FolderStore(template) as writer:
        writer.append_many(events["A"])
    [parquet] = (template / "events").glob("*.parquet")
    other = FolderStore(scratch / "segment")
    other.append_many(events["B"])
    segment = other.segment_path.read_bytes()
    other.close()
    return {"template": template, "parquet": parquet.name, "segment": segment, "events": events,
            "run_ids": {name: run.run_id for name, run in zip("AB", runs)}}  # fmt: skip


@st.composite
def damage(draw: Any, data: bytes) -> tuple[bytes, tuple[int, int]]:
    """``data`` damaged at a chosen offset, and the byte range of ``data`` that was touched
    (``(k, k)`` for bytes inserted at ``k``; ``(k, len)`` for a file cut at ``k``)."""
    n = len(data)
    k = draw(st.integers(0, n))
    garbage = draw(st.one_of(
        st.binary(min_size=1, max_size=16),
        st.sampled_from([b"\n", b"\x00" * 8, b"{", b'{"seq": 1}\n', b"\xff\xfe", b"\n\n", b'"', b"PAR1", b"null\n"]),
    ))  # fmt: skip
    kind = draw(st.sampled_from(["truncate", "overwrite", "flip", "insert", "append", "zero", "delete", "field"]))
    if kind == "truncate":
        return data[:k], (k, n)
    if kind == "overwrite":
        return data[:k] + garbage + data[k + len(garbage) :], (k, min(n, k + len(garbage)))
    if kind == "flip":
        i = min(k, n - 1)
        return data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1 :], (i, i + 1)
    if kind == "insert":
        return data[:k] + garbage + data[k:], (k, k)
    if kind == "append":
        return data + garbage, (n, n)
    if kind == "zero":
        end = min(n, k + draw(st.integers(1, 4096)))
        return data[:k] + b"\x00" * (end - k) + data[end:], (k, end)
    if kind == "delete":
        end = min(n, k + draw(st.integers(1, 64)))
        return data[:k] + data[end:], (k, end)
    # A structured edit of a segment line: a field dropped or given a value of the wrong type.
    lines = data.split(b"\n")
    i = min(data.count(b"\n", 0, k), len(lines) - 1)
    try:
        record = json.loads(lines[i])
    except ValueError:  # not a JSON line (an events file is Parquet): flip a bit instead
        i = min(k, n - 1)
        return data[:i] + bytes([data[i] ^ 0x20]) + data[i + 1 :], (i, i + 1)
    field = draw(st.sampled_from(EVENT_FIELDS))
    if draw(st.booleans()):
        record.pop(field, None)
    else:
        record[field] = draw(st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(),
                                       st.text(max_size=5), st.lists(st.integers(), max_size=2), st.just({})))  # fmt: skip
    start = sum(len(line) + 1 for line in lines[:i])
    lines[i] = json.dumps(record).encode()
    return b"\n".join(lines), (start, start + len(data.split(b"\n")[i]) + 1)


def intact_lines(data: bytes, touched: tuple[int, int]) -> list[bytes]:
    """The complete lines of ``data`` that ``touched`` left alone (bytes inserted at
    ``k``, ``touched == (k, k)``, join the line that starts or goes on at ``k``)."""
    lo, hi = touched
    out, start = [], 0
    for line in data.split(b"\n")[:-1]:
        end = start + len(line) + 1
        if (not start <= lo < end) if lo == hi else (hi <= start or end <= lo):
            out.append(line)
        start = end
    return out


def read_everything(store: FolderStore, run_ids: dict[str, str]) -> dict[str, list[Any]]:
    """What a user reads: each run's events, and the views over every event."""
    for view in ("events", "runs", "task_attempts", "workflows", "dead_letters"):
        store.sql(f"SELECT * FROM {view}")
    store.sql("SELECT run_id, count(*), max(ts), any_value(payload->>'$.output') FROM events GROUP BY run_id")
    return {name: store.read_run(run_id) for name, run_id in run_ids.items()}


def is_json_line(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # not JSON, or not UTF-8
        return False


@pytest.mark.timeout(limit(120))
@fuzz(30, deadline_ms=20_000)
@given(data=st.data(), target=st.sampled_from(["segment", "segment", "events file"]))
def test_damaged_files_are_skipped_or_named(store_world, tmp_path_factory, data, target):
    """Damage one file of a store, then read it: every event the damage did not touch
    comes back, and anything reported or raised names the damaged file."""
    root = tmp_path_factory.mktemp("damaged") / "store"
    shutil.copytree(store_world["template"], root)
    segment = root / "segments" / SEGMENT_NAME
    segment.parent.mkdir(exist_ok=True)
    original = store_world["segment"] if target == "segment" else (root / "events" / store_world["parquet"]).read_bytes()
    damaged, touched = data.draw(damage(original), label="damage")
    victim = segment if target == "segment" else root / "events" / store_world["parquet"]
    segment.write_bytes(store_world["segment"])
    victim.write_bytes(damaged)
    events = store_world["events"]
    # What must come back: the other file's run whole, and the segment's untouched lines.
    if target == "segment":
        survivors = {line for line in intact_lines(original, touched)}
        must = {"A": events["A"], "B": [e for e in events["B"] if e.to_json_line()[:-1] in survivors]}
    else:
        must = {"B": events["B"]}

    def names_victim(text: str) -> bool:
        # Maintenance may have moved it to quarantine/ already (the background compactor
        # runs when the store is opened); then the message names it there.
        return str(victim) in text or str(root / "quarantine" / victim.name) in text

    def check(read: dict[str, list[Any]]) -> None:
        for name, expected in must.items():
            got = read[name]
            if name == "B" and target == "segment":
                assert all(e in got for e in expected), f"lost intact events of the segment: {[e.seq for e in expected if e not in got]}"
            else:
                assert got == expected, f"run {name} changed"

    lock = os.open(segment, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)  # its writer is alive: read it where it is, no compaction yet
    store = FolderStore(root)
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            try:
                check(read_everything(store, store_world["run_ids"]))
            except KernelflowError as err:
                assert names_victim(str(err)), f"the error does not name {victim}: {err}"
                event(f"{target}: {type(err).__name__}")
                return
        reported = [str(w.message) for w in record if issubclass(w.category, StoreDamageWarning)]
        assert all(names_victim(message) for message in reported), reported
        if target == "segment" and any(not is_json_line(line) for line in damaged.split(b"\n")[:-1] if line.strip()):
            assert reported, "a damaged segment line was skipped without a warning"
        event(f"{target}: {'reported' if reported else 'read'}")

        # Maintenance (the writer gone): what was readable is compacted, the damaged file set aside.
        os.close(lock)
        lock = -1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StoreDamageWarning)
            try:
                store.compact()
                check(read_everything(store, store_world["run_ids"]))
            except KernelflowError as err:
                assert names_victim(str(err)), err
                return
        if reported:
            kept = [p.read_bytes() for p in (root / "quarantine").glob(victim.stem + "*") if p.suffix != ".txt"]
            assert (victim.exists() and victim.read_bytes() == damaged) or damaged in kept, "a damaged file was deleted"
    finally:
        if lock >= 0:
            os.close(lock)
        store.close()
