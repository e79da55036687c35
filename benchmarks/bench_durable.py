#!/usr/bin/env python
"""Durable execution: resume latency, memory of runs waiting at gates, approval round trip.

    python benchmarks/bench_durable.py                  # all three (~2-3 min on an idle 2-core machine)
    python benchmarks/bench_durable.py --only resume    # one of: resume, memory, approval (comma-separated)
    python benchmarks/bench_durable.py --quick          # smoke run: few samples, 1,000 runs for memory
    python benchmarks/bench_durable.py --write          # also rewrite our sections of docs/benchmarks.md

What is measured:

1. **Resume latency.** Chains of no-op tasks (10 tasks, and 1,000) are
   *really* interrupted: a child process starts the runs (``wf.start``), each
   blocks in task 6 (task 501), and the child is killed with SIGKILL while
   they run. This process then opens the store (as a new process after a
   crash would) and times ``kf.resume(run_id, workflow=wf)`` on each run, to
   the run having succeeded. Functions of kernelflow are wrapped (not
   changed) to split the time: lease, ``read_run`` and ``fold`` (each done
   twice by ``resume``), preparing the Run, ``restore`` (RunResumed,
   TaskReset, outputs loaded), and the engine running what is left. A
   fresh ``wf.run()`` of a chain as long as what is left is timed in the
   same store: resume overhead = resume - that.
2. **Memory of 10,000 runs waiting at an approval gate**, each mode in a
   fresh child process: a 2-task workflow (a task, then a gated task) run
   10,000 times, each run suspending at the gate; the Run handles kept in a
   list, or dropped. Peak RSS (``ru_maxrss``) minus RSS after ``import
   kernelflow``, RSS after every 1,000 runs, runs suspended per second, the
   store's size on disk. A third child (handles kept) runs under
   ``tracemalloc`` to show what holds the memory.
3. **Approval round trip.** A run started with ``wf.start()`` in this
   process waits at a gate while a parallel busy branch keeps its driver
   alive (so the driver holds the lease and looks for answers every
   ``engine.GATE_POLL_S``); a separate, long-lived process calls
   ``kf.approve(run_id, step, resume=False)``. Round trip = from just before
   that call to ``run.wait()`` returning here (CLOCK_MONOTONIC is shared by
   processes on Linux).

Every part uses fresh stores in temp folders, removed afterwards, and sets
``KERNELFLOW_NO_WATCH=1`` (no background thread watching suspended runs).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ["KERNELFLOW_NO_WATCH"] = "1"

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DOC = REPO / "docs" / "benchmarks.md"
RESUME_HEADING = "## Durable execution: resume latency"
MEMORY_HEADING = "## Durable execution: memory of runs waiting at approval gates"
APPROVAL_HEADING = "## Durable execution: approval round trip"

MEMORY_TARGET_BYTES = 100e6


# --- small helpers ---------------------------------------------------------------------


def fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.0f} µs"
    return f"{seconds * 1e9:.0f} ns"


def mb(n: float) -> str:
    if abs(n) < 100e3:
        return f"{n / 1e3:.1f} kB"
    return f"{n / 1e6:.1f} MB"


def kernelflow_origin() -> tuple[str, str]:
    """(the checkout kernelflow and kernelflow.store are imported from, its git commit).

    An editable install follows the last ``pip install -e``: a CI dry run in a
    clone elsewhere re-points it, and this checkout's code is then not what runs."""
    import kernelflow.store

    import kernelflow

    roots = {
        os.path.dirname(os.path.dirname(os.path.realpath(m.__file__)))
        for m in (kernelflow, kernelflow.store)
    }
    root = roots.pop() if len(roots) == 1 else " and ".join(sorted(roots))
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    return root, commit


def shown_path(filename: str) -> str:
    """A traced file's path: relative to the checkout, or under <stdlib>."""
    real = os.path.realpath(filename)
    if real.startswith(str(REPO) + os.sep):
        return os.path.relpath(real, REPO)
    return filename.replace(os.path.dirname(os.__file__), "<stdlib>")


def load_note(env: dict[str, str]) -> str:
    return (
        f"1-minute load average {env['load']} when this part started and {env['load_end']} when it "
        "ended, on 2 cores; above ~1, other work shares them"
    )


def p95(samples: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def rss_now() -> int:
    """Resident set size of this process now, in bytes (VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_peak() -> int:
    """Peak resident set size of this process so far, in bytes (VmHWM).

    Not ``ru_maxrss``: on Linux a child started with fork + exec inherits its
    parent's high-water mark there (the benchmark's own process, 200+ MB after
    the resume part, would show as every child's peak); VmHWM starts afresh
    with the exec'd program."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def folder_size(path: str) -> tuple[int, int, int]:
    """(sum of file sizes, bytes of disk blocks used, number of files) under ``path``."""
    size = blocks = files = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(root, name))
            size += st.st_size
            blocks += st.st_blocks * 512
            files += 1
    return size, blocks, files


def child_env(home: str) -> dict[str, str]:
    env = dict(os.environ)
    env["KERNELFLOW_HOME"] = home
    env["KERNELFLOW_NO_WATCH"] = "1"
    env.pop("KERNELFLOW_FSYNC", None)
    env.pop("KERNELFLOW_BATCH_ID", None)
    return env


def last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON result in the child's output:\n{text[-2000:]}")


# --- 1. resume latency -------------------------------------------------------------------


