"""`%%workflow` cells: compiled as ordinary Python, errors at the user's cell line."""

from __future__ import annotations

import re
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
    assert err.value.hint == "compute the default in a helper function and give the parameter a simple default"


def test_windows_line_endings_give_the_same_workflow_and_errors():
    crlf = BODY.replace("\n", "\r\n")
    assert compile_cell("etl", crlf, {}).version == compile_cell("etl", BODY, {}).version
    # A def without a body at the end of the cell: Python put it one line past the cell with CRLF.
    unfinished = "def a():\n    pass\n\ndef b(a):\n"
    for body in (unfinished, unfinished.replace("\n", "\r\n")):
        with pytest.raises(kf.DefinitionError, match="expected an indented block") as err:
            compile_cell("wf", body, {})
        assert err.value.location == "cell line 5"


# --- what compile_cell builds, and where each of its errors points -------------------------------------

STEPS_BODY = '''import kernelflow as kf

def _undo(x):
    pass

def cheap():
    return 0

@kf.task(fallback=cheap, compensate=_undo)
def fetch():
    return 1

def pick_a(fetch):
    return "a"

def pick_b(fetch):
    return "b"

route = kf.switch("{{tasks.fetch.output}}", cases={"1": pick_a}, default=pick_b)

def report(route):
    return route
'''


def test_functions_used_by_a_step_belong_to_it_and_steps_sit_at_their_line():
    # cheap (fallback) and pick_a/pick_b (switch cases) are not tasks of their own;
    # the assigned step 'route' is ordered by its line, between fetch and report.
    wf = compile_cell("wf", STEPS_BODY, {})
    assert wf.task_ids == ("fetch", "route", "report")
    assert [wf[t].line for t in wf.task_ids] == [11, 20, 22]
    assert wf["fetch"].ref == "python:fetch"
    assert wf["report"].ref == "python:report"
    assert wf["report"].deps == ("route",)
    assert wf["route"].deps == ("fetch",)
    assert set(wf.functions) == {"fetch", "report"}


@pytest.mark.parametrize(
    "option",
    ["fallback=spare", "compensate=spare", "run=spare"],
)
def test_a_function_given_as_a_step_option_is_not_a_task(option):
    body = f"import kernelflow as kf\n\ndef spare():\n    return 0\n\nmain = kf.step({option})\n"
    if option.startswith("run"):
        wf = compile_cell("wf", body, {})
    else:
        wf = compile_cell("wf", body.replace("main = kf.step(", "main = kf.step(run='python:spare', "), {})
    assert wf.task_ids == ("main",)


def test_a_switch_default_alone_is_not_a_task():
    body = (
        "import kernelflow as kf\n\ndef a():\n    return 1\n\ndef other(a):\n    return 2\n\n"
        "route = kf.switch('{{tasks.a.output}}', cases={'1': 'python:a'}, default=other)\n"
    )
    assert compile_cell("wf", body, {}).task_ids == ("a", "route")


def test_task_code_hashes_and_the_source_hash_are_stable_values():
    # Versions are stored with every run: the same cell must hash the same in every release.
    wf = compile_cell("wf", "def a():\n    '''Doc.'''\n    return 1\n\ndef b(a):\n    return a\n", {})
    assert wf["a"].code_hash == "287075ea6fc1d773"
    assert wf["b"].code_hash == "7965edcb1f19102d"
    assert wf.source_hash == "198d79ef3b028dff"
    undocumented = compile_cell("wf", "def a():\n    return 1\n\ndef b(a):\n    return a\n", {})
    assert (undocumented["a"].code_hash, undocumented.source_hash) == ("287075ea6fc1d773", "198d79ef3b028dff")


def test_max_parallel_executor_and_source_reach_the_workflow():
    body = "def a():\n    return 1\n"
    wf = compile_cell("wf", body, {}, max_parallel=3, executor="threads")
    assert (wf.max_parallel, wf.executor, wf.source) == (3, "threads", body)
    assert compile_cell("wf", body, {}).max_parallel == 8


