"""Retention: `collect` / `kernelflow gc` on real stores, with a live writer beside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from kernelflow import events as ev
from kernelflow.events import Event
from kernelflow.store import FolderStore
from kernelflow.store.retention import collect, parse_age

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
DAY_US = 86_400 * 1_000_000


def us(dt: datetime) -> int:
    return int(dt.timestamp() * 1_000_000)


def run_events(run: str, ended_days_ago: float | None, *, status: str = "succeeded", tasks: int = 2,
               parent: str | None = None, output_ref: str | None = None, now: datetime = NOW) -> list[Event]:
    """A run that started a bit before it ended; ``ended_days_ago=None``: still running."""
    end = us(now) - int((ended_days_ago or 0) * DAY_US)
    t = end - 10_000_000
    started: dict[str, Any] = {"inputs": {}, "tasks": [f"t{i}" for i in range(tasks)]}
    if parent:
        started["parent_run_id"] = parent
    out = [Event(run, 0, t, ev.RUN_STARTED, "wf", "v1", payload=started)]
    for i in range(tasks):
        out.append(Event(run, len(out), t + i + 1, ev.TASK_STARTED, "wf", "v1", f"t{i}", 1))
        payload = {"output_ref": output_ref} if output_ref and i == 0 else {}
        out.append(Event(run, len(out), t + i + 2, ev.TASK_SUCCEEDED, "wf", "v1", f"t{i}", 1, payload))
    if ended_days_ago is not None:
        kind = ev.RUN_SUCCEEDED if status == "succeeded" else ev.RUN_FAILED
        out.append(Event(run, len(out), end, kind, "wf", "v1"))
    return out


def make_store(root: Path, spec: dict[str, dict[str, Any]]) -> dict[str, list[Event]]:
    """One writer per run (so runs sit in different files), artifacts for each."""
    written = {}
    for run, kw in spec.items():
        store = FolderStore(root)
        events = run_events(run, **kw)
        store.append_many(events)
        store.save_artifact(run, "t0", 1, {"run": run, "blob": "x" * 100})
        store.close()
        written[run] = events
    return written


def test_parse_age() -> None:
    assert parse_age("30d") == timedelta(days=30)
    assert parse_age("12h") == timedelta(hours=12)
    assert parse_age("90m") == timedelta(minutes=90)
    assert parse_age("2w") == timedelta(weeks=2)
    assert parse_age(timedelta(seconds=5)) == timedelta(seconds=5)
    for bad in ("30", "3x", "-1d", "0d", "d", ""):
        with pytest.raises(ValueError, match="30d"if bad != "0d" else "more than zero"):
            parse_age(bad)


def test_collect_removes_only_runs_that_ended_long_ago(tmp_path: Path) -> None:
    root = tmp_path / "store"
    written = make_store(root, {
        "old-ok": {"ended_days_ago": 40},
        "old-failed": {"ended_days_ago": 35, "status": "failed"},
        "recent": {"ended_days_ago": 3},
        "running": {"ended_days_ago": None},
        "old-parent": {"ended_days_ago": 50},
        "young-child": {"ended_days_ago": 1, "parent": "old-parent"},
        "old-source": {"ended_days_ago": 60},
        "fork": {"ended_days_ago": 2, "output_ref": "artifacts/old-source/t0.1.pkl"},
    })
    store = FolderStore(root)
    assert store.wait_for_compaction(60)  # eight session files: opening merged them in the background
    (root / "locks").mkdir()
    (root / "locks" / "old-ok.lock").write_text("")
    (root / "answers" / "old-failed").mkdir(parents=True)
    (root / "answers" / "old-failed" / "gate.0.json").write_text("{}")
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}

    dry = collect(store, "30d", now=NOW)
    assert dry.dry_run and dry.runs == ["old-failed", "old-ok"]
    assert dry.events == len(written["old-ok"]) + len(written["old-failed"]) == 12
    assert dry.artifacts == 2 and dry.bytes == sum(
        p.stat().st_size for r in ("old-ok", "old-failed") for p in (root / "artifacts" / r).iterdir()
    )
    assert dry.kept == {"family": ["old-parent"], "referenced": ["old-source"]}
    assert "would remove 2 runs (12 events, 2 artifacts" in dry.summary()
    assert "run again with --yes to delete" in dry.summary()
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before  # a dry run changes nothing

    done = collect(store, "30d", dry_run=False, now=NOW)
    assert done.runs == ["old-failed", "old-ok"] and done.events == 12
    assert done.artifacts == 2 and done.bytes == dry.bytes and done.other_files == 2
    assert done.files_rewritten == 1  # the merged file, without them
    assert "removed 2 runs (12 events, 2 artifacts" in done.summary()
    remaining = {r for (r,) in store.sql("SELECT run_id FROM runs").rows()}
    assert remaining == set(written) - {"old-ok", "old-failed"}
    for run in remaining:
        assert store.read_run(run) == written[run]
    for run in ("old-ok", "old-failed"):
        assert store.read_run(run) == [] and not (root / "artifacts" / run).exists()
    assert not (root / "locks" / "old-ok.lock").exists() and not (root / "answers" / "old-failed").exists()
    assert (root / "artifacts" / "old-source").exists()
    # Nothing left to do; a shorter age takes more.
    assert collect(store, "30d", dry_run=False, now=NOW).runs == []
    two_days = collect(store, "2d", now=NOW)
    assert two_days.runs == ["recent"] and two_days.kept == {"family": ["old-parent"], "referenced": ["old-source"]}
    # Once the child and the fork are old enough too, the families go together.
    assert collect(store, "1h", now=NOW).runs == ["fork", "old-parent", "old-source", "recent", "young-child"]
    store.close()


def test_a_file_shared_by_old_and_kept_runs_is_rewritten(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FolderStore(root)
    interleaved = [e for pair in zip(run_events("old", 40), run_events("new", 1)) for e in pair]
    store.append_many(interleaved)
    store.close()
    [file] = (root / "events").glob("*.parquet")
    report = collect(store, "30d", dry_run=False, now=NOW)
    assert report.runs == ["old"] and report.files_rewritten == 1 and report.files_removed == 0
    [after] = (root / "events").glob("*.parquet")
    assert after == file  # rewritten in place, through a rename
    assert store.read_run("old") == [] and store.read_run("new") == run_events("new", 1)
    store.close()


def test_runs_with_events_in_an_open_segment_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "store"
    written = make_store(root, {"old": {"ended_days_ago": 40}, "old-resumed": {"ended_days_ago": 40}})
    writer = FolderStore(root)  # a process still appending to one of them (a dead-letter decision)
    late = Event("old-resumed", len(written["old-resumed"]), us(NOW), ev.DEAD_LETTER_DISCARDED, "wf", "v1",
                 payload={"reason": "x"})
    writer.append(late)
    store = FolderStore(root)
    report = collect(store, "30d", dry_run=False, now=NOW)
    assert report.runs == ["old"] and report.kept == {"live": ["old-resumed"]}
    assert "kept 1 old run(s) (live" in report.summary()
    assert store.read_run("old-resumed") == written["old-resumed"] + [late]
    writer.close()
    store.close()


def test_cli_gc(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FolderStore(root)
    for i in range(3):
        store.append_many(run_events(f"r{i}", 40, now=datetime.now(timezone.utc)))
    store.save_artifact("r0", "t0", 1, [1, 2, 3])
    store.close()

    def gc(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kernelflow.cli", "gc", *args], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "KERNELFLOW_HOME": str(tmp_path / "elsewhere")})

    res = gc("--older-than", "30d", "--store", str(root))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("would remove 3 runs (18 events, 1 artifact,") and "older than 30d" in res.stdout
    assert "run again with --yes to delete" in res.stdout
    assert not (tmp_path / "elsewhere").exists()
    res = gc("--older-than", "45d", "--store", str(root), "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["runs"] == []
    res = gc("--older-than", "4w", "--store", str(root), "--yes", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["runs"] == ["r0", "r1", "r2"] and report["events"] == 18 and not report["dry_run"]
    assert FolderStore(root).sql("SELECT count(*) FROM events").item() == 0
    for bad in ("30", "thirty days", "-5d"):
        res = gc(f"--older-than={bad}", "--store", str(root))
        assert res.returncode == 2 and "--older-than" in res.stderr and "30d" in res.stderr, res.stderr
    res = gc("--store", str(root))
    assert res.returncode == 2 and "--older-than" in res.stderr


def test_retention_api_gc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kernelflow.retention_api import gc

    root = tmp_path / "store"
    make_store(root, {"a": {"ended_days_ago": 1000}})
    report = gc("90d", store=root)
    assert report.dry_run and report.runs == ["a"]
    assert gc("90d", store=root, dry_run=False).runs == ["a"]
    assert FolderStore(root).read_run("a") == []
    with pytest.raises(ValueError, match="not an age"):
        gc("ninety days", store=root)


LIVE_WRITER = """
import json, sys, time
import kernelflow.store.eventfiles as ef
ef.MERGE_FANIN = 3  # merge often, racing with gc for store.lock
from kernelflow.store import FolderStore
from kernelflow.events import Event
path, out, go, start = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
store = FolderStore(path, segment_max_events=200)  # rotates (and compacts, and merges) all the time
seqs = json.load(open(start))
open(go, "w").close()
deadline = time.monotonic() + 4.0
i = 0
while time.monotonic() < deadline:
    run = f"live-{i % 10}"
    seq = seqs.get(run, 0)
    seqs[run] = seq + 1
    store.append(Event(run, seq, time.time_ns() // 1000, "RunStarted" if seq == 0 else "TaskStarted", "wf", "v1",
                       None if seq == 0 else "t", None if seq == 0 else 1, {"i": i}))
    i += 1
    if i % 50 == 0:
        time.sleep(0.002)
