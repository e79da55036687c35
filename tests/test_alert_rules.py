"""Alert rules: defaults, overrides per workflow and per task, and bad values refused at definition."""

from __future__ import annotations

from pathlib import Path

import pytest

import kernelflow as kf
from kernelflow.alert_rules import DEFAULTS, AlertRules, parse_rules
from kernelflow.alerting import rules_for
from kernelflow.exceptions import DefinitionError


def test_a_workflow_without_rules_gets_the_defaults() -> None:
    def a():
        return 1

    rules = rules_for(kf.workflow("no_rules", [a]))
    assert rules.rules == DEFAULTS and rules.tasks == {} and rules.channels == ()
    assert rules.rule("duration", "a") is DEFAULTS["duration"]


def test_kf_alerts_sets_rules_by_workflow_with_task_overrides() -> None:
    def load():
        return 1

    def report(load):
        return load

    wf = kf.workflow("tuned", [load, report])
    assert kf.alerts(wf, duration={"z": 3, "min_samples": 5}, trend=False, tasks={"load": {"stuck": {"factor": 5}}}) is None
    rules = rules_for(wf)
    assert rules.rule("duration").z == 3.0 and rules.rule("duration").min_samples == 5
    assert rules.rule("duration").factor == DEFAULTS["duration"].factor  # what is not said stays default
    assert not rules.rule("trend").enabled
    assert rules.rule("stuck", "load").factor == 5.0 and rules.rule("stuck", "report").factor == DEFAULTS["stuck"].factor


def test_a_task_decorator_overrides_its_own_rules() -> None:
    @kf.task(alerts={"duration": {"z": 2.5}, "stuck": False})
    def slow():
        return 1

    def other(slow):
        return slow

    rules = rules_for(kf.workflow("decorated", [slow, other]))
    assert rules.rule("duration", "slow").z == 2.5 and not rules.rule("stuck", "slow").enabled
    assert rules.rule("duration", "other") == DEFAULTS["duration"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"duration": {"window": -3}}, "alerts.duration.window must be a whole number of at least 1, got -3"),
        ({"duration": {"window": 2.5}}, "alerts.duration.window must be a whole number of at least 1, got 2.5"),
        ({"duration": {"z": 0}}, "alerts.duration.z must be greater than 0, got 0"),
        ({"error_rate": {"rate": 0}}, "alerts.error_rate.rate must be greater than 0, got 0"),
        ({"error_rate": {"rate": 1.5}}, "alerts.error_rate.rate is a fraction of runs"),
        ({"trend": {"factor": 1}}, "alerts.trend.factor must be greater than 1"),
        ({"stuck": {"min_samples": 0}}, "alerts.stuck.min_samples must be a whole number of at least 1, got 0"),
        ({"duration": {"z": "high"}}, "alerts.duration.z must be a number, got 'high'"),
        ({"duration": {"z": True}}, "alerts.duration.z must be a number, got True"),
        ({"duration": {"zz": 3}}, "alerts.duration: no setting 'zz'"),
        ({"duration": {"severity": "loud"}}, "alerts.duration.severity must be one of info, warning, critical, got 'loud'"),
        ({"durations": {}}, "alerts has no setting 'durations'"),
        ({"duration": 3}, "alerts.duration: must be a mapping of settings or false, got 3"),
        ({"channels": "ops, pager"}, "alerts.channels names 'ops, pager', which is not a configured channel"),
        ({"channels": ["nope"]}, "alerts.channels names 'nope', which is not a configured channel"),
        ({"tasks": {"ghost": {}}}, "alerts.tasks names 'ghost', which is not a task; tasks: a"),
        ({"tasks": {"a": {"speed": {}}}}, "alerts.tasks.a: no check 'speed'"),
    ],
)
def test_bad_rule_values_are_refused_with_what_to_fix(spec: dict, message: str) -> None:
    with pytest.raises(DefinitionError) as err:
        parse_rules(spec, where="", task_ids=("a",), known_channels=())
    assert message in str(err.value)


def test_rules_from_yaml_and_their_errors_name_the_line(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "name: yaml_rules\nalerts:\n  duration: {z: 3.5}\n  error_rate: false\n"
        "  tasks:\n    hello: {stuck: {factor: 10}}\ntasks:\n  - id: hello\n    run: shell\n    argv: [echo, hi]\n"
    )
    wf = kf.load(str(good))
    rules = rules_for(wf)
    assert rules.rule("duration").z == 3.5 and not rules.rule("error_rate").enabled
    assert rules.rule("stuck", "hello").factor == 10.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: yaml_bad\nalerts:\n  trend: {recent: 0}\ntasks:\n  - id: hello\n    run: shell\n    argv: [echo, hi]\n")
    with pytest.raises(DefinitionError) as err:
        kf.load(str(bad))
    assert f"{bad} line 2" in str(err.value) and "alerts.trend.recent must be a whole number of at least 1, got 0" in str(err.value)


def test_a_bad_task_decorator_fails_on_its_own_line() -> None:
    with pytest.raises(DefinitionError, match=r"alerts=\.\.\.\)\.duration\.z must be greater than 0, got -1"):

        @kf.task(alerts={"duration": {"z": -1}})
        def f():
            return 1


def test_rules_round_trip_as_json() -> None:
    rules = parse_rules({"duration": {"z": 3}, "tasks": {"a": {"trend": False}}}, where="", task_ids=("a",), known_channels=())
    data = rules.to_json()
    assert data["rules"]["duration"]["z"] == 3.0 and data["tasks"]["a"]["trend"]["enabled"] is False
    assert isinstance(AlertRules().rules["duration"].window, int)
