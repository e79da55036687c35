"""Measure the folder store: append cost, query latency, compaction.

    python benchmarks/bench_store.py [--events 100000] [--fsync-events 2000] [--dir /tmp]

Prints a Markdown table (docs/store.md quotes it). Events are shaped like the
engine's: ~100-byte JSON payloads, 20 events per run, 5 tasks per run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kernelflow import events as ev
from kernelflow.events import Event
from kernelflow.store import FolderStore

ACTOR = {"user": "bench", "host": "h", "pid": 1, "via": "python"}


def make_events(n: int, prefix: str = "r") -> list[Event]:
    """``n`` events in runs of 20: RunStarted, 5 tasks x (scheduled, started, succeeded), ..."""
    out: list[Event] = []
    ts = 1_795_000_000_000_000
    run = 0
    while len(out) < n:
        rid = f"{prefix}{run:07d}"
        seq = 0

        def add(type_: str, task: str | None = None, attempt: int | None = None, **payload: object) -> None:
            nonlocal seq, ts
            out.append(Event(rid, seq, ts, type_, "bench", "v1", task, attempt, payload, ACTOR))
            seq += 1
            ts += 7

        add(ev.RUN_STARTED, inputs={"date": "2026-11-21"}, tasks=[f"t{i}" for i in range(5)], max_parallel=4,
            executor="thread", notebook=None, batch_id=None)
        for i in range(5):
            add(ev.TASK_SCHEDULED, f"t{i}", 1)
            add(ev.TASK_STARTED, f"t{i}", 1, executor="thread")
            add(ev.TASK_SUCCEEDED, f"t{i}", 1, output={"rows": i * 100, "name": "clean"}, output_ref=None,
                output_type="dict", stored=False, duration_ms=1.5)
        add(ev.RUN_SUCCEEDED)
        for _ in range(3):
            add(ev.TASK_SCHEDULED, "late", 1)
        run += 1
    return out[:n]


def time_appends(path: Path, events: list[Event], *, fsync: bool) -> tuple[FolderStore, float]:
    """The writer (left open: its segment stays live) and the seconds per append."""
    store = FolderStore(path, fsync=fsync, segment_max_events=len(events) + 1000)
    store.append(events[0])  # creates the folder, marker and segment: not what we measure
    t0 = time.perf_counter()
    for event in events[1:]:
        store.append(event)
    elapsed = time.perf_counter() - t0
    return store, elapsed / (len(events) - 1)


def median_time(fn, reps: int = 7) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


QUERIES = {
    "`SELECT count(*) FROM events`": "SELECT count(*) FROM events",
    "`SELECT * FROM runs` (5,000 rows)": "SELECT * FROM runs",
    "`task_attempts` of one run": "SELECT * FROM task_attempts WHERE run_id = 'r0002500'",
}


def bench_queries(path: Path, writer: FolderStore | None = None) -> dict[str, float]:
    """Query latencies from a second handle (as another process would query)."""
    import duckdb

    duckdb.connect().sql("SELECT 1").pl()  # one-time imports (polars, pyarrow): not the store's cost
    store = FolderStore(path)
    out: dict[str, float] = {}
    # First query of a handle: connection, views, and reading any open segment.
    t0 = time.perf_counter()
    store.sql("SELECT count(*) FROM events")
    out["first query of a new handle"] = time.perf_counter() - t0
    for label, q in QUERIES.items():
        out[label] = median_time(lambda q=q: store.sql(q))
    out["`read_run` (20 events)"] = median_time(lambda: store.read_run("r0002500"))
    if writer is not None:
        # The live segment grew: the next query reads it again.
        def grown() -> None:
            writer.append(Event("extra", grown.seq, 1, ev.RUN_STARTED, "bench", "v1"))  # type: ignore[attr-defined]
            grown.seq += 1  # type: ignore[attr-defined]
            store.sql("SELECT count(*) FROM events")

        grown.seq = 0  # type: ignore[attr-defined]
        out["`count(*)` right after the writer appended one more event"] = median_time(grown)
    store.close()
    return out


def bench_parallel(root: Path, procs: int, per_proc: int) -> float:
    """Aggregate events/s with ``procs`` processes appending at once."""
    code = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from bench_store import make_events\n"
        "from kernelflow.store import FolderStore\n"
        "events = make_events(int(sys.argv[2]), prefix=sys.argv[3])\n"
        "store = FolderStore(sys.argv[1], segment_max_events=10**9)\n"
        "store.append(events[0])\n"
        "open(sys.argv[4], 'w').close()\n"
        "while not __import__('os').path.exists(sys.argv[5]): time.sleep(0.001)\n"
        "t0 = time.perf_counter()\n"
        "for e in events[1:]: store.append(e)\n"
        "print(time.perf_counter() - t0)\n"
        "import os; os._exit(0)  # leave compaction out of the measurement\n"
    )
    go = root / "go"
    ps = []
    for i in range(procs):
        ps.append(
            subprocess.Popen(
                [sys.executable, "-c", code, str(root / "par"), str(per_proc), f"p{i}-", str(root / f"ready{i}"), str(go)],
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    while not all((root / f"ready{i}").exists() for i in range(procs)):
        time.sleep(0.01)
    t0 = time.perf_counter()
    go.touch()
    for p in ps:
        p.wait()
    wall = time.perf_counter() - t0
    return procs * (per_proc - 1) / wall


def one_round(root: Path, n_events: int, n_fsync: int) -> dict[str, tuple[float, str]]:
    """One pass over everything: ``label -> (value, unit)``; seconds are reported in µs or ms."""
    events = make_events(n_events)
    out: dict[str, tuple[float, str]] = {}

    writer, per = time_appends(root / "a", events, fsync=False)
    out["append, no fsync (per event)"] = (per * 1e6, "µs")
    fsync_writer, per_fsync = time_appends(root / "b", make_events(n_fsync), fsync=True)
    fsync_writer.close()
    out["append, fsync per event"] = (per_fsync * 1e6, "µs")
    t0 = time.perf_counter()
    for e in events:
        e.to_json_line()
    out["  of which `Event.to_json_line()`"] = ((time.perf_counter() - t0) / len(events) * 1e6, "µs")
    out["4 processes appending at once (aggregate)"] = (bench_parallel(root, 4, n_events // 4), "events/s")

    for label, t in bench_queries(root / "a", writer).items():
        out[f"{label}, {n_events:,} events in one open segment"] = (t * 1e3, "ms")

    seg = next((root / "a" / "segments").glob("*.jsonl"))
    size = seg.stat().st_size
    t0 = time.perf_counter()
    writer.close()  # closes the segment and compacts it
    compaction = time.perf_counter() - t0
    assert not seg.exists()
    parquet = next((root / "a" / "events").glob("*.parquet")).stat().st_size
    out[f"writer close = compaction of that segment ({size / 1e6:.1f} MB JSON -> {parquet / 1e6:.2f} MB Parquet)"] = (
        compaction * 1e3,
        "ms",
    )
    for label, t in bench_queries(root / "a").items():
        out[f"{label}, {n_events:,} events compacted"] = (t * 1e3, "ms")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--fsync-events", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3, help="report the median of this many rounds")
    parser.add_argument("--dir", default=None, help="where to make the stores (default: a temp dir)")
    args = parser.parse_args()

    results: dict[str, list[float]] = {}
    units: dict[str, str] = {}
    for _ in range(args.rounds):
        root = Path(tempfile.mkdtemp(prefix="kf-bench-", dir=args.dir))
        try:
            for label, (value, unit) in one_round(root, args.events, args.fsync_events).items():
                results.setdefault(label, []).append(value)
                units[label] = unit
        finally:
            shutil.rmtree(root, ignore_errors=True)

    line = sum(len(e.to_json_line()) for e in make_events(1000)) / 1000
    print(
        f"kernelflow store benchmark: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; events of ~{line:.0f} bytes; "
        f"median of {args.rounds} rounds; stores in {args.dir or tempfile.gettempdir()}"
    )
    print()
    print("| what | result |")
    print("|---|---|")
    for label, values in results.items():
        value, unit = statistics.median(values), units[label]
        if unit == "events/s":
            text = f"{value:,.0f} events/s"
        elif unit == "µs":
            text = f"{value:.1f} µs" if value < 100 else f"{value:.0f} µs ({1e6 / value:,.0f} events/s)"
            if label.startswith("append, no fsync"):
                text += f" ({1e6 / value:,.0f} events/s)"
        else:
            text = f"{value:.1f} ms"
        print(f"| {label} | {text} |")


if __name__ == "__main__":
    main()