def chain_workflow(n: int, stop_at: int, gate: Callable[[], Any]) -> Any:
    """A chain ``t0 -> ... -> t{n-1}`` of no-op tasks; ``t{stop_at}`` calls ``gate()``
    (the child passes one that blocks; the resuming process one that returns)."""
    import kernelflow as kf

    lines = ["def t0():\n    return None\n"]
    for i in range(1, n):
        body = "_gate()" if i == stop_at else "None"
        lines.append(f"def t{i}(t{i - 1}):\n    return {body}\n")
    namespace: dict[str, Any] = {"_gate": gate}
    exec(compile("".join(lines), "<bench-chain>", "exec"), namespace)  # noqa: S102 - our own generated code
    return kf.workflow(f"chain{n}", [namespace[f"t{i}"] for i in range(n)])


def plain_chain_workflow(n: int) -> Any:
    import kernelflow as kf

    lines = ["def t0():\n    return None\n"] + [
        f"def t{i}(t{i - 1}):\n    return None\n" for i in range(1, n)
    ]
    namespace: dict[str, Any] = {}
    exec(compile("".join(lines), "<bench-ref>", "exec"), namespace)  # noqa: S102
    return kf.workflow(f"ref{n}", [namespace[f"t{i}"] for i in range(n)])


def child_interrupt(n: int, stop_at: int, count: int, prefix: str, ready: str) -> None:
    """Start ``count`` runs; when every one of them is inside ``t{stop_at}``, say so and hang."""
    lock = threading.Lock()
    arrived = [0]

    def gate() -> None:
        with lock:
            arrived[0] += 1
            if arrived[0] == count:
                Path(ready).write_text("ready")
        threading.Event().wait()  # until SIGKILL

    wf = chain_workflow(n, stop_at, gate)
    for i in range(count):
        wf.start(run_id=f"{prefix}{i:03d}", raise_on_failure=False)
    threading.Event().wait()


class Splits:
    """Wraps kernelflow functions (without changing them) to time the parts of a resume."""

    KEYS = (
        "lease",
        "read_run",
        "refresh",
        "fold",
        "find_workflow",
        "prepare_run",
        "restore",
    )
    # The parts that do not overlap (``refresh`` is inside ``read_run``).
    DISJOINT = ("lease", "read_run", "fold", "find_workflow", "prepare_run", "restore")

    def __init__(self) -> None:
        self.t = dict.fromkeys(self.KEYS, 0.0)
        self.calls = dict.fromkeys(self.KEYS, 0)
        self.restored_at = 0.0
        self.on = False
        self.gc_s = 0.0
        self._gc_start = 0.0

    def reset(self) -> None:
        self.t = dict.fromkeys(self.KEYS, 0.0)
        self.calls = dict.fromkeys(self.KEYS, 0)
        self.restored_at = 0.0
        self.gc_s = 0.0

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if not self.on:
            return
        if phase == "start":
            self._gc_start = time.perf_counter()
        elif self._gc_start:
            self.gc_s += time.perf_counter() - self._gc_start
            self._gc_start = 0.0

    def install(self) -> None:
        from kernelflow.store import FolderStore

        import kernelflow.api
        import kernelflow.resume  # noqa: F401

        # kernelflow.resume the module (the package exports a function of that name)
        api, resume_mod = (
            sys.modules["kernelflow.api"],
            sys.modules["kernelflow.resume"],
        )

        self._wrap(FolderStore, "lease", "lease")
        self._wrap(FolderStore, "read_run", "read_run")
        self._wrap(resume_mod, "fold", "fold")
        self._wrap(resume_mod, "find_workflow", "find_workflow")
        self._wrap(api, "prepare_run", "prepare_run")
        self._wrap(resume_mod, "restore", "restore", mark=True)
        # How the store brings its DuckDB view up to date before a query (new
        # segment lines ingested); private, so only if it is there.
        query_mod = sys.modules.get("kernelflow.store.query")
        engine_cls = getattr(query_mod, "QueryEngine", None)
        if engine_cls is not None and hasattr(engine_cls, "_refresh"):
            self._wrap(engine_cls, "_refresh", "refresh")
        gc.callbacks.append(self._gc)

    def _wrap(self, owner: Any, name: str, key: str, mark: bool = False) -> None:
        original = getattr(owner, name)
        splits = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not splits.on:
                return original(*args, **kwargs)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                end = time.perf_counter()
                splits.t[key] += end - start
                splits.calls[key] += 1
                if mark:
                    splits.restored_at = end

        setattr(owner, name, wrapper)


def interrupt_runs(home: str, n: int, stop_at: int, count: int, prefix: str) -> float:
    """Really interrupt ``count`` runs: a child starts them and is SIGKILLed inside ``t{stop_at}``."""
    ready = os.path.join(tempfile.mkdtemp(prefix="kf-bench-ready-"), "ready")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--child-interrupt",
            str(n),
            str(stop_at),
            str(count),
            prefix,
            ready,
        ],
        env=child_env(home),
    )
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(ready):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the interrupting child exited with {proc.returncode} before its runs were ready"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "the interrupting child's runs did not all reach the task that blocks"
                )
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(os.path.dirname(ready), ignore_errors=True)
    return time.perf_counter() - started


def child_resume(n: int, stop_at: int, run_id: str) -> None:
    """A new process resumes one interrupted run: import, definition and resume timed; prints JSON."""
    start = time.perf_counter()
    import kernelflow as kf

    imported = time.perf_counter()
    wf = chain_workflow(n, stop_at, lambda: None)
    defined = time.perf_counter()
    splits = Splits()
    splits.install()
    splits.on = True
    begin = time.perf_counter()
    run = kf.resume(run_id, workflow=wf, raise_on_failure=False)
    end = time.perf_counter()
    splits.on = False
    if run.status != "succeeded":
        raise RuntimeError(f"resumed run {run_id} ended {run.status}")
    print(json.dumps({
        "import": imported - start, "define": defined - imported, "resume": end - begin,
        "fixed": splits.restored_at - begin, "parts": splits.t,
    }), flush=True)  # fmt: skip


