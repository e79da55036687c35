"""Circuit breakers: the state machine, with no I/O and no clock.

A step with ``circuit_breaker: {name: payments, failure_threshold: 5, window:
60s, break_duration: 30s, half_open_probes: 1}`` asks the breaker before each
attempt whether the call may go ahead (:func:`before_call`) and reports how it
went afterwards (:func:`after_call`). The state is a plain JSON-able dict that
the store keeps (``store/circuits.py``), so every run and every process that
names the same circuit shares it; the caller reads it, calls one of the
functions here and writes the result back, all inside one store transaction.

Everything here is a pure function of ``(state, config, now)``: ``now`` is
passed in (float seconds since the epoch), which keeps the machine testable
to the exact boundary and lets processes with their own clocks share it.

States::

    closed ──(failure_threshold failures within window)──> open
    open ──(first call at or after open_until: it is a probe)──> half_open
    half_open ──(a probe fails)──> open (a fresh break_duration)
    half_open ──(half_open_probes probes succeed)──> closed (failures cleared)

Choices worth knowing:

* **Successes do not erase failures.** In the closed state only the sliding
  window forgets a failure. A dependency failing every other call should
  still trip the breaker; "a success resets the count" would keep such a
  circuit closed forever.
* **The failure list is bounded**: only the newest ``failure_threshold``
  timestamps are kept, which is all the decision ever needs.
* **A probe that never reports** (its process died) is forgotten once it is
  ``break_duration`` old, so a dead probe cannot jam the circuit half-open.
* **Late reports.** A report of a probe that is no longer in flight (it was
  forgotten, or the circuit was re-opened or closed meanwhile) counts as an
  ordinary call: a failure is recorded (and can open a closed circuit), a
  success changes nothing. Pass ``started_at`` to :func:`after_call` so the
  breaker can tell which probe reports; without it the oldest one is assumed.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .durations import format_duration, parse_duration
from .exceptions import OptionError

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)

STATE_FORMAT = 1
"""Version of the state dict's shape, stored in it as ``"format"``."""

_OPTION = "circuit_breaker"
_KEYS = ("name", "failure_threshold", "window", "break_duration", "half_open_probes")
_EXAMPLE = "{name: payments, failure_threshold: 5, window: 60s, break_duration: 30s, half_open_probes: 1}"


def _option_error(message: str) -> OptionError:
    return OptionError(message, hint=f"write it like circuit_breaker: {_EXAMPLE} (every key but name is optional)")


def _whole_number(key: str, value: Any) -> int:
    # bool is an int, but `failure_threshold: true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _option_error(f"{_OPTION}.{key} must be a whole number >= 1, got {value!r}")
    if value < 1:
        raise _option_error(f"{_OPTION}.{key} must be a whole number >= 1, got {value!r}")
    return value


def _seconds(key: str, value: Any) -> float:
    try:
        return parse_duration(value, what=f"{_OPTION}.{key}")
    except ValueError as exc:
        raise _option_error(str(exc)) from None