def test_first_line_shifts_every_line():
    wf = compile_cell("wf", "\ndef a():\n    return 1\n", {}, first_line=10)
    assert wf["a"].line == 11
    with pytest.raises(kf.DefinitionError) as err:
        compile_cell("wf", "def a():\n    pass\nx = 1 / 0\n", {}, first_line=10)
    assert err.value.location == "cell line 12"


def test_the_cell_text_is_registered_for_tracebacks():
    import linecache

    body = "def a():\n    return 1\n"
    compile_cell("lc", body, {})
    text = "\n" + body
    assert linecache.cache["<workflow lc>"] == (len(text), None, text.splitlines(True), "<workflow lc>")
    cell = "%%workflow lc2\n" + body
    compile_cell("lc2", body, {}, filename="/tmp/cell-lc2.py", cell_text=cell)
    assert linecache.cache["/tmp/cell-lc2.py"] == (len(cell), None, cell.splitlines(True), "/tmp/cell-lc2.py")
    # A real file name without the cell's text is left to linecache (it reads the file).
    linecache.cache.pop("/tmp/cell-lc3.py", None)
    compile_cell("lc3", body, {}, filename="/tmp/cell-lc3.py")
    assert "/tmp/cell-lc3.py" not in linecache.cache


def test_a_bad_workflow_name_is_refused_at_the_magic_line():
    for bad in ("9lives", 5, "my flow"):
        with pytest.raises(kf.DefinitionError) as err:
            compile_cell(bad, "def a():\n    pass\n", {})
        assert err.value.message == f"workflow name must be a Python identifier, got {bad!r}"
        assert err.value.location == "cell line 1"
        assert err.value.hint == "write %%workflow my_flow (letters, digits, underscores)"


def test_an_error_the_cell_raises_names_its_line_and_keeps_its_cause():
    with pytest.raises(kf.DefinitionError) as err:
        compile_cell("wf", "def a():\n    pass\n\ndef _f():\n    return 1 / 0\n\nx = _f()\n", {})
    assert err.value.message == "the cell raised ZeroDivisionError: division by zero"
    assert err.value.location == "cell line 6"  # the deepest line in the cell, in the helper
    assert err.value.hint == "fix the error; the workflow was not defined (definitions made before it stay in the namespace)"
    assert isinstance(err.value.__cause__, ZeroDivisionError)


def test_an_error_outside_the_cell_has_no_line():
    from collections import UserDict

    # exec() refuses a namespace that is not a dict before any cell line runs.
    with pytest.raises(kf.DefinitionError) as err:
        compile_cell("wf", "def a():\n    pass\n", UserDict())
    assert err.value.message == "the cell raised TypeError: exec() globals must be a dict, not UserDict"
    assert err.value.location is None


def test_a_definition_error_raised_in_the_cell_gets_the_cell_line_and_keeps_its_hint():
    body = "import kernelflow as kf\n\ndef a():\n    pass\n\nkf.task(retries=-1)\n"
    with pytest.raises(kf.OptionError) as err:
        compile_cell("wf", body, {})
    assert err.value.message == "@kf.task: retries must be a whole number >= 0, got -1"
    assert err.value.location == "cell line 7"
    assert err.value.hint == "docs/steps.md lists every step key and the values it accepts"
    assert err.value.__cause__ is None


def test_a_definition_error_with_a_location_of_its_own_keeps_it():
    body = (
        "import kernelflow as kf\n\ndef a():\n    pass\n\n"
        "raise kf.DefinitionError('mine', location='elsewhere', hint='h')\n"
    )
    with pytest.raises(kf.DefinitionError) as err:
        compile_cell("wf", body, {})
    assert (err.value.message, err.value.location, err.value.hint) == ("mine", "elsewhere", "h")


