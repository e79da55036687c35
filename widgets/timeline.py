"""The timeline widget: a run's task bars over time, and a slider through its history.

One row per task, one bar per attempt (from ``TaskStarted`` to the event that
ended it, coloured by the attempt's outcome as the ``task_attempts`` view
decides it), approval gates, breakpoints and sleeps as waiting spans, skips as
ticks. Long idle gaps (a gate waiting for a human, a run suspended until its
resume) are drawn as short breaks labelled with their real length, so the
work stays readable next to a wait of hours.

The slider scrubs the run by ``seq``. Where each task stood at each point is
computed here, in Python, by folding the run's events one at a time with the
one reducer (:func:`kernelflow.reducer.apply`, the fold ``run.at`` uses): the
widget gets the list of status changes ``[seq, ts, task, status]`` and its
JavaScript applies them up to the slider's seq, so scrubbing needs no kernel
round trip (it works while the kernel is busy and in saved widget state).
The state at the slider is the trait ``scrub_status`` ({task: status});
:func:`timeline` links it to a DAG widget's ``status`` in the browser with
``ipywidgets.jsdlink``, so the DAG is re-coloured as you scrub.
"""

from __future__ import annotations

import html
import itertools
import pathlib
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anywidget
import ipywidgets
import traitlets
from kernelflow.store.statuses import (
    ATTEMPT_END,
    ATTEMPT_END_BY_REASON,
    ATTEMPT_INTERRUPTED,
    ATTEMPT_RUNNING,
    ATTEMPT_SCHEDULED,
)

from kernelflow import events as ev
from kernelflow.durations import readable_duration
from kernelflow.events import Event, us_to_datetime
from kernelflow.reducer import FINAL_RUN_STATUSES, RunState, apply

from . import poller
from .dag_static import STATUS_COLORS, SVG_TASK_LIMIT, dag_html
from .fallback import StaticFallback, svg_img

if TYPE_CHECKING:  # pragma: no cover
    from kernelflow.model import Workflow
    from kernelflow.run import Run
    from kernelflow.store_api import EventStore

# The attempt outcomes task_attempts knows beyond the task statuses.
COLORS: dict[str, tuple[str, str]] = {**STATUS_COLORS, "interrupted": ("#ffedd5", "#ea580c")}
WAIT_STATUSES = ("waiting", "sleeping")
BREAK_SHARE = 0.25
"""An idle gap (no attempt running) longer than this share of the rest of the
run is drawn as a break."""
BREAK_WIDTH = 0.04
"""A break's width, as a share of the drawn run."""

# Geometry of the static SVG (the JS draws the same at its own width).
LABEL_W, PLOT_W, ROW_H, TOP = 130, 560, 18, 16


# --- the data: computed from the events, the same fold as run.at ---------------------


def status_changes(events: Sequence[Event]) -> tuple[list[list[Any]], list[list[Any]]]:
    """Fold ``events`` one at a time; return the task status changes
    ``[seq, ts, task_id, status]`` (a task appearing counts as a change to its
    first status) and the run status changes ``[seq, ts, status]``; ``ts`` in
    microseconds since the first event.

    Applying the task changes with ``seq <= s`` gives exactly the task statuses
    of ``fold(events[: s + 1])``, i.e. of ``run.at(s)``.
    """
    changes: list[list[Any]] = []
    run_changes: list[list[Any]] = []
    if not events:
        return changes, run_changes
    state = RunState(events[0].run_id)
    t0 = events[0].ts
    known: dict[str, str] = {}
    run_status = state.status
    for event in events:
        apply(state, event)
        tasks = state.tasks
        touched: list[str] = []
        if len(tasks) != len(known):  # the reducer only ever adds tasks
            touched.extend(t for t in itertools.islice(tasks, len(known), None))
        if event.task_id is not None and event.task_id in tasks and event.task_id in known:
            touched.append(event.task_id)
        for tid in touched:
            status = tasks[tid].status
            if known.get(tid) != status:
                known[tid] = status
                changes.append([event.seq, event.ts - t0, tid, status])
        if state.status != run_status:
            run_status = state.status
            run_changes.append([event.seq, event.ts - t0, run_status])
    return changes, run_changes


