"""Alert delivery: background sends with retries and backoff, rate limits and
de-duplication, and every outcome recorded as an AlertDelivery event on the
run, against real servers on 127.0.0.1."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, ClassVar

import pytest
from http_server import HttpTestServer, Recorded, Route
from kernelflow.widgets.alert import Alert
from test_alert_channels import make_alert

import kernelflow as kf
from kernelflow import alert_channels_api as api
from kernelflow import alert_delivery, plugin_host
from kernelflow import events as ev
from kernelflow.alert_channels_api import ChannelSpec
from kernelflow.reducer import fold
from kernelflow.store_access import open_store


class ScriptedServer(HttpTestServer):
    """The test HTTP server, plus answers that change from one request to the next."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: dict[str, list[int]] = {}
        self.arrivals: list[float] = []

    def script(self, path: str, statuses: list[int], then: int = 200) -> None:
        """Answer POST ``path`` with ``statuses`` in turn, then ``then`` for ever."""
        self.scripts[path] = list(statuses)
        self.route("POST", path, status=then, body="ok")

    def _record(self, request: Recorded) -> Route | None:
        route = super()._record(request)
        with self._lock:
            self.arrivals.append(time.monotonic())
            left = self.scripts.get(request.path.split("?")[0])
            if left:
                return Route(status=left.pop(0), body=b"try later", content_type="text/plain")
        return route

    def bodies(self, path: str) -> list[Any]:
        return [r.json for r in self.requests if r.path.split("?")[0] == path]


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    s = ScriptedServer()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(autouse=True)
def delivery(kernelflow_home, monkeypatch) -> Iterator[None]:
    """Short timeouts and backoff; no limiter state or channels from other tests;
    every delivery finished before the test's store is closed."""
    monkeypatch.setattr(alert_delivery, "SEND_TIMEOUT_S", 2.0)
    monkeypatch.setattr(alert_delivery, "SEND_GRACE_S", 0.3)
    monkeypatch.setattr(alert_delivery, "BACKOFF_S", 0.05)
    monkeypatch.setattr(alert_delivery, "BACKOFF_MAX_S", 1.0)
    alert_delivery.reset()
    yield
    assert alert_delivery.flush(20), "deliveries still pending at the end of the test"
    alert_delivery.reset()
    for name in api.channel_names():
        api.remove_channel(name)


@kf.task
def work() -> int:
    return 1


@kf.task
def breaks() -> None:
    raise RuntimeError("upstream is down")


def finished_run(name: str = "alerted", fn: Any = work) -> Any:
    return kf.workflow(name, [fn]).run(raise_on_failure=False)


def raise_alert(run_id: str, key: str = "alerted/work/duration", channels: tuple[str, ...] = ("hook",)) -> tuple[Alert, int]:
    """Append an AlertRaised to a finished run, as the detector would; returns the alert and its seq."""
    store = open_store()
    alert = make_alert(run_id=run_id)
    with store.lease(run_id):
        last = store.read_run(run_id)[-1]
        seq = last.seq + 1
        store.append(ev.Event(run_id, seq, ev.now_us(), ev.ALERT_RAISED, last.workflow, last.workflow_version, "work", 1,
                              {**alert.to_dict(), "key": key, "channels": list(channels)}))  # fmt: skip
    return alert, seq


def deliveries(run_id: str) -> list[dict[str, Any]]:
    return kf.sql(
        "SELECT seq, payload->>'channel' AS channel, payload->>'status' AS status, "
        "CAST(payload->>'attempt' AS INTEGER) AS attempt, payload->>'error' AS error, "
        "CAST(payload->>'suppressed' AS INTEGER) AS suppressed, CAST(payload->>'alert_seq' AS INTEGER) AS alert_seq, "
        "payload->>'reason' AS reason, CAST(payload->>'retry_in_s' AS DOUBLE) AS retry_in_s "
        "FROM events WHERE type = 'AlertDelivery' AND run_id = ? ORDER BY seq",
        [run_id],
    ).to_dicts()


def statuses(run_id: str) -> list[str]:
    return [d["status"] for d in deliveries(run_id)]


