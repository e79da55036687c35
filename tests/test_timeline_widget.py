"""The timeline widget (``kernelflow.widgets.timeline``): its scrub data is the
reducer's fold, seq by seq, so the JavaScript shows exactly what ``run.at(seq)`` gives."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import ipywidgets
import pytest
from hypothesis import HealthCheck, given, settings
from kernelflow.store import FolderStore
from kernelflow.widgets import poller
from kernelflow.widgets import timeline as timeline_module
from kernelflow.widgets.dag import DagWidget
from kernelflow.widgets.timeline import (
    RunTimeline,
    TimelineWidget,
    attempts,
    statuses_at,
    timeline,
    timeline_data,
)
from test_time_travel_sql import build, synthetic_histories, workflows_with_outcomes

from kernelflow.widgets.fallback import embedded_svgs
import kernelflow as kf
from kernelflow import catalog
from kernelflow import events as ev
from kernelflow.cell_compiler import compile_cell
from kernelflow.events import Event
from kernelflow.reducer import fold
from kernelflow.snapshots import snapshot_at
from kernelflow.store_access import open_store, use_store

# --- real runs with retries, skips, failures, gates, sleeps, loops and resumes ------------------


def gated_run() -> kf.Run:
    """A retry that succeeds, a skip, a failure allowed to happen, an approval gate, a resume."""
    calls = {"b": 0}

    def a():
        return 1

    @kf.task(retries=2, retry_delay=0)
    def b(a):
        calls["b"] += 1
        if calls["b"] < 2:
            raise RuntimeError("boom")
        return a + 1

    @kf.task(when="{{inputs.flag}} == true")
    def c(a):
        return 3

    @kf.task(continue_on_failure=True)
    def d(b):
        raise ValueError("bad")

    @kf.approval("Publish {n}?")
    def e(b):
        return 5

    run = kf.workflow("gated", [a, b, c, d, e]).run(flag=False, raise_on_failure=False)
    assert run.status == "waiting"
    kf.approve(run.run_id, "e")
    run.wait()
    assert run.status == "succeeded"
    return run


SLEEPY = """
def load():
    return [1, 2]

@kf.task(retries=1, retry_delay=0)
def flaky(load):
    calls["flaky"] += 1
    if calls["flaky"] <= 2:
        raise RuntimeError(f"failure {calls['flaky']}")
    return len(load)

nap = kf.step(sleep="30ms", after=["load"])

@kf.task(after=["nap"])
def report(flaky):
    return f"{flaky} rows"
"""


def failed_then_resumed_run() -> kf.Run:
    """Retries run out (the run fails), then a resume finishes it; a sleep step on the way."""
    wf = compile_cell("flaky_sleepy", SLEEPY, {"kf": kf, "calls": {"flaky": 0}})
    run = wf.run(raise_on_failure=False)
    assert run.status == "failed"
    run.resume()
    assert run.status == "succeeded"
    return run


def looping_run() -> kf.Run:
    """A back_to loop (TaskReset) and a task that times out for good."""
    import time

    counts = {"n": 0}

    def start():
        return 0

    @kf.task(back_to={"step": "start", "when": "{{output}} < 3", "max_iterations": 4})
    def count(start):
        counts["n"] += 1
        return counts["n"]

    @kf.task(timeout="50ms", continue_on_failure=True)
    def slow(count):
        time.sleep(0.3)

    return kf.workflow("looping", [start, count, slow]).run(raise_on_failure=False)


def breakpoint_run() -> kf.Run:
    def a():
        return 2

    def b(a):
        return a * 10

    wf = kf.workflow("paused", [a, b])
    run = wf.run(break_before=["b"])
    assert run.status == "waiting"
    run.resume(replace={"a": 5})
    assert run.output == 50
    return run


RUNS = {"gated": gated_run, "failed_then_resumed": failed_then_resumed_run, "looping": looping_run, "breakpoint": breakpoint_run}


def js_statuses(widget: TimelineWidget, seq: int) -> dict[str, str]:
    """What timeline.js computes at the slider's ``seq``, spelled out independently."""
    out: dict[str, str] = {}
    for change_seq, _ts, task, status in widget.changes:
        if change_seq <= seq:
            out[task] = status
    return out


