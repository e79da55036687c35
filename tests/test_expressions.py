"""The template and condition language: syntax, resolution, evaluation, errors, fuzzing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernelflow.exceptions import DefinitionError, KernelflowError
from kernelflow.expressions import (
    ROOTS,
    Condition,
    EvaluationError,
    ExpressionError,
    Ref,
    Template,
    parse_condition,
    parse_template,
    refs_in_value,
    render_value,
)


@dataclass
class Parsed:
    rows: int
    kind: str


class Secrets:
    """A lazy provider: only __getitem__, KeyError when missing."""

    def __init__(self, values: dict[str, str]):
        self.values = values
        self.asked: list[str] = []

    def __getitem__(self, name: str) -> str:
        self.asked.append(name)
        return self.values[name]


def make_ctx() -> dict[str, Any]:
    outer = {"item": "outer-a", "index": 1}
    middle = {"item": {"name": "m"}, "index": 0, "$parent": outer, "$root": outer}
    return {
        "inputs": {"n": 5, "date": "2024-01-31", "mode": "dry", "force": False, "ids": [10, 20, 30], "none": None,
                   "ratio": 0.5, "nested": {"my-key": {"0": "str-zero"}, 0: "int-zero"}, "flag": True},
        "tasks": {
            "parse": {"output": {"ids": [1, 2, 3], "kind": None, "a": 1, "b": "x"}},
            "check": {"output": {"ok": True}},
            "obj": {"output": Parsed(rows=7, kind="csv")},
        },
        "forEach": {"item": "leaf", "index": 2, "$parent": middle, "$root": outer},
        "secrets": Secrets({"API_TOKEN": "s3cret"}),
        "output": {"rows": [{"id": 1}]},
    }


def syntax_error(parse, text, **kw) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        parse(text, **kw)
    return info.value


def eval_error(fn) -> EvaluationError:
    with pytest.raises(EvaluationError) as info:
        fn()
    return info.value


def cond(text: str, ctx: dict[str, Any] | None = None) -> bool:
    return parse_condition(text).evaluate(make_ctx() if ctx is None else ctx)


# --------------------------------------------------------------------------- public surface


def test_roots_and_error_classes():
    assert ROOTS == ("inputs", "tasks", "forEach", "secrets", "output")
    assert issubclass(ExpressionError, DefinitionError)
    assert issubclass(EvaluationError, KernelflowError)
    assert not issubclass(EvaluationError, DefinitionError)


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("text", "root", "path"),
    [
        ("inputs.date", "inputs", ("date",)),
        ("tasks.parse.output.ids", "tasks", ("parse", "output", "ids")),
        ("tasks.parse.output.ids.0", "tasks", ("parse", "output", "ids", 0)),
        ("tasks.parse.output.ids[12]", "tasks", ("parse", "output", "ids", 12)),
        ("tasks.parse.output.ids[-1]", "tasks", ("parse", "output", "ids", -1)),
        ("inputs['my-key']", "inputs", ("my-key",)),
        ('inputs["a b"].c', "inputs", ("a b", "c")),
        ("inputs[ 'k' ][ 3 ]", "inputs", ("k", 3)),
        ("forEach.item", "forEach", ("item",)),
        ("forEach.$parent.$parent.index", "forEach", ("$parent", "$parent", "index")),
        ("forEach.$root.item", "forEach", ("$root", "item")),
        ("secrets.API_TOKEN", "secrets", ("API_TOKEN",)),
        ("output.rows", "output", ("rows",)),
        ("inputs", "inputs", ()),
        ("inputs.données", "inputs", ("données",)),
    ],
)
def test_reference_syntax(text, root, path):
    template = parse_template("{{ " + text + " }}")
    assert template.refs == (Ref(root, path, text, 4),)
    assert template.is_single


def test_ref_columns_are_one_based_within_the_text():
    t = parse_template("ab{{inputs.x}} {{  tasks.t.output }}")
    assert [(r.text, r.column) for r in t.refs] == [("inputs.x", 5), ("tasks.t.output", 20)]
    c = parse_condition("inputs.n > 3 && {{tasks.check.output.ok}}")
    assert [(r.text, r.column) for r in c.refs] == [("inputs.n", 1), ("tasks.check.output.ok", 19)]


# --------------------------------------------------------------------------- templates


def test_text_without_braces_renders_to_itself():
    for text in ["", "plain", "a } b }} c {", "{ {inputs.x} }"]:
        t = parse_template(text)
        assert t.refs == () and not t.is_single
        assert t.render({}) == text


def test_single_reference_keeps_the_type():
    ctx = make_ctx()
    assert parse_template("{{tasks.parse.output.ids}}").render(ctx) == [1, 2, 3]
    assert parse_template("{{ inputs.n }}").render(ctx) == 5
    assert parse_template("{{inputs.none}}").render(ctx) is None
    assert parse_template("{{inputs.flag}}").render(ctx) is True
    obj = parse_template("{{tasks.obj.output}}").render(ctx)
    assert obj == Parsed(7, "csv")


def test_whitespace_outside_the_braces_makes_it_a_string():
    t = parse_template(" {{inputs.n}}")
    assert not t.is_single
    assert t.render(make_ctx()) == " 5"
    assert not parse_template("{{inputs.n}}{{inputs.n}}").is_single
    assert parse_template("{{inputs.n}}{{inputs.n}}").render(make_ctx()) == "55"


def test_values_inside_a_string():
    ctx = make_ctx()
    assert parse_template("https://x.org/{{inputs.date}}.json").render(ctx) == "https://x.org/2024-01-31.json"
    assert parse_template("[{{inputs.none}}]").render(ctx) == "[]"
    assert parse_template("{{inputs.flag}}/{{inputs.force}}").render(ctx) == "true/false"
    assert parse_template("ids={{inputs.ids}}").render(ctx) == "ids=[10,20,30]"
    assert parse_template("o={{output.rows}}").render(ctx) == 'o=[{"id":1}]'
    assert parse_template("r={{inputs.ratio}} n={{inputs.n}}").render(ctx) == "r=0.5 n=5"
    assert parse_template("{{forEach.index}}: {{forEach.item}}").render(ctx) == "2: leaf"
    ctx["inputs"]["u"] = {"ü": (1, None, True)}
    assert parse_template("-{{inputs.u}}").render(ctx) == '-{"ü":[1,null,true]}'


def test_foreach_parent_and_root_paths():
    ctx = make_ctx()
    assert parse_template("{{forEach.$parent.item.name}}").render(ctx) == "m"
    assert parse_template("{{forEach.$parent.$parent.item}}").render(ctx) == "outer-a"
    assert parse_template("{{forEach.$root.index}}").render(ctx) == 1
    err = eval_error(lambda: parse_template("{{forEach.$parent.$parent.$parent.item}}").render(ctx))
    assert "there is no enclosing forEach loop" in str(err)


def test_indexes_and_keys():
    ctx = make_ctx()
    assert parse_template("{{inputs.ids.0}}").render(ctx) == 10
    assert parse_template("{{inputs.ids[2]}}").render(ctx) == 30
    assert parse_template("{{inputs.ids[-1]}}").render(ctx) == 30
    assert parse_template("{{inputs.ids[-3]}}").render(ctx) == 10
    # An int on a mapping looks up the int key first, then its str form.
    assert parse_template("{{inputs.nested.0}}").render(ctx) == "int-zero"
    assert parse_template("{{inputs.nested['my-key'].0}}").render(ctx) == "str-zero"
    assert parse_template("{{output.rows.0.id}}").render(ctx) == 1


def test_attributes_of_objects():
    ctx = make_ctx()
    assert parse_template("{{tasks.obj.output.rows}}").render(ctx) == 7
    err = eval_error(lambda: parse_template("{{tasks.obj.output.size}}").render(ctx))
    assert str(err) == "{{tasks.obj.output.size}}: the output of task 'obj' has no field 'size' (fields: rows, kind)"
    err = eval_error(lambda: parse_template("{{tasks.obj.output.__class__}}").render(ctx))
    assert "'__class__' is private" in str(err)


def test_secrets_resolve_lazily_through_getitem():
    ctx = make_ctx()
    assert parse_template("Bearer {{secrets.API_TOKEN}}").render(ctx) == "Bearer s3cret"
    assert ctx["secrets"].asked == ["API_TOKEN"]
    err = eval_error(lambda: parse_template("{{secrets.MISSING}}").render(ctx))
    assert str(err) == "{{secrets.MISSING}}: no secrets provider has a secret named 'MISSING'"
    assert err.ref == "secrets.MISSING"
    assert "s3cret" not in str(err)
    err = eval_error(lambda: parse_template("{{secrets.X}}").render({}))
    assert "no secrets provider is configured" in str(err)


def test_missing_values_say_what_exists():
    ctx = make_ctx()
    cases = {
        "{{tasks.parse.output.kinds}}": "the output of task 'parse' has no field 'kinds' (fields: ids, kind, a, b)",
        "{{tasks.nope.output}}": "there is no task 'nope' here (tasks: parse, check, obj)",
        "{{inputs.dat}}": "the workflow has no input 'dat' (inputs: n, date, mode, force, ids, none, ratio, nested, flag)",
        "{{tasks.parse.outptu}}": "tasks.parse has no field 'outptu' (fields: output)",
        "{{output.row}}": "the output has no field 'row' (fields: rows)",
        "{{inputs.ids.3}}": "index 3 is out of range: inputs.ids has 3 item(s)",
        "{{inputs.ids[-4]}}": "index -4 is out of range: inputs.ids has 3 item(s)",
        "{{inputs.ids.first}}": "inputs.ids is a list; use an index like .0, not 'first'",
        "{{inputs.none.x}}": "inputs.none is null, so it has no field 'x'",
        "{{inputs.date.year}}": "inputs.date is a str, so it has no field 'year'",
        "{{tasks.obj.output.0}}": "tasks.obj.output is a Parsed, it cannot be indexed with 0",
        "{{inputs.nested['my-key'].zz}}": "inputs.nested['my-key'] has no field 'zz' (fields: 0)",
    }
    for text, message in cases.items():
        err = eval_error(lambda text=text: parse_template(text).render(ctx))
        assert str(err) == f"{text}: {message}", text
        assert err.expression == text
        assert err.ref == text[2:-2]


def test_missing_roots():
    messages = {
        "inputs": "no workflow inputs are available here",
        "tasks": "no task outputs are available here",
        "forEach": "this step is not inside a forEach",
        "output": "there is no step output here",
    }
    for root, message in messages.items():
        err = eval_error(lambda root=root: parse_template("x {{" + root + ".a}}").render({}))
        assert message in str(err)
        assert err.expression == "x {{" + root + ".a}}"


def test_empty_mapping_says_so():
    err = eval_error(lambda: parse_template("{{inputs.x}}").render({"inputs": {}}))
    assert str(err) == "{{inputs.x}}: the workflow has no input 'x' (it is empty)"


def test_evaluation_errors_carry_the_location():
    t = parse_template("a {{inputs.x}}", location=lambda col: f"flow.yaml line 3, column {10 + col}")
    err = eval_error(lambda: t.render({"inputs": {}}))
    assert str(err).startswith("flow.yaml line 3, column 15: {{inputs.x}}: the workflow has no input 'x'")
    assert err.location == "flow.yaml line 3, column 15"


def test_parsing_is_cached():
    assert parse_template("{{inputs.cached}}") is parse_template("{{inputs.cached}}")
    assert parse_condition("inputs.cached > 1") is parse_condition("inputs.cached > 1")
    located = parse_template("{{inputs.cached}}", location="cell line 2")
    assert located == parse_template("{{inputs.cached}}") and located.location == "cell line 2"


# --------------------------------------------------------------------------- render_value / refs_in_value


def test_render_value_walks_nested_containers():
    value = {
        "url": "https://x/{{inputs.date}}",
        "{{inputs.n}}": ["{{inputs.ids}}", ("n={{inputs.n}}", 3, None), {"deep": ["{{forEach.$parent.item}}"]}],
        "plain": 1.5,
        "flag": False,
    }
    rendered = render_value(value, make_ctx())
    assert rendered == {
        "url": "https://x/2024-01-31",
        "{{inputs.n}}": [[10, 20, 30], ("n=5", 3, None), {"deep": [{"name": "m"}]}],
        "plain": 1.5,
        "flag": False,
    }
    assert isinstance(rendered["{{inputs.n}}"][1], tuple)
    assert value["url"] == "https://x/{{inputs.date}}"  # the input is not modified
    assert render_value(42, {}) == 42
    assert render_value("{{inputs.n}}", make_ctx()) == 5


def test_refs_in_value():
    refs = refs_in_value({"a": ["{{inputs.n}}", {"b": "{{inputs.x}} {{tasks.t.output}}"}], "{{inputs.key}}": 3,
                          "c": ("{{forEach.item}}",), "d": 7})
    assert [r.text for r in refs] == ["inputs.n", "inputs.x", "tasks.t.output", "forEach.item"]
    assert refs_in_value("no refs") == ()
    assert refs_in_value(None) == ()


def test_refs_in_value_raises_for_bad_syntax_with_location():
    err = syntax_error(lambda v, **kw: refs_in_value(v, **kw), {"a": ["{{input.x}}"]}, location="flow.yaml line 9")
    assert str(err).startswith("flow.yaml line 9: unknown reference root 'input' (did you mean 'inputs'?)")
    err = syntax_error(lambda v, **kw: render_value(v, {}, **kw), ["{{ }}"])
    assert "empty '{{ }}'" in str(err)


# --------------------------------------------------------------------------- conditions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # comparisons at their boundaries, both outcomes
        ("{{inputs.n}} > 4", True), ("{{inputs.n}} > 5", False),
        ("{{inputs.n}} >= 5", True), ("{{inputs.n}} >= 6", False),
        ("{{inputs.n}} < 6", True), ("{{inputs.n}} < 5", False),
        ("{{inputs.n}} <= 5", True), ("{{inputs.n}} <= 4", False),
        ("inputs.n == 5", True), ("inputs.n == 4", False),
        ("inputs.n != 4", True), ("inputs.n != 5", False),
        ("inputs.ratio > 0.49", True), ("inputs.ratio < 0.5", False),
        ("-1.5 < -1", True), ("-1 < -1.5", False), ("1e3 == 1000", True),
        ("'abc' < 'abd'", True), ("'b' < 'a'", False), ("inputs.date >= '2024-01-01'", True),
        # equality across types
        ("1 == 1.0", True), ('"1" == 1', False), ("inputs.none == null", True), ("null != 0", True),
        ("tasks.parse.output.kind != null", False), ("true == 1", False), ("false == 0", False),
        ("true == true", True), ("true != false", True), ("inputs.ids == inputs.ids", True),
        ("inputs.mode == 'dry'", True), ("inputs.mode == \"dry\"", True), ("'it\\'s' == \"it's\"", True),
        ("'a\\\\b' == \"a\\\\b\"", True), ("'\\n' != 'n'", True),
        # logic, both branches
        ("true && true", True), ("true && false", False), ("false && true", False),
        ("false || true", True), ("true || false", True), ("false || false", False),
        ("!true", False), ("!false", True), ("!!true", True),
        # precedence: ! binds looser than comparisons, && tighter than ||
        ("!{{inputs.mode}} == 'wet'", True), ("!(inputs.mode == 'dry')", False),
        ("true || false && false", True), ("(true || false) && false", False),
        ("!false && false", False), ("!(false && false)", True),
        # truthiness of lone operands
        ("inputs.force", False), ("inputs.flag", True), ("inputs.ids", True), ("inputs.none", False),
        ("0", False), ("1", True), ("''", False), ("'x'", True), ("null", False), ("tasks.obj.output", True),
        # the examples from the docs
        ("{{inputs.n}} > 3 && {{tasks.check.output.ok}} == true", True),
        ("!({{inputs.mode}} == 'dry')", False),
        ("tasks.parse.output.kind != null || inputs.force", False),
    ],
)
def test_condition_values(text, expected):
    result = cond(text)
    assert result is expected


def test_short_circuit_skips_missing_references():
    assert cond("false && inputs.missing") is False
    assert cond("true || inputs.missing.deep > 3") is True
    assert cond("inputs.force && inputs.missing == 1") is False
    with pytest.raises(EvaluationError):
        cond("true && inputs.missing")
    with pytest.raises(EvaluationError):
        cond("false || inputs.missing")


def test_ordering_needs_two_numbers_or_two_strings():
    cases = {
        "'abc' < 3": "'abc' < 3: cannot compare str 'abc' with int 3 using <",
        "inputs.flag > 0": "inputs.flag > 0: cannot compare bool true with int 0 using >",
        "null <= 1": "null <= 1: cannot compare null with int 1 using <=",
        "inputs.ids >= 1": "inputs.ids >= 1: cannot compare list [10, 20, 30] with int 1 using >=",
    }
    for text, message in cases.items():
        err = eval_error(lambda text=text: cond(text))
        assert str(err) == message
        assert err.expression == text and err.ref is None


def test_comparison_errors_quote_the_comparison_in_a_longer_condition():
    err = eval_error(lambda: cond("inputs.n > 1 && inputs.mode > 2"))
    assert str(err) == "inputs.mode > 2: cannot compare str 'dry' with int 2 using >"
    assert err.expression == "inputs.n > 1 && inputs.mode > 2"


def test_values_that_refuse_truth_or_equality():
    class Frame:
        def __bool__(self):
            raise ValueError("ambiguous")

        def __eq__(self, other):
            return self

    ctx = {"tasks": {"t": {"output": Frame()}}}
    err = eval_error(lambda: cond("tasks.t.output", ctx))
    assert str(err) == "tasks.t.output: cannot use a Frame as true or false"
    err = eval_error(lambda: cond("tasks.t.output == 1", ctx))
    assert str(err) == "tasks.t.output == 1: cannot compare a Frame with int 1 using =="


def test_missing_reference_in_condition():
    err = eval_error(lambda: cond("{{tasks.parse.output.kinds}} == 'csv'"))
    assert str(err).startswith("{{tasks.parse.output.kinds}}: the output of task 'parse' has no field 'kinds'")
    assert err.ref == "tasks.parse.output.kinds"
    assert err.expression == "{{tasks.parse.output.kinds}} == 'csv'"


def test_condition_evaluates_to_real_bools():
    c = parse_condition("inputs.ids")
    assert isinstance(c, Condition)
    assert c.evaluate(make_ctx()) is True
    assert isinstance(parse_template("x"), Template)


# --------------------------------------------------------------------------- syntax errors


def test_error_shape_location_column_hint():
    err = syntax_error(parse_template, "https://x/{{input.date}}", location="cell line 4")
    assert err.message == (
        "unknown reference root 'input' (did you mean 'inputs'?) at column 13 of template 'https://x/{{input.date}}'"
    )
    assert err.location == "cell line 4" and err.column == 13
    assert err.expression == "https://x/{{input.date}}"
    assert str(err) == f"cell line 4: {err.message}\n  fix: references start with one of: inputs, tasks, forEach, secrets, output"


def test_location_callable_gets_the_column():
    seen = []

    def where(column: int) -> str:
        seen.append(column)
        return f"flow.yaml line 7, column {11 + column}"

    err = syntax_error(parse_condition, "{{inputs.n}} = 3", location=where)
    assert seen == [14]
    assert str(err).startswith("flow.yaml line 7, column 25: '=' is not an operator (did you mean '=='?) at column 14")
    assert err.hint == "use '=='"


@pytest.mark.parametrize(
    ("text", "column", "message", "hint"),
    [
        ("{{input.x}}", 3, "unknown reference root 'input' (did you mean 'inputs'?)", "references start with"),
        ("{{task.a.output}}", 3, "unknown reference root 'task' (did you mean 'tasks'?)", None),
        ("{{foreach.item}}", 3, "unknown reference root 'foreach' (did you mean 'forEach'?)", None),
        ("{{zebra.x}}", 3, "unknown reference root 'zebra' at", None),
        ("a {{inputs.x", 3, "unclosed '{{'", "close the reference with }}"),
        ("{{inputs['}}", 10, "unterminated string", None),
        ("{{inputs['}}']", 1, "unclosed '{{'", None),
        ("x {{  }} y", 3, "empty '{{ }}'", "put a reference inside"),
        ("{{}}", 1, "empty '{{ }}'", None),
        ("{{inputs.}}", 10, "expected a name or an index after '.'", "brackets"),
        ("{{inputs.0a}}", 10, "expected a name or an index after '.' (found '0a')", None),
        ("{{inputs..x}}", 10, "expected a name or an index after '.'", None),
        ("{{forEach.$}}", 11, "expected a name or an index after '.'", None),
        ("{{inputs[x]}}", 10, "expected an index like [0] or a quoted key like ['my-key'] after '['", None),
        ("{{inputs[0}}", 11, "expected ']'", None),
        ("{{inputs.my-key}}", 12, "expected '}}' after 'inputs.my', found '-'", "inputs['my-key']"),
        ("{{inputs.x == 1}}", 12, "expected '}}' after 'inputs.x', found '=='", "one reference"),
        ("{{secrets}}", 3, "a secret reference needs a name", "secrets.NAME"),
        ("{{ 'text' }}", 4, "expected a reference like inputs.name, found \"'\"", None),
        ("{{inputs['a\\q']}}", 12, "unknown escape '\\\\q' in a string", None),
    ],
)
def test_template_syntax_errors(text, column, message, hint):
    err = syntax_error(parse_template, text)
    assert err.column == column, str(err)
    assert message in err.message
    assert f"at column {column} of template {text!r}" in err.message
    if hint:
        assert hint in (err.hint or "")


@pytest.mark.parametrize(
    ("text", "column", "message", "hint"),
    [
        ("inputs.n = 3", 10, "'=' is not an operator (did you mean '=='?)", "'=='"),
        ("inputs.n === 3", 10, "'===' is not an operator (did you mean '=='?)", None),
        ("inputs.n !== 3", 10, "'!==' is not an operator (did you mean '!='?)", None),
        ("inputs.n <> 3", 10, "'<>' is not an operator (did you mean '!='?)", None),
        ("inputs.n => 3", 10, "'=>' is not an operator (did you mean '>='?)", None),
        ("inputs.a & inputs.b", 10, "'&' is not an operator (did you mean '&&'?)", None),
        ("inputs.a | inputs.b", 10, "'|' is not an operator (did you mean '||'?)", None),
        ("inputs.a and inputs.b", 10, "'and' is not an operator (did you mean '&&'?)", "'&&'"),
        ("inputs.a OR inputs.b", 10, "'OR' is not an operator (did you mean '||'?)", None),
        ("not inputs.a", 1, "'not' is not an operator (did you mean '!'?)", None),
        ("inputs.a == True", 13, "'True' is not a value (did you mean 'true'?)", None),
        ("inputs.a == None", 13, "'None' is not a value (did you mean 'null'?)", None),
        ("input.a", 1, "unknown reference root 'input' (did you mean 'inputs'?)", None),
        ("{{input.a}} > 1", 3, "unknown reference root 'input' (did you mean 'inputs'?)", None),
        ("inputs.mode == dry", 16, "'dry' is not a value or a reference", "quote text as a string ('dry')"),
        ("inputs.mode == 'dry", 16, "unterminated string", "end the string with '"),
        ('inputs.mode == "dry', 16, "unterminated string", 'end the string with "'),
        ("'a\\", 1, "unterminated string", None),
        ("inputs.a < inputs.b < inputs.c", 21, "comparisons cannot be chained", "&&"),
        ("1 == 1 == 1", 8, "comparisons cannot be chained", None),
        ("inputs.a inputs.b", 10, "expected an operator, found 'inputs.b'", "join conditions with && or ||"),
        ("(inputs.a", 1, "'(' is never closed", "add the missing ')'"),
        ("(inputs.a inputs.b)", 11, "expected an operator or ')', found 'inputs.b'", None),
        ("inputs.a)", 9, "unmatched ')'", None),
        ("()", 2, "expected a value, found ')'", None),
        ("inputs.a &&", 12, "the condition ends where a value was expected (after '&&')", None),
        ("inputs.a == ", 13, "the condition ends where a value was expected (after '==')", None),
        ("&& inputs.a", 1, "expected a value, found '&&'", None),
        ("", 1, "the condition is empty", None),
        ("   ", 1, "the condition is empty", None),
        ("inputs.n + 1 > 3", 10, "unexpected character '+'", "no arithmetic"),
        ("inputs.my-key == 1", 10, "unexpected character '-'", "inputs['my-key']"),
        ("inputs.n > - 3", 12, "unexpected character '-'", None),
        ("3abc", 1, "malformed number '3abc'", None),
        ("1.2.3 > 1", 1, "malformed number '1.2.3'", None),
        ("}} == 1", 1, "unexpected '}}' without an opening '{{'", None),
        ("{{inputs.a}", 1, "unclosed '{{'", None),
        ("$x", 1, "unexpected character '$'", None),
        ("inputs.x == 'a\\z'", 15, "unknown escape '\\\\z' in a string", None),
    ],
)
def test_condition_syntax_errors(text, column, message, hint):
    err = syntax_error(parse_condition, text)
    assert err.column == column, str(err)
    assert message in err.message
    assert f"at column {column} of condition {text!r}" in err.message
    if hint:
        assert hint in (err.hint or "")


def test_non_text_input():
    for parse in (parse_template, parse_condition):
        err = syntax_error(parse, 3)
        assert str(err).startswith("expected text, got int 3")
        assert syntax_error(parse, None).message == "expected text, got None"
        assert syntax_error(parse, b"x", location="cell line 1").location == "cell line 1"


def test_long_expressions_are_quoted_as_an_excerpt():
    text = "inputs.a == 1 && " * 20 + "inputs.b = 2"
    err = syntax_error(parse_condition, text)
    assert err.column == len(text) - 2
    assert "inputs.b = 2'" in err.message and "…" in err.message
    assert len(err.message) < 200


def test_nesting_limit_is_64():
    assert cond("(" * 64 + "true" + ")" * 64) is True
    assert cond("!" * 64 + "true") is True
    assert cond("!(" * 32 + "false" + ")" * 32) is False  # an even number of !
    err = syntax_error(parse_condition, "(" * 65 + "true" + ")" * 65)
    assert err.column == 65 and "nests deeper than 64 levels" in err.message
    err = syntax_error(parse_condition, "!" * 65 + "true")
    assert err.column == 65
    # siblings do not add up: depth is nesting, not count
    assert cond(" && ".join(["(" * 60 + "true" + ")" * 60] * 5)) is True


def test_huge_inputs_neither_recurse_nor_hang():
    for text in ["(" * 100_000, "!" * 100_000, "{{" * 50_000, "'" + "\\" * 100_001, "1" * 5000]:
        with pytest.raises(ExpressionError):
            parse_condition(text)
    long_and = " && ".join(["true"] * 20_000)
    assert cond(long_and) is True
    assert parse_template("{{inputs.n}}" * 5000).render(make_ctx()) == "5" * 5000


# --------------------------------------------------------------------------- fuzzing

FRAGMENTS = [
    "{{", "}}", "{", "}", "inputs", "tasks", "forEach", "secrets", "output", "input", ".", "x", "0", "$parent",
    "[", "]", "'", '"', "\\", "(", ")", "!", "&&", "||", "&", "|", "==", "=", "!=", "<", "<=", ">", ">=", "-",
    "1", "1.5", "-2", "1e3", "true", "false", "null", "and", "$", "['k-1']", "[0]", "[-1]", ".0", "e", " ", "\n",
    "tasks.t.output.a", "forEach.$parent.item", "secrets.X", "inputs.n", "'str'", "é", "\x00", "9" * 30,
]

grammar_text = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)
spaced_text = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map(" ".join)
any_text = st.one_of(st.text(max_size=200), grammar_text, spaced_text)

FUZZ_CTX = {
    "inputs": {"n": 3, "x": [1, "a", None], "0": True},
    "tasks": {"t": {"output": {"a": 1.5, "x": {"k-1": "v"}}}},
    "forEach": {"item": "i", "index": 0, "$parent": {"item": [0], "index": 1}},
    "secrets": Secrets({"X": "s"}),
    "output": None,
}


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_parse_template_raises_only_expression_errors(text):
    try:
        template = parse_template(text)
    except ExpressionError as err:
        assert err.column is not None and 1 <= err.column <= len(text) + 1
        return
    try:
        value = template.render(FUZZ_CTX)
    except EvaluationError:
        return
    if not template.refs:
        assert value == text


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_parse_condition_raises_only_expression_errors(text):
    try:
        condition = parse_condition(text)
    except ExpressionError as err:
        assert err.column is not None and 1 <= err.column <= len(text) + 1
        return
    try:
        assert condition.evaluate(FUZZ_CTX) in (True, False)
    except EvaluationError:
        pass


def bool_trees(max_leaves: int = 12):
    """Conditions over true/false as (text, Python value), to check precedence against Python's."""
    leaves = st.sampled_from([("true", True), ("false", False), ("1 < 2", True), ("'a' == 'b'", False)])

    def extend(children):
        return st.one_of(
            st.tuples(children, children).map(lambda p: (f"{p[0][0]} && {p[1][0]}", p[0][1] and p[1][1])),
            st.tuples(children, children).map(lambda p: (f"{p[0][0]} || {p[1][0]}", p[0][1] or p[1][1])),
            children.map(lambda c: (f"!({c[0]})", not c[1])),
            children.map(lambda c: (f"({c[0]})", c[1])),
        )

    return st.recursive(leaves, extend, max_leaves=max_leaves)