@dataclass(frozen=True)
class CircuitConfig:
    """How one circuit breaks; validated on construction.

    ``failure_threshold`` failures within the sliding ``window`` (seconds)
    open the circuit for ``break_duration`` seconds; then up to
    ``half_open_probes`` trial calls run at once, and that many successes in a
    row close it again.
    """

    failure_threshold: int = 5
    window: float = 60.0
    break_duration: float = 30.0
    half_open_probes: int = 1

    def __post_init__(self) -> None:
        _whole_number("failure_threshold", self.failure_threshold)
        _whole_number("half_open_probes", self.half_open_probes)
        # Frozen: normalise through object.__setattr__ so 60 and "60s" compare equal.
        object.__setattr__(self, "window", _seconds("window", self.window))
        object.__setattr__(self, "break_duration", _seconds("break_duration", self.break_duration))

    @classmethod
    def from_options(cls, value: Mapping[str, Any] | bool | None) -> CircuitConfig | None:
        """The config a step's ``circuit_breaker`` option asks for.

        ``True`` means the defaults, ``None``/``False`` no breaker. A mapping may
        set ``failure_threshold``, ``window``, ``break_duration`` (numbers of
        seconds or strings like ``"60s"``, ``"5m"``) and ``half_open_probes``;
        ``name`` is accepted and left to the caller (it names the shared
        state). Anything else raises :class:`~kernelflow.exceptions.OptionError`.
        """
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if not isinstance(value, Mapping):
            raise _option_error(f"{_OPTION} must be true or a mapping of options, got {value!r}")
        for key in value:
            if key not in _KEYS:
                close = difflib.get_close_matches(str(key), _KEYS)  # best first
                did_you_mean = f" (did you mean {close[0]!r}?)" if close else ""
                raise _option_error(
                    f"{_OPTION} has no option {key!r}{did_you_mean}; it accepts {', '.join(_KEYS)}"
                )
        if "name" in value and (not isinstance(value["name"], str) or not value["name"].strip()):
            raise _option_error(f"{_OPTION}.name must be a non-empty string, got {value['name']!r}")
        kwargs: dict[str, Any] = {}
        for key in ("failure_threshold", "half_open_probes"):
            if key in value:
                kwargs[key] = _whole_number(key, value[key])
        for key in ("window", "break_duration"):
            if key in value:
                kwargs[key] = _seconds(key, value[key])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; ``CircuitConfig(**config.to_dict()) == config``."""
        return {
            "failure_threshold": self.failure_threshold,
            "window": self.window,
            "break_duration": self.break_duration,
            "half_open_probes": self.half_open_probes,
        }


@dataclass(frozen=True)
class Decision:
    """The answer of :func:`before_call`."""

    allowed: bool
    """Whether the call may go ahead."""
    probe: bool
    """The call is a half-open probe: report it with ``after_call(..., probe=True)``."""
    state: str
    """``"closed"``, ``"open"`` or ``"half_open"`` after the decision."""
    transition: str | None
    """``"open->half_open"`` when this call moved the circuit, else None."""
    retry_at: float | None
    """When refused: the earliest time a call may be let through (None: not until closed by hand)."""
    reason: str
    """Human text for logs and errors."""


# --- the state dict ------------------------------------------------------------------


def _fresh() -> dict[str, Any]:
    return {
        "format": STATE_FORMAT,
        "status": CLOSED,
        "failures": [],  # timestamps, oldest first, at most failure_threshold of them
        "opened_at": None,
        "open_until": None,  # None while open: open until closed by hand
        "open_cause": None,  # "failures" | "probe_failed" | "forced"
        "open_failures": 0,  # failures in the window when it opened (for messages)
        "probes": [],  # start times of the half-open probes in flight
        "probe_successes": 0,
        "last_transition": None,
        "last_transition_at": None,
        "updated_at": None,
        "config": None,  # the config last used, so a listing can describe the circuit
    }


def _num(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _times(value: Any) -> list[float]:
    if not isinstance(value, list):
        return []
    return sorted(t for t in map(_num, value) if t is not None)


def _load(state: Mapping[str, Any] | None) -> dict[str, Any]:
    """A well-formed copy of ``state``: whatever the store hands back (an old
    format, a hand edit), the machine below only ever sees valid fields."""
    s = _fresh()
    if not isinstance(state, Mapping):
        return s
    if state.get("status") in STATES:
        s["status"] = state["status"]
    s["failures"] = _times(state.get("failures"))
    s["probes"] = _times(state.get("probes"))
    for key in ("opened_at", "open_until", "last_transition_at", "updated_at"):
        s[key] = _num(state.get(key))
    for key in ("open_failures", "probe_successes"):
        v = state.get(key)
        s[key] = v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0
    if state.get("open_cause") in ("failures", "probe_failed", "forced"):
        s["open_cause"] = state["open_cause"]
    if isinstance(state.get("last_transition"), str):
        s["last_transition"] = state["last_transition"]
    if isinstance(state.get("config"), Mapping):
        s["config"] = dict(state["config"])
    # Fields that only mean something in one status are cleared in the others.
    if s["status"] == OPEN:
        if s["opened_at"] is None:
            s["opened_at"] = s["updated_at"] or 0.0
        if s["open_until"] is not None and s["opened_at"] > s["open_until"]:
            s["opened_at"] = s["open_until"]
        s["open_cause"] = s["open_cause"] or "failures"
    if s["status"] != OPEN:
        s["opened_at"] = s["open_until"] = s["open_cause"] = None
        s["open_failures"] = 0
    if s["status"] != HALF_OPEN:
        s["probes"], s["probe_successes"] = [], 0
    return s


def _stored_config(s: Mapping[str, Any]) -> CircuitConfig | None:
    try:
        return CircuitConfig(**s["config"]) if s.get("config") else None
    except (TypeError, OptionError):
        return None


def _in_window(failures: list[float], config: CircuitConfig, now: float) -> list[float]:
    # A failure at t counts while now - t < window: one exactly `window` old is out.
    return [t for t in failures if now - t < config.window]


def _prune(s: dict[str, Any], config: CircuitConfig, now: float) -> None:
    s["failures"] = _in_window(s["failures"], config, now)[-config.failure_threshold :]
    if s["status"] == HALF_OPEN:
        # A probe that has not reported within break_duration is presumed dead
        # (its process was killed): forget it so the circuit cannot jam.
        s["probes"] = [t for t in s["probes"] if now - t < config.break_duration]


def _move(s: dict[str, Any], to: str, now: float) -> str | None:
    frm = s["status"]
    if frm == to:
        return None
    s["status"] = to
    s["last_transition"] = f"{frm}->{to}"
    s["last_transition_at"] = now
    if to != OPEN:
        s["opened_at"] = s["open_until"] = s["open_cause"] = None
        s["open_failures"] = 0
    s["probes"], s["probe_successes"] = [], 0
    if to == CLOSED:
        s["failures"] = []
    return s["last_transition"]


def _open(s: dict[str, Any], now: float, until: float | None, cause: str) -> str | None:
    transition = _move(s, OPEN, now)
    s["opened_at"] = now
    s["open_until"] = until
    s["open_cause"] = cause
    s["open_failures"] = len(s["failures"])
    return transition


def _finish(before: dict[str, Any], after: dict[str, Any], now: float) -> dict[str, Any]:
    # Only a real change bumps updated_at, so an unchanged circuit compares
    # equal to what the store holds and the store can skip the write.
    if before["updated_at"] is None or {**after, "updated_at": None} != {**before, "updated_at": None}:
        after["updated_at"] = now
    return after


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(math.ceil(ts), timezone.utc).strftime("%H:%M:%S UTC")


def _open_reason(s: Mapping[str, Any], config: CircuitConfig, name: str) -> str:
    until = s["open_until"]
    if until is None:
        return (
            f"circuit {name!r} was opened by hand and stays open until it is closed "
            f"(kf.circuit({name!r}).close())"
        )
    text = f"circuit {name!r} is open until {_utc(until)}"
    if s["open_cause"] == "failures":
        return f"{text} after {s['open_failures']} failures in {format_duration(config.window)}"
    if s["open_cause"] == "probe_failed":
        return f"{text}: a half-open trial call failed"
    return f"{text} (opened by hand)"


# --- the machine ---------------------------------------------------------------------


def before_call(
    state: Mapping[str, Any] | None, config: CircuitConfig, now: float, name: str
) -> tuple[Decision, dict[str, Any]]:
    """May a call go ahead now? Returns the decision and the new state.

    Closed: yes. Open: no, until ``open_until``; the first call at or after it
    moves the circuit to half-open and is a probe. Half-open: yes as a probe
    while fewer than ``half_open_probes`` are in flight, else no.
    """
    now = float(now)
    before = _load(state)
    s = _load(before)
    s["config"] = config.to_dict()
    _prune(s, config, now)
    transition = None
    if s["status"] == OPEN:
        until = s["open_until"]
        if until is None or now < until:
            decision = Decision(False, False, OPEN, None, until, _open_reason(s, config, name))
            return decision, _finish(before, s, now)
        transition = _move(s, HALF_OPEN, now)
    if s["status"] == HALF_OPEN:
        in_flight = len(s["probes"])
        if in_flight < config.half_open_probes:
            s["probes"].append(now)
            reason = f"circuit {name!r} is half-open: this call is trial {in_flight + 1} of {config.half_open_probes}"
            return Decision(True, True, HALF_OPEN, transition, None, reason), _finish(before, s, now)
        # Refused: the circuit was half-open already (one that just moved has no
        # probes in flight), so this decision made no transition.
        retry_at = s["probes"][0] + config.break_duration
        reason = (
            f"circuit {name!r} is half-open and its {in_flight} trial call(s) are still running "
            f"(half_open_probes={config.half_open_probes}); try again once one reports, at the latest {_utc(retry_at)}"
        )
        return Decision(False, False, HALF_OPEN, None, retry_at, reason), _finish(before, s, now)
    return Decision(True, False, CLOSED, None, None, f"circuit {name!r} is closed"), _finish(before, s, now)


def after_call(
    state: Mapping[str, Any] | None,
    config: CircuitConfig,
    now: float,
    name: str,
    *,
    success: bool,
    probe: bool,
    started_at: float | None = None,
) -> tuple[str | None, dict[str, Any]]:
    """Record how a call went; returns ``(transition or None, new state)``.

    ``probe`` is the call's ``Decision.probe``; ``started_at`` (optional, the
    ``now`` given to :func:`before_call` for it) identifies which probe in
    flight reports. A probe success counts towards closing; a probe failure
    re-opens the circuit for a fresh ``break_duration``. Other failures count
    in the sliding window (and open a closed circuit at the threshold);
    other successes change nothing.
    """
    del name  # part of the signature for symmetry and future messages
    now = float(now)
    before = _load(state)
    s = _load(before)
    s["config"] = config.to_dict()
    _prune(s, config, now)
    transition = None
    matched = False
    if probe and s["status"] == HALF_OPEN and s["probes"]:
        if started_at is None:
            s["probes"].pop(0)
            matched = True
        elif float(started_at) in s["probes"]:
            s["probes"].remove(float(started_at))
            matched = True
    if matched and success:
        s["probe_successes"] += 1
        if s["probe_successes"] >= config.half_open_probes:
            transition = _move(s, CLOSED, now)
    elif matched:
        s["failures"] = (s["failures"] + [now])[-config.failure_threshold :]
        transition = _open(s, now, now + config.break_duration, "probe_failed")
    elif not success:
        s["failures"] = (s["failures"] + [now])[-config.failure_threshold :]
        if s["status"] == CLOSED and len(s["failures"]) >= config.failure_threshold:
            transition = _open(s, now, now + config.break_duration, "failures")
    return transition, _finish(before, s, now)


def force(
    state: Mapping[str, Any] | None, action: str, now: float, duration: float | None = None
) -> tuple[str | None, dict[str, Any] | None]:
    """Override the breaker by hand; returns ``(transition or None, new state)``.

    ``"open"``: refuse calls for ``duration`` seconds (then probe as usual), or
    until closed if ``duration`` is None. ``"close"``: closed, failures
    cleared (an unknown circuit stays unknown: ``None``). ``"reset"``: forget
    the circuit; the new state is ``None`` (the store deletes it), which
    behaves exactly like a circuit never seen.
    """
    now = float(now)
    before = _load(state)
    s = _load(before)
    if action == "open":
        if duration is not None and not (_num(duration) is not None and duration > 0):
            raise ValueError(f"a circuit is forced open for a duration greater than zero seconds, got {duration!r}")
        transition = _open(s, now, None if duration is None else now + float(duration), "forced")
        s["last_transition_at"] = now  # even when it was open already: the break restarts now
        return transition, _finish(before, s, now)
    if action == "close":
        if state is None:
            return None, None  # a circuit never seen is closed already: nothing to store
        transition = _move(s, CLOSED, now)
        s["failures"] = []
        return transition, _finish(before, s, now)
    if action == "reset":
        return (f"{before['status']}->{CLOSED}" if before["status"] != CLOSED else None), None
    raise ValueError(f"unknown circuit action {action!r}; use 'open', 'close' or 'reset'")


def describe(state: Mapping[str, Any] | None, config_or_none: CircuitConfig | None, now: float) -> dict[str, Any]:
    """A JSON-able summary of the circuit as of ``now``.

    ``state`` is what a call made now would find: an open circuit whose
    ``open_until`` has passed reports ``"half_open"`` (the next call is a
    probe), although the stored state only changes with that call. Without a
    config, the one last used with this circuit (kept in its state) is used.
    """
    now = float(now)
    s = _load(state)
    config = config_or_none or _stored_config(s)
    if config is not None:
        _prune(s, config, now)
    status = s["status"]
    if status == OPEN and s["open_until"] is not None and now >= s["open_until"]:
        status = HALF_OPEN
    return {
        "state": status,
        "failures_in_window": len(s["failures"]),
        "opened_at": s["opened_at"],
        "open_until": s["open_until"],
        "probes_in_flight": len(s["probes"]),
        "probe_successes": s["probe_successes"],
        "last_transition": s["last_transition"],
        "last_transition_at": s["last_transition_at"],
        "updated_at": s["updated_at"],
        "config": config.to_dict() if config is not None else None,
    }


def check_state(state: Mapping[str, Any]) -> None:
    """Raise ``AssertionError`` unless ``state`` is a well-formed state dict
    (tests and debugging; the machine itself never produces another)."""
    assert set(state) == set(_fresh()), sorted(set(state) ^ set(_fresh()))
    assert state["format"] == STATE_FORMAT
    assert state["status"] in STATES
    assert state["failures"] == sorted(state["failures"])
    assert isinstance(state["probe_successes"], int) and state["probe_successes"] >= 0
    config = _stored_config(state)
    if config is not None:
        assert len(state["failures"]) <= config.failure_threshold
    if state["status"] == OPEN:
        assert state["opened_at"] is not None and state["open_cause"] is not None
        assert state["open_until"] is None or state["open_until"] >= state["opened_at"]
    else:
        assert state["opened_at"] is None and state["open_until"] is None and state["open_cause"] is None
    if state["status"] == HALF_OPEN:
        if config is not None:
            assert len(state["probes"]) <= config.half_open_probes
            assert state["probe_successes"] < config.half_open_probes
    else:
        assert state["probes"] == [] and state["probe_successes"] == 0
    if state["status"] == CLOSED and config is not None:
        assert len(state["failures"]) < config.failure_threshold


__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "CircuitConfig",
    "Decision",
    "after_call",
    "before_call",
    "check_state",
    "describe",
    "force",
]
