"""The built-in ``opentelemetry`` plugin: runs and task attempts as OpenTelemetry spans.

Off until enabled, and free while off: importing this module does not import
OpenTelemetry, and for each run the hook only checks one flag and one
environment variable. Enable it in either of two ways (docs/observability.md):

* ``kf.use_opentelemetry()`` in the process (a notebook, a script): spans go
  to the globally configured tracer provider, or to the ``tracer_provider``
  given; ``kf.use_opentelemetry(enabled=False)`` turns it off again;
* ``KERNELFLOW_OTEL=1`` in the environment (``kernelflow run``, the scheduler,
  papermill): spans go to the global tracer provider, which the process sets
  up itself or through ``opentelemetry-instrument``.

What is called wins: :func:`use_opentelemetry` overrides the variable.

The span model, built from the events the engine records (their own ``ts``
are the spans' start and end times, so a trace lines up with the event log):

* one span ``run WORKFLOW`` per run, from ``RunStarted`` to ``RunSucceeded``,
  ``RunFailed`` (status ERROR) or ``RunSuspended`` (``kernelflow.status`` =
  ``waiting``, ``kernelflow.suspended`` = true). A resumed run gets a new
  span from ``RunResumed`` with the same ``kernelflow.run_id`` and
  ``kernelflow.resumed`` = true, linked to the span that ended at the
  suspension when that happened in this process. Its parent is the span
  active where the run was started, or, for a sub-workflow's run, the
  calling task's attempt span;
* one child span ``task TASK`` per attempt, from ``TaskStarted`` to the
  event that ends the attempt; a failed, retried or timed-out attempt has
  status ERROR and an ``exception`` event; retries are further spans;
* a zero-length ``task TASK`` span for a skipped task (``kernelflow.status``
  = ``skipped``) and for an output a fork reused (``reused``);
* flow and durable events (approvals, breakpoints, forEach items, circuit
  changes, fallbacks, alerts...) as span events on the attempt, or the run.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from kernelflow import events as ev
from kernelflow.plugins.hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from kernelflow.events import Event
    from kernelflow.run import Run

ENV = "KERNELFLOW_OTEL"
"""Set to 1/true/yes/on to trace every run of the process with the global tracer provider."""
TRACER_NAME = "kernelflow"
INSTALL_HINT = "Install it with `pip install 'kernelflow[otel]'` (opentelemetry-sdk)."

_TRUE = ("1", "true", "yes", "on")
_choice: tuple[bool, Any] | None = None  # set by use_opentelemetry: (enabled, tracer provider or None)
_warned = False
# Run id -> its live observer, so a sub-workflow's run span can hang under the calling attempt.
_live: weakref.WeakValueDictionary[str, RunSpans] = weakref.WeakValueDictionary()
# Run id -> the span context of its span that ended at a suspension, to link the resumed run's span.
_suspended: OrderedDict[str, Any] = OrderedDict()
_SUSPENDED_KEPT = 1000


def installed() -> bool:
    """Whether the OpenTelemetry API can be imported (without importing it)."""
    from importlib.util import find_spec

    try:
        return find_spec("opentelemetry") is not None and find_spec("opentelemetry.trace") is not None
    except (ImportError, ValueError):
        return False


def use_opentelemetry(tracer_provider: Any = None, *, enabled: bool = True) -> None:
    """Trace this process's runs with OpenTelemetry (docs/observability.md).

    A span per run and a child span per task attempt go to ``tracer_provider``
    (an ``opentelemetry.sdk.trace.TracerProvider``), or to the globally
    configured one when it is ``None``. ``enabled=False`` turns tracing off,
    whatever ``$KERNELFLOW_OTEL`` says. Takes effect for runs started after
    the call.
    """
    global _choice
    from kernelflow.exceptions import InputError, PluginError

    if not isinstance(enabled, bool):
        raise InputError(f"enabled must be True or False, got {enabled!r}")
    if enabled:
        if not installed():
            raise PluginError(f"kf.use_opentelemetry() needs OpenTelemetry, which is not installed. {INSTALL_HINT}")
        if tracer_provider is not None and not callable(getattr(tracer_provider, "get_tracer", None)):
            raise InputError(
                f"tracer_provider must be an OpenTelemetry TracerProvider (with get_tracer), got {tracer_provider!r}; "
                "pass None to use the globally configured provider"
            )
    _choice = (enabled, tracer_provider if enabled else None)


def enabled() -> bool:
    """Whether runs started now would be traced."""
    if _choice is not None:
        return _choice[0]
    return os.environ.get(ENV, "").strip().lower() in _TRUE


def _tracer() -> Any:
    global _warned
    if _choice is not None:
        on, provider = _choice
        if not on:
            return None
    elif os.environ.get(ENV, "").strip().lower() in _TRUE:
        provider = None
        if not installed():
            if not _warned:
                import warnings

                _warned = True
                warnings.warn(f"${ENV} is set but OpenTelemetry is not installed, so runs are not traced. {INSTALL_HINT}",
                              RuntimeWarning, stacklevel=2)  # fmt: skip
            return None
    else:
        return None
    from opentelemetry import trace

    from kernelflow import __version__

    if provider is None:
        return trace.get_tracer(TRACER_NAME, __version__)
    return provider.get_tracer(TRACER_NAME, __version__)


@hookimpl
def kernelflow_run_observers(run: Run) -> list[RunSpans] | None:
    """A :class:`RunSpans` for every run while tracing is enabled; nothing otherwise."""
    tracer = _tracer()
    if tracer is None:
        return None
    return [RunSpans(run, tracer)]


# --- the observer ------------------------------------------------------------------------

_ATTEMPT_ENDS = {
    ev.TASK_SUCCEEDED: "succeeded",
    ev.TASK_RETRYING: "retrying",
    ev.TASK_FAILED: "failed",
    ev.TASK_TIMED_OUT: "timed_out",
}
_NOT_SPAN_EVENTS = {ev.TASK_SCHEDULED, ev.TASK_LOGGED}  # queue time is an attribute; logs belong to a log pipeline
_BULKY_KEYS = {"value", "value_ref", "text", "preview", "how", "inputs", "input", "output", "output_ref", "traceback",
               "history", "replaced", "input_schema", "error"}  # fmt: skip
_MAX_TEXT = 1024


class RunSpans:
    """A :class:`kernelflow.observer_api.RunObserver` that turns one run's events into spans.

    Events arrive on the thread driving the run; a sub-workflow's run may ask
    for an attempt span from a worker thread, hence the lock. Events already
    handled (by ``seq``) are skipped, so catching up early is harmless.
    """

    def __init__(self, run: Run, tracer: Any) -> None:
        from opentelemetry import context, trace

        self._tracer = tracer
        self._run = run
        self._lock = threading.Lock()
        self._last_seq = -1
        self._span: Any = None
        self._attempts: dict[str, Any] = {}  # task id -> its open attempt span
        self._attempt_of: dict[str, int | None] = {}  # task id -> the attempt number of that span
        self._ended = False  # the run span ended (events after it, e.g. a late AlertDelivery, are dropped)
        self._scheduled: dict[str, int] = {}  # task id -> TaskScheduled ts
        # The span active where the run was started is its parent (a user's
        # `with tracer.start_as_current_span(...)` around wf.run()).
        self._parent = context.get_current()
        info = run.parent_info
        owner = _live.get(info.get("parent_run_id") or "")
        if owner is not None and info.get("parent_task"):
            span = owner.attempt_span(info["parent_task"])
            if span is not None:
                self._parent = trace.set_span_in_context(span)
        _live[run.run_id] = self

    # -- RunObserver ---------------------------------------------------------------------

    def on_events(self, run: Run, events: Sequence[Event]) -> None:
        with self._lock:
            self._handle(events)

    def on_finish(self, run: Run) -> None:
        with self._lock:
            if self._span is not None:  # the engine itself failed before recording the end
                from opentelemetry.trace import Status, StatusCode

                why = run.engine_error
                text = f"{type(why).__name__}: {why}" if why is not None else f"run ended as {run.status}"
                self._end_attempts(None, text)
                self._span.set_attribute("kernelflow.status", run.status)
                self._span.set_status(Status(StatusCode.ERROR, text))
                self._span.end()
                self._span = None
        if _live.get(run.run_id) is self:
            del _live[run.run_id]

    # -- for sub-workflows ---------------------------------------------------------------

    def attempt_span(self, task_id: str) -> Any:
        """The open attempt span of ``task_id`` (catching up on events not yet delivered), or None."""
        with self._lock:
            # The engine delivers events between steps of its loop; a sub-workflow
            # step run inline starts its child before that, so read ahead.
            pending = list(getattr(self._run, "_unseen", ()) or ())
            self._handle(pending)
            return self._attempts.get(task_id)

    # -- events to spans -----------------------------------------------------------------

    def _handle(self, events: Sequence[Event]) -> None:
        for e in events:
            if e.seq <= self._last_seq:
                continue
            self._last_seq = e.seq
            kind = e.type
            if kind in (ev.RUN_STARTED, ev.RUN_RESUMED):
                self._start_run(e)
            elif kind == ev.TASK_STARTED:
                self._start_attempt(e)
            elif kind in _ATTEMPT_ENDS:
                self._end_attempt(e, _ATTEMPT_ENDS[kind])
            elif kind == ev.TASK_SKIPPED:
                self._instant(e, "skipped", {"kernelflow.skip.reason": _text(e.payload.get("reason")),
                                             **_prefixed("kernelflow.skip.", e.payload, ("cause", "upstream", "skip_to"))})  # fmt: skip
            elif kind == ev.TASK_SCHEDULED:
                if e.task_id:
                    self._scheduled[e.task_id] = e.ts
            elif kind in (ev.RUN_SUCCEEDED, ev.RUN_FAILED, ev.RUN_SUSPENDED):
                self._end_run(e)
            elif kind not in _NOT_SPAN_EVENTS:
                self._span_event(e)

    def _base(self, e: Event) -> dict[str, Any]:
        return {
            "kernelflow.run_id": e.run_id,
            "kernelflow.workflow": e.workflow,
            "kernelflow.workflow_version": e.workflow_version,
        }

    def _ensure_run_span(self, e: Event) -> Any:
        if self._span is None and not self._ended:  # an observer attached late: the run span starts here
            self._start_run(e)
        return self._span

    def _start_run(self, e: Event) -> None:
        from opentelemetry.trace import Link, SpanKind

        if self._span is not None:
            self._span.end(end_time=_ns(e.ts))
        p = e.payload or {}
        attrs = {
            **self._base(e),
            "kernelflow.executor": self._run.workflow.executor,
            "kernelflow.status": "running",
            "kernelflow.via": str((e.actor or {}).get("via") or ""),
        }
        for key in ("max_parallel", "batch_id", "notebook", "source", "parent_run_id", "parent_task", "depth",
                    "forked_from", "from_step"):  # fmt: skip
            value = _attr(p.get(key))
            if value is not None:
                attrs[f"kernelflow.{key}"] = value
        if isinstance(p.get("tasks"), list):
            attrs["kernelflow.tasks"] = len(p["tasks"])
        trigger = p.get("trigger")
        if isinstance(trigger, Mapping):
            attrs.update(_prefixed("kernelflow.trigger.", trigger, ("kind", "schedule", "trigger_id")))
        links = []
        if e.type == ev.RUN_RESUMED:
            attrs["kernelflow.resumed"] = True
            attrs.update(_prefixed("kernelflow.resume.", p, ("from_status", "from_version", "interrupted")))
            if p.get("reset"):
                attrs["kernelflow.resume.reset"] = [str(t) for t in p["reset"]]
            before = _suspended.pop(e.run_id, None)
            if before is not None:
                links.append(Link(before, {"kernelflow.link": "resumed_from"}))
        self._span = self._tracer.start_span(
            f"run {e.workflow}", context=self._parent, kind=SpanKind.INTERNAL, attributes=attrs,
            links=links, start_time=_ns(e.ts),
        )  # fmt: skip

    def _end_run(self, e: Event) -> None:
        from opentelemetry.trace import Status, StatusCode

        span = self._ensure_run_span(e)
        if span is None:
            return
        p = e.payload or {}
        if e.type == ev.RUN_SUCCEEDED:
            span.set_attribute("kernelflow.status", "succeeded")
        elif e.type == ev.RUN_FAILED:
            error = _text(p.get("error")) or "the run failed"
            span.set_attribute("kernelflow.status", "failed")
            if p.get("failed_tasks"):
                span.set_attribute("kernelflow.failed_tasks", [str(t) for t in p["failed_tasks"]])
            if p.get("interrupted"):
                span.set_attribute("kernelflow.interrupted", True)
            self._end_attempts(e.ts, "the run ended while this attempt ran: " + error)
            span.set_status(Status(StatusCode.ERROR, error))
        else:  # suspended at approval gates or breakpoints: the run span ends, the run does not
            waiting = [w for w in p.get("waiting") or () if isinstance(w, Mapping)]
            span.set_attribute("kernelflow.status", "waiting")
            span.set_attribute("kernelflow.suspended", True)
            span.set_attribute("kernelflow.waiting_tasks", [str(w.get("task")) for w in waiting])
            span.set_attribute("kernelflow.waiting_kinds", [str(w.get("kind")) for w in waiting])
            span.add_event(e.type, {"kernelflow.seq": e.seq}, timestamp=_ns(e.ts))
            _suspended[e.run_id] = span.get_span_context()
            while len(_suspended) > _SUSPENDED_KEPT:
                _suspended.popitem(last=False)
        span.end(end_time=_ns(e.ts))
        self._span = None
        self._ended = True

    def _start_attempt(self, e: Event) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind

        tid = e.task_id or ""
        executor = str((e.payload or {}).get("executor") or "")
        run_span = self._ensure_run_span(e)
        if run_span is None:
            return
        open_span = self._attempts.get(tid)
        if open_span is not None:
            if self._attempt_of.get(tid) == e.attempt:
                return  # the same attempt, delivered twice
            open_span.set_attribute("kernelflow.status", "abandoned")
            open_span.end(end_time=_ns(e.ts))
        attrs = {
            **self._base(e),
            "kernelflow.task_id": tid,
            "kernelflow.attempt": e.attempt or 0,
            "kernelflow.executor": executor,
            "kernelflow.status": "running",
        }
        scheduled = self._scheduled.pop(tid, None)
        if scheduled is not None:
            attrs["kernelflow.queued_ms"] = max(0.0, (e.ts - scheduled) / 1000)
        span = self._tracer.start_span(f"task {tid}", context=trace.set_span_in_context(run_span),
                                       kind=SpanKind.INTERNAL, attributes=attrs, start_time=_ns(e.ts))  # fmt: skip
        self._attempts[tid] = span
        self._attempt_of[tid] = e.attempt

    def _end_attempt(self, e: Event, status: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        tid = e.task_id or ""
        span = self._attempts.pop(tid, None)
        p = e.payload or {}
        if span is None:  # an attempt that did not run here: a fork's reused output
            if status == "succeeded":
                extra = {"kernelflow.reused_from": str(p["reused_from"])} if p.get("reused_from") else {}
                self._instant(e, "reused" if extra else "succeeded", extra)
            return
        span.set_attribute("kernelflow.status", status)
        if status == "succeeded":
            for key in ("output_type", "fallback"):
                if p.get(key):
                    span.set_attribute(f"kernelflow.{key}", str(p[key]))
            if p.get("stored") is not None:
                span.set_attribute("kernelflow.output_stored", bool(p.get("stored")))
        else:
            error = p.get("error") if isinstance(p.get("error"), Mapping) else {}
            exc_type = str(error.get("exc_type") or ("TimeoutError" if status == "timed_out" else "Error"))
            message = _text(error.get("message")) or ""
            span.add_event("exception", {
                "exception.type": exc_type,
                "exception.message": message,
                "exception.stacktrace": str(error.get("traceback") or ""),
            }, timestamp=_ns(e.ts))  # fmt: skip
            if status == "retrying":
                span.set_attributes(_prefixed("kernelflow.retry.", p, ("reason", "delay_s", "next_attempt")))
            elif status == "timed_out" and p.get("timeout_s") is not None:
                span.set_attribute("kernelflow.timeout_s", float(p["timeout_s"]))
            if p.get("continued"):
                span.set_attribute("kernelflow.continued", True)
            span.set_status(Status(StatusCode.ERROR, f"{exc_type}: {message}" if message else exc_type))
        span.end(end_time=_ns(e.ts))

    def _end_attempts(self, ts: int | None, why: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        for span in self._attempts.values():
            span.set_attribute("kernelflow.status", "interrupted")
            span.set_status(Status(StatusCode.ERROR, why))
            span.end(end_time=None if ts is None else _ns(ts))
        self._attempts.clear()

    def _instant(self, e: Event, status: str, extra: Mapping[str, Any]) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind

        run_span = self._ensure_run_span(e)
        if run_span is None:
            return
        attrs = {**self._base(e), "kernelflow.task_id": e.task_id or "", "kernelflow.status": status}
        attrs.update({k: v for k, v in extra.items() if v is not None})
        span = self._tracer.start_span(f"task {e.task_id}", context=trace.set_span_in_context(run_span),
                                       kind=SpanKind.INTERNAL, attributes=attrs, start_time=_ns(e.ts))  # fmt: skip
        span.end(end_time=_ns(e.ts))

    def _span_event(self, e: Event) -> None:
        span = self._attempts.get(e.task_id or "") or self._ensure_run_span(e)
        if span is None:
            return
        attrs: dict[str, Any] = {"kernelflow.seq": e.seq}
        if e.task_id:
            attrs["kernelflow.task_id"] = e.task_id
        if e.attempt is not None:
            attrs["kernelflow.attempt"] = e.attempt
        for key, value in (e.payload or {}).items():
            if key in _BULKY_KEYS:
                continue
            value = _attr(value)
            if value is not None:
                attrs[f"kernelflow.{key}"] = value
        if isinstance((e.payload or {}).get("error"), (str, Mapping)):
            error = e.payload["error"]
            attrs["kernelflow.error"] = _text(error.get("message") if isinstance(error, Mapping) else error)
        span.add_event(e.type, attrs, timestamp=_ns(e.ts))


# --- small helpers -----------------------------------------------------------------------


def _ns(us: int) -> int:
    return int(us) * 1000


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def _attr(value: Any) -> Any:
    """``value`` as an attribute value (scalars, lists of one scalar type), or None to leave it out."""
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, (list, tuple)) and value and len(value) <= 100:
        kinds = {type(v) for v in value}
        if len(kinds) == 1 and kinds <= {str, int, float, bool}:
            return [_text(v) if isinstance(v, str) else v for v in value]
    return None


def _prefixed(prefix: str, payload: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    out = {}
    for key in keys:
        value = _attr(payload.get(key))
        if value is not None:
            out[prefix + key] = value
    return out