@settings(max_examples=300, deadline=None)
@given(bool_trees())
def test_logic_agrees_with_python(tree):
    text, _ = tree
    # Python gives "and" precedence over "or" and both lower than "not", same as here.
    python = re.sub(r"!", " not ", text.replace("&&", " and ").replace("||", " or "))
    python = python.replace("true", "True").replace("false", "False")
    assert cond(text, {}) is bool(eval(python))  # our own generated literals, nothing else


# --------------------------------------------------------------------------- found by fuzzing (tests/test_fuzz.py)


class Fragile:
    """A task output whose property fails and whose text form cannot be made."""

    @property
    def rows(self) -> int:
        raise ValueError("the connection is closed")

    def __str__(self) -> str:
        raise RuntimeError("cannot print")

    def __repr__(self) -> str:
        return "Fragile()"


def test_a_property_that_raises_is_an_evaluation_error_at_the_reference():
    # Only AttributeError was caught: the ValueError escaped render() and evaluate().
    ctx = {"tasks": {"t": {"output": Fragile()}}}
    located = parse_template("n={{tasks.t.output.rows}}", location=lambda col: f"flow.yaml line 4, column {col}")
    err = eval_error(lambda: located.render(ctx))
    assert str(err) == (
        "flow.yaml line 4, column 5: {{tasks.t.output.rows}}: reading 'rows' of tasks.t.output (a Fragile) "
        "raised ValueError: the connection is closed"
    )
    assert err.ref == "tasks.t.output.rows" and isinstance(err.__cause__, ValueError)
    err = eval_error(lambda: parse_condition("tasks.t.output.rows > 3").evaluate(ctx))
    assert "raised ValueError: the connection is closed" in str(err)


