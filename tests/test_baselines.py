"""The detector's history (kernelflow/baselines.py) and the views task_baselines and alerts,
against hand-built events in a real folder store."""

from __future__ import annotations

import json
import statistics
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from kernelflow import events as ev
from kernelflow.anomaly_checks import quantile
from kernelflow.baselines import History
from kernelflow.events import Event
from kernelflow.exceptions import StoreError
from kernelflow.store import FolderStore
from kernelflow.widgets.alert import Alert

BASE_US = 1_795_000_000_000_000  # 2026-11-18, UTC microseconds
HOUR_US = 3_600_000_000
ACTOR = {"user": "ada", "host": "lab", "pid": 42, "via": "python"}
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def run_events(
    run_id: str,
    start_us: int,
    tasks: list[tuple[str, float, bool]],
    *,
    workflow: str = "etl",
    version: str = "v1",
    end: str | None = ev.RUN_SUCCEEDED,
    end_payload: dict[str, Any] | None = None,
) -> list[Event]:
    """A run as the engine writes it: each task ``(id, seconds, succeeded)`` runs once, in order."""
    out: list[Event] = []
    t = start_us

    def add(type_: str, task: str | None = None, attempt: int | None = None, **payload: Any) -> None:
        out.append(Event(run_id, len(out), t, type_, workflow, version, task, attempt, payload, ACTOR))

    add(ev.RUN_STARTED, tasks=[name for name, _, _ in tasks], inputs={})
    for name, seconds, ok in tasks:
        t += 1_000
        add(ev.TASK_SCHEDULED, name, 1)
        add(ev.TASK_STARTED, name, 1, executor="thread")
        t += round(seconds * 1e6)
        if ok:
            add(ev.TASK_SUCCEEDED, name, 1, output=None, output_ref=None)
        else:
            add(ev.TASK_FAILED, name, 1, error={"exc_type": "ValueError", "message": "bad"})
    t += 1_000
    if end is not None:
        add(end, **(end_payload or {}))
    return out


def history_runs(n: int, *, every_us: int = HOUR_US, start_us: int = BASE_US, version: str = "v1", prefix: str = "r") -> tuple[list[Event], dict[str, Any]]:
    """``n`` runs of etl: load takes 1 s + i ms, clean 2 s; every 7th run's clean fails."""
    events: list[Event] = []
    load: list[float] = []
    failed: list[bool] = []
    for i in range(n):
        fails = i % 7 == 3
        load.append(1.0 + i / 1000)
        failed.append(fails)
        events += run_events(
            f"{prefix}{i:03d}",
            start_us + i * every_us,
            [("load", load[-1], True), ("clean", 2.0, not fails)],
            version=version,
            end=ev.RUN_FAILED if fails else ev.RUN_SUCCEEDED,
            end_payload={"failed_tasks": ["clean"], "error": "clean failed"} if fails else None,
        )
    return events, {"load": load, "failed": failed, "end_us": start_us + n * every_us}


def clock_at(us: int):
    return lambda: us / 1e6


@pytest.fixture(params=["segments", "parquet"])
def layout(request: pytest.FixtureRequest) -> str:
    return request.param


def fill(store: FolderStore, events: list[Event], layout: str) -> FolderStore:
    store.append_many(events)
    if layout == "parquet":
        store.close()  # compacts the segment into Parquet; the handle reopens on use
    return store


# --- History ------------------------------------------------------------------------------


def test_durations_and_run_failures_are_the_latest_in_order(tmp_store: FolderStore, layout: str) -> None:
    events, truth = history_runs(60)
    other_version, _ = history_runs(5, version="v2", prefix="x")
    fill(tmp_store, events + other_version, layout)
    history = History(tmp_store, clock=clock_at(truth["end_us"]))

    durations = history.durations("etl", "v1", "load", n=30)
    assert durations == pytest.approx(truth["load"][-30:], abs=1e-6)
    # The same numbers as the task_attempts view's successful attempts.
    view = tmp_store.sql(
        "SELECT duration_ms / 1e3 AS s FROM task_attempts WHERE workflow = 'etl' AND workflow_version = 'v1' "
        "AND task_id = 'load' AND status = 'succeeded' ORDER BY ended_at DESC LIMIT 30"
    )["s"].to_list()[::-1]
    assert durations == pytest.approx(view, abs=1e-9)
    # Failed attempts are not durations; runs are outcomes, oldest first.
    assert len(history.durations("etl", "v1", "clean", n=100)) == sum(not f for f in truth["failed"])
    assert history.run_failures("etl", "v1", n=40) == truth["failed"][-40:]
    assert history.durations("etl", "v2", "load", n=30) == pytest.approx([1.0, 1.001, 1.002, 1.003, 1.004], abs=1e-6)
    assert history.durations("etl", "v1", "nope", n=30) == []
    assert history.run_failures("nope", "v1", n=10) == []
    # Times come with them for the alert's plot.
    at = history.durations_at("etl", "v1", "load", n=2)
    assert [d for _, d in at] == pytest.approx(truth["load"][-2:], abs=1e-6)
    assert at[0][0] < at[1][0] and at[1][0].tzinfo is not None
    ends = history.run_failures_at("etl", "v1", n=3)
    assert [f for _, f in ends] == truth["failed"][-3:]


