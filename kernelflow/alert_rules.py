"""Alert rules: what the anomaly detector checks, with which thresholds, and whom it tells.

A workflow carries :class:`AlertRules`: one :class:`Rule` per check kind for
the whole workflow, optional overrides per task, and the channels notified.
They come from ``alerts:`` in YAML, ``kf.alerts(wf, ...)`` or
``@kf.task(alerts=...)``; every value is checked here, at definition, so a
bad threshold is an error where it is written, not a silent detector.

The defaults are chosen to stay quiet on normal noise (tested on synthetic
histories with jitter) and to catch a 3x slowdown and a jump from 0 to 30 %
failures (tested): see docs/alerts.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .exceptions import DefinitionError

KINDS = ("duration", "error_rate", "trend", "stuck")
"""The checks: a duration far from its baseline (z-score); failures of recent runs
above the baseline rate; a slowdown trend over recent runs; a task running far
longer than its baseline allows."""
SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True)
class Rule:
    """One check's settings. Which fields a kind reads:

    - ``duration``: ``z`` (threshold on a z-score of log-durations; see
      :func:`kernelflow.anomaly_checks.check_duration` for the small-sample
      correction and the spread floor), ``factor``
      (the value must also be at least ``factor`` × the mean: a tiny spread
      alone never alerts), ``window`` (last N successful attempts of the same
      task and workflow version) or ``since_s`` (a time window instead),
      ``min_samples``.
    - ``error_rate``: ``rate`` (the recent failure rate must exceed the
      baseline rate by this much, and pass a binomial test: see
      :func:`kernelflow.anomaly_checks.check_error_rate`), ``recent`` (the
      sliding window of latest runs), ``window`` (the runs before them: the
      baseline), ``min_samples``.
    - ``trend``: ``factor`` (the fitted duration at the newest run over the
      fitted one at the oldest of the ``recent`` runs), ``recent``, ``min_samples``.
    - ``stuck``: ``factor`` (running longer than ``factor`` × the baseline's
      95th percentile), ``window``, ``min_samples``.
    """

    kind: str
    enabled: bool = True
    z: float = 4.0
    factor: float = 2.0
    rate: float = 0.2
    window: int = 30
    recent: int = 10
    since_s: float | None = None
    min_samples: int = 10
    severity: str = "warning"


DEFAULTS: dict[str, Rule] = {
    "duration": Rule("duration", z=4.0, factor=2.0, window=30, min_samples=10, severity="warning"),
    "error_rate": Rule("error_rate", rate=0.2, recent=10, window=30, min_samples=10, severity="critical"),
    "trend": Rule("trend", factor=1.5, recent=10, min_samples=8, severity="info"),
    "stuck": Rule("stuck", factor=3.0, window=30, min_samples=10, severity="warning"),
}
"""The rules every workflow has unless it says otherwise."""

_NUMBERS = {"z": float, "factor": float, "rate": float, "window": int, "recent": int, "since_s": float, "min_samples": int}


@dataclass(frozen=True)
class AlertRules:
    """A workflow's rules: ``rules`` by kind, ``tasks`` overrides by task id, ``channels`` by name."""

    rules: Mapping[str, Rule] = field(default_factory=lambda: dict(DEFAULTS))
    tasks: Mapping[str, Mapping[str, Rule]] = field(default_factory=dict)
    channels: tuple[str, ...] = ()

    def rule(self, kind: str, task: str | None = None) -> Rule:
        """The rule of ``kind`` that applies to ``task`` (its override, else the workflow's)."""
        if task is not None and kind in self.tasks.get(task, {}):
            return self.tasks[task][kind]
        return self.rules[kind]

    def to_json(self) -> dict[str, Any]:
        return {
            "rules": {k: dataclasses.asdict(r) for k, r in self.rules.items()},
            "tasks": {t: {k: dataclasses.asdict(r) for k, r in rs.items()} for t, rs in self.tasks.items()},
            "channels": list(self.channels),
        }