def test_other_kernelflow_errors_pass_through_unchanged():
    body = "import kernelflow as kf\n\ndef a():\n    pass\n\nraise kf.InputError('no such input')\n"
    with pytest.raises(kf.InputError, match="^no such input$"):
        compile_cell("wf", body, {})


def test_a_step_name_reassigned_in_the_cell_is_refused():
    body = "import kernelflow as kf\nfetch = kf.shell(['echo', 'hi'])\nfetch = 3\n"
    with pytest.raises(kf.DefinitionError) as err:
        compile_cell("wf", body, {})
    assert err.value.message == "'fetch' was assigned a step on cell line 3, but holds int after the cell ran"
    assert err.value.location == "cell line 3"
    assert err.value.hint == "assign 'fetch' only once in the cell"


def test_a_task_replaced_by_its_decorator_names_the_def_line():
    body = "import functools\n\n@functools.partial\ndef a():\n    pass\n"
    with pytest.raises(kf.DefinitionError) as err:
        compile_cell("wf", body, {})
    assert err.value.message.startswith(
        "task 'a' is not a function after its decorators: 'a' must be a function defined with def, got partial functools.partial("
    )
    assert err.value.location == "cell line 5"
    assert err.value.hint == "remove the decorator that replaces it, or rename it with a leading _ to make it a helper"


def test_parameters_record_their_defaults_in_every_kind_of_argument():
    from kernelflow.model import Param

    body = "def a():\n    return 1\n\ndef b(a, /, n=2, *, label='x', flag):\n    return a\n"
    wf = compile_cell("wf", body, {})
    assert wf["b"].params == (
        Param("a", False, None),
        Param("n", True, "2"),
        Param("label", True, "'x'"),
        Param("flag", False, None),
    )
    assert wf["b"].deps == ("a",)
    assert [(i.name, i.required) for i in wf.inputs] == [("n", False), ("label", False), ("flag", True)]


@pytest.mark.parametrize(
    "body, message, location, hint",
    [
        ("def a(*args):\n    pass\n", "task 'a' takes *args or **kwargs; every parameter must have a name", "cell line 2",
         "name each dependency and input explicitly"),
        ("def a():\n    pass\n\ndef b(**kw):\n    pass\n", "task 'b' takes *args or **kwargs; every parameter must have a name",
         "cell line 5", "name each dependency and input explicitly"),
        ("def a():\n    pass\n\ndef b(*, b):\n    pass\n",
         "task 'b' has a parameter named after itself, so it would depend on its own output", "cell line 5",
         "rename the parameter (it is then a workflow input) or the function"),
        ("def a():\n    pass\n\ndef a():\n    pass\n", "task 'a' is defined twice (cell lines 2 and 5)", "cell line 5",
         "rename or delete one of the two definitions of 'a'"),
        ("async def a():\n    pass\n\ndef a():\n    pass\n", "task 'a' is defined twice (cell lines 2 and 5)", "cell line 5",
         "rename or delete one of the two definitions of 'a'"),
        ("import kernelflow as kf\nfetch = kf.shell(['ls'])\nfetch = kf.http('GET', 'https://x.org')\n",
         "task 'fetch' is defined twice (cell lines 3 and 4)", "cell line 4", "rename one of the two steps named 'fetch'"),
        ("import kernelflow as kf\ndef fetch():\n    pass\nfetch = kf.shell(['ls'])\n",
         "task 'fetch' is defined twice (cell lines 3 and 5)", "cell line 5", "rename one of the two definitions of 'fetch'"),
        ("x = 1\n", "the cell defines no tasks for workflow 'wf'", "cell line 1",
         "define at least one top-level function with def (names starting with _ are helpers), or assign a step: fetch = kf.shell([...])"),
        ("def _helper():\n    pass\n_step = kf.shell(['ls'])\n", "the cell defines no tasks for workflow 'wf'", "cell line 1",
         "define at least one top-level function with def (names starting with _ are helpers), or assign a step: fetch = kf.shell([...])"),
        ("import kernelflow as kf\n\ndef a():\n    pass\nwf = kf.shell(['ls'])\n",
         "the workflow is named 'wf' like one of its tasks (cell line 6), and binding the workflow would hide the task",
         "cell line 1", "rename the workflow or the task"),
        ("def a():\n    pass\n\ndef wf(a):\n    pass\n",
         "the workflow is named 'wf' like one of its tasks (cell line 5), and binding the workflow would hide the task",
         "cell line 1", "rename the workflow or the task"),
    ],
)  # fmt: skip
def test_structure_errors_say_what_where_and_how_to_fix(body, message, location, hint):
    ns: dict = {}
    with pytest.raises(kf.DefinitionError) as err:
        compile_cell("wf", body, ns)
    assert (err.value.message, err.value.location, err.value.hint) == (message, location, hint)
    assert "x" not in ns  # nothing ran