def statuses_at(changes: Sequence[Sequence[Any]], seq: int) -> dict[str, str]:
    """``{task: status}`` after the changes up to ``seq`` (what the JS computes)."""
    out: dict[str, str] = {}
    for change in changes:
        if change[0] > seq:
            break
        out[change[2]] = change[3]
    return out


def run_status_at(run_changes: Sequence[Sequence[Any]], seq: int) -> str:
    """The run's status after event ``seq``."""
    status = RunState("").status
    for change in run_changes:
        if change[0] > seq:
            break
        status = change[2]
    return status


def attempts(events: Sequence[Event]) -> list[dict[str, Any]]:
    """One dict per (task, attempt), as the ``task_attempts`` view computes them:
    ``task, attempt, status, start_seq, end_seq, started_us, ended_us, error``.

    An attempt's end is its last ending event (succeeded, retrying, failed,
    timed out), else the resume's reset that cut it short (``interrupted``);
    without either it is ``running`` (started) or ``scheduled``.
    """
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for e in events:
        if e.attempt is None or e.task_id is None:
            continue
        key = (e.task_id, e.attempt)
        a = found.get(key)
        if a is None:
            a = found[key] = {
                "task": e.task_id, "attempt": e.attempt, "status": None, "start_seq": None, "end_seq": None,
                "started_us": None, "ended_us": None, "error": None, "cut": None,
            }  # fmt: skip
        if e.type == ev.TASK_STARTED:
            if a["started_us"] is None or e.ts < a["started_us"]:
                a["started_us"], a["start_seq"] = e.ts, e.seq
        elif e.type in ATTEMPT_END:
            status = ATTEMPT_END[e.type][0]
            reason = e.payload.get("reason")
            if isinstance(reason, str):
                status = ATTEMPT_END_BY_REASON.get((e.type, reason), status)
            a["status"], a["end_seq"], a["ended_us"] = status, e.seq, e.ts
            error = e.payload.get("error")
            a["error"] = f"{error.get('exc_type')}: {error.get('message')}" if isinstance(error, Mapping) else None
        elif (
            e.type in ATTEMPT_INTERRUPTED
            and e.payload.get("resume") is True
            and (a["cut"] is None or e.ts < a["cut"][1])
        ):
            a["cut"] = (e.seq, e.ts)
    out = []
    for a in found.values():
        cut = a.pop("cut")
        if a["status"] is None:
            if cut is not None:
                a["status"] = ATTEMPT_INTERRUPTED[ev.TASK_RESET][0]
                a["end_seq"], a["ended_us"] = cut
            else:
                a["status"] = ATTEMPT_RUNNING if a["started_us"] is not None else ATTEMPT_SCHEDULED
        out.append(a)
    out.sort(key=lambda a: (a["started_us"] is None, a["started_us"] or 0, a["task"], a["attempt"]))
    return out


def _positions(events: Sequence[Event], tried: list[dict[str, Any]]) -> tuple[list[float], list[list[float]]]:
    """x in [0, 1] for every event, and the breaks ``[x0, x1, seconds]``.

    Time is linear, except that idle gaps (no attempt running) much longer
    than the rest of the run become short breaks."""
    n = len(events)
    if n == 1:
        return [0.0], []
    opens: dict[int, int] = {}
    for a in tried:
        if a["start_seq"] is not None:
            opens[a["start_seq"]] = opens.get(a["start_seq"], 0) + 1
            end = a["end_seq"] if a["end_seq"] is not None else n  # open to the end
            opens[end] = opens.get(end, 0) - 1
    gaps, idle = [], []
    running = 0
    for i in range(1, n):
        running += opens.get(i - 1, 0)
        gaps.append(max(0, events[i].ts - events[i - 1].ts))
        idle.append(running <= 0)
    total = sum(gaps)
    breaks: set[int] = set()
    by_size = sorted((g, i) for i, g in enumerate(gaps) if idle[i] and g > 0)
    rest = total
    while by_size:
        g, i = by_size[-1]
        if g <= BREAK_SHARE * (rest - g):
            break
        by_size.pop()
        breaks.add(i)
        rest -= g
    # Consecutive broken gaps (a gate answered, then a resume later) make one break.
    group: dict[int, int] = {}
    for i in sorted(breaks):
        group[i] = group.get(i - 1, i)
    size = Counter(group.values())
    if rest <= 0:  # nothing but instants and waits: space the events evenly
        widths = [1.0] * len(gaps)
    else:
        widths = [BREAK_WIDTH * rest / size[group[i]] if i in group else float(g) for i, g in enumerate(gaps)]
    span = sum(widths) or 1.0
    xs = [0.0]
    out_breaks: list[list[float]] = []
    for i, w in enumerate(widths):
        x0 = xs[-1]
        xs.append(x0 + w / span)
        if i in group:
            if i - 1 in group:
                out_breaks[-1][1] = xs[-1]
                out_breaks[-1][2] += gaps[i] / 1e6
            else:
                out_breaks.append([x0, xs[-1], gaps[i] / 1e6])
    out_breaks = [[round(a, 5), round(b, 5), sec] for a, b, sec in out_breaks]
    return [round(x, 5) for x in xs], out_breaks