def parse_rules(
    value: Any,
    *,
    where: str,
    task_ids: tuple[str, ...] | None = None,
    known_channels: tuple[str, ...] | None = None,
) -> AlertRules:
    """Check and build :class:`AlertRules` from the ``alerts:`` mapping (YAML or Python).

    ``{kind: {setting: value} | false, ..., "channels": [names], "tasks": {task: {kind: {...}}}}``.
    ``where`` names the place (``"workflow 'etl'"``, a cell line) in errors.
    """
    if value is None:
        return AlertRules()
    if not isinstance(value, Mapping):
        raise DefinitionError(f"{where + ': ' if where else ''}alerts must be a mapping of checks ({', '.join(KINDS)}), channels and tasks, got {value!r:.60}")
    unknown = [k for k in value if k not in (*KINDS, "channels", "tasks")]
    if unknown:
        raise DefinitionError(
            f"{where + ': ' if where else ''}alerts has no setting {unknown[0]!r}; use {', '.join(KINDS)}, channels or tasks",
            hint="alerts: {duration: {z: 4}, channels: [ops]}",
        )
    at = f"{where}: alerts" if where else "alerts"
    rules = {kind: _rule(kind, value.get(kind), DEFAULTS[kind], f"{at}.{kind}") for kind in KINDS}
    channels = _channels(value.get("channels", ()), at, known_channels)
    tasks: dict[str, dict[str, Rule]] = {}
    for tid, overrides in (value.get("tasks") or {}).items():
        if task_ids is not None and tid not in task_ids:
            raise DefinitionError(f"{at}.tasks names {tid!r}, which is not a task; tasks: {', '.join(task_ids)}")
        tasks[tid] = parse_task_rules(overrides, rules, where=f"{at}.tasks.{tid}")
    return AlertRules(rules, tasks, channels)


def parse_task_rules(value: Any, base: Mapping[str, Rule], *, where: str) -> dict[str, Rule]:
    """Per-task overrides (``{kind: {setting: value} | false}``) on top of ``base``."""
    if not isinstance(value, Mapping):
        raise DefinitionError(f"{where}: must map checks ({', '.join(KINDS)}) to settings, got {value!r:.60}")
    out = {}
    for kind, spec in value.items():
        if kind not in KINDS:
            raise DefinitionError(f"{where}: no check {kind!r}; checks: {', '.join(KINDS)}")
        out[kind] = _rule(kind, spec, base[kind], f"{where}.{kind}")
    return out


def _rule(kind: str, spec: Any, base: Rule, where: str) -> Rule:
    if spec is None or spec is True:
        return dataclasses.replace(base, enabled=True)
    if spec is False:
        return dataclasses.replace(base, enabled=False)
    if not isinstance(spec, Mapping):
        raise DefinitionError(f"{where}: must be a mapping of settings or false, got {spec!r:.60}")
    changes: dict[str, Any] = {}
    for key, raw in spec.items():
        if key == "severity":
            if raw not in SEVERITIES:
                raise DefinitionError(f"{where}.severity must be one of {', '.join(SEVERITIES)}, got {raw!r}")
            changes[key] = raw
        elif key == "enabled":
            if not isinstance(raw, bool):
                raise DefinitionError(f"{where}.enabled must be true or false, got {raw!r}")
            changes[key] = raw
        elif key in _NUMBERS:
            changes[key] = _number(key, raw, where)
        else:
            raise DefinitionError(f"{where}: no setting {key!r}; settings: {', '.join(['severity', 'enabled', *_NUMBERS])}")
    return dataclasses.replace(base, **changes)


def _number(key: str, raw: Any, where: str) -> float | int | None:
    if key == "since_s" and raw is None:
        return None
    if isinstance(raw, str) and key == "since_s":
        from .durations import parse_duration

        try:
            raw = parse_duration(raw)
        except Exception as exc:  # noqa: BLE001 - say it in the rule's words
            raise DefinitionError(f"{where}.since_s: {exc}") from None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise DefinitionError(f"{where}.{key} must be a number, got {raw!r}")
    if _NUMBERS[key] is int:
        if int(raw) != raw or raw < 1:
            raise DefinitionError(f"{where}.{key} must be a whole number of at least 1, got {raw!r}")
        return int(raw)
    if raw <= 0:
        raise DefinitionError(f"{where}.{key} must be greater than 0, got {raw!r}")
    if key == "rate" and raw > 1:
        raise DefinitionError(f"{where}.rate is a fraction of runs (0 < rate <= 1), got {raw!r}")
    if key == "factor" and raw <= 1:
        raise DefinitionError(f"{where}.factor must be greater than 1 (a ratio to the baseline), got {raw!r}")
    return float(raw)


def _channels(value: Any, where: str, known: tuple[str, ...] | None) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n for n in names):
        raise DefinitionError(f"{where}.channels must be a list of channel names, got {value!r:.60}")
    if known is not None:
        for name in names:
            if name not in known:
                raise DefinitionError(
                    f"{where}.channels names {name!r}, which is not a configured channel; "
                    f"configured: {', '.join(known) or 'none'} (kf.alert_channel(name, type, ...) adds one)"
                )
    return tuple(names)