def test_only_a_single_name_assigned_a_step_factory_call_is_a_step():
    body = (
        "import kernelflow as kf\n\ndef a():\n    return 1\n\n"
        "b = c = kf.shell(['ls'])\n"  # two targets: not a step
        "d, e = kf.shell(['ls']), 1\n"  # a tuple target
        "f = kf.workflow\n"  # not a call
        "g = len([1])\n"  # a call, not of an attribute
        "h = kf.task(retries=1)\n"  # not a step factory
        "i = kf.shell(['ls']).options\n"  # an attribute of a call
        "j = kf.x.shell(['ls'])\n"  # not NAME.shell
        "_k = kf.shell(['ls'])\n"  # a helper's name
        "last = kf.shell(['ls'])\n"  # the scan goes on after all of these
    )
    ns: dict = {"kf": kf}
    try:
        kf.x = kf  # type: ignore[attr-defined]
        wf = compile_cell("wf", body, ns)
    finally:
        del kf.x
    assert wf.task_ids == ("a", "last")
    steps = compile_cell("wf", "import kernelflow as kf\n" + "".join(
        f"s_{f} = kf.{f}({a})\n" for f, a in [("shell", "['ls']"), ("http", "'GET', 'https://x.org'"), ("step", "run='shell', argv=['ls']")]
    ), {})
    assert steps.task_ids == ("s_shell", "s_http", "s_step")


def test_syntax_errors_quote_the_line_from_the_cell():
    with pytest.raises(kf.DefinitionError) as err:
        compile_cell("wf", "def a():\n    pass\n\ndef b(a)\n    return a\n", {})
    assert err.value.message == "syntax error: expected ':': def b(a)"
    assert err.value.location == "cell line 5"
    assert err.value.hint == "fix the Python syntax on that line; nothing was defined"
    # compiler errors carry no text: the line is quoted from the cell
    with pytest.raises(kf.DefinitionError) as err:
        compile_cell("wf", "def a():\n    pass\n\nreturn   1  \n", {}, first_line=4)
    assert err.value.message == "syntax error: 'return' outside function: return   1"
    assert err.value.location == "cell line 7"


def test_a_parser_overflow_names_the_longest_line():
    body = "def a():\n    pass\n\nx = " + "-" * 100_000 + "1\ny = 2\n"
    with pytest.raises(kf.DefinitionError) as err:
        compile_cell("wf", body, {})
    assert re.fullmatch(
        r"Python cannot parse the cell: an expression nests too deeply \((RecursionError|MemoryError) in its parser\); "
        r"the longest line is line 5",
        err.value.message,
    )
    assert err.value.hint == "split the deeply nested expression into several statements; nothing was defined"
    # the first line of the padded cell is the %%workflow line: the longest is counted from 1
    with pytest.raises(kf.DefinitionError) as err:
        compile_cell("wf", "x = " + "-" * 100_000 + "1\n", {})
    assert err.value.location == "cell line 2"


