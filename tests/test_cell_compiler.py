"""`%%workflow` cells: compiled as ordinary Python, errors at the user's cell line."""

from __future__ import annotations

import sys

import pytest

import kernelflow as kf
from kernelflow.cell_compiler import compile_cell

BODY = '''import kernelflow as kf

def extract(url: str):
    return [1, 2, 3, 4]

@kf.task(retries=3, backoff="exponential", timeout="30s")
def clean(extract):
    return [x for x in extract if x % 2 == 0]

def _helper(x):
    return x * 10

def publish(clean, table="daily"):
    return {"table": table, "rows": [_helper(x) for x in clean]}
'''


def test_top_level_functions_are_tasks_and_helpers_are_not():
    ns: dict = {}
    wf = compile_cell("etl", BODY, ns)
    assert wf.task_ids == ("extract", "clean", "publish")
    assert wf["clean"].options.retries == 3
    assert wf["clean"].options.timeout == 30.0
    assert wf["clean"].line == 8  # the def line; the %%workflow line is line 1
    assert "_helper" in ns and "extract" in ns  # the cell ran in the namespace
    assert "etl" not in ns  # binding is the magic's job, after success


def test_version_is_stable_under_cosmetic_edits_and_moves():
    v1 = compile_cell("etl", BODY, {}).version
    cosmetic = "# a comment on top\n\n" + BODY.replace("return x * 10", "return x * 10  # scale")
    assert compile_cell("etl", cosmetic, {}).version == v1
    assert compile_cell("etl", BODY.replace("x * 10", "x * 100"), {}).version != v1  # a helper is behaviour


@pytest.mark.parametrize(
    "body, line, message",
    [
        ("def a():\n    return 1\n\ndef b(a)\n    return a\n", 5, "syntax error"),
        ("def a():\n    return 1\n\ndef a():\n    return 2\n", 5, "task 'a' is defined twice \\(cell lines 2 and 5\\)"),
        ("def a(c):\n    pass\ndef b(a):\n    pass\ndef c(b):\n    pass\n", None, "a -> b -> c -> a"),
        ("def a():\n    pass\n\n@kf.task(retries=-2)\ndef b(a):\n    pass\n", 5, "retries must be a whole number >= 0"),
        ("def a():\n    pass\nx = 1 / 0\n", 4, "ZeroDivisionError"),
        ("def a(*args):\n    pass\n", 2, r"\*args or \*\*kwargs"),
        ("import functools\n@functools.partial\ndef a(x):\n    pass\n", 4, "not a function after its decorators"),
        ("x = 1\n", 1, "defines no tasks"),
        ("@kf.task(after=['nope'])\ndef a():\n    pass\n", 3, "depends on 'nope'"),
        ("@kf.task(executor='warp')\ndef a():\n    pass\n", 3, "executor 'warp'"),
    ],
)
def test_errors_name_the_cell_line_and_bind_nothing(body, line, message):
    ns: dict = {"kf": kf}
    with pytest.raises(kf.DefinitionError, match=message) as err:
        compile_cell("wf", body, ns)
    if line is not None:
        assert f"cell line {line}" in str(err.value)
    assert "wf" not in ns
    assert "fix:" in str(err.value)  # every error says how to fix it


def test_cycle_error_names_the_lines_of_the_cycle():
    with pytest.raises(kf.CycleError, match="cell lines 2, 4, 6"):
        compile_cell("wf", "def a(c):\n    pass\ndef b(a):\n    pass\ndef c(b):\n    pass\n", {})


def test_structure_errors_are_found_before_the_cell_runs():
    ns: dict = {}
    with pytest.raises(kf.CycleError):
        compile_cell("wf", "side_effect = 1\ndef a(b):\n    pass\ndef b(a):\n    pass\n", ns)
    assert "side_effect" not in ns


def test_workflow_named_like_a_task_is_refused():
    with pytest.raises(kf.DefinitionError, match="named 'a' like one of its tasks"):
        compile_cell("a", "def a():\n    pass\n", {})


