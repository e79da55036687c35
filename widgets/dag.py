"""The live DAG widget: a workflow's graph, coloured by the status of a run.

The kernel computes what needs Python (the Graphviz layout, the fold of the
run's events, a clicked task's details from the store) and the browser only
draws, so the JavaScript stays a few kilobytes: saved widget state carries it
into every executed notebook.

State comes from the store, not the session: a widget made for a run id
after a kernel restart, or re-rendered after a browser reload, folds the
run's stored events, and keeps re-reading them while someone else (another
process, the CLI) drives the run.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets

from kernelflow import events as ev
from kernelflow.reducer import RunState, fold

from . import poller
from .dag_static import STATUS_COLORS, dag_html
from .fallback import StaticFallback
from .previews import short_text, value_html

if TYPE_CHECKING:  # pragma: no cover
    from kernelflow.model import Workflow
    from kernelflow.run import Run

HERE = Path(__file__).parent
LAYOUT_TASK_LIMIT = 2_000
"""Beyond this many tasks ``dot`` takes seconds; the browser lays the graph out instead."""
UPDATE_INTERVAL = 0.2
"""Seconds between two pushes of live state to the browser (updates are batched)."""
INTERVAL_PER_TASK = 0.4e-3
"""Each push re-sends every task's status: big graphs push less often (5,000 tasks: every 2 s)."""

_live: weakref.WeakValueDictionary[str, DagWidget] = weakref.WeakValueDictionary()
_live_lock = threading.Lock()


