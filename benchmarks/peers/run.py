#!/usr/bin/env python
"""kernelflow beside its peers: the same workloads, one invocation, one machine.

    python benchmarks/peers/run.py            # full run (~20-30 min on a busy 2-core machine)
    python benchmarks/peers/run.py --quick    # smoke run: 1 repetition, 200-step "large" workloads
    python benchmarks/peers/run.py --write    # also replace the "Peers, side by side" section
                                              # of docs/benchmarks.md (nothing else in it)
    python benchmarks/peers/run.py --engines plain,kernelflow,dbos   # a subset

Engines: plain Python, kernelflow (events handed to the OS per event, and
fsync on), Hamilton, DBOS Transact (SQLite system database) and Prefect 3
(its default local setup: an ephemeral server with SQLite). Each peer runs in
its own virtual environment under ``$KERNELFLOW_PEERS_DIR`` (default
``~/.cache/kernelflow-peers``), created on first use with pinned versions
(envs.py) and reused afterwards; kernelflow runs in the interpreter that runs
this script, where this checkout is installed (``--kernelflow-python`` to use
another). Peers' packages never enter kernelflow's own dependencies.

Workloads: linear chains of 100 and 1,000 no-op steps; a fan-out of 1,000
no-op tasks from one root with a join task taking all of them; a chain of 10
steps that each sleep 10 ms (wall time against the 100 ms floor).

Every (workload, engine, repetition) is a fresh process started in the
engine's interpreter (runners/run_<engine>.py). It imports the engine,
defines the workload, runs it once (cold start: from just before this script
started the process until that first run is done), then up to 3 more times,
each timed (warm; fewer once 20 s of warm runs and Prefect's settling are
spent, at least one). Repetitions
alternate the engines (the order rotates every time) so that they share the
machine's noise. Reported: the median over repetitions of each process's
median warm run; the median cold start; peak resident memory (VmHWM) of the
process and, for Prefect, of the server process it starts.

Each engine's state lives in one folder per invocation, shared by that
engine's processes the way a user's would be (kernelflow's store folder,
DBOS's SQLite file, Prefect's ``PREFECT_HOME`` with its database) and primed
by one untimed process first (Prefect's first start migrates its database);
it is removed at the end, unless a process failed (its logs are kept there).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import envs

HERE = envs.HERE
REPO = envs.REPO
DOC = REPO / "docs" / "benchmarks.md"
RESULTS_MD = HERE / "results.md"
RESULTS_JSON = HERE / "results.json"
HEADING = "## Peers, side by side"

DEFAULT_ENGINES = ["plain", "kernelflow", "kernelflow-fsync", "hamilton", "dbos", "prefect"]
REFERENCE = "kernelflow"  # the "× kernelflow" columns divide by this engine's figures
SLEEP_FLOOR_S = 0.100
PROCESS_TIMEOUT_S = 1800
STATE_NOTE = (
    "Each engine kept its state in one folder for the whole invocation (kernelflow's store folder, "
    "DBOS's SQLite file, Prefect's home with its database), primed by one untimed process; removed afterwards."
)


@dataclass(frozen=True)
class Workload:
    key: str
    kind: str  # chain | fanout | sleep
    n: int
    label: str


def workloads(large: int) -> list[Workload]:
    return [
        Workload("chain100", "chain", 100, "chain of 100"),
        Workload(f"chain{large}", "chain", large, f"chain of {large:,}"),
        Workload(f"fanout{large}", "fanout", large, f"fan-out {large:,} + join"),
        Workload("sleep10", "sleep", 10, "10 × 10 ms sleeps"),
    ]


@dataclass
class Sample:
    """What one process reported (or how it failed)."""

    engine: str
    workload: str
    rep: int
    report: dict[str, Any] | None
    process_s: float
    error: str = ""


@dataclass
class Cell:
    samples: list[Sample] = field(default_factory=list)

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [s.report for s in self.samples if s.report is not None]

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.samples if s.error]

    def warm(self) -> float | None:
        per_process = [statistics.median(r["warm_s"]) for r in self.ok if r["warm_s"]]
        return statistics.median(per_process) if per_process else None

    def warm_all(self) -> list[float]:
        return [x for r in self.ok for x in r["warm_s"]]

    def settle(self) -> float | None:
        values = [x for r in self.ok for x in r.get("settle_s", [])]
        return statistics.median(values) if values else None

    def field_median(self, name: str) -> float | None:
        values = [r[name] for r in self.ok]
        return statistics.median(values) if values else None

    def rss_mb(self) -> tuple[float, float] | None:
        """Median over processes of (own peak, its child processes' peaks), MB."""
        if not self.ok:
            return None
        own = statistics.median(r["rss_kb"] for r in self.ok) / 1024
        kids = statistics.median(r["descendants_rss_kb"] for r in self.ok) / 1024
        return own, kids


# --- running -------------------------------------------------------------------------


def run_process(
    engine: envs.Engine, python: Path, workload: Workload, spec_extra: dict[str, Any], env: dict[str, str], log: Path
) -> tuple[dict[str, Any] | None, float, str]:
    spec = {"workload": workload.kind, "n": workload.n, **spec_extra}
    child_env = {**env, **engine.env}
    cmd = [str(python), str(envs.RUNNERS / engine.runner), json.dumps(spec)]
    with open(log, "wb") as out:
        child_env["KF_PEERS_T0"] = repr(time.time())
        started = time.perf_counter()
        try:
            done = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env, timeout=PROCESS_TIMEOUT_S, check=False
            )
            code: int | str = done.returncode
        except subprocess.TimeoutExpired:
            code = f"timed out after {PROCESS_TIMEOUT_S} s"
        elapsed = time.perf_counter() - started
    text = log.read_text(errors="replace")
    for line in text.splitlines():
        if line.startswith("KFPEERS "):
            report = json.loads(line[len("KFPEERS ") :])
            if code != 0:  # a report, then a failure on the way out: keep the figures, say so
                report["exit"] = code
            return report, elapsed, ""
    tail = " | ".join(line.strip() for line in text.strip().splitlines()[-4:])
    return None, elapsed, f"exit {code}: {tail[-600:]}"