def snapshot_statuses(store: Any, run_id: str, seq: int) -> tuple[dict[str, str], str]:
    snap = snapshot_at(store, run_id, seq)
    return dict(zip(snap.tasks["task"], snap.tasks["status"])), snap.status


def _us(value: datetime | None) -> int | None:
    if value is None:
        return None
    return (value.replace(tzinfo=timezone.utc) - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)


@pytest.mark.parametrize("make_run", list(RUNS.values()), ids=list(RUNS))
def test_the_statuses_at_every_seq_are_those_of_run_at(make_run) -> None:
    run = make_run()
    widget = TimelineWidget.for_run(run)
    events = run.store.read_run(run.run_id)
    assert widget.last_seq == events[-1].seq == len(widget.events) - 1
    assert widget.seq == widget.last_seq  # it opens at the end
    for seq in range(len(events)):
        expected, run_status = snapshot_statuses(run.store, run.run_id, seq)
        assert js_statuses(widget, seq) == expected, f"seq {seq}"
        assert widget.status_at(seq) == expected
        assert timeline_module.run_status_at(widget.run_changes, seq) == run_status
        assert run.at(seq).state.tasks.keys() == expected.keys()
    # Only real changes are listed, each one a change from the previous status.
    last: dict[str, str] = {}
    for seq, ts, task, status in widget.changes:
        assert last.get(task) != status and widget.t0 + ts == events[seq].ts
        last[task] = status
    assert widget.scrub_status == {t: s.status for t, s in run.state.tasks.items()}
    assert widget.scrub_run_status == run.status == widget.status


@pytest.mark.parametrize("make_run", list(RUNS.values()), ids=list(RUNS))
def test_the_bars_are_the_attempts_task_attempts_shows(make_run) -> None:
    run = make_run()
    events = run.store.read_run(run.run_id)
    sql = run.store.sql(
        "SELECT task_id, attempt, status, started_at, ended_at FROM task_attempts WHERE run_id = ?", [run.run_id]
    )
    expected = {(r[0], r[1]): (r[2], _us(r[3]), _us(r[4])) for r in sql.rows()}
    got = {(a["task"], a["attempt"]): (a["status"], a["started_us"], a["ended_us"]) for a in attempts(events)}
    assert got == expected
    widget = TimelineWidget.for_run(run)
    drawn = {(b[0], b[1]): b for b in widget.bars}
    for (task, attempt), (status, started, ended) in expected.items():
        if started is None:
            assert (task, attempt) not in drawn  # never started: nothing to draw
            continue
        bar = drawn[(task, attempt)]
        assert bar[4] == status
        assert events[bar[2]].ts == started and events[bar[2]].type == ev.TASK_STARTED
        assert (events[bar[3]].ts if bar[3] is not None else None) == ended


def test_gates_sleeps_skips_and_retries_are_drawn() -> None:
    gated = TimelineWidget.for_run(gated_run())
    assert gated.tasks == ["a", "b", "c", "d", "e"]
    assert [(b[0], b[1], b[4]) for b in gated.bars if b[0] == "b"] == [("b", 1, "failed"), ("b", 2, "succeeded")]
    assert next(b[6] for b in gated.bars if b[0] == "b") == "RuntimeError: boom"
    assert [(s[0], s[1]) for s in gated.spans] == [("e", "waiting")]
    assert all(s[3] is not None and s[3] > s[2] for s in gated.spans)
    assert [(m[0], m[2]) for m in gated.marks] == [("c", "skipped")]
    sleepy = TimelineWidget.for_run(failed_then_resumed_run())
    assert ("nap", "sleeping") in {(s[0], s[1]) for s in sleepy.spans}
    assert [b[4] for b in sleepy.bars if b[0] == "flaky"] == ["failed", "failed", "succeeded"]
    looping = TimelineWidget.for_run(looping_run())
    assert [b[4] for b in looping.bars if b[0] == "slow"] == ["timed_out"]
    assert len([b for b in looping.bars if b[0] == "count"]) == 3  # three iterations


