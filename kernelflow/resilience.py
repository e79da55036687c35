"""The engine's side of circuit breakers: decide and record through the store.

The breaker's state machine is pure (:mod:`kernelflow.circuit_breaker`);
its state lives in the store (``store.circuits``), read and written under
the store's lock in one transaction per call, so every run in every process
sees the same circuit.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Mapping

from .circuit_breaker import CircuitConfig, Decision, after_call, before_call

if TYPE_CHECKING:  # pragma: no cover
    from .run import Run


def _config(breaker: Mapping[str, Any]) -> CircuitConfig:
    return CircuitConfig.from_options({k: v for k, v in breaker.items() if k != "name"}) or CircuitConfig()


def circuit_before(run: Run, task_id: str, breaker: Mapping[str, Any]) -> Decision:
    """May the call go ahead? (A half-open circuit lets a few probes through.)"""
    name = breaker["name"]
    config = _config(breaker)
    now = time.time()

    def update(state: dict[str, Any] | None) -> tuple[Decision, dict[str, Any]]:
        return before_call(state, config, now, name)

    return run.store.circuits.transact(name, update)


def circuit_after(run: Run, breaker: Mapping[str, Any], *, success: bool, probe: bool) -> str | None:
    """Record the call's result; returns the transition it caused, if any."""
    name = breaker["name"]
    config = _config(breaker)
    now = time.time()

    def update(state: dict[str, Any] | None) -> tuple[str | None, dict[str, Any]]:
        return after_call(state, config, now, name, success=success, probe=probe)

    return run.store.circuits.transact(name, update)
