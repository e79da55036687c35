"""`kernelflow history | show | sql` against a real store, as subprocesses; usage errors in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import kernelflow as kf


def cli(*args, home):
    env = {**os.environ, "KERNELFLOW_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "kernelflow.cli", *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def runs(kernelflow_home):
    ns: dict = {}
    exec("def a(n=2):\n    return n\ndef b(a):\n    if a > 2:\n        raise ValueError(f'too big: {a}')\n    return a\n", ns)
    wf = kf.workflow("demo", [ns["a"], ns["b"]])
    ok = wf.run()
    bad = wf.run(n=5, raise_on_failure=False)
    kf.open_store().close()  # compact and release, as a finished process would
    return ok, bad


def test_history_lists_runs_newest_first_with_filters(runs, kernelflow_home):
    ok, bad = runs
    res = cli("history", home=kernelflow_home)
    assert res.returncode == 0, res.stderr
    assert res.stdout.index(bad.run_id) < res.stdout.index(ok.run_id)
    res = cli("history", "--status", "failed", home=kernelflow_home)
    assert bad.run_id in res.stdout and ok.run_id not in res.stdout


def test_show_prints_the_dag_attempts_and_traceback(runs, kernelflow_home):
    _, bad = runs
    res = cli("show", bad.run_id, home=kernelflow_home)
    assert res.returncode == 0, res.stderr
    assert f"run {bad.run_id} · workflow demo" in res.stdout and "failed" in res.stdout
    assert "✗ b (n?)" not in res.stdout  # inputs are listed per task that takes them
    assert "✓ a (n)" in res.stdout and "✗ b ← a" in res.stdout
    assert "ValueError: too big: 5" in res.stdout


def test_show_unknown_run_is_a_clear_error(runs, kernelflow_home):
    res = cli("show", "r-doesnotexist", home=kernelflow_home)
    assert res.returncode == 1 and "no run 'r-doesnotexist'" in res.stderr


def test_sql_prints_a_table_csv_or_json(runs, kernelflow_home):
    res = cli("sql", "SELECT workflow, count(*) AS n FROM runs GROUP BY workflow", home=kernelflow_home)
    assert res.returncode == 0 and "demo" in res.stdout and "│" in res.stdout
    res = cli("sql", "SELECT count(*) AS n FROM runs", "--format", "csv", home=kernelflow_home)
    assert res.stdout == "n\n2\n"


def test_sql_error_is_one_clear_message(runs, kernelflow_home):
    res = cli("sql", "SELECT nope FROM runs", home=kernelflow_home)
    assert res.returncode == 1
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr


def test_history_on_an_empty_store(tmp_path):
    res = cli("history", home=tmp_path / "empty")
    assert res.returncode == 0 and "no runs recorded yet" in res.stdout
    assert not (tmp_path / "empty").exists()


def test_cli_on_a_folder_that_is_not_a_store(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    res = cli("history", home=tmp_path)
    assert res.returncode == 1
    assert "is not a kernelflow store" in res.stderr and "Traceback" not in res.stderr


FLOW_YAML = """\
name: cli_flow
inputs:
  n: {{type: int, default: 2}}
tasks:
  - id: say
    run: shell
    argv: ["{python}", "-c", "import sys; print(int(sys.argv[1]) * 3)", "{{{{inputs.n}}}}"]
  - id: parse
    run: helpers_mod:parse
    input: {{text: "{{{{tasks.say.output.stdout}}}}"}}
  - id: check
    run: helpers_mod:check
    needs: [parse]
    input: {{value: "{{{{tasks.parse.output}}}}"}}
"""

HELPERS = """\
def parse(text):
    return int(text.strip())

def check(value):
    if value > 10:
        raise ValueError(f"value {value} is over 10")
    return value
"""


@pytest.mark.slow
def test_run_a_yaml_file_with_parameters_and_exit_codes(tmp_path, kernelflow_home):
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW_YAML.format(python=sys.executable))
    (tmp_path / "helpers_mod.py").write_text(HELPERS)
    ok = cli("run", str(flow), home=kernelflow_home)
    assert ok.returncode == 0, ok.stderr
    assert "of cli_flow" in ok.stdout and "succeeded" in ok.stdout and "3 succeeded" in ok.stdout
    bad = cli("run", str(flow), "-p", "n", "5", home=kernelflow_home)
    assert bad.returncode == 1
    assert "check: ValueError: value 15 is over 10" in bad.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text("tasks:\n  - id: a\n    run: shell\n    argv: ls -l\n")
    res = cli("run", str(broken), home=kernelflow_home)
    assert res.returncode == 1
    assert f"{broken} line 4, column 11" in res.stderr and "argv must be a list" in res.stderr
    missing = cli("run", str(tmp_path / "nope.yaml"), home=kernelflow_home)
    assert missing.returncode == 2 and "not found" in missing.stderr


# --- found by fuzzing (tests/test_fuzz.py): bad command lines end in a one-line error -------


def main_in_process(*argv: str) -> int:
    """``kernelflow ARGV`` here (fast); argparse's usage errors exit through SystemExit."""
    from kernelflow.cli import main

    try:
        return main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize("content", ["not a notebook", "{}", '{"cells": 3}'])
