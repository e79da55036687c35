"""The CLI's read commands, validate, --json, progress and exit codes, against a real store.

Commands that are about the CLI process (exit codes, --follow against a run
driven by another process) run the real ``kernelflow`` in a subprocess.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kernelflow as kf

CLI = [sys.executable, "-m", "kernelflow.cli"]


def cli(*args: str, home: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERNELFLOW_HOME": str(home)}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120, cwd=cwd)


def popen(*args: str, home: Path, cwd: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "KERNELFLOW_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([*CLI, *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture
def runs(kernelflow_home):
    ns: dict = {}
    exec(
        "import logging\n"
        "def a(n=2):\n    print(f'loading {n} rows')\n    logging.getLogger('etl').warning('careful with %s', n)\n    return n\n"
        "def b(a):\n    if a > 2:\n        raise ValueError(f'too big: {a}')\n    return a\n",
        ns,
    )
    wf = kf.workflow("demo", [ns["a"], ns["b"]])
    ok = wf.run()
    bad = wf.run(n=5, raise_on_failure=False)
    kf.open_store().close()  # compact and release, as a finished process would
    return ok, bad


# --- history ------------------------------------------------------------------------------


def test_history_since_and_json(runs, kernelflow_home):
    ok, bad = runs
    res = cli("history", "--since", "1h", "--json", home=kernelflow_home)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["runs"]
    assert [r["run_id"] for r in rows] == [bad.run_id, ok.run_id]
    assert set(rows[0]) == {"run_id", "workflow", "workflow_version", "status", "started_at", "ended_at",
                            "duration_s", "tasks", "succeeded", "failed", "skipped"}  # fmt: skip
    assert rows[0]["status"] == "failed" and rows[0]["failed"] == 1 and rows[0]["started_at"].endswith("+00:00")
    res = cli("history", "--since", "2999-01-01", home=kernelflow_home)
    assert res.returncode == 0 and "no runs recorded yet matching the filters" in res.stdout
    res = cli("history", "--since", "2000-01-01T00:00", "--status", "succeeded", home=kernelflow_home)
    assert ok.run_id in res.stdout and bad.run_id not in res.stdout


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-45", "-3d"])
def test_a_bad_since_is_one_usage_line(runs, kernelflow_home, bad):
    for command in ("history", "stats"):
        res = cli(command, f"--since={bad}", home=kernelflow_home)
        assert res.returncode == 2
        assert "--since" in one_error_line(res.stderr)


# --- show -----------------------------------------------------------------------------------


def test_show_json(runs, kernelflow_home):
    _, bad = runs
    res = cli("show", bad.run_id, "--json", home=kernelflow_home)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert set(data) == {"run", "tasks", "attempts"}
    assert data["run"]["run_id"] == bad.run_id and data["run"]["status"] == "failed"
    assert data["run"]["inputs"] == {"n": 5}
    tasks = {t["task"]: t for t in data["tasks"]}
    assert tasks["a"]["status"] == "succeeded" and tasks["b"]["status"] == "failed"
    assert tasks["b"]["error"]["exc_type"] == "ValueError" and "too big: 5" in tasks["b"]["error"]["traceback"]
    assert [(a["task"], a["status"]) for a in data["attempts"]] == [("a", "succeeded"), ("b", "failed")]


def test_unknown_run_names_similar_ids(runs, kernelflow_home):
    ok, _ = runs
    typo = ok.run_id[:-1] + ("0" if ok.run_id[-1] != "0" else "1")
    for command in (["show", typo], ["show", typo, "--json"], ["logs", typo]):
        res = cli(*command, home=kernelflow_home)
        assert res.returncode == 1
        line = one_error_line(res.stderr)
        assert f"no run {typo!r}" in line and ok.run_id in line


# --- logs -----------------------------------------------------------------------------------


def test_logs_show_output_and_tracebacks_in_order(runs, kernelflow_home):
    _, bad = runs
    res = cli("logs", bad.run_id, home=kernelflow_home)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "── a #1 · output ──" in out and "│ loading 5 rows" in out and "WARNING etl: careful with 5" in out
    assert "── b #1 · error ──" in out and "ValueError: too big: 5" in out
    assert out.index("loading 5 rows") < out.index("b #1: started") < out.index("Traceback")
    only_b = cli("logs", bad.run_id, "b", home=kernelflow_home).stdout
    assert "loading 5 rows" not in only_b and "too big: 5" in only_b


def test_logs_json_is_one_object_per_line(runs, kernelflow_home):
    _, bad = runs
    res = cli("logs", bad.run_id, "--json", home=kernelflow_home)
    entries = [json.loads(line) for line in res.stdout.splitlines()]
    assert all(set(e) == {"seq", "ts", "kind", "task", "attempt", "status", "item", "text"} for e in entries)
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)
    log = next(e for e in entries if e["kind"] == "log")
    assert log["task"] == "a" and log["attempt"] == 1 and "loading 5 rows" in log["text"]
    error = next(e for e in entries if e["kind"] == "error")
    assert error["task"] == "b" and error["text"].startswith("Traceback")
    assert entries[-1]["task"] is None and entries[-1]["status"] == "failed"


def test_logs_unknown_task_suggests_one(runs, kernelflow_home):
    _, bad = runs
    res = cli("logs", bad.run_id, "bb", home=kernelflow_home)
    assert res.returncode == 1
    line = one_error_line(res.stderr)
    assert "has no task 'bb'" in line and "did you mean b" in line


HOLD_YAML = """\
name: held
tasks:
  - id: hold
    run: held_mod:hold
    input: {{marker: "{marker}", gate: "{gate}"}}
  - id: after
    run: held_mod:after
    needs: [hold]
    input: {{fail: {fail}}}
