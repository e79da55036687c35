#!/usr/bin/env python
"""Live DAG widget: what it costs a run in a real Jupyter kernel, and whether the kernel stays responsive.

    python benchmarks/bench_widgets.py            # full run (~1.5 min on a 2-core machine)
    python benchmarks/bench_widgets.py --quick    # smoke run: few samples, a shorter background run
    python benchmarks/bench_widgets.py --write    # also rewrite our section of docs/benchmarks.md
    python benchmarks/bench_widgets.py --profile  # cProfile (in the kernel) of one fan-out run with the widget, then exit

Everything runs in a real ``python3`` Jupyter kernel started by nbclient
(``NotebookClient`` on an in-memory nbformat notebook, cells appended and
executed one by one), with ``KERNELFLOW_HOME``, ``IPYTHONDIR`` and
``JUPYTER_RUNTIME_DIR`` in a temp folder (removed afterwards) and
``KERNELFLOW_NO_WATCH=1``. What is measured:

1. **Run time with and without the live widget**, in ONE kernel session.
   "With" = the extension loaded (``get_ipython().extension_manager
   .load_extension("kernelflow")``, what ``%load_ext kernelflow`` does): its
   plugin gives every run a ``LiveDag`` observer that displays a
   ``DagWidget`` and pushes state to it (batched, ``UPDATE_INTERVAL``).
   "Without" = the extension unloaded (``%unload_ext``): no observer. The
   two modes alternate in rounds (with/without, then without/with, ...),
   each mode running every workload a few times per round; medians over all
   rounds. Workloads, no-op tasks generated with ``exec``: a 500-task
   fan-out (one source, 498 tasks taking it, one join taking all 498) and
   a 500-task chain. A sample is ``wf.run()`` timed in the kernel
   (``time.perf_counter``, ``gc.collect()`` before it); each sample checks
   the run succeeded and had 1 observer (with) or none (without).
   Messages: the kernel counts ``DagWidget.apply`` calls and the comm
   messages the widget sends (``Widget._send`` wrapped, counting only);
   the client counts every ``comm_open``/``comm_msg``/``display_data``/
   ``update_display_data`` arriving on iopub (``iopub_channel.get_msg``
   wrapped), with their JSON sizes. A few extra runs with the widget (not
   in the timings) wrap the observer's methods and ``layout_of`` to show
   where the widget's time goes.
2. **Responsiveness**: a chain of 5,000 tasks each sleeping 1 ms is started
   with ``wf.start()`` (with and without the widget, alternating); while it
   runs the client executes ``1+1`` cells (``client.execute_cell``, timed
   from the client, 20 ms apart) and only probes whose send and reply both
   fall inside the run count. Baseline: the same probes with nothing
   running.
3. **Saved state**: a fresh notebook (``%load_ext kernelflow``, one run of
   each 500-task workflow) executed with ``NotebookClient.execute()``; the
   size of each widget's entry in ``metadata.widgets``, and of the run
   cell's outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
HEADING = "## Live DAG widget: update overhead"

N_TASKS = 500
LONG_TASKS = 5_000
LONG_SLEEP_S = 0.001
PROBE_GAP_S = 0.020
BREAKDOWN_ORDER = (
    "LiveDag.__init__ (whole)",
    "DagWidget.for_run",
    "layout_of (Graphviz dot)",
    "static_html (text/html fallback)",
    "LiveDag.on_events",
    "DagWidget.apply",
    "LiveDag.on_finish (whole)",
)
OVERHEAD_LIMIT_S = 20e-6  # per task: above this the section says the widget slows runs a lot


# --- code run in the kernel ----------------------------------------------------------------

KERNEL_SETUP = r'''
import gc, json, sys, time
import ipywidgets
import kernelflow as kf
import kernelflow.kernel_ext as _kfx
from kernelflow.kernel_ext import live_status as _ls
from kernelflow.widgets import dag as _dag

def _define(src, names):
    ns = {"time": time}
    exec(compile(src, "<bench>", "exec"), ns)
    return [ns[n] for n in names]

def _fanout(n):
    k = n - 2
    src = ["def src():\n    return None\n"] + [f"def c{i}(src):\n    return None\n" for i in range(k)]
    src.append("def join(" + ", ".join(f"c{i}" for i in range(k)) + "):\n    return None\n")
    return kf.workflow(f"fanout{n}", _define("".join(src), ["src", *[f"c{i}" for i in range(k)], "join"]))

def _chain(n, body="None", name=None):
    src = [f"def t0():\n    return {body}\n"] + [f"def t{i}(t{i - 1}):\n    return {body}\n" for i in range(1, n)]
    return kf.workflow(name or f"chain{n}", _define("".join(src), [f"t{i}" for i in range(n)]))

_WF = {"fanout": _fanout(_N), "chain": _chain(_N)}
_LONG = _chain(_LONG_N, f"time.sleep({_LONG_SLEEP})", name=f"sleepchain{_LONG_N}")

# Cheap counters (a few calls per run): kept on while timing.
_C = {"apply": 0, "apply_s": 0.0, "send": 0, "init_s": 0.0, "finish_s": 0.0}

def _wrap_counting():
    apply, send, init, finish = _dag.DagWidget.apply, ipywidgets.Widget._send, _ls.LiveDag.__init__, _ls.LiveDag.on_finish
    def apply_(self, state):
        t = time.perf_counter()
        try:
            return apply(self, state)
        finally:
            _C["apply"] += 1
            _C["apply_s"] += time.perf_counter() - t
    def send_(self, msg, buffers=None):
        if isinstance(self, _dag.DagWidget) and self.comm is not None:  # no comm yet: nothing is sent
            _C["send"] += 1
        return send(self, msg, buffers)
    def init_(self, run):
        t = time.perf_counter()
        try:
            return init(self, run)
        finally:
            _C["init_s"] += time.perf_counter() - t
    def finish_(self, run):
        t = time.perf_counter()
        try:
            return finish(self, run)
        finally:
            _C["finish_s"] += time.perf_counter() - t
    _dag.DagWidget.apply, ipywidgets.Widget._send = apply_, send_
    _ls.LiveDag.__init__, _ls.LiveDag.on_finish = init_, finish_

_wrap_counting()

def _mode(on):
    ip = get_ipython()
    if on:
        ip.extension_manager.load_extension("kernelflow")
    else:
        ip.extension_manager.unload_extension("kernelflow")
    print(json.dumps({"loaded": "kernelflow" in ip.extension_manager.loaded, "plugin": _kfx._plugin is not None}))

def _timed(name, reps):
    wf, out = _WF[name], []
    for _ in range(reps):
        gc.collect()
        for k in _C:
            _C[k] = 0
        t = time.perf_counter()
        run = wf.run()
        dt = time.perf_counter() - t
        assert run.status == "succeeded", run.status
        out.append({"s": dt, "observers": len(run._observers), **_C})
        del run
    print(json.dumps(out))

def _breakdown(name, reps):
    """Runs with the widget and every part of it timed (not used for the run-time medians)."""
    parts = {}
    def timed(owner, attr, key):
        original = getattr(owner, attr)
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                p = parts.setdefault(key, [0, 0.0])
                p[0] += 1
                p[1] += time.perf_counter() - t
        setattr(owner, attr, wrapper)
        return original
    saved = [
        (_ls.LiveDag, "__init__", timed(_ls.LiveDag, "__init__", "LiveDag.__init__ (whole)")),
        (_dag.DagWidget, "for_run", timed(_dag.DagWidget, "for_run", "DagWidget.for_run")),
        (_dag, "layout_of", timed(_dag, "layout_of", "layout_of (Graphviz dot)")),
        (_dag.DagWidget, "static_html", timed(_dag.DagWidget, "static_html", "static_html (text/html fallback)")),
        (_ls.LiveDag, "on_events", timed(_ls.LiveDag, "on_events", "LiveDag.on_events")),
        (_ls.LiveDag, "on_finish", timed(_ls.LiveDag, "on_finish", "LiveDag.on_finish (whole)")),
        (_dag.DagWidget, "apply", timed(_dag.DagWidget, "apply", "DagWidget.apply")),
    ]
    runs = []
    try:
        for _ in range(reps):
            parts.clear()
            gc.collect()
            t = time.perf_counter()
            run = _WF[name].run()
            runs.append({"s": time.perf_counter() - t, "parts": {k: list(v) for k, v in parts.items()}})
            del run
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)
    print(json.dumps(runs))

def _start_long():
    global _bg
    for k in _C:
        _C[k] = 0
    gc.collect()
    _bg = _LONG.start()

def _wait_long():
    global _bg
    _bg.wait()
    s = _bg.state
    print(json.dumps({"status": s.status, "started": s.started_at / 1e6, "ended": s.ended_at / 1e6,
                      "observers": len(_bg._observers), **_C}))
    _bg = None

def _profile(name, reps):
    import cProfile, io, pstats
    p = cProfile.Profile()
    p.enable()
    for _ in range(reps):
        _WF[name].run()
    p.disable()
    out = io.StringIO()
    stats = pstats.Stats(p, stream=out).sort_stats("cumulative")
    stats.print_stats(25)
    stats.print_callees("for_run|live_status.py.*(__init__|on_finish)")
    print(out.getvalue())
'''

SAVED_NOTEBOOK = [
    "import json, time\nimport kernelflow as kf\n_N = {n}\n",
    "%load_ext kernelflow",
    "run_fanout = _fanout(_N).run()",
    "run_chain = _chain(_N).run()",
    "from kernelflow.widgets.dag import live_widget\n"
    "print(json.dumps({{k: live_widget(r.run_id).model_id for k, r in "
    "[('fanout', run_fanout), ('chain', run_chain)]}}))",
]


# --- the client ----------------------------------------------------------------------------


@contextlib.contextmanager
def kernel_env() -> Iterator[str]:
    """A temp folder holding the store, IPython dir and runtime dir the kernel inherits."""
    root = tempfile.mkdtemp(prefix="kf-bench-widgets-")
    keys = ("KERNELFLOW_HOME", "KERNELFLOW_NO_WATCH", "IPYTHONDIR", "JUPYTER_RUNTIME_DIR", "KERNELFLOW_FSYNC",
            "KERNELFLOW_BATCH_ID")  # fmt: skip
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({
        "KERNELFLOW_HOME": os.path.join(root, "store"), "KERNELFLOW_NO_WATCH": "1",
        "IPYTHONDIR": os.path.join(root, "ipython"), "JUPYTER_RUNTIME_DIR": os.path.join(root, "runtime"),
    })  # fmt: skip
    os.environ.pop("KERNELFLOW_FSYNC", None)
    os.environ.pop("KERNELFLOW_BATCH_ID", None)
    try:
        yield root
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(root, ignore_errors=True)


class Kernel:
    """One kernel session driven by nbclient; cells are appended and executed one at a time."""

    def __init__(self, workdir: str) -> None:
        import nbformat
        from nbclient import NotebookClient

        self.nb = nbformat.v4.new_notebook()
        self.client = NotebookClient(self.nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": workdir}})  # fmt: skip
        self.iopub: Counter[str] = Counter()
        self.iopub_bytes: Counter[str] = Counter()
        self._cm: Any = None

    def __enter__(self) -> Kernel:
        self._cm = self.client.setup_kernel()
        self._cm.__enter__()
        channel = self.client.kc.iopub_channel
        original = channel.get_msg
        counts, sizes = self.iopub, self.iopub_bytes

        async def get_msg(*args: Any, **kwargs: Any) -> Any:
            msg = await original(*args, **kwargs)
            kind = msg["msg_type"]
            if kind in ("comm_open", "comm_msg", "display_data", "update_display_data"):
                counts[kind] += 1
                sizes[kind] += len(json.dumps(msg["content"], default=str))
            return msg

        channel.get_msg = get_msg  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)

    def execute(self, source: str) -> tuple[Any, float]:
        import nbformat

        cell = nbformat.v4.new_code_cell(source)
        self.nb.cells.append(cell)
        start = time.perf_counter()
        self.client.execute_cell(cell, len(self.nb.cells) - 1)
        return cell, time.perf_counter() - start

    def json(self, source: str) -> Any:
        cell, _ = self.execute(source)
        return last_json(stdout_of(cell))

    def reset_iopub(self) -> None:
        self.iopub.clear()
        self.iopub_bytes.clear()


def stdout_of(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")


def last_json(text: str) -> Any:
    for line in reversed(text.strip().splitlines()):
        if line.startswith(("{", "[")):
            return json.loads(line)
    raise RuntimeError(f"no JSON result in the cell's output:\n{text[-2000:]}")


# --- the measurements ------------------------------------------------------------------------


def setup_cell(n: int, long_n: int) -> str:
    return f"_N, _LONG_N, _LONG_SLEEP = {n}, {long_n}, {LONG_SLEEP_S}\n" + KERNEL_SETUP


def run_timings(k: Kernel, rounds: int, reps: int, log: Any) -> dict[str, Any]:
    """Alternate the two modes in rounds; every mode runs each workload ``reps`` times per round."""
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    iopub: dict[tuple[str, str], Counter[str]] = {}
    iopub_bytes: dict[tuple[str, str], Counter[str]] = {}
    for on in (False, True):  # warm-up, not timed: first registration, imports, first dot call
        k.json(f"_mode({on})")
        for name in ("fanout", "chain"):
            k.json(f"_timed({name!r}, 1)")
    for r in range(rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        for on in order:
            state = k.json(f"_mode({on})")
            if state["loaded"] != on or state["plugin"] != on:
                raise RuntimeError(f"the extension did not switch {'on' if on else 'off'}: {state}")
            mode = "with" if on else "without"
            for name in ("fanout", "chain"):
                k.reset_iopub()
                rows = k.json(f"_timed({name!r}, {reps})")
                for row in rows:
                    if row["observers"] != (1 if on else 0):
                        raise RuntimeError(f"{mode} the widget, a run had {row['observers']} observers")
                samples.setdefault((name, mode), []).extend(rows)
                iopub.setdefault((name, mode), Counter()).update(k.iopub)
                iopub_bytes.setdefault((name, mode), Counter()).update(k.iopub_bytes)
                med = statistics.median(x["s"] for x in rows)
                log(f"  round {r + 1}/{rounds} {name:7s} {mode:7s} median {fmt(med)} ({reps} runs)")
    k.json("_mode(True)")
    breakdown = {name: k.json(f"_breakdown({name!r}, {max(2, reps)})") for name in ("fanout", "chain")}
    return {"samples": samples, "iopub": iopub, "iopub_bytes": iopub_bytes, "breakdown": breakdown}


def probe(k: Kernel, count: int | None = None, until: float | None = None) -> list[tuple[float, float, float]]:
    """``1+1`` cells, PROBE_GAP_S apart: [(wall time sent, wall time answered, round trip s)]."""
    out = []
    while (count is not None and len(out) < count) or (until is not None and time.time() < until):
        sent = time.time()
        _, rtt = k.execute("1+1")
        out.append((sent, time.time(), rtt))
        time.sleep(PROBE_GAP_S)
    return out


def run_responsiveness(k: Kernel, rounds: int, long_n: int, log: Any) -> dict[str, Any]:
    idle = [p[2] for p in probe(k, count=40)]
    log(f"  idle: 1+1 median {fmt(statistics.median(idle))}")
    window = 0.9 * long_n * LONG_SLEEP_S  # the run takes at least long_n sleeps
    result: dict[str, Any] = {"idle": idle, "runs": {"with": [], "without": []}}
    for r in range(rounds):
        for on in ((True, False) if r % 2 == 0 else (False, True)):
            mode = "with" if on else "without"
            k.json(f"_mode({on})")
            k.reset_iopub()
            _, start_cell = k.execute("_start_long()")
            probes = probe(k, until=time.time() + window)
            done = k.json("_wait_long()")
            if done["status"] != "succeeded" or done["observers"] != (1 if on else 0):
                raise RuntimeError(f"background run {mode} the widget: {done}")
            inside = [p[2] for p in probes if p[0] >= done["started"] and p[1] <= done["ended"]]
            result["runs"][mode].append({
                "duration": done["ended"] - done["started"], "start_cell": start_cell, "rtt": inside,
                "probes": len(probes), "apply": done["apply"], "apply_s": done["apply_s"], "send": done["send"],
                "comm_msg": k.iopub["comm_msg"], "comm_bytes": k.iopub_bytes["comm_msg"] + k.iopub_bytes["comm_open"],
            })  # fmt: skip
            log(f"  background run {mode:7s} the widget: {fmt(done['ended'] - done['started'])}, "
                f"{len(inside)} probes inside, 1+1 median {fmt(statistics.median(inside)) if inside else '-'}")  # fmt: skip
    return result


def run_saved_state(n: int, workdir: str) -> dict[str, Any]:
    """A fresh notebook executed end to end; sizes of what it saves."""
    import nbformat
    from nbclient import NotebookClient

    setup = KERNEL_SETUP.split("_WF = ")[0]  # the imports and workflow builders only
    cells = [SAVED_NOTEBOOK[0].format(n=n) + setup] + [c.format(n=n) for c in SAVED_NOTEBOOK[1:]]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": workdir}}).execute()
    ids = last_json(stdout_of(nb.cells[-1]))
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    out: dict[str, Any] = {"models": len(state)}

    def compact(value: Any) -> int:
        return len(json.dumps(value, separators=(",", ":")))

    for name, idx in (("fanout", 2), ("chain", 3)):
        model = state.get(ids[name], {})
        st = model.get("state", {})
        # Models this one refers to (ipywidgets' Layout of a DOM widget) are saved next to it.
        refs = [v[len("IPY_MODEL_"):] for v in st.values() if isinstance(v, str) and v.startswith("IPY_MODEL_")]
        layout_key = "graph_layout" if "graph_layout" in st else "layout"  # renamed: `layout` is ipywidgets' own
        outputs = nb.cells[idx].outputs
        html = sum(len(o.get("data", {}).get("text/html", "")) for o in outputs)
        out[name] = {
            "model": compact(model) + sum(compact(state.get(r, {})) for r in refs),
            "refs": len(refs),
            "parts": {key: compact(st.get(key)) for key in ("graph", "status", "tasks", "_esm", "_css")}
            | {"layout": compact(st.get(layout_key))},
            "layout_key": layout_key,
            "outputs": len(json.dumps(outputs, separators=(",", ":"))),
            "html": html,
            "final": st.get("run_status"),
            "succeeded": sum(1 for v in (st.get("status") or {}).values() if v == "succeeded"),
        }  # fmt: skip
    with_widgets = len(nbformat.writes(nb))
    nb.metadata.pop("widgets", None)
    out["file"] = with_widgets
    out["file_without_widget_metadata"] = len(nbformat.writes(nb))
    return out


# --- report ----------------------------------------------------------------------------------


def fmt(seconds: float) -> str:
    if seconds < 0:
        return "−" + fmt(-seconds)
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e9:.0f} ns"


def kb(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.1f} kB"
    return f"{n:.0f} B"


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _cmd(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, check=True, cwd=REPO)
        return (done.stdout or done.stderr).strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def machine() -> dict[str, str]:
    import kernelflow as kf

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = _cmd(["git", "rev-parse", "--short", "HEAD"])
    porcelain = _cmd(["git", "status", "--porcelain", "--untracked-files=no"])
    changed = [line.split(maxsplit=1)[1] for line in porcelain.splitlines() if len(line.split(maxsplit=1)) == 2]
    dirty = [] if porcelain == "?" else [p for p in changed if p != str(DOC.relative_to(REPO))]
    versions = "; ".join(f"{p} {metadata.version(p)}" for p in ("ipykernel", "nbclient", "ipywidgets", "anywidget"))
    return {
        "date": datetime.date.today().isoformat(),
        "uname": _cmd(["uname", "-a"]) if shutil.which("uname") else " ".join(platform.uname()),
        "cpus": f"{os.cpu_count()} ({cpu})",
        "python": sys.version.split()[0],
        "kernelflow": f"{kf.__version__} (git {commit}"
        + (f"; uncommitted changes in {', '.join(dirty)}" if dirty else "") + ")",
        "versions": versions,
        "dot": _cmd(["dot", "-V"]) if shutil.which("dot") else "no dot on PATH",
        "load": _load(),
    }


WIDGET_SOURCES = ("widgets/dag.py", "widgets/dag.js", "widgets/dag.css", "widgets/dag_static.py", "widgets/fallback.py",
                  "kernel_ext/live_status.py", "kernel_ext/__init__.py", "kernelflow/run.py", "kernelflow/api.py")


def widget_sources_hash() -> str:
    """A fingerprint of the code this measures: a change while it runs would mix two versions."""
    import hashlib

    digest = hashlib.sha256()
    for rel in WIDGET_SOURCES:
        with contextlib.suppress(OSError):
            digest.update(rel.encode() + (REPO / rel).read_bytes())
    return digest.hexdigest()[:12]


def command_line(args: argparse.Namespace) -> str:
    return f"python benchmarks/bench_widgets.py{' --quick' if args.quick else ''} --write"


def section(env: dict[str, str], cmd: str, t: dict[str, Any], resp: dict[str, Any], saved: dict[str, Any],
            rounds: int, reps: int, long_rounds: int, long_n: int) -> str:  # fmt: skip
    from kernelflow.widgets.dag import LAYOUT_TASK_LIMIT
    from kernelflow.widgets.dag_static import SVG_TASK_LIMIT

    samples, iopub, iopub_bytes = t["samples"], t["iopub"], t["iopub_bytes"]
    labels = {"fanout": f"fan-out 1 + {N_TASKS - 2} + join ({N_TASKS} tasks)", "chain": f"chain of {N_TASKS}"}
    med = {key: statistics.median(x["s"] for x in rows) for key, rows in samples.items()}
    lines = [
        HEADING,
        "",
        f"Measured {env['date']} with `{cmd}`.",
        "",
        f"- Machine: {env['cpus']} CPUs, `{env['uname']}`",
        f"- Python {env['python']}; kernelflow {env['kernelflow']}; {env['versions']}; {env['dot']}",
        f"- 1-minute load average {env['load']} when the benchmark started and {env['load_end']} when it ended, "
        "on 2 cores (the kernel, the client and the widget's timer thread share them); above ~1, other work "
        "shares them and the numbers move.",
        "",
        "A real `python3` Jupyter kernel, started by nbclient (`NotebookClient` on an in-memory notebook, cells "
        "appended and executed one by one; `KERNELFLOW_HOME`, `IPYTHONDIR` and `JUPYTER_RUNTIME_DIR` in a temp "
        "folder; `KERNELFLOW_NO_WATCH=1`). **With** the widget = the extension loaded (what `%load_ext "
        "kernelflow` does): every run gets a `LiveDag` observer that displays a `DagWidget` and pushes state to "
        f"it, at most one push per `UPDATE_INTERVAL` (0.2 s) plus a last one when the run ends. **Without** = "
        f"the extension unloaded (`%unload_ext kernelflow`): no observer. Both modes run in the **same kernel "
        f"session**, alternating in {rounds} rounds (with then without, then without then with, ...), each mode "
        f"running each workload {reps} times per round after one untimed warm-up run per mode and workload; "
        "every sample checks the run succeeded and had 1 observer (with) or 0 (without). A sample is "
        "`wf.run()` timed inside the kernel (`gc.collect()` before it). Tasks are no-op functions generated "
        "with `exec`: the fan-out's source has 498 children and the join takes all 498 as parameters.",
        "",
        "| workload | widget | runs | median per run | min – max | per task | `apply` calls per run | `comm_msg` per run: sent (kernel) / received (client) | `comm_open` per run | iopub bytes per run: comm / display |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("fanout", "chain"):
        for mode in ("without", "with"):
            rows = samples[(name, mode)]
            times = [x["s"] for x in rows]
            n_runs = len(rows)
            sent = statistics.median(x["send"] for x in rows)
            applies = statistics.median(x["apply"] for x in rows)
            got, size = iopub[(name, mode)], iopub_bytes[(name, mode)]
            comm_bytes = (size["comm_msg"] + size["comm_open"]) / n_runs
            display_bytes = (size["display_data"] + size["update_display_data"]) / n_runs
            lines.append(
                f"| {labels[name]} | {mode} | {n_runs} | {fmt(med[(name, mode)])} | {fmt(min(times))} – "
                f"{fmt(max(times))} | {fmt(med[(name, mode)] / N_TASKS)} | {applies:g} | "
                f"{sent:g} / {got['comm_msg'] / n_runs:g} | {got['comm_open'] / n_runs:g} | "
                f"{kb(comm_bytes)} / {kb(display_bytes)} |"
            )
    lines += ["", "The widget's cost (median with − median without):", ""]
    lines += [
        "| workload | per run | per task | LiveDag construction per run (median) | of which `layout_of` (Graphviz `dot`) | rest per task (cost − construction) |",
        "|---|---|---|---|---|---|",
    ]
    worst = 0.0
    breakdown = t["breakdown"]
    for name in ("fanout", "chain"):
        diff = med[(name, "with")] - med[(name, "without")]
        worst = max(worst, diff / N_TASKS)
        init = statistics.median(x["init_s"] for x in samples[(name, "with")])
        layout = statistics.median(r["parts"].get("layout_of (Graphviz dot)", [0, 0.0])[1] for r in breakdown[name])
        lines.append(
            f"| {labels[name]} | {fmt(diff)} | **{fmt(diff / N_TASKS)}** | {fmt(init)} | {fmt(layout)} | "
            f"{fmt((diff - init) / N_TASKS)} |"
        )
    lines += [
        "",
        "Where the widget's time goes: extra runs with the widget (not in the medians above), each part of it "
        "wrapped and timed (calls per run, time per run; medians of "
        f"{len(breakdown['fanout'])} runs). `LiveDag.__init__` runs in `prepare_run`, before the first task, on "
        "the thread that called `wf.run()`; it calls `DagWidget.for_run` (reads the run from the store, builds "
        "the graph, calls `layout_of`) and `display` (which renders `static_html`).",
        "",
        "| part | fan-out calls | fan-out time | chain calls | chain time |",
        "|---|---|---|---|---|",
    ]
    seen = dict.fromkeys(k for name in ("fanout", "chain") for r in breakdown[name] for k in r["parts"])
    keys = [k for k in BREAKDOWN_ORDER if k in seen] + [k for k in seen if k not in BREAKDOWN_ORDER]
    for key in keys:
        cells = []
        for name in ("fanout", "chain"):
            calls = statistics.median(r["parts"].get(key, [0, 0.0])[0] for r in breakdown[name])
            secs = statistics.median(r["parts"].get(key, [0, 0.0])[1] for r in breakdown[name])
            cells += [f"{calls:g}", fmt(secs)]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    whole = [fmt(statistics.median(r["s"] for r in breakdown[name])) for name in ("fanout", "chain")]
    lines.append(f"| whole `wf.run()` (these runs) | | {whole[0]} | | {whole[1]} |")

    # responsiveness
    idle = resp["idle"]
    lines += [
        "",
        f"**Responsiveness.** A chain of {long_n:,} tasks each sleeping {LONG_SLEEP_S * 1e3:g} ms, started "
        f"with `wf.start()` ({long_rounds} runs per mode, alternating); for the first "
        f"{0.9 * long_n * LONG_SLEEP_S:g} s after that cell returns (0.9 × the sleeps alone) the client executes "
        f"`1+1` cells {PROBE_GAP_S * 1e3:g} ms apart (`client.execute_cell`, timed in the client: request to "
        "reply and idle status); only probes sent and answered inside the run count (checked against the run's "
        "start and end times). The kernel also times `DagWidget.apply` (building the state and sending it; "
        f"called from the widget's timer thread during the run). Beyond {LAYOUT_TASK_LIMIT:,} tasks `layout_of` "
        "skips `dot` (the browser lays the graph out), so the widget's time here is its pushes.",
        "",
        "| background | `wf.start()` cell | run duration (median) | `1+1` probes | `1+1` round trip median | p95 | max | probes over 100 ms | `apply` per run: calls, time | `comm_msg` per run: sent / received | comm bytes per run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| nothing running | – | – | {len(idle)} | {fmt(statistics.median(idle))} | {fmt(p95(idle))} | "
        f"{fmt(max(idle))} | {sum(x > 0.1 for x in idle)} | – | – | – |",
    ]
    for mode in ("without", "with"):
        runs = resp["runs"][mode]
        rtts = [x for r in runs for x in r["rtt"]]
        dur = statistics.median(r["duration"] for r in runs)
        comm = statistics.median(r["comm_msg"] for r in runs)
        nbytes = statistics.median(r["comm_bytes"] for r in runs)
        applies = statistics.median(r["apply"] for r in runs)
        apply_s = statistics.median(r["apply_s"] for r in runs)
        sent = statistics.median(r["send"] for r in runs)
        start_cell = statistics.median(r["start_cell"] for r in runs)
        rt = f"{fmt(statistics.median(rtts))} | {fmt(p95(rtts))} | {fmt(max(rtts))}" if rtts else "– | – | –"
        lines.append(
            f"| {long_n:,} × {LONG_SLEEP_S * 1e3:g} ms chain, {mode} widget | {fmt(start_cell)} | {fmt(dur)} | "
            f"{len(rtts)} | {rt} | {sum(x > 0.1 for x in rtts)} | {applies:g}, {fmt(apply_s)} | {sent:g} / {comm:g} | "
            f"{kb(nbytes)} |"
        )

    # saved state
    lines += [
        "",
        "**Saved state.** A fresh notebook (`%load_ext kernelflow`, then one `wf.run()` of each 500-task "
        "workflow in its own cell) executed with `NotebookClient.execute()`: the size of each widget's entry in "
        "the executed notebook's `metadata.widgets` (compact JSON), the parts of it, and the run cell's outputs "
        f"(the widget view plus its `text/html` fallback, which is the text listing above {SVG_TASK_LIMIT:,} tasks).",
        "",
        f"| run | widget state saved | `graph` | `{saved['fanout']['layout_key']}` (from `dot`) | `status` | `tasks` | `_esm` + `_css` (the JS and CSS) | run cell's outputs (of which `text/html`) | saved final status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("fanout", "chain"):
        s = saved[name]
        p = s["parts"]
        lines.append(
            f"| {labels[name]} | {kb(s['model'])} | {kb(p['graph'])} | {kb(p['layout'])} | {kb(p['status'])} | "
            f"{kb(p['tasks'])} | {kb(p['_esm'] + p['_css'])} | {kb(s['outputs'])} ({kb(s['html'])}) | "
            f"{s['final']}, {s['succeeded']} succeeded |"
        )
    lines += [
        "",
        f"The executed notebook: {kb(saved['file'])} as nbformat writes it, {kb(saved['file_without_widget_metadata'])} "
        f"without `metadata.widgets` ({saved['models']} widget models saved: each `DagWidget` and the "
        f"{saved['fanout']['refs']} model(s) it refers to, counted in its size above).",
        "",
    ]

    # what it means
    fan_diff = (med[("fanout", "with")] - med[("fanout", "without")]) / N_TASKS
    chain_diff = (med[("chain", "with")] - med[("chain", "without")]) / N_TASKS
    fan_init = statistics.median(x["init_s"] for x in samples[("fanout", "with")])
    chain_init = statistics.median(x["init_s"] for x in samples[("chain", "with")])
    fan_layout = statistics.median(r["parts"].get("layout_of (Graphviz dot)", [0, 0.0])[1] for r in breakdown["fanout"])
    chain_layout = statistics.median(r["parts"].get("layout_of (Graphviz dot)", [0, 0.0])[1] for r in breakdown["chain"])
    rtt_idle = statistics.median(idle)
    rtt_with = [x for r in resp["runs"]["with"] for x in r["rtt"]]
    rtt_without = [x for r in resp["runs"]["without"] for x in r["rtt"]]
    def part(name: str, key: str) -> float:
        return statistics.median(r["parts"].get(key, [0, 0.0])[1] for r in breakdown[name])

    def pushes(name: str) -> str:
        return (f"`on_events` {fmt(part(name, 'LiveDag.on_events'))}, `on_finish` "
                f"{fmt(part(name, 'LiveDag.on_finish (whole)'))} per run")  # fmt: skip

    if worst > OVERHEAD_LIMIT_S:
        verdict = (
            f"**The widget costs {fmt(fan_diff)} per task on the fan-out and {fmt(chain_diff)} on the chain, "
            f"above the {fmt(OVERHEAD_LIMIT_S)} aimed for.** Most of it is a cost per run, not per task: building "
            f"the widget before the first task starts takes {fmt(fan_init)} (fan-out) and {fmt(chain_init)} "
            f"(chain) of the {fmt(fan_diff * N_TASKS)} and {fmt(chain_diff * N_TASKS)} difference: "
            "`DagWidget.for_run` (reading the run from the store, opening the widget's comm with the 500-node "
            "graph) and the display. The Graphviz layout is no longer part of it: it is kept per graph and, "
            "for a run starting, computed on a background thread "
            f"(`layout_of` {fmt(fan_layout)} and {fmt(chain_layout)} here, the cached layout). The batched "
            f"pushes are cheap ({pushes('fanout')} on the fan-out; {pushes('chain')} on the chain, timed "
            f"directly). What the medians leave after construction, {fmt(fan_diff - fan_init / N_TASKS)} "
            f"(fan-out) and {fmt(chain_diff - chain_init / N_TASKS)} (chain) per task, is more than those calls; this "
            "benchmark does not separate run-to-run noise on a shared machine from indirect costs (the comm "
            "and display messages serialised on the kernel's threads, objects the widgets keep alive)."
        )
    else:
        verdict = (
            f"The widget costs {fmt(fan_diff)} per task on the fan-out and {fmt(chain_diff)} on the chain "
            f"(under {fmt(OVERHEAD_LIMIT_S)}); its construction is {fmt(fan_init)} and {fmt(chain_init)} per run."
        )
    if rtt_with and rtt_without:
        runs_w, runs_wo = resp["runs"]["with"], resp["runs"]["without"]
        dur_w = statistics.median(r["duration"] for r in runs_w)
        dur_wo = statistics.median(r["duration"] for r in runs_wo)
        calls = sum(r["apply"] for r in runs_w)
        per_apply = sum(r["apply_s"] for r in runs_w) / calls if calls else 0.0
        msgs = sum(r["comm_msg"] for r in runs_w)
        per_msg = sum(r["comm_bytes"] for r in runs_w) / msgs if msgs else 0.0
        slow_w, slow_wo = sum(x > 0.1 for x in rtt_with), sum(x > 0.1 for x in rtt_without)
        responsive = (
            f" The kernel stays responsive while a {long_n:,}-task run goes on in the background: `1+1` answers in "
            f"{fmt(statistics.median(rtt_with))} (median) with the widget and {fmt(statistics.median(rtt_without))} "
            f"without, against {fmt(rtt_idle)} with nothing running. With the widget it is less even: p95 "
            f"{fmt(p95(rtt_with))} against {fmt(p95(rtt_without))}, {slow_w} of {len(rtt_with)} probes over 100 ms "
            f"against {slow_wo} of {len(rtt_without)}, the slowest {fmt(max(rtt_with))} against "
            f"{fmt(max(rtt_without))}; and the run itself takes {fmt(dur_w)} against {fmt(dur_wo)}. Each push "
            f"re-sends the whole `status` and `tasks` of all {long_n:,} tasks ({kb(per_msg)} per message, "
            f"{kb(statistics.median(r['comm_bytes'] for r in runs_w))} per run), and each `apply` takes "
            f"{fmt(per_apply)} of wall time on the widget's timer thread (building two {long_n:,}-entry dicts, "
            "ipywidgets walking them for binary buffers, serialising), competing for the GIL with the engine "
            "and the kernel's shell."
        )
    else:
        responsive = " No `1+1` probe fell inside a background run (see the table)."
    fs = saved["fanout"]
    bloat = (
        f" Saved notebooks grow with every run shown: the fan-out's widget state is {kb(fs['model'])} of compact "
        f"JSON ({kb(fs['parts']['layout'])} of it the `dot` layout, {kb(fs['parts']['_esm'] + fs['parts']['_css'])} "
        "the widget's JS and CSS, which every widget repeats), and as nbformat writes it (indented, one number "
        f"per line) the two runs' `metadata.widgets` take {kb(saved['file'] - saved['file_without_widget_metadata'])} "
        f"of a {kb(saved['file'])} notebook."
    )
    lines += [verdict + responsive + bloat, ""]
    return "\n".join(lines)


def rewrite_doc(body: str) -> None:
    """Replace (or append) our section of docs/benchmarks.md, leaving every other section alone."""
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else (
        "# Benchmarks\n\nMeasured numbers for kernelflow; each section says how it was produced.\n"
    )  # fmt: skip
    pattern = re.compile(rf"^{re.escape(HEADING)}[ \t]*\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: body + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    DOC.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few samples (a smoke test, not for the doc)")
    parser.add_argument("--write", action="store_true", help=f"rewrite our section of {DOC.relative_to(REPO)}")
    parser.add_argument("--profile", action="store_true", help="cProfile one fan-out run with the widget in the kernel, then exit")
    args = parser.parse_args(argv)

    def log(text: str) -> None:
        print(text, flush=True)

    started = time.perf_counter()
    rounds, reps, long_rounds = (2, 1, 1) if args.quick else (6, 3, 3)
    long_n = 1_000 if args.quick else LONG_TASKS
    env = machine()
    sources = widget_sources_hash()
    with kernel_env() as root:
        if args.profile:
            with Kernel(root) as k:
                k.execute(setup_cell(N_TASKS, 10))
                k.json("_mode(True)")
                k.json("_timed('fanout', 1)")
                cell, _ = k.execute("_profile('fanout', 1)")
                print(stdout_of(cell))
            return 0
        log("kernel session: run time with and without the widget")
        with Kernel(root) as k:
            k.execute(setup_cell(N_TASKS, long_n))
            timings = run_timings(k, rounds, reps, log)
            log("responsiveness")
            resp = run_responsiveness(k, long_rounds, long_n, log)
        log("saved state (a fresh notebook)")
        saved = run_saved_state(N_TASKS, root)
    env["load_end"] = _load()
    changed = widget_sources_hash() != sources
    body = section(env, command_line(args), timings, resp, saved, rounds, reps, long_rounds, long_n)
    print()
    print(body)
    if changed:
        print("the widget's or the engine's source changed while the benchmark ran (two versions were measured)"
              + (": not writing" if args.write else "") + "; run it again", file=sys.stderr)  # fmt: skip
        return 1
    if args.write:
        rewrite_doc(body)
        print(f"rewrote {HEADING!r} in {DOC}")
    print(f"(benchmark took {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
