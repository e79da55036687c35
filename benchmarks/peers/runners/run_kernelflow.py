"""kernelflow: ``kf.workflow`` over the generated functions, ``wf.run()``, events in a real store.

The store is the folder in ``$KERNELFLOW_HOME`` (run.py makes one per engine and
invocation, shared by that engine's processes, as a user's ``.kernelflow/``
is). ``$KERNELFLOW_FSYNC=1`` turns fsync on (one per write). After timing, the runner
counts this process's runs and events in the store: each run must have
recorded every event (3 per task, 2 per run); alerts the anomaly detector
raised on them are counted apart.
"""

from __future__ import annotations

import os
import time

import common


def main() -> None:
    spec = common.parse_args()
    workload, n = spec["workload"], int(spec["n"])
    started = time.perf_counter()
    import kernelflow as kf

    import_s = time.perf_counter() - started

    started = time.perf_counter()
    namespace: dict = {}
    exec(compile(common.source_of(workload, n), "<workload>", "exec"), namespace)
    fns = [namespace[name] for name in common.names_of(workload, n)]
    wf = kf.workflow(f"peers_{workload}_{n}", fns)
    define_s = time.perf_counter() - started
    store = kf.open_store()
    run_ids: list[str] = []

    def run_once():
        run = wf.run()
        run_ids.append(run.run_id)
        return run

    def check(run):
        if run.status != "succeeded":
            raise RuntimeError(f"run {run.run_id} ended {run.status}")

    def extra():
        ids = ", ".join(f"'{r}'" for r in run_ids)
        counts = kf.sql(
            f"SELECT count(*) FILTER (WHERE type <> 'AlertRaised') AS n, "
            f"count(*) FILTER (WHERE type = 'AlertRaised') AS alerts FROM events WHERE run_id IN ({ids})"
        )
        recorded, alerts = counts["n"][0], counts["alerts"][0]
        expected = len(run_ids) * (3 * len(fns) + 2)
        if recorded != expected:
            raise RuntimeError(f"the store holds {recorded} events of these runs, expected {expected}")
        return {
            "events_per_run": 3 * len(fns) + 2,
            # The anomaly detector (on by default) raises an alert when a task takes far longer
            # than its baseline, which a no-op task does now and then on a busy machine.
            "alerts": int(alerts),
            "fsync": bool(getattr(store, "fsync", None)),
            "store": os.environ.get("KERNELFLOW_HOME", ""),
        }

    common.measure(spec, run_once, check, import_s=import_s, define_s=define_s, extra=extra)


if __name__ == "__main__":
    main()