def assert_run_folds(run_id: str) -> list[ev.Event]:
    events = open_store().read_run(run_id)
    assert [e.seq for e in events] == list(range(len(events)))
    fold(events, run_id)  # raises on a gap or a duplicate seq
    return events


# --- recording on the run -----------------------------------------------------------------


def test_a_sent_alert_is_recorded_on_the_finished_run(server: ScriptedServer):
    server.route("POST", "/hook", status=200)
    api.configure_channel("hook", "webhook", url=server.url_for("/hook"))
    run = finished_run()
    alert, seq = raise_alert(run.run_id)
    alert_delivery.deliver(alert, channels=["hook"], run_id=run.run_id, alert_seq=seq, key="k", store=run.store)
    assert alert_delivery.flush(10)
    assert alert_delivery.pending() == 0
    (sent,) = deliveries(run.run_id)
    assert sent == {"seq": seq + 1, "channel": "hook", "status": "sent", "attempt": 1, "error": None, "suppressed": 0,
                    "alert_seq": seq, "reason": None, "retry_in_s": None}  # fmt: skip
    assert server.bodies("/hook")[0]["run_id"] == run.run_id
    assert_run_folds(run.run_id)


def test_a_failing_endpoint_is_retried_with_backoff_until_it_works(server: ScriptedServer):
    server.script("/flaky", [500, 500])
    api.configure_channel("hook", "webhook", url=server.url_for("/flaky"))
    run = finished_run()
    alert, seq = raise_alert(run.run_id)
    alert_delivery.deliver(alert, channels=["hook"], run_id=run.run_id, alert_seq=seq, key="k", store=run.store)
    assert alert_delivery.flush(10)
    rows = deliveries(run.run_id)
    assert [(r["status"], r["attempt"]) for r in rows] == [("failed", 1), ("failed", 2), ("sent", 3)]
    assert rows[0]["error"] == f"{server.url} answered HTTP 500: try later"
    # Exponential backoff with jitter on top: 0.05 s, then 0.1 s (+ up to 25 %).
    assert 0.05 <= rows[0]["retry_in_s"] <= 0.05 * 1.25
    assert 0.1 <= rows[1]["retry_in_s"] <= 0.1 * 1.25
    gaps = [b - a for a, b in zip(server.arrivals, server.arrivals[1:])]
    assert gaps[0] >= rows[0]["retry_in_s"] and gaps[1] >= rows[1]["retry_in_s"]
    assert len(server.requests) == 3
    assert_run_folds(run.run_id)


def test_delivery_gives_up_after_max_attempts(server: ScriptedServer, monkeypatch):
    monkeypatch.setattr(alert_delivery, "MAX_ATTEMPTS", 3)
    server.script("/down", [503] * 10)
    server.route("POST", "/gone", status=404, body="no such hook")
    api.configure_channel("hook", "webhook", url=server.url_for("/down"))
    api.configure_channel("gone", "webhook", url=server.url_for("/gone"))
    run = finished_run()
    alert, seq = raise_alert(run.run_id, channels=("hook", "gone", "nope"))
    alert_delivery.deliver(alert, channels=["hook", "gone", "nope"], run_id=run.run_id, alert_seq=seq, key="k", store=run.store)
    assert alert_delivery.flush(10)
    rows = deliveries(run.run_id)
    by_channel = {name: [(r["status"], r["attempt"]) for r in rows if r["channel"] == name] for name in ("hook", "gone", "nope")}
    assert by_channel == {
        "hook": [("failed", 1), ("failed", 2), ("gave_up", 3)],
        "gone": [("gave_up", 1)],  # a 4xx is not retried
        "nope": [("gave_up", 0)],  # not a configured channel: recorded, never raised
    }
    assert len(server.bodies("/down")) == 3 and len(server.bodies("/gone")) == 1
    errors = {r["channel"]: r["error"] for r in rows if r["status"] == "gave_up"}
    assert errors["hook"].endswith("answered HTTP 503: try later")
    assert errors["gone"].endswith("answered HTTP 404: no such hook")
    assert errors["nope"].startswith("no alert channel named 'nope'") and "configured: gone, hook" in errors["nope"]
    assert_run_folds(run.run_id)


