"""Durations as users write them (``30``, ``1.5``, ``"500ms"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"``), and as people read them."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: object, *, what: str = "duration") -> float:
    """Seconds from a number or a string with a unit; ``ValueError`` naming ``what`` otherwise."""
    if isinstance(value, bool):  # bool is an int; True seconds is a bug, not a duration
        raise ValueError(f"{what} must be a duration like 30, '500ms', '30s', '5m' or '2h', got {value!r}")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond float's range
            seconds = math.inf if value > 0 else -math.inf
    elif isinstance(value, str) and (m := _PATTERN.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        raise ValueError(f"{what} must be a duration like 30, '500ms', '30s', '5m' or '2h', got {value!r}")
    if seconds == math.inf:
        raise ValueError(f"{what} must be a finite duration, got {value!r}")
    if not seconds > 0:  # also refuses nan, which compares false
        raise ValueError(f"{what} must be greater than zero, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: 0.5 -> '500ms', 30 -> '30s', 300 -> '5m'."""
    for unit in ("d", "h", "m", "s"):
        n = seconds / _UNITS[unit]
        if n >= 1 and n == int(n):
            return f"{int(n)}{unit}"
    ms = seconds * 1000
    return f"{int(ms)}ms" if ms == int(ms) else f"{seconds:g}s"


def readable_duration(seconds: float) -> str:
    """For people, at a glance: ``850 ms``, ``3.1 s``, ``4.2 min``, ``2.5 h``."""
    if not math.isfinite(seconds):
        return f"{seconds} s"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 120.0:
        return f"{seconds:.1f} s"
    if seconds < 7200.0:
        return f"{seconds / 60.0:.1f} min"
    return f"{seconds / 3600.0:.1f} h"
