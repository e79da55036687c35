"""Time travel in Python: snapshots of a run at a point (``run.at``) and diffs of two runs (``kf.diff``)."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from kernelflow.store import FolderStore

import kernelflow as kf
from kernelflow import events as ev
from kernelflow.diffs import diff_runs, same_value
from kernelflow.events import Event
from kernelflow.exceptions import KernelflowError, RunNotFoundError, TimeTravelError
from kernelflow.reducer import fold
from kernelflow.snapshots import Snapshot, latest_snapshot, snapshot_at
from kernelflow.store_access import use_store

BASE_TS = 1_795_000_000_000_000  # 2026-11-18, UTC microseconds


def files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and mtime: what "nothing written" compares."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _workflow(name: str = "travel"):
    def extract(day: int = 1):
        return pl.DataFrame({"day": [day] * 3, "v": [1, 2, 3]})

    def total(extract):
        return int(extract["v"].sum())

    @kf.task(continue_on_failure=True)
    def check(extract, day: int = 1):
        if day > 1:
            raise ValueError(f"no data for day {day}")
        return {"ok": True}

    def report(total, check):
        return f"total={total}"

    return kf.workflow(name, [extract, total, check, report], max_parallel=1)


@pytest.fixture
def runs(tmp_store: FolderStore):
    """Two real runs of one workflow in ``tmp_store``: day 1 (all succeed) and day 2 (check fails)."""
    use_store(tmp_store.path)
    try:
        wf = _workflow()
        first = wf.run(day=1)
        second = wf.run(day=2, raise_on_failure=False)
    finally:
        use_store(None)
    return wf, first, second


# --- snapshots ----------------------------------------------------------------------


def test_a_snapshot_at_every_seq_is_the_fold_and_matches_state_at(tmp_store: FolderStore, runs) -> None:
    wf, run, _ = runs
    events = tmp_store.read_run(run.run_id)
    for event in events:
        snap = snapshot_at(tmp_store, run.run_id, event.seq, wf)
        assert snap.state == fold(events[: event.seq + 1])
        assert (snap.seq, snap.ts, snap.status) == (event.seq, event.timestamp, snap.state.status)
        assert snap.ts.tzinfo is timezone.utc
        sql = tmp_store.sql(
            "SELECT task_id AS task, status, attempt, iteration, started_at, ended_at FROM state_at(?, ?) ORDER BY task",
            [run.run_id, event.seq],
        )
        assert snap.tasks.drop("problem").sort("task").equals(sql), event.seq
    assert snapshot_at(tmp_store, run.run_id, events[-1].seq).state == run.state
    assert latest_snapshot(tmp_store, run.run_id).state == run.state


def test_points_by_time_iso_text_and_task(tmp_store: FolderStore, runs) -> None:
    wf, run, _ = runs
    events = tmp_store.read_run(run.run_id)
    total_done = next(e for e in events if e.type == ev.TASK_SUCCEEDED and e.task_id == "total")
    assert snapshot_at(tmp_store, run.run_id, "total", wf).seq == total_done.seq  # right after its final event
    naive = total_done.timestamp.replace(tzinfo=None)
    same_time = [e.seq for e in events if e.ts == total_done.ts]
    expected = max(same_time)  # everything recorded up to that instant
    for point in (naive, total_done.timestamp, total_done.timestamp.astimezone(timezone(timedelta(hours=-5))),
                  naive.isoformat(), naive.isoformat() + "Z", total_done.timestamp.isoformat()):
        assert snapshot_at(tmp_store, run.run_id, point, wf).seq == expected, point
    # Between two events: the state after the earlier one.
    later = events[total_done.seq + 1]
    if later.ts > total_done.ts + 1:
        assert snapshot_at(tmp_store, run.run_id, naive + timedelta(microseconds=1)).seq == expected
    assert snapshot_at(tmp_store, run.run_id, datetime(2100, 1, 1)).seq == events[-1].seq


def test_outputs_are_those_known_then_and_artifacts_load_lazily(tmp_store: FolderStore, runs, monkeypatch) -> None:
    wf, run, _ = runs
    loads: list[Any] = []
    real_load = tmp_store.load_artifact
    monkeypatch.setattr(tmp_store, "load_artifact", lambda ref: loads.append(ref) or real_load(ref))

    early = snapshot_at(tmp_store, run.run_id, 2, wf)  # extract started, nothing finished
    assert dict(early.outputs) == {} and "extract" not in early.outputs
    with pytest.raises(KernelflowError, match=r"task 'extract' of run .* has no output at seq 2 \(status running\)"):
        early["extract"]

    snap = snapshot_at(tmp_store, run.run_id, "total", wf)
    assert list(snap.outputs) == ["extract", "total"] and len(snap.outputs) == 2
    assert loads == []  # listing outputs loads nothing
    assert snap["total"] == 6 and loads == []  # inline: in the event itself
    frame = snap["extract"]
    assert isinstance(frame, pl.DataFrame) and frame["v"].to_list() == [1, 2, 3]
    assert snap.output("extract") is frame and snap.outputs["extract"] is frame and len(loads) == 1  # loaded once
    with pytest.raises(KeyError):
        snap.outputs["report"]
    with pytest.raises(TimeTravelError, match=r"has no task 'totl' at seq \d+; its tasks then: .*Did you mean 'total'\?"):
        snap["totl"]
    assert snap.inputs == {"day": 1}
    assert snap.tasks["task"].to_list() == ["extract", "total", "check", "report"]  # the workflow's order
    assert snap.tasks.filter(pl.col("task") == "report")["status"].item() in ("pending", "scheduled", "running")


def test_a_failed_task_shows_its_problem(tmp_store: FolderStore, runs) -> None:
    wf, _, run = runs
    snap = snapshot_at(tmp_store, run.run_id, "check", wf)
    row = snap.tasks.filter(pl.col("task") == "check").row(0, named=True)
    assert (row["status"], row["attempt"], row["problem"]) == ("failed", 1, "ValueError: no data for day 2")
    with pytest.raises(KernelflowError, match=r"has no output at seq \d+ \(status failed: ValueError: no data for day 2\)"):
        snap["check"]


def test_errors_say_what_is_wrong_and_nothing_is_written(tmp_store: FolderStore, runs) -> None:
    wf, run, _ = runs
    last = len(tmp_store.read_run(run.run_id)) - 1
    tmp_store.close()  # compact, so that the store folder stops changing
    before = files(tmp_store.path)
    with pytest.raises(RunNotFoundError, match=rf"no run 'r-nope' in store {tmp_store.path}; list the runs there with kf.history\(\)"):
        snapshot_at(tmp_store, "r-nope", 0)
    for seq in (last + 1, -1):
        with pytest.raises(TimeTravelError, match=rf"run {run.run_id} has no seq {seq}: its events are seq 0 to {last}"):
            snapshot_at(tmp_store, run.run_id, seq)
    with pytest.raises(TimeTravelError, match=r"started at 2\d{3}-.* UTC; 2001-01-01 00:00:00.000000 UTC is before it"):
        snapshot_at(tmp_store, run.run_id, datetime(2001, 1, 1))
    with pytest.raises(TimeTravelError, match=r"is before it"):
        snapshot_at(tmp_store, run.run_id, "2001-01-01T00:00:00+00:00")
    with pytest.raises(TimeTravelError, match=r"no task 'reprot', and it is not an ISO timestamp either; its tasks are: "
                                               r"extract, total, check, report. Did you mean 'report'\?"):
        snapshot_at(tmp_store, run.run_id, "reprot", wf)
    for bad in (1.5, True, None):
        with pytest.raises(TimeTravelError, match=r"cannot travel to .*: give a seq \(int\), a datetime"):
            snapshot_at(tmp_store, run.run_id, bad)  # type: ignore[arg-type]
    assert files(tmp_store.path) == before


def _durable(run_id: str = "gated") -> list[Event]:
    steps = [
        (ev.RUN_STARTED, None, None, {"tasks": ["load", "approve", "pause", "ship"], "inputs": {"n": 3}}),
        (ev.TASK_STARTED, "load", 1, {}),
        (ev.TASK_SUCCEEDED, "load", 1, {"output": [1, 2, 3], "output_ref": None, "stored": True}),
        (ev.APPROVAL_REQUESTED, "approve", None, {"message": "Ship 3 rows?", "preview": [1, 2, 3],
                                                  "input_schema": {"type": "object", "properties": {"note": {"type": "string"}}},
                                                  "timeout_s": 3600, "expires_at": BASE_TS + 3_600_000_000,
                                                  "on_timeout": "reject", "on_reject": "fail", "iteration": 0}),
        (ev.BREAKPOINT_HIT, "pause", None, {"inputs": {"load": "[1, 2, 3]"}}),
        (ev.RUN_SUSPENDED, None, None, {"waiting": [{"task": "approve", "kind": "approval"}], "how": "gate"}),
        (ev.APPROVAL_GRANTED, "approve", None, {"by": {"user": "ada", "host": "lab", "pid": 1, "via": "cli"},
                                                "answered_at": BASE_TS + 60_000_000, "input": {"note": "ok"}, "comment": ""}),
        (ev.RUN_RESUMED, None, None, {"from_status": "waiting", "from_version": "v1", "version": "v1",
                                      "interrupted": False, "reset": [], "tasks": ["load", "approve", "pause", "ship"]}),
    ]
    return [Event(run_id, seq, BASE_TS + seq * 1_000, t, "gated", "v1", task, a, p) for seq, (t, task, a, p) in enumerate(steps)]


def test_pending_approvals_and_tasks_that_never_finished(tmp_store: FolderStore) -> None:
    for event in _durable():
        tmp_store.append(event)
    waiting = snapshot_at(tmp_store, "gated", 5)
    assert waiting.status == "waiting"
    assert waiting.pending_approvals == [
        {
            "task": "approve",
            "message": "Ship 3 rows?",
            "requested_at": datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=BASE_TS + 3_000),
            "expires_at": datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=BASE_TS + 3_600_000_000),
            "input_schema": {"type": "object", "properties": {"note": {"type": "string"}}},
        }
    ]  # the breakpoint waits too, but it is not an approval
    assert snapshot_at(tmp_store, "gated", 2).pending_approvals == []
    assert snapshot_at(tmp_store, "gated", 7).pending_approvals == []  # answered
    assert snapshot_at(tmp_store, "gated", "load").seq == 2
    with pytest.raises(TimeTravelError, match=r"task 'approve' never finished in run gated \(it is scheduled at seq 7\), "
                                               r"so there is no state right after it; pick a seq or a time instead"):
        snapshot_at(tmp_store, "gated", "approve")
    with pytest.raises(TimeTravelError, match=r"task 'ship' never finished in run gated \(it is pending at seq 7\)"):
        snapshot_at(tmp_store, "gated", "ship")


def test_repr_and_html_say_which_run_when_and_how(tmp_store: FolderStore) -> None:
    for event in _durable():
        tmp_store.append(event)
    snap = snapshot_at(tmp_store, "gated", 5)
    assert isinstance(snap, Snapshot)
    text = repr(snap)
    assert text.startswith("<Snapshot of run gated (gated) at seq 5, 2026-11-18 ") and text.endswith(
        " UTC: waiting; 1 pending, 1 succeeded, 2 waiting>"
    )
    page = snap._repr_html_()
    assert "run gated (gated) at seq 5" in page and "<table" in page
    assert "Waiting for approval" in page and "Ship 3 rows?" in page
    assert "<Snapshot" not in page and "&lt;" not in page.split("<table")[0]


# --- diffs --------------------------------------------------------------------------


def test_diff_of_two_runs_compares_inputs_statuses_and_outputs_by_value(tmp_store: FolderStore, runs) -> None:
    _, first, second = runs
    diff = diff_runs(tmp_store, first.run_id, second)  # an id or a Run
    assert diff.columns == [
        "task", "status_a", "status_b", "duration_ms_a", "duration_ms_b", "output_a", "output_b", "same_output", "changed",
    ]
    rows = {r["task"]: r for r in diff.iter_rows(named=True)}
    assert list(rows) == ["<input:day>", "extract", "total", "check", "report"]
    day = rows["<input:day>"]
    assert (day["status_a"], day["output_a"], day["output_b"], day["same_output"], day["changed"]) == (None, "1", "2", False, True)
    extract = rows["extract"]  # artifacts, loaded and compared as frames: the day column differs
    assert (extract["output_a"], extract["same_output"], extract["changed"]) == ("DataFrame(3 × 2)", False, True)
    assert extract["duration_ms_a"] > 0 and extract["duration_ms_b"] > 0
    total = rows["total"]
    assert (total["status_a"], total["status_b"], total["output_a"], total["same_output"], total["changed"]) == (
        "succeeded", "succeeded", "6", True, False,
    )
    check = rows["check"]
    assert (check["status_a"], check["status_b"], check["output_b"], check["same_output"], check["changed"]) == (
        "succeeded", "failed", None, None, True,
    )
    same = diff_runs(tmp_store, first.run_id, first.run_id)
    assert not same["changed"].any() and same["same_output"].to_list() == [True] * 5


def test_diff_across_workflows_and_unknown_runs(tmp_store: FolderStore, runs) -> None:
    _, first, _ = runs
    def publish():
        return 1

    use_store(tmp_store.path)
    try:
        other = kf.workflow("other", [publish]).run()
    finally:
        use_store(None)
    diff = diff_runs(tmp_store, first.run_id, other.run_id)
    by_task = {r["task"]: r for r in diff.iter_rows(named=True)}
    assert by_task["<input:day>"]["output_b"] is None and by_task["<input:day>"]["changed"]
    assert by_task["extract"]["status_b"] is None and by_task["extract"]["changed"]
    assert by_task["publish"]["status_a"] is None and by_task["publish"]["status_b"] == "succeeded"
    with pytest.raises(RunNotFoundError, match="no run 'r-missing' in store"):
        diff_runs(tmp_store, first.run_id, "r-missing")


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (1, 1, True),
        (1, 1.0, True),
        ([1, {"k": "v"}], [1, {"k": "v"}], True),
        ("x", "y", False),
        (pl.DataFrame({"a": [1]}), pl.DataFrame({"a": [1]}), True),
        (pl.DataFrame({"a": [1]}), pl.DataFrame({"a": [2]}), False),
        (pl.DataFrame({"a": [1]}), [1], False),
        ({"frame": pl.DataFrame({"a": [1]})}, {"frame": pl.DataFrame({"a": [1]})}, None),  # == cannot say
    ],
)
def test_same_value(a: Any, b: Any, same: bool | None) -> None:
    assert same_value(a, b) is same


def test_same_value_of_arrow_tables_and_numpy_arrays() -> None:
    import numpy as np
    import pyarrow as pa

    assert same_value(pa.table({"a": [1, 2]}), pa.table({"a": [1, 2]})) is True
    assert same_value(pa.table({"a": [1, 2]}), pa.table({"a": [1, 3]})) is False
    assert same_value(np.arange(3), np.arange(3)) is True
    assert same_value(np.arange(3), np.arange(4)) is False


def test_modules_write_nothing_even_on_a_live_store(tmp_store: FolderStore) -> None:
    for event in _durable():
        tmp_store.append(event)
    segment = tmp_store.segment_path
    assert segment is not None and os.path.exists(segment)
    before = files(tmp_store.path)
    snapshot_at(tmp_store, "gated", 3)
    latest_snapshot(tmp_store, "gated")
    diff_runs(tmp_store, "gated", "gated")
    assert files(tmp_store.path) == before


def test_kf_diff_of_run_objects_reads_their_own_store(tmp_path: Path) -> None:
    def one():
        return 1

    use_store(tmp_path / "first")
    run = kf.workflow("own_store", [one]).run()
    use_store(tmp_path / "second")
    try:
        assert run.at(0).seq == 0  # the handle reads its own store
        assert not kf.diff(run, run)["changed"].any()
    finally:
        use_store(None)
