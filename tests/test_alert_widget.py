"""The alert widget and its data contract (``kernelflow.widgets.alert``)."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from kernelflow.widgets.fallback import embedded_svgs
from kernelflow.widgets import alert as alert_module
from kernelflow.widgets.alert import (
    SEVERITIES,
    SEVERITY_COLORS,
    Alert,
    AlertWidget,
    alert_html,
    sparkline_svg,
)

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)


def make(**changes) -> Alert:
    fields = {
        "workflow": "etl",
        "task": "clean",
        "run_id": "r-42",
        "metric": "duration_s",
        "value": 42.1,
        "baseline": 12.0,
        "spread": 1.3,
        "score": 23.2,
        "rule": "zscore",
        "severity": "critical",
        "message": "clean took 42.1 s, usually 12.0 s",
        "raised_at": T0 + timedelta(hours=5),
        "history": [(T0 + timedelta(hours=i), 11.0 + (i % 3)) for i in range(5)],
    }
    fields.update(changes)
    return Alert(**fields)


# --- the contract ---------------------------------------------------------------------


def test_the_payload_round_trips_through_dict_and_json() -> None:
    alert = make()
    payload = alert.to_dict()
    assert orjson.loads(orjson.dumps(payload)) == payload  # JSON-ready as an event payload
    assert payload["raised_at"] == (alert.raised_at - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)
    assert payload["history"][0] == [payload["raised_at"] - 5 * 3600 * 10**6, 11.0]
    assert Alert.from_dict(payload) == alert
    assert Alert.from_json(alert.to_json()) == alert
    assert Alert.from_json(alert.to_json().encode()) == alert
    assert Alert.from_json(payload) == alert
    run_level = make(task=None, metric="error_rate", value=0.35, baseline=0.05, spread=0.02, history=[])
    assert Alert.from_json(run_level.to_json()) == run_level
    assert run_level.subject == "etl" and make().subject == "etl.clean"


def test_times_are_utc_and_history_is_an_immutable_sequence_of_pairs() -> None:
    naive = make(raised_at=datetime(2026, 11, 20, 15, 0), history=[[datetime(2026, 11, 20, 14, 0), 3]])
    assert naive.raised_at == datetime(2026, 11, 20, 15, 0, tzinfo=timezone.utc)
    assert naive.history == ((datetime(2026, 11, 20, 14, 0, tzinfo=timezone.utc), 3.0),)
    paris = timezone(timedelta(hours=1))
    assert make(raised_at=datetime(2026, 11, 20, 16, 0, tzinfo=paris)).raised_at == naive.raised_at
    assert isinstance(naive.value, float) and isinstance(naive.history[0][1], float)
    with pytest.raises(AttributeError):
        naive.severity = "info"  # type: ignore[misc]
    assert hash(make()) == hash(make())


@pytest.mark.parametrize(
    ("changes", "error", "says"),
    [
        ({"severity": "fatal"}, ValueError, "severity must be one of info, warning, critical; got 'fatal'"),
        ({"severity": None}, ValueError, "severity must be one of"),
        ({"value": float("nan")}, ValueError, "Alert.value must be finite"),
        ({"score": math.inf}, ValueError, "floor the spread"),
        ({"value": "42"}, TypeError, "Alert.value must be a number, got str"),
        ({"baseline": True}, TypeError, "Alert.baseline must be a number, got bool"),
        ({"spread": -0.5}, ValueError, "Alert.spread must be >= 0"),
        ({"workflow": ""}, ValueError, "Alert.workflow must not be empty"),
        ({"run_id": 42}, TypeError, "Alert.run_id must be a str, got int"),
        ({"task": 3}, TypeError, "Alert.task must be a str"),
        ({"rule": ""}, ValueError, "Alert.rule must not be empty"),
        ({"message": None}, TypeError, "Alert.message must be a str"),
        ({"raised_at": "2026-11-20"}, TypeError, "Alert.raised_at must be a datetime"),
        ({"history": "abc"}, TypeError, "Alert.history must be a list of (datetime, number) pairs"),
        ({"history": [(T0, 1.0, 2)]}, TypeError, r"Alert.history\[0\] must be a \(datetime, number\) pair"),
        ({"history": [(1, 1.0)]}, TypeError, r"Alert.history\[0\]\[0\] must be a datetime"),
        ({"history": [(T0, None)]}, TypeError, r"Alert.history\[0\]\[1\] must be a number"),
        ({"history": [(T0, 1.0), (T0 - timedelta(1), 2.0)]}, ValueError, "history must be oldest first: point 1"),
    ],
)
def test_bad_fields_are_refused_with_a_clear_error(changes, error, says) -> None:
    with pytest.raises(error, match=says if "\\" in says else re.escape(says)):
        make(**changes)


def test_a_payload_that_is_not_an_alert_names_what_is_wrong() -> None:
    payload = make().to_dict()
    del payload["score"]
    payload["colour"] = "red"
    with pytest.raises(ValueError, match="not an alert payload: missing score; unknown colour;"):
        Alert.from_dict(payload)
    with pytest.raises(ValueError, match="does not parse"):
        Alert.from_json("{nope")
    with pytest.raises(TypeError, match="raised_at must be UTC microseconds"):
        Alert.from_dict({**make().to_dict(), "raised_at": "2026-11-20T10:00:00Z"})
    with pytest.raises(TypeError, match="must be a mapping"):
        Alert.from_dict([1, 2])  # type: ignore[arg-type]


# --- what it says ----------------------------------------------------------------------


def test_the_figure_is_formatted_by_metric() -> None:
    assert make().figure() == "42.1 s — baseline 12.0 s ± 1.3, z = 23.2"
    rate = make(metric="error_rate", value=0.35, baseline=0.05, spread=0.02, score=15.0)
    assert rate.figure() == "35.0 % — baseline 5.0 % ± 2.0, z = 15.0"
    assert make(metric="rows", value=12000, baseline=100, spread=0, score=9.99).figure() == (
        "12000.0 — baseline 100.0 ± 0.0, z = 10.0"
    )
    assert make(value=0.0042, baseline=0.002, spread=0.0001).figure() == "0.0042 s — baseline 0.002 s ± 0.0001, z = 23.2"


def test_the_widget_carries_the_alert_in_its_traits() -> None:
    alert = make()
    widget = AlertWidget(alert)
    assert widget.alert == alert
    assert widget.payload == alert.to_dict()
    assert widget.figure == "42.1 s — baseline 12.0 s ± 1.3, z = 23.2"
    assert widget.subject == "etl.clean"
    assert widget.colors == {k: list(v) for k, v in SEVERITY_COLORS.items()} and set(widget.colors) == set(SEVERITIES)
    assert AlertWidget(alert.to_dict()).alert == alert  # the stored payload works as well
    state = widget.get_state()
    assert state["payload"]["severity"] == "critical" and state["figure"] == widget.figure


def test_the_static_banner_has_the_numbers_the_plot_and_an_escaped_message() -> None:
    alert = make(message="<script>alert('x')</script> & more", severity="warning")
    page = alert_html(alert)
    assert page.startswith("<div class='kf-alert' data-severity='warning'")
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    figure = re.search(r"<div class='kf-alert-figure'><b>(.*?)</b></div>", page)
    assert figure and figure.group(1) == "42.1 s — baseline 12.0 s ± 1.3, z = 23.2"
    assert SEVERITY_COLORS["warning"][0] in page  # the severity's colour
    assert "<img class='kf-alert-history'" in page  # untrusted JupyterLab strips inline <svg>
    pictures = "".join(embedded_svgs(page))
    svg = re.search(r"<svg class='kf-alert-history'.*?</svg>", pictures)
    assert svg is not None
    points = re.search(r"<polyline class='kf-alert-line' points='([^']*)'", svg.group(0)).group(1).split()
    assert len(points) == len(alert.history) == 5
    xs = [float(p.split(",")[0]) for p in points]
    assert xs == sorted(xs)  # oldest first, left to right
    assert "class='kf-alert-band'" in svg.group(0) and "class='kf-alert-current'" in svg.group(0)
    # The current value is the highest point: drawn at the top (smallest y) and right of the history.
    cx, cy = (float(v) for v in re.search(r"kf-alert-current' cx='([\d.]+)' cy='([\d.]+)'", pictures).groups())
    assert cx >= xs[-1] and cy < min(float(p.split(",")[1]) for p in points)
    assert "r-42" in page and "zscore" in page and "2026-11-20 15:00:00 UTC" in page


def test_the_widget_bundle_has_the_static_html_and_empty_histories_draw() -> None:
    widget = AlertWidget(make(history=[], value=5.0, baseline=5.0, spread=0.0))
    bundle = widget._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert "application/vnd.jupyter.widget-view+json" in data
    assert data["text/html"] == widget.static_html()
    svg = sparkline_svg(widget.alert)
    assert "points=''" in svg and "kf-alert-current" in svg


def test_the_javascript_is_small_and_dependency_free() -> None:
    js = (Path(alert_module.__file__).with_name("alert.js")).read_text()
    assert len(js.encode()) < 8_000  # saved widget state carries it into every executed notebook
    assert not re.search(r"^\s*import\b", js, re.MULTILINE)  # no dependencies, no bundler
    for selector in ("kf-alert", "kf-alert-figure", "kf-alert-history", "dataset.severity"):
        assert selector in js