def test_a_compiled_cell_is_remembered_by_name():
    from kernelflow import catalog

    wf = compile_cell("remembered_cell", "def a():\n    return 1\n", {})
    assert catalog.find("remembered_cell") is wf


def test_workflow_options_are_checked_before_the_cell_runs():
    ns: dict = {}
    with pytest.raises(kf.OptionError, match="max_parallel must be a whole number >= 1, got 0"):
        compile_cell("wf", "ran = 1\ndef a():\n    pass\n", ns, max_parallel=0)
    with pytest.raises(kf.OptionError, match="executor must be an executor name"):
        compile_cell("wf", "ran = 1\ndef a():\n    pass\n", ns, executor="")
    assert "ran" not in ns


def test_syntax_errors_without_text_quote_the_first_and_the_last_line():
    # the compiler's errors carry no text; the quoted line is the cell's, at either end of it
    with pytest.raises(kf.DefinitionError) as err:
        compile_cell("wf", "return 1\ndef a():\n    pass\n", {}, first_line=1)
    assert (err.value.message, err.value.location) == ("syntax error: 'return' outside function: return 1", "cell line 1")
    with pytest.raises(kf.DefinitionError) as err:
        compile_cell("wf", "def a():\n    pass\nreturn 1", {})  # no newline at the end
    assert (err.value.message, err.value.location) == ("syntax error: 'return' outside function: return 1", "cell line 4")


DECORATED_BODY = '''import kernelflow as kf

def spare():
    return 0

@kf.task(fallback=spare, circuit_breaker={"failure_threshold": 2})
def fetch():
    return 1

def report(fetch, spare):
    return fetch

helper = kf.step(run="python:spare", circuit_breaker={"failure_threshold": 3})
'''


def test_decorated_tasks_and_assigned_steps_are_built_with_the_cells_names_and_namespace():
    ns: dict = {}
    wf = compile_cell("wf", DECORATED_BODY, ns, executor="processes")
    assert wf.task_ids == ("fetch", "report", "helper")
    assert wf.executor == "processes"
    assert wf["fetch"].ref == "python:fetch"
    assert wf.functions["fetch"] is ns["fetch"]
    assert wf.functions["helper"] is ns["spare"]  # run: python:spare, found in the cell's namespace
    assert wf["fetch"].code_hash == "246f01f56f5f72ba"  # the cell's hash of the def, decorator included
    assert wf["fetch"].spec.circuit_breaker["name"] == "wf.fetch"  # named after the workflow
    assert wf["helper"].spec.circuit_breaker["name"] == "wf.helper"
    assert wf.callables["python:spare"] is ns["spare"]
    assert "python:spare" in wf.aux_hashes
    # spare is the fallback, not a task: report's parameter of that name is an input
    assert wf["report"].deps == ("fetch",)
    assert [i.name for i in wf.inputs] == ["spare"]


@pytest.mark.parametrize(
    "body, location",
    [
        ("import kernelflow as kf\n\n@kf.task(fallback='python:nope')\ndef a():\n    pass\n", "cell line 5"),
        ("import kernelflow as kf\n\ndef a():\n    pass\n\nb = kf.shell(['ls'], fallback='python:nope')\n", "cell line 7"),
    ],
)
def test_step_option_errors_name_the_steps_line(body, location):
    with pytest.raises(kf.DefinitionError) as err:
        compile_cell("wf", body, {})
    assert "python:nope names no function in the notebook" in err.value.message
    assert err.value.location == location


def test_a_decorated_tasks_refs_are_found_in_the_cells_namespace():
    body = "import kernelflow as kf\n\ndef _spare():\n    return 0\n\n@kf.task(fallback='python:_spare')\ndef a():\n    return 1\n"
    ns: dict = {}
    wf = compile_cell("wf", body, ns)
    assert wf.callables["python:_spare"] is ns["_spare"]
