"""The magics, through a real IPython shell."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell

import kernelflow as kf


@pytest.fixture(scope="module")
def ip():
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kernelflow")
    yield shell
    shell.run_line_magic("unload_ext", "kernelflow")


ETL = """
def extract(n=3):
    return list(range(n))

@kf.task(retries=1, retry_delay=0)
def double(extract):
    return [x * 2 for x in extract]
"""


def test_workflow_cell_binds_the_workflow_and_displays_its_dag(ip, capsys):
    ip.user_ns["kf"] = kf
    result = ip.run_cell(f"%%workflow etl --max-parallel 2\n{ETL}")
    assert result.success, result.error_in_exec
    wf = ip.user_ns["etl"]
    assert isinstance(wf, kf.Workflow)
    assert wf.max_parallel == 2
    assert wf["double"].line == 7  # cell line counted from the %%workflow line
    out = capsys.readouterr().out
    assert "workflow etl" in out and "double ← extract" in out


def test_line_magic_runs_with_typed_inputs(ip):
    ip.run_cell(f"%%workflow etl\n{ETL}")
    run = ip.run_line_magic("workflow", "run etl n=4")
    assert run.status == "succeeded"
    assert run.output == [0, 2, 4, 6]


def test_failed_run_makes_the_cell_fail(ip):
    ip.run_cell("%%workflow bad\ndef boom():\n    raise ValueError('nope')\n")
    result = ip.run_cell("%workflow run bad")
    assert not result.success
    assert isinstance(result.error_in_exec, kf.RunFailedError)
    assert "task 'boom' raised ValueError: nope" in str(result.error_in_exec)


def test_error_in_cell_names_the_line_and_binds_nothing(ip):
    ip.user_ns.pop("broken", None)
    result = ip.run_cell("%%workflow broken\ndef a():\n    return 1\n\ndef b(a)\n    return a\n")
    assert isinstance(result.error_in_exec, kf.DefinitionError)
    assert "cell line 5" in str(result.error_in_exec)
    assert "broken" not in ip.user_ns


@pytest.mark.parametrize(
    "line, message",
    [
        ("wf --max-parallel 0", "must be a whole number >= 1, got '0'"),
        ("wf --max-parallel lots", "must be a whole number >= 1, got 'lots'"),
        ("wf --bogus 1", "unrecognized arguments"),
        ("", "the following arguments are required: name"),
    ],
)
def test_bad_magic_options_are_one_clear_error(ip, line, message):
    result = ip.run_cell(f"%%workflow {line}\ndef a():\n    pass\n")
    err = result.error_in_exec
    assert isinstance(err, kf.OptionError), err
    assert message in str(err) and "cell line 1" in str(err) and "usage:" in str(err)


@pytest.mark.parametrize(
    "line, message",
    [("run nothing_here", "'nothing_here' is nothing, not a workflow"), ("show etl", "unknown use of %workflow"), ("run etl n", "expected input=value")],
)
def test_bad_line_magic_use(ip, line, message):
    ip.run_cell(f"%%workflow etl\n{ETL}")
    result = ip.run_cell(f"%workflow {line}")
    assert message in str(result.error_in_exec)


def test_unknown_input_is_refused_before_anything_runs(ip):
    ip.run_cell(f"%%workflow etl\n{ETL}")
    result = ip.run_cell("%workflow run etl m=3")
    assert isinstance(result.error_in_exec, kf.InputError)
    assert "has no input 'm'" in str(result.error_in_exec)


def test_kfsql_returns_polars_and_can_bind(ip):
    import polars as pl

    ip.run_cell(f"%%workflow etl\n{ETL}")
    ip.run_line_magic("workflow", "run etl")
    df = ip.run_cell_magic("kfsql", "-o counts", "SELECT workflow, count(*) AS runs FROM runs GROUP BY workflow")
    assert isinstance(df, pl.DataFrame)
    assert ip.user_ns["counts"].equals(df)
    assert df.filter(pl.col("workflow") == "etl")["runs"][0] >= 1


def test_kfsql_binds_dollar_names_to_notebook_variables(ip):
    ip.user_ns["kf"] = kf
    ip.run_cell(f"%%workflow etl\n{ETL}")
    run = ip.run_line_magic("workflow", "run etl")
    ip.user_ns["run_id"] = run.run_id
    ip.user_ns["seq"] = 3
    df = ip.run_cell_magic(
        "kfsql", "",
        "-- $not_a_parameter in a comment\n"
        "SELECT task_id, status, json_extract_string('{\"a\": 1}', '$.a') AS a\n"
        "FROM state_at($run_id, $seq) ORDER BY task_id",
    )  # fmt: skip
    assert df.rows() == [("double", "pending", "1"), ("extract", "succeeded", "1")]
    # The value is a parameter, not pasted into the SQL: quotes in it are harmless.
    ip.user_ns["run_id"] = "r-x' OR '1'='1"
    assert ip.run_cell_magic("kfsql", "", "SELECT count(*) AS n FROM runs WHERE run_id = $run_id").item() == 0


def test_kfsql_names_an_undefined_dollar_variable(ip):
    result = ip.run_cell("%%kfsql\nSELECT * FROM state_at($no_such_run_var, 1)")
    assert isinstance(result.error_in_exec, kf.OptionError)
    assert "no variable 'no_such_run_var'" in str(result.error_in_exec)


def test_errors_render_without_our_internals(ip):
    err = kf.DefinitionError("boom", location="cell line 3", hint="do X")
    assert err._render_traceback_() == ["DefinitionError: cell line 3: boom\n  fix: do X"]


YAML_BODY = """\
inputs:
  n: {type: int, default: 3}
tasks:
  - id: numbers
    run: python:yaml_numbers
  - id: total
    run: python:yaml_total
    input: {values: "{{tasks.numbers.output}}"}
"""


def test_a_yaml_body_is_detected_compiled_and_run(ip):
    ip.user_ns["yaml_numbers"] = lambda n: list(range(n))
    exec("def yaml_total(values):\n    return sum(values)\n", ip.user_ns)
    result = ip.run_cell(f"%%workflow yflow --max-parallel 3\n{YAML_BODY}")
    assert result.success, result.error_in_exec
    wf = ip.user_ns["yflow"]
    assert wf.max_parallel == 3 and wf.task_ids == ("numbers", "total")
    assert wf["total"].line == 7  # cell lines: the magic is line 1
    assert wf.run(n=4).output == 6
    assert wf.run().output == 3  # the declared default


def test_yaml_errors_name_cell_line_and_column_and_bind_nothing(ip):
    ip.user_ns.pop("ybad", None)
    body = YAML_BODY.replace("run: python:yaml_total", "run: python:yaml_totl")
    result = ip.run_cell(f"%%workflow ybad\n{body}")
    assert not result.success
    err = str(result.error_in_exec)
    assert "cell line 8, column 10" in err and "did you mean python:yaml_total" in err
    assert "ybad" not in ip.user_ns


def test_yaml_and_python_can_be_forced(ip):
    ip.user_ns.pop("forced", None)
    # --python on a YAML body: it is Python, and not valid Python
    result = ip.run_cell(f"%%workflow forced --python\n{YAML_BODY}")
    assert not result.success and "forced" not in ip.user_ns
    result = ip.run_cell("%%workflow forced --yaml --python\ntasks: []\n")
    assert not result.success and "contradict" in str(result.error_in_exec)
    result = ip.run_cell(f"%%workflow forced --yaml\n{YAML_BODY}")
    assert result.success, result.error_in_exec
