"""Schedule specs: when a workflow file or notebook runs by itself, and how.

A :class:`Schedule` names a target (a YAML workflow file or a notebook, kept
as an absolute path) and either a 5-field ``cron`` expression, evaluated by
croniter in an IANA ``timezone`` (default UTC), or an ``every`` interval
(``"1s"``, ``"15m"``). It also says what to pass to the run (``inputs``), what
to do when the previous run is still going (``overlap``: ``skip``, ``queue`` or
``allow``) and after the scheduler was down (``missed``: ``skip`` or
``catch_up``, at most ``max_catch_up`` runs). A schedule with neither cron nor
every is allowed when it has a ``webhook`` (it then runs only when called).

:func:`parse_schedule` validates a spec (from YAML, ``kf.schedule`` or a stored
registration) and raises one :class:`~kernelflow.exceptions.DefinitionError`
naming the schedule, the bad value and the fix. :func:`next_fire_times` and
:func:`fire_times_between` are pure functions of a schedule and aware
datetimes; the scheduler (``kernelflow/scheduler.py``) is their only caller
that reads a clock.

Interval schedules are aligned to the Unix epoch (UTC): ``every: 15m`` fires at
:00, :15, :30 and :45, ``every: 1d`` at midnight UTC, whenever the scheduler
was started, so restarts never shift them and missed times are well defined.

Daylight saving time: croniter evaluates cron in local time on aware
datetimes. When clocks go forward, a time that does not exist that day fires
at the first minute after the gap (``30 2 * * *`` in Europe/Berlin fires at
03:00 on the last Sunday of March). When clocks go back, a cron with fixed
hours fires once, at the first of the two identical wall-clock times; one
whose hour field is ``*`` fires in both hours (each is a real hour).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .durations import format_duration, parse_duration
from .exceptions import DefinitionError

__all__ = [
    "MISSED_POLICIES",
    "OVERLAP_POLICIES",
    "SPEC_KEYS",
    "Schedule",
    "fire_times_between",
    "next_fire_times",
    "parse_schedule",
]

OVERLAP_POLICIES = ("skip", "queue", "allow")
MISSED_POLICIES = ("skip", "catch_up")
TARGET_SUFFIXES = (".yaml", ".yml", ".ipynb")
MAX_CATCH_UP_LIMIT = 100
MAX_EVERY_S = 100 * 365 * 86400.0
"""The longest ``every`` interval (about 100 years): fire times must stay within the calendar."""
"""``max_catch_up`` is bounded: a long outage must not start hundreds of runs at once."""

# Keys of a spec as written (YAML, kf.schedule, stored registrations) -> canonical name.
SPEC_KEYS = {
    "name": "name",
    "cron": "cron",
    "every": "every",
    "timezone": "timezone",
    "tz": "timezone",
    "time_zone": "timezone",
    "inputs": "inputs",
    "parameters": "inputs",
    "overlap": "overlap",
    "missed": "missed",
    "max_catch_up": "max_catch_up",
    "maxCatchUp": "max_catch_up",
    "enabled": "enabled",
    "webhook": "webhook",
}

_CRON_FIELDS = ("minute", "hour", "day of month", "month", "day of week")
_CRON_EXAMPLES = ("0-59", "0-23", "1-31", "1-12 or jan-dec", "0-6 or sun-sat (0 is Sunday)")
_CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
_CRON_HINT = "write five fields, minute hour day-of-month month day-of-week, e.g. '*/15 * * * *' or '0 6 * * mon-fri'"


@dataclass(frozen=True)
class Schedule:
    """One validated schedule (see the module docstring); build it with :func:`parse_schedule`."""

    name: str
    target: str | None
    """Absolute path of the YAML file or notebook the schedule runs (None only
    for a ``schedule:`` declared in a notebook cell, before it is registered)."""
    cron: str | None = None
    every: float | None = None
    """Interval in seconds."""
    timezone: str = "UTC"
    inputs: Mapping[str, Any] = field(default_factory=dict)
    overlap: str = "skip"
    missed: str = "skip"
    max_catch_up: int = 3
    enabled: bool = True
    webhook: Mapping[str, Any] | None = None
    origin: str = "registered"
    """Where it was declared: ``"registered"`` (``kf.schedule``, ``kernelflow
    scheduler add``) or the path of the file that declares it."""
    registered_at: datetime | None = None
    """When it was registered (aware, UTC); a new schedule never catches up on
    times before this."""

    @property
    def kind(self) -> str:
        """``cron``, ``interval`` or ``webhook`` (runs only when called)."""
        return "cron" if self.cron else "interval" if self.every else "webhook"

    @property
    def tz(self) -> Any:
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.timezone)

    @property
    def when(self) -> str:
        """For people: ``cron '0 6 * * *' (Europe/Paris)``, ``every 15m``, ``webhook only``."""
        if self.cron:
            return f"cron {self.cron!r} ({self.timezone})"
        if self.every:
            return f"every {format_duration(self.every)}"
        return "webhook only"

    def next_fire(self, after: datetime) -> datetime | None:
        """The first fire time strictly after ``after`` (aware), in UTC; None if it never fires."""
        return next(_iter_times(self, after), None)

    def to_spec(self) -> dict[str, Any]:
        """The spec as JSON-able values, as :func:`parse_schedule` reads it back (with ``target``)."""
        spec: dict[str, Any] = {"name": self.name, "target": self.target}
        if self.cron:
            spec["cron"] = self.cron
        if self.every:
            spec["every"] = format_duration(self.every)
        spec.update(
            timezone=self.timezone,
            inputs=dict(self.inputs),
            overlap=self.overlap,
            missed=self.missed,
            max_catch_up=self.max_catch_up,
            enabled=self.enabled,
        )
        if self.webhook is not None:
            spec["webhook"] = dict(self.webhook)
        return spec

    def with_target(self, target: str | os.PathLike[str], origin: str | None = None) -> Schedule:
        """A copy running ``target`` (validated: it must exist and be .yaml/.yml/.ipynb)."""
        path = _check_target(target, self.name, None)
        return replace(self, target=path, origin=self.origin if origin is None else origin)


# --------------------------------------------------------------------------- fire times


def _utc(moment: datetime, what: str = "after") -> datetime:
    if not isinstance(moment, datetime) or moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be an aware datetime (with a tzinfo), got {moment!r}")
    return moment.astimezone(timezone.utc)


def _iter_cron(cron: str, tz: Any, after: datetime) -> Any:
    """Fire times after ``after`` (UTC), forever; see the module docstring for DST."""
    from croniter import CroniterBadDateError, croniter

    it = croniter(cron, after.astimezone(tz))
    skip_repeats = cron.split()[1] != "*"  # fixed hours
    while True:
        try:
            local = it.get_next(datetime)
        except CroniterBadDateError:
            return  # it never fires again (e.g. '0 0 31 2 *')
        if skip_repeats and local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset():
            continue  # the second pass through a wall-clock hour repeated when clocks went back
        yield local.astimezone(timezone.utc)


def _iter_every(every: float, after: datetime) -> Any:
    step = timedelta(microseconds=round(every * 1_000_000))
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    k = (after - epoch) // step + 1
    while True:
        yield epoch + k * step
        k += 1


def _iter_times(schedule: Schedule, after: datetime) -> Any:
    after = _utc(after)
    if schedule.cron:
        return _iter_cron(schedule.cron, schedule.tz, after)
    if schedule.every:
        return _iter_every(schedule.every, after)
    return iter(())


def next_fire_times(schedule: Schedule, after: datetime, count: int = 1) -> list[datetime]:
    """The next ``count`` fire times strictly after ``after`` (an aware datetime), as aware UTC datetimes.

    Empty for a webhook-only schedule, or a cron that never fires again. Pure:
    the same arguments give the same answer. Disabled schedules are not
    treated specially here (the scheduler skips them).
    """
    out: list[datetime] = []
    if count <= 0:
        return out
    for moment in _iter_times(schedule, after):
        out.append(moment)
        if len(out) >= count:
            break
    return out


def fire_times_between(schedule: Schedule, after: datetime, until: datetime, limit: int = 10_000) -> list[datetime]:
    """Fire times ``t`` with ``after < t <= until`` (aware datetimes), oldest first, at most ``limit``
    (the most recent ones when there are more)."""
    until = _utc(until, "until")
    after = _utc(after)
    if schedule.every and not schedule.cron:
        # Intervals: jump ahead instead of walking through a long outage one step at a time.
        span = timedelta(seconds=schedule.every) * (limit + 1)
        if until - after > span:
            after = until - span
    out: list[datetime] = []
    for moment in _iter_times(schedule, after):
        if moment > until:
            break
        out.append(moment)
        if len(out) > limit:
            del out[0]
    return out


# --------------------------------------------------------------------------- validation


def _fail(name: str | None, message: str, hint: str, location: str | None) -> DefinitionError:
    who = f"schedule {name!r}: " if name else "schedule: "
    return DefinitionError(who + message, location=location, hint=hint)


def _did_you_mean(value: str, options: Any) -> str:
    close = difflib.get_close_matches(value, list(options), cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_cron(expr: Any, name: str | None = None, location: str | None = None) -> str:
    """``expr`` as a validated 5-field cron expression (``@daily`` and friends expanded)."""
    from croniter import croniter

    if not isinstance(expr, str) or not expr.strip():
        raise _fail(name, f"cron must be a cron expression (text), got {expr!r}", _CRON_HINT, location)
    text = " ".join(expr.split())
    alias = _CRON_ALIASES.get(text.lower())
    if text.startswith("@") and alias is None:
        raise _fail(
            name,
            f"unknown cron shortcut {text!r}" + _did_you_mean(text.lower(), _CRON_ALIASES),
            f"use one of {', '.join(_CRON_ALIASES)}, or five fields",
            location,
        )
    if alias is not None:
        return alias
    fields = text.split()
    if len(fields) != 5:
        raise _fail(
            name,
            f"invalid cron expression {text!r}: it has {len(fields)} field(s), a cron expression has 5 "
            "(minute hour day-of-month month day-of-week; no seconds field)",
            _CRON_HINT,
            location,
        )
    for i, value in enumerate(fields):
        probe = " ".join(value if j == i else "*" for j in range(5))
        if not croniter.is_valid(probe):
            raise _fail(
                name,
                f"invalid cron expression {text!r}: field {i + 1} ({_CRON_FIELDS[i]}) is {value!r}, "
                f"which is not valid there (allowed: {_CRON_EXAMPLES[i]}, with * , - and /N steps)",
                _CRON_HINT,
                location,
            )
    # (Each field valid makes the expression valid: no check of the whole is needed.)
    from croniter import CroniterBadDateError

    try:
        croniter(text).get_next()
    except CroniterBadDateError:
        raise _fail(
            name,
            f"the cron expression {text!r} never fires (no such date, e.g. February 31st)",
            "check the day-of-month and month fields",
            location,
        ) from None
    return text


def check_timezone(value: Any, name: str | None = None, location: str | None = None) -> str:
    """``value`` as a known IANA time zone name; suggests close names otherwise."""
    import zoneinfo

    if not isinstance(value, str) or not value:
        raise _fail(name, f"timezone must be an IANA time zone name such as 'Europe/Paris', got {value!r}",
                    "write timezone: UTC, or a name like America/New_York", location)  # fmt: skip
    try:
        zoneinfo.ZoneInfo(value)
        return value
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        pass
    known = sorted(zoneinfo.available_timezones())
    by_lower = {z.lower(): z for z in known}
    close = difflib.get_close_matches(value.lower(), list(by_lower))  # (n=3, cutoff=0.6)
    if not close:  # "Paris" -> Europe/Paris: match the last part of the name
        tails = {z.split("/")[-1].lower(): z for z in known}
        close = [tails[t].lower() for t in difflib.get_close_matches(value.lower(), list(tails), cutoff=0.7)]
    suggestion = f" (did you mean {', '.join(repr(by_lower[c]) for c in close)}?)" if close else ""
    raise _fail(
        name,
        f"unknown time zone {value!r}{suggestion}",
        "use an IANA time zone name such as UTC, Europe/Paris or America/New_York (python -c "
        "\"import zoneinfo; print(sorted(zoneinfo.available_timezones()))\" lists them)",
        location,
    )


def _check_target(target: Any, name: str | None, location: str | None) -> str:
    if not isinstance(target, (str, os.PathLike)) or not os.fspath(target):
        raise _fail(name, f"target must be the path of a workflow file (.yaml) or a notebook (.ipynb), got {target!r}",
                    "pass a path such as 'flows/nightly.yaml' or 'report.ipynb'", location)  # fmt: skip
    path = Path(os.path.abspath(os.path.expanduser(os.fspath(target))))
    if path.suffix.lower() not in TARGET_SUFFIXES:
        raise _fail(
            name,
            f"target {os.fspath(target)!r} is neither a workflow file (.yaml, .yml) nor a notebook (.ipynb)",
            "schedule a YAML workflow file or a notebook",
            location,
        )
    if not path.is_file():
        raise _fail(
            name,
            f"target file {str(path)!r} does not exist",
            "check the path (relative paths start at the current directory), or create the file first",
            location,
        )
    return str(path)


def _check_choice(key: str, value: Any, options: tuple[str, ...], name: str | None, location: str | None) -> str:
    if isinstance(value, str) and value in options:
        return value
    # ('catch-up' or 'catch up' is close enough to 'catch_up' for _did_you_mean.)
    raise _fail(
        name,
        f"unknown {key} policy {value!r}" + (_did_you_mean(value, options) if isinstance(value, str) else ""),
        f"{key} is one of: {', '.join(options)}",
        location,
    )


def check_name(value: Any, location: str | None = None) -> str:
    """A schedule name: letters, digits, ``_``, ``.`` and ``-`` (it names a file in the store)."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise DefinitionError(
            f"schedule name must be 1 to 100 letters, digits, '_', '.' or '-' (not starting with '.' or '-'), got {value!r}",
            location=location,
            hint="name it like nightly_etl or reports.daily",
        )
    return value


