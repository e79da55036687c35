"""Durations: what users may write, what they are refused, how durations are shown."""

from __future__ import annotations

import math

import pytest

from kernelflow.durations import format_duration, parse_duration, readable_duration

SHAPE = "must be a duration like 30, '500ms', '30s', '5m' or '2h', got "


@pytest.mark.parametrize(
    "value, seconds",
    [
        (30, 30.0),
        (1.5, 1.5),
        ("30", 30.0),  # a bare number in a string is seconds
        ("2.5", 2.5),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        (" 1.5 h ", 5400.0),
    ],
)
def test_parse_duration_accepts_numbers_and_units(value, seconds):
    result = parse_duration(value)
    assert result == seconds and type(result) is float


@pytest.mark.parametrize("value", ["30 sec", "5M", "1e3", "inf", "nan", "-5s", "", "s", [30], None, True, False])
def test_parse_duration_refuses_other_shapes(value):
    # bool is an int, but `timeout: true` is a mistake, not one second.
    with pytest.raises(ValueError) as exc:
        parse_duration(value)
    assert str(exc.value) == f"duration {SHAPE}{value!r}"


def test_parse_duration_names_what_it_parses():
    with pytest.raises(ValueError) as exc:
        parse_duration("soon", what="task.timeout")
    assert str(exc.value) == f"task.timeout {SHAPE}'soon'"
    with pytest.raises(ValueError) as exc:
        parse_duration(0, what="task.timeout")
    assert str(exc.value) == "task.timeout must be greater than zero, got 0"


@pytest.mark.parametrize(
    "value",
    [0, 0.0, "0", "0s", "0ms", -1, -0.5, math.nan, -math.inf, -(10**400)],
)
def test_parse_duration_refuses_zero_negative_and_nan(value):
    with pytest.raises(ValueError) as exc:
        parse_duration(value)
    assert str(exc.value) == f"duration must be greater than zero, got {value!r}"


@pytest.mark.parametrize(
    "value",
    [math.inf, 10**400,  # beyond float's range: float() raised OverflowError, not ValueError
     "1" + "0" * 308 + "d"],  # finite digits, but times a day's seconds it overflows to inf
)
def test_parse_duration_refuses_infinite_durations(value):
    with pytest.raises(ValueError) as exc:
        parse_duration(value, what="task.timeout")
    assert str(exc.value) == f"task.timeout must be a finite duration, got {value!r}"


def test_parse_duration_smallest_and_largest_accepted():
    assert parse_duration(5e-324) == 5e-324
    assert parse_duration(1.7e308) == 1.7e308
    assert parse_duration("1ms") == 0.001


@pytest.mark.parametrize(
    "seconds, text",
    [
        (86400, "1d"),
        (172800.0, "2d"),
        (7200, "2h"),
        (3600, "1h"),
        (300, "5m"),
        (60, "1m"),
        (90, "90s"),  # 1.5 minutes: the shortest exact spelling is in seconds
        (5400, "90m"),
        (30, "30s"),
        (1, "1s"),
        (1.5, "1500ms"),
        (0.5, "500ms"),
        (0.001, "1ms"),
        (0, "0ms"),
        (0.0015, "0.0015s"),  # not a whole number of milliseconds
        (0.0001, "0.0001s"),
    ],
)
def test_format_duration_shortest_exact_spelling(seconds, text):
    assert format_duration(seconds) == text


def test_format_duration_round_trips():
    for text in ("1d", "2h", "5m", "90s", "1500ms", "1ms"):
        assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0.00085, "0.85 ms"),
        (0.85, "850 ms"),
        (0.999, "999 ms"),
        (1.0, "1.0 s"),  # 1 s is no longer shown in ms
        (1.99, "2.0 s"),
        (3.14, "3.1 s"),
        (119.9, "119.9 s"),
        (120.0, "2.0 min"),  # from two minutes on, minutes
        (250, "4.2 min"),
        (7199, "120.0 min"),
        (7200.0, "2.0 h"),  # from two hours on, hours
        (9000, "2.5 h"),
        (12_963_600, "3601.0 h"),
        (math.inf, "inf s"),
        (-math.inf, "-inf s"),
        (math.nan, "nan s"),
    ],
)
def test_readable_duration(seconds, text):
    assert readable_duration(seconds) == text
