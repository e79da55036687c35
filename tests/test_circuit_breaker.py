"""Circuit breakers: the pure state machine, its store table, and the user API.

The state machine gets ``now`` passed in, so its boundaries are tested
exactly and nothing here depends on the clock or on timing.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernelflow import circuit_breaker as cb
from kernelflow import events as ev
from kernelflow.circuit_breaker import CircuitConfig, after_call, before_call, check_state, describe, force
from kernelflow.circuits import Circuit, circuit, circuits
from kernelflow.events import Event
from kernelflow.exceptions import OptionError
from kernelflow.store import CircuitTable, FolderStore
from kernelflow.store.circuits import file_stem

T0 = 1_795_000_000.0  # 2026-11-18 in seconds since the epoch
NAME = "payments"


def fail(state: dict | None, config: CircuitConfig, now: float, *, probe: bool = False, started_at: float | None = None):
    return after_call(state, config, now, NAME, success=False, probe=probe, started_at=started_at)


def succeed(state: dict | None, config: CircuitConfig, now: float, *, probe: bool = False, started_at: float | None = None):
    return after_call(state, config, now, NAME, success=True, probe=probe, started_at=started_at)


def opened(config: CircuitConfig, at: float = T0) -> dict:
    """A state that ``config.failure_threshold`` failures ending at ``at`` have just opened."""
    state = None
    transition = None
    for i in range(config.failure_threshold):
        transition, state = fail(state, config, at - (config.failure_threshold - 1 - i) * 0.001)
    assert transition == "closed->open" and state["status"] == cb.OPEN
    return state


# --- configuration -----------------------------------------------------------------


def test_config_from_options() -> None:
    assert CircuitConfig.from_options(None) is None
    assert CircuitConfig.from_options(False) is None
    assert CircuitConfig.from_options(True) == CircuitConfig()
    config = CircuitConfig.from_options(
        {"name": NAME, "failure_threshold": 3, "window": "5m", "break_duration": "500ms", "half_open_probes": 2}
    )
    assert config == CircuitConfig(failure_threshold=3, window=300.0, break_duration=0.5, half_open_probes=2)
    assert CircuitConfig(**config.to_dict()) == config
    assert orjson.loads(orjson.dumps(config.to_dict())) == config.to_dict()
    assert CircuitConfig.from_options({"window": 90}).window == 90.0
    assert CircuitConfig(window="1m") == CircuitConfig(window=60)  # normalised, so they compare equal


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"failure_treshold": 3}, "no option 'failure_treshold' (did you mean 'failure_threshold'?)"),
        ({"windw": "1m"}, "(did you mean 'window'?)"),
        ({"colour": "red"}, "circuit_breaker has no option 'colour'; it accepts name, failure_threshold"),
        ({"failure_threshold": 0}, "circuit_breaker.failure_threshold must be a whole number >= 1, got 0"),
        ({"failure_threshold": 2.5}, "failure_threshold must be a whole number >= 1, got 2.5"),
        ({"failure_threshold": True}, "failure_threshold must be a whole number >= 1, got True"),
        ({"half_open_probes": -1}, "half_open_probes must be a whole number >= 1, got -1"),
        ({"window": 0}, "circuit_breaker.window must be greater than zero, got 0"),
        ({"break_duration": "-5s"}, "circuit_breaker.break_duration must be a duration like 30, '500ms'"),
        ({"window": "soon"}, "circuit_breaker.window must be a duration like"),
        ({"window": True}, "circuit_breaker.window must be a duration like"),
        ({"name": ""}, "circuit_breaker.name must be a non-empty string"),
        ({"name": 7}, "circuit_breaker.name must be a non-empty string, got 7"),
        ("payments", "circuit_breaker must be true or a mapping of options, got 'payments'"),
        (5, "circuit_breaker must be true or a mapping"),
    ],
)
def test_config_errors(options: Any, expected: str) -> None:
    with pytest.raises(OptionError) as info:
        CircuitConfig.from_options(options)
    assert expected in str(info.value)
    assert "fix: write it like circuit_breaker: {name: payments" in str(info.value)


def test_config_constructor_validates_too() -> None:
    with pytest.raises(OptionError, match="half_open_probes must be a whole number >= 1, got 0"):
        CircuitConfig(half_open_probes=0)
    with pytest.raises(OptionError, match="break_duration must be greater than zero"):
        CircuitConfig(break_duration=0.0)
    for kwargs, message in [
        ({"failure_threshold": 0}, "circuit_breaker.failure_threshold must be a whole number >= 1, got 0"),
        ({"window": "soon"}, "circuit_breaker.window must be a duration like 30, '500ms', '30s', '5m' or '2h', got 'soon'"),
        ({"break_duration": -1}, "circuit_breaker.break_duration must be greater than zero, got -1"),
    ]:
        with pytest.raises(OptionError) as info:
            CircuitConfig(**kwargs)
        assert info.value.message == message
    # Durations are normalised to seconds.
    assert CircuitConfig(window="2m", break_duration="30s").to_dict() == {
        "failure_threshold": 5, "window": 120.0, "break_duration": 30.0, "half_open_probes": 1,
    }


# --- the state machine at its boundaries ------------------------------------------


def test_threshold_minus_one_failures_stay_closed_threshold_opens() -> None:
    config = CircuitConfig(failure_threshold=3, window=60, break_duration=30)
    state = None
    for i in range(2):
        transition, state = fail(state, config, T0 + i)
        assert transition is None and state["status"] == cb.CLOSED
        check_state(state)
    decision, state = before_call(state, config, T0 + 2, NAME)
    assert decision.allowed and not decision.probe and decision.state == cb.CLOSED
    transition, state = fail(state, config, T0 + 2)
    assert transition == "closed->open"
    assert state["status"] == cb.OPEN and state["opened_at"] == T0 + 2 and state["open_until"] == T0 + 32
    assert state["last_transition"] == "closed->open" and state["last_transition_at"] == T0 + 2
    check_state(state)


def test_a_failure_exactly_window_old_no_longer_counts() -> None:
    config = CircuitConfig(failure_threshold=2, window=10, break_duration=5)
    _, state = fail(None, config, T0)
    transition, state = fail(state, config, T0 + 10)  # the first is exactly 10 s old: out
    assert transition is None and state["status"] == cb.CLOSED and state["failures"] == [T0 + 10]
    transition, state = fail(state, config, math.nextafter(T0 + 20, 0))  # the second is just inside
    assert transition == "closed->open"


def test_successes_do_not_erase_failures_only_the_window_does() -> None:
    config = CircuitConfig(failure_threshold=3, window=60)
    state = None
    for i, ok in enumerate([False, True, True, False, True, False]):
        transition, state = after_call(state, config, T0 + i, NAME, success=ok, probe=False)
    assert transition == "closed->open"


def test_open_refuses_until_open_until_then_one_probe() -> None:
    config = CircuitConfig(failure_threshold=2, window=60, break_duration=30, half_open_probes=1)
    state = opened(config)
    until = state["open_until"]
    assert until == T0 + 30

    decision, state = before_call(state, config, math.nextafter(until, 0), NAME)
    assert not decision.allowed and not decision.probe
    assert decision.state == cb.OPEN and decision.transition is None and decision.retry_at == until
    assert decision.reason == f"circuit 'payments' is open until {_hms(until)} UTC after 2 failures in 1m"

    decision, state = before_call(state, config, until, NAME)
    assert decision.allowed and decision.probe
    assert decision.state == cb.HALF_OPEN and decision.transition == "open->half_open"
    assert state["probes"] == [until]
    check_state(state)

    # A second call while the probe runs is refused, and told when to try again.
    decision, state = before_call(state, config, until + 1, NAME)
    assert not decision.allowed and decision.state == cb.HALF_OPEN and decision.transition is None
    assert decision.retry_at == until + 30
    assert "half-open and its 1 trial call(s) are still running" in decision.reason


def test_probe_success_closes_and_clears_failures() -> None:
    config = CircuitConfig(failure_threshold=2, window=600, break_duration=30)
    state = opened(config)
    decision, state = before_call(state, config, T0 + 30, NAME)
    transition, state = succeed(state, config, T0 + 31, probe=decision.probe, started_at=T0 + 30)
    assert transition == "half_open->closed"
    assert state["status"] == cb.CLOSED and state["failures"] == [] and state["probes"] == []
    check_state(state)
    # The old failures are gone: it takes a full threshold again to open.
    transition, state = fail(state, config, T0 + 32)
    assert transition is None


def test_probe_failure_reopens_for_a_fresh_break() -> None:
    config = CircuitConfig(failure_threshold=2, window=600, break_duration=30)
    state = opened(config)
    decision, state = before_call(state, config, T0 + 40, NAME)
    transition, state = fail(state, config, T0 + 41, probe=True, started_at=T0 + 40)
    assert transition == "half_open->open"
    assert state["opened_at"] == T0 + 41 and state["open_until"] == T0 + 71
    decision, state = before_call(state, config, T0 + 70, NAME)
    assert not decision.allowed and decision.reason.endswith(": a half-open trial call failed")
    check_state(state)


def test_two_half_open_probes() -> None:
    config = CircuitConfig(failure_threshold=1, window=60, break_duration=10, half_open_probes=2)
    state = opened(config)
    t = T0 + 10
    first, state = before_call(state, config, t, NAME)
    second, state = before_call(state, config, t + 1, NAME)
    third, state = before_call(state, config, t + 2, NAME)
    assert (first.allowed, first.probe, second.allowed, second.probe) == (True, True, True, True)
    assert not third.allowed and third.retry_at == t + 10
    assert describe(state, config, t + 2)["probes_in_flight"] == 2

    # One success frees its slot but does not close yet: two in a row are needed.
    transition, state = succeed(state, config, t + 3, probe=True, started_at=t)
    assert transition is None and state["status"] == cb.HALF_OPEN and state["probe_successes"] == 1
    fourth, state = before_call(state, config, t + 4, NAME)
    assert fourth.allowed and fourth.probe
    transition, state = succeed(state, config, t + 5, probe=True, started_at=t + 1)
    assert transition == "half_open->closed"
    # The fourth probe reports after the circuit closed: an ordinary success.
    transition, state = succeed(state, config, t + 6, probe=True, started_at=t + 4)
    assert transition is None and state["status"] == cb.CLOSED
    check_state(state)


def test_a_probe_that_never_reports_is_forgotten_after_break_duration() -> None:
    config = CircuitConfig(failure_threshold=1, window=60, break_duration=10, half_open_probes=1)
    state = opened(config)
    lost, state = before_call(state, config, T0 + 10, NAME)  # its process dies; it never reports
    assert lost.probe
    refused, state = before_call(state, config, math.nextafter(T0 + 20, 0), NAME)
    assert not refused.allowed
    retry, state = before_call(state, config, T0 + 20, NAME)
    assert retry.allowed and retry.probe and state["probes"] == [T0 + 20]
    # The lost probe turns up after all, failing: it was forgotten, so it does
    # not re-open the circuit under the live probe.
    transition, state = fail(state, config, T0 + 21, probe=True, started_at=T0 + 10)
    assert transition is None and state["status"] == cb.HALF_OPEN and state["probes"] == [T0 + 20]
    transition, state = succeed(state, config, T0 + 22, probe=True, started_at=T0 + 20)
    assert transition == "half_open->closed"


def test_without_started_at_the_oldest_probe_is_assumed() -> None:
    config = CircuitConfig(failure_threshold=1, break_duration=10, half_open_probes=2)
    state = opened(config)
    _, state = before_call(state, config, T0 + 10, NAME)
    _, state = before_call(state, config, T0 + 11, NAME)
    _, state = succeed(state, config, T0 + 12, probe=True)
    assert state["probes"] == [T0 + 11] and state["probe_successes"] == 1


def test_an_unchanged_circuit_returns_an_equal_state() -> None:
    # The store skips the write when the state compares equal.
    config = CircuitConfig()
    decision, state = before_call(None, config, T0, NAME)
    assert decision.allowed and state["updated_at"] == T0
    for now in (T0 + 1, T0 + 100):
        decision, again = before_call(state, config, now, NAME)
        assert again == state
        _, again = succeed(state, config, now)
        assert again == state


def test_force_open_close_reset() -> None:
    config = CircuitConfig(failure_threshold=3, break_duration=30)
    transition, state = force(None, "open", T0)
    assert transition == "closed->open" and state["open_until"] is None
    decision, state = before_call(state, config, T0 + 10**6, NAME)
    assert not decision.allowed and decision.retry_at is None
    assert "opened by hand and stays open until it is closed (kf.circuit('payments').close())" in decision.reason
    check_state(state)

    transition, state = force(state, "open", T0 + 5, duration=20)
    assert transition is None and state["open_until"] == T0 + 25 and state["last_transition_at"] == T0 + 5
    decision, _ = before_call(state, config, T0 + 24, NAME)
    assert not decision.allowed and decision.reason.endswith("(opened by hand)")
    decision, _ = before_call(state, config, T0 + 25, NAME)
    assert decision.allowed and decision.probe

    transition, state = force(state, "close", T0 + 6)
    assert transition == "open->closed" and state["failures"] == [] and state["status"] == cb.CLOSED
    check_state(state)
    assert force(state, "reset", T0 + 7) == (None, None)
    assert force(opened(config), "reset", T0 + 7) == ("open->closed", None)
    assert force(None, "close", T0) == (None, None)
    with pytest.raises(ValueError, match="greater than zero"):
        force(None, "open", T0, duration=0)
    with pytest.raises(ValueError, match="unknown circuit action 'shut'; use 'open', 'close' or 'reset'"):
        force(None, "shut", T0)


def test_describe() -> None:
    config = CircuitConfig(failure_threshold=3, window=60, break_duration=30)
    assert describe(None, None, T0)["state"] == cb.CLOSED
    _, state = fail(None, config, T0)
    _, state = fail(state, config, T0 + 30)
    info = describe(state, None, T0 + 61)  # the config stored in the state applies
    assert info["state"] == cb.CLOSED and info["failures_in_window"] == 1
    assert info["config"] == config.to_dict()
    _, state = fail(state, config, T0 + 62)
    _, state = fail(state, config, T0 + 63)
    info = describe(state, config, T0 + 64)
    assert (info["state"], info["opened_at"], info["open_until"]) == (cb.OPEN, T0 + 63, T0 + 93)
    assert info["last_transition"] == "closed->open" and info["last_transition_at"] == T0 + 63
    # Past open_until, the next call will be a probe: that is what describe says.
    assert describe(state, config, T0 + 93)["state"] == cb.HALF_OPEN
    assert orjson.loads(orjson.dumps(info)) == info


def test_damaged_state_is_read_as_well_formed() -> None:
    config = CircuitConfig()
    for junk in ({}, {"status": "exploded"}, {"status": "open"}, {"failures": ["x", None, 3]}, {"probes": 7}):
        decision, state = before_call(junk, config, T0, NAME)
        check_state(state)
        assert isinstance(decision.allowed, bool)



# --- exact decisions and bookkeeping -----------------------------------------------


def test_every_decision_exactly() -> None:
    # Each field of each kind of decision, and the state's clock fields: a
    # decision or transition that changes the state stamps it with `now`.
    config = CircuitConfig(failure_threshold=1, window=60, break_duration=10, half_open_probes=2)
    decision, state = before_call(None, config, T0, NAME)
    assert decision == cb.Decision(True, False, cb.CLOSED, None, None, "circuit 'payments' is closed")
    assert state["updated_at"] == T0
    _, state = fail(state, config, T0 + 1)
    assert (state["open_cause"], state["open_failures"], state["opened_at"]) == ("failures", 1, T0 + 1)
    until = T0 + 11
    decision, state = before_call(state, config, T0 + 2, NAME)
    reason = f"circuit 'payments' is open until {_hms(until)} UTC after 1 failures in 1m"
    assert decision == cb.Decision(False, False, cb.OPEN, None, until, reason)
    first, state = before_call(state, config, until, NAME)
    assert first == cb.Decision(
        True, True, cb.HALF_OPEN, "open->half_open", None, "circuit 'payments' is half-open: this call is trial 1 of 2"
    )
    assert state["updated_at"] == until and state["last_transition_at"] == until
    assert (state["open_failures"], state["open_cause"], state["opened_at"]) == (0, None, None)  # no longer open
    second, state = before_call(state, config, until + 1, NAME)
    assert second == cb.Decision(
        True, True, cb.HALF_OPEN, None, None, "circuit 'payments' is half-open: this call is trial 2 of 2"
    )
    assert state["updated_at"] == until + 1
    third, state = before_call(state, config, until + 2, NAME)
    assert third == cb.Decision(
        False, False, cb.HALF_OPEN, None, until + 10,
        "circuit 'payments' is half-open and its 2 trial call(s) are still running (half_open_probes=2); "
        f"try again once one reports, at the latest {_hms(until + 10)} UTC",
    )
    assert state["updated_at"] == until + 1  # a refusal changes nothing
    _, state = succeed(state, config, until + 3, probe=True, started_at=until)
    transition, state = succeed(state, config, until + 4, probe=True, started_at=until + 1)
    assert transition == "half_open->closed"
    assert state["last_transition_at"] == until + 4 and state["updated_at"] == until + 4
    assert (state["open_failures"], state["probe_successes"], state["failures"]) == (0, 0, [])


def test_an_open_refusal_stamps_a_changed_state() -> None:
    # The refusal itself prunes old failures from the state: that is a change.
    config = CircuitConfig(failure_threshold=1, window=5, break_duration=100)
    _, state = fail(None, config, T0)
    decision, state = before_call(state, config, T0 + 50, NAME)
    assert not decision.allowed and state["failures"] == [] and state["updated_at"] == T0 + 50


def test_a_report_of_an_ordinary_call_while_half_open_is_no_probe() -> None:
    # A call let through while the circuit was closed reports (failing) after
    # it went half-open: it counts as a failure, but it is not the probe.
    config = CircuitConfig(failure_threshold=2, window=600, break_duration=10)
    state = opened(config)
    probe, state = before_call(state, config, T0 + 10, NAME)
    transition, state = fail(state, config, T0 + 11)  # probe=False
    assert transition is None and state["status"] == cb.HALF_OPEN and state["probes"] == [T0 + 10]
    assert state["failures"][-1] == T0 + 11


def test_a_failed_probe_counts_as_a_failure() -> None:
    config = CircuitConfig(failure_threshold=2, window=600, break_duration=30)
    state = opened(config)  # failures at T0 - 0.001 and T0
    _, state = before_call(state, config, T0 + 30, NAME)
    transition, state = fail(state, config, T0 + 31, probe=True, started_at=T0 + 30)
    assert transition == "half_open->open"
    check_state(state)
    assert state["failures"] == [T0, T0 + 31] and state["open_failures"] == 2  # the newest threshold-many


def test_a_refusal_under_a_new_config_stores_it() -> None:
    # The step's breaker options changed (a new version of the workflow): even a
    # refused call records the config it was decided with.
    config = CircuitConfig(failure_threshold=1, window=60, break_duration=30)
    _, state = fail(None, config, T0)
    _, state = before_call(state, config, T0 + 30, NAME)  # the probe
    changed = CircuitConfig(failure_threshold=1, window=120, break_duration=30)
    decision, state = before_call(state, changed, T0 + 31, NAME)
    assert not decision.allowed and decision.state == cb.HALF_OPEN
    assert state["config"] == changed.to_dict() and state["updated_at"] == T0 + 31


def test_describe_exactly() -> None:
    assert describe(None, None, T0) == {
        "state": cb.CLOSED, "failures_in_window": 0, "opened_at": None, "open_until": None, "probes_in_flight": 0,
        "probe_successes": 0, "last_transition": None, "last_transition_at": None, "updated_at": None, "config": None,
    }


@pytest.mark.parametrize(
    "damaged, field, value",
    [
        ({"status": "open", "opened_at": T0 + 10, "open_until": T0 + 5}, "opened_at", T0 + 5),  # opened after its end
        ({"status": "open", "open_until": T0 + 5}, "opened_at", 0.0),  # no time known at all
        ({"status": "open", "open_until": T0 + 5, "updated_at": T0 + 1}, "opened_at", T0 + 1),
        ({"status": "half_open", "probe_successes": -1}, "probe_successes", 0),
        ({"status": "half_open", "probe_successes": "2"}, "probe_successes", 0),
        ({"status": "half_open", "probe_successes": 1}, "probe_successes", 1),
    ],
)
def test_damaged_fields_are_repaired(damaged: dict, field: str, value: Any) -> None:
    assert describe(damaged, None, T0)[field] == value


def test_damaged_open_fields_of_a_closed_circuit_are_cleared() -> None:
    _, state = before_call({"status": "closed", "open_failures": 5, "open_cause": "forced"}, CircuitConfig(), T0, NAME)
    assert (state["open_failures"], state["open_cause"]) == (0, None)
    check_state(state)


def test_an_open_state_without_a_cause_reads_as_opened_by_failures() -> None:
    state = {"status": "open", "opened_at": T0, "open_until": T0 + 100, "open_failures": 3}
    decision, state = before_call(state, CircuitConfig(window=60), T0 + 1, NAME)
    assert decision.reason == f"circuit 'payments' is open until {_hms(T0 + 100)} UTC after 3 failures in 1m"
    assert state["open_cause"] == "failures"


def test_forced_transitions_are_stamped() -> None:
    transition, state = force(None, "open", T0, duration=0.5)  # under a second is a duration too
    assert transition == "closed->open"
    assert (state["opened_at"], state["open_until"], state["open_cause"]) == (T0, T0 + 0.5, "forced")
    assert (state["last_transition_at"], state["updated_at"]) == (T0, T0)
    transition, state = force(state, "close", T0 + 6)
    assert transition == "open->closed"
    assert (state["last_transition_at"], state["updated_at"], state["open_failures"]) == (T0 + 6, T0 + 6, 0)


def test_times_in_reasons_are_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+5:30, so no hour or minute can match by chance
    time.tzset()
    try:
        config = CircuitConfig(failure_threshold=1, break_duration=30)
        _, state = fail(None, config, T0)
        decision, _ = before_call(state, config, T0 + 1, NAME)
        assert decision.reason.startswith(f"circuit 'payments' is open until {_hms(T0 + 30)} UTC")
    finally:
        monkeypatch.undo()
        time.tzset()


def _valid_state(**changes: Any) -> dict:
    config = CircuitConfig(failure_threshold=2, window=60, break_duration=10, half_open_probes=2)
    _, state = before_call(None, config, T0, NAME)
    return {**state, **changes}


@pytest.mark.parametrize(
    "changes",
    [
        {"extra": 1},
        {"format": 2},
        {"status": "exploded"},
        {"failures": [T0 + 1, T0]},
        {"probe_successes": -1},
        {"probe_successes": 1.5},
        {"failures": [T0, T0 + 1, T0 + 2]},  # more than failure_threshold kept
        {"status": "open", "opened_at": None, "open_cause": "failures"},
        {"status": "open", "opened_at": T0, "open_cause": None},
        {"status": "open", "opened_at": T0, "open_until": T0 - 1, "open_cause": "failures"},
        {"opened_at": T0},  # closed but with open fields
        {"open_until": T0},
        {"open_cause": "failures"},
        {"status": "half_open", "probes": [T0, T0, T0]},  # more probes than half_open_probes
        {"status": "half_open", "probe_successes": 2},
        {"status": "half_open", "probe_successes": -1},  # only the count's own check can tell
        {"status": "half_open", "probe_successes": 1.5},
        {"probes": [T0]},  # closed with a probe
        {"probe_successes": 1},
        {"failures": [T0, T0 + 1]},  # closed at the threshold
    ],
)
def test_check_state_refuses_malformed_states(changes: dict) -> None:
    with pytest.raises(AssertionError):
        check_state(_valid_state(**changes))


def test_check_state_accepts_boundaries() -> None:
    check_state(_valid_state(failures=[T0]))
    check_state(_valid_state(status="open", opened_at=T0, open_until=T0, open_cause="forced"))
    check_state(_valid_state(status="half_open", probes=[T0, T0 + 1], probe_successes=1))
    check_state(_valid_state(config=None, failures=[T0, T0 + 1, T0 + 2]))  # without a config, no limits to check
    with pytest.raises(AssertionError) as info:
        check_state(_valid_state(extra=1))
    assert str(info.value).startswith("['extra']")

# --- the property test -------------------------------------------------------------

configs = st.builds(
    CircuitConfig,
    failure_threshold=st.integers(1, 4),
    window=st.sampled_from([1.0, 5.0, 20.0]),
    break_duration=st.sampled_from([0.5, 3.0, 10.0]),
    half_open_probes=st.integers(1, 3),
)
# Time moves by fractions of the config's own durations, so runs often land
# on and around the boundaries (open_until, a failure leaving the window).
_fractions = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 0.99, 1.0, 1.5])
_advance = st.tuples(st.sampled_from(["advance_break", "advance_window"]), _fractions)
_call = st.tuples(st.just("call"), st.none())
# A call that reports at once, failing two times in three: circuits open often.
_quick_call = st.tuples(st.just("call+report"), st.sampled_from([False, False, True]))
_report = st.tuples(st.just("report"), st.tuples(st.integers(0, 10), st.booleans()))
_force = st.tuples(st.just("force"), st.sampled_from([("open", None), ("open", 2.0), ("close", None), ("reset", None)]))
# one_of picks a branch uniformly: repeating one weights it. Overrides are
# rare, or they would keep resetting the circuit before anything happens.
steps = st.lists(
    st.one_of(_advance, _advance, _call, _call, _quick_call, _quick_call, _quick_call, _report, _report, _force),
    min_size=40,
    max_size=200,
)


def _run_property(config: CircuitConfig, ops: list, *, pass_started_at: bool) -> None:
    now = T0
    state: dict | None = None
    in_flight: list[tuple[float, bool]] = []  # calls let through and not reported: (started_at, probe)
    half_open_since = -math.inf
    for op, arg in ops:
        if op == "advance_break":
            now += arg * config.break_duration
        elif op == "advance_window":
            now += arg * config.window
        elif op in ("call", "call+report"):
            was = describe(state, config, now)
            decision, state = before_call(state, config, now, NAME)
            if state["status"] == cb.OPEN or was["state"] == cb.OPEN:
                # Never a call while open before open_until (or while opened by hand).
                assert not decision.allowed
                assert decision.retry_at is None or decision.retry_at > now
            if decision.allowed:
                in_flight.append((now, decision.probe))
                assert decision.probe == (decision.state == cb.HALF_OPEN)
            if decision.transition == "open->half_open":
                half_open_since = now
            assert decision.state == state["status"]
            if op == "call+report" and decision.allowed:
                started, probe = in_flight.pop()
                transition, state = after_call(state, config, now, NAME, success=arg, probe=probe, started_at=started)
        elif op == "report" and in_flight:
            index, ok = arg
            started, probe = in_flight.pop(index % len(in_flight))
            transition, state = after_call(
                state, config, now, NAME, success=ok, probe=probe, started_at=started if pass_started_at else None
            )
            assert transition is None or transition == state["last_transition"]
        elif op == "force":
            action, duration = arg
            _, state = force(state, action, now, duration)
        if state is not None:
            check_state(state)
            assert orjson.loads(orjson.dumps(state)) == state
            # Live probes of this half-open spell: never more than allowed.
            if pass_started_at and state["status"] == cb.HALF_OPEN:
                live = [s for s, probe in in_flight if probe and s >= half_open_since and now - s < config.break_duration]
                assert len(live) <= config.half_open_probes, (live, state)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, ops=steps)
def test_property_any_sequence_keeps_the_machine_valid(config: CircuitConfig, ops: list) -> None:
    _run_property(config, ops, pass_started_at=True)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, ops=steps)
def test_property_without_started_at(config: CircuitConfig, ops: list) -> None:
    _run_property(config, ops, pass_started_at=False)


def _hms(ts: float) -> str:
    return datetime.fromtimestamp(math.ceil(ts), timezone.utc).strftime("%H:%M:%S")


# --- persistence -------------------------------------------------------------------


def _increment(state: dict | None) -> tuple[int, dict]:
    n = (state or {}).get("n", 0) + 1
    return n, {"n": n}


def _run_python(code: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "KERNELFLOW_FSYNC"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        text=True,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow  # starts python subprocesses
def test_transact_is_atomic_across_processes(tmp_store: FolderStore) -> None:
    code = """
    import sys
    from kernelflow.store import FolderStore
    store = FolderStore(sys.argv[1])
    def increment(state):
        n = (state or {}).get("n", 0) + 1
        return n, {"n": n}
    seen = [store.circuits.transact("shared counter", increment) for _ in range(200)]
    assert len(set(seen)) == 200, "a value was handed out twice"
    print(min(seen), max(seen))
    """
    procs = [_run_python(code, str(tmp_store.path)) for _ in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert tmp_store.circuits.read("shared counter") == {"n": 800}
    assert (tmp_store.path / "store.json").is_file()  # created through the store's first-write path
    assert FolderStore(tmp_store.path).circuits.names() == ["shared counter"]


def test_transact_is_atomic_across_threads_and_handles(tmp_store: FolderStore) -> None:
    tables = [tmp_store.circuits, FolderStore(tmp_store.path).circuits]
    results: list[int] = []

    def work(table: CircuitTable) -> None:
        for _ in range(100):
            results.append(table.transact("c", _increment))

    threads = [threading.Thread(target=work, args=(tables[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(1, 401))
    assert tables[1].read("c") == {"n": 400}


def test_reading_or_resetting_creates_nothing(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "store")
    assert store.circuits.read("x") is None and store.circuits.names() == [] and store.circuits.read_all() == {}
    assert store.circuits.transact("x", lambda state: ("nothing", None)) == "nothing"
    circuit("x", store=tmp_path / "store").reset()
    circuit("x", store=tmp_path / "store").close()
    assert circuit("x", store=tmp_path / "store").state == cb.CLOSED
    assert not (tmp_path / "store").exists()
    store.circuits.transact("x", lambda state: (None, {"a": 1}))
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["circuits", "store.json"]
    store.circuits.transact("x", lambda state: (None, None))
    assert store.circuits.read("x") is None and store.circuits.names() == []


def test_a_damaged_file_reads_as_none_with_a_warning(tmp_store: FolderStore) -> None:
    table = tmp_store.circuits
    table.transact(NAME, lambda state: (None, {"n": 1}))
    path = table.root / f"{file_stem(NAME)}.json"
    for junk in (b'{"name": "payments", "sta', b"[1, 2]", b'{"name": "payments", "state": 3}', b"\x00\xff"):
        path.write_bytes(junk)
        with pytest.warns(RuntimeWarning, match="is damaged"):
            assert table.read(NAME) is None
        with pytest.warns(RuntimeWarning, match="is damaged"):
            assert table.read_all() == {}
    # The next call starts from scratch and repairs the file.
    with pytest.warns(RuntimeWarning, match="is damaged"):
        assert table.transact(NAME, _increment) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert table.read(NAME) == {"n": 1}


@pytest.mark.parametrize(
    "name",
    ["a/b", "../../escape", "with spaces", "ünïcødé ☂ 支付", ".hidden", "..", "%2F", "tab\there", "x" * 500, "é" * 300],
)
def test_names_round_trip(tmp_store: FolderStore, name: str) -> None:
    table = tmp_store.circuits
    table.transact(name, lambda state: (None, {"name_seen": name}))
    assert table.read(name) == {"name_seen": name}
    assert table.names() == [name]
    assert table.read_all() == {name: {"name_seen": name}}
    files = [p for p in tmp_store.path.rglob("*") if p.is_file()]
    assert all(p.parent in (tmp_store.path, table.root) for p in files)  # nothing escaped the folder
    assert all(len(p.name.encode()) < 255 and not p.name.startswith(".") for p in files)
    # Another handle, with its own encoding work, finds the same file.
    assert FolderStore(tmp_store.path).circuits.read(name) == {"name_seen": name}


def test_long_names_do_not_collide(tmp_store: FolderStore) -> None:
    a, b = "p" * 400 + "a", "p" * 400 + "b"
    assert file_stem(a) != file_stem(b)
    tmp_store.circuits.transact(a, lambda s: (None, {"v": "a"}))
    tmp_store.circuits.transact(b, lambda s: (None, {"v": "b"}))
    assert tmp_store.circuits.read_all() == {a: {"v": "a"}, b: {"v": "b"}}
    with pytest.raises(ValueError, match="non-empty string"):
        file_stem("")


def test_the_machine_through_the_store(tmp_store: FolderStore) -> None:
    # How the engine uses it: a read-modify-write per decision and per report,
    # from any handle on the store.
    config = CircuitConfig(failure_threshold=2, window=60, break_duration=30)
    other = FolderStore(tmp_store.path).circuits

    def decide(table: CircuitTable, now: float) -> cb.Decision:
        return table.transact(NAME, lambda state: before_call(state, config, now, NAME))

    def report(table: CircuitTable, now: float, ok: bool, probe: bool = False, started_at: float | None = None) -> str | None:
        return table.transact(
            NAME, lambda state: after_call(state, config, now, NAME, success=ok, probe=probe, started_at=started_at)
        )

    assert decide(tmp_store.circuits, T0).allowed
    assert report(tmp_store.circuits, T0 + 1, False) is None
    assert report(other, T0 + 2, False) == "closed->open"
    assert not decide(tmp_store.circuits, T0 + 3).allowed
    probe = decide(other, T0 + 32)
    assert probe.probe and not decide(tmp_store.circuits, T0 + 33).allowed
    assert report(tmp_store.circuits, T0 + 34, True, probe=True, started_at=T0 + 32) == "half_open->closed"
    assert other.read(NAME)["status"] == cb.CLOSED


def test_a_store_with_circuits_still_opens_queries_and_compacts(tmp_path: Path) -> None:
    path = tmp_path / "store"
    store = FolderStore(path)
    circuit(NAME, store=path).open("5m")
    store.append(Event("r-1", 0, 1_795_000_000_000_000, ev.RUN_STARTED, "wf", "v1", payload={"inputs": {}, "tasks": ["a"]}))
    store.close()
    assert (path / "circuits").is_dir()

    again = FolderStore(path)  # the foreign-folder check is happy with circuits/
    assert again.sql("SELECT count(*) FROM events").item() == 1
    again.append(Event("r-2", 0, 1_795_000_000_000_001, ev.RUN_STARTED, "wf", "v1", payload={"inputs": {}, "tasks": ["a"]}))
    again.close()
    assert again.compact() == 0  # own segment already compacted at close
    assert sorted(p.suffix for p in (path / "events").iterdir()) == [".parquet", ".parquet"]
    assert FolderStore(path).sql("SELECT count(*) FROM runs").item() == 2
    assert circuit(NAME, store=path).state == cb.OPEN


def test_tables_are_created_lazily_and_once(tmp_store: FolderStore) -> None:
    assert tmp_store.circuits is tmp_store.circuits
    assert tmp_store.circuits.root == tmp_store.path / "circuits"
    assert not tmp_store.path.exists()


# --- the user API --------------------------------------------------------------------


@pytest.mark.slow  # starts python subprocesses
def test_open_close_reset_seen_by_other_handles_and_processes(tmp_store: FolderStore) -> None:
    where = tmp_store.path
    handle = circuit(NAME, store=where)
    assert isinstance(handle, Circuit) and handle.state == cb.CLOSED and handle.info()["known"] is False

    handle.open()
    assert FolderStore(where).circuits.read(NAME)["status"] == cb.OPEN
    assert _state_in_subprocess(where) == cb.OPEN
    info = circuit(NAME, store=where).info()
    assert info["known"] and info["name"] == NAME and info["open_until"] is None
    assert repr(handle) == "<Circuit 'payments': open>"

    handle.close()
    assert FolderStore(where).circuits.read(NAME)["status"] == cb.CLOSED
    assert _state_in_subprocess(where) == cb.CLOSED

    handle.open("10m")
    state = FolderStore(where).circuits.read(NAME)
    assert state["open_until"] - state["opened_at"] == 600

    handle.reset()
    assert FolderStore(where).circuits.read(NAME) is None and circuits(store=where).height == 0
    assert _state_in_subprocess(where) == cb.CLOSED

    with pytest.raises(OptionError, match="the duration to keep the circuit open must be greater than zero"):
        handle.open(0)
    with pytest.raises(OptionError, match="non-empty string"):
        circuit("  ", store=where)


def _state_in_subprocess(where: Path) -> str:
    code = """
    import sys
    from kernelflow.circuits import circuit
    print(circuit(sys.argv[2], store=sys.argv[1]).state)
    """
    proc = _run_python(code, str(where), NAME)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out.strip()


@pytest.mark.slow  # starts python subprocesses
def test_a_subprocess_opens_and_this_process_sees_it(tmp_store: FolderStore) -> None:
    code = """
    import sys
    from kernelflow.circuits import circuit
    circuit(sys.argv[2], store=sys.argv[1]).open("1h")
    """
    proc = _run_python(code, str(tmp_store.path), "search api")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert circuit("search api", store=tmp_store.path).state == cb.OPEN


def test_circuits_dataframe(tmp_store: FolderStore) -> None:
    empty = circuits(store=tmp_store.path)
    assert empty.columns == ["name", "state", "failures_in_window", "open_until", "probes_in_flight", "updated_at"]
    assert empty.height == 0 and empty.schema["open_until"] == pl.Datetime("us", "UTC")

    config = CircuitConfig(failure_threshold=3, window=3600)
    table = tmp_store.circuits
    now = datetime.now(timezone.utc).timestamp()
    table.transact("flaky", lambda state: after_call(state, config, now - 7200, "flaky", success=False, probe=False))
    table.transact("flaky", lambda state: after_call(state, config, now, "flaky", success=False, probe=False))
    circuit("down", store=tmp_store.path).open("1h")
    circuit("manual", store=tmp_store.path).open()

    df = circuits(store=tmp_store.path)
    assert df["name"].to_list() == ["down", "flaky", "manual"]
    assert df["state"].to_list() == ["open", "closed", "open"]
    assert df["failures_in_window"].to_list() == [0, 1, 0]  # the one of two hours ago is out of the window
    assert df["probes_in_flight"].to_list() == [0, 0, 0]
    down_until = df["open_until"][0]
    assert down_until.tzinfo is not None and 3590 < down_until.timestamp() - now < 3610
    assert df["open_until"][1] is None and df["open_until"][2] is None
    assert df["updated_at"].null_count() == 0


def test_the_default_store_is_the_one_kf_sql_uses(kernelflow_home: Path) -> None:
    circuit(NAME).open("1m")
    assert (kernelflow_home / "circuits").is_dir()
    assert circuits()["name"].to_list() == [NAME]
    assert FolderStore(kernelflow_home).circuits.read(NAME)["status"] == cb.OPEN
