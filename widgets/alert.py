"""The alert widget: an anomaly banner with the figure against its baseline.

:class:`Alert` is the data contract between the anomaly detector (which fills
it and stores :meth:`Alert.to_dict` as an ``AlertRaised`` event payload) and
everything that shows or forwards an alert: this widget, the ``alerts`` view,
channel plugins. :class:`AlertWidget` draws it: severity colour, the message,
``42.1 s — baseline 12.0 s ± 1.3, z = 23.2``, and a small SVG history of the
metric with the baseline band (mean ± spread) and the current value marked.
Its static fallback (``text/html`` with the SVG inline) shows the same where
no JavaScript runs.
"""

from __future__ import annotations

import html
import math
import pathlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import anywidget
import orjson
import traitlets

from .fallback import StaticFallback, svg_img

SEVERITIES = ("info", "warning", "critical")
# fill, border: the status palette's blue, amber and red (widgets/dag_static.py).
SEVERITY_COLORS: dict[str, tuple[str, str]] = {
    "info": ("#e0f2fe", "#0284c7"),
    "warning": ("#fef3c7", "#d97706"),
    "critical": ("#fee2e2", "#dc2626"),
}
SPARK_W, SPARK_H, SPARK_PAD = 160, 36, 3  # the history plot, in px (the JS draws the same)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_FIELDS = (
    "workflow", "task", "run_id", "metric", "value", "baseline", "spread", "score",
    "rule", "severity", "message", "raised_at", "history",
)  # fmt: skip


def _utc(when: Any, what: str) -> datetime:
    if not isinstance(when, datetime):
        raise TypeError(f"Alert.{what} must be a datetime (UTC), got {type(when).__name__}: {when!r}")
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Alert.{what} must be a number, got {type(value).__name__}: {value!r}")
    if not math.isfinite(value):
        raise ValueError(
            f"Alert.{what} must be finite, got {value!r}; a detector whose spread is 0 "
            "should floor the spread (or cap the score) before raising"
        )
    return float(value)


