"""The history the anomaly detector compares with, read from the store once and kept in memory.

:class:`History` (one per store) answers the detector's two questions, after
each task and each run, without a query in the steady state:

* :meth:`History.durations`: seconds of the latest successful attempts of a
  task of one workflow version;
* :meth:`History.run_failures`: whether each of the latest finished runs of
  that workflow version failed.

How it stays fast with a million attempts in the store
(``benchmarks/bench_alerts.py``, docs/benchmarks.md "Anomaly detector cost"):

1. **First load**: the first question about a workflow version runs ONE
   query over the events that ended in the last :data:`FIRST_WINDOW_S`
   (6 h; the store's files are time-ordered, so DuckDB skips the older ones)
   with filters on workflow, version and event type, and window functions
   that keep the latest :data:`DEPTH` successful attempts of each task and
   the latest :data:`DEPTH` finished runs: every task of the version at
   once. Only if a question needs more than that window holds (a task with
   fewer attempts in it than asked for, too few runs) is the whole history
   read, once per version.
2. **Notes**: the detector tells the History what this process just did
   (:meth:`~History.note_attempt`, :meth:`~History.note_run`), so the next
   check sees it without a query.
3. **Refresh**: a workflow version's cache older than ``max_age_s``
   (:data:`REFRESH_AFTER_S`, 30 s) is brought up to date with an incremental
   query over the events recorded since the last one (minus
   :data:`REFRESH_OVERLAP_S` for late writers; DuckDB skips the files that
   end before). The check that finds the cache stale does not wait for it:
   the query runs on a background thread (one per History) and the check
   answers from the cache as it is (``background=False``: the check runs the
   query itself). **Staleness bound**: runs of other processes reach the
   checks at most ``max_age_s`` after they were recorded, plus one refresh
   (the first check after that starts it, the ones after it see it); this
   process's own runs at once, through the notes. An attempt of another
   process that ran longer than the refresh's look-back for its start (3x the
   longest cached duration plus a minute, at most a day) is only picked up by
   a full load (a new History, or :meth:`~History.forget`).

The first load and a deeper one (asking for more than the depth) run on the
thread that asks, holding only that version's lock: a check needs the
baseline now. :meth:`History.warm` does it ahead, e.g. on a thread started
with the run.

Durations are measured as ``task_attempts.duration_ms`` is (and the
``task_baselines`` view): the executor's own ``duration_ms`` when its
``TaskSucceeded`` reports one, else the time from the attempt's
``TaskStarted`` to its ``TaskSucceeded``.
A run counts once it has finished: its last run-level event is
``RunSucceeded`` or ``RunFailed``; a ``RunFailed`` of an interrupted run (the
process was stopped, ``payload.interrupted``) is left out: it says nothing
about the workflow. A run that is resumed again leaves the list until it
finishes again.

The queries read the folder store's ``_events_raw`` relation (exact UTC
micros, which DuckDB can prune files by); on a store without it they fall
back to the public ``events`` view, correct but slower.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from . import events as ev
from .exceptions import StoreError

DEPTH = 100
"""Successful attempts kept per task, and finished runs per workflow version.
The default rules need at most 40 (trend: 10 recent + 30 for the noise;
error rate: 10 recent + 30 baseline); asking for more than the depth reloads
with a larger one."""
REFRESH_AFTER_S = 30.0
"""A workflow version's cache older than this is refreshed from the store
at its next use (what other processes recorded meanwhile)."""
REFRESH_OVERLAP_S = 60.0
"""A refresh re-reads this much before the last one began: events another
process stamped just before and appended just after (duplicates are merged)."""
START_LOOKBACK_CAP_S = 86_400.0
"""The longest a refresh looks back for the ``TaskStarted`` of an attempt whose
``TaskSucceeded`` it found."""
FIRST_WINDOW_S = 6 * 3600.0
"""The first load of a workflow version reads only what ended in this window
(DuckDB skips the older files): enough for a version run every few minutes.
If a question needs more (a task with fewer attempts in the window than
asked for, or too few runs), the whole history is read, once."""
WINDOW_START_LOOKBACK_S = 3600.0
"""The window load looks this much further back for the starts of the
attempts that ended in it; an attempt that ran longer than that and ended
early in the window is only found by a full load."""

_log = logging.getLogger("kernelflow.alerts")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_TASK_TYPES = (ev.TASK_STARTED, ev.TASK_SUCCEEDED)
_RUN_TYPES = tuple(ev.RUN_EVENT_TYPES)
_FINISHED = (ev.RUN_SUCCEEDED, ev.RUN_FAILED)

_RAW_SOURCE = "_events_raw"
_VIEW_SOURCE = (
    "(SELECT run_id, seq, epoch_us(ts) AS ts_us, type, workflow, workflow_version, task_id, attempt, payload "
    "FROM events)"
)


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _list(types: tuple[str, ...]) -> str:
    return ", ".join(_lit(t) for t in types)


# The latest $depth successful attempts of each task of the version (with
# the executor's own duration when it reports one, as task_attempts does),
# and its latest $run_depth finished runs plus the latest unfinished ones (a
# refresh drops those from the cache). Each half scans the version's events
# once; DuckDB skips files and row groups older than the time bounds.
_LOAD_SQL = f"""
SELECT task_id, run_id, attempt, ended_us,
       coalesce(TRY_CAST(payload ->> 'duration_ms' AS DOUBLE) / 1e3, (ended_us - started_us) / 1e6) AS duration_s,
       NULL::BOOLEAN AS failed, NULL::BOOLEAN AS counts