def bench_resume_size(n: int, stop_at: int, samples: int, warmup: int, ref_reps: int, cold_n: int,
                      splits: Splits) -> dict[str, Any]:  # fmt: skip
    import kernelflow as kf
    from kernelflow import events as ev
    from kernelflow.store_access import close_stores

    home = tempfile.mkdtemp(prefix=f"kf-bench-resume{n}-")
    prefix = f"r-int{n}-"
    try:
        count = samples + warmup + cold_n
        child_s = interrupt_runs(home, n, stop_at, count, prefix)
        kf.use_store(home)
        store = (
            kf.open_store()
        )  # a new process after the crash: compacts the dead child's segment
        store.wait_for_compaction(60)
        before = folder_size(home)
        layout = {
            "segments": len(os.listdir(os.path.join(home, "segments")))
            if os.path.isdir(os.path.join(home, "segments"))
            else 0,
            "parquet": len(os.listdir(os.path.join(home, "events")))
            if os.path.isdir(os.path.join(home, "events"))
            else 0,
        }
        # Counted on another thread: DuckDB connections are per thread, and the first
        # resume on this one should pay for its own, as in a new process.
        counted: list[int] = []
        counter = threading.Thread(
            target=lambda: counted.append(
                int(kf.sql("SELECT count(*) AS n FROM events")["n"][0])
            )
        )
        counter.start()
        counter.join()
        events_in_store = counted[0]
        all_ids = [f"{prefix}{i:03d}" for i in range(count)]
        run_ids, cold_ids = all_ids[: samples + warmup], all_ids[samples + warmup :]

        # A new process per resume (what `kernelflow resume RUN` or a restarted notebook does).
        cold_children = []
        for run_id in cold_ids:
            done = subprocess.run(
                [sys.executable, __file__, "--child-resume", str(n), str(stop_at), run_id],
                env=child_env(home), capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"resuming child failed:\n{done.stderr[-3000:]}")
            cold_children.append(last_json(done.stdout))
        first = store.read_run(run_ids[0])
        state = kf.fold(first)
        if (
            state.status != "running"
            or state.tasks[f"t{stop_at}"].status != "running"
            or store.lease_holder(run_ids[0])
        ):
            raise RuntimeError(
                f"run {run_ids[0]} is not an interrupted run: {state.status}"
            )
        history_events = len(first)

        wf = chain_workflow(n, stop_at, lambda: None)
        totals, fixed, tails, gcs = [], [], [], []
        parts: dict[str, list[float]] = {k: [] for k in Splits.KEYS}
        cold: list[float] = []
        for i, run_id in enumerate(run_ids):
            gc.collect()
            splits.reset()
            splits.on = True
            start = time.perf_counter()
            run = kf.resume(run_id, workflow=wf, raise_on_failure=False)
            end = time.perf_counter()
            splits.on = False
            if run.status != "succeeded":
                raise RuntimeError(f"resumed run {run_id} ended {run.status}")
            if i < warmup:
                cold.append(end - start)
                continue
            totals.append(end - start)
            fixed.append(splits.restored_at - start)
            tails.append(end - splits.restored_at)
            gcs.append(splits.gc_s)
            for k in Splits.KEYS:
                parts[k].append(splits.t[k])
        calls = dict(splits.calls)
        # Check one resumed run's history: reset exactly the interrupted task.
        resumed = next(
            e for e in store.read_run(run_ids[-1]) if e.type == ev.RUN_RESUMED
        )
        if (
            resumed.payload["reset"] != [f"t{stop_at}"]
            or not resumed.payload["interrupted"]
        ):
            raise RuntimeError(f"unexpected RunResumed payload {resumed.payload}")

        # What running the tasks left costs anyway: a fresh run of a chain that long, same store.
        left = n - stop_at
        ref_wf = plain_chain_workflow(left)
        for _ in range(2):
            ref_wf.run()
        ref = []
        for _ in range(ref_reps):
            gc.collect()
            start = time.perf_counter()
            ref_wf.run()
            ref.append(time.perf_counter() - start)
        result = {
            "n": n,
            "stop_at": stop_at,
            "left": left,
            "samples": len(totals),
            "warmup": warmup,
            "cold": cold,
            "cold_children": cold_children,
            "child_s": child_s,
            "history_events": history_events,
            "events_in_store": events_in_store,
            "store_bytes": before[0],
            "layout": layout,
            "total": totals,
            "fixed": fixed,
            "tail": tails,
            "gc": gcs,
            "parts": parts,
            "calls": calls,
            "ref": ref,
        }
        print(
            f"  chain of {n:,}, interrupted in t{stop_at}: resume median {fmt(statistics.median(totals))} "
            f"(p95 {fmt(p95(totals))}), before the first task {fmt(statistics.median(fixed))} "
            f"(p95 {fmt(p95(fixed))}); fresh run of {left} tasks {fmt(statistics.median(ref))}",
            flush=True,
        )
        return result
    finally:
        close_stores()
        kf.use_store(None)
        shutil.rmtree(home, ignore_errors=True)


def run_resume(quick: bool) -> list[dict[str, Any]]:
    splits = Splits()
    splits.install()
    samples, warmup, ref_reps, cold_n = (8, 2, 5, 2) if quick else (50, 2, 20, 5)
    return [
        bench_resume_size(10, 5, samples, warmup, ref_reps, cold_n, splits),
        bench_resume_size(1_000, 500, samples, warmup, ref_reps, cold_n, splits),
    ]