def test_a_value_that_cannot_be_written_as_text_is_an_evaluation_error():
    # _to_text(value) called str(), whose RuntimeError escaped render().
    ctx = {"inputs": {"f": Fragile(), "d": {"k": Fragile()}}}
    err = eval_error(lambda: parse_template("v={{inputs.f}}").render(ctx))
    assert str(err) == "{{inputs.f}}: cannot write a Fragile into the text: RuntimeError: cannot print"
    assert err.ref == "inputs.f" and err.expression == "v={{inputs.f}}"
    err = eval_error(lambda: parse_template("v={{inputs.d}}", location="cell line 3").render(ctx))
    assert str(err).startswith("cell line 3: {{inputs.d}}: cannot write dict {'k': Fragile()} into the text")
    assert parse_template("{{inputs.f}}").render(ctx) is ctx["inputs"]["f"]  # a single reference is the value itself


# --------------------------------------------------------------------------- exact messages and hints
# Each syntax error's message, column and hint as the user reads them (the
# tests above check most of them by substring only).

SYNTAX_ERRORS = [
    # templates
    ("template", "{{inputs.x", 1, "unclosed '{{' at column 1 of template '{{inputs.x'", "close the reference with }}, like {{inputs.name}}"),
    # a "}}" before the "{{" does not close it
    ("template", "a }} b {{inputs.x y", 8, "unclosed '{{' at column 8 of template 'a }} b {{inputs.x y'", "close the reference with }}, like {{inputs.name}}"),
    # the only "}}" is inside a quoted key
    ("template", "{{inputs['a}}']", 1, "unclosed '{{' at column 1 of template \"{{inputs['a}}']\"", "close the reference with }}, like {{inputs.name}}"),
    ("template", "{{ }}", 1, "empty '{{ }}' at column 1 of template '{{ }}'", "put a reference inside, like {{inputs.name}}"),
    ("template", "{{inputs['a}}'", 15, "expected ']' at column 15 of template \"{{inputs['a}}'\"", "close the bracket with ]"),
    ("template", "{{inputs[0}}", 11, "expected ']' at column 11 of template '{{inputs[0}}'", "close the bracket with ]"),
    ("template", "{{inputs.a+b}}", 11, "expected '}}' after 'inputs.a', found '+' at column 11 of template '{{inputs.a+b}}'",
     "a {{ }} holds one reference, like {{tasks.parse.output.ids}}"),
    # a dash after a space is not part of a key
    ("template", "{{inputs.a -b}}", 12, "expected '}}' after 'inputs.a', found '-' at column 12 of template '{{inputs.a -b}}'",
     "a {{ }} holds one reference, like {{tasks.parse.output.ids}}"),
    ("template", "{{inputs.maX-b}}", 13, "expected '}}' after 'inputs.maX', found '-' at column 13 of template '{{inputs.maX-b}}'",
     "keys with dashes need brackets and quotes: inputs['maX-b']"),
    ("template", "{{inputs.a.my_long-key}}", 19,
     "expected '}}' after 'inputs.a.my_long', found '-' at column 19 of template '{{inputs.a.my_long-key}}'",
     "keys with dashes need brackets and quotes: inputs.a['my_long-key']"),
    ("template", "{{inputs.abc-d}}", 13, "expected '}}' after 'inputs.abc', found '-' at column 13 of template '{{inputs.abc-d}}'",
     "keys with dashes need brackets and quotes: inputs['abc-d']"),
    ("template", "{{inputs.ab-cde}}", 12, "expected '}}' after 'inputs.ab', found '-' at column 12 of template '{{inputs.ab-cde}}'",
     "keys with dashes need brackets and quotes: inputs['ab-cde']"),
    ("template", "{{inputs.ab-cd}}", 12, "expected '}}' after 'inputs.ab', found '-' at column 12 of template '{{inputs.ab-cd}}'",
     "keys with dashes need brackets and quotes: inputs['ab-cd']"),
    ("template", "{{1}}", 3, "expected a reference like inputs.name, found '1' at column 3 of template '{{1}}'",
     "references start with one of: inputs, tasks, forEach, secrets, output"),
    ("template", "{{inputs.}}", 10, "expected a name or an index after '.' at column 10 of template '{{inputs.}}'",
     "names are letters, digits and _ (not starting with a digit), optionally after $; indexes are numbers; "
     "other keys go in brackets: ['my-key']"),
    ("template", "{{inputs.9x}}", 10, "expected a name or an index after '.' (found '9x') at column 10 of template '{{inputs.9x}}'",
     "names are letters, digits and _ (not starting with a digit), optionally after $; indexes are numbers; "
     "other keys go in brackets: ['my-key']"),
    ("template", "{{inputs[12345678901234567890]}}", 10,  # 20 digits: one too many
     "expected an index like [0] or a quoted key like ['my-key'] after '[' at column 10 of template '{{inputs[12345678901234567890]}}'",
     "write an integer or a quoted key inside the brackets"),
    ("template", "{{inputs[X]}}", 10,
     "expected an index like [0] or a quoted key like ['my-key'] after '[' at column 10 of template '{{inputs[X]}}'",
     "write an integer or a quoted key inside the brackets"),
    ("template", "{{secrets}}", 3, "a secret reference needs a name at column 3 of template '{{secrets}}'",
     "write secrets.NAME, like {{secrets.API_TOKEN}}"),
    ("template", "{{inputs['a\\q']}}", 12, "unknown escape '\\\\q' in a string at column 12 of template \"{{inputs['a\\\\q']}}\"",
     "the escapes are \\\\ \\' \\\" \\n \\t \\r \\0; write \\\\ for a backslash"),
    ("template", "{{secret.x}}", 3, "unknown reference root 'secret' (did you mean 'secrets'?) at column 3 of template '{{secret.x}}'",
     "references start with one of: inputs, tasks, forEach, secrets, output"),
    # conditions
    ("condition", "inputs[0", 9, "expected ']' at column 9 of condition 'inputs[0'", "close the bracket with ]"),
    ("condition", "inputs.my-key", 10, "unexpected character '-' at column 10 of condition 'inputs.my-key'",
     "keys with dashes need brackets and quotes: inputs['my-key']"),
    ("condition", "Xyz == 1", 1, "'Xyz' is not a value or a reference at column 1 of condition 'Xyz == 1'",
     "quote text as a string ('Xyz'); references start with one of: inputs, tasks, forEach, secrets, output"),
    ("condition", "zzz", 1, "'zzz' is not a value or a reference at column 1 of condition 'zzz'",
     "quote text as a string ('zzz'); references start with one of: inputs, tasks, forEach, secrets, output"),
    ("condition", "inptus", 1, "'inptus' is not a value or a reference (did you mean 'inputs'?) at column 1 of condition 'inptus'",
     "quote text as a string ('inptus'); references start with one of: inputs, tasks, forEach, secrets, output"),
    ("condition", "inptus.x", 1, "unknown reference root 'inptus' (did you mean 'inputs'?) at column 1 of condition 'inptus.x'",
     "references start with one of: inputs, tasks, forEach, secrets, output"),
    ("condition", "1 }}", 3, "unexpected '}}' without an opening '{{' at column 3 of condition '1 }}'",
     "write references as {{inputs.name}} or inputs.name"),
    ("condition", "1 - 2", 3, "unexpected character '-' at column 3 of condition '1 - 2'",
     "conditions use == != < <= > >= && || ! and parentheses; there is no arithmetic"),
    ("condition", "False", 1, "'False' is not a value (did you mean 'false'?) at column 1 of condition 'False'", "the literals are true, false and null"),
    ("condition", "FALSE", 1, "'FALSE' is not a value (did you mean 'false'?) at column 1 of condition 'FALSE'", "the literals are true, false and null"),
    ("condition", "Null", 1, "'Null' is not a value (did you mean 'null'?) at column 1 of condition 'Null'", "the literals are true, false and null"),
    ("condition", "nil", 1, "'nil' is not a value (did you mean 'null'?) at column 1 of condition 'nil'", "the literals are true, false and null"),
    ("condition", "NIL", 1, "'NIL' is not a value (did you mean 'null'?) at column 1 of condition 'NIL'", "the literals are true, false and null"),
    ("condition", "1x", 1, "malformed number '1x' at column 1 of condition '1x'", "write a number like 3, -2 or 0.5"),
    ("condition", "1 == 2 3", 8, "expected an operator, found '3' at column 8 of condition '1 == 2 3'",
     "join conditions with && or ||; conditions use == != < <= > >= && || ! and parentheses"),
    ("condition", "   ", 1, "the condition is empty at column 1 of condition '   '", "write a condition like {{inputs.n}} > 3"),
    ("condition", "1 == 1)", 7, "unmatched ')' at column 7 of condition '1 == 1)'", "remove it or add the '(' it closes"),
    ("condition", "(1 == 1", 1, "'(' is never closed at column 1 of condition '(1 == 1'", "add the missing ')'"),
    ("condition", "(1 == 1 2", 9, "expected an operator or ')', found '2' at column 9 of condition '(1 == 1 2'",
     "join conditions with && or ||, and close each '(' with ')'"),
    ("condition", "1 ==", 5, "the condition ends where a value was expected (after '==') at column 5 of condition '1 =='",
     "add a value: a literal, a reference or a parenthesised condition"),
    ("condition", "1 == )", 6, "expected a value, found ')' at column 6 of condition '1 == )'",
     "values are literals ('text', 3, true, null), references (inputs.n, {{tasks.t.output}}) or ( … )"),
    ("condition", "inputs.n < 2 < 3", 14,
     "comparisons cannot be chained ('inputs.n < 2' is followed by '<') at column 14 of condition 'inputs.n < 2 < 3'",
     "combine two comparisons with &&, like a < b && b < c"),
    ("condition", "'abc", 1, "unterminated string at column 1 of condition \"'abc\"", "end the string with ' (write \\' for a ' inside it)"),
    # a backslash as the last character: nothing to escape
    ("condition", "'a\\", 1, "unterminated string at column 1 of condition \"'a\\\\\"", "end the string with '"),
    # an escape as the last character: escaped, then the text ends
    ("condition", "'ab\\n", 1, "unterminated string at column 1 of condition \"'ab\\\\n\"", "end the string with ' (write \\' for a ' inside it)"),
]