FROM (
    SELECT task_id, run_id, attempt,
           min(ts_us) FILTER (WHERE type = {_lit(ev.TASK_STARTED)}) AS started_us,
           max(ts_us) FILTER (WHERE type = {_lit(ev.TASK_SUCCEEDED)}) AS ended_us,
           arg_max(payload, ts_us) FILTER (WHERE type = {_lit(ev.TASK_SUCCEEDED)}) AS payload
    FROM {{source}}
    WHERE workflow = $workflow AND workflow_version = $version AND ts_us >= $starts_since
      AND type IN ({_list(_TASK_TYPES)}) AND task_id IS NOT NULL AND attempt IS NOT NULL
    GROUP BY task_id, run_id, attempt
)
WHERE ended_us >= $since AND (started_us IS NOT NULL OR payload ->> 'duration_ms' IS NOT NULL)
QUALIFY row_number() OVER (PARTITION BY task_id ORDER BY ended_us DESC, run_id DESC, attempt DESC) <= $depth
UNION ALL BY NAME
SELECT NULL::VARCHAR AS task_id, run_id, NULL::BIGINT AS attempt, ended_us, NULL::DOUBLE AS duration_s,
       last_type = {_lit(ev.RUN_FAILED)} AS failed,
       last_type IN ({_list(_FINISHED)}) AND NOT interrupted AS counts
