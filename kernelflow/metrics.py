"""Prometheus metrics of a store, read from the store at each scrape.

The numbers are SQL over the store's views (store/views.sql), computed when
Prometheus scrapes, not counters kept in this process: every process that
writes to the store (notebooks, ``kernelflow run``, the scheduler) is counted,
and a restart loses nothing. One scrape is five queries (runs, task attempts,
alerts, events, and triggers when the store has that view) plus the circuit
breakers' state files; docs/metrics.md lists every metric and what a scrape
costs.

    from kernelflow.metrics import render, serve
    print(render(store))                       # the exposition text
    server, thread = serve(store, port=9464)   # http://127.0.0.1:9464/metrics

Counters here count what the store holds now: ``kernelflow gc`` removing old
runs, or a failed run resumed to success, makes a counter go down, which
Prometheus' ``rate()`` reads as a counter reset.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from .loopback import is_loopback
from .exceptions import KernelflowError

RUN_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 24 * 3600)
"""Upper bounds (seconds) of ``kernelflow_run_duration_seconds``'s buckets: runs take seconds to a day."""
TASK_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
"""Upper bounds (seconds) of ``kernelflow_task_duration_seconds``'s buckets: attempts take ms to an hour."""
CIRCUIT_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}
"""``kernelflow_circuit_state``'s values."""
ACTIVE_STATUSES = ("running", "waiting")
ENDED_STATUSES = ("succeeded", "failed")


def _bucket_columns(column: str, bounds: tuple[float, ...], where: str = "true") -> str:
    # Cumulative counts, as Prometheus buckets are: one FILTER per bound, in one scan.
    return ", ".join(f"count(*) FILTER (WHERE {where} AND {column} <= {b!r}) AS le_{i}" for i, b in enumerate(bounds))


def _le(bound: float) -> str:
    from prometheus_client.utils import floatToGoString

    return floatToGoString(bound)