def timeline_data(events: Sequence[Event], order: Sequence[str] = ()) -> dict[str, Any]:
    """Everything the widget draws, computed from one run's ``events`` (by seq).

    ``order`` puts those tasks first (the workflow's order); other tasks follow
    as they first appear."""
    if not events:
        raise ValueError("a timeline needs at least one event")
    changes, run_changes = status_changes(events)
    tried = attempts(events)
    xs, breaks = _positions(events, tried)
    rows = list(dict.fromkeys([*order, *(c[2] for c in changes), *(a["task"] for a in tried)]))
    bars = []
    for a in tried:
        if a["start_seq"] is None:
            continue  # never started: nothing to draw
        duration = (a["ended_us"] - a["started_us"]) / 1e3 if a["ended_us"] is not None else None
        bars.append([a["task"], a["attempt"], a["start_seq"], a["end_seq"], a["status"], duration, a["error"]])
    spans: list[list[Any]] = []
    opened: dict[str, list[Any]] = {}
    for seq, _ts, tid, status in changes:
        span = opened.pop(tid, None)
        if span is not None:
            span[3] = seq
        if status in WAIT_STATUSES:
            opened[tid] = [tid, status, seq, None]
            spans.append(opened[tid])
    marks = [[e.task_id, e.seq, "skipped"] for e in events if e.type == ev.TASK_SKIPPED and e.task_id is not None]
    t0 = events[0].ts
    return {
        "t0": t0,
        "tasks": rows,
        "events": [[e.ts - t0, e.type, e.task_id, e.attempt] for e in events],
        "changes": changes,
        "run_changes": run_changes,
        "bars": bars,
        "spans": spans,
        "marks": marks,
        "xs": xs,
        "breaks": breaks,
    }


# --- the widget ------------------------------------------------------------------------