@pytest.mark.parametrize(("kind", "text", "column", "message", "hint"), SYNTAX_ERRORS)
def test_syntax_error_messages_exactly(kind, text, column, message, hint):
    err = syntax_error(parse_template if kind == "template" else parse_condition, text)
    assert (err.message, err.hint, err.column) == (message, hint, column)


def test_largest_bracket_index_and_number():
    assert parse_template("{{inputs[1234567890123456789]}}").refs[0].path == (1234567890123456789,)  # 19 digits
    assert parse_condition("1" * 4000 + " > 0").evaluate({}) is True  # 4000 characters: still a number
    assert parse_condition("-" + "1" * 3999 + " < 0").evaluate({}) is True
    for text in ("1" * 4001, "-" + "1" * 4000):
        err = syntax_error(parse_condition, text + " > 0")
        assert (err.message[:40], err.hint, err.column) == ("number too long at column 1 of condition", "write a shorter number", 1)


def test_numbers_starting_with_a_dot():
    assert cond(".5 < 1") is True
    assert cond("-.5 < 0") is True


def test_parenthesised_value_keeps_its_value():
    assert cond("({{inputs.n}}) == 5") is True
    assert cond("((inputs.mode)) == 'dry'") is True


def test_depth_counts_nesting_not_earlier_groups():
    # After "(true)" or "!true" is closed, the depth is back where it was.
    assert cond(" && ".join(["(true)"] * 70)) is True
    assert cond(" && ".join(["!false"] * 70)) is True
    assert cond("(" * 63 + "(true) && " + "(true)" + ")" * 63) is True
    for group in ("(true)", "!true"):
        text = "(" * 63 + group + " && " + "((true))" + ")" * 63
        err = syntax_error(parse_condition, text)
        column = 63 + len(group) + len(" && ((")  # the second '(' after the group: level 65
        assert (err.column, err.hint) == (column, "simplify it: at most 64 nested parentheses or '!'")
        assert err.message.startswith(f"the condition nests deeper than 64 levels at column {column} of condition …'")