class DagWidget(StaticFallback, anywidget.AnyWidget):
    """A workflow's DAG, coloured by a run's task statuses, with a details panel.

    Make one with :meth:`for_workflow`, :meth:`for_run` or ``kf.dag(...)``.
    Clicking a node asks the kernel for that task's details (inputs, output
    preview, captured logs, traceback, attempts), read from the store.
    """

    _esm = HERE / "dag.js"
    _css = HERE / "dag.css"

    workflow = traitlets.Unicode("").tag(sync=True)
    version = traitlets.Unicode("").tag(sync=True)
    run_id = traitlets.Unicode("").tag(sync=True)
    run_status = traitlets.Unicode("").tag(sync=True)
    graph = traitlets.Dict().tag(sync=True)
    """``{"nodes": [[id, kind], ...], "edges": [[from, to, "dep" | "after"], ...]}``."""
    # Not ``layout``: that name is ipywidgets' own Layout reference on every DOM widget.
    graph_layout = traitlets.Dict().tag(sync=True)
    """From ``dot``: ``{"width", "height", "nodes": {id: [cx, cy, w, h]}, "edges": [[from, to, svg path]]}``;
    empty when ``dot`` is missing or the graph is huge (the browser lays it out)."""
    status = traitlets.Dict().tag(sync=True)
    """``{task_id: status}``; a task not listed is pending."""
    tasks = traitlets.Dict().tag(sync=True)
    """``{task_id: [attempt, duration_ms | None, problem | None]}``: what a tooltip shows."""
    started_at = traitlets.Float(0.0).tag(sync=True)
    ended_at = traitlets.Float(0.0).tag(sync=True)
    selected = traitlets.Unicode("").tag(sync=True)
    details = traitlets.Dict().tag(sync=True)
    palette = traitlets.Dict({k: list(v) for k, v in STATUS_COLORS.items()}).tag(sync=True)
    """``{status: [fill, border]}``: the one palette every view uses."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wf: Workflow | None = None
        self._state: RunState | None = None
        self._run: Run | None = None
        self._store: Any = None
        self._driven_here = False
        self._follow = True
        self._pending: RunState | None = None
        self._last_push = 0.0
        self._timer: threading.Timer | None = None
        self._push_lock = threading.Lock()
        self._layout_thread: threading.Thread | None = None
        self.plain_first = False
        """Set by the live observer: the picture shown as a run starts is the text DAG (no ``dot``)."""
        self.display_handle: Any = None
        """Where a live run's cell shows this widget (IPython ``DisplayHandle``), to re-send it."""
        self.gate_widgets: dict[tuple[str, int], Any] = {}
        """Approval widgets shown for the run's gates, by (task, request seq)."""
        self.on_msg(self._on_message)

    def __repr__(self) -> str:
        what = f"run {self.run_id}: {self.run_status}" if self.run_id else f"version {self.version}"
        return f"<DagWidget {self.workflow} {what}, {len(self.graph.get('nodes', []))} tasks>"

    # --- construction ------------------------------------------------------------

    @classmethod
    def for_workflow(cls, wf: Workflow) -> DagWidget:
        """The DAG of ``wf``, every task pending."""
        widget = cls(workflow=wf.name, version=wf.version)
        widget._wf = wf
        widget.graph = graph_of_workflow(wf)
        widget.graph_layout = layout_of(widget.graph)
        return widget

    @classmethod
    def for_run(cls, run: Run | str, *, store: Any = None, follow: bool = True, layout_now: bool = True) -> DagWidget:
        """The DAG of a run (a :class:`~kernelflow.run.Run` or a run id), at its current state.

        With ``follow`` (the default), a run that is not finished and not
        driven by this process is re-read from the store until it ends, and a
        re-rendered view re-reads it too; ``follow=False`` leaves the colours
        to whoever sets ``status`` (the timeline's scrubbing does).
        ``layout_now=False`` computes the Graphviz layout on a background
        thread (the live DAG of a starting run must not delay its tasks; the
        browser draws its own layout until this one arrives).
        """
        from kernelflow.run import Run

        if isinstance(run, Run):
            wf, run_id, store = run.workflow, run.run_id, run.store
        elif isinstance(run, str):
            from kernelflow.store_access import open_store

            wf, run_id, store = None, run, store or open_store()
        else:
            raise TypeError(f"kf.dag() takes a Run, a run id or a Workflow, got {type(run).__name__}")
        if isinstance(run, Run):
            state = run.state  # the same fold, kept by the handle; the poller catches up if others drive it
        else:
            events = store.read_run(run_id)
            if not events:
                raise KeyError(f"no run {run_id!r} in the store at {getattr(store, 'location', store)}; kf.history() lists runs")
            state = fold(events, run_id)
        if wf is None:
            wf = _workflow_for(state, store)
        widget = cls(workflow=state.workflow or (wf.name if wf else ""), version=state.workflow_version)
        widget._wf, widget._store, widget.run_id = wf, store, run_id
        widget._run = run if isinstance(run, Run) else None
        widget._follow = follow
        widget.graph = graph_of_workflow(wf) if wf is not None else graph_of_definition(_definition(store, state))
        if not widget.graph.get("nodes"):
            widget.graph = {"nodes": [[t, "task"] for t in state.tasks], "edges": []}
        if layout_now or _cached_layout(widget.graph) is not None:
            widget.graph_layout = layout_of(widget.graph)
        else:
            graph = widget.graph
            widget._layout_thread = threading.Thread(
                target=lambda: setattr(widget, "graph_layout", layout_of(graph)), name="kernelflow-dag-layout", daemon=True
            )
            widget._layout_thread.start()
        widget.apply(state)
        if follow and not state.done:
            poller.watch(widget)
        return widget

    # --- state -------------------------------------------------------------------

    def apply(self, state: RunState) -> None:
        """Show ``state`` (one message to the browser for all the traits)."""
        from kernelflow.snapshots import problem

        self._state = state
        status, tasks = {}, {}
        for tid, t in list(state.tasks.items()):
            status[tid] = t.status
            ms = (t.ended_at - t.started_at) / 1e3 if t.started_at and t.ended_at else None
            tasks[tid] = [t.attempt, ms, problem(t)]
        with self.hold_sync():
            self.status = status
            self.tasks = tasks
            self.run_status = state.status
            self.started_at = (state.started_at or 0) / 1e6
            self.ended_at = (state.ended_at or 0) / 1e6 if state.done else 0.0

    def push(self, state: RunState, *, now: bool = False) -> None:
        """Show ``state`` soon: at most one push per :data:`UPDATE_INTERVAL`, the last one always."""
        with self._push_lock:
            self._pending = state
            interval = max(UPDATE_INTERVAL, len(state.tasks) * INTERVAL_PER_TASK)
            wait = interval - (time.monotonic() - self._last_push)
            if not now and wait > 0:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._flush)
                    self._timer.daemon = True
                    self._timer.start()
                return
        self._flush()

    def _flush(self) -> None:
        with self._push_lock:
            state, self._pending = self._pending, None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._last_push = time.monotonic()
        if state is not None:
            self.apply(state)

    def poll(self) -> bool:
        """Re-read the run from the store (called by the shared poller thread)."""
        if self._driven_here:
            return True  # the live observer keeps it current
        if not self.run_id or self._store is None:
            return False
        events = self._store.read_run(self.run_id)
        if events and (self._state is None or events[-1].seq != self._state.last_seq):
            self.apply(fold(events, self.run_id))
        return self._state is None or not self._state.done

    def refresh(self) -> None:
        """Re-read the run from the store now (a browser re-rendering the widget asks for this)."""
        if self._follow and self.run_id and self._store is not None and not self._driven_here:
            events = self._store.read_run(self.run_id)
            if events:
                self.apply(fold(events, self.run_id))
                if not self._state.done and not poller.watching(self):  # type: ignore[union-attr]
                    poller.watch(self)

    # --- the browser asks -------------------------------------------------------------

    def _on_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "refresh":
            self.refresh()

    @traitlets.observe("selected")
    def _selected_changed(self, change: Any) -> None:
        tid = change["new"]
        if not tid:
            self.details = {}
            return
        try:
            self.details = self.details_of(tid)
        except Exception as exc:  # noqa: BLE001 - the panel says what went wrong, the kernel goes on
            self.details = {"task": tid, "problem": f"could not read the details: {type(exc).__name__}: {exc}"}

    def details_of(self, tid: str) -> dict[str, Any]:
        """What the details panel shows for task ``tid``: JSON-ready, previews as HTML."""
        out: dict[str, Any] = {"task": tid}
        if self._wf is not None and tid in self._wf:
            task = self._wf[tid]
            out["kind"] = task.spec.kind if task.spec is not None else "python"
            out["options"] = task.options.describe()
        if not self.run_id or self._store is None:
            out["status"] = "pending"
            return out
        from kernelflow.snapshots import Snapshot

        events = self._store.read_run(self.run_id)
        if not events:
            out["status"] = "pending"
            return out
        snap = Snapshot._of(self._store, events, self._wf)
        t = snap.state.tasks.get(tid)
        out["status"] = t.status if t else "pending"
        if t is None:
            return out
        out["attempt"], out["iteration"] = t.attempt, t.iteration
        if t.error:
            out["error"] = t.error.get("traceback") or f"{t.error.get('exc_type')}: {t.error.get('message')}"
        if t.reason:
            out["reason"] = t.reason
        if t.status == "succeeded":
            try:
                out["output"] = value_html(snap.output(tid))
            except Exception as exc:  # noqa: BLE001
                out["output"] = f"<pre>output not readable: {type(exc).__name__}: {exc}</pre>"
        out["inputs"] = self._inputs_html(snap, tid)
        out["attempts"], out["logs"] = _attempts_and_logs(events, tid)
        out["files"] = [
            [e.attempt, (e.payload or {}).get("kind"), (e.payload or {}).get("path")]
            for e in events
            if e.type == ev.TASK_ARTIFACT and e.task_id == tid
        ]
        if t.gate:
            out["gate"] = {k: t.gate.get(k) for k in ("kind", "message", "expires_at") if k in t.gate}
        return out

    def _inputs_html(self, snap: Any, tid: str) -> dict[str, str]:
        if self._wf is None or tid not in self._wf:
            return {}
        task = self._wf[tid]
        shown: dict[str, str] = {}
        for p in task.params:
            if p.name in task.deps:
                dep = snap.state.tasks.get(p.name)
                if dep is not None and dep.status == "succeeded":
                    try:
                        shown[p.name] = value_html(snap.output(p.name))
                    except Exception as exc:  # noqa: BLE001
                        shown[p.name] = f"<pre>not readable: {type(exc).__name__}</pre>"
                else:
                    shown[p.name] = f"<pre>(from {p.name}: {dep.status if dep else 'pending'})</pre>"
            elif p.name in snap.inputs:
                shown[p.name] = value_html(snap.inputs[p.name])
        return shown

    # --- static fallback ------------------------------------------------------------

    def static_html(self) -> str:
        if self._wf is not None:
            # A live run's first picture is replaced when the run stops: no dot call on its way in.
            return dag_html(self._wf, self._state, picture=not self.plain_first)
        import html

        rows = "".join(
            f"<tr><td>{html.escape(t)}</td><td class='kf-{html.escape(s)}'>{html.escape(s)}</td></tr>"
            for t, s in self.status.items()
        )
        return (
            f"<div class='kernelflow-dag'><b>{html.escape(self.workflow)}</b> run <code>{html.escape(self.run_id)}</code>: "
            f"<b>{html.escape(self.run_status)}</b><table>{rows}</table></div>"
        )

    # --- live runs --------------------------------------------------------------------

    def attach(self, run: Run) -> None:
        """Follow ``run`` as this process drives it (called by the notebook's live observer)."""
        self._run, self._store, self._wf = run, run.store, run.workflow
        self._driven_here = True
        with _live_lock:
            _live[run.run_id] = self

    def detach(self, run: Run) -> None:
        """The driver stopped (finished or suspended): show the final state now."""
        self._driven_here = False
        if self._layout_thread is not None:
            # A run shorter than its layout: wait for it, so the notebook saves the laid-out graph.
            self._layout_thread.join(timeout=30)
        self.push(run.state, now=True)
        if self._follow and not run.state.done:
            poller.watch(self)  # answered elsewhere, resumed elsewhere: keep following