class TimelineWidget(StaticFallback, anywidget.AnyWidget):
    """Task bars over time and a slider through the run's events.

    Build one with :meth:`for_run`. ``seq`` is the slider's position (the last
    event at first); ``scrub_status`` is ``{task: status}`` at that seq, the
    state ``run.at(seq)`` has. Both follow the slider in the browser without
    the kernel, and setting ``seq`` from Python moves the slider.
    """

    _esm = pathlib.Path(__file__).with_name("timeline.js")
    _css = pathlib.Path(__file__).with_name("timeline.css")

    run_id = traitlets.Unicode().tag(sync=True)
    workflow = traitlets.Unicode().tag(sync=True)
    tasks = traitlets.List().tag(sync=True)
    """Row order: task ids."""
    t0 = traitlets.Int(0).tag(sync=True)
    """When the first event was recorded (UTC microseconds since the epoch); ``ts`` below count from it."""
    events = traitlets.List().tag(sync=True)
    """``[ts, type, task_id, attempt]`` per event (``ts``: µs since ``t0``); the index is its seq."""
    changes = traitlets.List().tag(sync=True)
    """``[seq, ts, task_id, status]`` where a task's status changes (the fold's)."""
    run_changes = traitlets.List().tag(sync=True)
    """``[seq, ts, status]`` where the run's status changes."""
    bars = traitlets.List().tag(sync=True)
    """``[task, attempt, start_seq, end_seq | None, status, duration_ms | None, error | None]``."""
    spans = traitlets.List().tag(sync=True)
    """``[task, waiting | sleeping, start_seq, end_seq | None]``: gates, breakpoints, sleeps."""
    marks = traitlets.List().tag(sync=True)
    """``[task, seq, status]``: instants (skips)."""
    xs = traitlets.List().tag(sync=True)
    """Every event's x in [0, 1] (linear time with idle gaps shortened)."""
    breaks = traitlets.List().tag(sync=True)
    """``[x0, x1, seconds]``: idle gaps drawn shortened."""
    colors = traitlets.Dict().tag(sync=True)
    """Status -> ``[fill, border]`` (the palette every view shares)."""
    seq = traitlets.Int(0).tag(sync=True)
    """The slider: the last event folded into ``scrub_status``."""
    scrub_status = traitlets.Dict().tag(sync=True)
    """``{task: status}`` at ``seq``."""
    scrub_run_status = traitlets.Unicode().tag(sync=True)
    """The run's status at ``seq``."""

    def __init__(self, events: Sequence[Event], *, order: Sequence[str] = (), **kwargs: Any) -> None:
        events = list(events)
        data = timeline_data(events, order)
        last = len(events) - 1
        super().__init__(
            run_id=events[0].run_id,
            workflow=events[-1].workflow,
            colors={k: list(v) for k, v in COLORS.items()},
            seq=last,
            scrub_status=statuses_at(data["changes"], last),
            scrub_run_status=run_status_at(data["run_changes"], last),
            **data,
            **kwargs,
        )
        self._events = events
        self._order = tuple(order)
        self._store: EventStore | None = None
        self._next_poll = 0.0

    # --- building ---------------------------------------------------------------------

    @classmethod
    def for_run(
        cls, run: Run | str, *, store: EventStore | None = None, workflow: Workflow | None = None
    ) -> TimelineWidget:
        """The timeline of ``run`` (a :class:`~kernelflow.run.Run` or a run id read
        from ``store``, default the process's store). A run not finished yet
        is followed: the widget re-reads the store until the run ends."""
        return cls._of(*_resolve(run, store, workflow))

    @classmethod
    def _of(cls, store: EventStore, events: list[Event], wf: Workflow | None) -> TimelineWidget:
        widget = cls(events, order=wf.order if wf is not None else ())
        widget._store = store
        if widget.status not in FINAL_RUN_STATUSES:
            poller.watch(widget)
        return widget

    # --- reading ----------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return len(self.events) - 1

    @property
    def status(self) -> str:
        """The run's status after its last event."""
        return run_status_at(self.run_changes, self.last_seq)

    def status_at(self, seq: int) -> dict[str, str]:
        """``{task: status}`` after event ``seq``, from the widget's own data."""
        return statuses_at(self.changes, seq)

    @traitlets.validate("seq")
    def _valid_seq(self, proposal: Any) -> int:
        return max(0, min(int(proposal["value"]), max(len(self.events) - 1, 0)))

    @traitlets.observe("seq")
    def _on_seq(self, change: Any) -> None:
        with self.hold_sync():
            self.scrub_status = statuses_at(self.changes, change["new"])
            self.scrub_run_status = run_status_at(self.run_changes, change["new"])

    # --- following a run ----------------------------------------------------------------

    def poll(self) -> bool:
        """Re-read the store; update if the run has new events. False once it has ended.

        A big run that keeps changing is redrawn less often: at most one
        update per ten times what the last one cost."""
        if self._store is None:
            return False
        if time.monotonic() < self._next_poll:
            return True
        started = time.monotonic()
        events = self._store.read_run(self.run_id)
        if len(events) > len(self._events):
            self._update(events)
        self._next_poll = started + 10 * (time.monotonic() - started)
        return self.status not in FINAL_RUN_STATUSES

    def _update(self, events: list[Event]) -> None:
        at_end = self.seq >= len(self._events) - 1
        data = timeline_data(events, self._order)
        self._events = events
        with self.hold_sync():
            for name, value in data.items():
                setattr(self, name, value)
            self.workflow = events[-1].workflow
            if at_end:
                self.seq = len(events) - 1
            self.scrub_status = statuses_at(self.changes, self.seq)
            self.scrub_run_status = run_status_at(self.run_changes, self.seq)

    # --- no JavaScript -------------------------------------------------------------------

    def static_html(self) -> str:
        return timeline_html(self)


def _resolve(
    run: Run | str, store: EventStore | None, workflow: Workflow | None
) -> tuple[EventStore, list[Event], Workflow | None]:
    from kernelflow.run import Run
    from kernelflow.snapshots import read_events

    if isinstance(run, Run):
        store = store or run.store
        return store, read_events(store, run.run_id), workflow or run.workflow
    if not isinstance(run, str):
        raise TypeError(f"a timeline shows a Run or a run id (str), got {type(run).__name__}")
    if store is None:
        from kernelflow.store_access import open_store

        store = open_store()
    events = read_events(store, run)
    return store, events, workflow or find_definition(store, events)


