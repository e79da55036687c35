"""What one Prometheus scrape of a store costs (kernelflow.metrics).

    python benchmarks/bench_metrics.py            # full: 1,000 and 10,000 runs, ~1 minute
    python benchmarks/bench_metrics.py --quick    # smoke run: 1,000 runs, few samples
    python benchmarks/bench_metrics.py --write    # also rewrites "Metrics scrape cost" in docs/benchmarks.md

* **The stores**: N runs of 10 tasks over 10 workflows (``wf0`` ... ``wf9``),
  one run every 6 s up to now, task durations from 50 ms to 5 s with jitter,
  1 run in 100 failing (the generator of ``bench_alerts.py``); written with
  ``FolderStore.append_many`` and compacted into Parquet, plus 20 circuit
  breakers' state files. Then read through a fresh handle.
* **A scrape**: ``render(store)``, the exposition text of every metric
  (``kernelflow.metrics``: runs, task attempts, alerts, events, triggers when
  the view exists; the circuits' files), as ``kernelflow metrics`` prints it;
  the first one in a process (it sets up the DuckDB connection of the
  collector's thread: views, lookup tables) and the following ones (medians);
  and a scrape over HTTP from ``serve()`` (``httpx.get``), whose collector
  keeps its connection between scrapes. ``gc.collect()`` before each sample.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_alerts import TASKS, history_events  # noqa: E402
from bench_overhead import _load, machine, rewrite_doc  # noqa: E402
from kernelflow.store import FolderStore  # noqa: E402

import kernelflow as kf  # noqa: E402
from kernelflow.metrics import render, serve  # noqa: E402

HEADING = "## Metrics scrape cost"
CIRCUITS = 20


def build(root: Path, runs: int) -> dict[str, Any]:
    store = FolderStore(root)
    t0 = time.perf_counter()
    events = store.append_many(history_events(runs * TASKS, int(time.time() * 1e6) - 60_000_000))
    store.close()
    for i in range(CIRCUITS):
        circuit = kf.circuit(f"service{i}", store=root)
        circuit.open()
        if i % 4:  # a quarter stay open, the rest are closed again
            circuit.close()
    return {"events": events, "build_s": time.perf_counter() - t0}


def timed(fn: Any) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(root: Path, samples: int) -> dict[str, Any]:
    import httpx

    store = FolderStore(root)
    out: dict[str, Any] = {}
    text: list[str] = []
    out["first"] = timed(lambda: text.append(render(store)))
    out["size"] = len(text[0])
    out["series"] = sum(1 for line in text[0].splitlines() if line and not line.startswith("#"))
    # render() makes a fresh collector (and worker thread, and DuckDB connection) each time, as
    # `kernelflow metrics` does once per process.
    out["render"] = [timed(lambda: render(store)) for _ in range(samples)]
    server, _ = serve(store, port=0)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        out["http_first"] = timed(lambda: httpx.get(url, timeout=60).raise_for_status())
        out["http"] = [timed(lambda: httpx.get(url, timeout=60).raise_for_status()) for _ in range(samples)]
    finally:
        server.shutdown()
        server.server_close()
    store.close()
    return out


def ms(s: float) -> str:
    return f"{s * 1e3:.1f} ms"


def section(env: dict[str, str], cmd: str, results: list[tuple[int, dict[str, Any], dict[str, Any]]], samples: int) -> str:
    lines = [
        HEADING,
        "",
        f"Measured {env['date']} with `{cmd}`.",
        "",
        f"- Machine: {env['cpus']} CPUs, `{env['uname']}`",
        f"- Python {env['python']}; kernelflow {env['kernelflow']}; duckdb {env['duckdb']}; polars {env['polars']}",
        f"- Stores under {env['tmp']}, removed afterwards. 1-minute load average {env['load']} at the start, "
        f"{env['load_end']} at the end.",
        "",
        f"Each store: N runs of {TASKS} tasks over 10 workflows (1 run in 100 failing; the generator of "
        f"`bench_alerts.py`), written with `FolderStore.append_many` and compacted into Parquet, plus {CIRCUITS} "
        "circuit breakers; read through a fresh handle. A scrape is every metric of docs/metrics.md: five SQL "
        "queries over the views (runs, task attempts, alerts, events, triggers when the view exists, plus one "
        "asking whether it does) and the circuits' state files. `render()` builds a new collector each call (a "
        "new DuckDB connection on its thread, as `kernelflow metrics` does once per process); the HTTP server "
        f"from `serve()` keeps its collector, so its scrapes after the first reuse the connection. Medians of "
        f"{samples}; `gc.collect()` before each sample.",
        "",
        "| runs (events) | series in the text | first `render()` in a process | `render()` | first HTTP scrape | HTTP scrape (steady) |",
        "|---|---|---|---|---|---|",
    ]
    for runs, built, r in results:
        lines.append(
            f"| {runs:,} ({int(built['events']):,}) | {r['series']:,} ({r['size'] / 1024:.0f} KiB) | {ms(r['first'])} | "
            f"{ms(statistics.median(r['render']))} | {ms(r['http_first'])} | {ms(statistics.median(r['http']))} "
            f"(min {ms(min(r['http']))}, max {ms(max(r['http']))}) |"
        )
    runs, _, r = results[0]
    lines += [
        "",
        f"With {runs:,} runs a steady scrape costs {ms(statistics.median(r['http']))}: well under Prometheus' default "
        "10 s scrape timeout and small beside a 15 s scrape interval. The queries scan the whole event log, so "
        "the cost grows with the store (the larger row above); `kernelflow gc` bounds it.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 runs only, few samples")
    parser.add_argument("--write", action="store_true", help=f"rewrite {HEADING!r} in docs/benchmarks.md")
    args = parser.parse_args(argv)
    sizes = [1_000] if args.quick else [1_000, 10_000]
    samples = 5 if args.quick else 15
    env = machine()
    cmd = "python benchmarks/bench_metrics.py" + (" --quick" if args.quick else "") + " --write"
    tmp = Path(tempfile.mkdtemp(prefix="kf-metrics-"))
    results = []
    try:
        for runs in sizes:
            root = tmp / f"store-{runs}"
            print(f"building a store of {runs:,} runs", flush=True)
            built = build(root, runs)
            results.append((runs, built, bench(root, samples)))
        env["load_end"] = _load()
        text = section(env, cmd, results, samples)
        print()
        print(text)
        if args.write:
            rewrite_doc({HEADING: text})
            print(f"rewrote {HEADING!r} in docs/benchmarks.md")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