class StoreCollector(Collector):
    """A prometheus-client collector that reads the metrics from ``store`` at each ``collect()``.

    Queries run on one worker thread the collector owns: the store keeps one
    DuckDB connection per thread (views and lookup tables set up on first use),
    and the HTTP server answers each scrape on a new thread, which would pay
    that set-up every time.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kernelflow-metrics")
        self._lock = threading.Lock()

    def describe(self) -> list[Any]:
        # Without describe() the registry would call collect() on register (a scrape's worth of SQL).
        return []

    def collect(self) -> Iterator[Any]:
        with self._lock:
            t0 = time.perf_counter()
            families = self._worker.submit(self._families).result()
            families.append(GaugeMetricFamily(
                "kernelflow_scrape_duration_seconds", "Time this scrape took to read the store.",
                value=time.perf_counter() - t0))  # fmt: skip
        yield from families

    def close(self) -> None:
        """Stop the worker thread."""
        self._worker.shutdown(wait=False)

    # --- the queries (on the worker thread) --------------------------------------

    def _families(self) -> list[Any]:
        out: list[Any] = []
        out.extend(self._runs())
        out.extend(self._tasks())
        out.append(self._circuits())
        out.append(self._alerts())
        triggers = self._triggers()
        if triggers is not None:
            out.append(triggers)
        events = self.store.sql("SELECT count(*) AS n FROM events").item()
        out.append(CounterMetricFamily("kernelflow_store_events", "Events in the store (every run, every type).",
                                       value=events))  # fmt: skip
        return out

    def _runs(self) -> list[Any]:
        df = self.store.sql(
            "SELECT coalesce(workflow, '') AS workflow, coalesce(status, 'pending') AS status, count(*) AS n, "
            "count(duration_s) FILTER (WHERE ended_at IS NOT NULL) AS ended, "
            "coalesce(sum(duration_s) FILTER (WHERE ended_at IS NOT NULL), 0) AS total_s, "
            + _bucket_columns("duration_s", RUN_BUCKETS, where="ended_at IS NOT NULL")
            + " FROM runs GROUP BY ALL ORDER BY workflow, status"
        )
        runs = CounterMetricFamily("kernelflow_runs", "Runs in the store by workflow and status "
                                   "(succeeded, failed; running and waiting ones are kernelflow_active_runs).",
                                   labels=["workflow", "status"])  # fmt: skip
        active = GaugeMetricFamily("kernelflow_active_runs", "Runs under way (running, or waiting at an approval "
                                   "gate or breakpoint).", labels=["workflow"])  # fmt: skip
        hist = HistogramMetricFamily("kernelflow_run_duration_seconds", "Duration of ended runs (start or last "
                                     "resume to end).", labels=["workflow"])  # fmt: skip
        active_by: dict[str, int] = {}
        by_workflow: dict[str, list[float]] = {}
        for row in df.iter_rows(named=True):
            wf = row["workflow"]
            if row["status"] in ACTIVE_STATUSES:
                active_by[wf] = active_by.get(wf, 0) + row["n"]
            else:
                runs.add_metric([wf, row["status"]], row["n"])
            acc = by_workflow.setdefault(wf, [0.0, 0.0] + [0.0] * len(RUN_BUCKETS))
            acc[0] += row["ended"]
            acc[1] += row["total_s"]
            for i in range(len(RUN_BUCKETS)):
                acc[2 + i] += row[f"le_{i}"]
        for wf, n in sorted(active_by.items()):
            active.add_metric([wf], n)
        for wf, acc in sorted(by_workflow.items()):
            if acc[0]:
                buckets = [(_le(b), acc[2 + i]) for i, b in enumerate(RUN_BUCKETS)] + [("+Inf", acc[0])]
                hist.add_metric([wf], buckets, acc[1])
        return [runs, active, hist]

    def _tasks(self) -> list[Any]:
        df = self.store.sql(
            "SELECT coalesce(workflow, '') AS workflow, task_id, status, count(*) AS n, "
            "count(duration_ms) AS timed, coalesce(sum(duration_ms), 0) / 1e3 AS total_s, "
            + _bucket_columns("duration_ms", tuple(b * 1e3 for b in TASK_BUCKETS))
            + " FROM task_attempts WHERE ended_at IS NOT NULL GROUP BY ALL ORDER BY workflow, task_id, status"
        )
        tasks = CounterMetricFamily("kernelflow_tasks", "Task attempts that ended, by outcome (succeeded, failed, "
                                    "timed_out, interrupted; a retried attempt counts as failed or timed_out).",
                                    labels=["workflow", "task", "status"])  # fmt: skip
        hist = HistogramMetricFamily("kernelflow_task_duration_seconds", "Duration of task attempts that ended, "
                                     "whatever their outcome.", labels=["workflow", "task"])  # fmt: skip
        acc_by: dict[tuple[str, str], list[float]] = {}
        for row in df.iter_rows(named=True):
            key = (row["workflow"], row["task_id"])
            tasks.add_metric([*key, row["status"] or "unknown"], row["n"])
            acc = acc_by.setdefault(key, [0.0, 0.0] + [0.0] * len(TASK_BUCKETS))
            acc[0] += row["timed"]
            acc[1] += row["total_s"]
            for i in range(len(TASK_BUCKETS)):
                acc[2 + i] += row[f"le_{i}"]
        for key, acc in sorted(acc_by.items()):
            if acc[0]:
                buckets = [(_le(b), acc[2 + i]) for i, b in enumerate(TASK_BUCKETS)] + [("+Inf", acc[0])]
                hist.add_metric(list(key), buckets, acc[1])
        return [tasks, hist]

    def _circuits(self) -> Any:
        from . import circuit_breaker as cb

        gauge = GaugeMetricFamily("kernelflow_circuit_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
                                  labels=["circuit"])  # fmt: skip
        table = getattr(self.store, "circuits", None)
        if table is None:
            return gauge
        now = time.time()
        for name, state in sorted(table.read_all().items()):
            gauge.add_metric([name], CIRCUIT_STATE_VALUES.get(cb.describe(state, None, now)["state"], 0))
        return gauge

    def _alerts(self) -> Any:
        df = self.store.sql(
            "SELECT coalesce(workflow, '') AS workflow, coalesce(rule, '') AS rule, coalesce(severity, '') AS severity, "
            "count(*) AS n FROM alerts GROUP BY ALL ORDER BY ALL"
        )
        counter = CounterMetricFamily("kernelflow_alerts", "Anomaly alerts raised, by workflow, check and severity.",
                                      labels=["workflow", "check", "severity"])  # fmt: skip
        for row in df.iter_rows(named=True):
            counter.add_metric([row["workflow"], row["rule"], row["severity"]], row["n"])
        return counter

    def _triggers(self) -> Any | None:
        # The scheduler's `triggers` view is newer than this module's first
        # release: a store (or kernelflow) without it just has no trigger metric.
        exists = self.store.sql("SELECT count(*) AS n FROM duckdb_views() WHERE view_name = 'triggers'").item()
        if not exists:
            return None
        df = self.store.sql(
            "SELECT coalesce(CAST(schedule AS VARCHAR), '') AS schedule, coalesce(CAST(outcome AS VARCHAR), '') AS outcome, "
            "count(*) AS n FROM triggers GROUP BY ALL ORDER BY ALL"
        )
        counter = CounterMetricFamily("kernelflow_triggers", "Schedule triggers by schedule and outcome.",
                                      labels=["schedule", "outcome"])  # fmt: skip
        for row in df.iter_rows(named=True):
            counter.add_metric([row["schedule"], row["outcome"]], row["n"])
        return counter


def registry_for(store: Any) -> CollectorRegistry:
    """A fresh registry holding only a :class:`StoreCollector` of ``store``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return registry


