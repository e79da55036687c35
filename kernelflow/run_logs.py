"""What a run's tasks printed and raised, in time order, for ``kernelflow logs``.

Entries come from the run's events: ``TaskLogged`` (what an attempt printed to
stdout/stderr and logged, recorded when the attempt ends), the ``error`` of
attempts that failed, timed out or will be retried (with the traceback), and
the status changes around them (run started/ended, attempt started/ended), so
a reader sees which attempt each text belongs to.

An entry is a dict with stable keys (what ``kernelflow logs --json`` prints,
one JSON object per line): ``seq``, ``ts`` (ISO 8601, UTC), ``kind``
(``status``, ``log`` or ``error``), ``task`` and ``attempt`` (``None`` for the
run's own entries), ``status`` (``status`` entries: ``started``,
``succeeded``, ``failed``, ``retrying``, ``timed_out``, ``skipped``,
``waiting``, ``resumed``, for a task or the run), ``item`` (a forEach item's
index, for its log) and ``text``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

from . import events as ev

_TASK_STATUS = {
    ev.TASK_STARTED: "started",
    ev.TASK_SUCCEEDED: "succeeded",
    ev.TASK_FAILED: "failed",
    ev.TASK_RETRYING: "retrying",
    ev.TASK_TIMED_OUT: "timed_out",
    ev.TASK_SKIPPED: "skipped",
}
_RUN_STATUS = {
    ev.RUN_STARTED: "started",
    ev.RUN_SUCCEEDED: "succeeded",
    ev.RUN_FAILED: "failed",
    ev.RUN_SUSPENDED: "waiting",
    ev.RUN_RESUMED: "resumed",
}
_WITH_ERROR = (ev.TASK_FAILED, ev.TASK_RETRYING, ev.TASK_TIMED_OUT)


def _iso(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us / 1e6, timezone.utc).isoformat(timespec="milliseconds")


def entries(events: Iterable[Any], task: str | None = None) -> Iterator[dict[str, Any]]:
    """The log entries of ``events`` (one run's, by ``seq``); only ``task``'s when given."""
    started: dict[tuple[str, int], int] = {}
    for e in events:
        if task is not None and e.task_id != task:
            continue
        base = {"seq": e.seq, "ts": _iso(e.ts), "task": e.task_id, "attempt": e.attempt}
        payload = e.payload or {}
        if e.type in _RUN_STATUS and e.task_id is None:
            text = {
                ev.RUN_STARTED: f"run started (workflow {e.workflow}, version {e.workflow_version})",
                ev.RUN_FAILED: f"run failed: {payload.get('error') or ''}".rstrip(": "),
                ev.RUN_SUSPENDED: "run waiting: " + ", ".join(
                    f"{w.get('task')} ({w.get('kind')})" for w in payload.get("waiting") or ()),
            }.get(e.type, f"run {_RUN_STATUS[e.type]}")  # fmt: skip
            yield {**base, "kind": "status", "status": _RUN_STATUS[e.type], "item": None, "text": text}
        elif e.type == ev.TASK_LOGGED:
            text = str(payload.get("text") or "")
            if payload.get("truncated"):
                text = "[... earlier output dropped: only the last 8,000 characters are kept]\n" + text
            yield {**base, "kind": "log", "status": None, "item": payload.get("item"), "text": text}
        elif e.type in _TASK_STATUS:
            status = _TASK_STATUS[e.type]
            if e.type == ev.TASK_STARTED:
                started[(e.task_id, e.attempt)] = e.ts
                text = "started"
            elif e.type == ev.TASK_SKIPPED:
                text = f"skipped ({payload.get('reason') or 'no reason recorded'})"
            else:
                t0 = started.get((e.task_id, e.attempt))
                took = f" after {(e.ts - t0) / 1e3:.1f} ms" if t0 is not None else ""
                text = status.replace("_", " ") + took
                error = payload.get("error") or {}
                if error:
                    text += f": {error.get('exc_type')}: {error.get('message')}"
                if e.type == ev.TASK_RETRYING and payload.get("delay_s") is not None:
                    text += f" (attempt {payload.get('next_attempt')} in {payload['delay_s']:g} s)"
            yield {**base, "kind": "status", "status": status, "item": None, "text": text}
            error = payload.get("error") or {}
            if e.type in _WITH_ERROR and error.get("traceback"):
                yield {**base, "kind": "error", "status": None, "item": None, "text": str(error["traceback"]).rstrip("\n")}


def task_ids(events: Iterable[Any]) -> list[str]:
    """Every task the run knows: those its start (or a resume) lists, and any with events."""
    seen: dict[str, None] = {}
    for e in events:
        if e.type in (ev.RUN_STARTED, ev.RUN_RESUMED):
            seen.update(dict.fromkeys((e.payload or {}).get("tasks") or ()))
        if e.task_id:
            seen[e.task_id] = None
    return list(seen)


def format_entry(entry: dict[str, Any]) -> str:
    """One entry as terminal text: a status line, or a header and the indented text."""
    clock = entry["ts"][11:23]
    who = "run" if entry["task"] is None else f"{entry['task']} #{entry['attempt']}" if entry["attempt"] else entry["task"]
    if entry["kind"] == "status":
        return f"{clock}  {who}: {entry['text']}"
    what = "output" if entry["kind"] == "log" else "error"
    if entry.get("item") is not None:
        what += f" of item {entry['item']}"
    body = "\n".join("  │ " + line for line in entry["text"].splitlines()) or "  │"
    return f"{clock}  ── {who} · {what} ──\n{body}"
