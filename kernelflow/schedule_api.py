"""Schedules from the notebook: ``kf.schedule(...)``, ``kf.schedules()``, ``kf.unschedule(name)``.

A registration is a file in the store (``schedules/<name>.json``); the running
scheduler (``kernelflow scheduler start``) reads them at every tick, so a
schedule registered here takes effect without restarting it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from datetime import timezone as _tz
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .table_rows import TableRows
from .exceptions import DefinitionError, KernelflowError, StoreError
from .schedules import Schedule, check_name, parse_schedule

if TYPE_CHECKING:  # pragma: no cover
    pass

__all__ = ["Schedules", "schedule", "schedules", "unschedule"]

NOTEBOOK_ENVS = ("KERNELFLOW_NOTEBOOK", "JPY_SESSION_NAME")


def _files(store: str | os.PathLike[str] | None) -> Any:
    from .store_access import open_store

    opened = open_store(store)
    files = getattr(opened, "schedules", None)
    if files is None:
        raise StoreError(
            f"the store at {opened.location} does not keep schedules (its plugin has no `schedules`); "
            "use a kernelflow folder store"
        )
    return opened, files


def _notebook_of(workflow: Any, notebook: str | os.PathLike[str] | None) -> str:
    if notebook is not None:
        return os.fspath(notebook)
    origin = getattr(workflow, "origin", "")
    if isinstance(origin, str) and origin.endswith((".yaml", ".yml")) and os.path.isfile(origin):
        return origin  # kf.load("flow.yaml"): the file is the target
    for env in NOTEBOOK_ENVS:
        value = os.environ.get(env)
        if value:
            return value
    raise DefinitionError(
        f"cannot tell which notebook defines workflow {workflow.name!r} (Jupyter did not say: "
        "$JPY_SESSION_NAME is not set)",
        hint=f"pass it: kf.schedule({workflow.name}, notebook='path/to/this.ipynb', ...)",
    )


def schedule(
    target: Any,
    *,
    name: str | None = None,
    cron: str | None = None,
    every: str | float | None = None,
    timezone: str = "UTC",
    inputs: Mapping[str, Any] | None = None,
    overlap: str = "skip",
    missed: str = "skip",
    max_catch_up: int = 3,
    webhook: Mapping[str, Any] | None = None,
    enabled: bool = True,
    notebook: str | os.PathLike[str] | None = None,
    store: str | os.PathLike[str] | None = None,
) -> Schedule:
    """Register a schedule in the store; the running scheduler picks it up at its next tick.

    ``target`` is a workflow defined in this notebook (the notebook is then
    what runs: found from ``$JPY_SESSION_NAME``/``$KERNELFLOW_NOTEBOOK``, or
    pass ``notebook=``; a workflow loaded from a YAML file runs that file), or
    the path of a YAML workflow file or a notebook. ``name`` defaults to the
    workflow's name (the file name without extension for a path). Give
    ``cron`` (5 fields, evaluated in ``timezone``) or ``every`` (``"15m"``);
    a workflow whose YAML declares ``schedule:`` may give neither and uses
    its first declared schedule. ``inputs`` are passed to each run. See
    docs/scheduler.md for ``overlap``, ``missed`` and ``max_catch_up``.
    Registering a name again replaces its settings. Returns the validated
    :class:`~kernelflow.schedules.Schedule`; bad values raise one
    :class:`~kernelflow.exceptions.DefinitionError` and register nothing.
    """
    from .model import Workflow

    declared: dict[str, Any] = {}
    if isinstance(target, Workflow):
        default_name = target.name
        path = _notebook_of(target, notebook)
        if cron is None and every is None and webhook is None and target.schedules:
            declared = target.schedules[0].to_spec()
            default_name = declared.get("name", default_name)
    elif isinstance(target, (str, os.PathLike)):
        path = os.fspath(target)
        default_name = Path(path).stem
    else:
        raise DefinitionError(
            f"kf.schedule() takes a workflow or the path of a .yaml/.ipynb file, got {type(target).__name__}",
            hint="kf.schedule(etl, cron='0 6 * * *') or kf.schedule('flows/nightly.yaml', every='15m')",
        )
    spec: dict[str, Any] = {k: v for k, v in declared.items() if k not in ("name", "target")}
    given = {"cron": cron, "every": every, "webhook": webhook}
    spec.update({k: v for k, v in given.items() if v is not None})
    for key, value, default in (
        ("timezone", timezone, "UTC"),
        ("overlap", overlap, "skip"),
        ("missed", missed, "skip"),
        ("max_catch_up", max_catch_up, 3),
        ("enabled", enabled, True),
    ):
        if value != default or key not in spec:
            spec[key] = value
    if inputs is not None:
        spec["inputs"] = dict(inputs)
    label = check_name(name if name is not None else default_name)
    parsed = parse_schedule(spec, name=label, target=path)
    _, files = _files(store)
    record = files.register(label, parsed.to_spec())
    from .scheduler import _parse_iso

    return parse_schedule(record["spec"], name=label, check_target=False, registered_at=_parse_iso(record["registered_at"]))


def unschedule(name: str, *, store: str | os.PathLike[str] | None = None) -> None:
    """Remove the registered schedule ``name``; the running scheduler stops firing it at its next tick.

    Runs it started go on. Schedules declared in a YAML file's ``schedule:``
    are not registrations: remove them from the file.
    """
    check_name(name)  # the name is a file name in the store: nothing else can be registered
    _, files = _files(store)
    if not files.unregister(name):
        known = sorted(files.registrations())
        raise KernelflowError(
            f"no registered schedule {name!r} in the store at {files.root}; registered: {', '.join(known) or 'none'}. "
            "(A schedule declared in a YAML file's schedule: is removed by editing that file.)"
        )


COLUMNS = (
    "name", "when", "target", "origin", "enabled", "cron", "every_s", "timezone", "overlap", "missed",
    "max_catch_up", "inputs", "next_fire", "last_outcome", "last_fired_at", "last_run_id", "registered_at",
)  # fmt: skip


def schedules(*, store: str | os.PathLike[str] | None = None) -> Schedules:
    """Every schedule the store knows, by name: the registered ones, and those the
    running scheduler reads from files, with each one's next fire time and last outcome.

    Returns a :class:`Schedules`: a list of dicts (the columns of :data:`COLUMNS`)
    with the table as ``.df`` (a polars DataFrame).
    """
    import orjson
    import polars as pl

    from .scheduler import LEASE, _parse_iso

    opened, files = _files(store)
    now = datetime.now(_tz.utc)
    rows: dict[str, dict[str, Any]] = {}
    for label, record in files.registrations().items():
        if "error" in record:
            continue
        try:
            sched = parse_schedule(record["spec"], name=label, check_target=False,
                                   registered_at=_parse_iso(record.get("registered_at")))  # fmt: skip
        except DefinitionError:
            continue
        rows[label] = _row(sched, now)
    status = files.read_status() if opened.lease_holder(LEASE) else None
    for entry in (status or {}).get("schedules", []):
        if entry.get("origin") != "registered" and entry.get("name") not in rows:
            rows[entry["name"]] = {
                **dict.fromkeys(COLUMNS),
                **{k: entry.get(k) for k in ("name", "when", "target", "origin", "enabled", "overlap", "missed")},
                "next_fire": _parse_iso(entry.get("next_fire")),
            }
    last = _last_outcomes(opened)
    for label, row in rows.items():
        row.update(last.get(label, {}))
        row["inputs"] = orjson.dumps(row["inputs"]).decode() if row.get("inputs") is not None else None
    when = pl.Datetime("us", "UTC")
    schema = {c: pl.String for c in COLUMNS} | {
        "enabled": pl.Boolean, "every_s": pl.Float64, "max_catch_up": pl.Int64,
        "next_fire": when, "last_fired_at": when, "registered_at": when,
    }  # fmt: skip
    data = [rows[k] for k in sorted(rows)]
    df = pl.DataFrame([{c: r.get(c) for c in COLUMNS} for r in data], schema=schema, orient="row") if data else pl.DataFrame(schema=schema)
    return Schedules(df)


def _row(sched: Schedule, now: datetime) -> dict[str, Any]:
    upcoming = sched.next_fire(now) if sched.enabled else None
    return {
        "name": sched.name,
        "when": sched.when,
        "target": sched.target,
        "origin": sched.origin,
        "enabled": sched.enabled,
        "cron": sched.cron,
        "every_s": sched.every,
        "timezone": sched.timezone,
        "overlap": sched.overlap,
        "missed": sched.missed,
        "max_catch_up": sched.max_catch_up,
        "inputs": dict(sched.inputs),
        "next_fire": upcoming,
        "registered_at": sched.registered_at,
    }


def _last_outcomes(store: Any) -> dict[str, dict[str, Any]]:
    try:
        df = store.sql(
            "SELECT schedule, arg_max(outcome, updated_at) AS last_outcome, max(fired_at) AS last_fired_at, "
            "arg_max(run_id, updated_at) AS last_run_id FROM triggers "
            "WHERE outcome <> 'missed' GROUP BY schedule"
        )
    except KernelflowError:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for row in df.iter_rows(named=True):
        fired = row["last_fired_at"]
        out[row["schedule"]] = {
            "last_outcome": row["last_outcome"],
            "last_fired_at": fired.replace(tzinfo=_tz.utc) if fired is not None else None,
            "last_run_id": row["last_run_id"],
        }
    return out


class Schedules(TableRows):
    """Schedules as :func:`schedules` returns them: a sequence of dicts (columns:
    :data:`COLUMNS`), the table as :attr:`df`; ``result["name"]`` is that schedule."""

    def _by_text(self, key: str) -> dict[str, Any]:
        match = [r for r in self._rows if r["name"] == key]
        if match:
            return match[0]
        raise KeyError(f"no schedule {key!r}; schedules: {', '.join(r['name'] for r in self._rows) or 'none'}")

    @property
    def names(self) -> list[str]:
        return [r["name"] for r in self._rows]

    def __repr__(self) -> str:
        if not self._rows:
            return "<Schedules: none (register one with kf.schedule(...))>"
        lines = [f"<Schedules: {len(self._rows)}>"]
        for r in self._rows:
            upcoming = f"{r['next_fire']:%Y-%m-%d %H:%M:%S} UTC" if r.get("next_fire") else "-"
            state = "" if r.get("enabled", True) is not False else " [disabled]"
            last = f", last: {r['last_outcome']}" if r.get("last_outcome") else ""
            lines.append(f"  {r['name']}: {r['when']}{state} -> {r['target']} (next: {upcoming}{last})")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        if not self._rows:
            return "<p class='kf-schedules'>No schedules (register one with <code>kf.schedule(...)</code>).</p>"
        return self.df.select("name", "when", "target", "enabled", "overlap", "missed", "next_fire", "last_outcome")._repr_html_()
