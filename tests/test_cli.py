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
