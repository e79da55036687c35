"""Run history and statistics over the store's views, for ``kernelflow history`` and ``stats``.

Everything here is SQL over ``runs`` and ``task_attempts`` (store/views.sql),
so it sees the runs of every process sharing the store, and returns plain
lists of dicts with stable keys (what ``--json`` prints).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timezone
from typing import Any

from .exceptions import InputError

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """``--since``: an age (``2h``, ``3d``, ``90m``, ``2w``, ``45s``: that long before
    ``now``) or an ISO date or time (``2026-11-20``, ``2026-11-20T10:00``;
    naive means UTC). Returns a naive UTC datetime, as the views' timestamps are.
    Raises :class:`InputError` saying what is accepted."""
    from .store.retention import parse_age

    text = text.strip()
    now = now or datetime.now(timezone.utc)
    if _ISO_DATE.match(text):
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise InputError(
                f"--since {text!r} looks like a date but is not one; write 2026-11-20 or 2026-11-20T10:00 (UTC)"
            ) from None
        if when.tzinfo is not None:
            when = when.astimezone(timezone.utc).replace(tzinfo=None)
        return when
    try:
        age = parse_age(text)
    except ValueError as exc:
        raise InputError(f"--since: {exc}; or an ISO date such as {date.today().isoformat()}") from None
    if now.tzinfo is not None:
        now = now.astimezone(timezone.utc).replace(tzinfo=None)
    return now - age


def _where(workflow: str | None, status: str | None, since: datetime | None, prefix: str = "") -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if workflow:
        clauses.append(f"{prefix}workflow = ?")
        params.append(workflow)
    if status:
        clauses.append(f"{prefix}status = ?")
        params.append(status)
    if since is not None:
        clauses.append(f"{prefix}started_at >= ?")
        params.append(since)
    return (f"WHERE {' AND '.join(clauses)} " if clauses else ""), params


def iso_utc(value: Any) -> str | None:
    """Timestamps in JSON: ISO 8601 with an explicit UTC offset."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat()
    return str(value)


def history(
    store: Any, *, workflow: str | None = None, status: str | None = None, since: datetime | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """Recent runs, newest first: ``run_id``, ``workflow``, ``workflow_version``, ``status``,
    ``started_at``, ``ended_at`` (ISO, UTC), ``duration_s``, ``tasks``, ``succeeded``,
    ``failed``, ``skipped``."""
    clause, params = _where(workflow, status, since)
    df = store.sql(
        "SELECT run_id, workflow, workflow_version, status, started_at, ended_at, duration_s, "
        "tasks_total AS tasks, tasks_succeeded AS succeeded, tasks_failed AS failed, tasks_skipped AS skipped "
        f"FROM runs {clause}ORDER BY started_at DESC, run_id LIMIT ?",
        params + [limit],
    )
    rows = df.to_dicts()
    for row in rows:
        row["started_at"], row["ended_at"] = iso_utc(row["started_at"]), iso_utc(row["ended_at"])
    return rows


def workflow_stats(store: Any, *, workflow: str | None = None, since: datetime | None = None) -> list[dict[str, Any]]:
    """Per workflow (runs started since ``since``): ``workflow``, ``runs``, ``succeeded``,
    ``failed``, ``active`` (running or waiting), ``success_rate`` (succeeded / ended runs;
    ``None`` when none ended), ``duration_s`` ``{p50, p95, max}`` of ended runs, and
    ``tasks``: per task ``task``, ``attempts``, ``failures`` (attempts that failed or
    timed out, retried or not), ``duration_s`` ``{p50, p95}`` of ended attempts."""
    clause, params = _where(workflow, None, since)
    runs = store.sql(
        "SELECT workflow, count(*) AS runs, "
        "count(*) FILTER (WHERE status = 'succeeded') AS succeeded, "
        "count(*) FILTER (WHERE status = 'failed') AS failed, "
        "count(*) FILTER (WHERE status IN ('running', 'waiting')) AS active, "
        "quantile_cont(duration_s, 0.5) FILTER (WHERE ended_at IS NOT NULL) AS p50, "
        "quantile_cont(duration_s, 0.95) FILTER (WHERE ended_at IS NOT NULL) AS p95, "
        "max(duration_s) FILTER (WHERE ended_at IS NOT NULL) AS max "
        f"FROM runs {clause}GROUP BY workflow ORDER BY workflow",
        params,
    ).to_dicts()
    # Attempts of the same runs: filter on the run's start, not the attempt's.
    tclause, tparams = _where(workflow, None, since, prefix="r.")
    tasks = store.sql(
        "SELECT a.workflow, a.task_id AS task, count(*) AS attempts, "
        "count(*) FILTER (WHERE a.status IN ('failed', 'timed_out')) AS failures, "
        "quantile_cont(a.duration_ms, 0.5) FILTER (WHERE a.ended_at IS NOT NULL) / 1e3 AS p50, "
        "quantile_cont(a.duration_ms, 0.95) FILTER (WHERE a.ended_at IS NOT NULL) / 1e3 AS p95 "
        f"FROM task_attempts a JOIN runs r USING (run_id) {tclause}"
        "GROUP BY a.workflow, a.task_id ORDER BY a.workflow, a.task_id",
        tparams,
    ).to_dicts()
    by_workflow: dict[str, list[dict[str, Any]]] = {}
    for t in tasks:
        by_workflow.setdefault(t.pop("workflow"), []).append(
            {"task": t["task"], "attempts": t["attempts"], "failures": t["failures"],
             "duration_s": {"p50": t["p50"], "p95": t["p95"]}}  # fmt: skip
        )
    out = []
    for r in runs:
        ended = r["succeeded"] + r["failed"]
        out.append({
            "workflow": r["workflow"],
            "runs": r["runs"],
            "succeeded": r["succeeded"],
            "failed": r["failed"],
            "active": r["active"],
            "success_rate": r["succeeded"] / ended if ended else None,
            "duration_s": {"p50": r["p50"], "p95": r["p95"], "max": r["max"]},
            "tasks": by_workflow.get(r["workflow"], []),
        })  # fmt: skip
    return out


def since_label(since: datetime | None) -> str:
    """How a ``--since`` bound reads in a heading."""
    return "" if since is None else f" since {since.isoformat(sep=' ', timespec='seconds')} UTC"


__all__ = ["history", "iso_utc", "parse_since", "since_label", "workflow_stats"]