def test_exclude_run_and_time_window(tmp_store: FolderStore) -> None:
    events, truth = history_runs(40)
    fill(tmp_store, events, "segments")
    history = History(tmp_store, clock=clock_at(truth["end_us"]))
    assert history.durations("etl", "v1", "load", n=5, exclude_run="r039") == pytest.approx(truth["load"][-6:-1], abs=1e-6)
    assert history.run_failures("etl", "v1", n=5, exclude_run="r039") == truth["failed"][-6:-1]
    # Attempts that ended in the last 3.5 hours: runs 37, 38, 39 (one an hour).
    assert history.durations("etl", "v1", "load", n=30, since_s=3.5 * 3600) == pytest.approx(truth["load"][-3:], abs=1e-6)
    with pytest.raises(ValueError, match="n must be a whole number"):
        history.durations("etl", "v1", "load", n=0)
    with pytest.raises(ValueError, match="since_s"):
        history.durations("etl", "v1", "load", n=3, since_s=-1)


def test_interrupted_resumed_and_unfinished_runs(tmp_store: FolderStore) -> None:
    t0 = BASE_US
    interrupted = run_events("int", t0, [("load", 1.0, True)], end=ev.RUN_FAILED, end_payload={"interrupted": True, "error": "stopped"})
    resumed = run_events("res", t0 + HOUR_US, [("load", 1.0, True)], end=ev.RUN_FAILED, end_payload={"interrupted": True})
    n = len(resumed)
    resumed += [
        Event("res", n, t0 + 2 * HOUR_US, ev.RUN_RESUMED, "etl", "v1", payload={"tasks": ["load"]}, actor=ACTOR),
        Event("res", n + 1, t0 + 2 * HOUR_US + 10, ev.RUN_SUCCEEDED, "etl", "v1", actor=ACTOR),
    ]
    unfinished = run_events("open", t0 + 3 * HOUR_US, [("load", 1.0, True)], end=None)
    failed = run_events("bad", t0 + 4 * HOUR_US, [("load", 1.0, False)], end=ev.RUN_FAILED, end_payload={"error": "x"})
    fill(tmp_store, interrupted + resumed + unfinished + failed, "segments")
    history = History(tmp_store, clock=clock_at(t0 + 5 * HOUR_US))
    # The interrupted run says nothing; the resumed one succeeded in the end; the open one has not finished.
    assert history.run_failures_at("etl", "v1", n=10) == [
        (EPOCH + timedelta(microseconds=t0 + 2 * HOUR_US + 10), False),
        (EPOCH + timedelta(microseconds=failed[-1].ts), True),
    ]
    assert len(history.durations("etl", "v1", "load", n=10)) == 3  # int, res, open succeeded; bad failed