def render(store: Any) -> str:
    """The store's metrics in the Prometheus text exposition format."""
    from prometheus_client import generate_latest

    collector = StoreCollector(store)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        return generate_latest(registry).decode("utf-8")
    finally:
        collector.close()


def summary(store: Any) -> dict[str, Any]:
    """The same numbers as a JSON-friendly dict (``kernelflow metrics --json``):
    ``{metric name: [{"labels": {...}, "value": v}, ...]}`` with histogram
    samples (``_bucket``, ``_count``, ``_sum``) under the histogram's name."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[dict[str, Any]]] = {}
    for family in text_string_to_metric_families(render(store)):
        rows = out.setdefault(family.name + ("_total" if family.type == "counter" else ""), [])
        for s in family.samples:
            labels = dict(s.labels)
            if s.name != family.name and family.type != "counter":
                labels["sample"] = s.name[len(family.name) + 1 :]
            if s.name.endswith("_created"):
                continue
            rows.append({"labels": labels, "value": s.value})
    return out


def serve(store: Any, host: str = "127.0.0.1", port: int = 0, *, allow_remote: bool = False) -> tuple[Any, threading.Thread]:
    """Serve the store's metrics over HTTP at ``http://host:port/metrics`` on a daemon thread.

    ``port=0`` picks a free port (``server.server_port`` says which). Only a
    loopback ``host`` is accepted unless ``allow_remote=True``: the metrics
    name workflows and tasks, and the endpoint has no authentication.
    Returns ``(server, thread)``; ``server.shutdown()`` stops it.
    """
    from prometheus_client import start_http_server

    if not allow_remote and not is_loopback(host):
        raise KernelflowError(
            f"metrics would be served on {host!r}, which is not a loopback address; the endpoint has no "
            "authentication. Serve on 127.0.0.1 (and put a proxy in front), or pass allow_remote=True"
        )
    try:
        server, thread = start_http_server(port, addr=host, registry=registry_for(store))
    except OSError as exc:
        raise KernelflowError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; pick another port") from None
    return server, thread


__all__ = ["StoreCollector", "registry_for", "render", "serve", "summary"]