def test_long_expression_excerpt_windows():
    # The excerpt is 80 characters around the column, with … where it was cut.
    def message(text):
        return syntax_error(parse_condition, text).message

    start = "x = 1" + " && true" * 20  # 165 characters
    assert message(start) == "'x' is not a value or a reference at column 1 of condition " + repr(start[:80]) + "…"
    end = "true && " * 20 + "x = 1"
    assert message(end) == "'x' is not a value or a reference at column 161 of condition …" + repr(end[-80:])
    col42 = "true && " * 5 + " x = 1" + " && true" * 10  # the window starts one character in
    assert message(col42) == "'x' is not a value or a reference at column 42 of condition …" + repr(col42[1:81]) + "…"
    middle = "inputs.a == 1 && " * 10 + "inputs.b = 2" + " && inputs.c == 1" * 10
    assert message(middle) == (
        "'=' is not an operator (did you mean '=='?) at column 180 of condition …" + repr(middle[139:219]) + "…"
    )
    exactly80 = "y" * 76 + " = 1"
    assert message(exactly80).endswith(" of condition " + repr(exactly80))


def test_evaluation_messages_exactly():
    class Multi:
        def __repr__(self):
            return "a\nb"

    @dataclass
    class WithPrivate:
        rows: int = 1
        _secret: int = 2

    ctx = {"inputs": {
        "ids": [10, 20, 30], "f": False, "s": "x", "obj": object(), "multi": [Multi()], "d": WithPrivate(),
        "long": "y" * 60, "exact": "y" * 38,
        "big": {f"k{i}": i for i in range(21)}, "twenty": {f"k{i}": i for i in range(20)},
    }}
    keys = ", ".join(f"k{i}" for i in range(20))
    cases = {
        "inputs.f < 1": "inputs.f < 1: cannot compare bool false with int 1 using <",
        "inputs.multi < 1": "inputs.multi < 1: cannot compare a list with int 1 using <",  # its repr spans lines
        "inputs.long < 1": "inputs.long < 1: cannot compare str '" + "y" * 38 + "… with int 1 using <",
        "inputs.exact < 1": "inputs.exact < 1: cannot compare str '" + "y" * 38 + "' with int 1 using <",  # 40: not cut
        "inputs.ids[-1].x > 1": "{{inputs.ids[-1].x}}: inputs.ids[-1] is a int, so it has no field 'x'",
        "inputs.ids.0.x > 1": "{{inputs.ids.0.x}}: inputs.ids.0 is a int, so it has no field 'x'",
        "inputs.d.size": "{{inputs.d.size}}: inputs.d has no field 'size' (fields: rows)",
        "inputs.obj.size": "{{inputs.obj.size}}: inputs.obj has no field 'size'",
        "inputs.big.zz": "{{inputs.big.zz}}: inputs.big has no field 'zz' (fields: " + keys + ", …)",
        "inputs.twenty.zz": "{{inputs.twenty.zz}}: inputs.twenty has no field 'zz' (fields: " + keys + ")",
        # the comparison is quoted as written, wherever it sits
        "true && {{inputs.s}} < 3": "{{inputs.s}} < 3: cannot compare str 'x' with int 3 using <",
        "{{inputs.s}} < 3 && true": "{{inputs.s}} < 3: cannot compare str 'x' with int 3 using <",
    }
    for text, message in cases.items():
        err = eval_error(lambda text=text: cond(text, ctx))
        assert (str(err), err.message, err.expression) == (message, message, text)


