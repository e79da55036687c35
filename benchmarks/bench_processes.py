#!/usr/bin/env python
"""What the ``processes`` executor costs next to ``threads``.

    python benchmarks/bench_processes.py           # ~30 s on an idle 2-core machine
    python benchmarks/bench_processes.py --quick   # smoke run

Measured (medians, ``time.perf_counter``, a fresh store in a temp folder):

1. Worker start: a one-task workflow on ``processes`` minus the same on
   ``threads`` (each run starts its workers; this is the first task's wait).
2. Per-task overhead on a warm worker: a chain of no-op tasks (``t{i}``
   takes ``t{i-1}``, so one worker serves them all), from ``t1``'s
   ``TaskStarted`` to the last ``TaskSucceeded`` (the worker has started by
   then) divided by the tasks, on each executor, and the difference.
3. A fan-out of no-op tasks (one root, N children, ``max_parallel=8``):
   per task on each executor, over the whole run (worker start included)
   and from the first child that ended to the last.
4. CPU-bound speed-up: 4 tasks of pure-Python arithmetic (about 1 s each
   alone) on threads and on processes.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import kernelflow as kf
from kernelflow.plugins.process_executor import cpu_count
from kernelflow.store_access import close_stores


def _noop_chain(n: int) -> list[Callable[..., Any]]:
    fns = []
    for i in range(n):
        if i == 0:
            def f() -> int:
                return 0
        else:
            ns = {"__name__": "__main__"}  # as in a notebook; a function without a module makes cloudpickle search sys.modules
            exec(f"def f(t{i - 1}):\n    return t{i - 1} + 1", ns)  # noqa: S102
            f = ns["f"]
        f.__name__ = f.__qualname__ = f"t{i}"
        fns.append(f)
    return fns


def _fan_out(n: int) -> list[Callable[..., Any]]:
    def root() -> int:
        return 1

    fns: list[Callable[..., Any]] = [root]
    for i in range(n):
        ns: dict[str, Any] = {"__name__": "__main__"}
        exec(f"def c{i}(root):\n    return root", ns)  # noqa: S102
        fns.append(ns[f"c{i}"])
    return fns


def burn(i: int, n: int = 10_000_000) -> int:
    total = 0
    for k in range(n):
        total += k * i % 7
    return total


def _timed(fn: Callable[[], Any], reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few tasks and repetitions")
    args = parser.parse_args()
    reps = 2 if args.quick else 5
    n = 50 if args.quick else 300

    home = tempfile.mkdtemp(prefix="kf-bench-processes-")
    os.environ["KERNELFLOW_HOME"] = home
    try:
        load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
        print(f"python {platform.python_version()}, {cpu_count()} CPUs{load}, {platform.platform()}")

        def one() -> int:
            return 1

        start = {ex: _timed(lambda ex=ex: kf.workflow(f"one_{ex}", [one], executor=ex).run(), reps) for ex in ("threads", "processes")}
        print(f"worker start (first task waits):      {(start['processes'] - start['threads']) * 1000:7.0f} ms")

        chain = _noop_chain(n)
        per_task = {}
        for ex in ("threads", "processes"):
            wf = kf.workflow(f"chain_{ex}", chain, executor=ex)
            wf.run()  # warm-up
            spans = []
            for _ in range(reps):
                run = wf.run()
                events = kf.open_store().read_run(run.run_id)
                first = next(e.ts for e in events if e.type == "TaskStarted" and e.task_id == "t1")
                last = next(e.ts for e in events if e.type == "TaskSucceeded" and e.task_id == f"t{n - 1}")
                spans.append((last - first) / 1e6 / (n - 1))  # t1..t{n-1}: the worker is up by then
            per_task[ex] = statistics.median(spans)
        print(f"chain of {n}, per task, threads:      {per_task['threads'] * 1e6:7.0f} µs")
        print(f"chain of {n}, per task, processes:    {per_task['processes'] * 1e6:7.0f} µs "
              f"(+{(per_task['processes'] - per_task['threads']) * 1e6:.0f} µs; from t1 on, the worker started)")

        fan = _fan_out(n)
        for ex in ("threads", "processes"):
            wf = kf.workflow(f"fan_{ex}", fan, executor=ex, max_parallel=8)
            wf.run()
            wholes, steadies = [], []
            for _ in range(reps):
                started = time.perf_counter()
                run = wf.run()
                wholes.append((time.perf_counter() - started) / (n + 1))
                done = [e.ts for e in kf.open_store().read_run(run.run_id) if e.type == "TaskSucceeded" and e.task_id != "root"]
                steadies.append((max(done) - min(done)) / 1e6 / (n - 1))  # from the first child that ended
            print(f"fan-out of {n}, per task, {ex + ':':10s} {statistics.median(wholes) * 1e6:7.0f} µs whole run, "
                  f"{statistics.median(steadies) * 1e6:5.0f} µs once a worker answers")

        cpu = []
        for i in range(4):
            ns: dict[str, Any] = {"burn": burn, "__name__": "__main__"}
            exec(f"def b{i}():\n    return burn({i + 1})", ns)  # noqa: S102
            cpu.append(ns[f"b{i}"])
        alone = _timed(lambda: burn(1), 1)
        for ex in ("threads", "processes"):
            wf = kf.workflow(f"cpu_{ex}", cpu, executor=ex, max_parallel=4)
            took = _timed(wf.run, 1 if args.quick else 2)
            print(f"4 CPU-bound tasks ({alone:.2f} s each alone), {ex + ':':10s} {took:5.2f} s")
    finally:
        close_stores()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
