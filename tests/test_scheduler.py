"""The scheduler with real subprocess runs: intervals, overlap, missed runs, one per store, SIGTERM.

Runs are held open by a file the test deletes, never by timing; waiting is
polling with generous timeouts.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fake_clock import FakeClock
from kernelflow.store import FolderStore

from kernelflow.scheduler import Scheduler
from kernelflow.schedules import fire_times_between

UTC = timezone.utc
HOLD_MODULE = """\
import os, pathlib, time

def wait():
    here = pathlib.Path(__file__).parent
    (here / f"started-{os.getpid()}").write_text("")
    while (here / "hold").exists():
        time.sleep(0.05)
    return "released"
"""


def hold_flow(folder: Path, schedule: str) -> Path:
    (folder / "holdmod.py").write_text(HOLD_MODULE)
    path = folder / "held.yaml"
    path.write_text(f"name: held\nschedule: {schedule}\ntasks:\n  - id: wait\n    run: holdmod:wait\n")
    (folder / "hold").write_text("")
    return path


def quick_flow(folder: Path, schedule: str) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(
        "name: tiny\ninputs: {x: {type: int, default: 1}}\n"
        f"schedule: {schedule}\n"
        "tasks:\n  - id: hello\n    run: shell\n    argv: [echo, '{{inputs.x}}']\n"
    )
    return path


def wait_until(condition: Callable[[], Any], timeout: float = 60.0, every: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def triggers(store: FolderStore) -> list[dict[str, Any]]:
    return store.sql("SELECT * FROM triggers ORDER BY scheduled_for, fired_at, trigger_id").to_dicts()


def started_markers(folder: Path) -> int:
    return len(list(folder.glob("started-*")))


# --------------------------------------------------------------------------- in-process, real runs


@pytest.mark.slow
def test_one_second_interval_runs_subprocesses_recorded_with_their_trigger(tmp_path: Path) -> None:
    flow = quick_flow(tmp_path, "{every: 1s, inputs: {x: 7}}")
    store = FolderStore(tmp_path / "store")
    scheduler = Scheduler(store, [flow], tick=0.2, log=io.StringIO())
    thread = threading.Thread(target=scheduler.serve, kwargs={"install_signals": False})
    thread.start()
    try:
        wait_until(lambda: sum(t["outcome"] == "succeeded" for t in triggers(store)) >= 2, what="two succeeded runs")
    finally:
        scheduler.request_stop()
        thread.join(60)
    assert not thread.is_alive() and scheduler.stopped
    done = [t for t in triggers(store) if t["outcome"] == "succeeded"]
    assert all(t["kind"] == "interval" and t["schedule"] == "tiny" and t["exit_code"] == 0 for t in done)
    assert all(t["scheduled_for"].microsecond == 0 for t in done)  # aligned to whole seconds
    runs = store.sql(
        "SELECT run_id, status, inputs ->> 'x' AS x, json_extract_string(e.payload, '$.trigger.trigger_id') AS trigger_id, "
        "json_extract_string(e.payload, '$.trigger.kind') AS kind FROM runs JOIN events e USING (run_id) WHERE e.type = 'RunStarted'"
    ).to_dicts()
    by_trigger = {r["trigger_id"]: r for r in runs}
    for t in done:
        run = by_trigger[t["trigger_id"]]  # the run knows its trigger, the trigger its run
        assert (run["run_id"], run["status"], run["x"], run["kind"]) == (t["run_id"], "succeeded", "7", "interval")
    # Nothing of one (schedule, scheduled_for) fired twice.
    times = [t["scheduled_for"] for t in triggers(store)]
    assert len(times) == len(set(times))
    status = json.loads((tmp_path / "store" / "scheduler" / "status.json").read_text())
    assert status["state"] == "stopped" and status["schedules"][0]["name"] == "tiny"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("policy", "while_held", "final"),
    [
        ("skip", ["started", "skipped_overlap", "skipped_overlap"], ["succeeded", "skipped_overlap", "skipped_overlap"]),
        ("queue", ["started", "queued", "skipped_overlap"], ["succeeded", "succeeded", "skipped_overlap"]),
        ("allow", ["started", "started", "started"], ["succeeded", "succeeded", "succeeded"]),
    ],
)
def test_overlap_policies(tmp_path: Path, policy: str, while_held: list[str], final: list[str]) -> None:
    flow = hold_flow(tmp_path, f"{{every: 60s, overlap: {policy}}}")
    store = FolderStore(tmp_path / "store")
    clock = FakeClock(datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC))
    scheduler = Scheduler(store, [flow], clock=clock, log=io.StringIO())
    scheduler.start()
    scheduler.tick()
    assert triggers(store) == []  # nothing was due yet
    clock.advance(minutes=1)
    scheduler.tick()
    wait_until(lambda: started_markers(tmp_path) == 1, what="the first run's task to start")
    for _ in range(2):  # two more fire times while the first run is held
        clock.advance(minutes=1)
        scheduler.tick()
    assert [t["outcome"] for t in triggers(store)] == while_held
    if policy == "allow":
        wait_until(lambda: started_markers(tmp_path) == 3, what="three runs side by side")
    else:
        assert started_markers(tmp_path) == 1
    (tmp_path / "hold").unlink()

    def settled() -> bool:
        scheduler.tick()
        return [t["outcome"] for t in triggers(store)] == final

    wait_until(settled, what=f"outcomes {final}")
    scheduler.shutdown()
    rows = triggers(store)
    assert [t["scheduled_for"] for t in rows] == [datetime(2026, 1, 1, 12, m) for m in (1, 2, 3)]
    assert all(t["run_id"] for t in rows if t["outcome"] == "succeeded")
    if policy == "queue":  # the queued one started after the first ended
        assert rows[1]["started_at"] >= rows[0]["ended_at"]


@pytest.mark.slow
@pytest.mark.parametrize("missed", ["skip", "catch_up"])
def test_missed_runs_after_downtime(tmp_path: Path, missed: str) -> None:
    flow = quick_flow(tmp_path, f"{{every: 60s, missed: {missed}, max_catch_up: 2}}")
    store = FolderStore(tmp_path / "store")
    # An earlier scheduler session fired 12:00, then nothing ran until 12:10.
    store.schedules.record_trigger({"trigger_id": "t-old", "schedule": "tiny", "kind": "interval", "outcome": "succeeded",
                                    "scheduled_for": "2026-01-01T12:00:00.000000Z", "fired_at": "2026-01-01T12:00:00.100000Z"})  # fmt: skip
    clock = FakeClock(datetime(2026, 1, 1, 12, 10, 0, 200_000, tzinfo=UTC))
    scheduler = Scheduler(store, [flow], clock=clock, log=io.StringIO())
    scheduler.start()
    scheduler.tick()
    scheduler.tick()  # a second tick at the same time fires nothing again

    def settled() -> list[dict[str, Any]]:
        scheduler.tick()
        rows = [t for t in triggers(store) if t["trigger_id"] != "t-old"]
        return rows if all(t["ended_at"] is not None for t in rows) else []

    rows = wait_until(settled, what="every trigger to end")
    scheduler.shutdown()
    minute = {t["scheduled_for"].minute: (t["kind"], t["outcome"]) for t in rows}
    assert len(rows) == len(minute) == 10  # 12:01 .. 12:10, each once
    assert minute[10] == ("interval", "succeeded")  # on time: fired normally
    if missed == "skip":
        assert all(minute[m] == ("interval", "missed") for m in range(1, 10))
    else:  # the two most recent missed times run, one after another; older ones stay missed
        assert all(minute[m] == ("interval", "missed") for m in range(1, 8))
        assert minute[8] == minute[9] == ("catch_up", "succeeded")
        by_minute = {t["scheduled_for"].minute: t for t in rows}
        assert by_minute[8]["ended_at"] <= by_minute[9]["started_at"] and by_minute[9]["ended_at"] <= by_minute[10]["started_at"]


@pytest.mark.slow
def test_a_new_registration_never_catches_up_on_times_before_it(tmp_path: Path) -> None:
    from kernelflow import schedule_api

    flow = quick_flow(tmp_path, "{every: 1h}")
    store = FolderStore(tmp_path / "store")
    registered = schedule_api.schedule(flow, name="late", every="60s", missed="catch_up", max_catch_up=1, store=store.location)
    assert registered.registered_at is not None
    # The scheduler starts 3.5 minutes after the registration (it was not running meanwhile).
    clock = FakeClock(registered.registered_at + timedelta(minutes=3, seconds=30))
    expected = fire_times_between(registered, registered.registered_at, clock())
    scheduler = Scheduler(store, [], clock=clock, log=io.StringIO())
    scheduler.start()

    def settled() -> list[dict[str, Any]]:
        scheduler.tick()
        rows = triggers(store)
        return rows if rows and all(t["ended_at"] is not None for t in rows) else []

    rows = wait_until(settled, what="the registration's triggers to end")
    scheduler.shutdown()
    assert sorted(t["scheduled_for"].replace(tzinfo=UTC) for t in rows) == expected  # none before it was registered
    outcomes = [(t["kind"], t["outcome"]) for t in rows]
    assert outcomes[-2:] == [("catch_up", "succeeded"), ("interval", "succeeded")]
    assert all(o == ("interval", "missed") for o in outcomes[:-2])


@pytest.mark.slow
def test_fire_now_respects_overlap_and_names_unknown_schedules(tmp_path: Path) -> None:
    flow = hold_flow(tmp_path, "{webhook: {secret_env: HELD_SECRET}}")
    store = FolderStore(tmp_path / "store")
    scheduler = Scheduler(store, [flow], log=io.StringIO())
    scheduler.start()
    try:
        unknown = scheduler.fire_now("nope")
        assert unknown["outcome"] == "failed_to_start" and "no schedule named 'nope'; known: held" in unknown["detail"]
        first = scheduler.fire_now("held", kind="webhook")
        assert first["outcome"] == "started" and first["kind"] == "webhook"
        second = scheduler.fire_now("held")
        assert second["outcome"] == "skipped_overlap" and first["trigger_id"] in second["detail"]
        (tmp_path / "hold").unlink()
        wait_until(lambda: (scheduler.tick(), {t["trigger_id"]: t["outcome"] for t in triggers(store)}.get(first["trigger_id"]) == "succeeded")[1])
    finally:
        scheduler.shutdown()
    assert scheduler.fire_now("held")["outcome"] == "refused"  # stopped: nothing new


# --------------------------------------------------------------------------- a real `scheduler start` process


def start_scheduler(store: Path, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "kernelflow.scheduler_cli", "--store", str(store), "scheduler", "start", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def status_file(store: Path) -> dict[str, Any]:
    try:
        return json.loads((store / "scheduler" / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


@pytest.mark.slow
def test_sigterm_lets_a_running_run_finish_within_grace_and_a_second_scheduler_is_refused(tmp_path: Path) -> None:
    flow = hold_flow(tmp_path, "{every: 1s}")
    store = tmp_path / "store"
    proc = start_scheduler(store, str(flow), "--grace", "120", "--tick", "0.2")
    try:
        wait_until(lambda: started_markers(tmp_path) == 1, what="the scheduled run's task to start")
        second = subprocess.run(
            [sys.executable, "-m", "kernelflow.scheduler_cli", "--store", str(store), "scheduler", "start", str(flow)],
            check=False, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 1
        assert f"another scheduler is running on the store {store}: pid {proc.pid} on host {os.uname().nodename}, since" in second.stderr
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: status_file(store).get("state") == "stopping", what="the scheduler to say it is stopping")
        recorded = len(FolderStore(store).schedules.trigger_records())
        assert proc.poll() is None  # still waiting for its run
        (tmp_path / "hold").unlink()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    _, err = proc.communicate()
    view = FolderStore(store)
    rows = triggers(view)
    first = rows[0]
    assert (first["outcome"], first["exit_code"]) == ("succeeded", 0), err
    assert view.sql("SELECT status FROM runs WHERE run_id = ?", [first["run_id"]]).item() == "succeeded"
    # After SIGTERM nothing new was fired: only the end of the running trigger was recorded.
    assert len(view.schedules.trigger_records()) == recorded + 1
    assert "received SIGTERM" in err and status_file(store)["state"] == "stopped"
    assert view.lease_holder("@scheduler") is None


@pytest.mark.slow
def test_sigterm_after_grace_interrupts_the_run_which_resumes(tmp_path: Path) -> None:
    flow = hold_flow(tmp_path, "{every: 1s}")
    store = tmp_path / "store"
    proc = start_scheduler(store, str(flow), "--grace", "1", "--tick", "0.2")
    try:
        wait_until(lambda: started_markers(tmp_path) == 1, what="the scheduled run's task to start")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    _, err = proc.communicate()
    view = FolderStore(store)
    [held] = [t for t in triggers(view) if t["run_id"]]
    assert held["outcome"] == "interrupted", err
    assert f"kernelflow resume {held['run_id']}" in held["detail"]
    assert view.sql("SELECT status FROM runs WHERE run_id = ?", [held["run_id"]]).item() != "succeeded"
    (tmp_path / "hold").unlink()
    resumed = subprocess.run(
        [sys.executable, "-m", "kernelflow", "--store", str(store), "resume", held["run_id"]],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert FolderStore(store).sql("SELECT status FROM runs WHERE run_id = ?", [held["run_id"]]).item() == "succeeded"