def find_definition(store: EventStore, events: Sequence[Event]) -> Workflow | None:
    """The run's workflow at the version it last ran: defined in this process or
    the notebook, else registered in ``store``; None when neither has it."""
    from kernelflow import catalog
    from kernelflow.model import Workflow
    from kernelflow.reducer import fold

    state = fold(events)
    if not state.workflow:
        return None
    ns = catalog.user_namespace()
    try:
        found = catalog.find(state.workflow, state.workflow_version or None, namespace=ns)
    except Exception:  # noqa: BLE001 - an unreadable definition: show the timeline alone
        found = None
    if found is not None:
        return found
    try:
        rows = store.sql(
            "SELECT definition FROM workflows WHERE name = ? AND version = ?", [state.workflow, state.workflow_version]
        )
        if rows.height == 0:
            return None
        import orjson

        definition = rows["definition"][0]
        return Workflow.from_dict(orjson.loads(definition) if isinstance(definition, (str, bytes)) else definition, ns)
    except Exception:  # noqa: BLE001
        return None


# --- the static picture ------------------------------------------------------------------


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "not ended"
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def timeline_svg(w: TimelineWidget) -> str:
    """The Gantt as an SVG string: the final state, the same marks as the JS draws."""
    esc = html.escape
    rows = {t: i for i, t in enumerate(w.tasks)}
    xs = w.xs
    final = w.status_at(w.last_seq)

    def x(seq: int | None) -> float:
        return LABEL_W + PLOT_W * (xs[seq] if seq is not None else 1.0)

    def y(task: str) -> float:
        return TOP + rows[task] * ROW_H

    height = TOP + len(w.tasks) * ROW_H + 6
    out = [
        (
            f"<svg class='kf-gantt' xmlns='http://www.w3.org/2000/svg' width='{LABEL_W + PLOT_W + 10}' "
            f"height='{height}' font-family='sans-serif' font-size='11'>"
        )
    ]
    for x0, x1, seconds in w.breaks:
        bx0, bx1 = LABEL_W + PLOT_W * x0, LABEL_W + PLOT_W * x1
        out.append(
            f"<g class='kf-break'><rect x='{bx0:.1f}' y='{TOP}' width='{max(bx1 - bx0, 1):.1f}' "
            f"height='{height - TOP - 6}' fill='#e4e4e7' fill-opacity='0.6'/>"
            f"<text x='{(bx0 + bx1) / 2:.1f}' y='{TOP - 4}' text-anchor='middle' fill='#71717a'>"
            f"⋯{esc(readable_duration(seconds))}</text></g>"
        )
    for task, i in rows.items():
        status = final.get(task, "pending")
        fill, border = COLORS.get(status, COLORS["pending"])
        out.append(
            f"<g class='kf-row' data-task='{esc(task)}' data-status='{status}'>"
            f"<rect x='2' y='{TOP + i * ROW_H + 4}' width='9' height='9' rx='2' fill='{fill}' stroke='{border}'/>"
            f"<text x='15' y='{TOP + i * ROW_H + 12}'>{esc(task[:20])}</text></g>"
        )
    for task, kind, s0, s1 in w.spans:
        fill, border = COLORS.get(kind, COLORS["waiting"])
        x0, x1 = x(s0), x(s1)
        out.append(
            f"<rect class='kf-wait' data-task='{esc(task)}' data-kind='{kind}' x='{x0:.1f}' y='{y(task) + 5:.1f}' "
            f"width='{max(x1 - x0, 2):.1f}' height='{ROW_H - 10}' fill='{fill}' stroke='{border}' "
            f"stroke-dasharray='2 2'><title>{esc(task)}: {kind}</title></rect>"
        )
    for task, attempt, s0, s1, status, duration, error in w.bars:
        fill, border = COLORS.get(status, COLORS["pending"])
        x0, x1 = x(s0), x(s1)
        tip = f"{task} attempt {attempt}: {status}, {_fmt_ms(duration)}" + (f" ({error})" if error else "")
        out.append(
            f"<rect class='kf-bar' data-task='{esc(task)}' data-attempt='{attempt}' data-status='{status}' "
            f"x='{x0:.1f}' y='{y(task) + 3:.1f}' width='{max(x1 - x0, 2):.1f}' height='{ROW_H - 6}' rx='2' "
            f"fill='{fill}' stroke='{border}'><title>{esc(tip)}</title></rect>"
        )
    for task, seq, status in w.marks:
        fill, border = COLORS.get(status, COLORS["skipped"])
        out.append(
            f"<rect class='kf-mark' data-task='{esc(task)}' data-status='{status}' x='{x(seq) - 1:.1f}' "
            f"y='{y(task) + 2:.1f}' width='3' height='{ROW_H - 4}' fill='{border}'><title>{esc(task)}: {status}</title></rect>"
        )
    out.append("</svg>")
    return "".join(out)