"""

HELD_MOD = """\
import os, time
import kernelflow as kf

def hold(marker, gate):
    print("holding until the gate file goes")
    with open(marker + ".tmp", "w") as f:
        f.write(kf.context().run_id)
    os.replace(marker + ".tmp", marker)
    while os.path.exists(gate):
        time.sleep(0.02)
    return 1

def after(fail):
    print("after the hold")
    if fail:
        raise RuntimeError("after failed on purpose")
    return 2
"""


def wait_for(path: Path, proc: subprocess.Popen, deadline_s: float = 60) -> str:
    """The run id the held task writes (a condition, polled; not a sleep standing in for one)."""
    end = time.monotonic() + deadline_s
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "the held task did not start"
        time.sleep(0.02)
    return path.read_text()


def read_until(proc: subprocess.Popen, text: str) -> list[str]:
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} never came; got {lines}, stderr {proc.stderr.read()}")


@pytest.fixture
def held(tmp_path, kernelflow_home):
    def start(fail: bool = False) -> tuple[subprocess.Popen, str, Path]:
        gate, marker = tmp_path / "gate", tmp_path / "run_id"
        gate.write_text("hold")
        flow = tmp_path / "held.yaml"
        flow.write_text(HOLD_YAML.format(marker=marker, gate=gate, fail=str(fail).lower()))
        (tmp_path / "held_mod.py").write_text(HELD_MOD)
        runner = popen("run", str(flow), "--no-progress", home=kernelflow_home)
        procs.append(runner)
        return runner, wait_for(marker, runner), gate

    procs: list[subprocess.Popen] = []
    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate()


@pytest.mark.slow
@pytest.mark.parametrize("fail", [False, True])
def test_follow_prints_a_run_driven_elsewhere_until_it_ends(held, kernelflow_home, fail):
    runner, run_id, gate = held(fail)
    follower = popen("logs", run_id, "--follow", "--interval", "0.05", home=kernelflow_home)
    try:
        read_until(follower, "hold #1: started")  # following a run that is still going
        assert follower.poll() is None
        gate.unlink()  # let the run go on
        rest, err = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert "│ holding until the gate file goes" in rest and "│ after the hold" in rest
    if fail:
        assert follower.returncode == 1 and "after failed on purpose" in rest and "run: run failed" in rest
    else:
        assert follower.returncode == 0, err
        assert "run: run succeeded" in rest
    assert runner.wait(timeout=120) == (1 if fail else 0)


@pytest.mark.slow
def test_follow_exits_130_on_ctrl_c(held, kernelflow_home):
    runner, run_id, gate = held()
    follower = popen("logs", run_id, "--follow", "--interval", "0.05", home=kernelflow_home)
    read_until(follower, "hold #1: started")
    follower.send_signal(signal.SIGINT)
    _, err = follower.communicate(timeout=60)
    assert follower.returncode == 130 and err.strip() == "interrupted"
    gate.unlink()
    assert runner.wait(timeout=120) == 0


@pytest.mark.slow
def test_follow_notices_a_run_whose_driver_died(held, kernelflow_home):
    runner, run_id, _ = held()
    follower = popen("logs", run_id, "--follow", "--interval", "0.05", home=kernelflow_home)
    read_until(follower, "hold #1: started")
    runner.kill()
    runner.wait(timeout=60)
    _, err = follower.communicate(timeout=60)
    assert follower.returncode == 1
    assert "no process drives it" in one_error_line(err) and f"kernelflow resume {run_id}" in err


# --- stats ----------------------------------------------------------------------------------


def test_stats_per_workflow_and_task(runs, kernelflow_home):
    ns: dict = {}
    exec("def only():\n    return 1\n", ns)
    kf.workflow("other", [ns["only"]]).run()
    kf.open_store().close()
    res = cli("stats", "--json", home=kernelflow_home)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["since"] is None
    demo, other = data["workflows"]
    assert (demo["workflow"], demo["runs"], demo["succeeded"], demo["failed"]) == ("demo", 2, 1, 1)
    assert demo["success_rate"] == 0.5 and other["success_rate"] == 1.0
    assert demo["duration_s"]["p50"] <= demo["duration_s"]["p95"] <= demo["duration_s"]["max"]
    tasks = {t["task"]: t for t in demo["tasks"]}
    assert tasks["a"]["attempts"] == 2 and tasks["a"]["failures"] == 0 and tasks["b"]["failures"] == 1
    assert set(tasks["b"]["duration_s"]) == {"p50", "p95"}
    text = cli("stats", "--workflow", "demo", "--since", "1d", home=kernelflow_home)
    assert text.returncode == 0 and "demo since" in text.stdout and "2 runs, 1 succeeded, 1 failed" in text.stdout
    assert "success rate 50.0%" in text.stdout and "other" not in text.stdout
    none = cli("stats", "--workflow", "nope", home=kernelflow_home)
    assert none.returncode == 0 and "no runs recorded yet matching the filters" in none.stdout


# --- dlq, sql --json ----------------------------------------------------------------------------


def test_dlq_list_and_sql_json(runs, kernelflow_home):
    _, bad = runs
    res = cli("dlq", "list", "--json", home=kernelflow_home)
    assert res.returncode == 0, res.stderr
    (letter,) = json.loads(res.stdout)["dead_letters"]
    assert letter["run_id"] == bad.run_id and letter["inputs"] == {"n": 5} and letter["tasks_failed"] == 1
    res = cli("sql", "SELECT count(*) AS n FROM runs", "--json", home=kernelflow_home)
    assert json.loads(res.stdout) == [{"n": 2}]


# --- empty stores, folders that are not stores, usage ------------------------------------------------


@pytest.mark.parametrize("command", [["history", "--json"], ["stats"], ["stats", "--json"], ["dlq", "list", "--json"],
                                     ["metrics"]])  # fmt: skip
def test_read_commands_on_an_empty_store(tmp_path, command):
    res = cli(*command, home=tmp_path / "empty")
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "empty").exists()
    if "--json" in command:
        expected = {"history": {"runs": []}, "stats": {"since": None, "workflows": []}, "dlq": {"dead_letters": []}}
        assert json.loads(res.stdout) == expected[command[0]]
    elif command == ["stats"]:
        assert res.stdout == "no runs recorded yet\n"


@pytest.mark.parametrize("command", [["stats"], ["logs", "r-1"], ["show", "r-1", "--json"], ["metrics"]])
def test_read_commands_on_a_folder_that_is_not_a_store(tmp_path, command):
    (tmp_path / "notes.txt").write_text("hello")
    res = cli(*command, home=tmp_path)
    assert res.returncode == 1
    assert "is not a kernelflow store" in one_error_line(res.stderr)


@pytest.mark.parametrize("command", [["nope"], ["logs"], ["history", "--limit", "x"], ["validate"]])
def test_usage_errors_exit_2(tmp_path, command):
    res = cli(*command, home=tmp_path / "s")
    assert res.returncode == 2 and "usage:" in res.stderr


# --- validate --------------------------------------------------------------------------------


GOOD_YAML = """\
name: good
inputs: {{n: {{type: int, default: 2}}}}
tasks:
  - id: touch
    run: shell
    argv: ["{python}", "-c", "open(r'{marker}', 'w').write('ran')"]
  - id: after
    run: shell
    argv: [echo, done]
    needs: [touch]
