"""`kernelflow history | show | sql` against a real store, as subprocesses."""

from __future__ import annotations

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
