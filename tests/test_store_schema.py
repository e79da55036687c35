"""Schema 2 of the folder store: run-sorted, tagged, merged events files, the
v1 -> v2 migration on a real schema-1 store, and refusing newer stores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

import kernelflow.store.eventfiles as ef
import kernelflow.store.layout as layout_mod
from kernelflow import events as ev
from kernelflow.events import Event
from kernelflow.exceptions import StoreError, StoreVersionError
from kernelflow.store import FolderStore
from kernelflow.store.formats import EVENTS_FORMAT, EVENTS_FORMAT_KEY, ROW_GROUP_ROWS
from kernelflow.store.query import load_views_sql

FIXTURES = Path(__file__).parent / "fixtures"
BASE_TS = 1_795_000_000_000_000


def E(run: str, seq: int, type_: str = ev.TASK_STARTED, **payload: Any) -> Event:
    task = None if type_ in ev.RUN_EVENT_TYPES else f"t{seq}"
    return Event(run, seq, BASE_TS + seq, type_, "wf", "v1", task, None if task is None else 1, payload)


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under root -> (size, mtime_ns)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.stat()
        out[str(path.relative_to(root))] = (st.st_size if path.is_file() else -1, st.st_mtime_ns)
    return out


def kv(path: Path) -> dict[str, str]:
    rows = duckdb.sql(f"SELECT decode(key), decode(value) FROM parquet_kv_metadata('{path}')").fetchall()
    return dict(rows)


def parquet_rows(path: Path) -> list[tuple[str, int]]:
    return duckdb.sql(f"SELECT run_id, seq FROM read_parquet('{path}')").fetchall()


def copy_fixture(tmp_path: Path) -> Path:
    target = tmp_path / "store"
    shutil.copytree(FIXTURES / "store-v1", target)
    return target


# --- the v1 fixture --------------------------------------------------------------------


def test_the_fixture_is_a_real_schema_1_store() -> None:
    root = FIXTURES / "store-v1"
    marker = json.loads((root / "store.json").read_text())
    assert marker["schema_version"] == 1 and marker["migrations"] == []
    [parquet] = (root / "events").glob("*.parquet")
    assert EVENTS_FORMAT_KEY not in kv(parquet)  # written before schema 2
    [segment] = (root / "segments").glob("*.jsonl")
    assert segment.stem != parquet.stem  # a second writer's segment, never compacted
    assert (root / "workflows" / "fixture-wf" / "v1.json").exists()
    assert sorted(p.name for p in (root / "artifacts" / "r-v1-ok").iterdir()) == ["load.1.parquet", "report.1.pkl"]


def test_v1_store_is_migrated_and_reads_back_identically(tmp_path: Path) -> None:
    root = copy_fixture(tmp_path)
    expected = json.loads((FIXTURES / "store-v1-expected.json").read_text())
    [v1_file] = (root / "events").glob("*.parquet")

    store = FolderStore(root)
    assert store.schema_version == 2
    marker = json.loads((root / "store.json").read_text())
    assert marker["schema_version"] == 2
    [step] = marker["migrations"]
    assert step["to_version"] == 2 and step["name"] == "sort-events-by-run" and step["at"].endswith("Z")
    assert marker["created_at"] == "2026-11-21T13:16:00.167473Z"  # the store's own history is kept

    # The v1 file was merged away into a schema-2 file, sorted, with a manifest.
    assert not v1_file.exists()
    [merged] = [p for p in (root / "events").glob("*.parquet") if ef.is_merged(p.name)]
    assert kv(merged) == {EVENTS_FORMAT_KEY: EVENTS_FORMAT}
    rows = parquet_rows(merged)
    assert rows == sorted(rows) and len(rows) == 18
    assert ef.read_sources(ef.manifest_path(merged)) == [v1_file.stem]

    # Every run reads back as written: events, the views, the artifacts.
    for run_id, events in expected["runs"].items():
        assert [e.to_dict() for e in store.read_run(run_id)] == events, run_id
    runs = {r["run_id"]: r for r in store.sql("SELECT * FROM runs").to_dicts()}
    assert {r: (v["status"], v["events"], v["last_seq"]) for r, v in runs.items()} == {
        "r-v1-ok": ("succeeded", 8, 7),
        "r-v1-fail": ("failed", 8, 7),
        "r-v1-live": ("running", 5, 4),
        "r-v1-seg": ("running", 2, 1),
    }
    # The views agree with a fresh schema-2 store holding the same events.
    fresh = FolderStore(tmp_path / "fresh")
    for events in expected["runs"].values():
        fresh.append_many(Event.from_dict(e) for e in events)
    for view in ("runs", "task_attempts"):
        query = f"SELECT * EXCLUDE (started_at) FROM {view} ORDER BY ALL" if view == "runs" else f"SELECT * FROM {view} ORDER BY ALL"
        assert store.sql(query).equals(fresh.sql(query)), view
    fresh.close()
    arts = expected["artifacts"]
    assert store.load_artifact(arts["table"]).equals(pl.DataFrame({"day": [1, 2, 3], "sales": [9.5, 7.25, 11.0]}))
    assert store.load_artifact(arts["value"]) == {"total": 27.75, "days": [1, 2, 3]}
    assert store.sql("SELECT name, version, tasks FROM workflows").rows() == [("fixture-wf", "v1", 2)]

    # The segment the dead v1 writer left is compacted in the schema-2 format.
    assert store.wait_for_compaction(30)
    assert list((root / "segments").glob("*.jsonl")) == []
    for path in (root / "events").glob("*.parquet"):
        assert kv(path) == {EVENTS_FORMAT_KEY: EVENTS_FORMAT}
    for run_id, events in expected["runs"].items():
        assert [e.to_dict() for e in store.read_run(run_id)] == events, run_id
    store.close()

    before = tree(root)
    FolderStore(root).close()  # at version 2 already: nothing runs again
    assert json.loads((root / "store.json").read_text())["migrations"] == marker["migrations"]
    assert tree(root) == before


def test_an_interrupted_migration_runs_again_safely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A v1 store with several v1 files: the migration is killed after its first merge.
    root = tmp_path / "store"
    monkeypatch.setattr(ef, "MERGE_TARGET_ROWS", 40)  # batches of ~40 rows: several merges
    for i in range(6):
        store = FolderStore(root)
        store.append_many(E(f"r{i}", s, ev.RUN_STARTED if s == 0 else ev.TASK_STARTED) for s in range(15))
        store.close()
    expected = {f"r{i}": FolderStore(root).read_run(f"r{i}") for i in range(6)}
    # Make it a v1 store: strip the format tag by rewriting each file as schema 1 did.
    for path in (root / "events").glob("*.parquet"):
        tmp = path.with_suffix(".tmp")
        duckdb.sql(f"COPY (SELECT * FROM read_parquet('{path}')) TO '{tmp}' (FORMAT parquet, COMPRESSION zstd)")
        os.replace(tmp, path)
    marker = json.loads((root / "store.json").read_text())
    marker["schema_version"] = 1
    (root / "store.json").write_text(json.dumps(marker))

    real_merge = ef.merge
    calls: list[list[Path]] = []

    def killed_on_second_merge(layout: Any, con: Any, sources: list[Path]) -> Any:
        calls.append(sources)
        if len(calls) < 2:
            return real_merge(layout, con, sources)
        # As a process killed between renaming the merged file and unlinking its sources.
        target = layout.events / f"{ef.MERGED_PREFIX}{time.time_ns()}-killed.parquet"
        ef.manifest_path(target).write_text(json.dumps({"sources": [p.stem for p in sources]}))
        ef.write_events_file(con, ef.parquet_records_sql(sources), target)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ef, "merge", killed_on_second_merge)
    with pytest.raises(KeyboardInterrupt):
        FolderStore(root)
    assert json.loads((root / "store.json").read_text())["schema_version"] == 1
    assert len(calls) == 2
    [killed] = (root / "events").glob("*-killed.parquet")
    assert all(p.exists() for p in calls[1]) and all(not p.exists() for p in calls[0])
    # Half done: a merged file AND its sources are on disk. Readers count each event once.
    monkeypatch.setattr(layout_mod, "SCHEMA_VERSION", 1)
    half = FolderStore(root)
    for run, events in expected.items():
        assert half.read_run(run) == events
    assert half.sql("SELECT count(*) FROM events").item() == 90
    half.close()
    monkeypatch.undo()

    store = FolderStore(root)  # the migration runs again and finishes
    assert store.schema_version == 2
    assert [m["name"] for m in json.loads((root / "store.json").read_text())["migrations"]] == ["sort-events-by-run"]
    for path in (root / "events").glob("*.parquet"):
        assert kv(path) == {EVENTS_FORMAT_KEY: EVENTS_FORMAT}, path.name
        assert ef.is_merged(path.name)
    assert killed.exists() and not any(p.exists() for p in calls[1])  # the killed merge was finished
    for run, events in expected.items():
        assert store.read_run(run) == events
    assert store.sql("SELECT count(*), count(DISTINCT event_id) FROM events").row(0) == (90, 90)
    store.close()


def test_a_newer_store_is_refused_and_left_untouched(tmp_path: Path) -> None:
    root = copy_fixture(tmp_path)
    marker = json.loads((root / "store.json").read_text())
    marker.update(schema_version=99, written_by="7.3.0")
    (root / "store.json").write_text(json.dumps(marker, indent=2))
    before = tree(root)
    time.sleep(0.01)
    with pytest.raises(StoreVersionError) as info:
        FolderStore(root)
    message = str(info.value)
    assert "schema version 99" in message and "written by kernelflow 7.3.0" in message
    assert f"supports schema version {layout_mod.SCHEMA_VERSION} at most" in message
    assert "pip install -U kernelflow" in message and "KERNELFLOW_HOME" in message
    assert tree(root) == before  # no lock file, no compaction, no migration, nothing


# --- the schema-2 format ---------------------------------------------------------------


def test_compaction_writes_sorted_tagged_files(tmp_store: FolderStore) -> None:
    events = [E(f"r{(i * 7) % 5}", i // 5) for i in range(50)]  # runs interleaved, as live runs write
    for e in events:
        tmp_store.append(e)
    tmp_store.close()
    [path] = (tmp_store.layout.events).glob("*.parquet")
    assert kv(path) == {EVENTS_FORMAT_KEY: EVENTS_FORMAT}
    rows = parquet_rows(path)
    assert rows == sorted(rows) and len(rows) == 50
    groups = duckdb.sql(f"SELECT DISTINCT row_group_num_rows FROM parquet_metadata('{path}')").fetchall()
    assert groups == [(50,)]  # below ROW_GROUP_ROWS: one row group
    assert ROW_GROUP_ROWS == 122_880


def _store_of_files(root: Path, n_files: int, runs_per_file: int, per_run: int) -> FolderStore:
    """A store whose events are spread over ``n_files`` compacted files (one writer per file)."""
    for f in range(n_files):
        store = FolderStore(root)
        store.append_many(
            E(f"r{f:02d}-{r:03d}", s, ev.RUN_STARTED if s == 0 else ev.TASK_STARTED, pad="x" * 40)
            for s in range(per_run)
            for r in range(runs_per_file)
        )
        store.close()
    return FolderStore(root)


def test_a_run_filter_reaches_the_parquet_scan_and_prunes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ef, "MERGE_FANIN", 10**6)  # keep the 6 files apart
    store = _store_of_files(tmp_path / "store", n_files=6, runs_per_file=200, per_run=10)
    assert len(list((tmp_path / "store" / "events").glob("*.parquet"))) == 6
    run = "r03-117"
    assert [e.seq for e in store.read_run(run)] == list(range(10))
    # Through the views, as read_run and state_at query: the filter is pushed
    # through the UNION ALL with the segment rows into DuckDB's Parquet scan,
    # and bloom filters / statistics skip the files without the run.
    queries = [
        ("SELECT * FROM _events_raw WHERE run_id = ? ORDER BY seq", [run]),
        ("SELECT * FROM events WHERE run_id = ? AND seq <= 5", [run]),
    ]
    if "MACRO state_at" in load_views_sql():
        queries.append(("SELECT * FROM state_at(?, ?)", [run, 5]))
    for query, params in queries:
        plan = store.sql("EXPLAIN ANALYZE " + query, params)["explain_value"][0]
        assert plan.count("READ_PARQUET") == 1 and f"run_id = '{run}'" in plan, plan
        scanned, total = map(int, plan.split("Row Groups Scanned:")[1].split("│")[0].split("/"))
        assert total == 6 and scanned <= 2, plan  # 1, plus a rare bloom-filter false positive
    store.close()


# --- merging small files -------------------------------------------------------------------


def test_small_files_are_merged_and_read_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ef, "MERGE_FANIN", 4)
    root = tmp_path / "store"
    store = _store_of_files(root, n_files=3, runs_per_file=5, per_run=4)
    before = store.sql("SELECT * FROM events ORDER BY run_id, seq")
    assert store.compact() == 0
    assert len(list((root / "events").glob("*.parquet"))) == 3  # below MERGE_FANIN: left alone

    more = FolderStore(root)
    more.append_many(E("late", s, ev.RUN_STARTED if s == 0 else ev.TASK_STARTED) for s in range(3))
    more.close()  # a 4th small file: the next maintenance merges the four
    store.compact()
    [merged] = list((root / "events").glob("*.parquet"))
    assert ef.is_merged(merged.name) and kv(merged) == {EVENTS_FORMAT_KEY: EVENTS_FORMAT}
    rows = parquet_rows(merged)
    assert rows == sorted(rows) and len(rows) == 63
    after = store.sql("SELECT * FROM events ORDER BY run_id, seq")
    assert after.filter(pl.col("run_id") != "late").equals(before)
    assert len(store.read_run("late")) == 3
    store.close()


def test_plan_merges_by_tier() -> None:
    def info(name: str, rows: int, current: bool = True) -> ef.FileInfo:
        return ef.FileInfo(Path(name), rows, current)

    tiny = [info(f"a{i}", 100) for i in range(7)]
    assert ef.plan_merges(tiny) == []  # 7 < MERGE_FANIN
    eight = tiny + [info("a7", 5000)]
    assert ef.plan_merges(eight) == [eight]
    big = info("big", ef.MERGE_TARGET_ROWS // 2)
    mid = [info(f"m{i}", 100_000) for i in range(8)]
    # Not the big one, and the mid tier only with its peers.
    assert ef.plan_merges(tiny + [big] + mid) == [mid]
    # The migration takes every old-format file, a lone one too.
    old = info("old", 50_000, current=False)
    assert ef.plan_merges([old, big]) == []
    assert ef.plan_merges([old, big], legacy=True) == [[old]]


def test_half_done_merges_count_each_event_once(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = _store_of_files(root, n_files=2, runs_per_file=3, per_run=5)
    files = sorted((root / "events").glob("*.parquet"))
    expected = store.sql("SELECT * FROM events ORDER BY run_id, seq")
    con = duckdb.connect()

    # Killed after writing the manifest, before the rename: the manifest hides nothing.
    orphan = root / "events" / f"{ef.MERGED_PREFIX}1-orphan.sources"
    orphan.write_text(json.dumps({"sources": [p.stem for p in files]}))
    assert store.sql("SELECT * FROM events ORDER BY run_id, seq").equals(expected)

    # Killed after the rename, before unlinking the sources: they are hidden.
    target = root / "events" / f"{ef.MERGED_PREFIX}2-crash.parquet"
    ef.manifest_path(target).write_text(json.dumps({"sources": [p.stem for p in files]}))
    ef.write_events_file(con, ef.parquet_records_sql(files), target)
    assert all(p.exists() for p in files)
    assert store.sql("SELECT * FROM events ORDER BY run_id, seq").equals(expected)
    other = FolderStore(root)  # a new handle, listing for the first time
    assert other.sql("SELECT * FROM events ORDER BY run_id, seq").equals(expected)

    store.compact()  # maintenance finishes the merge
    assert not any(p.exists() for p in files)
    assert store.sql("SELECT * FROM events ORDER BY run_id, seq").equals(expected)
    ef.finish_merges(store.layout, now=time.time() + 2 * ef.STALE_MANIFEST_AGE_S)
    assert not orphan.exists()  # an hour later both manifests go, the live one stays
    assert not ef.manifest_path(target).exists() or target.exists()
    assert other.sql("SELECT * FROM events ORDER BY run_id, seq").equals(expected)
    con.close()
    store.close()
    other.close()


MERGING_WRITER = """
import sys, time
import kernelflow.store.eventfiles as ef
ef.MERGE_FANIN = 2  # merge all the time
from kernelflow.store import FolderStore
from kernelflow.events import Event
path, wid, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = FolderStore(path, segment_max_events=150)
for i in range(n):
    run = f"w{wid}-r{i % 7}"
    seq = i // 7
    store.append(Event(run, seq, time.time_ns() // 1000, "RunStarted" if seq == 0 else "TaskStarted", "wf", "v1",
                       None if seq == 0 else f"t{seq}", None if seq == 0 else 1, {"i": i}))
    if i % 100 == 99:
        time.sleep(0.01)
        store.compact()