def history(run_id: str, steps: list[tuple[int, str, str | None, int | None, dict]]) -> list[Event]:
    """Events at the given offsets (µs) from a fixed start."""
    t0 = 1_795_000_000_000_000
    return [
        Event(run_id, seq, t0 + dt, type_, "wf", "v1", task, attempt, payload, {})
        for seq, (dt, type_, task, attempt, payload) in enumerate(steps)
    ]


MS, HOUR = 1_000, 3_600_000_000


def test_long_idle_gaps_become_breaks_and_x_follows_time() -> None:
    events = history("r-gate", [
        (0, ev.RUN_STARTED, None, None, {"tasks": ["a", "b"]}),
        (1 * MS, ev.TASK_STARTED, "a", 1, {}),
        (11 * MS, ev.TASK_SUCCEEDED, "a", 1, {}),
        (12 * MS, ev.APPROVAL_REQUESTED, "b", 1, {"message": "ok?"}),
        (13 * MS, ev.RUN_SUSPENDED, None, None, {}),
        (HOUR, ev.APPROVAL_GRANTED, "b", 1, {}),  # a human, an hour later
        (HOUR + 5_000 * MS, ev.RUN_RESUMED, None, None, {}),
        (HOUR + 5_001 * MS, ev.TASK_STARTED, "b", 1, {}),
        (HOUR + 5_021 * MS, ev.TASK_SUCCEEDED, "b", 1, {}),
        (HOUR + 5_022 * MS, ev.RUN_SUCCEEDED, None, None, {}),
    ])  # fmt: skip
    data = timeline_data(events)
    xs = data["xs"]
    assert xs[0] == 0.0 and xs[-1] == 1.0 and xs == sorted(xs)
    # The idle wait (the answer, then the resume) is one short break; the work keeps its proportions.
    assert data["breaks"] == [[xs[4], xs[6], pytest.approx((HOUR + 5_000 * MS - 13 * MS) / 1e6)]]
    assert xs[6] - xs[4] < 0.1
    assert (xs[2] - xs[1]) / (xs[8] - xs[7]) == pytest.approx(10 / 20, rel=1e-3)  # a ran 10 ms, b 20 ms
    assert data["spans"] == [["b", "waiting", 3, 5]]
    assert [b[:5] for b in data["bars"]] == [["a", 1, 1, 2, "succeeded"], ["b", 1, 7, 8, "succeeded"]]
    # The same hour spent running a task is work: drawn to scale, no break.
    busy = history("r-busy", [
        (0, ev.RUN_STARTED, None, None, {"tasks": ["a"]}),
        (1 * MS, ev.TASK_STARTED, "a", 1, {}),
        (HOUR, ev.TASK_SUCCEEDED, "a", 1, {}),
        (HOUR + 1 * MS, ev.RUN_SUCCEEDED, None, None, {}),
    ])  # fmt: skip
    assert timeline_data(busy)["breaks"] == []
    # Nothing but instants: the events are spaced evenly.
    instant = history("r-instant", [(0, ev.RUN_STARTED, None, None, {}), (0, ev.RUN_SUCCEEDED, None, None, {})])
    assert timeline_data(instant)["xs"] == [0.0, 1.0]


def test_moving_the_slider_from_python_updates_scrub_status() -> None:
    run = gated_run()
    widget = TimelineWidget.for_run(run)
    widget.seq = 3
    assert widget.scrub_status == snapshot_statuses(run.store, run.run_id, 3)[0]
    assert widget.scrub_run_status == "running"
    widget.seq = 10_000  # clamped to the last event
    assert widget.seq == widget.last_seq and widget.scrub_status == widget.status_at(widget.last_seq)
    widget.seq = -5
    assert widget.seq == 0 and set(widget.scrub_status.values()) == {"pending"}


