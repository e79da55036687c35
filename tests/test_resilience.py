"""The engine's side of circuit breakers: decisions and reports go through the store.

The state machine itself is tested in test_circuit_breaker.py; these check that
``circuit_before``/``circuit_after`` use the step's breaker options and the shared
state in the run's store.
"""

from __future__ import annotations

import time

from kernelflow import circuit_breaker as cb
from kernelflow.resilience import circuit_after, circuit_before
from kernelflow.store import FolderStore


class _RunOn:
    """What resilience needs of a Run: its store."""

    def __init__(self, store: FolderStore) -> None:
        self.store = store


BREAKER = {"name": "payments", "failure_threshold": 2, "window": "60s", "break_duration": "5m", "half_open_probes": 2}


def test_a_closed_circuit_lets_calls_through(tmp_store: FolderStore) -> None:
    before = time.time()
    decision, asked_at = circuit_before(_RunOn(tmp_store), "charge", BREAKER)
    assert before <= asked_at <= time.time()
    assert decision == cb.Decision(True, False, cb.CLOSED, None, None, "circuit 'payments' is closed")
    # The state is stored under the breaker's name, with the step's config.
    state = tmp_store.circuits.read("payments")
    assert state["status"] == cb.CLOSED
    assert state["config"] == {"failure_threshold": 2, "window": 60.0, "break_duration": 300.0, "half_open_probes": 2}


def test_failures_reach_the_steps_threshold_and_open_the_circuit(tmp_store: FolderStore) -> None:
    run = _RunOn(tmp_store)
    assert circuit_after(run, BREAKER, success=False, probe=False) is None
    assert circuit_after(run, BREAKER, success=False, probe=False) == "closed->open"  # threshold 2, not the default 5
    decision, _ = circuit_before(run, "charge", BREAKER)
    assert (decision.allowed, decision.state) == (False, cb.OPEN)
    assert decision.reason.startswith("circuit 'payments' is open until ")
    assert decision.reason.endswith(" after 2 failures in 1m")
    state = tmp_store.circuits.read("payments")
    assert state["open_until"] - state["opened_at"] == 300.0  # break_duration 5m
    # Another circuit's name is another state.
    other, _ = circuit_before(run, "charge", {**BREAKER, "name": "search"})
    assert other.allowed and tmp_store.circuits.read("search")["status"] == cb.CLOSED


def test_a_successful_call_changes_nothing(tmp_store: FolderStore) -> None:
    run = _RunOn(tmp_store)
    circuit_after(run, BREAKER, success=False, probe=False)
    assert circuit_after(run, BREAKER, success=True, probe=False) is None
    assert len(tmp_store.circuits.read("payments")["failures"]) == 1


def test_a_reporting_probe_is_told_apart_by_its_start_time(tmp_store: FolderStore) -> None:
    # With two probes in flight, the one that reports is the one that started
    # at `started_at`, not the oldest.
    run = _RunOn(tmp_store)
    tmp_store.circuits.transact("payments", lambda state: cb.force(state, "open", time.time() - 600, 300))
    first, first_at = circuit_before(run, "charge", BREAKER)
    second, second_at = circuit_before(run, "charge", BREAKER)
    assert first.transition == "open->half_open" and first.probe and second.probe and first_at < second_at
    assert circuit_after(run, BREAKER, success=True, probe=True, started_at=second_at) is None
    state = tmp_store.circuits.read("payments")
    assert state["probes"] == [first_at] and state["probe_successes"] == 1
    assert circuit_after(run, BREAKER, success=True, probe=True, started_at=first_at) == "half_open->closed"


def test_a_failed_probe_reopens_the_circuit(tmp_store: FolderStore) -> None:
    run = _RunOn(tmp_store)
    tmp_store.circuits.transact("payments", lambda state: cb.force(state, "open", time.time() - 600, 300))
    _, asked_at = circuit_before(run, "charge", BREAKER)
    assert circuit_after(run, BREAKER, success=False, probe=True, started_at=asked_at) == "half_open->open"
    assert tmp_store.circuits.read("payments")["open_cause"] == "probe_failed"