store.close()
"""

COUNTING_READER = """
import os, sys, traceback
from kernelflow.store import FolderStore
path, stop, out = sys.argv[1], sys.argv[2], sys.argv[3]
store = FolderStore(path)
counts, errors = [], []
while not os.path.exists(stop):
    try:
        n, distinct = store.sql("SELECT count(*), count(DISTINCT event_id) FROM events").row(0)
        if n != distinct:
            errors.append(f"duplicates: {n} rows, {distinct} distinct")
        counts.append(n)
    except Exception:
        errors.append(traceback.format_exc())
open(out, "w").write(repr((counts, errors)))
"""


@pytest.mark.slow
def test_merges_while_others_write_and_read(tmp_path: Path) -> None:
    root, stop, out = tmp_path / "store", tmp_path / "stop", tmp_path / "reader.txt"
    FolderStore(root).append(E("first", 0, ev.RUN_STARTED))  # create it before the reader starts
    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent(COUNTING_READER), str(root), str(stop), str(out)])
    writers = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(MERGING_WRITER), str(root), str(w), "1400"])
        for w in range(3)
    ]
    try:
        assert [w.wait(timeout=300) for w in writers] == [0, 0, 0]
    finally:
        stop.touch()
        assert reader.wait(timeout=120) == 0
    counts, errors = eval(out.read_text())
    assert errors == []
    assert counts and counts == sorted(counts), "a later query saw fewer events"
    store = FolderStore(root)
    assert store.sql("SELECT count(*), count(DISTINCT event_id) FROM events").row(0) == (4201, 4201)
    merged = [p for p in (root / "events").glob("*.parquet") if ef.is_merged(p.name)]
    assert merged, "the writers never merged anything"
    per_run = store.sql("SELECT run_id, count(*), max(seq) FROM events WHERE run_id <> 'first' GROUP BY run_id").rows()
    assert len(per_run) == 21 and all(n == m + 1 == 200 for _, n, m in per_run)
    store.close()


def test_migration_failure_names_the_migration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = copy_fixture(tmp_path)

    def broken(layout: Any) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(ef, "migrate_sort_events_by_run", broken)
    with pytest.raises(StoreError, match=r"migration 'sort-events-by-run'.*disk on fire.*left at schema version 1"):
        FolderStore(root)
    assert json.loads((root / "store.json").read_text())["schema_version"] == 1


def test_opening_a_store_of_many_session_files_merges_them(tmp_path: Path) -> None:
    root = tmp_path / "store"
    for s in range(ef.MERGE_FANIN + 1):  # sessions that each closed cleanly, leaving one small file
        session = FolderStore(root)
        session.append_many(E(f"s{s}", i, ev.RUN_STARTED if i == 0 else ev.TASK_STARTED) for i in range(5))
        session.close()
    assert len(list((root / "events").glob("*.parquet"))) == ef.MERGE_FANIN + 1
    expected = duckdb.sql(f"SELECT * FROM read_parquet('{root}/events/*.parquet') ORDER BY run_id, seq").fetchall()
    store = FolderStore(root)  # the next process to open it merges, off its own thread
    assert store.wait_for_compaction(60)
    [merged] = (root / "events").glob("*.parquet")
    assert ef.is_merged(merged.name)
    assert duckdb.sql(f"SELECT * FROM read_parquet('{merged}') ORDER BY run_id, seq").fetchall() == expected
    assert store.sql("SELECT count(*) FROM events").item() == len(expected) == 45
    store.close()


def test_a_marker_created_by_a_racing_writer_between_read_and_listing_is_honoured(tmp_path, monkeypatch):
    """Another handle creates the store (marker, then circuits/) right after our read of
    store.json failed and before we list the folder: that is a store, not a foreign folder."""
    import pathlib

    from kernelflow.store.layout import Layout, ensure_created, read_marker

    layout = Layout(tmp_path / "store")
    created = ensure_created(layout, fsync=False)
    (layout.root / "circuits").mkdir()
    real = pathlib.Path.read_bytes
    missed = []

    def not_yet(self):
        if self == layout.marker and not missed:
            missed.append(self)
            raise FileNotFoundError(self)
        return real(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", not_yet)
    assert read_marker(layout) == created and missed