def test_missing_field_messages_per_root():
    ctx = {"forEach": {"item": 1}, "output": {"a": 1}, "secrets": None}
    cases = {
        "{{forEach.x}}": "{{forEach.x}}: forEach has no field 'x' (fields: item)",
        "{{output.x}}": "{{output.x}}: the output has no field 'x' (fields: a)",
        "{{forEach.$parent}}": "{{forEach.$parent}}: there is no enclosing forEach loop",
        "{{secrets.X}}": "{{secrets.X}}: no secrets provider is configured",  # a provider that cannot be indexed
    }
    for text, message in cases.items():
        assert str(eval_error(lambda text=text: parse_template(text).render(ctx))) == message


def test_containers_json_cannot_write_are_written_with_str():
    assert parse_template("-{{inputs.k}}").render({"inputs": {"k": {(1, 2): 3}}}) == "-{(1, 2): 3}"


def test_non_text_whose_repr_fails():
    class NoRepr:
        def __repr__(self):
            raise RuntimeError("no")

    seen = []
    err = syntax_error(parse_template, NoRepr(), location=lambda col: seen.append(col) or f"cell column {col}")
    assert (err.message, err.hint, err.location, seen) == (
        "expected text, got NoRepr <NoRepr>", "write the template or condition as a string", "cell column 1", [1]
    )