store.close()
json.dump(seqs, open(out, "w"))
"""


@pytest.mark.slow
def test_gc_while_another_process_appends(tmp_path: Path) -> None:
    root = tmp_path / "store"
    old = {}
    seqs: dict[str, int] = {}
    for f in range(6):
        # Each file holds two old runs AND the start of live runs: gc must
        # rewrite files whose other rows a live writer keeps adding to.
        store = FolderStore(root)
        for r in range(2):
            events = run_events(f"old-{f}-{r}", 100 + f)
            store.append_many(events)
            old[events[0].run_id] = events
        for r in range(f, f + 3):
            run = f"live-{r % 10}"
            seq = seqs.get(run, 0)
            store.append(Event(run, seq, us(NOW), ev.RUN_STARTED if seq == 0 else ev.TASK_STARTED, "wf", "v1",
                               None if seq == 0 else "t", None if seq == 0 else 1))
            seqs[run] = seq + 1
        store.close()
    start, out, go = tmp_path / "start.json", tmp_path / "writer.json", tmp_path / "go"
    start.write_text(json.dumps(seqs))
    writer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(LIVE_WRITER), str(root), str(out), str(go), str(start)]
    )
    while not go.exists():
        time.sleep(0.01)
    store = FolderStore(root)
    removed: set[str] = set()
    rewritten = rounds = 0
    while writer.poll() is None:
        report = collect(store, "30d", dry_run=False)
        removed.update(report.runs)
        rewritten += report.files_rewritten
        assert report.raced == []
        rounds += 1
        time.sleep(0.05)
    assert writer.wait() == 0 and rounds >= 1
    assert removed == set(old) and rewritten >= 1
    seqs = json.loads(out.read_text())
    # Every event of the live runs is there, exactly once, seq gapless.
    got = store.sql(
        "SELECT run_id, count(*), count(DISTINCT seq), max(seq) FROM events GROUP BY run_id ORDER BY run_id"
    ).rows()
    assert got == [(run, n, n, n - 1) for run, n in sorted(seqs.items())]
    assert collect(store, "30d").runs == []
    store.close()
