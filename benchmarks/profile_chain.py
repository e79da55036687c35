#!/usr/bin/env python
"""Where one task's time goes: pyinstrument on the 1,000-step chain.

    pip install pyinstrument
    python benchmarks/profile_chain.py            # print the table
    python benchmarks/profile_chain.py --write    # also replace its section of docs/benchmarks.md
    python benchmarks/profile_chain.py --tree     # also print pyinstrument's call tree

The chain is the one of ``bench_overhead.py`` (1,000 no-op tasks, ``t{i}``
taking ``t{i-1}``, events handed to the OS). pyinstrument samples every
0.1 ms while ``--runs`` runs go on; each sample's time is given to the
function at the top of its stack, and functions are grouped into the parts
of kernelflow they belong to. The sampler slows the run down, so the table
gives each part's *share* of the profiled time, and the microseconds per
task are that share of the median *unprofiled* run, timed just before.

Two references put the numbers in scale: a plain Python call of the same
function, and the least any durable engine must do per task here, namely
encode three events (scheduled, started, succeeded) with orjson and hand
them to the OS with one ``os.write``.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_overhead as bench  # noqa: E402 - the same workload and helpers

import kernelflow as kf  # noqa: E402

HEADING = "## Where a task's time goes"
N = bench.N_TASKS

# (part, how a frame is recognised: a path suffix and, optionally, function names)
PARTS: list[tuple[str, str, tuple[str, ...]]] = [
    ("the task function itself", "<bench>", ()),
    ("`os.write` (the system call)", "<built-in>", ("write", "fsync")),
    ("event encoding (orjson)", "<built-in>", ("dumps",)),
    ("event encoding (orjson)", "kernelflow/events.py", ("to_json_line", "to_dict", "event_id")),
    ("store: segment writer", "store/segments.py", ()),
    ("store: segment writer", "store/folder.py", ()),
    ("recording: `Run._emit` (sequence, lock, group commit)", "kernelflow/run.py", ()),
    ("dataclass objects: events, task calls, outcomes", "<string>", ("__init__",)),
    ("reducer (folding each event into the run state)", "kernelflow/reducer.py", ()),
    ("anomaly detector (on by default)", "plugins/anomaly_detector.py", ()),
    ("anomaly detector (on by default)", "kernelflow/baselines.py", ()),
    ("anomaly detector (on by default)", "kernelflow/anomaly_checks.py", ()),
    ("calling the task: thread executor, task context, print capture", "plugins/thread_executor.py", ()),
    ("calling the task: thread executor, task context, print capture", "kernelflow/task_logs.py", ()),
    ("calling the task: thread executor, task context, print capture", "kernelflow/durable.py", ()),
    ("calling the task: thread executor, task context, print capture", "inspect.py", ()),
    ("engine bookkeeping: dependencies, arguments, scheduling", "kernelflow/engine.py", ()),
    ("per run: the run's lease file (taken, unlinked, closed)", "store/leases.py", ()),
    ("per run: the run's lease file (taken, unlinked, closed)", "<built-in>", ("close", "unlink", "open", "flock")),
    ("per run: input checks, registry, run set-up", "kernelflow/api.py", ()),
    ("per run: input checks, registry, run set-up", "kernelflow/model.py", ()),
]
OTHER = "other (Python's threading, queues, contextvars, ...)"


def part_of(frame: Any) -> str:
    path = (frame.file_path or "").replace(os.sep, "/")
    for part, suffix, functions in PARTS:
        if (path.endswith(suffix) or path == suffix) and (not functions or frame.function in functions):
            return part
    return OTHER


def self_times(root: Any) -> dict[str, float]:
    """Seconds spent in each part's own code. pyinstrument keeps a function's
    own time in a synthetic ``[self]`` child: it counts for the parent."""
    totals: dict[str, float] = defaultdict(float)
    stack: list[tuple[Any, Any]] = [(root, None)]
    while stack:
        frame, parent = stack.pop()
        if frame.is_synthetic:
            totals[part_of(parent) if parent is not None else OTHER] += frame.time
            continue
        children = list(frame.children)
        own = frame.time - sum(child.time for child in children)
        if own > 1e-12:
            totals[part_of(frame)] += own
        stack.extend((child, frame) for child in children)
    return totals


def floor_per_task(events: list[bytes]) -> float:
    """Encode three events and write them with one os.write: the least a durable engine does per task."""
    dicts = [orjson.loads(line) for line in events]
    folder = tempfile.mkdtemp(prefix="kf-floor-")
    fd = os.open(os.path.join(folder, "segment"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:

        def one_task() -> None:
            os.write(fd, b"".join([orjson.dumps(d) + b"\n" for d in dicts]))

        return bench.measure(lambda: [one_task() for _ in range(1_000)], reps=9, warmup=1).median / 1_000
    finally:
        os.close(fd)
        os.unlink(os.path.join(folder, "segment"))
        os.rmdir(folder)


def profile(runs: int, tree: bool) -> dict[str, Any]:
    from pyinstrument import Profiler

    namespace, fns = bench.define(bench.chain_source(N), [f"t{i}" for i in range(N)])
    wf = kf.workflow("chain", fns)

    def plain() -> None:
        value = fns[0]()
        for fn in fns[1:]:
            value = fn(value)

    plain_call = bench.measure(plain, reps=9, warmup=2, inner=100).median / N
    with bench.fresh_store(False) as store:
        timed = bench.measure(wf.run, reps=9, warmup=2)
        gc.collect()
        profiler = Profiler(interval=0.0001)
        profiler.start()
        for _ in range(runs):
            last = wf.run()
        profiler.stop()
        # Three real events of one task, as stored: the floor encodes exactly these.
        lines = [e for e in store.read_run(last.run_id) if e.task_id == "t500"]
        events = [e.to_json_line() for e in lines]
    if tree:
        print(profiler.output_text(unicode=True, color=False))
    parts = self_times(profiler.last_session.root_frame())
    total = sum(parts.values())
    per_task = timed.median / N
    return {
        "parts": sorted(((p, t / total) for p, t in parts.items()), key=lambda item: -item[1]),
        "per_task": per_task,
        "run": timed.median,
        "plain": plain_call,
        "floor": floor_per_task(events),
        "events": len(events),
        "runs": runs,
        "samples": profiler.last_session.sample_count,
    }


def section(result: dict[str, Any], env: dict[str, str], command: str) -> str:
    fmt = bench.fmt
    per_task, plain, floor = result["per_task"], result["plain"], result["floor"]
    rows = [
        f"| {part} | {share * 100:.1f} % | {fmt(share * per_task)} |"
        for part, share in result["parts"]
        if share >= 0.005
    ]
    rest = sum(share for _, share in result["parts"] if share < 0.005)
    if rest:
        rows.append(f"| smaller parts (each under 0.5 %) | {rest * 100:.1f} % | {fmt(rest * per_task)} |")
    return "\n".join([
        HEADING,
        "",
        f"Measured {env['date']} with `{command}` (pyinstrument, 0.1 ms sampling, "
        f"{result['runs']} runs of the 1,000-step chain, {result['samples']:,} samples).",
        "",
        f"- Machine: {env['cpus']} CPUs; Python {env['python']}; kernelflow {env['kernelflow']}; "
        f"1-minute load average {env['load']} at the start.",
        f"- One run of the chain, unprofiled: {fmt(result['run'])} (median of 9), so {fmt(per_task)} per task "
        f"including the task itself; a plain Python call of the same function: {fmt(plain)}.",
        "",
        "| part of kernelflow | share of the profiled time | per task |",
        "|---|---|---|",
        *rows,
        "",
        f"**The floor.** The least any engine that records a task durably must do is encode its "
        f"events and hand them to the OS before dependents run. Encoding this task's "
        f"{result['events']} events (the real ones, from the store) with orjson and writing them with "
        f"one `os.write` costs {fmt(floor)} per task here: {floor / plain:,.0f}× a plain call. "
        f"kernelflow's whole cost is {per_task / floor:.1f}× that floor and {per_task / plain:,.0f}× a plain call.",
        "",
    ])


def replace_section(text: str, new: str) -> str:
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        return pattern.sub(lambda _: new + "\n", text, count=1)
    return text.rstrip("\n") + "\n\n" + new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="profiled runs of the chain (default 20)")
    parser.add_argument("--tree", action="store_true", help="also print pyinstrument's call tree")
    parser.add_argument("--write", action="store_true", help=f"replace '{HEADING}' in docs/benchmarks.md")
    args = parser.parse_args(argv)
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        parser.error("needs pyinstrument: pip install pyinstrument")
    env = bench.machine()
    started = time.time()
    result = profile(args.runs, args.tree)
    command = "python benchmarks/profile_chain.py" + (f" --runs {args.runs}" if args.runs != 20 else "") + " --write"
    text = section(result, env, command)
    print(text)
    print(f"({time.time() - started:.0f} s)", file=sys.stderr)
    if args.write:
        bench.DOC.write_text(replace_section(bench.DOC.read_text(), text))
        print(f"wrote {bench.DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