# --- property tests: random workflows run for real, and synthetic histories --------------------


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(workflows_with_outcomes())
def test_random_real_runs_scrub_like_run_at(tmp_store: FolderStore, case) -> None:
    tasks, flag, max_parallel = case
    wf = build(tasks, max_parallel)
    use_store(tmp_store.path)
    try:
        inputs = {"flag": flag} if any(t["when"] for t in tasks) else {}
        run = wf.run(raise_on_failure=False, **inputs)
    finally:
        use_store(None)
    events = tmp_store.read_run(run.run_id)
    data = timeline_data(events, wf.order)
    for seq in range(len(events)):
        assert statuses_at(data["changes"], seq) == snapshot_statuses(tmp_store, run.run_id, seq)[0], f"seq {seq}"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(synthetic_histories())
def test_synthetic_histories_scrub_like_the_fold(tmp_store: FolderStore, events: list[Event]) -> None:
    for event in events:
        tmp_store.append(event)
    data = timeline_data(events)
    assert len(data["xs"]) == len(events) and data["xs"] == sorted(data["xs"])
    for seq in range(len(events)):
        expected, run_status = snapshot_statuses(tmp_store, events[0].run_id, seq)
        assert statuses_at(data["changes"], seq) == expected, f"seq {seq}"
        assert timeline_module.run_status_at(data["run_changes"], seq) == run_status
        assert statuses_at(data["changes"], seq) == {t: s.status for t, s in fold(events[: seq + 1]).tasks.items()}


# --- by run id, the DAG, the static picture ----------------------------------------------------


def test_a_run_id_finds_the_stored_definition_and_links_the_dag(monkeypatch: pytest.MonkeyPatch) -> None:
    run = gated_run()
    # A new kernel: the definition is not in memory, only registered in the store.
    monkeypatch.setattr(catalog, "_latest", {})
    monkeypatch.setattr(catalog, "_versions", {})
    view = timeline(run.run_id)
    assert isinstance(view, RunTimeline) and isinstance(view, ipywidgets.VBox)
    assert view.workflow is not None and view.workflow.version == run.workflow.version
    assert isinstance(view.dag, DagWidget) and view.children == (view.dag, view.timeline)
    assert view.dag.status == view.timeline.scrub_status and view.dag.run_status == "succeeded"
    links = {(l.source[1], l.target[1]) for l in view._links}
    assert links == {("scrub_status", "status"), ("scrub_run_status", "run_status")}
    assert all(isinstance(l, ipywidgets.widgets.widget_link.DirectionalLink) and l.source[0] is view.timeline and l.target[0] is view.dag for l in view._links)
    assert not poller.watching(view.dag)  # the timeline drives the DAG's colours, not the store
    # A browser re-rendering the DAG asks it to re-read the store: the scrub stays.
    view.timeline.seq = 3
    view.dag.status = dict(view.timeline.scrub_status)  # what jsdlink does in the browser
    view.dag.run_status = view.timeline.scrub_run_status
    view.dag._handle_custom_msg({"type": "refresh"}, [])
    assert view.dag.status == view.timeline.scrub_status == snapshot_statuses(run.store, run.run_id, 3)[0]
    assert view.dag.run_status == "running" and not poller.watching(view.dag)

    bundle = view._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert "application/vnd.jupyter.widget-view+json" in data
    page = data["text/html"]
    assert "kernelflow-dag" in page and "<img class='kf-timeline-picture'" in page  # the final DAG and the Gantt
    assert page.index("kernelflow-dag") < page.index("kf-timeline-picture")
    assert any("<svg class='kf-gantt'" in svg for svg in embedded_svgs(page))