def test_run_a_file_that_is_not_a_notebook(tmp_path, monkeypatch, capsys, content):
    # nbformat's errors escaped as tracebacks once papermill had started.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.ipynb").write_text(content)
    assert main_in_process("run", "broken.ipynb") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: broken.ipynb is not a notebook papermill can run: ") and "Traceback" not in err
    assert "papermill (parameters" not in err  # refused before starting it
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        # Once a DuckDB "LIMIT/OFFSET cannot be negative" or INT64 conversion error, exit 1.
        (["history", "--limit", "-5"], "argument --limit: must be a whole number >= 1, got '-5'"),
        (["history", "--limit", "0"], "argument --limit: must be a whole number >= 1, got '0'"),
        (["history", "--limit", "99999999999999999999"], "argument --limit: must be a whole number >= 1"),
        (["scheduler", "history", "--limit", "-1"], "argument --limit: must be a whole number >= 1, got '-1'"),
        # Accepted once, then time.sleep() raised ValueError while following a running run.
        (["logs", "r-1", "--follow", "--interval", "nan"], "argument --interval: must be a number of seconds greater than 0"),
        (["logs", "r-1", "--follow", "--interval", "-1"], "argument --interval: must be a number of seconds greater than 0"),
        # OverflowError from datetime and timedelta arithmetic.
        (["history", "--since", "99999999d"], "error: --since '99999999d' reaches back further than dates go"),
        (["stats", "--since", "9" * 40 + "s"], "reaches back further than dates go"),
        (["gc", "--older-than", "99999999999d"], "error: --older-than: '99999999999d' is longer than dates go"),
    ],
)
def test_out_of_range_numbers_are_usage_errors(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main_in_process(*argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_interval_too_long_for_the_calendar_is_refused_and_not_registered(tmp_path, monkeypatch, capsys):
    # The schedule was registered, then computing its next fire time raised OverflowError
    # (and would have, in every scheduler reading it).
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flow.yaml").write_text("tasks:\n  - id: a\n    run: shell\n    argv: [echo, hi]\n")
    assert main_in_process("scheduler", "add", "flow.yaml", "--every", "99999999999d") == 1
    err = capsys.readouterr().err
    assert err == "error: schedule 'flow': every must be at most 100 years, got '99999999999d' (fix: every: 1d, 1w or 30d)\n"
    assert main_in_process("scheduler", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out) == []


def test_sql_writes_lists_structs_and_blobs_as_csv_and_json(tmp_path, monkeypatch, capsys):
    # polars cannot write nested columns as CSV (a ComputeError traceback) nor binary
    # ones as JSON (a Rust panic): they are written as JSON text and hex.
    monkeypatch.chdir(tmp_path)
    query = "SELECT [1, 2] AS l, {'a': 'x'} AS s, 'ab'::BLOB AS b, 3 AS n"
    assert main_in_process("sql", query, "--format", "csv") == 0
    assert capsys.readouterr().out == 'l,s,b,n\n"[1, 2]","{""a"": ""x""}",6162,3\n'
    assert main_in_process("sql", query, "--json") == 0
    assert json.loads(capsys.readouterr().out) == [{"l": [1, 2], "s": {"a": "x"}, "b": "6162", "n": 3}]


def test_history_of_runs_that_have_not_ended(tmp_path, monkeypatch, capsys):
    # With only unfinished runs listed, duration_s is a column of nulls, which polars
    # refused to round: a traceback instead of the list.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KERNELFLOW_HOME", str(tmp_path / "store"))
    (tmp_path / "gated.yaml").write_text(
        "tasks:\n  - id: count\n    run: shell\n    argv: [echo, '1']\n"
        "  - id: review\n    needs: [count]\n    approval: {message: Ship it?}\n"
    )
    assert main_in_process("run", "gated.yaml", "--no-progress") == 3
    capsys.readouterr()
    assert main_in_process("history", "--status", "waiting") == 0
    out = capsys.readouterr().out
    assert "waiting" in out and "gated" in out


@pytest.mark.parametrize("name", ["", ".hidden", "a/b"])
def test_removing_a_schedule_that_cannot_exist_is_a_clear_error(tmp_path, monkeypatch, capsys, name):
    # The store's file layer raised ValueError("not a schedule name") as a traceback.
    monkeypatch.chdir(tmp_path)
    assert main_in_process("scheduler", "remove", name) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: schedule name must be 1 to 100 letters") and f"got {name!r}" in err