FROM (
    SELECT run_id, max(ts_us) AS ended_us, arg_max(type, seq) AS last_type,
           arg_max(CASE WHEN type = {_lit(ev.RUN_FAILED)}
                        THEN coalesce(TRY_CAST(payload ->> 'interrupted' AS BOOLEAN), false)
                        ELSE false END, seq) AS interrupted
    FROM {{source}}
    WHERE workflow = $workflow AND workflow_version = $version AND ts_us >= $since
      AND type IN ({_list(_RUN_TYPES)})
    GROUP BY run_id
)
QUALIFY row_number() OVER (PARTITION BY counts ORDER BY ended_us DESC, run_id DESC) <= $run_depth
"""


@dataclass
class _Entry:
    """The cache of one (workflow, version)."""

    depth: int
    run_depth: int
    attempts: dict[str, dict[tuple[str, int], tuple[int, float]]] = field(default_factory=dict)
    """task -> {(run_id, attempt): (ended_us, duration_s)}; a noted attempt has a
    negative attempt number until the store's own record replaces it."""
    runs: dict[str, tuple[int, bool]] = field(default_factory=dict)
    """run_id -> (ended_us, failed)"""
    loaded: bool = False
    refreshing: bool = False
    """A background refresh is scheduled or running."""
    covers_us: int | None = None
    """The cache holds what ended since then (up to the depths); None: since the beginning."""
    synced_us: int = 0
    """Wall-clock micros when the last query began: the next refresh reads from there."""
    refreshed_at: float = float("-inf")
    """Monotonic seconds of the last query."""
    notes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _sorted: dict[str, list[tuple[int, str, float]]] = field(default_factory=dict)
    _sorted_runs: list[tuple[int, str, bool]] | None = None

    def changed(self) -> None:
        """Forget the sorted views (call with ``lock`` held after any change)."""
        self._sorted.clear()
        self._sorted_runs = None

    def sorted_attempts(self, task: str) -> list[tuple[int, str, float]]:
        """``(ended_us, run_id, duration_s)`` of ``task``, oldest first (``lock`` held; do not modify)."""
        items = self._sorted.get(task)
        if items is None:
            items = self._sorted[task] = sorted(
                (end, key[0], d) for key, (end, d) in self.attempts.get(task, {}).items()
            )
        return items

    def sorted_runs(self) -> list[tuple[int, str, bool]]:
        """``(ended_us, run_id, failed)``, oldest first (``lock`` held; do not modify)."""
        if self._sorted_runs is None:
            self._sorted_runs = sorted((end, run_id, failed) for run_id, (end, failed) in self.runs.items())
        return self._sorted_runs