def engine_env(engine: envs.Engine, state: Path) -> dict[str, str]:
    """The environment of one engine's processes, with its state folder or file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERNELFLOW_", "PREFECT_", "DBOS_"))}
    env["PYTHONUNBUFFERED"] = "1"
    folder = state / engine.key
    folder.mkdir(parents=True, exist_ok=True)
    if engine.key.startswith("kernelflow"):
        env["KERNELFLOW_HOME"] = str(folder / "store")
    elif engine.key == "dbos":
        env["KF_PEERS_STATE"] = str(folder / "dbos.sqlite")
    elif engine.key == "prefect":
        env["PREFECT_HOME"] = str(folder / "home")
    return env


def alternated(names: list[str], turn: int) -> list[str]:
    k = turn % len(names)
    return names[k:] + names[:k]


# --- report --------------------------------------------------------------------------------


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 0:
        return "−" + fmt(-seconds)
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e9:.0f} ns"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "–"
    r = a / b
    if r >= 100:
        return f"{r:,.0f}×"
    if r >= 10:
        return f"{r:.0f}×"
    return f"{r:.1f}×"


def machine() -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def cmd(args: list[str]) -> str:
        try:
            return subprocess.run(args, capture_output=True, text=True, check=True, cwd=REPO).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "?"

    dirty = cmd(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "date": datetime.date.today().isoformat(),
        "cpus": f"{os.cpu_count()} ({cpu})",
        "uname": " ".join(platform.uname()[:3] + (platform.uname().machine,)),
        "commit": cmd(["git", "rev-parse", "--short", "HEAD"]) + (", uncommitted changes" if dirty else ""),
        "load_start": load(),
    }


def load() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def render(
    results: dict[tuple[str, str], Cell],
    engines: list[str],
    loads: list[Workload],
    versions: dict[str, dict[str, str]],
    env: dict[str, str],
    command: str,
    reps: int,
    state_note: str,
    heading: str,
) -> str:
    labels = {k: envs.ENGINES[k].label for k in engines}
    chain_small, chain_large, fan, sleep = loads
    plain = {w.key: results[("plain", w.key)].warm() if "plain" in engines else None for w in loads}

    def overhead(engine: str, w: Workload) -> float | None:
        median = results[(engine, w.key)].warm()
        if median is None or plain[w.key] is None:
            return None
        return (median - plain[w.key]) / w_steps(w)

    def version_of(engine: str) -> str:
        v = versions.get(engine, {})
        main = {
            "plain": "",
            "kernelflow": v.get("kernelflow", "?"),
            "kernelflow-fsync": v.get("kernelflow", "?"),
            "hamilton": v.get("apache-hamilton", "?"),
            "dbos": v.get("dbos", "?"),
            "prefect": v.get("prefect", "?"),
        }[engine]
        return f"{labels[engine]} {main}".strip()

    lines = [
        heading,
        "",
        f"Measured {env['date']} with `{command}`.",
        "",
        f"- Machine: {env['cpus']} CPUs, {env['uname']}; 1-, 5-, 15-minute load average "
        f"{env['load_start']} at the start and {env['load_end']} at the end. "
        + (
            "**Other work shared these 2 cores during the run** (the load average above), so every "
            "figure carries its noise; the engines were alternated to share it, and the command above "
            "measures again."
            if env.get("busy")
            else "Nothing else was running as far as the load average shows."
        ),
        "- Versions: "
        + "; ".join(
            f"{version_of(e)} (Python {versions.get(e, {}).get('python', '?')}"
            + (
                ", fastapi " + versions[e]["fastapi"]
                if e == "prefect" and "fastapi" in versions.get(e, {})
                else ", SQLAlchemy " + versions[e]["sqlalchemy"]
                if e == "dbos" and "sqlalchemy" in versions.get(e, {})
                else ""
            )
            + ")"
            for e in engines
            if e != "kernelflow-fsync"
        )
        + f"; kernelflow from this checkout (git {env['commit']}), in the interpreter that ran the script.",
        f"- {reps} repetition{'s' if reps != 1 else ''}; each one a fresh process per engine and workload (engines alternated), "
        "running the workload once cold and then up to 3 times warm (fewer once 20 s of warm runs, and "
        "of Prefect's settling, are spent). "
        "Medians over repetitions of each process's median warm run. "
        f"Per-step overhead = (median − plain Python's median) / steps; the fan-out has {fan.n + 2:,} steps "
        "(root, children, join).",
        f"- {state_note}",
        "- How the harness works: benchmarks/peers/README.md. Features side by side: docs/why-kernelflow.md. "
        "`--write` replaces this section with a new run's; `--from-json benchmarks/peers/results.json` "
        "renders it again from the raw results without measuring.",
        "",
        "What each engine does per step, as measured here: **kernelflow** writes 3 events per task "
        "(scheduled, started, succeeded) and 2 per run to its store folder, handed to the OS "
        "(`os.write`) before anything that depends on them runs, which survives the process being killed; "
        "the engine groups what it records between two actions into one write, so a chain task's 3 events "
        "cost one `os.write`. The *fsync* row also fsyncs each write (one `fsync` per chain task), which "
        "survives the machine losing power. "
        "**DBOS** checkpoints each step's output in its SQLite system database, one transaction per step "
        "(the fan-out runs its children as workflows on a queue, DBOS's way to run steps concurrently). "
        "**Prefect** reports each task run's states to its local server (results are not persisted by "
        "default). **Hamilton** and plain Python keep nothing; Hamilton's runner raises Python's recursion "
        "limit to 20,000, because its default executor recurses once per level of dependencies and the "
        "1,000-step chain fails with `RecursionError` at the default limit of 1,000.",
        "",
        "### Warm runs (median per run)",
        "",
        f"| engine | {chain_small.label} | {chain_large.label} | {fan.label} | {sleep.label} (floor 100 ms) |",
        "|---|---|---|---|---|",
    ]
    for e in engines:
        row = [labels[e]]
        for w in loads:
            cell = results[(e, w.key)]
            median = cell.warm()
            text = fmt(median)
            if w is sleep and median is not None:
                text += f" (+{fmt(median - SLEEP_FLOOR_S)})"
            if median is None:
                text = "failed" if cell.errors else "–"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")

    for e in engines:
        settles = [(w, results[(e, w.key)].settle()) for w in loads]
        if any(v is not None for _, v in settles):
            lines += [
                "",
                f"{labels[e]}'s server records task runs from events the client sends in the background. "
                "After each run the harness waited, untimed, until the server showed every task run of it "
                "completed (otherwise the next flow call waits for that backlog); that took a further "
                + ", ".join(f"{fmt(v)} ({w.label})" for w, v in settles if v is not None)
                + " (medians), not included above.",
            ]

    kf_engines = [e for e in engines if e.startswith("kernelflow")]
    if kf_engines:
        counts = []
        for e in kf_engines:
            cells = [results[(e, w.key)] for w in loads]
            alerts = sum(r.get("alerts", 0) for c in cells for r in c.ok)
            runs = sum(1 + len(r["warm_s"]) for c in cells for r in c.ok)
            by_load = ", ".join(
                f"{sum(r.get('alerts', 0) for r in results[(e, w.key)].ok)} in the {w.label}"
                for w in loads
                if any(r.get("alerts", 0) for r in results[(e, w.key)].ok)
            )
            counts.append(f"{alerts} in {runs} runs of *{labels[e]}*" + (f" ({by_load})" if by_load else ""))
        lines += [
            "",
            "kernelflow's anomaly detector (on by default) raised " + "; ".join(counts) + ". It judges a task by "
            "the time between its `TaskStarted` and `TaskSucceeded` events, and with fsync on that time includes "
            "waiting for the disk (the fsync of its own `TaskStarted`, and in the fan-out the fsyncs of other tasks' "
            "events that the engine makes before it records this task's end), "
            "so a slow disk looks like a slow task; the runs that raised an alert include its cost.",
        ]

    lines += [
        "",
        "### Per-step overhead, and ratios",
        "",
        "× plain Python is the engine's median run over plain Python's on the same workload; × kernelflow "
        "is the engine's per-step overhead over kernelflow's (events handed to the OS, the default).",
        "",
        f"| engine | {chain_small.label}: per step | × plain | × kernelflow | {chain_large.label}: per step "
        f"| × plain | × kernelflow | {fan.label}: per step | × plain | × kernelflow | {sleep.label}: above the floor, per step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ref_over = {w.key: overhead(REFERENCE, w) if REFERENCE in engines else None for w in loads}
    for e in engines:
        row = [labels[e]]
        for w in (chain_small, chain_large, fan):
            median = results[(e, w.key)].warm()
            over = overhead(e, w) if e != "plain" else None
            if e == "plain":
                row += [(fmt(median / w_steps(w)) + " (the call)") if median is not None else "–", "1×", "–"]
                continue
            row += [
                fmt(over),
                ratio(median, plain[w.key]),
                ratio(over, ref_over[w.key]) if e != REFERENCE else "1×",
            ]
        median = results[(e, sleep.key)].warm()
        row.append(fmt((median - SLEEP_FLOOR_S) / sleep.n) if median is not None else "–")
        lines.append("| " + " | ".join(row) + " |")

    lines += [
        "",
        "### Cold start and memory",
        "",
        "Cold start: from just before the harness started the process to the end of its first run "
        f"of the {chain_small.label} (median over repetitions); it includes the interpreter starting, "
        "importing the engine, defining the workflow, and for Prefect starting its local server. "
        f"Peak memory: the process's peak resident set (VmHWM), median over repetitions of the "
        f"{chain_large.label} and of the {fan.label}; Prefect's server process is counted separately.",
        "",
        f"| engine | cold start ({chain_small.label}) | of which import | of which first run | "
        f"peak RSS, {chain_large.label} | peak RSS, {fan.label} | × kernelflow (peak of all processes, {chain_large.label}) |",
        "|---|---|---|---|---|---|---|",
    ]
    ref_rss = results[(REFERENCE, chain_large.key)].rss_mb() if REFERENCE in engines else None
    for e in engines:
        cell = results[(e, chain_small.key)]
        mem = []
        for w in (chain_large, fan):
            rss = results[(e, w.key)].rss_mb()
            if rss is None:
                mem.append("–")
            elif rss[1] > 0:
                mem.append(f"{rss[0]:.0f} MB + server {rss[1]:.0f} MB")
            else:
                mem.append(f"{rss[0]:.0f} MB")
        big = results[(e, chain_large.key)].rss_mb()
        rel = ratio(sum(big), sum(ref_rss)) if big and ref_rss else "–"
        lines.append(
            f"| {labels[e]} | {fmt(cell.field_median('cold_s'))} | {fmt(cell.field_median('import_s'))} | "
            f"{fmt(cell.field_median('first_s'))} | {mem[0]} | {mem[1]} | {rel} |"
        )

    notes = []
    if "prefect" in engines:
        p_sleep, p_small = results[("prefect", sleep.key)].warm(), results[("prefect", chain_small.key)].warm()
        if p_sleep is not None and p_small is not None:
            notes.append(
                f"Prefect's {sleep.label} take {fmt(p_sleep)} against the 100 ms floor and its {chain_small.label} "
                f"no-op steps {fmt(p_small)}: a fixed cost per flow call dominates its small workloads here, so its "
                f"per-step figures are fairest on the {chain_large.label}."
            )
    if "dbos" in engines:
        notes.append(
            "DBOS runs the fan-out's children as workflows on a queue, which its workers poll for new work "
            "once a second by default (`polling_interval_sec`, 1.0 in dbos 3.4.0); each child is also a "
            "workflow with its own rows, so its fan-out costs more per step than its chain."
        )
    if "kernelflow-fsync" in engines and "dbos" in engines:
        notes.append(
            "For the same durability as DBOS (SQLite with `synchronous=FULL` syncs every commit), compare DBOS "
            "with the *fsync* row: kernelflow fsyncs each group of events there, one `fsync` per chain task."
        )
    if notes:
        lines += ["", "### Reading the numbers", ""] + [f"- {n}" for n in notes]

    failures = [(e, w, err) for (e, w), c in results.items() for err in c.errors]
    if failures:
        lines += ["", "### What failed", ""]
        for e, w, err in failures:
            lines.append(f"- {labels.get(e, e)}, {w}: `{err}`")
    return "\n".join(lines) + "\n"


def rerender(path: Path, write: bool) -> int:
    """Tables from a results.json written earlier (the same numbers, the current wording)."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    loads = [Workload(**w) for w in raw["workloads"]]
    engines = list(raw["versions"])
    engines += [e for e in dict.fromkeys(s["engine"] for s in raw["samples"]) if e not in engines]
    results: dict[tuple[str, str], Cell] = {(e, w.key): Cell() for e in engines for w in loads}
    for s in raw["samples"]:
        results[(s["engine"], s["workload"])].samples.append(Sample(**s))
    reps = max((s["rep"] for s in raw["samples"]), default=0) + 1
    section = render(
        results,
        engines,
        loads,
        raw["versions"],
        raw["machine"],
        raw["command"],
        reps,
        raw.get("state_note", STATE_NOTE),
        HEADING,
    )
    write_results(section)
    print(section)
    if write:
        rewrite_doc(section)
        print(f"replaced {HEADING!r} in {DOC.relative_to(REPO)}")
    return 0