def test_a_run_in_another_store_finds_its_definition_there(tmp_store: FolderStore, monkeypatch: pytest.MonkeyPatch) -> None:
    use_store(tmp_store.path)
    try:
        run = gated_run()
    finally:
        use_store(None)
    monkeypatch.setattr(catalog, "_latest", {})
    monkeypatch.setattr(catalog, "_versions", {})
    view = timeline(run.run_id, store=tmp_store)
    assert view.workflow is not None and view.workflow.version == run.workflow.version
    assert view.dag is not None and view.dag.status == {t: s.status for t, s in run.state.tasks.items()}
    assert view.timeline.tasks == list(run.workflow.order)


def test_an_unknown_workflow_shows_the_timeline_alone() -> None:
    store = open_store()
    t0 = 1_795_000_000_000_000
    steps = [
        (ev.RUN_STARTED, None, None, {"tasks": ["x"], "inputs": {}}),
        (ev.TASK_STARTED, "x", 1, {}),
        (ev.TASK_SUCCEEDED, "x", 1, {"output": 1}),
        (ev.RUN_SUCCEEDED, None, None, {}),
    ]
    for seq, (type_, task, attempt, payload) in enumerate(steps):
        store.append(Event("r-nodef", seq, t0 + seq * 1000, type_, "ghost", "v0", task, attempt, payload, {}))
    view = kf.timeline("r-nodef")
    assert view.dag is None and view.workflow is None and view.children == (view.timeline,)
    assert view.timeline.tasks == ["x"] and view.timeline.bars[0][:5] == ["x", 1, 1, 2, "succeeded"]
    assert "kernelflow-dag" not in view.static_html()
    with pytest.raises(kf.exceptions.RunNotFoundError):
        timeline("r-missing")
    with pytest.raises(TypeError, match="a Run or a run id"):
        TimelineWidget.for_run(42)  # type: ignore[arg-type]


def test_the_static_gantt_has_one_bar_per_attempt_with_its_data() -> None:
    widget = TimelineWidget.for_run(gated_run())
    html_page = widget.static_html()
    assert html_page.startswith("<div class='kf-timeline'")
    page = "".join(embedded_svgs(html_page))  # the Gantt, an <img> with a data URI
    bars = re.findall(r"<rect class='kf-bar' data-task='(\w+)' data-attempt='(\d+)' data-status='(\w+)'", page)
    assert bars == [(b[0], str(b[1]), b[4]) for b in widget.bars]
    assert "b attempt 1: failed" in page and "RuntimeError: boom" in page
    assert "class='kf-wait' data-task='e' data-kind='waiting'" in page
    assert re.search(r"<g class='kf-row' data-task='d' data-status='failed'>", page)  # final colours
    bundle = widget._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert data["text/html"] == html_page


def test_a_live_run_is_followed_until_it_ends() -> None:
    @kf.approval("Go?")
    def gate():
        return 1

    def after(gate):
        return gate + 1

    run = kf.workflow("live_tl", [gate, after]).run()
    assert run.status == "waiting"
    widget = TimelineWidget.for_run(run)
    try:
        assert poller.watching(widget)
        before = widget.last_seq
        widget.seq = 1  # the user looks back; new events must not move the slider
        kf.approve(run.run_id, "gate")
        run.wait()
        widget._next_poll = 0.0  # poll now, whatever the last update cost
        assert widget.poll() is False  # the run ended: nothing left to follow
    finally:
        poller.unwatch(widget)  # the shared thread would drop it at its next turn
    assert widget.last_seq > before and widget.seq == 1
    assert widget.status == "succeeded" and widget.status_at(widget.last_seq) == {"gate": "succeeded", "after": "succeeded"}
    follower = TimelineWidget.for_run(run)
    assert not poller.watching(follower)


def test_the_javascript_is_small_and_dependency_free() -> None:
    js = Path(timeline_module.__file__).with_name("timeline.js").read_text()
    assert len(js.encode()) < 8_000  # saved widget state carries it into every executed notebook
    assert not re.search(r"^\s*import\b", js, re.MULTILINE)
    for selector in ("kf-timeline", "kf-bar", "data-attempt", "kf-scrub", "kf-scrub-label", '"range"', "scrub_status"):
        assert selector in js
