"""The anomaly detector: a run observer, registered through the same hook third parties use.

After each task attempt it compares the duration with the task's baseline
(z-score) and looks for a slowdown trend; while a task runs, a timer fires if
it runs far longer than its baseline allows (stuck); after each run it
compares the failure rate of the latest runs with the runs before them. The
history comes from the store (:class:`kernelflow.baselines.History`, cached
per store); the rules from :func:`kernelflow.alerting.rules_for`.

A finding becomes an ``AlertRaised`` event on the run (an alert widget shows
it in the run's cell) and is handed to the configured channels
(:mod:`kernelflow.alert_delivery`, in the background: a slow channel never
slows the run). Nothing here may fail a run: a detector error is a warning.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from typing import Any, Sequence

from kernelflow import events as ev
from kernelflow.alert_rules import AlertRules, Rule
from kernelflow.anomaly_checks import MIN_EXCESS_S, check_duration, check_trend
from kernelflow.events import Event
from kernelflow.plugins.hookspecs import hookimpl
from kernelflow.run import Run

STUCK_POLL_S = 0.5
"""How often running tasks are compared with their "stuck" limit."""
_histories: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_histories_lock = threading.Lock()


def history_of(store: Any) -> Any:
    """The one :class:`~kernelflow.baselines.History` of ``store`` in this process."""
    from kernelflow.baselines import History

    with _histories_lock:
        found = _histories.get(store)
        if found is None:
            found = _histories[store] = History(store)
        return found


class Detector:
    """Checks one run as its events arrive."""

    def __init__(self, run: Run, rules: AlertRules) -> None:
        self.rules = rules
        self.history = history_of(run.store)
        self.started: dict[tuple[str, int], int] = {}
        self.workflow, self.version = run.workflow.name, run.workflow.version
        # Load the baselines before the first task starts: a first load inside the
        # driver's event handling would delay the task's own end event, and so its duration.
        self.history.warm(self.workflow, self.version)
        self.limits: dict[str, Any] = {}
        self.stuck_seen: set[tuple[str, int]] = set()
        _watchdog.watch(self, run)

    # --- the observer ------------------------------------------------------------------

    def on_events(self, run: Run, events: Sequence[Event]) -> None:
        for e in events:
            try:
                self._see(run, e)
            except Exception as exc:  # noqa: BLE001 - monitoring must never fail a run
                warnings.warn(f"kernelflow's anomaly detector skipped {e.type} of run {run.run_id}: {exc}", RuntimeWarning, stacklevel=1)

    def on_finish(self, run: Run) -> None:
        _watchdog.forget(self)
        if run.status not in ("succeeded", "failed") or (run.state.error or "").startswith("interrupted"):
            return  # waiting, or stopped by a crash or Ctrl-C: not an outcome of the workflow
        try:
            self._after_run(run)
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"kernelflow's anomaly detector could not check run {run.run_id}: {exc}", RuntimeWarning, stacklevel=1)

    # --- tasks ---------------------------------------------------------------------------

    def _see(self, run: Run, e: Event) -> None:
        tid = e.task_id
        if tid is None or e.attempt is None:
            return
        if e.type == ev.TASK_STARTED and (e.payload or {}).get("executor") != "replay":
            self.started[(tid, e.attempt)] = e.ts
        elif e.type == ev.TASK_SUCCEEDED:
            start = self.started.pop((tid, e.attempt), None)
            if start is None:
                return  # reused or recorded, not run here: no duration to judge
            seconds = (e.ts - start) / 1e6
            self._after_attempt(run, tid, e.attempt, seconds)
            self.history.note_attempt(self.workflow, self.version, tid, run.run_id, seconds, True, attempt=e.attempt)
        elif e.type in (ev.TASK_FAILED, ev.TASK_RETRYING, ev.TASK_TIMED_OUT):
            start = self.started.pop((tid, e.attempt), None)
            if start is not None:
                self.history.note_attempt(self.workflow, self.version, tid, run.run_id, (e.ts - start) / 1e6, False, attempt=e.attempt)

    def _after_attempt(self, run: Run, tid: str, attempt: int, seconds: float) -> None:
        if seconds < MIN_EXCESS_S:
            # The duration check needs the value to exceed its mean by MIN_EXCESS_S, so it cannot
            # fire; the trend check is judged on the same tasks (a slowdown that ends under 0.1 s
            # is noise). This keeps the cost of checking a quick task to a comparison.
            return

        rule = self.rules.rule("duration", tid)
        trend = self.rules.rule("trend", tid)
        depth = max(rule.window, trend.recent + trend.window - 1)
        # Plain numbers for the checks (this runs after every task); the times only for an alert's plot.
        past = self.history.durations(self.workflow, self.version, tid, n=depth, exclude_run=run.run_id)
        if len(past) < min(rule.min_samples, trend.min_samples):
            return
        window = past[-rule.window :] if rule.since_s is None else self.history.durations(
            self.workflow, self.version, tid, n=rule.window, since_s=rule.since_s, exclude_run=run.run_id
        )
        finding = check_duration(window, seconds, rule, what=f"task {tid!r}")
        if finding is not None:
            points = self.history.durations_at(self.workflow, self.version, tid, n=rule.window, since_s=rule.since_s, exclude_run=run.run_id)
            raise_alert(run, finding, rule, tid, attempt, self.rules, points)
            return  # one alert per attempt: a 3x slowdown is also a trend
        # The recent runs and the window before them: those estimate the noise the slope is tested against.
        finding = check_trend([*past[-(trend.recent + trend.window - 1) :], seconds], trend, what=f"task {tid!r}")
        if finding is not None:
            points = self.history.durations_at(self.workflow, self.version, tid, n=trend.recent + trend.window - 1, exclude_run=run.run_id)
            raise_alert(run, finding, trend, tid, attempt, self.rules, points)

    def stuck_limit(self, run: Run, tid: str) -> tuple[float, Rule, list[tuple[Any, float]]] | None:
        """Seconds of running after which ``tid`` counts as stuck (cached per task), or None."""
        if tid in self.limits:
            return self.limits[tid]
        from kernelflow.anomaly_checks import STUCK_MIN_EXCESS_S, quantile

        rule = self.rules.rule("stuck", tid)
        found = None
        if rule.enabled:
            points = self.history.durations_at(self.workflow, self.version, tid, n=rule.window, since_s=rule.since_s, exclude_run=run.run_id)
            if len(points) >= rule.min_samples:
                p95 = quantile([v for _, v in points], 0.95)
                found = (max(rule.factor * p95, p95 + STUCK_MIN_EXCESS_S), rule, points)  # where check_stuck starts to fire
        self.limits[tid] = found
        return found

    def look_for_stuck(self, run: Run) -> None:
        """Called by the watchdog every half second while the run goes: tasks running too long."""
        from kernelflow.anomaly_checks import check_stuck

        if run._lease is None:
            return
        now = ev.now_us()
        for tid, task in list(run.state.tasks.items()):
            if task.status != "running" or task.started_at is None or (tid, task.attempt) in self.stuck_seen:
                continue
            limit = self.stuck_limit(run, tid)
            running = (now - task.started_at) / 1e6
            if limit is None or running < limit[0]:
                continue
            _, rule, points = limit
            finding = check_stuck([v for _, v in points], running, rule, what=f"task {tid!r}")
            if finding is not None:
                self.stuck_seen.add((tid, task.attempt))
                raise_alert(run, finding, rule, tid, task.attempt, self.rules, points)

    # --- runs ----------------------------------------------------------------------------

    def _after_run(self, run: Run) -> None:
        from kernelflow.anomaly_checks import check_error_rate, split_runs

        rule = self.rules.rule("error_rate")
        failed = run.status == "failed"
        past = self.history.run_failures_at(self.workflow, self.version, n=rule.window + rule.recent, exclude_run=run.run_id)
        baseline, recent = split_runs([*(f for _, f in past), failed], rule)
        finding = check_error_rate(baseline, recent, rule, what=f"workflow {self.workflow!r}")
        self.history.note_run(self.workflow, self.version, run.run_id, failed)
        if finding is not None:
            # The plot: the failure rate over the latest `recent` runs, as it was after each earlier run.
            flags = [f for _, f in past]
            width = rule.recent
            points = [(t, sum(flags[max(0, i - width + 1) : i + 1]) / len(flags[max(0, i - width + 1) : i + 1]))
                      for i, (t, _) in enumerate(past)]  # fmt: skip
            raise_alert(run, finding, rule, None, None, self.rules, points)


class _Watchdog:
    """One thread that looks, every :data:`STUCK_POLL_S`, for tasks running past their limit in every
    run being checked (the engine may run a task inline, so no event announces it in time)."""

    def __init__(self) -> None:
        self._runs: dict[int, tuple[Detector, weakref.ref[Run]]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, detector: Detector, run: Run) -> None:
        with self._lock:
            self._runs[id(detector)] = (detector, weakref.ref(run))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="kernelflow-stuck-watchdog", daemon=True)
                self._thread.start()

    def forget(self, detector: Detector) -> None:
        with self._lock:
            self._runs.pop(id(detector), None)

    def _loop(self) -> None:
        import time

        while True:
            time.sleep(STUCK_POLL_S)
            with self._lock:
                watched = list(self._runs.values())
            for detector, ref in watched:
                run = ref()
                if run is None:
                    self.forget(detector)
                    continue
                try:
                    detector.look_for_stuck(run)
                except Exception as exc:  # noqa: BLE001 - monitoring must never take anything down
                    warnings.warn(f"kernelflow's stuck-task check of run {run.run_id} failed: {exc}", RuntimeWarning, stacklevel=1)


_watchdog = _Watchdog()


def raise_alert(
    run: Run, finding: Any, rule: Rule, task: str | None, attempt: int | None, rules: AlertRules,
    points: Sequence[tuple[Any, float]] = (),
) -> Event | None:
    """Record ``finding`` as ``AlertRaised`` on ``run`` and hand it to the rules' channels.

    ``points``: the baseline's ``(time, value)`` history for the alert's plot; the finding's value is added at now.
    """
    from kernelflow.alert_delivery import deliver
    from kernelflow.events import us_to_datetime
    from kernelflow.widgets.alert import Alert

    now = ev.now_us()
    alert = Alert(
        workflow=run.workflow.name, task=task, run_id=run.run_id, metric=finding.metric, value=finding.value,
        baseline=finding.baseline, spread=finding.spread, score=finding.score, rule=rule.kind,
        severity=rule.severity, message=finding.message, raised_at=us_to_datetime(now),
        history=[*points, (us_to_datetime(now), finding.value)],
    )  # fmt: skip
    key = f"{run.workflow.name}/{task or '*'}/{rule.kind}"
    payload = {**alert.to_dict(), "key": key, "channels": list(rules.channels)}
    event = record(run, ev.ALERT_RAISED, task, attempt, payload)
    if event is None:
        return None
    from kernelflow.alerting import announce

    announce(run, alert)
    if rules.channels:
        deliver(alert, channels=rules.channels, run_id=run.run_id, alert_seq=event.seq, key=key, store=run.store, run=run)
    return event


def record(run: Run, type_: str, task: str | None, attempt: int | None, payload: dict[str, Any]) -> Event | None:
    """Append an event to ``run``: through its driver while this process drives it, else under its lease."""
    if run._lease is not None:
        return run._emit(type_, task, attempt, payload)
    from kernelflow.run_append import append_if_free

    for _ in range(40):  # a resume elsewhere may hold the run a moment
        event = append_if_free(run.store, run.run_id, type_, task, attempt, payload)
        if event is not None:
            return event
        threading.Event().wait(0.05)
    warnings.warn(f"kernelflow could not record {type_} on run {run.run_id}: another process drives it", RuntimeWarning, stacklevel=2)
    return None


@hookimpl
def kernelflow_run_observers(run: Run) -> list[Detector] | None:
    from kernelflow.alerting import rules_for

    rules = rules_for(run.workflow)
    if not any(r.enabled for r in rules.rules.values()) and not rules.tasks:
        return None
    return [Detector(run, rules)]