@kf.task
def alerting_task() -> str:
    ctx = kf.context()
    alert = make_alert(run_id=ctx.run_id, workflow="live")
    raised = ctx.run._emit(ev.ALERT_RAISED, ctx.task_id, ctx.attempt, {**alert.to_dict(), "key": "live", "channels": ["hook"]})
    alert_delivery.deliver(alert, channels=["hook"], run_id=ctx.run_id, alert_seq=raised.seq, key="live", store=ctx.run.store, run=ctx.run)
    if LIVE["wait"]:
        assert alert_delivery.flush(10)
    return "done"


LIVE = {"wait": True}


def test_a_live_run_records_through_its_own_handle(server: ScriptedServer):
    server.route("POST", "/hook", status=200)
    api.configure_channel("hook", "webhook", url=server.url_for("/hook"))
    LIVE["wait"] = True
    run = kf.workflow("live", [alerting_task]).run()
    events = assert_run_folds(run.run_id)
    types = [e.type for e in events]
    # Recorded while the run was driven: between the task's start and its success.
    assert types.index("TaskStarted") < types.index("AlertRaised") < types.index("AlertDelivery") < types.index("TaskSucceeded")
    delivery = events[types.index("AlertDelivery")]
    assert delivery.payload["status"] == "sent" and delivery.payload["alert_seq"] == types.index("AlertRaised")
    assert delivery.workflow == "live" and delivery.workflow_version == run.workflow.version


def test_retries_that_outlive_the_run_are_recorded_after_it(server: ScriptedServer, monkeypatch):
    monkeypatch.setattr(alert_delivery, "BACKOFF_S", 0.5)  # retries at +0.5 s and +1.5 s: the run ends long before
    server.script("/flaky", [500, 500])
    api.configure_channel("hook", "webhook", url=server.url_for("/flaky"))
    LIVE["wait"] = False
    run = kf.workflow("live", [alerting_task]).run()
    assert alert_delivery.flush(10)
    events = assert_run_folds(run.run_id)
    types = [e.type for e in events]
    assert [e.payload["status"] for e in events if e.type == "AlertDelivery"] == ["failed", "failed", "sent"]
    # The last ones were appended after the run ended, under its lease, after its last event.
    assert types.index("RunSucceeded") < len(types) - 1 and types[-1] == "AlertDelivery"
    assert fold(events, run.run_id).status == "succeeded"


# --- never in the way of a run -------------------------------------------------------------------


class Stuck:
    """A badly behaved channel: ignores its timeout and blocks until released."""

    release = threading.Event()

    def send(self, alert: Alert, *, timeout: float) -> None:
        self.release.wait(30)


class StuckPlugin:
    @kf.hookimpl
    def kernelflow_register_alert_channels(self):
        return [ChannelSpec("stuck", Stuck, "never answers")]


@kf.task
def hurried() -> float:
    ctx = kf.context()
    alert = make_alert(run_id=ctx.run_id, workflow="hurried")
    took = []
    for i in range(50):
        t = time.perf_counter()
        alert_delivery.deliver(alert, channels=["slow", "stuck"], run_id=ctx.run_id, alert_seq=0, key=f"k{i}",
                               store=ctx.run.store, run=ctx.run)  # fmt: skip
        took.append(time.perf_counter() - t)
    TOOK[:] = took
    return max(took)


TOOK: list[float] = []