def dag(target: Workflow | Run | str) -> DagWidget:
    """``kf.dag``: the DAG widget of a workflow, a run, or a run id read from the store."""
    from kernelflow.model import Workflow

    if isinstance(target, Workflow):
        return DagWidget.for_workflow(target)
    return DagWidget.for_run(target)


def live_widget(run_id: str) -> DagWidget | None:
    """The widget already showing ``run_id`` in this kernel, if any (a resume reuses it)."""
    with _live_lock:
        return _live.get(run_id)


def graph_of_workflow(wf: Workflow) -> dict[str, Any]:
    nodes = [[t.id, t.spec.kind if t.spec is not None else "python"] for t in wf.tasks]
    edges: list[list[str]] = []
    for t in wf.tasks:
        edges += [[d, t.id, "dep"] for d in t.deps]
        edges += [[d, t.id, "after"] for d in t.options.after if d not in t.deps]
    return {"nodes": nodes, "edges": edges}


def graph_of_definition(definition: dict[str, Any] | None) -> dict[str, Any]:
    """The graph of a registered definition (when the code is not loaded here)."""
    if not definition:
        return {"nodes": [], "edges": []}
    nodes, edges = [], []
    for t in definition.get("tasks", []):
        kind = (t.get("spec") or {}).get("kind") or str(t.get("ref", "python")).split(":", 1)[0]
        nodes.append([t["id"], kind])
        edges += [[d, t["id"], "dep"] for d in t.get("deps", [])]
        edges += [[d, t["id"], "after"] for d in (t.get("options") or {}).get("after", []) if d not in t.get("deps", [])]
    return {"nodes": nodes, "edges": edges}


