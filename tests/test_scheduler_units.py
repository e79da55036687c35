"""The scheduler's decisions in one process: firing on time, missed and caught-up times, overlap,
trigger history across restarts, requests, status, and shutdown.

Nothing here starts a process: the scheduler is given a clock the test moves and a ``launch``
that records each firing's command and hands back a run handle the test ends with an exit code
(the real processes are tests/test_scheduler.py's, marked slow). The store is a real one in
tmp_path: trigger records, registrations, the status file and the lease are the real files.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fake_clock import FakeClock
from kernelflow.store import FolderStore

from kernelflow.events import Event
from kernelflow.scheduler import (
    LATE_LIMIT_S,
    TRIGGER_ENV,
    Firing,
    Scheduler,
    SchedulerBusyError,
    _iso,
    _parse_iso,
    load_sources,
)
from kernelflow.schedules import parse_schedule

UTC = timezone.utc
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def flow_text(name: str, schedule: str) -> str:
    return f"name: {name}\nschedule: {schedule}\ntasks:\n  - id: hello\n    run: shell\n    argv: [echo, hi]\n"


def write_flow(folder: Path, schedule: str, name: str = "tiny") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(flow_text(name, schedule))
    return path



class Run:
    """What the scheduler sees of a firing's process; the test ends it (``end``)."""

    def __init__(self, pid: int, argv: list[str], cwd: str, env: dict[str, str], output: Any) -> None:
        self.pid, self.argv, self.cwd, self.env = pid, argv, cwd, env
        self.log_path = Path(output.name)
        self.returncode: int | None = None
        self.signals: list[int] = []
        self.stop_on: int | None = None  # the signal that ends it (None: it ignores signals)
        self.waited: list[float | None] = []

    @property
    def trigger(self) -> dict[str, Any]:
        return json.loads(self.env[TRIGGER_ENV])

    def end(self, code: int) -> None:
        self.returncode = code

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self.waited.append(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.argv, timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if sig == self.stop_on:
            self.returncode = -sig


class Launcher:
    """The scheduler's ``launch``: records every run it is asked to start, starts nothing."""

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self.pids = itertools.count(900_001)
        self.error: OSError | None = None

    def __call__(self, argv: list[str], *, cwd: str, env: dict[str, str], output: Any) -> Run:
        if self.error is not None:
            raise self.error
        run = Run(next(self.pids), argv, cwd, env, output)
        self.runs.append(run)
        return run


@pytest.fixture
def store(tmp_path: Path) -> FolderStore:
    s = FolderStore(tmp_path / "store")
    yield s
    s.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def launcher() -> Launcher:
    return Launcher()


def make(store: FolderStore, sources: list[Path], clock: FakeClock, launcher: Launcher, **kwargs: Any) -> Scheduler:
    kwargs.setdefault("log", io.StringIO())
    return Scheduler(store, sources, clock=clock, launch=launcher, sleep=lambda s: clock.advance(seconds=s), **kwargs)


def records(store: FolderStore) -> list[tuple[str, str, str, str]]:
    """Every trigger record appended, in order: (trigger_id, kind, scheduled_for HH:MM:SS, outcome)."""
    return [(r["trigger_id"], r["kind"], r["scheduled_for"][11:19], r["outcome"]) for r in store.schedules.trigger_records()]


def latest(store: FolderStore) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in store.schedules.trigger_records():
        out[r["trigger_id"]] = r
    return out


def outcomes(store: FolderStore) -> list[tuple[str, str, str]]:
    """The latest state of each trigger, in the order they were first recorded: (kind, HH:MM:SS, outcome)."""
    return [(r["kind"], r["scheduled_for"][11:19], r["outcome"]) for r in latest(store).values()]


def run_started(store: FolderStore, run_id: str, trigger_id: str, ts: int, status_event: str | None = None) -> None:
    """What the engine writes for a run started by a trigger (and, optionally, how it ended)."""
    store.append(Event(run_id, 0, ts, "RunStarted", "tiny", "v1", payload={"trigger": {"trigger_id": trigger_id}, "tasks": []}))
    if status_event:
        store.append(Event(run_id, 1, ts + 1, status_event, "tiny", "v1"))


# --------------------------------------------------------------------------- helpers of the module


def test_iso_and_parse_iso_round_trip_in_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "America/New_York")  # UTC whatever the machine's local time
    time.tzset()
    try:
        assert _parse_iso("2026-03-01T06:00:00Z").utcoffset() == timedelta(0)
    finally:
        monkeypatch.undo()
        time.tzset()
    paris = datetime(2026, 3, 1, 7, 0, 0, 5, tzinfo=timezone(timedelta(hours=1)))
    assert _iso(paris) == "2026-03-01T06:00:00.000005Z"
    assert _parse_iso("2026-03-01T06:00:00.000005Z") == paris
    assert _parse_iso("2026-03-01T06:00:00.000005Z").tzinfo == UTC
    assert _parse_iso("2026-03-01T07:00:00+01:00") == datetime(2026, 3, 1, 6, 0, tzinfo=UTC)
    assert [_parse_iso(v) for v in (None, "", 42, "yesterday")] == [None, None, None, None]


def test_firing_record_names_the_trigger_and_its_times(tmp_path: Path) -> None:
    s = parse_schedule({"every": "1m"}, name="tiny", target=write_flow(tmp_path, "{every: 1m}"))
    firing = Firing("t-1", s, "interval", T0, T0 + timedelta(seconds=1.5), {"x": 1})
    assert firing.record("missed", detail="d") == {
        "trigger_id": "t-1", "schedule": "tiny", "kind": "interval", "scheduled_for": "2026-01-01T12:00:00.000000Z",
        "fired_at": "2026-01-01T12:00:01.500000Z", "outcome": "missed", "detail": "d",
    }  # fmt: skip