def test_a_channel_that_hangs_slows_neither_deliver_nor_the_run(server: ScriptedServer, monkeypatch):
    monkeypatch.setattr(alert_delivery, "MAX_ATTEMPTS", 2)
    monkeypatch.setattr(alert_delivery, "PER_MINUTE", 1)
    monkeypatch.setattr(alert_delivery, "SEND_TIMEOUT_S", 0.3)
    server.route("POST", "/slow", status=200, delay=10)  # answers long after any timeout
    plugin = StuckPlugin()
    plugin_host.register(plugin, name="stuck-channels")
    Stuck.release.clear()
    try:
        api.configure_channel("slow", "webhook", url=server.url_for("/slow"), timeout_s=0.3)
        api.configure_channel("stuck", "stuck")
        started = time.monotonic()
        run = kf.workflow("hurried", [hurried]).run()
        assert time.monotonic() - started < 1.0, "the run waited for a channel"  # each hangs for 10 s or more
        assert alert_delivery.pending() > 0  # still trying, in the background
        # deliver() only decides and queues: microseconds, even with channels that hang.
        # (about 7 µs each, 0.3 ms for the first, which starts the worker; bounds leave room for a busy machine)
        assert statistics.median(TOOK) < 0.0002, TOOK
        assert max(TOOK) < 0.05, TOOK
        assert alert_delivery.flush(10)
        rows = deliveries(run.run_id)
        sends = {name: [(r["status"], r["attempt"], r["error"]) for r in rows if r["channel"] == name and r["status"] != "suppressed"]
                 for name in ("slow", "stuck")}  # fmt: skip
        assert sends["slow"] == [("failed", 1, f"{server.url} did not answer within 0.3 s"),
                                 ("gave_up", 2, f"{server.url} did not answer within 0.3 s")]  # fmt: skip
        assert sends["stuck"] == [
            ("failed", 1, "channel 'stuck' did not return within 0.3 s (its timeout) + 0.3 s"),
            ("gave_up", 2, "an earlier send on channel 'stuck' has not returned yet"),
        ]
        assert statuses(run.run_id).count("suppressed") == 2 * 49  # PER_MINUTE = 1
        assert_run_folds(run.run_id)
    finally:
        Stuck.release.set()
        plugin_host.unregister(plugin)


# --- storms: rate limits and de-duplication --------------------------------------------------------


@pytest.fixture
def failing_runs() -> list[str]:
    """100 failing runs, as fast as they come (well within a minute)."""
    return [finished_run("storm", breaks).run_id for _ in range(100)]


def storm_alert(run_id: str) -> Alert:
    return make_alert(run_id=run_id, workflow="storm", task="breaks", metric="error_rate", value=1.0, baseline=0.0,
                      spread=0.05, score=20.0, rule="error_rate", severity="critical", message="every recent run failed")  # fmt: skip


def test_a_storm_of_one_alert_makes_one_notification_per_channel(server: ScriptedServer, failing_runs: list[str], monkeypatch):
    server.route("POST", "/hook", status=200)
    server.route("POST", "/slack", status=200, body="ok")
    api.configure_channel("hook", "webhook", url=server.url_for("/hook"))
    api.configure_channel("team", "slack", url=server.url_for("/slack"))
    started = time.monotonic()
    for i, run_id in enumerate(failing_runs):
        alert_delivery.deliver(storm_alert(run_id), channels=["hook", "team"], run_id=run_id, alert_seq=i,
                               key="storm/breaks/error_rate", store=open_store())  # fmt: skip
    assert time.monotonic() - started < 60
    assert alert_delivery.flush(30)
    # The bound: one notification per (channel, key) per DEDUPE_S.
    assert len(server.bodies("/hook")) == 1 and len(server.bodies("/slack")) == 1
    assert server.bodies("/hook")[0]["run_id"] == failing_runs[0]
    assert statuses(failing_runs[0]) == ["sent", "sent"]
    for run_id in failing_runs[1:]:
        rows = deliveries(run_id)
        assert [(r["channel"], r["status"], r["reason"]) for r in rows] == [("hook", "suppressed", "duplicate"), ("team", "suppressed", "duplicate")]
    # Once the window has passed, the next notification carries what was held back.
    monkeypatch.setattr(alert_delivery, "DEDUPE_S", 0.0)
    last = failing_runs[-1]
    alert_delivery.deliver(storm_alert(last), channels=["hook", "team"], run_id=last, alert_seq=0, key="storm/breaks/error_rate", store=open_store())
    assert alert_delivery.flush(10)
    assert server.bodies("/hook")[1]["suppressed"] == 99
    assert server.bodies("/hook")[1]["text"].endswith("[+99 similar alerts held back]")
    assert "_+99 similar alerts held back by the rate limits_" in server.bodies("/slack")[1]["blocks"][0]["text"]["text"]
    assert [(r["status"], r["suppressed"]) for r in deliveries(last)][-2:] == [("sent", 99), ("sent", 99)]


