"""Schedule specs: validation messages, fire times (cron in time zones, across DST, intervals),
``schedule:`` in YAML, ``kf.schedule`` registrations, and the ``triggers`` SQL view."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from kernelflow.exceptions import DefinitionError
from kernelflow.schedules import (
    Schedule,
    fire_times_between,
    next_fire_times,
    parse_schedule,
)

UTC = timezone.utc
FLOW = """\
name: tiny
inputs: {x: {type: int, default: 1}}
tasks:
  - id: hello
    run: shell
    argv: [echo, "{{inputs.x}}"]
"""


@pytest.fixture
def flow(tmp_path: Path) -> Path:
    path = tmp_path / "flow.yaml"
    path.write_text(FLOW)
    return path


def sched(flow: Path, **spec) -> Schedule:
    return parse_schedule(spec, name="nightly", target=flow)


# --------------------------------------------------------------------------- fire times


class FakeClock:
    """A clock the test moves by hand (no waiting)."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def test_every_minute_cron_against_a_controllable_clock(flow: Path) -> None:
    s = sched(flow, cron="* * * * *", timezone="America/New_York")
    clock = FakeClock(datetime(2026, 5, 4, 10, 0, 30, tzinfo=UTC))
    fired = []
    last = clock()
    for _ in range(5):  # five "ticks", two minutes apart: every minute in between is due once
        now = clock.advance(minutes=2)
        fired += fire_times_between(s, last, now)
        last = now
    assert fired == [datetime(2026, 5, 4, 10, 1, tzinfo=UTC) + timedelta(minutes=i) for i in range(10)]
    assert s.next_fire(clock()) == datetime(2026, 5, 4, 10, 11, tzinfo=UTC)
    assert next_fire_times(s, datetime(2026, 5, 4, 10, 11, tzinfo=UTC), 2)[0] == datetime(2026, 5, 4, 10, 12, tzinfo=UTC)


def test_cron_is_read_in_its_time_zone(flow: Path) -> None:
    paris = sched(flow, cron="0 6 * * mon-fri", timezone="Europe/Paris")
    after = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)  # a Friday
    times = next_fire_times(paris, after, 2)
    assert [t.astimezone(ZoneInfo("Europe/Paris")).strftime("%a %H:%M") for t in times] == ["Mon 06:00", "Tue 06:00"]
    assert times[0] == datetime(2026, 1, 5, 5, 0, tzinfo=UTC)  # UTC+1 in winter
    with pytest.raises(ValueError, match="aware datetime"):
        paris.next_fire(datetime(2026, 1, 1))


def test_cron_across_daylight_saving_transitions(flow: Path) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    daily = sched(flow, cron="30 2 * * *", timezone="Europe/Berlin")
    # Spring forward (2026-03-29 02:00 -> 03:00): 02:30 does not exist; it fires at 03:00 local.
    spring = next_fire_times(daily, datetime(2026, 3, 28, 12, 0, tzinfo=UTC), 2)
    assert [t.astimezone(berlin).strftime("%m-%d %H:%M %Z") for t in spring] == ["03-29 03:00 CEST", "03-30 02:30 CEST"]
    # Fall back (2026-10-25 03:00 -> 02:00): 02:30 happens twice; a fixed-hour cron fires once.
    autumn = next_fire_times(daily, datetime(2026, 10, 24, 12, 0, tzinfo=UTC), 2)
    assert autumn == [datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 26, 1, 30, tzinfo=UTC)]
    # ... while an hourly one fires in both 02:00 hours (each is a real hour), 25 times that day.
    hourly = sched(flow, cron="0 * * * *", timezone="Europe/Berlin")
    day = fire_times_between(hourly, datetime(2026, 10, 24, 22, 0, tzinfo=UTC), datetime(2026, 10, 25, 23, 0, tzinfo=UTC))
    assert len(day) == 25 and len(set(day)) == 25
    assert [t.astimezone(berlin).strftime("%H:%M%z") for t in day[0:4]] == ["01:00+0200", "02:00+0200", "02:00+0100", "03:00+0100"]