def timeline_html(w: TimelineWidget) -> str:
    """The timeline as HTML that needs no JavaScript: a header and the Gantt SVG."""
    start = us_to_datetime(w.t0).strftime("%Y-%m-%d %H:%M:%S")
    head = (
        f"<b>{html.escape(w.workflow)}</b> run <code>{html.escape(w.run_id)}</code>: <b>{html.escape(w.status)}</b>"
        f" · started {start} UTC · {readable_duration(max(w.events[-1][0], 0) / 1e6)} · {len(w.events)} events"
    )
    if len(w.tasks) > SVG_TASK_LIMIT:  # too many rows to read in a picture; the counts are still true
        counts = Counter(w.status_at(w.last_seq).values())
        body = "<pre>" + html.escape(", ".join(f"{n} {s}" for s, n in counts.items())) + f" ({len(w.tasks)} tasks)</pre>"
    else:
        body = svg_img(timeline_svg(w), f"timeline of run {w.run_id}", "kf-timeline-picture")
    return f"<div class='kf-timeline' data-run='{html.escape(w.run_id)}'><div>{head}</div>{body}</div>"


# --- the DAG and the timeline together ------------------------------------------------------


class RunTimeline(StaticFallback, ipywidgets.VBox):
    """A run's DAG above its timeline. Scrubbing the timeline re-colours the DAG
    in the browser, without the kernel: ``jsdlink`` from the timeline's
    ``scrub_status`` and ``scrub_run_status`` to the DAG's ``status`` and
    ``run_status``."""

    def __init__(self, timeline: TimelineWidget, dag: Any = None, workflow: Workflow | None = None) -> None:
        super().__init__(children=[dag, timeline] if dag is not None else [timeline])
        self.timeline = timeline
        self.dag = dag
        self.workflow = workflow
        self._links = []
        if dag is not None:
            self._links = [
                ipywidgets.jsdlink((timeline, "scrub_status"), (dag, "status")),
                ipywidgets.jsdlink((timeline, "scrub_run_status"), (dag, "run_status")),
            ]

    def static_html(self) -> str:
        parts = []
        if self.workflow is not None:
            from kernelflow.reducer import fold

            parts.append(dag_html(self.workflow, fold(self.timeline._events)))
        parts.append(self.timeline.static_html())
        return "<div class='kf-run-timeline'>" + "".join(parts) + "</div>"


def timeline(run: Run | str, *, store: EventStore | None = None, workflow: Workflow | None = None) -> RunTimeline:
    """``kf.timeline(run)``: the run's DAG (when its workflow is known) above its
    timeline; the slider scrubs the run and re-colours the DAG to that moment.

    ``run`` is a :class:`~kernelflow.run.Run` or a run id. For a run id the
    workflow is looked up in this process and in the store's registered
    definitions; if neither has it, the timeline shows alone.
    """
    store, events, wf = _resolve(run, store, workflow)
    tl = TimelineWidget._of(store, events, wf)
    dag = _dag_widget(run, store, tl) if wf is not None else None
    return RunTimeline(tl, dag, wf)


def _dag_widget(run: Run | str, store: EventStore, tl: TimelineWidget) -> Any:
    from .dag import DagWidget

    # The timeline follows the run and drives the DAG's colours; a DAG
    # re-reading the store on its own would undo a scrub back in time.
    dag = DagWidget.for_run(run, store=store, follow=False)
    with dag.hold_sync():
        dag.status = dict(tl.scrub_status)
        dag.run_status = tl.scrub_run_status
    return dag