def test_a_storm_of_distinct_alerts_is_capped_per_minute(server: ScriptedServer, failing_runs: list[str], monkeypatch):
    server.route("POST", "/hook", status=200)
    api.configure_channel("hook", "webhook", url=server.url_for("/hook"))
    for i, run_id in enumerate(failing_runs):
        alert_delivery.deliver(storm_alert(run_id), channels=["hook"], run_id=run_id, alert_seq=i, key=f"storm/{i}", store=open_store())
    assert alert_delivery.flush(30)
    # The bound: PER_MINUTE notifications per channel in any minute.
    assert alert_delivery.PER_MINUTE == 10
    assert [b["run_id"] for b in server.bodies("/hook")] == failing_runs[:10]
    reasons = [deliveries(r)[0]["reason"] for r in failing_runs[10:]]
    assert reasons == ["rate_limit"] * 90
    monkeypatch.setattr(alert_delivery, "RATE_WINDOW_S", 0.0)  # the minute is over
    alert_delivery.deliver(storm_alert(failing_runs[0]), channels=["hook"], run_id=failing_runs[0], alert_seq=0, key="storm/new", store=open_store())
    assert alert_delivery.flush(10)
    assert server.bodies("/hook")[-1]["suppressed"] == 90 and len(server.bodies("/hook")) == 11


class Plain:
    """A channel whose send knows nothing of ``suppressed``."""

    sent: ClassVar[list[Alert]] = []

    def send(self, alert: Alert, *, timeout: float) -> None:
        self.sent.append(alert)


class PlainPlugin:
    @kf.hookimpl
    def kernelflow_register_alert_channels(self):
        return [ChannelSpec("plain", Plain, "keeps alerts")]


def test_a_channel_without_suppressed_gets_the_count_in_the_message(monkeypatch):
    plugin = PlainPlugin()
    plugin_host.register(plugin, name="plain-channels")
    Plain.sent = []
    try:
        api.configure_channel("plain", "plain")
        run = finished_run()
        for _ in range(3):
            alert_delivery.deliver(make_alert(run_id=run.run_id), channels=["plain"], run_id=run.run_id, alert_seq=0, key="same", store=run.store)
        monkeypatch.setattr(alert_delivery, "DEDUPE_S", 0.0)
        alert_delivery.deliver(make_alert(run_id=run.run_id), channels=["plain"], run_id=run.run_id, alert_seq=0, key="same", store=run.store)
        assert alert_delivery.flush(10)
        assert [a.message for a in Plain.sent] == ["load took 3.5x its usual time", "load took 3.5x its usual time (+2 similar alerts held back)"]
        # Outcomes are recorded as they are known: the held-back ones at once, a send when it ends.
        outcomes = [(r["status"], r["reason"], r["suppressed"]) for r in deliveries(run.run_id)]
        assert sorted(outcomes, key=str) == sorted([("sent", None, 0), ("suppressed", "duplicate", 0), ("suppressed", "duplicate", 0),
                                                    ("sent", None, 2)], key=str)  # fmt: skip
    finally:
        plugin_host.unregister(plugin)


def test_deliver_takes_an_alert_raised_payload_and_rejects_other_things(server: ScriptedServer):
    server.route("POST", "/hook", status=200)
    api.configure_channel("hook", "webhook", url=server.url_for("/hook"))
    run = finished_run()
    payload = {**make_alert(run_id=run.run_id, raised_at=datetime.now(timezone.utc)).to_dict(), "key": "k", "channels": ["hook"]}
    alert_delivery.deliver(payload, channels=["hook"], run_id=run.run_id, alert_seq=0, key="k", store=run.store)
    assert alert_delivery.flush(10)
    assert statuses(run.run_id) == ["sent"]
    with pytest.raises(TypeError, match="deliver\\(\\) takes an Alert \\(or an AlertRaised payload\\), got str"):
        alert_delivery.deliver("oops", channels=["hook"], run_id=run.run_id, alert_seq=0, key="k", store=run.store)  # type: ignore[arg-type]