def test_bad_workflow_name_and_options():
    with pytest.raises(kf.DefinitionError, match="cell line 1: workflow name must be a Python identifier"):
        compile_cell("9lives", "def a():\n    pass\n", {})
    with pytest.raises(kf.OptionError, match="max_parallel must be a whole number >= 1"):
        compile_cell("wf", "def a():\n    pass\n", {}, max_parallel=0)


def test_task_tracebacks_quote_the_cell_line():
    wf = compile_cell("tb", "def a():\n    return 1\n\ndef b(a):\n    raise ValueError('bad ' + str(a))\n", {})
    run = wf.run(raise_on_failure=False)
    tb = run.failures["b"].traceback
    assert 'File "<workflow tb>", line 6, in b' in tb
    assert "raise ValueError('bad ' + str(a))" in tb
    assert "kernelflow" not in tb.split("line 6")[0]  # no engine frames above the user's


# --- found by fuzzing (tests/test_fuzz.py) ------------------------------------------------


@pytest.mark.parametrize(
    "body, line, message",
    [
        # Errors only Python's compiler finds (ast.parse accepts these): they escaped as SyntaxError.
        ("def a():\n    pass\nreturn 1\n", 4, "'return' outside function: return 1"),
        ("def a():\n    pass\nx = yield 2\n", 4, "'yield' outside function"),
        ("def a(x, x):\n    pass\n", 2, "duplicate argument 'x'"),
        ("def a():\n    pass\nnonlocal n\n", 4, "nonlocal declaration not allowed at module level"),
    ],
)
def test_syntax_errors_found_by_the_compiler_name_the_line(body, line, message):
    ns: dict = {}
    with pytest.raises(kf.DefinitionError, match=message) as err:
        compile_cell("wf", body, ns)
    assert err.value.location == f"cell line {line}"
    assert "fix the Python syntax" in err.value.hint
    assert "a" not in ns  # found before the cell ran


@pytest.mark.parametrize("nesting", ["-", "not ", "1+", "lambda: "])
def test_an_expression_too_deep_for_pythons_parser_is_a_definition_error(nesting):
    # ast.parse raised MemoryError or RecursionError, which escaped the compiler.
    body = "def a():\n    pass\n\nx = " + nesting * 100_000 + "1\n"
    with pytest.raises(kf.DefinitionError, match="nests too deeply") as err:
        compile_cell("wf", body, {})
    assert err.value.location == "cell line 5"  # the longest line
    assert "split the deeply nested expression" in err.value.hint


@pytest.fixture
def default_recursion_limit():
    # Hypothesis raises the limit while its tests run and leaves it raised if anything else
    # changed it meanwhile; under a raised limit 500 levels record fine.
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    yield
    sys.setrecursionlimit(previous)


def test_a_default_too_deep_to_record_is_a_definition_error(default_recursion_limit):
    # Python parses and compiles it, but ast.unparse (recording the default) recursed out.
    body = "def a():\n    pass\n\ndef b(a, n=" + "-" * 500 + "1):\n    return n\n"
    with pytest.raises(kf.DefinitionError, match="task 'b': a parameter's default value nests too deeply") as err:
        compile_cell("wf", body, {})
    assert err.value.location == "cell line 5"
    assert err.value.hint


def test_windows_line_endings_give_the_same_workflow_and_errors():
    crlf = BODY.replace("\n", "\r\n")
    assert compile_cell("etl", crlf, {}).version == compile_cell("etl", BODY, {}).version
    # A def without a body at the end of the cell: Python put it one line past the cell with CRLF.
    unfinished = "def a():\n    pass\n\ndef b(a):\n"
    for body in (unfinished, unfinished.replace("\n", "\r\n")):
        with pytest.raises(kf.DefinitionError, match="expected an indented block") as err:
            compile_cell("wf", body, {})
        assert err.value.location == "cell line 5"