def resume_section(env: dict[str, str], cmd: str, results: list[dict[str, Any]]) -> str:
    lines = [
        RESUME_HEADING,
        "",
        f'Measured {env["date"]} with `{cmd}` on the machine described under "Orchestration overhead" '
        f"(kernelflow {env['kernelflow']}; {load_note(env)}).",
        "",
        "Runs are really interrupted: for each chain length a child process starts the runs "
        "(`wf.start()`, all at once) and is killed with SIGKILL once every run is inside the task that "
        "blocks (task 6 of 10, task 501 of 1,000), so each run's history ends in `TaskStarted` and its "
        "lease is gone. This process then opens the store (which compacts the dead child's segment; the "
        "benchmark waits for that) and calls `kf.resume(run_id, workflow=wf)` on each run, one after "
        "another, timing it to its return with the run succeeded; each sample is its own interrupted "
        "run. The tasks are no-ops; the interrupted task runs again (at-least-once), so 5 (500) tasks "
        "are left. `gc.collect()` before each sample. Functions of kernelflow are wrapped, not changed, "
        "to split the time: *before the first task* is everything from the call until `restore` "
        "returns (lease, history read and folded twice — once to refuse unknown runs before taking the "
        "lease, once after — finding the workflow, preparing the Run, `RunResumed` + `TaskReset` "
        "written, the output the next task needs loaded). *Fresh run* is a new `wf.run()` of a no-op "
        "chain as long as what is left, in the same store (lease, `RunStarted`, the tasks, "
        "`RunSucceeded`): overhead of resuming = median resume − median fresh run.",
        "",
        "Other work on the 2 cores moves these numbers: on 2026-11-21 a full run while other "
        "sessions' test suites ran (load average 7–11) gave resume medians 1.7–2.4× and p95s about "
        "7× the ones below, and less than half the runs suspended per second of the next section; "
        "the approval round trip did not move.",
        "",
        "| chain | history read | resumes (warm-up) | resume, median | p95 | before the first task, median | p95 | fresh run of what is left (median) | resume overhead |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        total_m = statistics.median(r["total"])
        ref_m = statistics.median(r["ref"])
        lines.append(
            f"| {r['n']:,} tasks, interrupted in task {r['stop_at'] + 1:,} | {r['history_events']:,} events | "
            f"{r['samples']} ({r['warmup']}) | {fmt(total_m)} | {fmt(p95(r['total']))} | "
            f"{fmt(statistics.median(r['fixed']))} | {fmt(p95(r['fixed']))} | "
            f"{fmt(ref_m)} ({r['left']} tasks, {len(r['ref'])} runs) | {fmt(total_m - ref_m)} |"
        )
    lines += [
        "",
        "Where the time before the first task goes (medians per resume; `read_run` and `fold` are "
        "called twice per resume, the times are their sums):",
        "",
        "| chain | lease | `read_run` ×2 | of which: new segment lines into DuckDB | `fold` ×2 | find workflow | prepare Run | `restore` | rest (driver set-up, inputs, recorded side effects) | then: tasks left + finish | GC pauses in the whole resume |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        parts = {k: statistics.median(v) for k, v in r["parts"].items()}
        rest = statistics.median(
            [
                f - sum(r["parts"][k][i] for k in Splits.DISJOINT)
                for i, f in enumerate(r["fixed"])
            ]
        )
        lines.append(
            f"| {r['n']:,} | {fmt(parts['lease'])} | {fmt(parts['read_run'])} | {fmt(parts['refresh'])} | "
            f"{fmt(parts['fold'])} | {fmt(parts['find_workflow'])} | {fmt(parts['prepare_run'])} | "
            f"{fmt(parts['restore'])} | {fmt(max(rest, 0.0))} | {fmt(statistics.median(r['tail']))} | "
            f"{fmt(statistics.median(r['gc']))} (max {fmt(max(r['gc']))}) |"
        )
    lines += [
        "",
        "Medians of parts do not add up exactly to the median of the whole. The garbage collector is "
        "left on (as for users); its pauses land in whichever part is running, and the right-hand column "
        "is their sum per resume (from `gc.callbacks`).",
        "",
    ]
    lines += [
        "Resuming from a new process, as `kernelflow resume RUN` or a restarted notebook does: one "
        "process per run (`python -c`-like child: import kernelflow, define the workflow, `kf.resume`), "
        "medians:",
        "",
        "| chain | processes | `import kernelflow` | define the workflow | `kf.resume` to the run succeeded | of which before the first task | of which `read_run` ×2 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cc = r["cold_children"]
        lines.append(
            f"| {r['n']:,} | {len(cc)} | {fmt(statistics.median(c['import'] for c in cc))} | "
            f"{fmt(statistics.median(c['define'] for c in cc))} | {fmt(statistics.median(c['resume'] for c in cc))} | "
            f"{fmt(statistics.median(c['fixed'] for c in cc))} | "
            f"{fmt(statistics.median(c['parts']['read_run'] for c in cc))} |"
        )
    lines += [""]
    for r in results:
        lines.append(
            f"- {r['n']:,}-task chain: the store held {r['events_in_store']:,} events "
            f"({mb(r['store_bytes'])}; {r['layout']['parquet']} Parquet file(s), "
            f"{r['layout']['segments']} segment(s)) when resuming began. The warm-up resumes, the first "
            f"on this process's thread (its DuckDB connection is made then), took "
            f"{', '.join(fmt(c) for c in r['cold'])}. Interrupting the runs (child start to kill) took "
            f"{fmt(r['child_s'])}."
        )
    return "\n".join(lines) + "\n"


# --- 2. memory of runs waiting at approval gates ------------------------------------------


def gated_workflow() -> Any:
    import kernelflow as kf

    def prepare() -> int:
        return 1

    @kf.approval("Publish?")
    def publish(prepare: int) -> int:
        return prepare

    return kf.workflow("gated", [prepare, publish])


def child_memory(mode: str, n: int, trace: bool) -> None:
    """One fresh process: ``n`` runs, each suspending at its gate; prints a JSON line."""
    rss_start = rss_now()
    import kernelflow as kf  # noqa: F401

    rss_import = rss_now()
    peak_import = rss_peak()
    wf = gated_workflow()
    warm = wf.run(raise_on_failure=False)
    if warm.status != "waiting":
        raise RuntimeError(f"the gated run ended {warm.status}, expected waiting")
    del warm
    gc.collect()
    rss_warm = rss_now()
    keep = mode == "keep"
    handles = []
    curve = []
    snapshot = None
    if trace:
        import tracemalloc

        tracemalloc.start(1)
        snapshot = tracemalloc.take_snapshot()
    start = time.perf_counter()
    for i in range(n):
        run = wf.run(raise_on_failure=False)
        if keep:
            handles.append(run)
        if (i + 1) % 1000 == 0:
            curve.append(rss_now())
    elapsed = time.perf_counter() - start
    waiting = sum(1 for r in handles if r.status == "waiting") if keep else None
    del run
    gc.collect()
    home = os.environ["KERNELFLOW_HOME"]
    live = folder_size(home)
    out: dict[str, Any] = {
        "live_store": {
            "bytes": live[0],
            "blocks": live[1],
            "files": live[2],
            "segments": folder_size(os.path.join(home, "segments"))[0],
        },
        "mode": mode,
        "n": n,
        "rss_start": rss_start,
        "rss_import": rss_import,
        "peak_import": peak_import,
        "rss_warm": rss_warm,
        "rss_end": rss_now(),
        "peak": rss_peak(),
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "curve": curve,
        "elapsed": elapsed,
        "waiting_handles": waiting,
    }
    if trace:
        import linecache
        import tracemalloc

        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        stats = after.compare_to(snapshot, "lineno")
        out["traced_total"] = sum(s.size_diff for s in stats)
        top = []
        for s in stats[:14]:
            frame = s.traceback[0]
            top.append(
                {
                    "file": shown_path(frame.filename),
                    "line": frame.lineno,
                    "code": linecache.getline(frame.filename, frame.lineno).strip(),
                    "bytes": s.size_diff,
                    "blocks": s.count_diff,
                }
            )
        out["top"] = top
        by_file: dict[str, int] = {}
        for s in after.compare_to(snapshot, "filename"):
            name = shown_path(s.traceback[0].filename)
            by_file[name] = by_file.get(name, 0) + s.size_diff
        out["by_file"] = sorted(by_file.items(), key=lambda kv: -kv[1])[:8]
    print(json.dumps(out), flush=True)


def run_memory_child(mode: str, n: int, trace: bool) -> dict[str, Any]:
    from kernelflow.store import FolderStore

    home = tempfile.mkdtemp(prefix=f"kf-bench-mem-{mode}-")
    try:
        args = [sys.executable, __file__, "--child-memory", mode, str(n)] + (
            ["--trace"] if trace else []
        )
        done = subprocess.run(
            args,
            env=child_env(home),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"memory child {mode} failed:\n{done.stderr[-3000:]}")
        out = last_json(done.stdout)
        size, blocks, files = folder_size(home)
        out["store_bytes"], out["store_blocks"], out["store_files"] = (
            size,
            blocks,
            files,
        )
        out["store_parts"] = {
            sub: folder_size(os.path.join(home, sub))[0]
            for sub in sorted(os.listdir(home))
            if os.path.isdir(os.path.join(home, sub))
        }
        store = FolderStore(home)
        try:
            statuses = store.sql(
                "SELECT status, count(*) AS n FROM runs GROUP BY status ORDER BY status"
            )
            out["statuses"] = dict(
                zip(statuses["status"].to_list(), statuses["n"].to_list())
            )
            out["events"] = int(store.sql("SELECT count(*) AS n FROM events")["n"][0])
        finally:
            store.close()
        tag = f"{mode}{' + tracemalloc' if trace else ''}"
        print(
            f"  {tag:<20} {n:,} runs: peak RSS {mb(out['peak'])}, after import {mb(out['rss_import'])}, "
            f"{n / out['elapsed']:,.0f} runs/s, store {mb(size)}, {out['statuses']}",
            flush=True,
        )
        return out
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run_memory(quick: bool) -> dict[str, Any]:
    n = 1_000 if quick else 10_000
    return {
        "n": n,
        "drop": run_memory_child("drop", n, False),
        "keep": run_memory_child("keep", n, False),
        "trace": run_memory_child("keep", 1_000 if quick else 2_000, True),
    }


def memory_section(env: dict[str, str], cmd: str, m: dict[str, Any]) -> str:
    n = m["n"]
    keep, drop, trace = m["keep"], m["drop"], m["trace"]
    grown = keep["peak"] - keep["rss_import"]
    ok = grown < MEMORY_TARGET_BYTES
    lines = [
        MEMORY_HEADING,
        "",
        f'Measured {env["date"]} with `{cmd}` on the machine described under "Orchestration overhead" '
        f"(kernelflow {env['kernelflow']}; {load_note(env)}).",
        "",
        f"Each row is one fresh process (`KERNELFLOW_NO_WATCH=1`, a new store in a temp folder) that "
        f"defines a 2-task workflow — `prepare`, then `publish` under `@kf.approval(...)` — runs it once "
        f"to warm up, then {n:,} times with `wf.run(raise_on_failure=False)`; every run suspends at the "
        "gate (status `waiting`, nothing held: no thread, no lease). *Keep* appends each returned Run "
        "to a list, as a user holding handles would; *drop* lets each go. RSS is the kernel's (VmRSS, "
        "and VmHWM for the peak: `ru_maxrss` would do, but a child started with fork + exec inherits the "
        "parent's high-water mark there; psutil is not installed). The store is counted after the process "
        "has exited: every run is `waiting` in the `runs` view.",
        "",
        "| handles | runs | peak RSS | after `import kernelflow` | peak − after import | after the warm-up run | growth per run | runs suspended per second | store on disk after exit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in (("kept in a list", keep), ("dropped", drop)):
        per_run = (
            f"{(r['curve'][-1] - r['curve'][0]) / (n - 1000) / 1e3:.1f} kB"
            if len(r["curve"]) > 1
            else "–"
        )
        lines.append(
            f"| {label} | {r['n']:,} | {mb(r['peak'])} | {mb(r['rss_import'])} | "
            f"**{mb(r['peak'] - r['rss_import'])}** | {mb(r['rss_warm'])} | {per_run} | "
            f"{r['n'] / r['elapsed']:,.0f} | {mb(r['store_bytes'])} in {r['store_files']} files |"
        )
    lines += [
        "",
        f"**Target: under 100 MB for {n:,} runs paused at approval gates — {'met' if ok else 'MISSED'}** "
        f"(peak RSS − RSS after `import kernelflow`, handles kept: {mb(grown)}; the process's whole "
        f"peak RSS is {mb(keep['peak'])}). Of that, {mb(keep['rss_warm'] - keep['rss_import'])} comes "
        "once the warm-up run has suspended: the first `kf.workflow` loads the plugins, and the built-in "
        "folder-store plugin imports DuckDB. Dropping the handles, the process stays flat "
        f"({mb(drop['rss_end'] - drop['rss_warm'])} more after {n:,} runs than after the warm-up run), so "
        "kernelflow keeps nothing per suspended run; what grows is the Run objects the user holds.",
        "",
        f"The store holds {keep['events']:,} events ({keep['events'] / (n + 1):.0f} per run) for "
        f"{n + 1:,} runs. While the process lives they are in its JSON-lines segment: "
        f"{mb(keep['live_store']['bytes'])} in {keep['live_store']['files']} files "
        f"({mb(keep['live_store']['segments'])} of segments, {keep['live_store']['bytes'] / (n + 1):,.0f} bytes "
        f"per run). When it exits, the store is closed and the segment compacted to Parquet: "
        f"{mb(keep['store_bytes'])} in {keep['store_files']} files "
        f"({', '.join(f'{k}/ {mb(v)}' for k, v in keep['store_parts'].items() if v)}; "
        f"{mb(keep['store_blocks'])} of disk blocks). A suspended run holds no lease file (leases are "
        "unlinked when let go) and has no answer file until it is answered.",
        "",
        f"What a kept handle holds, from `tracemalloc` (a third process, {trace['n']:,} runs, handles kept, "
        f"1 frame; allocations alive after the runs minus before): {trace['traced_total'] / trace['n']:,.0f} "
        "bytes per run traced in all. Largest sites, per run:",
        "",
        "| where | code | bytes per run | blocks per run |",
        "|---|---|---|---|",
    ]
    for t in trace["top"][:12]:
        code = t["code"].replace("|", "\\|")
        if len(code) > 70:
            code = code[:67] + "..."
        lines.append(
            f"| {t['file']}:{t['line']} | `{code}` | {t['bytes'] / trace['n']:,.0f} | {t['blocks'] / trace['n']:.1f} |"
        )
    lines += [
        "",
        "By file, per run: "
        + ", ".join(
            f"{name} {size / trace['n']:,.0f} B" for name, size in trace["by_file"]
        )
        + ".",
        "",
        "So a kept handle is about 5 kB of small objects: the Run itself and its dicts, locks and "
        "helpers (`run.py`, `secrets.py`, `durable.py`); its `threading.Event` for `wait()` (a "
        "`Condition` whose waiter deque alone is ~620 bytes: `threading.py`); the folded `RunState` "
        "with one `TaskState` per task and the gate's request (message, preview, input schema: "
        "`reducer.py`, `gates.py`); timestamps as Python ints (`events.py`). No events are kept in "
        "memory (`Run._unseen` only fills when an observer is attached), and no DuckDB connection is "
        "opened: running and suspending never query the store. `pathlib.py:74` is not per run: it is "
        "one resize of the interpreter's table of interned strings (pathlib interns each path "
        "component, such as every run's lease-file name) that fell inside the measured window; it "
        "shows the same in a process that drops its handles.",
    ]
    return "\n".join(lines) + "\n"


# --- 3. approval round trip ---------------------------------------------------------------


def child_approver() -> None:
    """Answers gates named on stdin (``run_id step``), one JSON line of timings each."""
    from kernelflow.store.answers import Answers

    import kernelflow as kf

    kf.open_store()
    claimed = [0.0]
    original = Answers.claim

    def claim(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        finally:
            claimed[0] = time.monotonic()

    Answers.claim = claim  # type: ignore[method-assign]
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        run_id, step = line.split()
        claimed[0] = 0.0
        called = time.monotonic()
        answer = kf.approve(run_id, step, resume=False)
        returned = time.monotonic()
        print(
            json.dumps(
                {
                    "called": called,
                    "claimed": claimed[0],
                    "returned": returned,
                    "recorded": answer.recorded,
                }
            ),
            flush=True,
        )


def approval_workflow(order: str, after_s: float) -> tuple[Any, dict[str, Any]]:
    """``prepare`` then, in parallel, ``publish`` (gated) and ``busy``, which waits for
    ``publish`` to have run (and ``after_s`` more). ``order`` is the order the functions
    are listed in: "busy first" or "gate first"."""
    import kernelflow as kf

    marks: dict[str, Any] = {"published": threading.Event(), "publish_at": 0.0}

    def prepare() -> int:
        return 1

    @kf.approval("Publish?")
    def publish(prepare: int) -> int:
        marks["publish_at"] = time.monotonic()
        marks["published"].set()
        return prepare

    def busy(prepare: int) -> None:
        marks["published"].wait(marks.get("busy_timeout", 30.0))
        time.sleep(after_s)

    fns = (
        [prepare, busy, publish] if order == "busy first" else [prepare, publish, busy]
    )
    return kf.workflow(f"approve_{order.replace(' ', '_')}_{after_s:g}", fns), marks


class Approver:
    def __init__(self, home: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child-approver"],
            env=child_env(home),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        if not json.loads(self.proc.stdout.readline()).get("ready"):
            raise RuntimeError("the approver did not start")

    def send(self, run_id: str, step: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{run_id} {step}\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the approver exited with {self.proc.wait()}")
        return json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def approval_samples(approver: Approver, order: str, after_s: float, count: int, warmup: int, rng: random.Random,
                     busy_timeout: float = 30.0) -> list[dict[str, float]]:  # fmt: skip
    from kernelflow import engine

    wf, marks = approval_workflow(order, after_s)
    marks["busy_timeout"] = busy_timeout
    out = []
    for i in range(count + warmup):
        marks["published"].clear()
        marks["publish_at"] = 0.0
        run_id = f"r-appr-{order.split()[0]}-{after_s:g}-{i:03d}-{os.getpid()}"
        gc.collect()
        run = wf.start(run_id=run_id, raise_on_failure=False)
        deadline = time.monotonic() + 30
        while True:
            task = run.state.tasks.get("publish")
            if task is not None and task.status == "waiting":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run_id} never reached its gate")
            time.sleep(0.002)
        # The driver polls on its own schedule: answer at a random moment within a poll interval.
        time.sleep(rng.uniform(0, engine.GATE_POLL_S))
        approver.send(run_id, "publish")
        run.wait(120)
        finished = time.monotonic()
        a = approver.result()
        if run.status != "succeeded":
            raise RuntimeError(f"run {run_id} ended {run.status}")
        if i < warmup:
            continue
        out.append(
            {
                "round_trip": finished - a["called"],
                "claim": a["claimed"] - a["called"],
                "noticed": marks["publish_at"] - a["claimed"],
                "to_publish": marks["publish_at"] - a["called"],
                "finish": finished - marks["publish_at"],
                "approve_call": a["returned"] - a["called"],
                "recorded": a["recorded"],
            }
        )
    return out


def run_approval(quick: bool) -> dict[str, Any]:
    import kernelflow as kf
    import kernelflow.approvals
    from kernelflow import engine
    from kernelflow.store_access import close_stores

    approvals = sys.modules[
        "kernelflow.approvals"
    ]  # the package exports a function of that name

    home = tempfile.mkdtemp(prefix="kf-bench-approve-")
    rng = random.Random(20261121)
    try:
        kf.use_store(home)
        kf.open_store()
        approver = Approver(home)
        try:
            main = approval_samples(
                approver, "busy first", 0.0, 5 if quick else 20, 2, rng
            )
            busy_longer = approval_samples(
                approver, "busy first", 4.0, 1 if quick else 3, 0, rng
            )
            gate_first = approval_samples(
                approver, "gate first", 0.0, 1 if quick else 3, 0, rng, busy_timeout=2.0
            )
        finally:
            approver.close()
        for label, rows in (
            ("busy first", main),
            ("busy first, 4 s longer", busy_longer),
            ("gate first", gate_first),
        ):
            rt = [r["round_trip"] for r in rows]
            print(
                f"  {label:<24} round trip median {fmt(statistics.median(rt))} (min {fmt(min(rt))}, max {fmt(max(rt))}), "
                f"approve() call median {fmt(statistics.median(r['approve_call'] for r in rows))}",
                flush=True,
            )
        return {"main": main, "busy_longer": busy_longer, "gate_first": gate_first,
                "poll": engine.GATE_POLL_S, "lease_wait": approvals.LEASE_WAIT_S}  # fmt: skip
    finally:
        close_stores()
        kf.use_store(None)
        shutil.rmtree(home, ignore_errors=True)


def approval_section(env: dict[str, str], cmd: str, a: dict[str, Any]) -> str:
    poll = a["poll"]
    longer_unrecorded = sum(1 for r in a["busy_longer"] if not r["recorded"])

    def med(rows: list[dict[str, Any]], key: str) -> str:
        return fmt(statistics.median(r[key] for r in rows))

    def spread(rows: list[dict[str, Any]], key: str) -> str:
        values = [r[key] for r in rows]
        return f"{fmt(min(values))} – {fmt(max(values))}"

    lines = [
        APPROVAL_HEADING,
        "",
        f'Measured {env["date"]} with `{cmd}` on the machine described under "Orchestration overhead" '
        f"(kernelflow {env['kernelflow']}; {load_note(env)}).",
        "",
        "The benchmark process starts a run with `wf.start()`: `prepare`, then in parallel `busy` and "
        "`publish` (under `@kf.approval`), where `busy` waits until `publish` has run. While `publish` "
        "waits at its gate, `busy` keeps the run's driver alive in this process, so the driver holds the "
        f"lease and looks for answers every `engine.GATE_POLL_S` = {poll * 1e3:.0f} ms. Once the gate is "
        f"waiting, the benchmark sleeps a random 0–{poll * 1e3:.0f} ms (so answers land at random "
        "points of the poll cycle), then a separate, long-lived process (kernelflow imported, store "
        "open) calls `kf.approve(run_id, 'publish', resume=False)`. Round trip = from just before that "
        "call to `run.wait()` returning here with the run succeeded. Timestamps are CLOCK_MONOTONIC "
        "(`time.monotonic()`), which processes share on Linux. 2 warm-up round trips are not counted.",
        "",
        "| workflow | round trips | approve → run finished, median | min – max | approve → `publish` starts, median | min – max | of which `kf.approve` until the answer is claimed | `publish` starts → run finished | the `kf.approve` call returns after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = (
        ("`busy` listed before `publish`", a["main"]),
        ("same, but `busy` goes on 4 s after `publish`", a["busy_longer"]),
        ("`publish` listed before `busy` (`busy` gives up after 2 s)", a["gate_first"]),
    )
    for i, (label, rs) in enumerate(rows):
        bold = "**" if i == 0 else ""
        lines.append(
            f"| {label} | {len(rs)} | {bold}{med(rs, 'round_trip')}{bold} | {spread(rs, 'round_trip')} | "
            f"{med(rs, 'to_publish')} | {spread(rs, 'to_publish')} | {med(rs, 'claim')} | {med(rs, 'finish')} | "
            f"{med(rs, 'approve_call')} |"
        )
    lines += [
        "",
        f"With a live driver the answer waits for the driver's next look: on average half a poll "
        f"interval ({poll * 500:.0f} ms), at most one ({poll * 1e3:.0f} ms), which is most of the round trip. "
        "`kf.approve` itself returns only when it can take the run's lease (the run has ended) or after "
        f"`approvals.LEASE_WAIT_S` = {a['lease_wait']:.0f} s, whichever is first: in the first row the run "
        f"ends within the round trip, so the call returns soon after; when the run goes on (second row) the "
        f"caller waits the full {a['lease_wait']:.0f} s and gets `recorded=False` ({longer_unrecorded} of "
        f"{len(a['busy_longer'])} calls), although the driver recorded the answer within a poll interval. "
        "`kernelflow approve` on the command line waits the same way.",
        "",
        "The third row is a bug: when the gated task comes before the busy branch in the workflow's "
        "order, the busy branch is launched while nothing else is *running* (the gate does not count), so "
        "the thread executor runs it inline on the driver's thread (`TaskCall.alone`), and the driver "
        "cannot look for answers until it returns: the answer is noticed only when `busy` gives up (2 s "
        "here). A long parallel branch (a 10-minute training step) delays every answer by up to its whole "
        "duration; a branch that waits for the gated task without a timeout never lets the run go on.",
    ]
    return "\n".join(lines) + "\n"


# --- main ------------------------------------------------------------------------------------


def command_line(args: argparse.Namespace) -> str:
    flags = ""
    if args.only:
        flags += f" --only {args.only}"
    if args.quick:
        flags += " --quick"
    return f"python benchmarks/bench_durable.py{flags}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", default="", help="comma-separated: resume, memory, approval"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="few samples (a smoke test, not for the doc)",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help=f"rewrite our sections of {DOC.relative_to(REPO)}",
    )
    parser.add_argument("--out", help="also write the Markdown sections to this file")
    parser.add_argument("--child-interrupt", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--child-resume", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--child-memory", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-approver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child_interrupt:
        n, stop_at, count, prefix, ready = args.child_interrupt
        child_interrupt(int(n), int(stop_at), int(count), prefix, ready)
        return 0
    if args.child_resume:
        n, stop_at, run_id = args.child_resume
        child_resume(int(n), int(stop_at), run_id)
        return 0
    if args.child_memory:
        child_memory(args.child_memory[0], int(args.child_memory[1]), args.trace)
        return 0
    if args.child_approver:
        child_approver()
        return 0

    sys.path.insert(0, str(HERE))
    from bench_overhead import _load, machine, rewrite_doc

    parts = [p.strip() for p in args.only.split(",") if p.strip()] or [
        "resume",
        "memory",
        "approval",
    ]
    unknown = set(parts) - {"resume", "memory", "approval"}
    if unknown:
        parser.error(f"--only: unknown part(s) {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    env = machine()
    root, commit = kernelflow_origin()
    if root != str(REPO):
        # machine() describes this checkout; say what actually ran.
        print(
            f"WARNING: kernelflow is imported from {root} (git {commit}), not from {REPO}",
            file=sys.stderr,
        )
        env["kernelflow"] = (
            f"{env['kernelflow']}, but imported from {root} at git {commit}"
        )
    cmd = command_line(args)
    sections: dict[str, str] = {}
    results: dict[str, Any] = {}
    loads: dict[str, tuple[str, str]] = {}
    for part in parts:
        t0 = time.perf_counter()
        load_start = _load()
        print(part, flush=True)
        results[part] = {
            "resume": run_resume,
            "memory": run_memory,
            "approval": run_approval,
        }[part](args.quick)
        loads[part] = (load_start, _load())
        print(f"  ({part} took {time.perf_counter() - t0:.0f} s)", flush=True)

    def part_env(part: str) -> dict[str, str]:
        return {**env, "load": loads[part][0], "load_end": loads[part][1]}

    if "resume" in results:
        sections[RESUME_HEADING] = resume_section(
            part_env("resume"), cmd, results["resume"]
        )
    if "memory" in results:
        sections[MEMORY_HEADING] = memory_section(
            part_env("memory"), cmd, results["memory"]
        )
    if "approval" in results:
        sections[APPROVAL_HEADING] = approval_section(
            part_env("approval"), cmd, results["approval"]
        )
    text = "\n".join(sections.values())
    print()
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    if args.write:
        rewrite_doc(sections)
        print(f"rewrote {', '.join(repr(h) for h in sections)} in {DOC}")
    print(f"(benchmark took {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
