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
    # from_options accepts the breaker's ``name`` and leaves it to us; a mapping
    # always gives a config (the ``or`` only tells the type checker so).
    return CircuitConfig.from_options(breaker) or CircuitConfig()


def circuit_before(run: Run, task_id: str, breaker: Mapping[str, Any]) -> tuple[Decision, float]:
    """May the call go ahead? (A half-open circuit lets a few probes through.)
    Returns the decision and the time it was made (pass it to :func:`circuit_after`)."""
    name = breaker["name"]
    config = _config(breaker)
    now = time.time()

    def update(state: dict[str, Any] | None) -> tuple[Decision, dict[str, Any]]:
        return before_call(state, config, now, name)

    return run.store.circuits.transact(name, update), now


def circuit_after(
    run: Run, breaker: Mapping[str, Any], *, success: bool, probe: bool, started_at: float | None = None
) -> str | None:
    """Record the call's result (``started_at``: the time given to its
    :func:`circuit_before`, which tells probes apart); returns the transition it caused."""
    name = breaker["name"]
    config = _config(breaker)
    now = time.time()

    def update(state: dict[str, Any] | None) -> tuple[str | None, dict[str, Any]]:
        return after_call(state, config, now, name, success=success, probe=probe, started_at=started_at)

    return run.store.circuits.transact(name, update)