class Ambiguous:
    def __bool__(self):
        raise ValueError("ambiguous")


def _where(col: int) -> str:
    return f"flow.yaml line 2, column {col}"


def test_condition_errors_carry_location_expression_and_source():
    ctx = {"inputs": {"a": Ambiguous(), "s": "x"}}
    for text in ("inputs.a", "inputs.a && true", "true && inputs.a", "false || inputs.a", "!inputs.a"):
        err = eval_error(lambda text=text: parse_condition(text, location=_where).evaluate(ctx))
        assert (err.message, err.expression, err.location, err.ref) == (
            f"{text}: cannot use a Ambiguous as true or false", text, "flow.yaml line 2, column 1", None
        )
    err = eval_error(lambda: parse_condition("true && inputs.s < 3", location=_where).evaluate(ctx))
    assert (err.location, err.message) == ("flow.yaml line 2, column 18", "inputs.s < 3: cannot compare str 'x' with int 3 using <")
    err = eval_error(lambda: parse_condition("true && inputs.nope", location=_where).evaluate(ctx))
    assert (err.location, err.ref) == ("flow.yaml line 2, column 9", "inputs.nope")
    assert str(err) == "flow.yaml line 2, column 9: {{inputs.nope}}: the workflow has no input 'nope' (inputs: a, s)"