def test_notes_need_no_query_and_are_not_counted_twice(tmp_store: FolderStore) -> None:
    events, truth = history_runs(40)
    fill(tmp_store, events, "segments")
    now = truth["end_us"]
    history = History(tmp_store, background=False, clock=lambda: now / 1e6)
    assert len(history.durations("etl", "v1", "load", n=100)) == 40
    queries = history.stats["window_loads"] + history.stats["full_loads"] + history.stats["refreshes"]

    # This process runs etl once more: events first, then the notes.
    new = run_events("new", now, [("load", 5.0, True), ("clean", 2.0, True)])
    tmp_store.append_many(new)
    now = new[-1].ts
    history.note_attempt("etl", "v1", "load", "new", 5.0, True)
    history.note_attempt("etl", "v1", "clean", "new", 2.0, True)
    history.note_attempt("etl", "v1", "clean", "new", 9.0, False)  # a failed attempt is no duration
    history.note_run("etl", "v1", "new", False)
    assert history.durations("etl", "v1", "load", n=2) == pytest.approx([truth["load"][-1], 5.0])
    assert history.run_failures("etl", "v1", n=2) == [truth["failed"][-1], False]
    assert history.stats["window_loads"] + history.stats["full_loads"] + history.stats["refreshes"] == queries

    # A refresh reads the same run from the store: it replaces the notes, once.
    history.max_age_s = 0
    assert history.durations("etl", "v1", "load", n=100)[-2:] == pytest.approx([truth["load"][-1], 5.0], abs=1e-6)
    assert len(history.durations("etl", "v1", "load", n=100)) == 41
    assert len(history.durations("etl", "v1", "clean", n=100)) == 41 - truth["failed"].count(True)
    assert len(history.run_failures("etl", "v1", n=100)) == 41
    assert history.stats["refreshes"] >= 1
    # With the attempt number a note and the store's record are the same attempt,
    # whichever comes first (here a refresh read the run before the note).
    again = run_events("again", now, [("load", 7.0, True)])
    tmp_store.append_many(again)
    now = again[-1].ts
    assert history.durations("etl", "v1", "load", n=1) == pytest.approx([7.0], abs=1e-6)
    history.note_attempt("etl", "v1", "load", "again", 7.0, True, attempt=1)
    assert len(history.durations("etl", "v1", "load", n=100)) == 42
    # Notes about a version nobody asked about yet are ignored (its first load reads the store).
    history.note_attempt("etl", "v9", "load", "new", 1.0, True)
    history.note_run("etl", "v9", "new", True)
    assert history.durations("etl", "v9", "load", n=5) == []


@pytest.mark.parametrize("background", [True, False], ids=["background", "in-the-check"])
def test_other_processes_runs_arrive_after_max_age(tmp_store: FolderStore, background: bool) -> None:
    events, truth = history_runs(30)
    fill(tmp_store, events, "segments")
    history = History(tmp_store, max_age_s=0.3, background=background)
    assert len(history.durations("etl", "v1", "load", n=100)) == 30
    # Another process records a run (the history's own clock is the real one here).
    other = FolderStore(tmp_store.path)
    try:
        start = int(time.time() * 1e6)
        other.append_many(run_events("elsewhere", start, [("load", 0.5, True)], end=ev.RUN_FAILED, end_payload={"error": "x"}))
    finally:
        other.close()
    assert len(history.durations("etl", "v1", "load", n=100)) == 30  # still cached
    time.sleep(0.35)
    latest = history.durations("etl", "v1", "load", n=100)[-1]
    if background:
        # The check that found the cache stale answered from it and started the refresh.
        assert latest == pytest.approx(truth["load"][-1], abs=1e-6)
        assert history.wait_refreshed()
        latest = history.durations("etl", "v1", "load", n=100)[-1]
    assert latest == pytest.approx(0.5, abs=1e-6)
    assert history.run_failures("etl", "v1", n=1) == [True]
    assert history.stats["refreshes"] == 1


def test_a_run_noted_while_a_refresh_reads_is_kept(tmp_store: FolderStore) -> None:
    events, truth = history_runs(20)
    fill(tmp_store, events, "segments")
    now = [truth["end_us"]]
    history = History(tmp_store, background=False, clock=lambda: now[0] / 1e6)
    assert len(history.run_failures("etl", "v1", n=100)) == 20
    # A refresh reads the store while a run of this process is still going as
    # far as the store knows; the run finishes and is noted before the
    # refresh's rows are put in: the note stands.
    tmp_store.append_many(run_events("live", now[0], [("load", 1.0, True)], end=None))
    entry = history._get("etl", "v1")
    assert entry is not None
    began_us, params = history._params(entry, "etl", "v1", "refresh")
    rows = history._query(params)
    assert ("live", False) in [(r[1], r[6]) for r in rows]  # unfinished, in the refresh's eyes
    now[0] += 5_000_000
    history.note_run("etl", "v1", "live", False)
    with entry.lock:
        history._apply(entry, "refresh", rows, began_us, params["since"])
    assert history.run_failures_at("etl", "v1", n=1) == [(EPOCH + timedelta(microseconds=now[0]), False)]


