"""The tutorial notebooks run top to bottom in a real kernel and show what they teach."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import nbformat
import pytest
from kernelflow.store import FolderStore
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
CONTROL_FLOW = ROOT / "notebooks" / "02-control-flow.ipynb"


def _cell(nb, start: str):
    """The first code cell whose source starts with ``start``."""
    return next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(start))


def _text(cell) -> str:
    """Everything a cell printed or displayed as plain text."""
    parts = []
    previous = None
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            # One print can reach the notebook as several stream messages when the kernel
            # flushes in its middle (seen under load): consecutive pieces are one text.
            if previous is not None and previous.get("output_type") == "stream" and previous["name"] == out["name"]:
                parts[-1] += out["text"]
            else:
                parts.append(out["text"])
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
        previous = out
    return "\n".join(parts)


def test_the_control_flow_notebook_is_saved_clean():
    """Small, outputs cleared, nbformat 4, a python3 kernel: what a reader should get from git."""
    nb = nbformat.read(CONTROL_FLOW, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert code[0].source.startswith("%load_ext kernelflow")
    assert CONTROL_FLOW.stat().st_size < 30_000
    # Every kind of step is taught, each with an explanation before it.
    sources = "\n".join(c.source for c in code)
    for needle in ("when=", "kf.switch(", "max_parallel=", "back_to=", "max_iterations", "kf.subworkflow(",
                   "backoff=", "fallback=", "compensate=", "kf.RunFailedError", "continue_on_failure=True",
                   "kf.shell([", "forEach:", "python:parse", "%%kfsql"):  # fmt: skip
        assert needle in sources, needle
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 10


@pytest.mark.slow
def test_the_control_flow_notebook_runs_top_to_bottom(tmp_path, kernel_env):
    workdir = tmp_path / "work"
    workdir.mkdir()
    copy = workdir / CONTROL_FLOW.name
    shutil.copy(CONTROL_FLOW, copy)
    nb = nbformat.read(copy, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    errors = [f"{o.ename}: {o.evalue}" for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []

    # 1. when + switch
    triage = _text(_cell(nb, "small = triage.run"))
    assert "small: US carrier | review skipped" in triage
    assert "big: courier | review succeeded -> a human looks at 250" in triage
    # 2. forEach with maxParallel
    fanout = _text(_cell(nb, "run = fanout.run"))
    assert "'outputs': [0, 1, 4, 9, 16, 25], 'count': 6, 'succeeded': 6" in fanout and "total: 55" in fanout
    # 3. back_to: two jumps, then done
    assert "job-7 done after 3 polls" in _text(_cell(nb, "run = poll.run"))
    # 4. sub-workflow
    assert "shipped with LABEL-A007" in _text(_cell(nb, "print(fulfil.run"))
    # 5. retries then success; retries exhausted then the fallback
    resilient = _text(_cell(nb, "run = resilient.run"))
    assert "data priced in EUR from the cache" in resilient
    assert "download ┆ succeeded ┆ 3" in resilient
    # 6. compensation, in reverse order, after the failure was caught
    booking = _text(_cell(nb, "try:\n    booking.run"))
    assert "task 'car' raised RuntimeError: no cars left" in booking
    assert "['cancel hotel by the sea', 'cancel flight to Lisbon']" in booking
    assert booking.count("CompensationStarted") == 2 and booking.count("CompensationSucceeded") == 2
    # 7. continue_on_failure
    digest = _text(_cell(nb, "run = digest.run"))
    assert "succeeded {'rows': 3, 'enriched': False}" in digest and "enrich  ┆ failed" in digest
    # 8. + 9. the Python cell and its YAML twin give the same results
    assert "42 [0, 1, 4, 9, 16]" in _text(_cell(nb, "py = numbers_py.run"))
    assert "42 [0, 1, 4, 9, 16]" in _text(_cell(nb, "ym = numbers_yaml.run"))
    yaml_cell = _cell(nb, "%%workflow numbers_yaml")
    assert "square ← parse" in _text(yaml_cell)
    # 10. %%kfsql over the events
    counts = ast.literal_eval(_text(_cell(nb, "dict(counts.iter_rows())")))
    assert counts["CompensationSucceeded"] == 2 and counts["FallbackUsed"] == 1
    assert counts["LoopJumped"] == 2 and counts["TaskReset"] == 2 and counts["SwitchMatched"] == 2
    assert counts["RunFailed"] == 1 and counts["RunSucceeded"] == counts["RunStarted"] - 1

    # The store agrees: every workflow of the notebook ran, the child run names its parent.
    store = FolderStore(kernel_env)
    runs = store.sql("SELECT workflow, status FROM runs ORDER BY started_at").rows()
    assert [w for w, _ in runs] == ["triage", "triage", "fanout", "poll", "fulfil", "shipping", "resilient",
                                    "booking", "digest", "numbers_py", "numbers_yaml"]  # fmt: skip
    assert [w for w, s in runs if s != "succeeded"] == ["booking"]
    child = store.sql("SELECT payload FROM events WHERE type = 'RunStarted' AND workflow = 'shipping'")
    assert json.loads(child["payload"][0])["parent_task"] == "ship"


TIME_TRAVEL = ROOT / "notebooks" / "03-time-travel.ipynb"


def _last_dict(text: str) -> dict:
    """The last printed line that is a dict literal (the notebook's `calls` counter)."""
    return ast.literal_eval(next(line for line in reversed(text.splitlines()) if line.startswith("{")))


def test_the_time_travel_notebook_is_saved_clean():
    nb = nbformat.read(TIME_TRAVEL, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert code[0].source.startswith("%load_ext kernelflow")
    assert TIME_TRAVEL.stat().st_size < 30_000
    sources = "\n".join(c.source for c in code)
    for needle in ("%%kfsql", "state_at($run_id", "run.at(", "run.resume()", "@kf.approval(", "kf.approve(",
                   "run.replay()", "kf.remember(", "FROM approvals"):  # fmt: skip
        assert needle in sources, needle
    assert sum(c.source.startswith("%%workflow readings") for c in code) == 2  # defined, then fixed
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 10


@pytest.mark.slow
def test_the_time_travel_notebook_runs_top_to_bottom(tmp_path, kernel_env):
    workdir = tmp_path / "work"
    workdir.mkdir()
    copy = workdir / TIME_TRAVEL.name
    shutil.copy(TIME_TRAVEL, copy)
    nb = nbformat.read(copy, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    errors = [f"{o.ename}: {o.evalue}" for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []

    # 1. the run fails in clean; fetch and the sensor ran once
    first = _text(_cell(nb, "run = readings.run"))
    assert ": failed in " in first and "clean: ValueError: 1 impossible reading(s): [-999.0]" in first
    assert _last_dict(first) == {"fetch": 1, "sensor": 1, "clean": 1}
    # 2. the past: state_at in SQL with a notebook variable, and run.at(...)
    state = _text(_cell(nb, "%%kfsql\nSELECT task_id, status, attempt, output FROM state_at"))
    assert "[12.5,13.0,-999.0,14.5]" in state and state.count("pending") == 2
    moments = _text(_cell(nb, "for point in"))
    assert "at 0        (seq 0): run running, tasks {'fetch': 'pending', 'clean': 'pending', 'report': 'pending'}" in moments
    assert "(seq 4): run running, tasks {'fetch': 'succeeded', 'clean': 'pending', 'report': 'pending'}" in moments
    assert "(seq 7): run running, tasks {'fetch': 'succeeded', 'clean': 'failed', 'report': 'pending'}" in moments
    assert "fetch returned [12.5, 13.0, -999.0, 14.5]" in moments
    # 3. fixed and resumed: the completed task did not run again
    resumed = _text(_cell(nb, "run.resume()"))
    assert ": succeeded in " in resumed and "3 readings, mean 13.33" in resumed
    assert _last_dict(resumed) == {"fetch": 1, "sensor": 1, "clean": 2, "report": 1}
    history = _text(_cell(nb, "%%kfsql\nSELECT seq, type, task_id, payload->>'from_version'"))
    assert history.count("RunResumed") == 1 and history.count("TaskReset") == 2
    then = _text(_cell(nb, "failed_at ="))
    assert "at seq 9: run failed; clean: ValueError: 1 impossible reading(s): [-999.0]" in then
    assert "run succeeded; clean returned [12.5, 13.0, 14.5]" in then
    # 4. an approval gate, answered in the notebook
    assert "waiting - Publish 3 readings to {table}?" in _text(_cell(nb, "gated = publishing.run()"))
    assert "pending" in _text(_cell(nb, "%%kfsql\nSELECT task_id, message, status"))
    answered = _text(_cell(nb, "kf.approve(gate_run"))
    assert "succeeded: 3 readings in readings_daily, approved by ana (numbers checked)" in answered
    answer = _text(_cell(nb, "%%kfsql\nSELECT status, answered_by"))
    assert "granted" in answer and "ana" in answer and "readings_daily" in answer
    # 5. replay: as recorded, without reading the sensor again; a variant differs at report
    replayed = _text(_cell(nb, "print(run.replay()"))
    assert "every task behaved as recorded" in replayed
    assert _last_dict(replayed) == {"fetch": 2, "sensor": 1, "clean": 3, "report": 2}
    variant = _text(_cell(nb, "def report(clean):"))
    assert "1 difference(s); first: report: output '3 readings, max 14.50', recorded '3 readings, mean 13.33'" in variant

    # The store agrees: one run of readings, failed then resumed to success, fetch started once.
    store = FolderStore(kernel_env)
    runs = dict(store.sql("SELECT workflow, status FROM runs").rows())
    assert runs == {"readings": "succeeded", "publishing": "succeeded"}
    events = store.sql(
        "SELECT type, task_id, payload, actor FROM events WHERE workflow = 'readings' ORDER BY seq"
    ).rows()  # fmt: skip
    types = [t for t, *_ in events]
    assert types.count("RunStarted") == 1 and types.count("RunFailed") == 1 and types[-1] == "RunSucceeded"
    assert [tid for t, tid, *_ in events if t == "TaskStarted"] == ["fetch", "clean", "clean", "report"]
    resumed_payload = json.loads(next(p for t, _, p, _ in events if t == "RunResumed"))
    assert resumed_payload["from_status"] == "failed" and resumed_payload["from_version"] != resumed_payload["version"]
    granted = store.sql("SELECT actor FROM events WHERE workflow = 'publishing' AND type = 'ApprovalGranted'")
    assert json.loads(granted["actor"][0])["name"] == "ana"


WIDGETS = ROOT / "notebooks" / "04-widgets-and-approvals.ipynb"


def test_the_widgets_notebook_is_saved_clean():
    nb = nbformat.read(WIDGETS, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert WIDGETS.stat().st_size < 30_000
    sources = "\n".join(c.source for c in code)
    for needle in ("%load_ext kernelflow", "@kf.approval(", "kf.approve(", "kf.approvals()", "kf.dag(", "kf.timeline(", "AlertWidget("):
        assert needle in sources, needle


def _html(cell) -> list[str]:
    """Each text/html output of ``cell``, with the SVG pictures it embeds (as data URIs) appended."""
    import html

    from kernelflow.widgets.fallback import embedded_svgs

    pages = [o["data"]["text/html"] for o in cell.get("outputs", []) if "text/html" in o.get("data", {})]
    return [html.unescape(p + "".join(embedded_svgs(p))) for p in pages]


@pytest.mark.slow
def test_the_widgets_notebook_runs_and_saves_the_final_state_of_each_widget(tmp_path, kernel_env):
    nb = nbformat.read(WIDGETS, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    ran = _cell(nb, "run = ledger.run()")
    dag_html, gate_html = _html(ran)
    # Both outputs were re-sent after the approval: the saved pictures show the end, not the gate.
    assert dag_html.count("kf-task kf-succeeded") == 3 and "kf-waiting" not in dag_html
    assert "granted" in gate_html and "ana" in gate_html
    assert "'waiting'" in _text(ran)
    assert "sent 2 orders to main, approved by ana" in _text(_cell(nb, "answer = kf.approve("))
    assert "[[1, 'loaded 5 orders\\n']]" in _text(_cell(nb, "dag = kf.dag("))
    timeline = _html(_cell(nb, "kf.timeline(run)"))[0]
    assert "kf-timeline" in timeline and "<svg" in timeline
    assert "'send': 'waiting'" in _text(_cell(nb, "asked = "))
    alert = _html(_cell(nb, "from datetime import"))[0]
    assert "kf-alert" in alert and "41.7" in alert
    store = FolderStore(kernel_env)
    row = store.sql("SELECT status, answered_by, input FROM approvals").row(0)
    assert row[:2] == ("granted", "ana") and json.loads(row[2]) == {"ledger": "main", "limit": 2}
    assert store.sql("SELECT status FROM runs").item() == "succeeded"


ANOMALIES = ROOT / "notebooks" / "05-anomalies.ipynb"


def test_the_anomalies_notebook_is_saved_clean():
    nb = nbformat.read(ANOMALIES, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert ANOMALIES.stat().st_size < 30_000
    sources = "\n".join(c.source for c in code)
    for needle in ("kf.alert_channel(", "kf.alerts(", "task_baselines", "AlertDelivery", "%load_ext kernelflow"):
        assert needle in sources, needle


@pytest.mark.slow
def test_the_anomalies_notebook_catches_the_slowdown_inline(tmp_path, kernel_env):
    nb = nbformat.read(ANOMALIES, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    history = _cell(nb, "import random")
    assert _text(history).rstrip().endswith("0)")  # twelve normal runs, no alert
    slow = _cell(nb, 'speed["load"] = 0.18')
    banners = [h for h in _html(slow) if "kf-alert" in h]
    assert len(banners) == 1 and "duration" in banners[0]  # the alert, in the cell of the run that raised it
    assert "('duration', 'load'," in _text(_cell(nb, "from kernelflow import alert_delivery"))
    store = FolderStore(kernel_env)
    row = store.sql("SELECT task_id, rule, notified FROM alerts").row(0)
    assert row == ("load", "duration", 1)
    assert "alerts.duration.window must be a whole number of at least 1, got -1" in _text(nb.cells[-2])


BATCH = ROOT / "notebooks" / "06-batch-and-schedules.ipynb"


def test_the_batch_notebook_is_saved_clean():
    nb = nbformat.read(BATCH, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert BATCH.stat().st_size < 30_000
    sources = "\n".join(c.source for c in code)
    for needle in ('"run", "daily.ipynb", "-p"', "kf.notebook(", "kf.record(", "kf.schedule(", "kf.schedules()",
                   '"scheduler", "start"', "signal.SIGTERM", "FROM triggers", "--webhooks", "sign(", '"metrics"'):  # fmt: skip
        assert needle in sources, needle


@pytest.mark.slow
def test_the_batch_notebook_runs_a_batch_a_notebook_step_schedules_and_a_webhook(tmp_path, kernel_env):
    copy = tmp_path / BATCH.name
    shutil.copy(BATCH, copy)
    nb = nbformat.read(copy, as_version=4)
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    assert "parameter 'limit' expects int" in _text(_cell(nb, 'cli("run", "daily.ipynb", "-p", "limit", "lots"'))
    assert _text(_cell(nb, 'run = monthly.run(')).strip().endswith("'610 sold; best: us, eu'")
    store = FolderStore(kernel_env)
    daily = store.sql("SELECT status, parameters, output_notebook FROM runs WHERE workflow = 'daily'").row(0)
    assert daily[0] == "succeeded" and json.loads(daily[1]) == {"limit": 8} and daily[2] == str(tmp_path / "out" / "daily.ipynb")
    beats = store.sql("SELECT count(*) AS n FROM triggers t JOIN runs r USING (trigger_id) WHERE t.schedule = 'heartbeat' AND r.status = 'succeeded'")
    assert beats["n"][0] >= 3
    assert "scheduler exit code: 0" in _text(_cell(nb, "scheduler = subprocess.Popen"))
    answers = _text(_cell(nb, "import httpx")).splitlines()
    assert answers[0].startswith("202") and "'started'" in answers[0]
    assert answers[1].startswith("401") and answers[2].startswith("202") and "'filtered'" in answers[2]
    assert store.sql("SELECT outcome FROM triggers WHERE schedule = 'on-push'")["outcome"].to_list() == ["succeeded"]
    assert 'kernelflow_runs_total{status="succeeded",workflow="monthly"} 1.0' in _text(nb.cells[-1])


SCALE_OUT = ROOT / "notebooks" / "07-scale-out.ipynb"


def test_the_scale_out_notebook_is_saved_clean():
    nb = nbformat.read(SCALE_OUT, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert SCALE_OUT.stat().st_size < 30_000
    sources = "\n".join(c.source for c in code)
    for needle in ("--executor processes", "kf.use_dask(", "dashboard_link", "--executor dask", "@kf.for_each(",
                   "os._exit(1)", "retries=2", '"doctor"', '"plugins"'):  # fmt: skip
        assert needle in sources, needle


@pytest.mark.slow
def test_the_scale_out_notebook_runs_processes_a_cluster_a_fan_out_and_survives_a_dead_worker(tmp_path, kernel_env):
    copy = tmp_path / SCALE_OUT.name
    shutil.copy(SCALE_OUT, copy)
    nb = nbformat.read(copy, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    assert "none of them this kernel: True" in _text(_cell(nb, "run = crunch.run()"))
    assert "dashboard: http://127.0.0.1:" in _text(_cell(nb, 'print("dashboard:"'))
    shown = _text(_cell(nb, "big = fanout.run(")).strip().splitlines()[-1]  # after the live DAG's text form
    assert ast.literal_eval(shown) == {"items": 2000, "sum": sum(x * x for x in range(2000))}
    assert "ok: everything kernelflow needs is in order" in _text(_cell(nb, "import subprocess, sys"))
    store = FolderStore(kernel_env)
    attempts = store.sql(
        "SELECT a.attempt, a.status, a.error_type FROM task_attempts a JOIN runs r USING (run_id) "
        "WHERE r.workflow = 'fragile' ORDER BY a.attempt"
    ).rows()
    assert attempts[0][:2] == (1, "failed") and attempts[-1][:2] == (2, "succeeded"), attempts
    executors = store.sql(
        "SELECT DISTINCT payload->>'executor' AS ex FROM events e JOIN runs r USING (run_id) "
        "WHERE r.workflow = 'fanout' AND e.type = 'TaskStarted' AND e.task_id = 'square'"
    )["ex"].to_list()
    assert executors == ["dask"]
