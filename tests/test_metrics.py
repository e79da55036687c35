"""kernelflow.metrics against a real store with real runs: the exposition text, parsed."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import kernelflow as kf
from kernelflow import events as ev
from kernelflow.exceptions import KernelflowError
from kernelflow.metrics import (
    RUN_BUCKETS,
    TASK_BUCKETS,
    StoreCollector,
    render,
    serve,
    summary,
)

SOURCE = """\
import kernelflow as kf

def load(n=3):
    return list(range(n))

@kf.task(retries=1, retry_delay="1ms")
def check(load):
    if len(load) > 3:
        raise ValueError(f"{len(load)} rows is too many")
    return len(load)
"""

GATED = """\
import kernelflow as kf

def prepare():
    return 1

@kf.approval("Go on?")
def publish(prepare):
    return prepare
"""


def define(source: str, name: str, tasks: list[str]) -> kf.Workflow:
    ns: dict = {}
    exec(source, ns)
    return kf.workflow(name, [ns[t] for t in tasks])


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict, family: str, sample: str, **labels: str) -> float | None:
    found = [s.value for s in fams[family].samples if s.name == sample and s.labels == labels]
    assert len(found) <= 1
    return found[0] if found else None


@pytest.fixture
def store_with_runs():
    wf = define(SOURCE, "etl", ["load", "check"])
    ok = [wf.run() for _ in range(3)]
    bad = [wf.run(n=5, raise_on_failure=False) for _ in range(2)]
    gated = define(GATED, "gated", ["prepare", "publish"]).run()
    assert gated.status == "waiting"
    kf.circuit("payments").open()
    kf.circuit("search").open()
    kf.circuit("search").close()  # known, and closed again
    return kf.open_store(), ok, bad, gated


def test_counts_match_the_runs_made(store_with_runs):
    store, *_ = store_with_runs
    fams = families(render(store))
    assert value(fams, "kernelflow_runs", "kernelflow_runs_total", workflow="etl", status="succeeded") == 3
    assert value(fams, "kernelflow_runs", "kernelflow_runs_total", workflow="etl", status="failed") == 2
    # the waiting run is under way, not counted among the ended ones
    assert value(fams, "kernelflow_runs", "kernelflow_runs_total", workflow="gated", status="waiting") is None
    assert value(fams, "kernelflow_active_runs", "kernelflow_active_runs", workflow="gated") == 1
    assert value(fams, "kernelflow_active_runs", "kernelflow_active_runs", workflow="etl") is None
    # attempts: 5 loads succeeded; check succeeded 3 times and failed twice per bad run (1 retry)
    tasks = "kernelflow_tasks_total"
    assert value(fams, "kernelflow_tasks", tasks, workflow="etl", task="load", status="succeeded") == 5
    assert value(fams, "kernelflow_tasks", tasks, workflow="etl", task="check", status="succeeded") == 3
    assert value(fams, "kernelflow_tasks", tasks, workflow="etl", task="check", status="failed") == 4
    assert value(fams, "kernelflow_circuit_state", "kernelflow_circuit_state", circuit="payments") == 2
    assert value(fams, "kernelflow_circuit_state", "kernelflow_circuit_state", circuit="search") == 0
    events = store.sql("SELECT count(*) FROM events").item()
    assert value(fams, "kernelflow_store_events", "kernelflow_store_events_total") == events > 0


def check_histogram(fams: dict, name: str, bounds: tuple, labels: dict, count: int, total: float) -> None:
    samples = [s for s in fams[name].samples if s.name == name + "_bucket" and
               {k: v for k, v in s.labels.items() if k != "le"} == labels]  # fmt: skip
    les = [s.labels["le"] for s in samples]
    assert les == [*(str(float(b)) for b in bounds), "+Inf"]
    counts = [s.value for s in samples]
    assert counts == sorted(counts), "buckets are cumulative"
    assert counts[-1] == count
    assert value(fams, name, name + "_count", **labels) == count
    assert math.isclose(value(fams, name, name + "_sum", **labels), total, rel_tol=1e-6, abs_tol=1e-9)


def test_histograms_have_real_buckets_count_and_sum(store_with_runs):
    store, *_ = store_with_runs
    fams = families(render(store))
    runs = store.sql("SELECT count(*) AS n, sum(duration_s) AS s FROM runs WHERE workflow = 'etl'").row(0)
    check_histogram(fams, "kernelflow_run_duration_seconds", RUN_BUCKETS, {"workflow": "etl"}, runs[0], runs[1])
    att = store.sql(
        "SELECT count(*) AS n, sum(duration_ms) / 1e3 AS s FROM task_attempts WHERE workflow = 'etl' AND task_id = 'check'"
    ).row(0)
    assert att[0] == 7
    check_histogram(fams, "kernelflow_task_duration_seconds", TASK_BUCKETS, {"workflow": "etl", "task": "check"}, *att)
    # A bucket holds exactly the attempts not longer than its bound.
    under_1ms = store.sql("SELECT count(*) FROM task_attempts WHERE task_id = 'check' AND duration_ms <= 1").item()
    assert value(fams, "kernelflow_task_duration_seconds", "kernelflow_task_duration_seconds_bucket",
                 workflow="etl", task="check", le="0.001") == under_1ms  # fmt: skip
    # The waiting run has not ended: no duration for it.
    assert value(fams, "kernelflow_run_duration_seconds", "kernelflow_run_duration_seconds_count", workflow="gated") is None


def test_alerts_are_counted_by_workflow_check_and_severity(store_with_runs):
    from kernelflow.run_append import append_if_free

    store, ok, *_ = store_with_runs
    for severity in ("warning", "warning", "critical"):
        alert = {"workflow": "etl", "task": "check", "run_id": ok[0].run_id, "metric": "duration_s", "value": 2.0,
                 "rule": "duration", "severity": severity, "message": "slow"}  # fmt: skip
        assert append_if_free(store, ok[0].run_id, ev.ALERT_RAISED, "check", 1, alert) is not None
    fams = families(render(store))
    counter = "kernelflow_alerts_total"
    assert value(fams, "kernelflow_alerts", counter, workflow="etl", check="duration", severity="warning") == 2
    assert value(fams, "kernelflow_alerts", counter, workflow="etl", check="duration", severity="critical") == 1


def test_metrics_work_without_a_triggers_view(store_with_runs):
    from prometheus_client import CollectorRegistry, generate_latest

    store, *_ = store_with_runs
    collector = StoreCollector(store)
    try:
        # The collector queries on its own thread (its own DuckDB connection): drop the view there.
        collector._worker.submit(store.sql, "DROP VIEW IF EXISTS triggers").result()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        fams = families(generate_latest(registry).decode())
    finally:
        collector.close()
    assert "kernelflow_triggers" not in fams
    assert value(fams, "kernelflow_runs", "kernelflow_runs_total", workflow="etl", status="succeeded") == 3


def test_an_empty_store_has_metrics_with_no_samples(tmp_path):
    store = kf.open_store(tmp_path / "empty")
    fams = families(render(store))
    assert value(fams, "kernelflow_store_events", "kernelflow_store_events_total") == 0
    assert fams["kernelflow_runs"].samples == []
    assert not (tmp_path / "empty").exists()  # reading creates nothing


def test_serve_answers_scrapes_over_http_on_loopback(store_with_runs):
    store, *_ = store_with_runs
    server, thread = serve(store, port=0)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        first = families(httpx.get(url, timeout=30).text)
        assert value(first, "kernelflow_runs", "kernelflow_runs_total", workflow="etl", status="failed") == 2
        define(SOURCE, "etl", ["load", "check"]).run(n=5, raise_on_failure=False)
        second = families(httpx.get(url, timeout=30).text)  # read at scrape time: the new run is there
        assert value(second, "kernelflow_runs", "kernelflow_runs_total", workflow="etl", status="failed") == 3
    finally:
        server.shutdown()
        server.server_close()
    assert thread.daemon


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_serve_refuses_a_non_loopback_address(host, tmp_path):
    with pytest.raises(KernelflowError, match="not a loopback address"):
        serve(kf.open_store(tmp_path / "s"), host=host)


def test_summary_is_the_same_numbers_as_json(store_with_runs):
    store, *_ = store_with_runs
    data = summary(store)
    runs = {(r["labels"]["workflow"], r["labels"]["status"]): r["value"] for r in data["kernelflow_runs_total"]}
    assert runs == {("etl", "failed"): 2, ("etl", "succeeded"): 3}
    counts = [r for r in data["kernelflow_run_duration_seconds"] if r["labels"].get("sample") == "count"]
    assert counts == [{"labels": {"workflow": "etl", "sample": "count"}, "value": 5.0}]


def test_the_metrics_command_prints_the_exposition(store_with_runs, kernelflow_home):
    kf.open_store().close()
    env = {**os.environ, "KERNELFLOW_HOME": str(kernelflow_home)}
    res = subprocess.run([sys.executable, "-m", "kernelflow.cli", "metrics"], env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    fams = families(res.stdout)
    assert value(fams, "kernelflow_runs", "kernelflow_runs_total", workflow="etl", status="succeeded") == 3
    res = subprocess.run([sys.executable, "-m", "kernelflow.cli", "metrics", "--json"], env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    import json

    assert res.returncode == 0, res.stderr
    assert {"labels": {"circuit": "payments"}, "value": 2.0} in json.loads(res.stdout)["kernelflow_circuit_state"]