class History:
    """The recent history of each workflow version in ``store``, for the anomaly checks.

    ``max_age_s``: how stale a cached workflow version may get before its next
    use refreshes it from the store (:data:`REFRESH_AFTER_S`). ``depth``:
    attempts kept per task and runs per version (:data:`DEPTH`).
    ``first_window_s``: how far back the first load of a version looks before
    it reads the whole history (:data:`FIRST_WINDOW_S`; ``None``: read it all
    at once). ``background``: refresh stale versions on a background thread
    (the default) or in the check that finds them stale. ``clock`` is the
    wall clock (``time.time``; tests replace it). Safe to use from several
    threads; a load holds only its own workflow version's lock.
    """

    def __init__(
        self,
        store: Any,
        *,
        max_age_s: float = REFRESH_AFTER_S,
        depth: int = DEPTH,
        first_window_s: float | None = FIRST_WINDOW_S,
        background: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_age_s < 0:
            raise ValueError(f"max_age_s must be >= 0, got {max_age_s!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a whole number of at least 1, got {depth!r}")
        if first_window_s is not None and not first_window_s > 0:
            raise ValueError(f"first_window_s must be > 0 or None, got {first_window_s!r}")
        self.store = store
        self.max_age_s = float(max_age_s)
        self.depth = depth
        self.first_window_s = first_window_s
        self._clock = clock
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._lock = threading.Lock()
        self._source = _RAW_SOURCE
        self.background = background
        self._stats_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._queue: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self.stats: dict[str, float] = {"window_loads": 0, "full_loads": 0, "refreshes": 0, "query_s": 0.0}
        """Queries run so far, by kind, and the seconds they took in all."""

    # --- what the detector asks ---------------------------------------------------------

    def durations(
        self,
        workflow: str,
        version: str,
        task: str,
        *,
        n: int,
        since_s: float | None = None,
        exclude_run: str | None = None,
    ) -> list[float]:
        """Seconds of the latest ``n`` successful attempts of ``task`` in that
        workflow version, oldest first; only those that ended in the last
        ``since_s`` seconds if given, and none of run ``exclude_run`` (the run
        being checked)."""
        return [d for _, d in self._attempts(workflow, version, task, n, since_s, exclude_run)]

    def durations_at(
        self,
        workflow: str,
        version: str,
        task: str,
        *,
        n: int,
        since_s: float | None = None,
        exclude_run: str | None = None,
    ) -> list[tuple[datetime, float]]:
        """:meth:`durations` with the time each attempt ended (UTC): the
        ``(time, value)`` points of ``Alert.history``."""
        return [(_when(end), d) for end, d in self._attempts(workflow, version, task, n, since_s, exclude_run)]

    def run_failures(self, workflow: str, version: str, *, n: int, exclude_run: str | None = None) -> list[bool]:
        """Whether each of the latest ``n`` finished runs of that workflow
        version failed (``True``), oldest first; never run ``exclude_run``."""
        return [f for _, f in self._runs(workflow, version, n, exclude_run)]

    def run_failures_at(
        self, workflow: str, version: str, *, n: int, exclude_run: str | None = None
    ) -> list[tuple[datetime, bool]]:
        """:meth:`run_failures` with the time each run ended (UTC)."""
        return [(_when(end), f) for end, f in self._runs(workflow, version, n, exclude_run)]

    def _attempts(
        self, workflow: str, version: str, task: str, n: int, since_s: float | None, exclude_run: str | None
    ) -> list[tuple[int, float]]:
        _check_n(n)
        if since_s is not None and not since_s > 0:
            raise ValueError(f"since_s must be > 0 or None, got {since_s!r}")
        cutoff = None if since_s is None else int((self._clock() - since_s) * 1e6)
        entry = self._entry(workflow, version, n + (exclude_run is not None), task=task, cutoff_us=cutoff)
        with entry.lock:
            items = entry.sorted_attempts(task)
        if exclude_run is not None or cutoff is not None:
            items = [
                (end, run_id, d)
                for end, run_id, d in items
                if run_id != exclude_run and (cutoff is None or end >= cutoff)
            ]
        return [(end, d) for end, _, d in items[-n:]]

    def _runs(self, workflow: str, version: str, n: int, exclude_run: str | None) -> list[tuple[int, bool]]:
        _check_n(n)
        entry = self._entry(workflow, version, n + (exclude_run is not None))
        with entry.lock:
            items = entry.sorted_runs()
        if exclude_run is not None:
            items = [item for item in items if item[1] != exclude_run]
        return [(end, failed) for end, _, failed in items[-n:]]

    # --- what the detector tells ---------------------------------------------------------

    def note_attempt(
        self,
        workflow: str,
        version: str,
        task: str,
        run_id: str,
        duration_s: float,
        succeeded: bool,
        *,
        attempt: int | None = None,
    ) -> None:
        """An attempt of this process just ended (after its events were appended).

        Only successful ones count; a workflow version not loaded yet is left
        alone (its first load will read the attempt from the store). Pass the
        ``attempt`` number when known: the store's record of the same attempt
        (read by a refresh before or after the note) then replaces it exactly;
        without it, a store record of the same task and run replaces the note.
        """
        if not succeeded:
            return
        entry = self._get(workflow, version)
        if entry is None:
            return
        now = int(self._clock() * 1e6)
        with entry.lock:
            if not entry.loaded:
                return
            per_task = entry.attempts.setdefault(task, {})
            if attempt is not None and attempt > 0:
                if (run_id, attempt) in per_task:
                    return  # a refresh has read it from the store already
                key = (run_id, attempt)
            else:
                entry.notes += 1
                key = (run_id, -entry.notes)
            per_task[key] = (now, float(duration_s))
            _trim(per_task, entry.depth)
            entry.changed()

    def note_run(self, workflow: str, version: str, run_id: str, failed: bool) -> None:
        """A run of this process just finished (after its last event was appended).
        Do not note a run that was interrupted (stopped, to be resumed): it says
        nothing about the workflow."""
        entry = self._get(workflow, version)
        if entry is None:
            return
        now = int(self._clock() * 1e6)
        with entry.lock:
            if not entry.loaded:
                return
            entry.runs[run_id] = (now, bool(failed))
            _trim_runs(entry.runs, entry.run_depth)
            entry.changed()

    def warm(self, workflow: str, version: str) -> None:
        """Load (or refresh) a workflow version now, e.g. on a background thread
        when a run starts, so that its first check finds the cache ready."""
        self._entry(workflow, version, 1)

    def forget(self, workflow: str | None = None, version: str | None = None) -> None:
        """Drop cached versions (all, a workflow's, or one): the next use loads them again."""
        with self._lock:
            for key in list(self._entries):
                if (workflow is None or key[0] == workflow) and (version is None or key[1] == version):
                    del self._entries[key]

    # --- the cache -------------------------------------------------------------------------

    def _get(self, workflow: str, version: str) -> _Entry | None:
        with self._lock:
            return self._entries.get((workflow, version))

    def _entry(
        self, workflow: str, version: str, need: int, *, task: str | None = None, cutoff_us: int | None = None
    ) -> _Entry:
        """The version's cache, loaded, fresh (or being refreshed), and holding
        ``need`` attempts of ``task`` (or runs, for ``task=None``) if the store has them."""
        key = (workflow, version)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(depth=self.depth, run_depth=self.depth)
        with entry.lock:
            deeper = need > (entry.depth if task is not None else entry.run_depth)
            if deeper:
                if task is not None:
                    entry.depth = need
                else:
                    entry.run_depth = need
                self._load(entry, workflow, version, "full")
            elif not entry.loaded:
                self._load(entry, workflow, version, "full" if self.first_window_s is None else "window")
            elif not entry.refreshing and time.monotonic() - entry.refreshed_at > self.max_age_s:
                if self.background:
                    entry.refreshing = True
                    self._schedule(key)
                else:
                    self._load(entry, workflow, version, "refresh")
            if entry.covers_us is not None and not _enough(entry, need, task, cutoff_us):
                self._load(entry, workflow, version, "full")
        return entry

    def _load(self, entry: _Entry, workflow: str, version: str, kind: str) -> None:
        """Query the store and update the cache, ``entry.lock`` held throughout."""
        began_us, params = self._params(entry, workflow, version, kind)
        self._apply(entry, kind, self._timed_query(kind, params), began_us, params["since"])

    def _params(self, entry: _Entry, workflow: str, version: str, kind: str) -> tuple[int, dict[str, Any]]:
        """What to ask (``entry.lock`` held): the ``full`` history, a ``window``
        of the recent past, or a ``refresh`` of what changed since the last query."""
        began_us = int(self._clock() * 1e6)
        if kind == "full":
            since = starts_since = 0
        elif kind == "window":
            assert self.first_window_s is not None
            since = began_us - int(self.first_window_s * 1e6)
            starts_since = since - int(WINDOW_START_LOOKBACK_S * 1e6)
        else:
            since = entry.synced_us - int(REFRESH_OVERLAP_S * 1e6)
            longest = max((d for per in entry.attempts.values() for _, d in per.values()), default=0.0)
            starts_since = since - int(min(3 * longest + 60.0, START_LOOKBACK_CAP_S) * 1e6)
        return began_us, {
            "workflow": workflow,
            "version": version,
            "since": since,
            "starts_since": starts_since,
            "depth": entry.depth,
            "run_depth": entry.run_depth,
        }

    def _timed_query(self, kind: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        t0 = time.perf_counter()
        rows = self._query(params)
        with self._stats_lock:
            self.stats["query_s"] += time.perf_counter() - t0
            self.stats[{"full": "full_loads", "window": "window_loads", "refresh": "refreshes"}[kind]] += 1
        return rows

    def _apply(self, entry: _Entry, kind: str, rows: list[tuple[Any, ...]], began_us: int, since: int) -> None:
        """Put a query's rows into the cache (``entry.lock`` held)."""
        if kind != "refresh":
            entry.attempts = {}
            entry.runs = {}
            entry.covers_us = None if kind == "full" else since
        for task, run_id, attempt, ended_us, duration_s, failed, counts in rows:
            if task is not None:
                per_task = entry.attempts.setdefault(task, {})
                _merge_attempt(per_task, run_id, int(attempt), int(ended_us), float(duration_s))
            elif counts:
                entry.runs[run_id] = (int(ended_us), bool(failed))
            elif entry.runs.get(run_id, (began_us, False))[0] < began_us:
                # Resumed or interrupted since: not a finished run now. (A run
                # noted while the query ran finished after the query looked.)
                del entry.runs[run_id]
        for per_task in entry.attempts.values():
            _trim(per_task, entry.depth)
        _trim_runs(entry.runs, entry.run_depth)
        entry.changed()
        entry.synced_us = max(entry.synced_us, began_us)
        entry.refreshed_at = time.monotonic()
        entry.loaded = True

    # --- the background refresh -------------------------------------------------------------

    def _schedule(self, key: tuple[str, str]) -> None:
        with self._lock:
            worker = self._worker
            if worker is None or not worker.is_alive():  # first use, or a forked child
                self._queue = queue.SimpleQueue()
                worker = self._worker = threading.Thread(
                    target=self._refresh_loop, args=(self._queue,), name="kernelflow-history-refresh", daemon=True
                )
                worker.start()
            self._queue.put(key)

    def _refresh_loop(self, jobs: queue.SimpleQueue[tuple[str, str]]) -> None:
        while True:
            workflow, version = jobs.get()
            entry = self._get(workflow, version)
            if entry is None:  # forgotten meanwhile
                continue
            try:
                with entry.lock:
                    began_us, params = self._params(entry, workflow, version, "refresh")
                rows = self._timed_query("refresh", params)  # without the lock: checks go on meanwhile
                with entry.lock:
                    self._apply(entry, "refresh", rows, began_us, params["since"])
            except Exception as exc:  # noqa: BLE001 - a refresh must never take the detector down
                _log.warning("could not refresh the history of %s %s from the store: %s", workflow, version, exc)
                with entry.lock:
                    entry.refreshed_at = time.monotonic()  # try again after max_age_s, not at once
            finally:
                with entry.lock:
                    entry.refreshing = False

    def wait_refreshed(self, timeout: float = 10.0) -> bool:
        """Wait until no background refresh is scheduled or running (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                entries = list(self._entries.values())
            if not any(e.refreshing for e in entries):
                return True
            time.sleep(0.002)
        return False

    def _query(self, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        try:
            frame = self.store.sql(_LOAD_SQL.format(source=self._source), params)
        except StoreError as exc:
            if self._source != _RAW_SOURCE or _RAW_SOURCE not in str(exc):
                raise
            self._source = _VIEW_SOURCE  # a store without the folder store's raw relation
            frame = self.store.sql(_LOAD_SQL.format(source=self._source), params)
        return frame.select("task_id", "run_id", "attempt", "ended_us", "duration_s", "failed", "counts").rows()


def _enough(entry: _Entry, need: int, task: str | None, cutoff_us: int | None) -> bool:
    """Whether a cache that covers only a recent window answers the question."""
    assert entry.covers_us is not None
    if task is None:
        return len(entry.runs) >= need
    if cutoff_us is not None and cutoff_us >= entry.covers_us:
        return True  # everything since the cutoff is in the window
    return len(entry.attempts.get(task, ())) >= need


def _merge_attempt(per_task: dict[tuple[str, int], tuple[int, float]], run_id: str, attempt: int, ended_us: int, duration_s: float) -> None:
    """The store's record of an attempt replaces this process's note of it, if any."""
    if (run_id, attempt) not in per_task:
        noted = [k for k in per_task if k[0] == run_id and k[1] < 0]
        if noted:
            del per_task[max(noted, key=lambda k: k[1])]  # the earliest note (-1 before -2)
    per_task[(run_id, attempt)] = (ended_us, duration_s)


def _trim(per_task: dict[tuple[str, int], tuple[int, float]], depth: int) -> None:
    if len(per_task) > depth + depth // 4:
        for key, _ in sorted(per_task.items(), key=lambda kv: (kv[1][0], kv[0][0]))[: len(per_task) - depth]:
            del per_task[key]


def _trim_runs(runs: dict[str, tuple[int, bool]], depth: int) -> None:
    if len(runs) > depth + depth // 4:
        for key, _ in sorted(runs.items(), key=lambda kv: (kv[1][0], kv[0]))[: len(runs) - depth]:
            del runs[key]


def _when(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a whole number of at least 1, got {n!r}")