"""


def notebook(path: Path, cells: list[str]) -> Path:
    doc = {
        "nbformat": 4, "nbformat_minor": 5, "metadata": {},
        "cells": [{"cell_type": "markdown", "metadata": {}, "source": "# title"}]
        + [{"cell_type": "code", "metadata": {}, "source": c, "outputs": [], "execution_count": None} for c in cells],
    }  # fmt: skip
    path.write_text(json.dumps(doc))
    return path


def test_validate_yaml_files_without_running_them(tmp_path, kernelflow_home):
    marker = tmp_path / "ran"
    good = tmp_path / "good.yaml"
    good.write_text(GOOD_YAML.format(python=sys.executable, marker=marker))
    res = cli("validate", str(good), home=kernelflow_home)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"ok: good: 2 tasks ({good})"
    assert not marker.exists() and not kernelflow_home.exists()  # nothing ran, nothing recorded
    broken = tmp_path / "broken.yaml"
    broken.write_text("tasks:\n  - id: a\n    run: shell\n    argv: ls -l\n")
    res = cli("validate", str(good), str(broken), str(tmp_path / "missing.yaml"), home=kernelflow_home)
    assert res.returncode == 1
    errors = res.stderr.splitlines()
    assert len(errors) == 2 and "Traceback" not in res.stderr
    assert errors[0].startswith(f"error: {broken} line 4, column 11: ") and "argv must be a list" in errors[0]
    assert errors[1] == f"error: {tmp_path / 'missing.yaml'}: file not found (fix: check the path)"
    assert "ok: good: 2 tasks" in res.stdout


def test_validate_notebooks_names_cell_and_line(tmp_path, kernelflow_home):
    marker = tmp_path / "executed"
    nb = notebook(tmp_path / "flows.ipynb", [
        "%pip install nothing\nimport pathlib\n"
        f"def process(item, factor=pathlib.Path(r'{marker}').write_text('x')):\n"
        f"    pathlib.Path(r'{marker}').write_text('ran')\n    return item\n",
        "%%workflow nightly\ninputs: {ids: list}\ntasks:\n  - id: each\n    forEach: {items: '{{inputs.ids}}', as: item}\n"
        "    run: python:process\n",
        f"%%workflow etl --max-parallel 2\nimport pathlib\npathlib.Path(r'{marker}').write_text('cell ran')\n"
        "def extract():\n    return [1]\ndef load(extract):\n    return extract\n",
        "%%workflow broken\ndef a():\n    return (\n",
        "%%workflow loop\ndef a(b):\n    return b\ndef b(a):\n    return a\n",
        "%%workflow typo\ninputs: {x: int}\ntasks:\n  - id: t\n    run: python:proces\n",
    ])  # fmt: skip
    res = cli("validate", str(nb), home=kernelflow_home)
    assert res.returncode == 1
    assert not marker.exists(), "validate ran the notebook's code"
    assert f"ok: nightly: 1 task ({nb} cell 3)" in res.stdout
    assert f"ok: etl: 2 tasks ({nb} cell 4) (Python cell: syntax and structure checked, not run)" in res.stdout
    errors = res.stderr.splitlines()
    assert len(errors) == 3, res.stderr
    assert errors[0].startswith(f"error: {nb} cell 5 line 3: syntax error")
    assert errors[1].startswith(f"error: {nb} cell 6 ") and "cycle" in errors[1]
    assert errors[2].startswith(f"error: {nb} cell 7 line 5") and "did you mean python:process" in errors[2]
    res = cli("validate", str(nb), "--json", home=kernelflow_home)
    assert res.returncode == 1
    data = json.loads(res.stdout)
    assert data["ok"] is False
    assert [(w["name"], w["tasks"], w["cell"], w["body"]) for w in data["workflows"]] == [
        ("nightly", 1, 3, "yaml"), ("etl", 2, 4, "python")]  # fmt: skip
    assert [p["cell"] for p in data["problems"]] == [5, 6, 7]
    assert set(data["problems"][0]) == {"path", "location", "message", "hint", "cell"}


def test_validate_a_notebook_without_workflows_or_not_a_notebook(tmp_path, kernelflow_home):
    empty = notebook(tmp_path / "plain.ipynb", ["x = 1\n"])
    garbage = tmp_path / "garbage.ipynb"
    garbage.write_text("{not json")
    res = cli("validate", str(empty), str(garbage), str(tmp_path / "notes.txt"), home=kernelflow_home)
    assert res.returncode == 1
    errors = res.stderr.splitlines()
    assert errors[0] == f"error: {empty}: the notebook has no %%workflow cell (fix: nothing to check)"
    assert errors[1].startswith(f"error: {garbage}: not a readable notebook")
    assert "neither a workflow file" in errors[2]


# --- run: --json, progress ---------------------------------------------------------------------------

FLOW_YAML = """\
name: cli_flow
inputs:
  n: {type: int, default: 2}