def test_template_errors_carry_location():
    class Fragile:
        def __str__(self):
            raise RuntimeError("cannot print")

    err = eval_error(lambda: parse_template("{{inputs.nope}}", location=_where).render({"inputs": {}}))
    assert err.location == "flow.yaml line 2, column 3"
    err = eval_error(lambda: parse_template("ab {{inputs.f}}", location=_where).render({"inputs": {"f": Fragile()}}))
    assert err.location == "flow.yaml line 2, column 6"
    for value in ("{{inputs.nope}}", {"k": "{{inputs.nope}}"}, ["{{inputs.nope}}"], ("{{inputs.nope}}",)):
        err = eval_error(lambda value=value: render_value(value, {"inputs": {}}, location="cell line 5"))
        assert err.location == "cell line 5"


def test_ref_resolve():
    ref = parse_template("{{inputs.a.b}}").refs[0]
    assert ref.resolve({"inputs": {"a": {"b": 3}}}) == 3
    err = eval_error(lambda: ref.resolve({"inputs": {}}))
    assert (str(err), err.expression, err.ref) == ("{{inputs.a.b}}: the workflow has no input 'a' (it is empty)", "inputs.a.b", "inputs.a.b")
    err = eval_error(lambda: ref.resolve({"inputs": {}}, expression="x {{inputs.a.b}}", location="cell line 1"))
    assert (err.expression, err.location) == ("x {{inputs.a.b}}", "cell line 1")
