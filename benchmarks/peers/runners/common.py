"""Shared by every runner: the workloads' shapes, the timing loop and the JSON report.

A runner is started by run.py in its engine's interpreter, once per workload and
repetition:

    python run_<engine>.py '{"workload": "chain", "n": 1000, "inner": 3}'

with ``KF_PEERS_T0`` in its environment: ``time.time()`` taken by run.py just
before it started the process. The runner imports its engine, builds the
workload, runs it once (cold: from process start to that first run done), then
``inner`` more times, each timed (warm), and prints one line
``KFPEERS {json}`` on stdout. This module imports nothing outside the standard
library, so every venv can use it.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable

STARTED = time.time()  # the runner's first line ran (interpreter start-up is before this)

SLEEP_S = 0.010


def parse_args() -> dict[str, Any]:
    spec = json.loads(sys.argv[1])
    spec["t0"] = float(os.environ.get("KF_PEERS_T0", STARTED))
    return spec


def steps_of(workload: str, n: int) -> int:
    """How many steps a run of the workload executes (for per-step overhead)."""
    if workload == "fanout":
        return n + 2  # root, n children, join
    return n


def chain_source(n: int, annotate: bool = False) -> str:
    """A chain of ``n`` no-op functions ``t0 .. t{n-1}``, ``t{i}`` taking ``t{i-1}``."""
    ann, ret = (": int", " -> int") if annotate else ("", "")
    body = "    return 0\n" if annotate else "    return None\n"
    lines = [f"def t0(){ret}:\n{body}"]
    lines += [f"def t{i}(t{i - 1}{ann}){ret}:\n{body}" for i in range(1, n)]
    return "".join(lines)


def sleep_chain_source(n: int, annotate: bool = False) -> str:
    """A chain of ``n`` functions that each sleep 10 ms."""
    ann, ret = (": int", " -> int") if annotate else ("", "")
    body = f"    time.sleep({SLEEP_S})\n    return 0\n"
    lines = ["import time\n", f"def t0(){ret}:\n{body}"]
    lines += [f"def t{i}(t{i - 1}{ann}){ret}:\n{body}" for i in range(1, n)]
    return "".join(lines)


def fanout_source(n: int, annotate: bool = False) -> str:
    """``root``, ``n`` children ``c{i}`` taking it, and ``join`` taking all children."""
    ann, ret = (": int", " -> int") if annotate else ("", "")
    body = "    return 0\n" if annotate else "    return None\n"
    lines = [f"def root(){ret}:\n{body}"]
    lines += [f"def c{i}(root{ann}){ret}:\n{body}" for i in range(n)]
    params = ", ".join(f"c{i}{ann}" for i in range(n))
    lines.append(f"def join({params}){ret}:\n    return {n}\n")
    return "".join(lines)


def names_of(workload: str, n: int) -> list[str]:
    if workload == "fanout":
        return ["root", *(f"c{i}" for i in range(n)), "join"]
    return [f"t{i}" for i in range(n)]


def source_of(workload: str, n: int, annotate: bool = False) -> str:
    if workload == "chain":
        return chain_source(n, annotate)
    if workload == "sleep":
        return sleep_chain_source(n, annotate)
    if workload == "fanout":
        return fanout_source(n, annotate)
    raise ValueError(f"unknown workload {workload!r}: expected chain, sleep or fanout")


def peak_rss_kb() -> tuple[int, int, int]:
    """(this process's VmHWM, the sum of its live descendants' VmHWM, how many there are), in kB.

    VmHWM is the process's own high-water mark. ``ru_maxrss`` of a child started
    with fork/vfork + exec also counts the parent's high-water mark at the exec,
    so it is not used.
    """
    own = _hwm(Path("/proc/self/status"))
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total, count, todo = 0, 0, list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        total += _hwm(Path(f"/proc/{pid}/status"))
        count += 1
        todo.extend(children.get(pid, []))
    return own, total, count


def _hwm(status: Path) -> int:
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(
    spec: dict[str, Any],
    run_once: Callable[[], Any],
    check: Callable[[Any], None],
    *,
    import_s: float,
    define_s: float,
    extra: Callable[[], dict[str, Any]] | None = None,
    per_sample: int = 1,
    settle: Callable[[Any], float] | None = None,
) -> None:
    """Run the workload once (cold) and ``inner`` times (warm), then print the report line.

    Warm samples stop early once ``budget_s`` (from the spec; 0: no limit) of
    warm runs and settling is spent, after at least one. ``per_sample`` runs
    are timed together in each warm sample (plain Python's runs take
    microseconds); a sample is their mean.
    ``settle``, called with a run's result after every run and not timed, waits
    until the engine has finished with that run in the background (Prefect's
    server recording it) and returns how long that took, so that one run's
    backlog is not paid inside the next run's sample; it is skipped after the
    last run.
    """
    started = time.perf_counter()
    result = run_once()
    first_s = time.perf_counter() - started
    cold_s = time.time() - spec["t0"]
    check(result)
    inner = int(spec["inner"])
    budget = float(spec.get("budget_s", 0)) or float("inf")
    settled: list[float] = []
    spent = 0.0
    if settle is not None and inner > 0:
        settled.append(settle(result))
        spent += settled[-1]
    warm: list[float] = []
    for i in range(inner):
        gc.collect()
        started = time.perf_counter()
        for _ in range(per_sample):
            result = run_once()
        elapsed = time.perf_counter() - started
        spent += elapsed
        warm.append(elapsed / per_sample)
        check(result)
        if i == inner - 1 or spent >= budget:
            break  # slow engines: at least one warm sample, then stop once the budget is used
        if settle is not None:  # only before another run: the backlog would land in it
            settled.append(settle(result))
            spent += settled[-1]
    own, descendants, count = peak_rss_kb()
    report = {
        "workload": spec["workload"],
        "n": spec["n"],
        "steps": steps_of(spec["workload"], spec["n"]),
        "startup_s": STARTED - spec["t0"],
        "import_s": import_s,
        "define_s": define_s,
        "first_s": first_s,
        "cold_s": cold_s,
        "warm_s": warm,
        "rss_kb": own,
        "descendants_rss_kb": descendants,
        "descendants": count,
    }
    if settle is not None:
        report["settle_s"] = settled
    if extra is not None:
        report.update(extra())
    sys.stdout.write("KFPEERS " + json.dumps(report) + "\n")
    sys.stdout.flush()