tasks:
  - id: double
    run: flow_mod:double
    input: {n: "{{inputs.n}}"}
  - id: check
    run: flow_mod:check
    needs: [double]
    input: {value: "{{tasks.double.output}}"}
"""

FLOW_MOD = """\
def double(n):
    return n * 2

def check(value):
    if value > 5:
        raise ValueError(f"value {value} is over 5")
    return value
"""


@pytest.fixture
def flow(tmp_path):
    path = tmp_path / "flow.yaml"
    path.write_text(FLOW_YAML)
    (tmp_path / "flow_mod.py").write_text(FLOW_MOD)
    return path


@pytest.mark.slow
def test_run_json_and_plain_progress_lines(flow, kernelflow_home):
    res = cli("run", str(flow), "--json", home=kernelflow_home)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["workflow"] == "cli_flow" and data["status"] == "succeeded" and data["tasks"] == {"succeeded": 2}
    assert data["failed"] == [] and data["waiting"] == []
    assert res.stderr == ""  # --json: no progress either
    res = cli("run", str(flow), "-p", "n", "3", home=kernelflow_home)  # stderr is a pipe: plain lines
    assert res.returncode == 1
    assert "✓ double succeeded (1/2 done)" in res.stderr and "✗ check failed (2/2 done)" in res.stderr
    assert "check: ValueError: value 6 is over 5" in res.stdout
    quiet = cli("run", str(flow), "--no-progress", home=kernelflow_home)
    assert quiet.returncode == 0 and quiet.stderr == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_follows_the_run(monkeypatch, tmp_path):
    from kernelflow.cli_progress import progress_mode, watch_runs

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert progress_mode(disabled=False) == "bar" and progress_mode(disabled=True) is None
    assert progress_mode(disabled=False, stream=io.StringIO()) == "lines"
    ns: dict = {}
    exec("def a():\n    return 1\ndef b(a):\n    return a\ndef c(a):\n    return a\n", ns)
    wf = kf.workflow("barred", [ns["a"], ns["b"], ns["c"]])
    with watch_runs("bar"):
        run = wf.run()
    with watch_runs("bar"):
        pass  # nothing started: nothing shown, and the observer is gone afterwards
    wf.run()
    out = terminal.getvalue()
    assert "barred" in out and run.run_id in out and "3/3" in out and "succeeded" in out
    assert out.count(run.run_id) >= 1 and out.count("barred r-") == out.count(f"barred {run.run_id}")


@pytest.mark.slow
def test_resume_a_yaml_run_with_progress_and_json(flow, kernelflow_home):
    failed = cli("run", str(flow), "-p", "n", "3", "--json", home=kernelflow_home)
    assert failed.returncode == 1
    run_id = json.loads(failed.stdout)["run_id"]
    (flow.parent / "flow_mod.py").write_text(FLOW_MOD.replace("value > 5", "value > 50"))  # the fix
    res = cli("resume", run_id, home=kernelflow_home)
    assert res.returncode == 0, res.stderr
    assert "✓ check succeeded (2/2 done)" in res.stderr and "double succeeded" not in res.stderr  # not re-run
    assert f"run {run_id} of cli_flow" in res.stdout
    again = cli("show", run_id, "--json", home=kernelflow_home)
    assert json.loads(again.stdout)["run"]["status"] == "succeeded"