def _text(value: Any, what: str, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise TypeError(f"Alert.{what} must be a str, got {type(value).__name__}: {value!r}")
    if not empty and not value:
        raise ValueError(f"Alert.{what} must not be empty")
    return value


def _us(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(microseconds=1)


def _from_us(us: Any, what: str) -> datetime:
    if isinstance(us, bool) or not isinstance(us, int):
        raise TypeError(f"alert payload: {what} must be UTC microseconds (int), got {us!r}")
    return _EPOCH + timedelta(microseconds=us)


@dataclass(frozen=True)
class Alert:
    """One anomaly: ``metric`` of ``workflow`` (``task``, or the run when None)
    in run ``run_id`` was ``value`` against ``baseline`` ± ``spread``.

    ``score`` is the z-score (or the rule's own score), ``rule`` the name of
    the rule that fired, ``severity`` one of ``info``, ``warning``,
    ``critical``. Times are UTC (a naive datetime is taken as UTC and made
    aware). ``history`` holds earlier ``(time, value)`` points of the metric,
    oldest first, for the plot; it is kept as a tuple of pairs.
    """

    workflow: str
    task: str | None
    run_id: str
    metric: str
    """What was measured: ``duration_s``, ``error_rate``, or a rule's own metric."""
    value: float
    baseline: float
    """The baseline's centre (the rolling mean)."""
    spread: float
    """The baseline's spread (standard deviation or MAD), >= 0."""
    score: float
    rule: str
    severity: str
    message: str
    raised_at: datetime
    history: tuple[tuple[datetime, float], ...] = field(default=())

    def __post_init__(self) -> None:
        _text(self.workflow, "workflow")
        if self.task is not None:
            _text(self.task, "task")
        _text(self.run_id, "run_id")
        _text(self.metric, "metric")
        for name in ("value", "baseline", "spread", "score"):
            object.__setattr__(self, name, _number(getattr(self, name), name))
        if self.spread < 0:
            raise ValueError(f"Alert.spread must be >= 0 (a standard deviation or MAD), got {self.spread!r}")
        _text(self.rule, "rule")
        if self.severity not in SEVERITIES:
            raise ValueError(f"Alert.severity must be one of {', '.join(SEVERITIES)}; got {self.severity!r}")
        _text(self.message, "message", empty=True)
        object.__setattr__(self, "raised_at", _utc(self.raised_at, "raised_at"))
        object.__setattr__(self, "history", self._checked_history(self.history))

    @staticmethod
    def _checked_history(history: Any) -> tuple[tuple[datetime, float], ...]:
        if isinstance(history, (str, bytes, Mapping)) or not isinstance(history, Iterable):
            raise TypeError(f"Alert.history must be a list of (datetime, number) pairs, got {type(history).__name__}")
        points = []
        for i, point in enumerate(history):
            if not isinstance(point, (tuple, list)) or len(point) != 2:
                raise TypeError(f"Alert.history[{i}] must be a (datetime, number) pair, got {point!r}")
            when = _utc(point[0], f"history[{i}][0]")
            if points and when < points[-1][0]:
                raise ValueError(
                    f"Alert.history must be oldest first: point {i} ({when.isoformat()}) is before "
                    f"point {i - 1} ({points[-1][0].isoformat()})"
                )
            points.append((when, _number(point[1], f"history[{i}][1]")))
        return tuple(points)

    # --- the payload ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``AlertRaised`` payload): times as UTC microseconds,
        as every event payload keeps them; ``history`` as ``[[us, value], ...]``."""
        return {
            "workflow": self.workflow,
            "task": self.task,
            "run_id": self.run_id,
            "metric": self.metric,
            "value": self.value,
            "baseline": self.baseline,
            "spread": self.spread,
            "score": self.score,
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
            "raised_at": _us(self.raised_at),
            "history": [[_us(t), v] for t, v in self.history],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alert:
        """The alert :meth:`to_dict` made; a missing or unknown key is an error naming it."""
        if not isinstance(data, Mapping):
            raise TypeError(f"an alert payload must be a mapping, got {type(data).__name__}")
        missing = [k for k in _FIELDS if k not in data]
        unknown = [k for k in data if k not in _FIELDS]
        if missing or unknown:
            raise ValueError(
                "not an alert payload:"
                + (f" missing {', '.join(missing)};" if missing else "")
                + (f" unknown {', '.join(map(str, unknown))};" if unknown else "")
                + " expected the keys of Alert.to_dict()"
            )
        history = data["history"]
        if not isinstance(history, list):
            raise TypeError(f"alert payload: history must be a list of [us, value], got {history!r}")
        points = []
        for i, point in enumerate(history):
            if not isinstance(point, (list, tuple)) or len(point) != 2:
                raise TypeError(f"alert payload: history[{i}] must be [us, value], got {point!r}")
            points.append((_from_us(point[0], f"history[{i}][0]"), point[1]))
        fields = {k: data[k] for k in _FIELDS}
        fields["raised_at"] = _from_us(data["raised_at"], "raised_at")
        fields["history"] = points
        return cls(**fields)

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON text."""
        return orjson.dumps(self.to_dict()).decode()

    @classmethod
    def from_json(cls, text: str | bytes | Mapping[str, Any]) -> Alert:
        """The alert :meth:`to_json` wrote (text, or the payload dict itself)."""
        if isinstance(text, Mapping):
            return cls.from_dict(text)
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"an alert's JSON does not parse: {exc}") from None
        return cls.from_dict(data)

    # --- what the banner says ------------------------------------------------------------

    @property
    def subject(self) -> str:
        """``workflow`` or ``workflow.task``."""
        return self.workflow if self.task is None else f"{self.workflow}.{self.task}"

    def figure(self) -> str:
        """``42.1 s — baseline 12.0 s ± 1.3, z = 23.2`` (units by metric)."""
        unit = _unit(self.metric)
        return (
            f"{_fmt(self.value, unit)} — baseline {_fmt(self.baseline, unit)} ± "
            f"{_fmt(self.spread, unit, bare=True)}, z = {self.score:.1f}"
        )


def _unit(metric: str) -> str:
    if metric.endswith("_s") or metric in ("duration", "seconds"):
        return "s"
    if metric.endswith("_ms"):
        return "ms"
    if metric.endswith(("_rate", "ratio")):
        return "%"
    return ""


def _fmt(x: float, unit: str, bare: bool = False) -> str:
    if unit == "%":
        text = f"{x * 100:.1f}"
        return text if bare else f"{text} %"
    text = f"{x:.1f}" if abs(x) >= 1 or x == 0 else f"{x:.3g}"
    return text if bare or not unit else f"{text} {unit}"


def sparkline_svg(alert: Alert) -> str:
    """The history plot as an SVG string (the JS draws the same picture)."""
    pts = [(_us(t), v) for t, v in alert.history]
    now = _us(alert.raised_at)
    times = [t for t, _ in pts] + [now]
    lo_t, hi_t = min(times), max(times)
    values = [v for _, v in pts] + [alert.value, alert.baseline - alert.spread, alert.baseline + alert.spread]
    lo, hi = min(values), max(values)
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    pad = (hi - lo) * 0.08
    lo, hi = lo - pad, hi + pad

    def x(t: int) -> float:
        return SPARK_PAD + (SPARK_W - 2 * SPARK_PAD) * ((t - lo_t) / (hi_t - lo_t) if hi_t > lo_t else 1.0)

    def y(v: float) -> float:
        return SPARK_PAD + (SPARK_H - 2 * SPARK_PAD) * (hi - v) / (hi - lo)

    fill, border = SEVERITY_COLORS[alert.severity]
    band_top, band_bottom = y(alert.baseline + alert.spread), y(alert.baseline - alert.spread)
    points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
    title = html.escape(f"{alert.metric}: {len(pts)} earlier points; baseline {alert.baseline:g} ± {alert.spread:g}")
    return (
        f"<svg class='kf-alert-history' width='{SPARK_W}' height='{SPARK_H}' viewBox='0 0 {SPARK_W} {SPARK_H}' "
        f"xmlns='http://www.w3.org/2000/svg' role='img'><title>{title}</title>"
        f"<rect class='kf-alert-band' x='0' y='{band_top:.1f}' width='{SPARK_W}' "
        f"height='{max(band_bottom - band_top, 1):.1f}' fill='#a1a1aa' fill-opacity='0.25'/>"
        f"<line class='kf-alert-mean' x1='0' x2='{SPARK_W}' y1='{y(alert.baseline):.1f}' y2='{y(alert.baseline):.1f}' "
        "stroke='#71717a' stroke-dasharray='3 2' stroke-width='1'/>"
        f"<polyline class='kf-alert-line' points='{points}' fill='none' stroke='#52525b' stroke-width='1.2'/>"
        f"<circle class='kf-alert-current' cx='{x(now):.1f}' cy='{y(alert.value):.1f}' r='3' "
        f"fill='{border}' stroke='{fill}'/></svg>"
    )


def alert_html(alert: Alert) -> str:
    """The banner as HTML that needs no JavaScript (inline styles, inline SVG)."""
    fill, border = SEVERITY_COLORS[alert.severity]
    where = f"run <code>{html.escape(alert.run_id)}</code> · rule <code>{html.escape(alert.rule)}</code>"
    return (
        f"<div class='kf-alert' data-severity='{alert.severity}' style='display:flex;gap:12px;align-items:center;"
        f"background:{fill};border-left:4px solid {border};padding:6px 10px;font-family:sans-serif;font-size:13px'>"
        "<div style='flex:1'>"
        f"<div class='kf-alert-head'><b style='color:{border};text-transform:uppercase'>{alert.severity}</b> "
        f"<b>{html.escape(alert.subject)}</b> · {html.escape(alert.metric)}</div>"
        f"<div class='kf-alert-message'>{html.escape(alert.message)}</div>"
        f"<div class='kf-alert-figure'><b>{html.escape(alert.figure())}</b></div>"
        f"<div class='kf-alert-meta' style='color:#52525b;font-size:11px'>{where} · "
        f"{alert.raised_at.strftime('%Y-%m-%d %H:%M:%S')} UTC</div>"
        f"</div>{svg_img(sparkline_svg(alert), f'history of {alert.metric}', 'kf-alert-history')}</div>"
    )


class AlertWidget(StaticFallback, anywidget.AnyWidget):
    """``AlertWidget(alert)``: the banner for one :class:`Alert` (or its payload dict)."""

    _esm = pathlib.Path(__file__).with_name("alert.js")
    _css = pathlib.Path(__file__).with_name("alert.css")

    payload = traitlets.Dict().tag(sync=True)
    """:meth:`Alert.to_dict` of the alert shown."""
    figure = traitlets.Unicode().tag(sync=True)
    """The figure against its baseline, formatted in Python so every view says the same."""
    subject = traitlets.Unicode().tag(sync=True)
    colors = traitlets.Dict().tag(sync=True)
    """Severity -> [fill, border]."""

    def __init__(self, alert: Alert | Mapping[str, Any], **kwargs: Any) -> None:
        if not isinstance(alert, Alert):
            alert = Alert.from_dict(alert)
        self._alert = alert
        super().__init__(
            payload=alert.to_dict(),
            figure=alert.figure(),
            subject=alert.subject,
            colors={k: list(v) for k, v in SEVERITY_COLORS.items()},
            **kwargs,
        )

    @property
    def alert(self) -> Alert:
        """The :class:`Alert` shown."""
        return self._alert

    def static_html(self) -> str:
        return alert_html(self._alert)