def _check_inputs(value: Any, name: str | None, location: str | None) -> dict[str, Any]:
    import orjson

    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(name, f"inputs must map input names to values, got {value!r}", "inputs: {day: today, limit: 10}", location)
    for key in value:
        if not isinstance(key, str) or not key.isidentifier():
            raise _fail(name, f"input names must be Python identifiers, got {key!r}", "inputs: {day: today}", location)
    try:
        orjson.dumps(dict(value))
    except TypeError as exc:
        raise _fail(name, f"inputs must be plain values (text, numbers, booleans, lists, mappings): {exc}",
                    "pass values a YAML file could hold", location)  # fmt: skip
    return dict(value)


def parse_schedule(
    spec: Mapping[str, Any],
    *,
    name: str | None = None,
    target: str | os.PathLike[str] | None = None,
    locate: Callable[[str | None], str | None] | None = None,
    check_target: bool = True,
    origin: str = "registered",
    registered_at: datetime | None = None,
) -> Schedule:
    """Validate a schedule spec (the keys of :data:`SPEC_KEYS`) into a :class:`Schedule`.

    ``name`` is used when the spec has no ``name``; ``target`` when it has no
    ``target`` (a spec read from YAML never has one: the file is the target).
    ``locate(key)`` gives the location of a key's value for errors (a YAML
    file's line), ``locate(None)`` the spec's own. ``check_target=False``
    does not look at the target (a ``schedule:`` in a notebook cell has none
    yet; a stored registration's file may be missing for a while). Raises one
    :class:`DefinitionError` naming the schedule, the value and the fix.
    """

    def where(key: str | None) -> str | None:
        return locate(key) if locate is not None else None

    if not isinstance(spec, Mapping):
        raise DefinitionError(
            f"a schedule must be a mapping with cron: or every:, got {spec!r}",
            location=where(None),
            hint="schedule: {cron: '0 6 * * *', timezone: Europe/Paris}",
        )
    values: dict[str, Any] = {}
    written: dict[str, str] = {}
    for key, value in spec.items():
        if key == "target":
            values["target"] = value
            written["target"] = key
            continue
        canonical = SPEC_KEYS.get(key)
        if canonical is None:
            label = spec.get("name", name)
            raise _fail(
                label if isinstance(label, str) else None,
                f"unknown key {key!r}" + (_did_you_mean(key, SPEC_KEYS) if isinstance(key, str) else ""),
                "a schedule takes: name, cron or every, timezone, inputs, overlap, missed, max_catch_up, enabled, webhook",
                where(key) if isinstance(key, str) else where(None),
            )
        if canonical in written:
            raise _fail(None, f"{key!r} repeats {written[canonical]!r}", "give each setting once", where(key))
        values[canonical] = value
        written[canonical] = key

    def loc(canonical: str) -> str | None:
        return where(written[canonical]) if canonical in written else where(None)

    label = check_name(values.get("name", name), loc("name"))
    cron = values.get("cron")
    every = values.get("every")
    webhook = values.get("webhook")
    if cron is not None and every is not None:
        raise _fail(label, "give either cron or every, not both", "keep one of them (or declare two schedules with distinct names)", loc("every"))
    if cron is None and every is None and webhook is None:
        raise _fail(
            label,
            "no cron or every: the schedule would never fire",
            "add cron: '*/15 * * * *' or every: 15m (or a webhook: to run it only when called)",
            where(None),
        )
    if cron is not None:
        cron = check_cron(cron, label, loc("cron"))
    seconds: float | None = None
    if every is not None:
        try:
            seconds = parse_duration(every, what="every")
        except ValueError as exc:
            raise _fail(label, str(exc), "every takes a positive duration: 30s, 15m, 2h, 1d", loc("every")) from None
        if round(seconds * 1_000_000) <= 0:
            raise _fail(label, f"every must be greater than zero, got {every!r}", "every: 1s or more", loc("every"))
        if seconds > MAX_EVERY_S:
            raise _fail(label, f"every must be at most 100 years, got {every!r}", "every: 1d, 1w or 30d", loc("every"))
    tz = check_timezone(values.get("timezone", "UTC"), label, loc("timezone"))
    inputs = _check_inputs(values.get("inputs"), label, loc("inputs"))
    overlap = _check_choice("overlap", values.get("overlap", "skip"), OVERLAP_POLICIES, label, loc("overlap"))
    missed = _check_choice("missed", values.get("missed", "skip"), MISSED_POLICIES, label, loc("missed"))
    limit = values.get("max_catch_up", 3)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_CATCH_UP_LIMIT:
        raise _fail(label, f"max_catch_up must be a whole number from 1 to {MAX_CATCH_UP_LIMIT}, got {limit!r}",
                    "max_catch_up: 3 (older missed times are recorded as missed)", loc("max_catch_up"))  # fmt: skip
    enabled = values.get("enabled", True)
    if not isinstance(enabled, bool):
        raise _fail(label, f"enabled must be true or false, got {enabled!r}", "enabled: false pauses the schedule", loc("enabled"))
    if webhook is not None:
        if not isinstance(webhook, Mapping) or not isinstance(webhook.get("secret_env"), str) or not webhook["secret_env"]:
            raise _fail(
                label,
                f"webhook must be a mapping with a secret_env string (the environment variable holding the HMAC secret), got {webhook!r}",
                "webhook: {secret_env: NIGHTLY_WEBHOOK_SECRET}",
                loc("webhook"),
            )
        webhook = dict(webhook)
    path: str | None = None
    target = values.get("target", target)
    if check_target:
        path = _check_target(target, label, loc("target") if "target" in written else where(None))
    elif isinstance(target, (str, os.PathLike)) and os.fspath(target):
        # Kept unchecked (a stored registration whose file may come back): firing it says what is wrong.
        path = os.path.abspath(os.path.expanduser(os.fspath(target)))
    if registered_at is not None:
        registered_at = _utc(registered_at, "registered_at")
    return Schedule(
        name=label,
        target=path,
        cron=cron,
        every=seconds,
        timezone=tz,
        inputs=inputs,
        overlap=overlap,
        missed=missed,
        max_catch_up=limit,
        enabled=enabled,
        webhook=webhook,
        origin=origin,
        registered_at=registered_at,
    )