def _definition(store: Any, state: RunState) -> dict[str, Any] | None:
    try:
        found = store.sql(
            "SELECT definition FROM workflows WHERE name = ? AND version = ?", [state.workflow, state.workflow_version]
        )
    except Exception:  # noqa: BLE001 - no definition: the widget shows the tasks it knows
        return None
    if found.height == 0:
        return None
    value = found.item(0, 0)
    return json.loads(value) if isinstance(value, str) else value


def _workflow_for(state: RunState, store: Any) -> Workflow | None:
    from kernelflow import catalog

    try:
        ns = catalog.user_namespace()
        return catalog.find(state.workflow, state.workflow_version, namespace=ns)
    except Exception:  # noqa: BLE001 - not loaded here: the stored definition gives the graph
        return None


_layouts: dict[str, dict[str, Any]] = {}
_LAYOUTS_KEPT = 64


def _graph_key(graph: dict[str, Any]) -> str:
    return json.dumps([graph.get("nodes", []), graph.get("edges", [])], separators=(",", ":"))


def _cached_layout(graph: dict[str, Any]) -> dict[str, Any] | None:
    return _layouts.get(_graph_key(graph))


def layout_of(graph: dict[str, Any]) -> dict[str, Any]:
    """Node boxes and edge paths from Graphviz ``dot`` (in points, y down), or ``{}``.

    Kept per graph (the last 64): every run of a workflow has the same one,
    and ``dot`` takes about 150 ms for 500 tasks.
    """
    from .dag_static import has_dot

    nodes = graph.get("nodes", [])
    if not nodes or not has_dot() or len(nodes) > LAYOUT_TASK_LIMIT:
        return {}
    key = _graph_key(graph)
    found = _layouts.get(key)
    if found is None:
        found = _dot_layout(graph)
        if len(_layouts) >= _LAYOUTS_KEPT:
            _layouts.pop(next(iter(_layouts)))
        _layouts[key] = found
    return found


