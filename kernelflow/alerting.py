"""``kf.alerts`` and ``kf.alert_channel``: which rules a workflow's runs are checked against, and who hears.

Rules belong to a workflow *name* in the process that runs it: YAML's
``alerts:`` sets them when the file or cell is compiled, ``kf.alerts(name,
...)`` sets them from Python, ``@kf.task(alerts=...)`` overrides one task.
Workflows without rules get :data:`~kernelflow.alert_rules.DEFAULTS`. The
detector (``plugins/anomaly_detector.py``) asks :func:`rules_for` at each run.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import polars as pl

from .alert_rules import AlertRules, parse_rules, parse_task_rules

_lock = threading.Lock()
_rules: dict[str, AlertRules] = {}
_listeners: list[Any] = []


def add_listener(fn: Any) -> None:
    """Call ``fn(run, alert)`` for each alert raised in this process (the notebook shows a banner)."""
    with _lock:
        if fn not in _listeners:
            _listeners.append(fn)


def remove_listener(fn: Any) -> None:
    with _lock:
        if fn in _listeners:
            _listeners.remove(fn)


def announce(run: Any, alert: Any) -> None:
    """Tell the listeners about ``alert``; a listener that fails is skipped with a warning."""
    import warnings

    with _lock:
        listeners = list(_listeners)
    for fn in listeners:
        try:
            fn(run, alert)
        except Exception as exc:  # noqa: BLE001 - showing an alert must not fail a run
            warnings.warn(f"kernelflow alert listener {fn!r} failed: {exc}", RuntimeWarning, stacklevel=2)


def reset() -> None:
    """Forget every workflow's rules (back to the defaults)."""
    with _lock:
        _rules.clear()


def set_rules(workflow: str, rules: AlertRules) -> None:
    """Rules for runs of ``workflow`` started in this process from now on."""
    with _lock:
        _rules[workflow] = rules


def rules_for(workflow: Any) -> AlertRules:
    """The rules for a run of ``workflow`` (a :class:`~kernelflow.model.Workflow`):
    those set for its name, plus the ``@kf.task(alerts=...)`` overrides of its functions."""
    from .decorators import ALERTS_ATTR

    with _lock:
        base = _rules.get(workflow.name) or AlertRules()
    overrides = {}
    for tid, fn in getattr(workflow, "functions", {}).items():
        spec = getattr(fn, ALERTS_ATTR, None)
        if spec is not None and tid not in base.tasks:
            overrides[tid] = parse_task_rules(spec, base.rules, where=f"task {tid!r}")
    if not overrides:
        return base
    return AlertRules(base.rules, {**overrides, **base.tasks}, base.channels)


def _known_channels() -> tuple[str, ...] | None:
    try:
        from .alert_channels_api import channel_names
    except ImportError:  # pragma: no cover - the channel registry ships with kernelflow
        return None
    return tuple(channel_names())