def test_the_first_load_reads_a_window_and_the_rest_only_when_needed(tmp_store: FolderStore) -> None:
    # Frequent runs (one a minute): the last 6 hours hold every answer.
    frequent, truth = history_runs(200, every_us=60_000_000, prefix="f")
    # Rare runs of another version (one a day): the window holds too few.
    rare, rare_truth = history_runs(40, every_us=24 * HOUR_US, start_us=BASE_US - 40 * 24 * HOUR_US, version="v0", prefix="d")
    fill(tmp_store, frequent + rare, "parquet")
    history = History(tmp_store, clock=clock_at(truth["end_us"]))
    assert history.durations("etl", "v1", "load", n=30) == pytest.approx(truth["load"][-30:], abs=1e-6)
    assert history.run_failures("etl", "v1", n=40) == truth["failed"][-40:]
    assert (history.stats["window_loads"], history.stats["full_loads"]) == (1, 0)
    assert history.durations("etl", "v0", "load", n=30) == pytest.approx(rare_truth["load"][-30:], abs=1e-6)
    assert history.run_failures("etl", "v0", n=40) == rare_truth["failed"]
    assert (history.stats["window_loads"], history.stats["full_loads"]) == (2, 1)
    # Asking for more than the depth reads everything again, deeper.
    assert history.durations("etl", "v1", "load", n=150) == pytest.approx(truth["load"][-150:], abs=1e-6)
    assert history.stats["full_loads"] == 2
    # Loaded once, a version answers from memory.
    before = dict(history.stats)
    for _ in range(5):
        history.durations("etl", "v1", "clean", n=30)
        history.run_failures("etl", "v0", n=10)
    assert history.stats == before
    assert History(tmp_store, first_window_s=None, clock=clock_at(truth["end_us"])).durations(
        "etl", "v1", "load", n=30
    ) == pytest.approx(truth["load"][-30:], abs=1e-6)


class ViewsOnly:
    """A store whose SQL has only the public views (another store plugin)."""

    def __init__(self, store: FolderStore) -> None:
        self.store = store
        self.queries: list[str] = []

    def sql(self, query: str, params: Any = None) -> Any:
        self.queries.append(query)
        if "_events_raw" in query:
            raise StoreError("SQL error: Catalog Error: Table with name _events_raw does not exist!")
        return self.store.sql(query, params)


def test_a_store_without_the_raw_relation_reads_the_events_view(tmp_store: FolderStore) -> None:
    events, truth = history_runs(35)
    fill(tmp_store, events, "segments")
    store = ViewsOnly(tmp_store)
    history = History(store, clock=clock_at(truth["end_us"]))
    assert history.durations("etl", "v1", "load", n=30) == pytest.approx(truth["load"][-30:], abs=1e-6)
    assert history.run_failures("etl", "v1", n=30) == truth["failed"][-30:]
    assert "_events_raw" in store.queries[0] and "FROM events" in store.queries[-1]


def test_bad_settings_are_refused(tmp_store: FolderStore) -> None:
    for kwargs in ({"max_age_s": -1}, {"depth": 0}, {"first_window_s": 0}):
        with pytest.raises(ValueError):
            History(tmp_store, **kwargs)


# --- the views ---------------------------------------------------------------------------


def test_task_baselines_view(tmp_store: FolderStore, layout: str) -> None:
    events, truth = history_runs(45)
    short = run_events("s1", BASE_US, [("only", 0.25, True)], workflow="tiny")
    fill(tmp_store, events + short, layout)
    rows = {r["task_id"]: r for r in tmp_store.sql("SELECT * FROM task_baselines WHERE workflow = 'etl'").to_dicts()}
    assert set(rows) == {"load", "clean"}
    load = truth["load"][-30:]
    row = rows["load"]
    assert (row["workflow_version"], row["samples"]) == ("v1", 30)
    assert row["mean_s"] == pytest.approx(statistics.fmean(load), abs=1e-6)
    assert row["stddev_s"] == pytest.approx(statistics.stdev(load), abs=1e-6)
    assert row["p50_s"] == pytest.approx(statistics.median(load), abs=1e-6)
    assert row["p95_s"] == pytest.approx(quantile(load, 0.95), abs=1e-6)
    last_load_end = max(e.ts for e in events if e.type == ev.TASK_SUCCEEDED and e.task_id == "load")
    assert row["last_at"] == datetime(1970, 1, 1) + timedelta(microseconds=last_load_end)
    assert rows["clean"]["samples"] == 30 and rows["clean"]["mean_s"] == pytest.approx(2.0, abs=1e-6)
    tiny = tmp_store.sql("SELECT samples, mean_s, stddev_s, p95_s FROM task_baselines WHERE workflow = 'tiny'").row(0)
    assert tiny[:2] == (1, pytest.approx(0.25, abs=1e-6)) and tiny[2] is None and tiny[3] == pytest.approx(0.25, abs=1e-6)
    # What the detector compares with is what the view shows.
    history = History(tmp_store, clock=clock_at(truth["end_us"]))
    assert statistics.fmean(history.durations("etl", "v1", "load", n=30)) == pytest.approx(row["mean_s"], abs=1e-9)