def test_log_lines_carry_a_utc_timestamp_and_a_closed_stream_is_ignored(store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    out = io.StringIO()
    scheduler = make(store, [], clock, launcher, log=out)
    clock.advance(seconds=1.256)
    scheduler.log("hello")
    assert out.getvalue() == "2026-01-01T12:00:01.25Z scheduler: hello\n"  # hundredths of a second
    out.close()
    scheduler.log("not written")  # a closed terminal must not stop the scheduler


def test_log_goes_to_stderr_by_default(store: FolderStore, clock: FakeClock, launcher: Launcher, capsys: pytest.CaptureFixture[str]) -> None:
    scheduler = Scheduler(store, [], clock=clock, launch=launcher)
    scheduler.log("to stderr")
    assert capsys.readouterr().err == "2026-01-01T12:00:00.00Z scheduler: to stderr\n"


# --------------------------------------------------------------------------- sources


def test_load_sources_reads_folders_files_and_notebooks_and_reports_problems(tmp_path: Path) -> None:
    folder = tmp_path / "flows"
    folder.mkdir()
    write_flow(folder, "{every: 1m}", "b_flow")
    (folder / "a_flow.yml").write_text(flow_text("a_flow", "{every: 2m}"))
    (folder / ".hidden.yaml").write_text(flow_text("hidden", "{every: 1m}"))
    (folder / "notes.txt").write_text("not read: only *.yaml and *.yml in a folder")
    (folder / "plain.yaml").write_text("name: plain\ntasks: []\n")  # no schedule: nothing, no problem
    cells = [
        {"cell_type": "markdown", "source": "%%workflow md\nschedule: {every: 1m}\ntasks: []\n"},
        {"cell_type": "code", "source": ["%%workflow nb_flow\n", "schedule: {every: 5m}\n", "tasks:\n", "  - id: a\n    run: shell\n    argv: [echo]\n"]},
        {"cell_type": "code", "source": "%%workflow\nschedule: {every: 1m}\ntasks: []\n"},  # no name
        {"cell_type": "code", "source": "%%notworkflow x\nschedule: {every: 1m}\ntasks: []\n"},
        {"cell_type": "code", "source": "%%workflow no_schedule\ntasks:\n  - id: a\n    run: shell\n    argv: [echo]\n"},
        {"cell_type": "code", "source": "%%workflow py_flow\nschedule = {'every': '1m'}\n"},  # Python, not YAML
        {"cell_type": "code", "source": "%%workflow forced --yaml\nschedule: {every: 3m}\n"},  # no tasks: YAML only if told
        "not a cell",
        {"cell_type": "code"},
        {"cell_type": "code", "source": 42},
    ]
    notebook = tmp_path / "report.ipynb"
    notebook.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    other = tmp_path / "data.csv"
    other.write_text("a,b\n")
    bad = write_flow(tmp_path, "{every: 1m, overlap: sometimes}", "bad")
    found, problems = load_sources([folder, notebook, other, tmp_path / "gone", bad])
    assert [(s.name, s.every, s.origin) for s in found] == [
        ("a_flow", 120.0, str(folder / "a_flow.yml")),
        ("b_flow", 60.0, str(folder / "b_flow.yaml")),
        ("nb_flow", 300.0, f"{notebook} cell 2"),
        ("forced", 180.0, f"{notebook} cell 7"),
    ]
    assert found[2].target == str(notebook)
    assert problems[0] == f"{other}: not a workflow file (.yaml, .yml) or notebook (.ipynb)"
    assert problems[1] == f"{tmp_path / 'gone'}: no such file or folder"
    assert problems[2].startswith(f"{bad} line 2") and "unknown overlap policy 'sometimes'" in problems[2]
    assert len(problems) == 3


def test_load_sources_names_an_unreadable_notebook_and_keeps_the_others(tmp_path: Path) -> None:
    notebook = tmp_path / "broken.ipynb"
    notebook.write_text("{not json")
    listed = tmp_path / "list.ipynb"
    listed.write_text("[]")  # JSON, but not a notebook: no cells, no schedules
    empty = tmp_path / "empty.ipynb"
    empty.write_text("{}")
    flow = write_flow(tmp_path, "{every: 1m}")
    found, problems = load_sources([str(notebook), listed, empty, flow])
    assert [s.name for s in found] == ["tiny"]
    assert len(problems) == 1 and problems[0].startswith(f"{notebook}: cannot read notebook {notebook}: unexpected character")


# --------------------------------------------------------------------------- the lease


def test_one_scheduler_per_store(store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    first = make(store, [], clock, launcher)
    first.start()
    first.acquire()  # taking it again is a no-op
    second = make(FolderStore(store.location), [], clock, launcher)
    with pytest.raises(SchedulerBusyError) as info:
        second.start()
    holder = store.lease_holder("@scheduler")
    assert info.value.holder == holder and holder["pid"] == os.getpid()
    assert str(info.value) == (
        f"another scheduler is running on the store {store.location}: pid {os.getpid()} on host {holder['host']}, "
        f"since {holder['since']}. Only one scheduler may run per store (it would fire every schedule twice); "
        "stop that one first, or use `kernelflow scheduler status` to see it"
    )
    assert second.started_at is None
    # a holder caught while it writes its record: what is known is said, the rest is '?'
    store._leases.path("@scheduler").write_text("{")
    with pytest.raises(SchedulerBusyError, match=r": pid \? on host \?, since \?\. Only one scheduler"):
        second.start()
    first.shutdown()
    assert store.lease_holder("@scheduler") is None
    second.start()  # free again
    second.shutdown()


def test_start_logs_who_and_what(store: FolderStore, clock: FakeClock, launcher: Launcher, tmp_path: Path) -> None:
    out = io.StringIO()
    make(store, [], clock, launcher, log=out).start()
    assert out.getvalue() == f"2026-01-01T12:00:00.00Z scheduler: started (pid {os.getpid()}, store {store.location}, sources: none)\n"
    flow = write_flow(tmp_path, "{every: 1m}")
    out2 = io.StringIO()
    other = make(FolderStore(tmp_path / "other"), [flow, tmp_path], clock, launcher, log=out2)
    other.tick()  # a tick starts a scheduler that was not started
    assert other.started_at == T0
    assert f"sources: {flow}, {tmp_path})" in out2.getvalue()
    other.shutdown()


# --------------------------------------------------------------------------- firing on time


def test_an_interval_fires_at_each_fire_time_and_starts_a_run_with_its_trigger(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{every: 60s, inputs: {x: 7, label: 'a b'}}")
    out = io.StringIO()
    scheduler = make(store, [flow], clock, launcher, log=out)
    scheduler.start()
    scheduler.tick()
    assert records(store) == [] and launcher.runs == []  # a file's schedule counts from when it was first read
    clock.advance(seconds=59.999)
    scheduler.tick()
    assert launcher.runs == []
    clock.advance(seconds=0.001)  # 12:01:00.000 exactly
    scheduler.tick()
    [run] = launcher.runs
    [(trigger_id, kind, at, outcome)] = records(store)
    assert (kind, at, outcome) == ("interval", "12:01:00", "started")
    assert run.argv == [sys.executable, "-m", "kernelflow", "--store", store.location, "run", str(flow),
                        "-p", "x", "7", "-p", "label", "'a b'"]  # fmt: skip
    assert run.cwd == str(tmp_path)
    assert run.trigger == {"trigger_id": trigger_id, "schedule": "tiny", "kind": "interval", "scheduled_for": "2026-01-01T12:01:00.000000Z"}
    assert (run.env["KERNELFLOW_HOME"], run.env["KERNELFLOW_VIA"]) == (store.location, "scheduler")
    assert run.log_path == Path(store.location) / "outputs" / "tiny" / f"20260101T120100Z-{trigger_id}.log"
    assert run.log_path.exists()
    record = latest(store)[trigger_id]
    assert (record["pid"], record["detail"], record["fired_at"]) == (run.pid, f"log: {run.log_path}", "2026-01-01T12:01:00.000000Z")
    assert f"tiny: started interval run (trigger {trigger_id}, pid {run.pid}, scheduled for 2026-01-01T12:01:00.000000Z)" in out.getvalue()
    scheduler.tick()  # the same time again: nothing fires twice
    assert len(launcher.runs) == 1
    run.end(0)
    clock.advance(seconds=30)
    scheduler.tick()
    assert outcomes(store) == [("interval", "12:01:00", "succeeded")]
    assert "tiny: succeeded (trigger " + trigger_id + ", runs: none, exit code 0)" in out.getvalue()


def test_a_cron_fires_as_kind_cron_and_a_notebook_run_writes_its_executed_copy(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    cells = [{"cell_type": "code", "source": "%%workflow nb\nschedule: {cron: '*/5 * * * *'}\ntasks:\n  - id: a\n    run: shell\n    argv: [echo]\n"}]
    notebook = tmp_path / "report.ipynb"
    notebook.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    scheduler = make(store, [notebook], clock, launcher)
    scheduler.tick()
    clock.advance(minutes=5, seconds=3)
    scheduler.tick()
    [run] = launcher.runs
    [(trigger_id, kind, at, outcome)] = records(store)
    assert (kind, at, outcome) == ("cron", "12:05:00", "started")
    executed = Path(store.location) / "outputs" / "nb" / f"20260101T120503Z-{trigger_id}.ipynb"
    assert run.argv[-3:] == ["-o", str(executed), "--no-progress"] and run.argv[6] == str(notebook)
    run.end(0)
    scheduler.tick()
    assert latest(store)[trigger_id]["detail"] == f"exit code 0; notebook: {executed}"


@pytest.mark.parametrize(("spec", "kind", "late_s", "on_time"), [
    ("{every: 2m}", "interval", LATE_LIMIT_S, True), ("{every: 2m}", "interval", LATE_LIMIT_S + 0.001, False),
    ("{cron: '*/2 * * * *'}", "cron", LATE_LIMIT_S, True), ("{cron: '*/2 * * * *'}", "cron", LATE_LIMIT_S + 0.001, False),
])  # fmt: skip
def test_a_fire_time_reached_more_than_a_minute_late_was_missed(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher, spec: str, kind: str, late_s: float, on_time: bool) -> None:
    flow = write_flow(tmp_path, spec)
    out = io.StringIO()
    scheduler = make(store, [flow], clock, launcher, log=out)
    scheduler.tick()
    clock.advance(seconds=120 + late_s)
    scheduler.tick()
    assert outcomes(store) == [(kind, "12:02:00", "started" if on_time else "missed")]
    assert len(launcher.runs) == (1 if on_time else 0)
    assert ("policy missed=skip" in out.getvalue()) is not on_time


def test_missed_times_are_recorded_one_by_one_up_to_fifty(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{cron: '*/2 * * * *'}")
    out = io.StringIO()
    scheduler = make(store, [flow], clock, launcher, log=out)
    scheduler.tick()
    clock.advance(minutes=120, seconds=61)  # 12:02 .. 14:00 passed, 61 s late for 14:00: all 60 missed
    scheduler.tick()
    rows = store.schedules.trigger_records()
    assert len(rows) == 50 and launcher.runs == []
    assert [r["scheduled_for"][11:16] for r in (rows[0], rows[-1])] == ["12:22", "14:00"]
    assert {r["outcome"] for r in rows} == {"missed"} and {r["kind"] for r in rows} == {"cron"}
    assert rows[0]["detail"] == ("the scheduler was not running (or could not keep up) at this time; "
                                 "10 earlier fire time(s) since 2026-01-01T12:02:00.000000Z were missed too")  # fmt: skip
    assert rows[1]["detail"] == "the scheduler was not running (or could not keep up) at this time"
    assert ("tiny: 60 fire time(s) missed (2026-01-01T12:02:00.000000Z .. 2026-01-01T14:00:00.000000Z), policy missed=skip"
            in out.getvalue())  # fmt: skip


def test_exactly_fifty_missed_times_need_no_count(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{cron: '*/2 * * * *'}")
    scheduler = make(store, [flow], clock, launcher)
    scheduler.tick()
    clock.advance(minutes=100, seconds=61)
    scheduler.tick()
    rows = store.schedules.trigger_records()
    assert len(rows) == 50 and rows[0]["detail"] == "the scheduler was not running (or could not keep up) at this time"


def test_catch_up_runs_the_most_recent_missed_times_one_after_another(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{every: 1m, missed: catch_up, max_catch_up: 2}")
    out = io.StringIO()
    scheduler = make(store, [flow], clock, launcher, log=out)
    scheduler.tick()
    clock.advance(minutes=4, seconds=10)  # 12:01 .. 12:03 missed, 12:04 on time
    scheduler.tick()
    assert outcomes(store) == [
        ("interval", "12:01:00", "missed"),
        ("catch_up", "12:02:00", "started"),
        ("catch_up", "12:03:00", "queued"),
        ("interval", "12:04:00", "queued"),
    ]
    rows = store.schedules.trigger_records()
    assert rows[0]["detail"] == "the scheduler was not running (or could not keep up) at this time; beyond max_catch_up=2"
    assert rows[1]["detail"] == rows[2]["detail"] == "catch-up runs start one after another"
    assert f"tiny: catching up on 2026-01-01T12:02:00.000000Z (trigger {rows[1]['trigger_id']})" in out.getvalue()
    assert [r.trigger["scheduled_for"][11:16] for r in launcher.runs] == ["12:02"]
    assert [q["kind"] for q in scheduler.status()["queued"]] == ["catch_up", "interval"]
    launcher.runs[0].end(0)
    scheduler.tick()
    assert [r.trigger["kind"] for r in launcher.runs] == ["catch_up", "catch_up"]
    launcher.runs[1].end(1)
    scheduler.tick()
    assert [r.trigger["kind"] for r in launcher.runs] == ["catch_up", "catch_up", "interval"]
    launcher.runs[2].end(0)
    scheduler.tick()
    assert [o for _, _, o in outcomes(store)] == ["missed", "succeeded", "failed", "succeeded"]


def test_catch_up_of_fewer_missed_times_than_the_limit_runs_them_all(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{every: 1m, missed: catch_up, max_catch_up: 3}")
    scheduler = make(store, [flow], clock, launcher)
    scheduler.tick()
    clock.advance(minutes=3, seconds=5)  # 12:01, 12:02 missed; 12:03 on time
    scheduler.tick()
    assert outcomes(store) == [("catch_up", "12:01:00", "started"), ("catch_up", "12:02:00", "queued"), ("interval", "12:03:00", "queued")]
    clock.advance(minutes=3)  # 12:04 .. 12:06 missed again, still busy with the first catch-up: 12:06 is on time
    scheduler.tick()
    assert outcomes(store)[3:] == [("catch_up", "12:04:00", "queued"), ("catch_up", "12:05:00", "queued"), ("interval", "12:06:00", "queued")]


def test_catch_up_with_only_the_on_time_firing_starts_it(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{every: 1m, missed: catch_up}")
    scheduler = make(store, [flow], clock, launcher)
    scheduler.tick()
    clock.advance(minutes=1)
    scheduler.tick()
    assert outcomes(store) == [("interval", "12:01:00", "started")]
    clock.advance(minutes=2, seconds=30)  # 12:02 missed (and caught up) while 12:01 runs, 12:03 on time: both wait
    scheduler.tick()
    assert outcomes(store)[1:] == [("catch_up", "12:02:00", "queued"), ("interval", "12:03:00", "queued")]


def test_disabled_and_webhook_only_schedules_do_not_fire_by_time(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    write_flow(tmp_path, "{every: 1m, enabled: false}", "paused")
    write_flow(tmp_path, "{webhook: {secret_env: HOOK}}", "hook")
    scheduler = make(store, [tmp_path], clock, launcher, tick=3600)
    scheduler.tick()
    clock.advance(minutes=5)
    scheduler.tick()
    assert records(store) == [] and sorted(scheduler.schedules) == ["hook", "paused"]
    assert scheduler._wait_seconds() == 3600.0  # only the tick: nothing to wake for
    assert make(store, [], clock, launcher)._wait_seconds() == 1.0  # the default tick


# --------------------------------------------------------------------------- overlap


def overlap_scheduler(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher, policy: str, out: io.StringIO) -> Scheduler:
    flow = write_flow(tmp_path, f"{{every: 1m, overlap: {policy}}}")
    scheduler = make(store, [flow], clock, launcher, log=out)
    scheduler.tick()
    for _ in range(3):  # 12:01, 12:02, 12:03 while the first run goes on
        clock.advance(minutes=1)
        scheduler.tick()
    return scheduler


def test_overlap_skip_records_the_running_trigger(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    out = io.StringIO()
    overlap_scheduler(tmp_path, store, clock, launcher, "skip", out)
    assert outcomes(store) == [("interval", "12:01:00", "started"), ("interval", "12:02:00", "skipped_overlap"), ("interval", "12:03:00", "skipped_overlap")]
    [run] = launcher.runs
    first = records(store)[0][0]
    detail = f"a run of this schedule is still going (trigger {first}, pid {run.pid})"
    assert latest(store)[records(store)[1][0]]["detail"] == detail
    assert f"tiny: skipped, {detail}" in out.getvalue()


def test_overlap_queue_keeps_one_firing_waiting(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    out = io.StringIO()
    scheduler = overlap_scheduler(tmp_path, store, clock, launcher, "queue", out)
    assert outcomes(store) == [("interval", "12:01:00", "started"), ("interval", "12:02:00", "queued"), ("interval", "12:03:00", "skipped_overlap")]
    ids = [r[0] for r in records(store)]
    [run] = launcher.runs
    assert latest(store)[ids[1]]["detail"] == f"waits for the running trigger {ids[0]}"
    assert latest(store)[ids[2]]["detail"] == f"a run of this schedule is going and another is queued already (trigger {ids[0]}, pid {run.pid})"
    assert f"tiny: queued (trigger {ids[1]}) behind the running one" in out.getvalue()
    assert scheduler.status()["queued"] == [{"trigger_id": ids[1], "schedule": "tiny", "kind": "interval"}]
    run.end(0)
    scheduler.tick()  # the queued one starts when the running one ended
    assert [r.trigger["trigger_id"] for r in launcher.runs] == [ids[0], ids[1]]
    assert scheduler.status()["queued"] == []


def test_overlap_allow_starts_runs_side_by_side(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    out = io.StringIO()
    scheduler = overlap_scheduler(tmp_path, store, clock, launcher, "allow", out)
    assert [o for _, _, o in outcomes(store)] == ["started", "started", "started"]
    assert len(launcher.runs) == 3 and len(scheduler.status()["running"]) == 3


def test_a_queued_firing_waits_behind_queued_catch_ups_without_a_running_one(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    # Queued behind firings that have not started yet: "waits for" names the first queued one.
    flow = write_flow(tmp_path, "{every: 1m, overlap: queue, webhook: {secret_env: HOOK}}")
    launcher.error = FileNotFoundError(2, "No such file or directory")
    scheduler = make(store, [flow], clock, launcher)
    scheduler.tick()
    firing = scheduler._new_firing(scheduler.schedules["tiny"], "catch_up", T0, T0)
    scheduler._enqueue(firing, catch_up=True)
    record = scheduler.fire_now("tiny")
    assert (record["outcome"], record["detail"]) == ("queued", f"waits for the running trigger {firing.trigger_id}")
    again = scheduler.fire_now("tiny")  # one non-catch-up firing waits at most
    assert (again["outcome"], again["detail"]) == ("skipped_overlap", "a run of this schedule is going and another is queued already")


def test_allow_starts_queued_catch_ups_alongside(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{every: 1m, overlap: allow, missed: catch_up, max_catch_up: 2}")
    scheduler = make(store, [flow], clock, launcher)
    scheduler.tick()
    clock.advance(minutes=3, seconds=1)
    scheduler.tick()
    assert [r.trigger["scheduled_for"][11:16] for r in launcher.runs] == ["12:01", "12:02", "12:03"]


# --------------------------------------------------------------------------- outcomes of runs


def test_a_missing_target_or_python_fails_to_start(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{every: 1m}")
    store.schedules.register("reg", {"target": str(tmp_path / "gone.yaml"), "every": "1m"})
    out = io.StringIO()
    scheduler = make(store, [flow], clock, launcher, log=out)
    scheduler.tick()
    missing = scheduler.fire_now("reg")
    assert missing["outcome"] == "failed_to_start"
    assert missing["detail"] == f"target file {tmp_path / 'gone.yaml'} does not exist; fix the path with kf.schedule(...) or in registered"
    assert f"reg: failed to start: {missing['detail']}" in out.getvalue()
    launcher.error = FileNotFoundError(2, "No such file or directory")
    failed = scheduler.fire_now("tiny")
    assert (failed["outcome"], failed["detail"]) == ("failed_to_start", f"could not start {sys.executable}: No such file or directory")
    assert f"tiny: failed to start: could not start {sys.executable}: No such file or directory\n" in out.getvalue()
    launcher.error = OSError("no strerror")
    assert scheduler.fire_now("tiny")["detail"] == f"could not start {sys.executable}: no strerror"
    assert launcher.runs == [] and scheduler.status()["running"] == []
    assert latest(store)[failed["trigger_id"]]["outcome"] == "failed_to_start"


def fire_and_end(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher, code: int, runs: list[tuple[str, str | None]] = (),
                 log_lines: str | None = None) -> tuple[dict[str, Any], Run, str]:  # fmt: skip
    flow = write_flow(tmp_path, "{webhook: {secret_env: HOOK}}")
    out = io.StringIO()
    scheduler = make(store, [flow], clock, launcher, log=out)
    scheduler.start()
    fired = scheduler.fire_now("tiny", {"x": 2})
    run = launcher.runs[-1]
    for i, (run_id, end) in enumerate(runs):
        run_started(store, run_id, fired["trigger_id"], 1_795_000_000_000_000 + i * 1000, end)
    if log_lines is not None:
        run.log_path.write_text(log_lines)
    run.end(code)
    scheduler.tick()
    return latest(store)[fired["trigger_id"]], run, out.getvalue()


def test_exit_code_0_succeeded_with_the_runs_it_started(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    record, run, log = fire_and_end(tmp_path, store, clock, launcher, 0, [("r-b", "RunSucceeded"), ("r-a", "RunSucceeded")])
    assert (record["outcome"], record["run_id"], record["run_ids"], record["exit_code"], record["pid"]) == ("succeeded", "r-b", ["r-b", "r-a"], 0, run.pid)
    assert record["detail"] == "exit code 0" and record["kind"] == "manual"
    assert f"tiny: succeeded (trigger {record['trigger_id']}, runs: r-b, r-a, exit code 0)" in log
    assert run.argv[-2:] == ["x", "2"]


def test_exit_code_3_is_suspended_at_a_gate(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    record, _, _ = fire_and_end(tmp_path, store, clock, launcher, 3, [("r-1", None)])
    assert (record["outcome"], record["run_id"]) == ("suspended", "r-1")
    assert record["detail"] == "exit code 3; waiting at an approval gate or breakpoint: kernelflow approve, then kernelflow resume"


def test_exit_code_2_without_a_run_failed_to_start_and_names_the_log(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    record, run, _ = fire_and_end(tmp_path, store, clock, launcher, 2, [], "usage: ...\nerror: no such input 'x'\n\n  \n")
    assert (record["outcome"], record["run_id"], record["run_ids"]) == ("failed_to_start", None, None)
    assert record["detail"] == f"exit code 2; see {run.log_path}: error: no such input 'x'"
    run.log_path.write_bytes(b"caf\xe9 failed\n")  # not UTF-8: quoted anyway
    assert Scheduler._tail(run.log_path) == "caf\ufffd failed"


def test_exit_code_2_with_a_run_failed(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    record, run, _ = fire_and_end(tmp_path, store, clock, launcher, 2, [("r-1", "RunFailed")], "x" * 400)
    assert (record["outcome"], record["run_id"]) == ("failed", "r-1")
    assert record["detail"] == f"exit code 2; see {run.log_path}: " + "x" * 300


def test_other_exit_codes_failed_and_an_empty_log_is_not_quoted(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    record, run, log = fire_and_end(tmp_path, store, clock, launcher, 1, [])
    assert (record["outcome"], record["detail"]) == ("failed", f"exit code 1; see {run.log_path}")
    assert "runs: none, exit code 1)" in log


def test_a_run_killed_by_a_signal_failed(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    record, run, _ = fire_and_end(tmp_path, store, clock, launcher, -9, [])
    run.log_path.unlink()
    assert (record["outcome"], record["exit_code"]) == ("failed", -9)
    assert record["detail"].startswith(f"killed by signal SIGKILL; see {run.log_path}")
    assert Scheduler._tail(run.log_path) == ""  # gone: nothing to quote


# --------------------------------------------------------------------------- history across restarts


def old_record(store: FolderStore, trigger_id: str, outcome: str, scheduled_for: str, kind: str = "interval", schedule: str = "tiny", **extra: Any) -> None:
    store.schedules.record_trigger({"trigger_id": trigger_id, "schedule": schedule, "kind": kind, "outcome": outcome,
                                    "scheduled_for": scheduled_for, "fired_at": scheduled_for, **extra})  # fmt: skip


def test_a_restart_continues_from_the_last_fire_time_in_the_history(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{every: 1m}")
    old_record(store, "t-a", "succeeded", "2026-01-01T11:57:00.000000Z")
    old_record(store, "t-b", "succeeded", "2026-01-01T11:58:00.000000Z")
    old_record(store, "t-c", "succeeded", "2026-01-01T11:56:00.000000Z", kind="catch_up")  # older: not the last
    old_record(store, "t-m", "succeeded", "2026-01-01T11:59:30.000000Z", kind="manual")  # not a fire time
    old_record(store, "t-o", "succeeded", "2026-01-01T11:59:00.000000Z", schedule="other")
    old_record(store, "t-x", "succeeded", "not a time")
    store.schedules.close()
    scheduler = make(store, [flow], clock, launcher)
    scheduler.start()
    scheduler.tick()  # 11:59 was missed, 12:00 is on time
    assert outcomes(store)[6:] == [("interval", "11:59:00", "missed"), ("interval", "12:00:00", "started")]


def test_a_catch_up_in_the_history_is_where_a_schedule_left_off(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{every: 1m}")
    old_record(store, "t-c", "succeeded", "2026-01-01T11:59:00.000000Z", kind="catch_up")
    old_record(store, "t-r", "succeeded", "2026-01-01T11:58:00.000000Z", kind="cron")
    scheduler = make(store, [flow], clock, launcher)
    scheduler.tick()
    assert outcomes(store)[2:] == [("interval", "12:00:00", "started")]


def test_a_registration_counts_from_when_it_was_registered(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{every: 1h}")
    store.schedules.register("reg", {"target": str(flow), "every": "1m"})
    path = store.schedules.schedules_dir / "reg.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "registered_at": "2026-01-01T11:57:30Z"}))
    scheduler = make(store, [], clock, launcher)
    scheduler.tick()  # 11:58 and 11:59 were missed; 12:00 is on time; nothing before 11:57:30
    assert outcomes(store) == [("interval", "11:58:00", "missed"), ("interval", "11:59:00", "missed"), ("interval", "12:00:00", "started")]


def test_a_registration_in_the_future_fires_nothing_yet(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{every: 1h}")
    store.schedules.register("reg", {"target": str(flow), "every": "1m"})
    path = store.schedules.schedules_dir / "reg.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "registered_at": "2026-01-01T12:00:00Z"}))
    scheduler = make(store, [], clock, launcher)
    scheduler.tick()  # registered exactly now: 12:00 is not after it
    assert records(store) == []
    clock.advance(minutes=1)
    scheduler.tick()
    assert outcomes(store) == [("interval", "12:01:00", "started")]


def test_unfinished_triggers_of_a_dead_scheduler_are_settled_from_their_runs(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    old_record(store, "t-ok", "started", "2026-01-01T11:00:00.000000Z", pid=11)
    old_record(store, "t-bad", "started", "2026-01-01T11:01:00.000000Z")
    old_record(store, "t-gate", "started", "2026-01-01T11:02:00.000000Z")
    old_record(store, "t-run", "started", "2026-01-01T11:03:00.000000Z")  # its run is still "running": the scheduler died
    old_record(store, "t-none", "started", "2026-01-01T11:04:00.000000Z")
    old_record(store, "t-q", "queued", "2026-01-01T11:05:00.000000Z")
    old_record(store, "t-done", "started", "2026-01-01T11:06:00.000000Z")
    old_record(store, "t-done", "succeeded", "2026-01-01T11:06:00.000000Z")
    run_started(store, "r-ok", "t-ok", 1_795_000_000_000_000, "RunSucceeded")
    run_started(store, "r-bad", "t-bad", 1_795_000_000_001_000, "RunFailed")
    run_started(store, "r-gate", "t-gate", 1_795_000_000_002_000, "RunSuspended")
    run_started(store, "r-run", "t-run", 1_795_000_000_003_000)
    store.schedules.close()
    before = len(store.schedules.trigger_records())
    scheduler = make(store, [], clock, launcher)
    scheduler.start()
    settled = store.schedules.trigger_records()[before:]
    assert [(r["trigger_id"], r["outcome"], r["run_id"], r["run_ids"]) for r in settled] == [
        ("t-ok", "succeeded", "r-ok", ["r-ok"]),
        ("t-bad", "failed", "r-bad", ["r-bad"]),
        ("t-gate", "suspended", "r-gate", ["r-gate"]),
        ("t-run", "interrupted", "r-run", ["r-run"]),
        ("t-none", "interrupted", None, None),
        ("t-q", "interrupted", None, None),
    ]
    assert settled[0]["detail"] == f"the scheduler that started it (pid {os.getpid()}) stopped before recording its end"
    assert (settled[0]["pid"], settled[0]["kind"], settled[0]["scheduled_for"]) == (11, "interval", "2026-01-01T11:00:00.000000Z")
    assert (settled[0]["schedule"], settled[0]["fired_at"]) == ("tiny", "2026-01-01T11:00:00.000000Z")
    assert settled[5]["detail"] == "queued by a scheduler that stopped before starting it; it did not run"
    scheduler.shutdown()
    again = make(FolderStore(store.location), [], clock, launcher)
    again.start()  # settled once: the next scheduler has nothing to settle
    assert len(store.schedules.trigger_records()) == before + len(settled)
    again.shutdown()


def test_the_latest_record_of_a_trigger_is_the_one_written_last(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    # Two files (two scheduler sessions): "at" orders them, "n" orders records of one session.
    old_record(store, "t-0", "succeeded", "2026-01-01T10:00:00.000000Z")
    store.schedules.close()
    folder = store.schedules.triggers_dir
    base = {"schedule": "tiny", "kind": "interval", "scheduled_for": "2026-01-01T11:00:00.000000Z", "fired_at": "2026-01-01T11:00:00.000000Z"}
    lines = [
        {**base, "trigger_id": "t-1", "outcome": "succeeded", "at": "2026-01-01T11:00:05Z", "n": 2},
        {**base, "trigger_id": "t-2", "outcome": "started", "at": "2026-01-01T11:00:05Z", "n": 3},
        {**base, "trigger_id": "t-3", "outcome": "started", "at": "2026-01-01T11:00:05Z", "n": 4},
        {**base, "trigger_id": "t-4", "outcome": "started", "at": "2026-01-01T11:00:05Z"},  # written by hand: no n
    ]
    (folder / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    earlier = [
        {**base, "trigger_id": "t-1", "outcome": "started", "at": "2026-01-01T11:00:05Z", "n": 1},  # same at, lower n
        {**base, "trigger_id": "t-2", "outcome": "succeeded", "at": "2026-01-01T11:00:06Z", "n": 1},  # later at
        {**base, "trigger_id": "t-3", "outcome": "succeeded", "at": "2026-01-01T11:00:05Z", "n": 4},  # a tie: the later line
        {**base, "trigger_id": "t-4", "outcome": "succeeded", "at": "2026-01-01T11:00:05Z"},  # no n on either: a tie too
    ]
    (folder / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in earlier))
    scheduler = make(store, [], clock, launcher)
    scheduler.start()
    assert len(store.schedules.trigger_records()) == 9  # all four ended: nothing to settle


# --------------------------------------------------------------------------- schedules read at every tick


def test_reload_reports_duplicates_and_bad_registrations_once(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    first = tmp_path / "one"
    first.mkdir()
    a = write_flow(first, "{every: 1m}", "same")
    second = tmp_path / "two"
    second.mkdir()
    b = write_flow(second, "{every: 2m}", "same")
    store.schedules.register("same", {"target": str(a), "every": "5m"})
    store.schedules.register("reg", {"target": str(a), "every": "5m", "overlap": "sometimes"})
    store.schedules.register("ok", {"target": str(a), "cron": "0 6 * * *", "timezone": "Europe/Paris"})
    store.schedules.schedules_dir.joinpath("broken.json").write_text("{")
    out = io.StringIO()
    scheduler = make(store, [a, b], clock, launcher, log=out)
    found = scheduler.reload()
    assert sorted(found) == ["ok", "same"] and found["same"].every == 60.0 and found["same"].origin == str(a)
    assert found["ok"].registered_at is not None and found["ok"].origin == "registered"
    assert scheduler.problems == [
        f"schedule 'same' is declared twice ({a} and {b}); the first is used. Give one of them another name:",
        f"{store.schedules.schedules_dir / 'broken.json'} is not a schedule registration (damaged or edited by hand)",
        f"registered schedule 'reg' ({store.schedules.schedules_dir / 'reg.json'}): schedule 'reg': unknown overlap policy "
        "'sometimes'\n  fix: overlap is one of: skip, queue, allow",
        f"schedule 'same' is registered in the store and declared in {a}; the file's is used",
    ]
    scheduler.reload()
    logged = out.getvalue()
    assert all(logged.count(f"problem: {p}") == 1 for p in scheduler.problems)  # each reported once
    (store.schedules.schedules_dir / "broken.json").unlink()
    scheduler.reload()
    assert len(scheduler.problems) == 3  # fixed: no longer a problem
    assert scheduler.status()["problems"] == scheduler.problems


def test_a_schedule_first_read_later_counts_from_then(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    scheduler = make(store, [tmp_path], clock, launcher)
    scheduler.tick()
    clock.advance(minutes=5, seconds=30)
    write_flow(tmp_path, "{every: 1m}")  # 12:05:30: added while the scheduler runs
    scheduler.tick()
    assert records(store) == []
    clock.advance(seconds=30)
    scheduler.tick()
    assert outcomes(store) == [("interval", "12:06:00", "started")]


def test_requests_are_taken_at_the_next_tick(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    write_flow(tmp_path, "{webhook: {secret_env: HOOK}, inputs: {x: 1, y: 2}, overlap: allow}")
    scheduler = make(store, [tmp_path], clock, launcher)
    scheduler.start()
    store.schedules.request({"trigger_id": "t-req1", "schedule": "tiny", "inputs": {"x": 5}, "kind": "webhook"})
    scheduler.tick()
    store.schedules.request({"trigger_id": "t-req2", "schedule": "tiny", "inputs": ["not", "a", "mapping"], "kind": "cron"})
    scheduler.tick()
    assert [(r[0], r[1], r[3]) for r in records(store)] == [("t-req1", "webhook", "started"), ("t-req2", "manual", "started")]
    assert launcher.runs[0].argv[-6:] == ["-p", "x", "5", "-p", "y", "2"]  # the request's inputs over the schedule's
    assert launcher.runs[1].argv[-6:] == ["-p", "x", "1", "-p", "y", "2"]
    assert list(store.schedules.requests_dir.iterdir()) == []


def test_fire_now_refuses_unknown_schedules_and_kinds(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    out = io.StringIO()
    scheduler = make(store, [], clock, launcher, log=out)
    scheduler.start()
    with pytest.raises(ValueError, match="kind must be 'manual' or 'webhook', got 'cron'"):
        scheduler.fire_now("x", kind="cron")
    record = scheduler.fire_now("nope", trigger_id="t-given")
    assert record == {"trigger_id": "t-given", "schedule": "nope", "kind": "manual", "scheduled_for": "2026-01-01T12:00:00.000000Z",
                      "fired_at": "2026-01-01T12:00:00.000000Z", "outcome": "failed_to_start", "detail": "no schedule named 'nope'; known: none"}  # fmt: skip
    assert latest(store)["t-given"]["outcome"] == "failed_to_start"
    assert "nope: manual trigger refused: no schedule named 'nope'; known: none" in out.getvalue()
    write_flow(tmp_path, "{webhook: {secret_env: HOOK}}", "b_hook")
    write_flow(tmp_path, "{webhook: {secret_env: HOOK}}", "a_hook")
    scheduler.sources = [str(tmp_path)]
    generated = scheduler.fire_now("nope", kind="webhook")
    assert generated["detail"] == "no schedule named 'nope'; known: a_hook, b_hook"
    assert generated["trigger_id"].startswith("t-") and len(generated["trigger_id"]) == 14 and generated["kind"] == "webhook"
    started = scheduler.fire_now("a_hook", kind="webhook")  # found by reading the sources again
    assert (started["outcome"], started["kind"], started["scheduled_for"]) == ("started", "webhook", "2026-01-01T12:00:00.000000Z")
    assert f"a_hook: webhook trigger {started['trigger_id']}" in out.getvalue()
    scheduler.request_stop()
    assert scheduler.stopping
    assert scheduler.fire_now("a_hook", trigger_id="t-late") == {"trigger_id": "t-late", "schedule": "a_hook", "kind": "manual",
                                                                  "outcome": "refused", "detail": "the scheduler is shutting down"}  # fmt: skip
    assert "t-late" not in latest(store)


# --------------------------------------------------------------------------- status


def test_status_says_who_runs_what_and_what_fires_next(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{cron: '30 6 * * *', timezone: Europe/Paris, overlap: queue, missed: catch_up}")
    write_flow(tmp_path, "{every: 1m, enabled: false}", "paused")
    write_flow(tmp_path, "{webhook: {secret_env: HOOK}}", "hook")
    scheduler = make(store, [tmp_path], clock, launcher, tick=2.5, grace=7)
    assert scheduler.status()["started_at"] is None
    scheduler.tick()
    clock.advance(seconds=10)
    fired = scheduler.fire_now("tiny")
    [run] = launcher.runs
    status = json.loads(store.schedules.status_path.read_text())
    assert status == {**status, "pid": os.getpid(), "host": os.uname().nodename, "store": store.location,
                      "started_at": "2026-01-01T12:00:00.000000Z", "heartbeat_at": "2026-01-01T12:00:00.000000Z",
                      "tick_s": 2.5, "grace_s": 7.0, "sources": [str(tmp_path)], "state": "running",
                      "running": [], "queued": [], "problems": []}  # fmt: skip
    assert status["schedules"] == [
        {"name": "hook", "when": "webhook only", "target": str(tmp_path / "hook.yaml"), "origin": str(tmp_path / "hook.yaml"),
         "enabled": True, "overlap": "skip", "missed": "skip", "next_fire": None},
        {"name": "paused", "when": "every 1m", "target": str(tmp_path / "paused.yaml"), "origin": str(tmp_path / "paused.yaml"),
         "enabled": False, "overlap": "skip", "missed": "skip", "next_fire": None},
        {"name": "tiny", "when": "cron '30 6 * * *' (Europe/Paris)", "target": str(flow), "origin": str(flow),
         "enabled": True, "overlap": "queue", "missed": "catch_up", "next_fire": "2026-01-02T05:30:00.000000Z"},
    ]  # fmt: skip
    now = scheduler.status()
    assert now["heartbeat_at"] == "2026-01-01T12:00:10.000000Z"
    assert now["running"] == [{"trigger_id": fired["trigger_id"], "schedule": "tiny", "kind": "manual", "pid": run.pid,
                               "started_at": "2026-01-01T12:00:10.000000Z"}]  # fmt: skip
    assert scheduler.status(stopped=True)["state"] == "stopped"
    scheduler.request_stop()
    assert scheduler.status()["state"] == "stopping"


def test_a_status_file_that_cannot_be_written_is_logged(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    out = io.StringIO()
    scheduler = make(store, [], clock, launcher, log=out)
    scheduler.start()
    store.schedules.status_path.parent.mkdir(parents=True)
    store.schedules.status_path.mkdir()  # a folder where the file goes
    scheduler.tick()
    assert f"scheduler: could not write the status file: could not write {store.schedules.status_path}" in out.getvalue()


def test_the_wait_between_ticks_wakes_for_the_next_fire_time(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    write_flow(tmp_path, "{every: 1m}")
    scheduler = make(store, [tmp_path], clock, launcher, tick=30)
    scheduler.tick()
    clock.advance(seconds=50)
    assert scheduler._wait_seconds() == pytest.approx(10.005)
    clock.advance(seconds=9.999)
    assert scheduler._wait_seconds() == pytest.approx(0.01)  # 0.006 s: at least 0.01
    clock.advance(seconds=-39.999)  # 12:00:20: the tick comes first
    assert scheduler._wait_seconds() == 30.0


# --------------------------------------------------------------------------- stopping


def test_shutdown_lets_runs_finish_within_grace_and_interrupts_queued_firings(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{every: 1m, overlap: queue}")
    out = io.StringIO()
    ends_at = T0 + timedelta(minutes=3, seconds=2)
    heartbeats: list[tuple[str, str]] = []

    def sleep(seconds: float) -> None:
        status = json.loads(store.schedules.status_path.read_text())
        heartbeats.append((status["state"], status["heartbeat_at"][11:22]))
        clock.advance(seconds=seconds)
        if clock() >= ends_at:
            launcher.runs[0].end(0)

    scheduler = Scheduler(store, [flow], clock=clock, launch=launcher, sleep=sleep, grace=30, log=out)
    scheduler.tick()
    clock.advance(minutes=1)
    scheduler.tick()
    clock.advance(minutes=1)
    scheduler.tick()  # 12:02 queued behind 12:01
    scheduler.request_stop()
    clock.advance(minutes=1)
    scheduler.tick()  # stopping: nothing more happens at a tick (12:03 is not fired)
    scheduler.shutdown()
    assert outcomes(store) == [("interval", "12:01:00", "succeeded"), ("interval", "12:02:00", "interrupted")]
    assert latest(store)[records(store)[1][0]]["detail"] == "the scheduler stopped before this queued run started; it did not run"
    assert len(launcher.runs) == 1 and launcher.runs[0].signals == []
    assert clock() == ends_at  # waited for the run in steps of 0.2 s, writing the heartbeat meanwhile
    assert heartbeats[:2] == [("stopping", "12:03:00.00"), ("stopping", "12:03:00.20")] and len(heartbeats) == 10
    assert scheduler.stopped and store.lease_holder("@scheduler") is None
    assert json.loads(store.schedules.status_path.read_text())["state"] == "stopped"
    assert out.getvalue().endswith("2026-01-01T12:03:02.00Z scheduler: stopped\n")
    store.schedules.record_trigger({"trigger_id": "t-after"})  # each scheduler session has its own trigger file
    assert len(list(store.schedules.triggers_dir.iterdir())) == 2
    scheduler.release()  # again: nothing to release


def test_shutdown_after_grace_sends_sigterm_and_records_the_resume_command(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    out = io.StringIO()
    flow = write_flow(tmp_path, "{webhook: {secret_env: HOOK}}")
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(round(seconds, 6))
        clock.advance(seconds=seconds)

    scheduler = Scheduler(store, [flow], clock=clock, launch=launcher, sleep=sleep, grace=0.3, log=out)
    scheduler.start()
    fired = scheduler.fire_now("tiny")
    run = launcher.runs[0]
    run.stop_on = signal.SIGTERM
    run_started(store, "r-1", fired["trigger_id"], 1_795_000_000_000_000)
    run_started(store, "r-2", fired["trigger_id"], 1_795_000_000_001_000)  # a notebook may start several
    scheduler.shutdown()
    assert run.signals == [signal.SIGTERM]
    assert sleeps == [0.2, 0.1]  # the grace period, then SIGTERM stopped it at once
    assert clock() == T0 + timedelta(seconds=0.3)
    record = latest(store)[fired["trigger_id"]]
    assert (record["outcome"], record["exit_code"], record["run_id"]) == ("interrupted", -15, "r-1")
    assert record["detail"] == ("killed by signal SIGTERM; stopped by the scheduler's shutdown after the grace period; "
                                "continue with: kernelflow resume r-1 r-2")  # fmt: skip
    assert (f"grace period over: stopping tiny (trigger {fired['trigger_id']}, pid {run.pid}) with SIGTERM") in out.getvalue()


def test_a_run_that_ignores_sigterm_gets_sigkill(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    out = io.StringIO()
    flow = write_flow(tmp_path, "{webhook: {secret_env: HOOK}}")
    scheduler = make(store, [flow], clock, launcher, grace=0, log=out)
    scheduler.start()
    fired = scheduler.fire_now("tiny")
    run = launcher.runs[0]
    run.stop_on = signal.SIGKILL
    scheduler.shutdown()
    assert run.signals == [signal.SIGTERM, signal.SIGKILL]
    assert clock() == T0 + timedelta(seconds=5)  # SIGKILL 5 s (kill_after) after SIGTERM, checked every 0.1 s
    assert f"tiny (pid {run.pid}) still running: SIGKILL" in out.getvalue()
    record = latest(store)[fired["trigger_id"]]
    assert (record["outcome"], record["detail"]) == ("interrupted", "killed by signal SIGKILL; stopped by the scheduler's shutdown after the grace period")


def test_a_run_that_survives_sigkill_is_waited_for_then_left(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{webhook: {secret_env: HOOK}}")
    scheduler = make(store, [flow], clock, launcher, grace=0, kill_after=0)
    scheduler.start()
    fired = scheduler.fire_now("tiny")
    run = launcher.runs[0]  # ignores every signal (a process stuck in the kernel)
    scheduler.shutdown()
    assert run.signals == [signal.SIGTERM, signal.SIGKILL] and run.waited == [10]
    assert latest(store)[fired["trigger_id"]]["outcome"] == "started"  # never ended: the next scheduler settles it
    assert scheduler.stopped


def test_serve_ticks_until_sigterm_then_shuts_down(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{every: 1m}")
    out = io.StringIO()
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(round(seconds, 3))
        clock.advance(seconds=seconds)
        if len(waits) == 2:
            signal.raise_signal(signal.SIGTERM)  # as `kill PID` would
            signal.raise_signal(signal.SIGINT)  # a second one changes nothing

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    scheduler = Scheduler(store, [flow], clock=clock, launch=launcher, sleep=sleep, tick=45, grace=0, log=out)
    assert scheduler.serve() == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert waits == [45.0, 15.005]  # the tick, then until 12:01
    assert records(store) == [] and scheduler.stopped
    assert out.getvalue().count("received") == 1
    assert "scheduler: received SIGTERM: no new runs; waiting up to 0s for 0 running\n" in out.getvalue()


def test_serve_without_signal_handlers_stops_when_asked(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{every: 1m}")
    before = signal.getsignal(signal.SIGTERM)
    calls: list[float] = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        assert signal.getsignal(signal.SIGTERM) == before  # none installed
        clock.advance(seconds=seconds)
        scheduler.request_stop()

    out = io.StringIO()
    scheduler = Scheduler(store, [flow], clock=clock, launch=launcher, sleep=sleep, log=out)
    scheduler.start()
    assert scheduler.serve(install_signals=False) == 0
    assert len(calls) == 1 and scheduler.stopped and scheduler.started_at == T0
    assert out.getvalue().count("scheduler: started (pid") == 1  # started already: serve does not start it again


def test_a_stop_asked_during_a_tick_stops_before_sleeping(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{every: 1m}")
    clock.now = T0 - timedelta(minutes=1)

    def launch(argv: list[str], **kwargs: Any) -> Run:
        scheduler.request_stop()  # e.g. SIGTERM arrives while a run starts
        run = launcher(argv, **kwargs)
        run.stop_on = signal.SIGTERM  # (so that shutdown does not wait for it)
        return run

    def sleep(seconds: float) -> None:
        clock.advance(seconds=seconds)
        slept.append(seconds)

    slept: list[float] = []
    scheduler = Scheduler(store, [flow], clock=clock, launch=launch, sleep=sleep, grace=0, log=io.StringIO())
    scheduler.start()
    scheduler.tick()
    clock.advance(minutes=1)
    assert scheduler.serve(install_signals=False) == 0
    assert slept == [] and len(launcher.runs) == 1


def test_a_queued_firing_does_not_start_once_stopping(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    out = io.StringIO()
    scheduler = overlap_scheduler(tmp_path, store, clock, launcher, "queue", out)
    scheduler.request_stop()
    launcher.runs[0].end(0)
    scheduler.tick()  # the run's end is recorded; the queued one does not start
    assert len(launcher.runs) == 1
    assert [o for _, _, o in outcomes(store)] == ["succeeded", "queued", "skipped_overlap"]


def test_request_stop_wakes_a_serving_scheduler_at_once(store: FolderStore) -> None:
    import threading
    import time

    scheduler = Scheduler(store, [], tick=60, log=io.StringIO())  # the real clock and sleep
    assert scheduler.status()["grace_s"] == 30.0
    thread = threading.Thread(target=scheduler.serve)  # not the main thread: no signal handlers
    begun = time.monotonic()
    thread.start()
    while scheduler.started_at is None and time.monotonic() - begun < 10:
        time.sleep(0.01)
    scheduler.request_stop()
    thread.join(10)
    assert not thread.is_alive() and scheduler.stopped
    assert time.monotonic() - begun < 10  # not the 60 s tick
    assert abs((scheduler.started_at - datetime.now(UTC)).total_seconds()) < 10


def test_a_store_path_is_opened_and_python_can_be_chosen(tmp_path: Path, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{webhook: {secret_env: HOOK}}")
    scheduler = Scheduler(str(tmp_path / "store"), [flow], clock=clock, launch=launcher, python="/opt/py/bin/python3", log=io.StringIO())
    scheduler.start()
    scheduler.fire_now("tiny")
    assert launcher.runs[0].argv[:5] == ["/opt/py/bin/python3", "-m", "kernelflow", "--store", str(tmp_path / "store")]
    assert len(FolderStore(tmp_path / "store").schedules.trigger_records()) == 1
    launcher.runs[0].end(0)
    scheduler.shutdown()


def test_log_flushes_each_line_and_survives_a_full_disk(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    path = tmp_path / "scheduler.log"
    with open(path, "w") as stream:
        make(store, [], clock, launcher, log=stream).log("one")
        assert path.read_text() == "2026-01-01T12:00:00.00Z scheduler: one\n"  # flushed: another reader sees it

    class FullDisk(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

    make(store, [], clock, launcher, log=FullDisk()).log("no room")  # ignored: the scheduler goes on


def test_a_trigger_that_cannot_be_recorded_is_logged(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    out = io.StringIO()
    flow = write_flow(tmp_path, "{webhook: {secret_env: HOOK}}")
    scheduler = make(store, [flow], clock, launcher, log=out)
    scheduler.start()
    store.schedules.triggers_dir.write_text("a file where the folder goes")
    record = scheduler.fire_now("tiny", trigger_id="t-lost")
    assert record["outcome"] == "started"  # the run starts; its record is lost, and said so
    assert f"scheduler: could not record trigger t-lost: cannot create {store.schedules.triggers_dir}" in out.getvalue()


def test_a_bad_schedule_in_a_notebook_cell_names_the_cell_and_line(tmp_path: Path) -> None:
    cell = {"cell_type": "code", "source": "%%workflow nb\nname: nb\nschedule: {every: 1m, overlap: sometimes}\ntasks: []\n"}
    notebook = tmp_path / "report.ipynb"
    notebook.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    found, [problem] = load_sources([notebook])
    assert found == [] and problem.startswith(f"{notebook} cell 1 line 3")  # the cell's first line is %%workflow


def test_the_default_clock_is_utc_now(store: FolderStore) -> None:
    now = Scheduler(store, []).clock()
    assert now.tzinfo == UTC and abs((now - datetime.now(UTC)).total_seconds()) < 10


def test_shutdown_with_the_real_clock_waits_in_real_time(tmp_path: Path, store: FolderStore, launcher: Launcher) -> None:
    import time

    flow = write_flow(tmp_path, "{webhook: {secret_env: HOOK}}")
    scheduler = Scheduler(store, [flow], launch=launcher, grace=0.05, log=io.StringIO())  # real clock, real sleep
    scheduler.start()
    scheduler.fire_now("tiny")
    launcher.runs[0].stop_on = signal.SIGTERM
    begun = time.monotonic()
    scheduler.shutdown()
    assert 0.04 <= time.monotonic() - begun < 5 and launcher.runs[0].signals == [signal.SIGTERM]


def test_fire_now_uses_the_schedules_of_the_last_tick(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    # Edits to a file take effect at the next tick; fire_now reads the sources only for a name it does not know.
    flow = write_flow(tmp_path, "{webhook: {secret_env: HOOK}, inputs: {x: 1}, overlap: allow}")
    scheduler = make(store, [flow], clock, launcher)
    scheduler.tick()
    write_flow(tmp_path, "{webhook: {secret_env: HOOK}, inputs: {x: 2}, overlap: allow}")
    scheduler.fire_now("tiny")
    scheduler.tick()
    scheduler.fire_now("tiny")
    assert [r.argv[-1] for r in launcher.runs] == ["1", "2"]


def test_fifty_one_missed_times_count_the_oldest(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{cron: '*/2 * * * *'}")
    scheduler = make(store, [flow], clock, launcher)
    scheduler.tick()
    clock.advance(minutes=102, seconds=61)
    scheduler.tick()
    rows = store.schedules.trigger_records()
    assert len(rows) == 50 and rows[0]["detail"].endswith("; 1 earlier fire time(s) since 2026-01-01T12:02:00.000000Z were missed too")


def test_an_outage_of_more_than_ten_thousand_fire_times_is_counted_in_full(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    flow = write_flow(tmp_path, "{every: 1s}")
    scheduler = make(store, [flow], clock, launcher)
    scheduler.tick()
    clock.advance(seconds=20_000)
    scheduler.tick()
    rows = store.schedules.trigger_records()
    # 19 999 missed (the last is on time): 50 recorded, the first counting 19 949 older ones.
    assert rows[0]["detail"].endswith("; 19949 earlier fire time(s) since 2026-01-01T12:00:01.000000Z were missed too")


def test_a_manual_firing_queues_behind_catch_ups(tmp_path: Path, store: FolderStore, clock: FakeClock, launcher: Launcher) -> None:
    # Catch-ups waiting in the queue do not count as "another is queued already".
    flow = write_flow(tmp_path, "{every: 2m, overlap: queue, missed: catch_up, max_catch_up: 2}")
    scheduler = make(store, [flow], clock, launcher)
    scheduler.tick()
    clock.advance(minutes=6, seconds=61)  # 12:02, 12:04, 12:06 missed: two catch up, one runs, one waits
    scheduler.tick()
    assert scheduler.fire_now("tiny")["outcome"] == "queued"
    assert scheduler.fire_now("tiny")["outcome"] == "skipped_overlap"