class Alerts:
    """Recent alerts (the ``alerts`` view, newest first): a list of rows, ``.df`` the table.

    In a notebook it shows an alert banner per row; elsewhere a table.
    """

    def __init__(self, frame: pl.DataFrame) -> None:
        self.df = frame

    def __len__(self) -> int:
        return self.df.height

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.df.iter_rows(named=True))

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not isinstance(i, int):
            raise TypeError("kf.alerts() is a list of alerts: index it by position, or use .df for the table")
        return self.df.row(i, named=True)

    def __repr__(self) -> str:
        if not len(self):
            return "no alerts"
        return "\n".join(f"{r['raised_at']} {r['severity']:8} {r['workflow']}/{r['task_id'] or '*'}: {r['message']}" for r in self)

    def widgets(self) -> list[Any]:
        """An alert widget per row, from the ``AlertRaised`` events themselves (they carry the history)."""
        from .store_access import open_store
        from .widgets.alert import AlertWidget

        out = []
        store = open_store()
        for row in self:
            found = store.sql("SELECT payload FROM events WHERE run_id = ? AND seq = ?", [row["run_id"], row["seq"]])
            if found.height:
                payload = found.item(0, 0)
                data = json.loads(payload) if isinstance(payload, str) else dict(payload)
                out.append(AlertWidget(alert_of(data)))
        return out

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        import html

        table = "".join(
            f"<tr><td>{r['raised_at']}</td><td>{html.escape(str(r['severity']))}</td>"
            f"<td>{html.escape(str(r['workflow']))}/{html.escape(str(r['task_id'] or '*'))}</td>"
            f"<td>{html.escape(str(r['message']))}</td></tr>"
            for r in self
        )
        page = f"<table class='kf-alerts'>{table}</table>" if table else "<i>no alerts</i>"
        bundle: dict[str, Any] = {"text/plain": repr(self), "text/html": page}
        try:
            from IPython import get_ipython

            in_kernel = getattr(get_ipython(), "kernel", None) is not None
        except ImportError:  # pragma: no cover
            in_kernel = False
        if in_kernel and len(self):
            import ipywidgets

            box = ipywidgets.VBox(self.widgets())
            view = box._repr_mimebundle_(**kwargs)
            view = view[0] if isinstance(view, tuple) else view
            bundle.update(view)
            bundle["text/html"] = page
        return bundle


def alert_of(payload: Mapping[str, Any]) -> Any:
    """The :class:`~kernelflow.widgets.alert.Alert` of an ``AlertRaised`` payload (which adds ``key`` and ``channels``)."""
    from .widgets.alert import Alert

    return Alert.from_dict({k: v for k, v in payload.items() if k not in ("key", "channels")})


def alerts(workflow: Any = None, /, *, since: str | None = None, limit: int = 50, **rules: Any) -> Alerts | None:
    """List recent alerts, or set a workflow's alert rules.

    ``kf.alerts()`` — the latest alerts across workflows (``limit``, ``since``
    a time like ``"2026-11-20"``); ``kf.alerts("etl")`` — those of one workflow.
    ``kf.alerts("etl", duration={"z": 3}, error_rate=False, channels=["ops"],
    tasks={"load": {"stuck": {"factor": 5}}})`` — set the rules for runs of
    ``etl`` in this process (checked now; returns None).
    """
    name = getattr(workflow, "name", workflow)
    if workflow is not None and not isinstance(name, str):
        raise TypeError(f"kf.alerts() takes a workflow or its name, got {type(workflow).__name__}")
    if rules:
        if name is None:
            raise TypeError("kf.alerts(...) with rules needs the workflow first: kf.alerts('etl', duration={'z': 3})")
        task_ids = tuple(getattr(workflow, "task_ids", ())) or None
        set_rules(name, parse_rules(rules, where=f"kf.alerts({name!r})", task_ids=task_ids, known_channels=_known_channels()))
        return None
    from .store_access import open_store

    where, params = [], []
    if name is not None:
        where.append("workflow = ?")
        params.append(name)
    if since is not None:
        where.append("raised_at >= CAST(? AS TIMESTAMP)")
        params.append(since)
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    frame = open_store().sql(f"SELECT * FROM alerts{clause} ORDER BY raised_at DESC LIMIT {int(limit)}", params)
    return Alerts(frame)


def alert_channel(name: str, type: str, **settings: Any) -> None:  # noqa: A002 - the channel's type name
    """Configure a channel alerts can go to: ``kf.alert_channel("ops", "webhook", url="https://...")``.

    Types come from plugins (``kernelflow plugins`` lists them): ``webhook``,
    ``slack``, ``email`` are built in. Settings are checked now.
    """
    from .alert_channels_api import configure_channel

    configure_channel(name, type, **settings)


def payload_rules(value: Mapping[str, Any], *, where: str, task_ids: tuple[str, ...]) -> AlertRules:
    """YAML's ``alerts:`` checked against the workflow's tasks and the configured channels."""
    return parse_rules(value, where=where, task_ids=task_ids, known_channels=_known_channels())
