"""The anomaly detector on real runs: quiet on normal runs, an AlertRaised for a slowdown,
a failure-rate jump and a stuck task, listed by kf.alerts() and sent to a real local webhook."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator

import pytest
from http_server import HttpTestServer

import kernelflow as kf
from kernelflow import alert_delivery
from kernelflow import alert_channels_api as channels
from kernelflow import events as ev


@pytest.fixture(autouse=True)
def quiet_delivery(kernelflow_home, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("KERNELFLOW_NO_WATCH", "1")
    monkeypatch.setattr(alert_delivery, "BACKOFF_S", 0.05)
    alert_delivery.reset()
    yield
    assert alert_delivery.flush(20)
    alert_delivery.reset()
    for name in channels.channel_names():
        channels.remove_channel(name)


def _alerts_of(run: kf.Run) -> list[dict]:
    return [e.payload for e in run.store.read_run(run.run_id) if e.type == ev.ALERT_RAISED]


def _timed_workflow(name: str, seconds: dict[str, float], seed: int = 7) -> kf.Workflow:
    jitter = random.Random(seed)

    def work():
        time.sleep(seconds["v"] * jitter.uniform(0.9, 1.1))
        return 1

    return kf.workflow(name, [work])


def test_normal_runs_raise_nothing_and_a_3x_slowdown_is_caught() -> None:
    speed = {"v": 0.06}
    wf = _timed_workflow("slows_down", speed)
    runs = [wf.run() for _ in range(12)]
    assert [a for r in runs for a in _alerts_of(r)] == []
    speed["v"] = 0.18
    slow = wf.run()
    (alert,) = _alerts_of(slow)
    assert alert["rule"] == "duration" and alert["metric"] == "duration_s" and alert["task"] == "work"
    assert alert["value"] >= 2.5 * alert["baseline"] and alert["score"] >= 4
    assert "task 'work' took" in alert["message"] and alert["key"] == "slows_down/work/duration"
    assert len(alert["history"]) == 13  # the 12 earlier durations, then this one
    listed = kf.alerts()
    assert len(listed) == 1 and listed[0]["run_id"] == slow.run_id and listed[0]["severity"] == "warning"
    assert kf.alerts("slows_down").df.height == 1 and kf.alerts("other").df.height == 0
    (banner,) = listed.widgets()  # what a notebook shows for kf.alerts()
    assert banner.alert.run_id == slow.run_id and banner.alert.value == alert["value"]


def test_a_jump_from_no_failures_to_30_percent_is_caught_on_the_run() -> None:
    fail = {"now": False}

    def step():
        if fail["now"]:
            raise RuntimeError("upstream is down")
        return 1

    wf = kf.workflow("flaky_service", [step])
    for _ in range(30):
        assert wf.run().status == "succeeded"
    outcomes = [False] * 7 + [True] * 3
    alerted = []
    for failed in outcomes:
        fail["now"] = failed
        run = wf.run(raise_on_failure=False)
        alerted += [(run.status, a) for a in _alerts_of(run)]
    assert alerted, "3 failures in the last 10 runs after 30 clean ones must raise an alert"
    status, alert = alerted[0]
    assert status == "failed" and alert["rule"] == "error_rate" and alert["metric"] == "error_rate"
    assert alert["severity"] == "critical" and alert["task"] is None and alert["baseline"] == 0
    assert alert["value"] >= 0.2


def test_a_task_running_far_past_its_baseline_is_reported_while_it_runs() -> None:
    hold = {"v": 0.01}

    def step():
        time.sleep(hold["v"])
        return 1

    wf = kf.workflow("gets_stuck", [step])
    kf.alerts(wf, stuck={"factor": 2, "min_samples": 5})
    for _ in range(6):
        wf.run()
    hold["v"] = 1.6  # past p95 + 1 s (the check's smallest excess)
    run = wf.run()
    events = run.store.read_run(run.run_id)
    kinds = [e.type for e in events]
    raised = kinds.index(ev.ALERT_RAISED)
    assert raised < kinds.index(ev.TASK_SUCCEEDED)  # while the task was still running
    alert = events[raised].payload
    assert alert["rule"] == "stuck" and alert["metric"] == "running_s" and 1.0 <= alert["value"] < 1.6


def test_rules_switched_off_raise_nothing() -> None:
    speed = {"v": 0.06}
    wf = _timed_workflow("silenced", speed)
    kf.alerts(wf, duration=False, trend=False)
    for _ in range(11):
        wf.run()
    speed["v"] = 0.2
    assert _alerts_of(wf.run()) == []


def test_an_alert_goes_to_a_real_webhook_and_a_hanging_channel_does_not_slow_the_run() -> None:
    hook = HttpTestServer()
    hang = HttpTestServer()
    try:
        hook.route("POST", "/alerts", status=200, body="ok")
        hang.route("POST", "/alerts", status=200, body="late", delay=5)
        kf.alert_channel("ops", "webhook", url=hook.url + "/alerts")
        kf.alert_channel("slow", "webhook", url=hang.url + "/alerts", timeout_s=1)
        speed = {"v": 0.06}
        wf = _timed_workflow("notified", speed)
        kf.alerts(wf, channels=["ops", "slow"])
        for _ in range(11):
            wf.run()
        speed["v"] = 0.2
        started = time.monotonic()
        slow = wf.run()
        took = time.monotonic() - started
        assert slow.status == "succeeded" and took < 1.0  # the run did not wait for the hanging channel
        assert alert_delivery.flush(20)
        (body,) = [r.json for r in hook.requests]
        assert body["rule"] == "duration" and body["run_id"] == slow.run_id and body["workflow"] == "notified"
        deliveries = {
            e.payload["channel"]: e.payload["status"]
            for e in slow.store.read_run(slow.run_id)
            if e.type == ev.ALERT_DELIVERY and e.payload["status"] in ("sent", "gave_up", "failed")
        }
        assert deliveries["ops"] == "sent" and deliveries["slow"] in ("failed", "gave_up")
        row = kf.sql("SELECT notified, channels FROM alerts WHERE run_id = ?", [slow.run_id]).row(0)
        assert row[0] == 1 and json.loads(row[1]) == ["ops", "slow"]
    finally:
        hook.close()
        hang.close()


def test_unknown_channels_and_bad_urls_are_refused_when_configured() -> None:
    def a():
        return 1

    wf = kf.workflow("misconfigured", [a])
    with pytest.raises(kf.DefinitionError, match="alerts.channels names 'pager', which is not a configured channel"):
        kf.alerts(wf, channels=["pager"])
    with pytest.raises(kf.DefinitionError, match="url 'htp://example.org' is not a usable URL"):
        kf.alert_channel("pager", "webhook", url="htp://example.org")
    with pytest.raises(kf.DefinitionError, match="no channel type 'pagerduty'"):
        kf.alert_channel("pager", "pagerduty", url="https://example.org")