def test_intervals_are_aligned_to_the_epoch(flow: Path) -> None:
    s = sched(flow, every="15m")
    assert next_fire_times(s, datetime(2026, 1, 1, 10, 7, 12, tzinfo=UTC), 3) == [
        datetime(2026, 1, 1, 10, 15, tzinfo=UTC), datetime(2026, 1, 1, 10, 30, tzinfo=UTC), datetime(2026, 1, 1, 10, 45, tzinfo=UTC),
    ]  # fmt: skip
    second = sched(flow, every="1s")
    start = datetime(2026, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC)
    assert fire_times_between(second, start, start + timedelta(seconds=3)) == [
        datetime(2026, 1, 1, 0, 0, s, tzinfo=UTC) for s in (1, 2, 3)
    ]
    # A long outage is not walked one step at a time; the most recent `limit` come back.
    recent = fire_times_between(second, start, start + timedelta(days=30), limit=5)
    assert len(recent) == 5 and recent[-1] == datetime(2026, 1, 31, 0, 0, 0, tzinfo=UTC)
    assert sched(flow, webhook={"secret_env": "S"}).next_fire(start) is None


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"cron": "* 25 * * *"}, "schedule 'nightly': invalid cron expression '* 25 * * *': field 2 (hour) is '25'"),
        ({"cron": "61 * * * *"}, "field 1 (minute) is '61'"),
        ({"cron": "0 0 * * funday"}, "field 5 (day of week) is 'funday'"),
        ({"cron": "* * * * * *"}, "it has 6 field(s), a cron expression has 5"),
        ({"cron": "0 0 31 2 *"}, "never fires"),
        ({"cron": "@dayly"}, "unknown cron shortcut '@dayly' (did you mean '@daily'?)"),
        ({"cron": "* * * * *", "timezone": "Europe/Pariss"}, "unknown time zone 'Europe/Pariss' (did you mean 'Europe/Paris'"),
        ({"cron": "* * * * *", "timezone": "Paris"}, "(did you mean 'Europe/Paris'?)"),
        ({"cron": "* * * * *", "every": "1m"}, "give either cron or every, not both"),
        ({}, "no cron or every: the schedule would never fire"),
        ({"every": "0s"}, "every must be greater than zero"),
        ({"every": "soon"}, "every must be a duration like"),
        ({"every": "1m", "overlap": "queued"}, "unknown overlap policy 'queued' (did you mean 'queue'?)"),
        ({"every": "1m", "missed": "catch-up"}, "unknown missed policy 'catch-up' (did you mean 'catch_up'?)"),
        ({"every": "1m", "missed": "catch_up", "max_catch_up": 0}, "max_catch_up must be a whole number from 1 to 100"),
        ({"every": "1m", "ovelrap": "skip"}, "unknown key 'ovelrap' (did you mean 'overlap'?)"),
        ({"webhook": {"secret": "x"}}, "webhook must be a mapping with a secret_env string"),
        ({"every": "1m", "inputs": ["x"]}, "inputs must map input names to values"),
    ],
)
def test_bad_specs_give_one_clear_error(flow: Path, spec: dict, expected: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_schedule(spec, name="nightly", target=flow)
    assert expected in str(info.value)
    assert "schedule 'nightly'" in str(info.value) and "fix:" in str(info.value)


def test_targets_must_exist_and_be_workflow_files_or_notebooks(tmp_path: Path, flow: Path) -> None:
    with pytest.raises(DefinitionError, match=r"target file '.*missing\.yaml' does not exist"):
        parse_schedule({"every": "1m"}, name="n", target=tmp_path / "missing.yaml")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(DefinitionError, match=r"target 'notes\.txt' is neither a workflow file \(\.yaml, \.yml\) nor a notebook"):
        parse_schedule({"every": "1m"}, name="n", target="notes.txt")
    with pytest.raises(DefinitionError, match="schedule name must be"):
        parse_schedule({"every": "1m"}, name="../evil", target=flow)
    ok = parse_schedule({"webhook": {"secret_env": "HOOK"}}, name="hook-only", target=flow)
    assert ok.kind == "webhook" and ok.target == str(flow) and ok.webhook == {"secret_env": "HOOK"}


# --------------------------------------------------------------------------- YAML schedule:


def test_yaml_schedule_is_kept_on_the_workflow_and_not_in_its_version(tmp_path: Path) -> None:
    import kernelflow as kf
    from kernelflow.yaml_compiler import read_schedules

    path = tmp_path / "flow.yaml"
    path.write_text(FLOW.replace("tasks:", "schedule: {cron: '0 6 * * *', timezone: Europe/Paris, inputs: {x: 3}, overlap: queue}\ntasks:"))
    wf = kf.load(path, {})
    [s] = wf.schedules
    assert (s.name, s.target, s.cron, s.timezone, dict(s.inputs), s.overlap) == ("tiny", str(path), "0 6 * * *", "Europe/Paris", {"x": 3}, "queue")
    assert read_schedules(path) == [s]
    plain = tmp_path / "plain.yaml"
    plain.write_text(FLOW)
    assert kf.load(plain, {}).schedules == ()
    assert kf.load(plain, {}).version == wf.version  # when it runs is not what it does
    assert "schedules" not in wf.to_dict()


def test_yaml_schedule_list_and_errors_name_the_file_line(tmp_path: Path) -> None:
    import kernelflow as kf

    path = tmp_path / "flow.yaml"
    path.write_text(FLOW.replace("tasks:", "schedule:\n  - {every: 15m}\n  - name: weekly\n    cron: '0 0 * * sun'\ntasks:"))
    assert [s.name for s in kf.load(path, {}).schedules] == ["tiny", "weekly"]
    cases = {
        "schedule:\n  cron: '0 6 * * *'\n  timezone: Mars/Olympus\n": ("line 5, column 13", "unknown time zone 'Mars/Olympus'"),
        "schedule:\n  - {every: 1m}\n  - {every: 2m}\n": ("line 5", "two schedules are named 'tiny'"),
        "schedule: {every: 1m, overlap: sometimes}\n": ("line 3", "schedule 'tiny': unknown overlap policy 'sometimes'"),
        "schedule: daily\n": ("line 3", "schedule must be a mapping"),
        "schedule: {cron: '* * * *'}\n": ("line 3", "it has 4 field(s)"),
    }
    for block, (where, message) in cases.items():
        path.write_text(FLOW.replace("tasks:", block + "tasks:"))
        with pytest.raises(DefinitionError) as info:
            kf.load(path, {})
        assert f"{path} {where}" in str(info.value) and message in str(info.value), str(info.value)


# --------------------------------------------------------------------------- kf.schedule


def test_kf_schedule_registers_and_lists_and_unschedules(flow: Path, kernelflow_home: Path) -> None:
    from kernelflow import schedule_api as api

    s = api.schedule(flow, cron="*/5 * * * *", timezone="Europe/Paris", inputs={"x": 4}, overlap="queue")
    assert (s.name, s.target, s.registered_at is not None) == ("flow", str(flow), True)
    record = json.loads((kernelflow_home / "schedules" / "flow.json").read_text())
    assert record["spec"]["cron"] == "*/5 * * * *" and record["spec"]["inputs"] == {"x": 4}
    listed = api.schedules()
    assert listed.names == ["flow"] and listed["flow"]["overlap"] == "queue"
    assert listed.df.schema["next_fire"].time_zone == "UTC"
    assert listed["flow"]["next_fire"] > datetime.now(UTC) and listed["flow"]["next_fire"].minute % 5 == 0
    assert "flow: cron '*/5 * * * *' (Europe/Paris)" in repr(listed)
    with pytest.raises(DefinitionError, match="unknown missed policy 'later'"):
        api.schedule(flow, name="other", every="1m", missed="later")
    assert api.schedules().names == ["flow"]  # nothing registered by the bad call
    api.unschedule("flow")
    assert len(api.schedules()) == 0
    with pytest.raises(Exception, match="no registered schedule 'flow'"):
        api.unschedule("flow")


def test_kf_schedule_of_a_notebook_workflow_needs_the_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kernelflow as kf
    from kernelflow import schedule_api as api

    def step():
        return 1

    wf = kf.workflow("nb_flow", [step])
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv("KERNELFLOW_NOTEBOOK", raising=False)
    with pytest.raises(DefinitionError, match=r"(?s)cannot tell which notebook defines workflow 'nb_flow'.*notebook="):
        api.schedule(wf, every="1h")
    notebook = tmp_path / "report.ipynb"
    notebook.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    monkeypatch.setenv("JPY_SESSION_NAME", str(notebook))
    s = api.schedule(wf, every="1h")
    assert (s.name, s.target, s.every) == ("nb_flow", str(notebook), 3600.0)


def test_cli_status_and_list_show_a_kf_schedule(flow: Path, kernelflow_home: Path) -> None:
    from kernelflow import schedule_api as api

    api.schedule(flow, name="every_ten", every="10m")
    cli = [sys.executable, "-m", "kernelflow.scheduler_cli", "--store", str(kernelflow_home), "scheduler"]
    listed = subprocess.run(cli + ["list", "--json"], check=False, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["name"], row["when"], row["target"]) == ("every_ten", "every 10m", str(flow))
    assert datetime.fromisoformat(row["next_fire"]).minute % 10 == 0
    status = subprocess.run(cli + ["status"], check=False, capture_output=True, text=True, timeout=60)
    assert status.returncode == 1  # no scheduler is running
    assert "scheduler: not running (never started on this store)" in status.stdout
    assert "every_ten" in status.stdout and "every 10m" in status.stdout
    added = subprocess.run(cli + ["add", str(flow), "--name", "bad", "--cron", "* * 32 * *"], check=False, capture_output=True, text=True, timeout=60)
    assert added.returncode == 1
    assert "schedule 'bad': invalid cron expression '* * 32 * *': field 3 (day of month) is '32'" in added.stderr
    assert "Traceback" not in added.stderr


# --------------------------------------------------------------------------- the triggers view


def test_triggers_view_is_typed_when_empty_and_sees_other_processes(tmp_path: Path, kernelflow_home: Path) -> None:
    import kernelflow as kf

    empty = kf.sql("SELECT * FROM triggers")
    assert empty.height == 0 and empty.schema["scheduled_for"].__class__.__name__ == "Datetime"
    writer = textwrap.dedent(
        f"""
        from kernelflow.store import FolderStore
        files = FolderStore({str(kernelflow_home)!r}).schedules
        base = dict(trigger_id="t-1", schedule="nightly", kind="cron", scheduled_for="2026-03-01T06:00:00.000000Z",
                    fired_at="2026-03-01T06:00:00.250000Z", pid=42)
        files.record_trigger(dict(base, outcome="started"))
        files.record_trigger(dict(base, outcome="succeeded", run_id="r-1", run_ids=["r-1"], exit_code=0))
        files.record_trigger(dict(base, trigger_id="t-2", outcome="missed", detail="down"))
        """
    )
    subprocess.run([sys.executable, "-c", writer], check=True, timeout=60)
    rows = kf.sql("SELECT trigger_id, outcome, run_id, scheduled_for, started_at IS NOT NULL AS started, ended_at IS NOT NULL AS ended "
                  "FROM triggers ORDER BY trigger_id").rows()  # fmt: skip
    assert rows == [
        ("t-1", "succeeded", "r-1", datetime(2026, 3, 1, 6, 0), True, True),
        ("t-2", "missed", None, datetime(2026, 3, 1, 6, 0), False, True),
    ]
    # A record appended later, to the same or a new file, shows in the next query.
    subprocess.run([sys.executable, "-c", writer.replace('"t-2"', '"t-3"')], check=True, timeout=60)
    assert kf.sql("SELECT count(*) FROM triggers").item() == 3