def write_results(section: str) -> None:
    RESULTS_MD.write_text(
        "# kernelflow and its peers: latest results\n\n"
        "Written by `benchmarks/peers/run.py`; see benchmarks/peers/README.md.\n\n"
        + section.replace(HEADING + "\n\n", "", 1),
        encoding="utf-8",
    )


def w_steps(w: Workload) -> int:
    return w.n + 2 if w.kind == "fanout" else w.n


def rewrite_doc(section: str) -> None:
    """Replace (or append) our section of docs/benchmarks.md, leaving every other section alone."""
    text = DOC.read_text(encoding="utf-8")
    pattern = re.compile(rf"^{re.escape(HEADING)}[ \t]*\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition, 200-step large workloads (a smoke test)")
    parser.add_argument("--reps", type=int, help="repetitions (default 5, --quick 1)")
    parser.add_argument("--large", type=int, help="size of the large chain and the fan-out (default 1000, --quick 200)")
    parser.add_argument("--engines", default=",".join(DEFAULT_ENGINES), help="comma-separated subset")
    parser.add_argument("--kernelflow-python", default=sys.executable, help="interpreter with kernelflow installed")
    parser.add_argument("--write", action="store_true", help=f"replace the {HEADING!r} section of docs/benchmarks.md")
    parser.add_argument("--setup-only", action="store_true", help="create the venvs, print versions, and stop")
    parser.add_argument("--keep-state", action="store_true", help="keep the engines' state folders and logs")
    parser.add_argument(
        "--from-json", metavar="FILE", help="render the tables again from a results.json, without measuring"
    )
    args = parser.parse_args(argv)
    if args.from_json:
        return rerender(Path(args.from_json), args.write)

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in envs.ENGINES]
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(envs.ENGINES)}")
    reps = args.reps or (1 if args.quick else 5)
    large = args.large or (200 if args.quick else 1000)
    loads = workloads(large)
    budget_s = 5.0 if args.quick else 20.0
    flags = (" --quick" if args.quick else "") + (f" --reps {args.reps}" if args.reps else "")
    flags += f" --large {args.large}" if args.large else ""
    flags += f" --engines {args.engines}" if args.engines != ",".join(DEFAULT_ENGINES) else ""
    command = f"python benchmarks/peers/run.py{flags}" + (" --write" if args.write else "")

    started = time.perf_counter()
    env = machine()
    print(f"peers: {', '.join(engines)}; {reps} repetition(s); large = {large:,}", flush=True)
    print(f"venvs under {envs.cache_dir()}", flush=True)
    pythons: dict[str, Path] = {}
    versions: dict[str, dict[str, str]] = {}
    setup_failures: dict[str, str] = {}
    for key in engines:
        engine = envs.ENGINES[key]
        try:
            pythons[key] = envs.ensure_venv(engine) if engine.venv else Path(args.kernelflow_python)
            versions[key] = envs.versions(engine, pythons[key])
        except subprocess.CalledProcessError as exc:
            setup_failures[key] = (
                f"setting up its venv failed: {' '.join(map(str, exc.cmd))[-300:]} exited {exc.returncode}"
            )
            print(f"  {key}: {setup_failures[key]}", flush=True)
            continue
        print(f"  {key}: {pythons[key]}  {versions[key]}", flush=True)
    if args.setup_only:
        return 1 if setup_failures else 0
    engines_ok = [e for e in engines if e in pythons]

    state = Path(tempfile.mkdtemp(prefix="state-", dir=envs.cache_dir()))
    logs = state / "logs"
    logs.mkdir()
    envs_by_engine = {e: engine_env(envs.ENGINES[e], state) for e in engines_ok}
    results: dict[tuple[str, str], Cell] = {(e, w.key): Cell() for e in engines for w in loads}
    for key, message in setup_failures.items():
        for w in loads:
            results[(key, w.key)].samples.append(Sample(key, w.key, 0, None, 0.0, message))

    print("priming each engine's state (one untimed process each)", flush=True)
    prime = Workload("prime", "chain", 10, "prime")
    for e in list(engines_ok):
        engine = envs.ENGINES[e]
        if engine.prepare:
            exe = pythons[e].parent / engine.prepare[0]
            with open(logs / f"prepare-{e}.log", "wb") as out:
                done = subprocess.run(
                    [str(exe), *engine.prepare[1:]],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**envs_by_engine[e], **engine.env},
                    check=False,
                )
            print(f"  {e}: `{' '.join(engine.prepare)}` exited {done.returncode}", flush=True)
        report, elapsed, error = run_process(
            envs.ENGINES[e], pythons[e], prime, {"inner": 0}, envs_by_engine[e], logs / f"prime-{e}.log"
        )
        print(f"  {e}: {elapsed:.1f} s{'  FAILED ' + error if error else ''}", flush=True)

    turn = 0
    for rep in range(reps):
        for w in loads:
            for e in alternated(engines_ok, turn):
                turn += 1
                log = logs / f"{w.key}-{e}-{rep}.log"
                report, elapsed, error = run_process(
                    envs.ENGINES[e], pythons[e], w, {"inner": 3, "budget_s": budget_s}, envs_by_engine[e], log
                )
                results[(e, w.key)].samples.append(Sample(e, w.key, rep, report, elapsed, error))
                if report:
                    warm = statistics.median(report["warm_s"]) if report["warm_s"] else None
                    print(
                        f"  rep {rep + 1}/{reps} {w.label:<24} {e:<17} warm {fmt(warm):>9}  "
                        f"cold {fmt(report['cold_s']):>9}  process {elapsed:6.1f} s",
                        flush=True,
                    )
                else:
                    print(f"  rep {rep + 1}/{reps} {w.label:<24} {e:<17} FAILED {error}", flush=True)
            turn += 1  # the next workload starts with another engine too
    env["load_end"] = load()
    loads_seen = [float(x.split(" / ")[0]) for x in (env["load_start"], env["load_end"]) if x != "?"]
    env["busy"] = "yes" if loads_seen and max(loads_seen) > 1.5 else ""

    failed = any(c.errors for c in results.values())
    kept = args.keep_state or failed
    if kept:
        state_note = f"State folders and logs kept in {state}."
    else:
        state_note = STATE_NOTE
        shutil.rmtree(state, ignore_errors=True)
    section = render(results, engines, loads, versions, env, command, reps, state_note, HEADING)
    write_results(section)
    raw = {
        "command": command,
        "state_note": state_note,
        "machine": env,
        "versions": versions,
        "workloads": [w.__dict__ for w in loads],
        "samples": [s.__dict__ for c in results.values() for s in c.samples],
    }
    RESULTS_JSON.write_text(json.dumps(raw, indent=1) + "\n", encoding="utf-8")
    print()
    print(section)
    print(f"wrote {RESULTS_MD.relative_to(REPO)} and {RESULTS_JSON.relative_to(REPO)}")
    if args.write:
        rewrite_doc(section)
        print(f"replaced {HEADING!r} in {DOC.relative_to(REPO)}")
    print(f"(took {time.perf_counter() - started:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
