"""Schedule specs: validation messages, fire times (cron in time zones, across DST, intervals),
``schedule:`` in YAML, ``kf.schedule`` registrations, and the ``triggers`` SQL view."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fake_clock import FakeClock

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


@pytest.mark.slow  # starts `python -m kernelflow.scheduler_cli` subprocesses
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


@pytest.mark.slow  # writes from other processes
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


# --------------------------------------------------------------------------- the Schedule value


def test_kind_when_and_spec_of_each_kind_of_schedule(flow: Path) -> None:
    cron = sched(flow, cron="0 6 * * *", timezone="Europe/Paris", inputs={"x": 1}, overlap="queue", missed="catch_up",
                 max_catch_up=5, enabled=False)  # fmt: skip
    assert (cron.kind, cron.when, cron.tz) == ("cron", "cron '0 6 * * *' (Europe/Paris)", ZoneInfo("Europe/Paris"))
    assert cron.to_spec() == {"name": "nightly", "target": str(flow), "cron": "0 6 * * *", "timezone": "Europe/Paris", "inputs": {"x": 1},
                              "overlap": "queue", "missed": "catch_up", "max_catch_up": 5, "enabled": False}  # fmt: skip
    every = sched(flow, every="90m")
    assert (every.kind, every.when, every.every) == ("interval", "every 90m", 5400.0)
    assert every.to_spec() == {"name": "nightly", "target": str(flow), "every": "90m", "timezone": "UTC", "inputs": {},
                               "overlap": "skip", "missed": "skip", "max_catch_up": 3, "enabled": True}  # fmt: skip
    hook = sched(flow, webhook={"secret_env": "HOOK"})
    assert (hook.kind, hook.when) == ("webhook", "webhook only")
    assert hook.to_spec()["webhook"] == {"secret_env": "HOOK"} and "cron" not in hook.to_spec() and "every" not in hook.to_spec()
    # A spec read back gives the same schedule.
    for s in (cron, every, hook):
        assert parse_schedule(s.to_spec()) == s


def test_with_target_checks_the_new_target(tmp_path: Path, flow: Path) -> None:
    s = parse_schedule({"every": "1m"}, name="cell", check_target=False, origin="report.ipynb cell 3")
    assert s.target is None
    notebook = tmp_path / "report.IPYNB"  # suffixes in any case
    notebook.write_text("{}")
    moved = s.with_target(notebook)
    assert (moved.target, moved.origin) == (str(notebook), "report.ipynb cell 3")
    assert s.with_target(flow, origin="registered").origin == "registered"
    with pytest.raises(DefinitionError, match=r"^schedule 'cell': target file '.*gone\.yaml' does not exist"):
        s.with_target(tmp_path / "gone.yaml")


# --------------------------------------------------------------------------- fire times at the edges


def test_fire_times_are_strictly_after_and_up_to_until_inclusive(flow: Path) -> None:
    hourly = sched(flow, cron="0 * * * *")
    at = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    assert next_fire_times(hourly, at, 1) == [datetime(2026, 1, 1, 11, 0, tzinfo=UTC)]
    assert next_fire_times(hourly, at - timedelta(microseconds=1), 1) == [at]
    assert fire_times_between(hourly, at, at + timedelta(hours=1)) == [at + timedelta(hours=1)]
    assert fire_times_between(hourly, at, at + timedelta(hours=1) - timedelta(microseconds=1)) == []
    every = sched(flow, every="1h")
    assert next_fire_times(every, at, 2) == [at + timedelta(hours=1), at + timedelta(hours=2)]
    assert next_fire_times(every, at - timedelta(microseconds=1), 1) == [at]
    assert fire_times_between(every, at, at + timedelta(hours=2)) == [at + timedelta(hours=1), at + timedelta(hours=2)]
    assert next_fire_times(every, at, 0) == [] and next_fire_times(every, at, -1) == []


def test_fractional_intervals_keep_to_the_epoch_grid(flow: Path) -> None:
    s = sched(flow, every="1.5s")
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert next_fire_times(s, epoch, 3) == [epoch + timedelta(seconds=x) for x in (1.5, 3.0, 4.5)]
    day = datetime(2026, 1, 1, tzinfo=UTC)  # 1767225600 s after the epoch, a multiple of 1.5 s
    assert next_fire_times(s, day + timedelta(seconds=1), 1) == [day + timedelta(seconds=1.5)]


def test_after_and_until_must_be_aware(flow: Path) -> None:
    s = sched(flow, every="1m")
    naive = datetime(2026, 1, 1)
    with pytest.raises(ValueError) as info:
        next_fire_times(s, naive)
    assert str(info.value) == "after must be an aware datetime (with a tzinfo), got datetime.datetime(2026, 1, 1, 0, 0)"
    with pytest.raises(ValueError, match=r"^until must be an aware datetime \(with a tzinfo\), got datetime"):
        fire_times_between(s, datetime(2026, 1, 1, tzinfo=UTC), naive)
    with pytest.raises(ValueError, match=r"^after must be an aware datetime"):
        fire_times_between(s, naive, datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match=r"^after must be an aware datetime \(with a tzinfo\), got '2026-01-01'"):
        next_fire_times(s, "2026-01-01")  # type: ignore[arg-type]

    class NoOffset(timezone.__base__):  # a tzinfo whose utcoffset is None: not aware
        def utcoffset(self, dt):
            return None

    with pytest.raises(ValueError, match="after must be an aware datetime"):
        next_fire_times(s, datetime(2026, 1, 1, tzinfo=NoOffset()))
    # Any time zone is fine; answers are in UTC.
    [t] = next_fire_times(s, datetime(2026, 1, 1, 1, 0, 30, tzinfo=ZoneInfo("Europe/Paris")))
    assert t == datetime(2026, 1, 1, 0, 1, tzinfo=UTC) and t.tzinfo == UTC


def test_fire_times_between_keeps_the_most_recent_limit(flow: Path) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for spec in ({"every": "1m"}, {"cron": "* * * * *"}):
        s = sched(flow, **spec)
        assert fire_times_between(s, start, start + timedelta(minutes=5), limit=3) == [start + timedelta(minutes=m) for m in (3, 4, 5)]
        assert fire_times_between(s, start, start + timedelta(minutes=3), limit=3) == [start + timedelta(minutes=m) for m in (1, 2, 3)]
        assert fire_times_between(s, start, start + timedelta(minutes=4), limit=3) == [start + timedelta(minutes=m) for m in (2, 3, 4)]
        assert fire_times_between(s, start, start) == []
        assert fire_times_between(s, start, start - timedelta(minutes=5)) == []


def test_a_long_outage_of_an_interval_is_not_walked(flow: Path) -> None:
    s = sched(flow, every="1s")
    start = datetime(2000, 1, 1, tzinfo=UTC)
    until = datetime(2026, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC)  # 26 years of seconds: only the last 3 are looked at
    assert fire_times_between(s, start, until, limit=3) == [until - timedelta(seconds=x, microseconds=500_000) for x in (2, 1, 0)]
    # Exactly limit + 1 intervals back: the jump and the walk agree.
    after = datetime(2026, 1, 1, tzinfo=UTC)
    assert fire_times_between(s, after, after + timedelta(seconds=4), limit=3) == [after + timedelta(seconds=x) for x in (2, 3, 4)]
    assert fire_times_between(s, after - timedelta(microseconds=1), after + timedelta(seconds=4), limit=3) == [
        after + timedelta(seconds=x) for x in (2, 3, 4)
    ]


def test_a_cron_that_stops_firing_ends_its_fire_times(flow: Path) -> None:
    leap = sched(flow, cron="0 0 29 2 *")  # fires only in leap years
    assert next_fire_times(leap, datetime(2026, 1, 1, tzinfo=UTC), 2) == [
        datetime(2028, 2, 29, tzinfo=UTC), datetime(2032, 2, 29, tzinfo=UTC)
    ]  # fmt: skip
    hook = sched(flow, webhook={"secret_env": "S"})
    assert fire_times_between(hook, datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)) == []


def test_dst_in_new_york_a_fixed_hour_cron_and_a_minute_cron(flow: Path) -> None:
    ny = ZoneInfo("America/New_York")
    s = sched(flow, cron="30 1 * * *", timezone="America/New_York")
    # 2026-11-01: 01:30 EDT and 01:30 EST: once, at the first.
    assert next_fire_times(s, datetime(2026, 10, 31, 12, 0, tzinfo=UTC), 2) == [
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC), datetime(2026, 11, 2, 6, 30, tzinfo=UTC)
    ]  # fmt: skip
    every_30 = sched(flow, cron="*/30 * * * *", timezone="America/New_York")  # hour '*': both passes fire
    times = fire_times_between(every_30, datetime(2026, 11, 1, 4, 45, tzinfo=UTC), datetime(2026, 11, 1, 7, 0, tzinfo=UTC))
    assert [t.astimezone(ny).strftime("%H:%M%z") for t in times] == ["01:00-0400", "01:30-0400", "01:00-0500", "01:30-0500", "02:00-0500"]
    fixed_minute_list = sched(flow, cron="0 1,2 * * *", timezone="America/New_York")  # fixed hours: once
    times = fire_times_between(fixed_minute_list, datetime(2026, 11, 1, 4, 0, tzinfo=UTC), datetime(2026, 11, 1, 8, 0, tzinfo=UTC))
    assert [t.astimezone(ny).strftime("%H:%M%z") for t in times] == ["01:00-0400", "02:00-0500"]


# --------------------------------------------------------------------------- every message in full


def error(spec: Any, **kwargs: Any) -> DefinitionError:
    kwargs.setdefault("name", "nightly")
    with pytest.raises(DefinitionError) as info:
        parse_schedule(spec, **kwargs)
    return info.value


CRON_HINT = "write five fields, minute hour day-of-month month day-of-week, e.g. '*/15 * * * *' or '0 6 * * mon-fri'"


@pytest.mark.parametrize(
    ("cron", "message", "hint"),
    [
        ("", "cron must be a cron expression (text), got ''", CRON_HINT),
        ("   ", "cron must be a cron expression (text), got '   '", CRON_HINT),
        (15, "cron must be a cron expression (text), got 15", CRON_HINT),
        ("@often", "unknown cron shortcut '@often'", "use one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, or five fields"),
        ("@HOURLYY", "unknown cron shortcut '@HOURLYY' (did you mean '@hourly'?)", None),
        ("0 6 * *", "invalid cron expression '0 6 * *': it has 4 field(s), a cron expression has 5 "
                    "(minute hour day-of-month month day-of-week; no seconds field)", CRON_HINT),
        ("60 * * * *", "invalid cron expression '60 * * * *': field 1 (minute) is '60', which is not valid there "
                       "(allowed: 0-59, with * , - and /N steps)", CRON_HINT),
        ("* 24 * * *", "field 2 (hour) is '24', which is not valid there (allowed: 0-23, with", None),
        ("* * 0 * *", "field 3 (day of month) is '0', which is not valid there (allowed: 1-31, with", None),
        ("* * * 13 *", "field 4 (month) is '13', which is not valid there (allowed: 1-12 or jan-dec, with", None),
        ("* * * * 8", "field 5 (day of week) is '8', which is not valid there (allowed: 0-6 or sun-sat (0 is Sunday), with", None),
        ("0 0 30 2 *", "the cron expression '0 0 30 2 *' never fires (no such date, e.g. February 31st)", "check the day-of-month and month fields"),
    ],
)  # fmt: skip
def test_bad_cron_messages(flow: Path, cron: Any, message: str, hint: str | None) -> None:
    exc = error({"cron": cron}, target=flow)
    assert exc.message.startswith("schedule 'nightly': " + message) or f"schedule 'nightly': invalid cron expression {cron!r}: {message}" in exc.message, exc.message
    if hint is not None:
        assert exc.hint == hint
    assert exc.location is None


def test_cron_shortcuts_and_spacing(flow: Path) -> None:
    for alias, expr in [("@yearly", "0 0 1 1 *"), ("@annually", "0 0 1 1 *"), ("@monthly", "0 0 1 * *"), ("@weekly", "0 0 * * 0"),
                        ("@daily", "0 0 * * *"), ("@midnight", "0 0 * * *"), ("@hourly", "0 * * * *"), (" @Daily ", "0 0 * * *")]:  # fmt: skip
        assert sched(flow, cron=alias).cron == expr
    assert sched(flow, cron="  0   6 * *\tmon-fri ").cron == "0 6 * * mon-fri"


def test_bad_time_zone_messages(flow: Path) -> None:
    zone_hint = ("use an IANA time zone name such as UTC, Europe/Paris or America/New_York (python -c "
                 "\"import zoneinfo; print(sorted(zoneinfo.available_timezones()))\" lists them)")  # fmt: skip
    exc = error({"every": "1m", "timezone": "europe/pariss"}, target=flow)
    assert exc.message == ("schedule 'nightly': unknown time zone 'europe/pariss' "
                           "(did you mean 'Europe/Paris', 'Europe/Warsaw', 'Europe/Madrid'?)")  # fmt: skip
    assert exc.hint == zone_hint
    exc = error({"every": "1m", "timezone": "America/New_Yorkk"}, target=flow)
    assert exc.message.startswith("schedule 'nightly': unknown time zone 'America/New_Yorkk' (did you mean 'America/New_York', ")
    assert exc.message.count("'America/") == 4  # three suggestions at most
    assert error({"every": "1m", "timezone": "Berln"}, target=flow).message.endswith("(did you mean 'Europe/Berlin'?)")
    assert error({"every": "1m", "timezone": "Xq"}, target=flow).message == "schedule 'nightly': unknown time zone 'Xq'"
    # By the last part of the name; at most three.
    assert error({"every": "1m", "timezone": "Tell_Cty"}, target=flow).message.endswith("(did you mean 'America/Indiana/Tell_City'?)")
    assert error({"every": "1m", "timezone": "daka"}, target=flow).message.endswith(
        "(did you mean 'Asia/Dhaka', 'Africa/Dakar', 'America/Atka'?)")
    assert error({"every": "1m", "timezone": "../etc"}, target=flow).message == "schedule 'nightly': unknown time zone '../etc'"
    for bad in ("", None, 3):
        exc = error({"every": "1m", "timezone": bad}, target=flow)
        assert exc.message == f"schedule 'nightly': timezone must be an IANA time zone name such as 'Europe/Paris', got {bad!r}"
        assert exc.hint == "write timezone: UTC, or a name like America/New_York"
    assert sched(flow, every="1m", tz="Asia/Tokyo").timezone == "Asia/Tokyo"
    assert sched(flow, every="1m", time_zone="Asia/Tokyo").timezone == "Asia/Tokyo"


@pytest.mark.parametrize(
    ("spec", "message", "hint"),
    [
        ({"every": "1m", "overlap": "Queue"}, "unknown overlap policy 'Queue' (did you mean 'queue'?)", "overlap is one of: skip, queue, allow"),
        ({"every": "1m", "missed": "catch up"}, "unknown missed policy 'catch up' (did you mean 'catch_up'?)", "missed is one of: skip, catch_up"),
        ({"every": "1m", "missed": "zzz"}, "unknown missed policy 'zzz'", "missed is one of: skip, catch_up"),
        ({"every": "1m", "overlap": 1}, "unknown overlap policy 1\n", "overlap is one of: skip, queue, allow"),
        ({"every": "1m", "overlap": "qu"}, "unknown overlap policy 'qu' (did you mean 'queue'?)\n", None),
        ({"every": "1m", "max_catch_up": 101}, "max_catch_up must be a whole number from 1 to 100, got 101",
         "max_catch_up: 3 (older missed times are recorded as missed)"),
        ({"every": "1m", "max_catch_up": True}, "max_catch_up must be a whole number from 1 to 100, got True", None),
        ({"every": "1m", "max_catch_up": 2.0}, "max_catch_up must be a whole number from 1 to 100, got 2.0", None),
        ({"every": "1m", "enabled": "no"}, "enabled must be true or false, got 'no'", "enabled: false pauses the schedule"),
        ({"every": "-1m"}, "every must be a duration like", "every takes a positive duration: 30s, 15m, 2h, 1d"),
        ({"every": "0.0000001s"}, "every must be greater than zero, got '0.0000001s'", "every: 1s or more"),
        ({"every": "0.0000005s"}, "every must be greater than zero, got '0.0000005s'", None),  # rounds to 0 microseconds
        ({"every": "36501d"}, "every must be at most 100 years, got '36501d'", "every: 1d, 1w or 30d"),
        ({"cron": "* * * * *", "every": "1m"}, "give either cron or every, not both",
         "keep one of them (or declare two schedules with distinct names)"),
        ({"timezone": "UTC"}, "no cron or every: the schedule would never fire",
         "add cron: '*/15 * * * *' or every: 15m (or a webhook: to run it only when called)"),
        ({"webhook": {"secret_env": ""}}, "webhook must be a mapping with a secret_env string (the environment variable holding "
         "the HMAC secret), got {'secret_env': ''}", "webhook: {secret_env: NIGHTLY_WEBHOOK_SECRET}"),
        ({"webhook": "HOOK"}, "webhook must be a mapping with a secret_env string", None),
        ({"webhook": {"secret_env": 3}}, "webhook must be a mapping with a secret_env string", None),
        ({"every": "1m", "inputs": {"x-y": 1}}, "input names must be Python identifiers, got 'x-y'", "inputs: {day: today}"),
        ({"every": "1m", "inputs": {1: 1}}, "input names must be Python identifiers, got 1", None),
        ({"every": "1m", "inputs": "x=1"}, "inputs must map input names to values, got 'x=1'", "inputs: {day: today, limit: 10}"),
        ({"every": "1m", "inputs": {"x": {1, 2}}}, "inputs must be plain values (text, numbers, booleans, lists, mappings): ",
         "pass values a YAML file could hold"),
        ({"every": "1m", "tz": "UTC", "timezone": "UTC"}, "'timezone' repeats 'tz'", "give each setting once"),
        ({"every": "1m", "colour": "red"}, "unknown key 'colour'", "a schedule takes: name, cron or every, timezone, inputs, "
         "overlap, missed, max_catch_up, enabled, webhook"),
        ({"every": "1m", 3: "x"}, "unknown key 3", None),
    ],
)  # fmt: skip
def test_bad_setting_messages(flow: Path, spec: dict, message: str, hint: str | None) -> None:
    exc = error(spec, target=flow)
    prefix = "schedule: " if "repeats" in message else "schedule 'nightly': "
    assert (exc.message + "\n").startswith(prefix + message), exc.message  # a trailing \n in message: all of it
    if hint is not None:
        assert exc.hint == hint


def test_good_settings_at_their_limits(flow: Path) -> None:
    assert sched(flow, every="1m", max_catch_up=1).max_catch_up == 1
    assert sched(flow, every="1m", max_catch_up=100).max_catch_up == 100
    assert sched(flow, every="1m", maxCatchUp=7).max_catch_up == 7
    assert sched(flow, every="36500d").every == 36500 * 86400.0
    assert sched(flow, every="0.000001s").every == 0.000001
    assert sched(flow, every=30).every == 30.0
    s = sched(flow, every="1m", parameters={"day": "today"}, enabled=True)
    assert dict(s.inputs) == {"day": "today"} and s.enabled is True
    assert sched(flow, every="1m", inputs=None).inputs == {}


def test_names_and_targets(tmp_path: Path, flow: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name_hint = "name it like nightly_etl or reports.daily"
    for bad in ("", ".hidden", "-x", "a b", "a/b", "x" * 101, None, 5):
        exc = error({"every": "1m"}, name=bad, target=flow)
        assert exc.message == f"schedule name must be 1 to 100 letters, digits, '_', '.' or '-' (not starting with '.' or '-'), got {bad!r}"
        assert exc.hint == name_hint
    for good in ("a", "x" * 100, "reports.daily-2", "_x", "9"):
        assert parse_schedule({"every": "1m"}, name=good, target=flow).name == good
    assert parse_schedule({"every": "1m", "name": "inner"}, name="outer", target=flow).name == "inner"
    exc = error({"every": "1m"}, target=None)
    assert exc.message == "schedule 'nightly': target must be the path of a workflow file (.yaml) or a notebook (.ipynb), got None"
    assert exc.hint == "pass a path such as 'flows/nightly.yaml' or 'report.ipynb'"
    assert error({"every": "1m"}, target="").message.endswith("got ''")
    exc = error({"every": "1m"}, target=tmp_path / "x.txt")
    assert exc.message == f"schedule 'nightly': target {str(tmp_path / 'x.txt')!r} is neither a workflow file (.yaml, .yml) nor a notebook (.ipynb)"
    assert exc.hint == "schedule a YAML workflow file or a notebook"
    exc = error({"every": "1m"}, target=tmp_path / "gone.yml")
    assert exc.hint == "check the path (relative paths start at the current directory), or create the file first"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_schedule({"every": "1m"}, name="n", target="~/flow.yaml").target == str(flow)
    monkeypatch.chdir(tmp_path)
    assert parse_schedule({"every": "1m", "target": "flow.yaml"}, name="n", target="ignored.yaml").target == str(flow)
    # Not checked: kept as an absolute path, even if missing; nothing for no target.
    assert parse_schedule({"every": "1m"}, name="n", target="gone.yaml", check_target=False).target == str(tmp_path / "gone.yaml")
    assert parse_schedule({"every": "1m"}, name="n", target="", check_target=False).target is None
    assert parse_schedule({"every": "1m"}, name="n", target=3, check_target=False).target is None


def test_errors_carry_the_location_of_the_bad_value(flow: Path) -> None:
    asked: list[str | None] = []

    def locate(key: str | None) -> str:
        asked.append(key)
        return f"flow.yaml line {'?' if key is None else key}"

    def where(spec: Any, **kwargs: Any) -> str | None:
        kwargs.setdefault("target", flow)
        return error(spec, locate=locate, **kwargs).location

    assert where({"cron": "0 6 * * *", "tz": "Mars/Base"}) == "flow.yaml line tz"  # the key as written
    assert where({"every": "1m", "overlap": "x"}) == "flow.yaml line overlap"
    assert where({"every": "1m", "missed": "x"}) == "flow.yaml line missed"
    assert where({"every": "1m", "maxCatchUp": 0}) == "flow.yaml line maxCatchUp"
    assert where({"every": "1m", "enabled": 1}) == "flow.yaml line enabled"
    assert where({"every": "1m", "inputs": 1}) == "flow.yaml line inputs"
    assert where({"every": "1m", "webhook": 1}) == "flow.yaml line webhook"
    assert where({"every": "0s"}) == "flow.yaml line every"
    assert where({"every": "x"}) == "flow.yaml line every"
    assert where({"every": "99999d"}) == "flow.yaml line every"
    assert where({"cron": "x"}) == "flow.yaml line cron"
    assert where({"cron": "* * * * *", "every": "1m"}) == "flow.yaml line every"
    assert where({}) == "flow.yaml line ?"
    assert where({"every": "1m", "bad": 1}) == "flow.yaml line bad"
    assert where({"every": "1m", 7: 1}) == "flow.yaml line ?"
    assert where({"every": "1m", "tz": "UTC", "timezone": "UTC"}) == "flow.yaml line timezone"
    assert where({"every": "1m", "name": "../x"}) == "flow.yaml line name"
    assert where({"every": "1m"}, name="../x") == "flow.yaml line ?"
    assert where({"every": "1m", "target": "x.txt"}) == "flow.yaml line target"
    assert where({"every": "1m"}, name="n", check_target=True, target="x.txt") == "flow.yaml line ?"
    exc = error("daily", locate=locate)
    assert (exc.message, exc.location) == ("a schedule must be a mapping with cron: or every:, got 'daily'", "flow.yaml line ?")
    assert exc.hint == "schedule: {cron: '0 6 * * *', timezone: Europe/Paris}"
    assert error({"every": "1m", "name": 5, "bogus": 1}, target=flow).message == "schedule: unknown key 'bogus'"
    assert error({"every": "1m", "name": "mine", "bogus": 1}, target=flow).message == "schedule 'mine': unknown key 'bogus'"


def test_registered_at_and_origin_are_kept(flow: Path) -> None:
    paris = datetime(2026, 3, 1, 7, 0, tzinfo=ZoneInfo("Europe/Paris"))
    s = parse_schedule({"every": "1m"}, name="n", target=flow, registered_at=paris, origin="flows/x.yaml")
    assert s.registered_at == datetime(2026, 3, 1, 6, 0, tzinfo=UTC) and s.registered_at.tzinfo == UTC and s.origin == "flows/x.yaml"
    assert parse_schedule({"every": "1m"}, name="n", target=flow).origin == "registered"
    with pytest.raises(ValueError, match="^registered_at must be an aware datetime"):
        parse_schedule({"every": "1m"}, name="n", target=flow, registered_at=datetime(2026, 3, 1))


def test_answers_are_utc_whatever_the_local_time_zone(flow: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        after = datetime(2026, 1, 1, 12, 0, tzinfo=ZoneInfo("Europe/Paris"))
        for s in (sched(flow, cron="0 * * * *", timezone="Asia/Tokyo"), sched(flow, every="1h")):
            [t] = next_fire_times(s, after)
            assert t == datetime(2026, 1, 1, 12, 0, tzinfo=UTC) and t.utcoffset() == timedelta(0)
            assert s.next_fire(after).utcoffset() == timedelta(0)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_intervals_that_do_not_divide_a_day_still_count_from_1970(flow: Path) -> None:
    s = sched(flow, every="7s")
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    after = datetime(2026, 1, 1, tzinfo=UTC)
    k = int((after - epoch).total_seconds()) // 7 + 1
    assert next_fire_times(s, after, 2) == [epoch + timedelta(seconds=7 * k), epoch + timedelta(seconds=7 * (k + 1))]
    assert next_fire_times(s, epoch, 1) == [epoch + timedelta(seconds=7)]


def test_more_errors_carry_the_location_of_the_bad_value(tmp_path: Path, flow: Path) -> None:
    def locate(key: str | None) -> str:
        return f"line of {key}"

    def where(spec: Any, **kwargs: Any) -> str | None:
        kwargs.setdefault("target", flow)
        return error(spec, locate=locate, **kwargs).location

    for cron in (5, "@often", "61 * * * *", "0 0 30 2 *", "* * *"):
        assert where({"cron": cron}) == "line of cron"
    assert where({"every": "1m", "timezone": 3}) == "line of timezone"
    assert where({"every": "1m", "overlap": "catch-up"}) == "line of overlap"
    assert where({"every": "1m", "missed": "catch-up"}) == "line of missed"
    assert where({"every": "1m", "inputs": {"a b": 1}}) == "line of inputs"
    assert where({"every": "1m", "inputs": {"a": object()}}) == "line of inputs"
    assert where({"every": "0.0000001s"}) == "line of every"
    assert where({"every": "1m", "target": 5}) == "line of target"
    assert where({"every": "1m", "target": str(tmp_path / "gone.yaml")}) == "line of target"
    assert where({"every": "1m"}, target=5) == "line of None"