def _dot_layout(graph: dict[str, Any]) -> dict[str, Any]:
    import graphviz

    nodes = graph.get("nodes", [])

    g = graphviz.Digraph(format="json")
    g.attr(rankdir="LR", nodesep="0.25", ranksep="0.45")
    g.attr("node", shape="box", fontname="Helvetica", fontsize="11", height="0.3")
    for tid, _kind in nodes:
        g.node(tid, label=tid)
    for a, b, _kind in graph.get("edges", []):
        g.edge(a, b)
    try:
        data = json.loads(g.pipe(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - a dot that fails: the browser lays it out
        return {}
    _, _, width, height = (float(v) for v in data["bb"].split(","))
    names: dict[int, str] = {}
    boxes: dict[str, list[float]] = {}
    for obj in data.get("objects", []):
        if "pos" not in obj:
            continue
        x, y = (float(v) for v in obj["pos"].split(","))
        names[obj["_gvid"]] = obj["name"]
        # Whole points are plenty on screen, and halve what the notebook saves.
        boxes[obj["name"]] = [round(x), round(height - y), round(float(obj["width"]) * 72), round(float(obj["height"]) * 72)]
    edges = []
    for e in data.get("edges", []):
        path = _spline_path(e.get("pos", ""), height)
        if path and e["tail"] in names and e["head"] in names:
            edges.append([names[e["tail"]], names[e["head"]], path])
    return {"width": round(width), "height": round(height), "nodes": boxes, "edges": edges}


def _spline_path(pos: str, height: float) -> str:
    """Graphviz's ``e,x,y p0 p1 ...`` B-spline as an SVG path (y flipped) ending at the arrow tip."""
    end = None
    points = []
    for part in pos.split():
        if part.startswith("e,"):
            _, x, y = part.split(",")
            end = (float(x), height - float(y))
        elif part.startswith("s,"):
            continue
        else:
            x, y = part.split(",")
            points.append((float(x), height - float(y)))
    if len(points) < 4:
        return ""
    d = f"M{points[0][0]:.0f},{points[0][1]:.0f}"
    for i in range(1, len(points) - 2, 3):
        (x1, y1), (x2, y2), (x3, y3) = points[i : i + 3]
        d += f"C{x1:.0f},{y1:.0f} {x2:.0f},{y2:.0f} {x3:.0f},{y3:.0f}"
    if end is not None:
        d += f"L{end[0]:.0f},{end[1]:.0f}"
    return d


def _attempts_and_logs(events: list[Any], tid: str) -> tuple[list[list[Any]], list[list[Any]]]:
    """``[[attempt, status, started (UTC text), duration_ms, problem]]`` and ``[[attempt, text]]`` of ``tid``."""
    from kernelflow.events import us_to_datetime

    ends = {ev.TASK_SUCCEEDED: "succeeded", ev.TASK_RETRYING: "failed", ev.TASK_FAILED: "failed", ev.TASK_TIMED_OUT: "timed_out"}
    started: dict[int, int] = {}
    rows: dict[int, list[Any]] = {}
    logs: list[list[Any]] = []
    for e in events:
        if e.task_id != tid or e.attempt is None:
            continue
        if e.type == ev.TASK_STARTED:
            started[e.attempt] = e.ts
            rows[e.attempt] = [e.attempt, "running", f"{us_to_datetime(e.ts):%H:%M:%S}", None, None]
        elif e.type in ends and e.attempt in rows:
            err = (e.payload or {}).get("error") or {}
            status = "timed_out" if (e.payload or {}).get("reason") == "timeout" else ends[e.type]
            rows[e.attempt][1] = status
            rows[e.attempt][3] = round((e.ts - started[e.attempt]) / 1e3, 1)
            rows[e.attempt][4] = f"{err.get('exc_type')}: {short_text(err.get('message'), 300)}" if err else None
        elif e.type == ev.TASK_LOGGED:
            logs.append([e.attempt, (e.payload or {}).get("text", "")])
    return [rows[a] for a in sorted(rows)], logs