def alert_payload(task: str | None, seq_hint: str, **extra: Any) -> dict[str, Any]:
    raised = datetime(2026, 11, 18, 12, 0, tzinfo=timezone.utc)
    alert = Alert(
        workflow="etl", task=task, run_id="r1", metric="duration_s", value=3.1, baseline=1.0, spread=0.05,
        score=22.5, rule="duration", severity="warning", message=f"load took 3.1 s ({seq_hint})",
        raised_at=raised, history=((raised - timedelta(hours=1), 1.0), (raised - timedelta(minutes=30), 0.98)),
    )  # fmt: skip
    return {**alert.to_dict(), "key": f"etl/{task}/duration", "channels": ["ops", "mail"], **extra}


def test_alerts_view(tmp_store: FolderStore, layout: str) -> None:
    events = run_events("r1", BASE_US, [("load", 3.1, True)], end=None)
    t = events[-1].ts

    def add(type_: str, task_id: str | None, payload: dict[str, Any]) -> int:
        nonlocal t
        t += 1_000
        events.append(Event("r1", len(events), t, type_, "etl", "v1", task_id, None, payload, ACTOR))
        return len(events) - 1

    def delivery(alert_seq: int, channel: str, status: str, attempt: int, suppressed: int = 0) -> None:
        error = "timeout" if status == "failed" else None
        add(ev.ALERT_DELIVERY, None, {"alert_seq": alert_seq, "channel": channel, "status": status,
                                      "attempt": attempt, "error": error, "suppressed": suppressed})  # fmt: skip

    task_alert = add(ev.ALERT_RAISED, "load", alert_payload("load", "task"))
    delivery(task_alert, "ops", "failed", 1)
    delivery(task_alert, "mail", "sent", 1)
    delivery(task_alert, "ops", "sent", 2)
    run_alert = add(ev.ALERT_RAISED, None, alert_payload(None, "run", channels=[]))
    delivery(run_alert, "ops", "suppressed", 1, suppressed=3)
    quiet = add(ev.ALERT_RAISED, "load", alert_payload("load", "quiet"))
    add(ev.RUN_SUCCEEDED, None, {})
    fill(tmp_store, events, layout)

    rows = tmp_store.sql("SELECT * FROM alerts").to_dicts()
    assert [r["seq"] for r in rows] == [task_alert, run_alert, quiet]
    first = rows[0]
    assert first == {
        "run_id": "r1", "seq": task_alert, "raised_at": datetime(2026, 11, 18, 12, 0), "workflow": "etl",
        "workflow_version": "v1", "task_id": "load", "metric": "duration_s", "value": 3.1, "baseline": 1.0,
        "spread": 0.05, "score": 22.5, "rule": "duration", "severity": "warning", "message": "load took 3.1 s (task)",
        "key": "etl/load/duration", "channels": '["ops","mail"]', "notified": 2, "last_delivery_status": "sent",
    }  # fmt: skip
    assert (rows[1]["task_id"], rows[1]["notified"], rows[1]["last_delivery_status"], rows[1]["channels"]) == (None, 0, "suppressed", "[]")
    assert (rows[2]["notified"], rows[2]["last_delivery_status"]) == (0, None)
    # The payload is the widget's: it reads back as the same Alert.
    payload = tmp_store.sql("SELECT payload FROM events WHERE run_id = 'r1' AND seq = ?", [task_alert]).item()
    data = json.loads(payload)
    assert Alert.from_dict({k: v for k, v in data.items() if k not in ("key", "channels")}).message == first["message"]


def test_view_columns_and_empty_store(tmp_store: FolderStore) -> None:
    columns = {
        "task_baselines": ["workflow", "workflow_version", "task_id", "samples", "mean_s", "stddev_s", "p50_s", "p95_s", "last_at"],
        "alerts": [
            "run_id", "seq", "raised_at", "workflow", "workflow_version", "task_id", "metric", "value", "baseline",
            "spread", "score", "rule", "severity", "message", "key", "channels", "notified", "last_delivery_status"],
    }  # fmt: skip
    for name, expected in columns.items():
        assert tmp_store.sql(f"DESCRIBE SELECT * FROM {name}")["column_name"].to_list() == expected, name
        assert tmp_store.sql(f"SELECT count(*) FROM {name}").item() == 0
    types = dict(tmp_store.sql("DESCRIBE SELECT * FROM alerts").select("column_name", "column_type").rows())
    assert (types["value"], types["notified"], types["raised_at"]) == ("DOUBLE", "BIGINT", "TIMESTAMP")
