"""FolderStore (store/folder.py) as a handle: settings, what it passes on to the
parts of the store, and its maintenance calls; real files, real DuckDB."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import kernelflow.store.folder as folder_mod
from kernelflow import events as ev
from kernelflow.events import Event
from kernelflow.exceptions import StoreError
from kernelflow.store import FolderStore
from kernelflow.store.circuits import CircuitTable
from kernelflow.store.leases import Lease

FIXTURES = Path(__file__).parent / "fixtures"


def E(run: str, seq: int) -> Event:
    first = seq == 0
    return Event(run, seq, 1_795_000_000_000_000 + seq, ev.RUN_STARTED if first else ev.TASK_STARTED, "wf", "v1",
                 None if first else "t", None if first else 1, {"i": seq})


def parquet_names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "events").glob("*.parquet"))


def segment_names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "segments").glob("*.jsonl"))


@pytest.fixture
def fsync_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every os.fsync the store makes (still done for real)."""
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    return calls


# --- settings ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "True", " yes ", "YES", "on", "ON", "On"])
def test_kernelflow_fsync_turns_fsync_on(value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELFLOW_FSYNC", value)
    assert folder_mod.fsync_from_env() is True
    store = FolderStore(tmp_path / "store")
    assert store.fsync is True and repr(store) == f"FolderStore({str(tmp_path / 'store')!r}, fsync=True)"
    assert FolderStore(tmp_path / "store", fsync=False).fsync is False  # the argument wins


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off", "2", "y", "enabled"])
def test_other_kernelflow_fsync_values_leave_it_off(value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELFLOW_FSYNC", value)
    assert folder_mod.fsync_from_env() is False
    assert FolderStore(tmp_path / "store").fsync is False
    assert FolderStore(tmp_path / "store", fsync=True).fsync is True


def test_events_are_fsynced_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))[1])
    for fsync in (True, False):
        store = FolderStore(tmp_path / f"store-{fsync}", fsync=fsync)
        store.append(E("r", 0))
        synced.clear()
        store.append(E("r", 1))
        assert synced == ([str(store.segment_path)] if fsync else [])
        store.close()


def test_fsync_is_off_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KERNELFLOW_FSYNC", raising=False)
    assert folder_mod.fsync_from_env() is False


def test_segments_hold_100_000_events_by_default(tmp_path: Path) -> None:
    # Documented in docs/store.md ("Rotation"). Bare events: this is about the count.
    store = FolderStore(tmp_path / "store")
    store.append_many(Event("r", i, 1, ev.TASK_STARTED, "wf", "v1") for i in range(99_999))
    assert store.segment_path is not None
    store.append(Event("r", 99_999, 1, ev.TASK_STARTED, "wf", "v1"))
    assert store.segment_path is None


def test_a_segment_is_closed_and_compacted_after_segment_max_events(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "store", segment_max_events=3)
    store.append_many(E("r", i) for i in range(2))
    assert store.segment_path is not None
    store.append(E("r", 2))
    assert store.segment_path is None  # full: closed
    assert store.wait_for_compaction(30)
    assert len(parquet_names(store.path)) == 1 and segment_names(store.path) == []
    store.close()


def test_rotation_compacts_only_the_segment_that_was_closed(tmp_path: Path) -> None:
    # A closed segment of another (dead) process is left for the next sweep
    # (open, compact()); rotation only hands over this writer's own segment.
    root = tmp_path / "store"
    store = FolderStore(root, segment_max_events=2)
    store.append(E("r", 0))
    other = root / "segments" / "otherhost-1-2-abcdef01.jsonl"
    other.write_bytes(E("other", 0).to_json_line())
    store.append(E("r", 1))
    assert store.wait_for_compaction(30)
    assert segment_names(root) == [other.name]
    assert len(parquet_names(root)) == 1
    assert store.compact() == 1 and segment_names(root) == []
    assert [e.seq for e in store.read_run("other")] == [0]
    store.close()


def test_wait_for_compaction_gives_up_after_the_timeout(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "store", segment_max_events=1)
    assert store.wait_for_compaction(0) is True  # nothing to do
    store.append(E("r", 0))  # closes the segment: its compaction is queued before append returns
    assert store.wait_for_compaction(0) is False
    assert store.wait_for_compaction(30) is True
    assert segment_names(store.path) == [] and len(parquet_names(store.path)) == 1
    store.close()


# --- the first write creates the store ----------------------------------------------


def test_a_store_an_older_kernelflow_created_meanwhile_is_migrated_on_first_write(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FolderStore(root)  # nothing there yet
    root.mkdir()
    shutil.copy(FIXTURES / "store-v1" / "store.json", root / "store.json")  # a schema-1 process got there first
    store.append(E("r", 0))
    marker = json.loads((root / "store.json").read_text())
    assert marker["schema_version"] == 2 and [m["name"] for m in marker["migrations"]] == ["sort-events-by-run"]
    assert store.schema_version == 2
    assert marker["created_at"] == "2026-11-21T13:16:00.167473Z"  # that store, not a new one
    assert [e.seq for e in store.read_run("r")] == [0]
    store.close()


def test_opening_an_older_store_migrates_it_at_once(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    shutil.copy(FIXTURES / "store-v1" / "store.json", root / "store.json")
    store = FolderStore(root)  # before any write
    assert json.loads((root / "store.json").read_text())["schema_version"] == 2
    assert store.exists and store.schema_version == 2


def test_opening_a_newer_store_is_refused(tmp_path: Path) -> None:
    from kernelflow.exceptions import StoreVersionError

    root = tmp_path / "store"
    root.mkdir()
    marker = json.loads((FIXTURES / "store-v1" / "store.json").read_text())
    (root / "store.json").write_text(json.dumps({**marker, "schema_version": 99}))
    with pytest.raises(StoreVersionError, match="Upgrade kernelflow"):
        FolderStore(root)


def test_opening_a_store_compacts_what_dead_writers_left(tmp_path: Path) -> None:
    root = tmp_path / "store"
    FolderStore(root).register_workflow({"name": "wf", "version": "v1", "tasks": []})
    dead = root / "segments" / "otherhost-1-2-abcdef01.jsonl"
    dead.parent.mkdir()
    dead.write_bytes(E("r", 0).to_json_line())
    store = FolderStore(root)
    assert store.wait_for_compaction(30)
    assert segment_names(root) == [] and len(parquet_names(root)) == 1
    assert [e.seq for e in store.read_run("r")] == [0]


def test_opening_a_store_merges_the_small_files_sessions_left(tmp_path: Path) -> None:
    root = tmp_path / "store"
    for i in range(8):  # eight sessions, one small events file each (closing compacts, never merges)
        session = FolderStore(root)
        session.append(E(f"r{i}", 0))
        session.close()
    assert len(parquet_names(root)) == 8 and segment_names(root) == []
    store = FolderStore(root)
    assert store.wait_for_compaction(30)
    [merged] = parquet_names(root)
    assert merged.startswith("merged+")


def test_opening_a_store_with_nothing_to_do_starts_no_background_work(tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert FolderStore(root).wait_for_compaction(0) is True  # nothing there
    FolderStore(root).register_workflow({"name": "wf", "version": "v1", "tasks": []})
    assert FolderStore(root).wait_for_compaction(0) is True  # nothing to compact or merge


def test_leases_live_in_the_store(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FolderStore(root)
    assert store.lease_holder("r-1") is None and not root.exists()
    lease = store.lease("r-1")
    assert isinstance(lease, Lease) and lease.held and lease.path == root / "leases" / "r-1.lock"
    assert (root / "store.json").exists()  # taking a lease is a first write
    holder = store.lease_holder("r-1")
    assert holder is not None and holder["run_id"] == "r-1" and holder["pid"] == os.getpid()
    assert store.lease("r-1") is None  # held
    assert FolderStore(root).lease("r-1") is None  # by anyone
    assert store.lease_holder("r-2") is None
    lease.release()
    assert store.lease_holder("r-1") is None
    again = store.lease("r-1")
    assert again is not None
    again.release()


def test_answers_live_in_the_store_and_follow_its_fsync(tmp_path: Path, fsync_calls: list[int]) -> None:
    root = tmp_path / "store"
    store = FolderStore(root, fsync=True)
    store.append(E("r-1", 0))
    fsync_calls.clear()
    assert store.answers.claim("r-1", "gate", 3, {"approved": True}) is None
    assert fsync_calls  # the claim was fsynced
    assert json.loads((root / "answers" / "r-1" / "gate.3.json").read_text()) == {"approved": True}
    assert store.answers.claim("r-1", "gate", 3, {"approved": False}) == {"approved": True}  # first one wins
    fresh = FolderStore(tmp_path / "fresh", fsync=False)
    fsync_calls.clear()
    assert fresh.answers.claim("r-1", "gate", 1, {"approved": False}) is None
    assert fsync_calls == [] and (tmp_path / "fresh" / "store.json").exists()  # a first write


def test_circuits_are_one_table_per_handle(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "store")
    table = store.circuits
    assert isinstance(table, CircuitTable) and store.circuits is table
    assert table.names() == [] and not store.path.exists()


def test_workflows_and_artifacts_follow_the_stores_fsync(tmp_path: Path, fsync_calls: list[int]) -> None:
    definition = {"name": "wf", "version": "v1", "tasks": []}
    for fsync in (True, False):
        root = tmp_path / f"store-{fsync}"
        store = FolderStore(root, fsync=fsync)
        store.append(E("r", 0))
        fsync_calls.clear()
        store.register_workflow(definition)
        assert bool(fsync_calls) is fsync
        fsync_calls.clear()
        ref = store.save_artifact("r", "t", 1, {"x": 1})
        assert bool(fsync_calls) is fsync
        assert store.load_artifact(ref) == {"x": 1}
        store.close()


def test_the_first_write_creates_the_store_and_fsyncs_its_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))[1])
    for fsync in (True, False):
        root = tmp_path / f"store-{fsync}"
        synced.clear()
        FolderStore(root, fsync=fsync).register_workflow({"name": "wf", "version": "v1", "tasks": []})
        assert json.loads((root / "store.json").read_text())["schema_version"] == 2
        assert (root / "workflows" / "wf" / "v1.json").exists()
        assert any(".store.json" in name for name in synced) is fsync, synced


def test_an_artifact_can_be_the_first_write(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "store")
    ref = store.save_artifact("r", "t", 1, [1, 2])
    assert (tmp_path / "store" / "store.json").exists() and store.exists
    assert ref == {"ref": "artifacts/r/t.1.pkl", "format": "pickle", "bytes": (tmp_path / "store" / ref["ref"]).stat().st_size}


def test_health_describes_this_stores_folder(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "store")
    health = store.health()
    assert health.component == "store" and health.info["path"] == str(tmp_path / "store")
    assert health.info["exists"] is False and not (tmp_path / "store").exists()  # creates nothing


# --- writing --------------------------------------------------------------------------


def test_append_many_returns_how_many_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(folder_mod, "APPEND_MANY_CHUNK", 3)
    store = FolderStore(tmp_path / "store")
    assert store.append_many(E("r", i) for i in range(7)) == 7  # 3 + 3 + 1
    assert store.append_many(E("r", i) for i in range(7, 13)) == 6  # 3 + 3
    assert store.append_many([]) == 0
    assert [e.seq for e in store.read_run("r")] == list(range(13))
    store.close()


@pytest.mark.parametrize("total", [7, 5])  # the failing chunk is a full one / the last, shorter one
def test_a_failed_chunk_counts_the_chunks_before_it(total: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(folder_mod, "APPEND_MANY_CHUNK", 3)
    store = FolderStore(tmp_path / "store")

    def events() -> Iterator[Event]:
        for i in range(total):
            if i == 3:  # the first chunk is written: now the disk fills up
                full = os.open("/dev/full", os.O_WRONLY)
                os.dup2(full, store._writer._fd)
                os.close(full)
            yield E("r", i)

    with pytest.raises(StoreError) as info:
        store.append_many(events())
    given = min(total, 6)
    assert f"Of the {given} events given so far the first 3 are recorded, the rest are not." in str(info.value)
    assert "(from index 3) again." in str(info.value)
    assert store.append_many(E("r", i) for i in range(3, total)) == total - 3
    assert [e.seq for e in store.read_run("r")] == list(range(total))
    store.close()


# --- maintenance ------------------------------------------------------------------------


def test_compact_waits_for_another_maintainer_then_merges(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FolderStore(root, segment_max_events=1)
    store.append(E("r", 0))
    lock = os.open(root / "store.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # another process is merging: background merges skip
    try:
        store.append_many(E("r", i) for i in range(1, 8))
        assert store.wait_for_compaction(30)
        assert len(parquet_names(root)) == 8  # enough to merge
        done: list[int] = []
        worker = threading.Thread(target=lambda: done.append(store.compact()))
        worker.start()
        time.sleep(0.3)
        assert worker.is_alive() and done == []  # waiting for the lock, not skipping
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    worker.join(30)
    assert done == [0]  # no segment to compact; the merge ran
    [merged] = parquet_names(root)
    assert merged.startswith("merged+")
    assert [e.seq for e in store.read_run("r")] == list(range(8))
    store.close()


def test_compact_puts_aside_a_file_this_handle_found_damaged(tmp_path: Path) -> None:
    # Its footer is fine, so only reading its rows finds the damage: compact()
    # reads through the files the handle reported, and moves them to quarantine/.
    root = tmp_path / "store"
    writer = FolderStore(root)
    writer.append_many(Event("b", i, 1_795_000_000_000_000 + i, ev.TASK_STARTED, "wf", "v1", f"t{i}", 1,
                             {"pad": "x" * 60, "i": i}) for i in range(3000))
    writer.close()
    [bad] = (root / "events").glob("*.parquet")
    data = bad.read_bytes()
    middle = len(data) // 3
    bad.write_bytes(data[:middle] + bytes(range(256)) * 8 + data[middle + 2048:])
    store = FolderStore(root)
    with pytest.warns(RuntimeWarning, match="events file cannot be read"):
        assert store.read_run("b") == []
    assert store.compact() == 0
    assert not bad.exists() and (root / "quarantine" / bad.name).exists()
    store.close()


def test_close_compacts_this_processes_segments(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with FolderStore(root) as store:
        store.append(E("r", 0))
        assert segment_names(root) == [store.segment_path.name]
    assert segment_names(root) == [] and len(parquet_names(root)) == 1
    assert store.segment_path is None
    store.append(E("r", 1))  # still usable: a new segment
    store.close()
    assert [e.seq for e in FolderStore(root).read_run("r")] == [0, 1]


def test_open_stores_are_closed_at_exit(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FolderStore(root)
    store.append(E("r", 0))
    folder_mod._close_all_at_exit()  # what atexit runs
    assert segment_names(root) == [] and len(parquet_names(root)) == 1


# --- the handle -------------------------------------------------------------------------


def test_the_path_is_kept_absolute_and_user_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    store = FolderStore("~/flows/.kernelflow")
    assert store.path == tmp_path / "home" / "flows" / ".kernelflow"
    assert store.location == str(tmp_path / "home" / "flows" / ".kernelflow")
    monkeypatch.chdir(tmp_path)
    relative = FolderStore("here")
    monkeypatch.chdir("/")  # a later chdir in the notebook does not move the store
    relative.append(E("r", 0))
    assert (tmp_path / "here" / "store.json").exists() and relative.path == tmp_path / "here"
    relative.close()


def test_exists_and_schema_version_before_and_after_the_first_write(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "store")
    other = FolderStore(tmp_path / "store")
    assert store.exists is False and store.schema_version == 2
    other.append(E("r", 0))
    assert store.exists is True  # created by another handle meanwhile
    assert other.exists is True and other.schema_version == 2
    other.close()


def test_read_run_and_sql(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "store")
    events = [E("a", 0), E("b", 0), E("a", 1)]
    assert store.append_many(events) == 3
    assert store.read_run("a") == [events[0], events[2]] and store.read_run("zzz") == []
    assert store.sql("SELECT count(*) FROM events WHERE run_id = ?", ["a"]).item() == 2
    assert store.sql("SELECT count(*) FROM events WHERE run_id = $r", {"r": "b"}).item() == 1
    assert store.sql("SELECT count(*) FROM events").item() == 3
    with pytest.raises(StoreError, match="SQL error"):
        store.sql("SELECT nope FROM events")
    store.close()


def test_run_lock_is_exclusive_across_handles(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FolderStore(root)
    with store.run_lock("r/1 x"):
        path = root / "locks" / "r_1_x.lock"
        assert path.exists() and (root / "store.json").exists()
        probe = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe)
    probe = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released
    finally:
        os.close(probe)
    with store.run_lock("r/1 x"):  # and can be taken again
        pass


def test_problems_lists_damaged_files(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FolderStore(root)
    store.append(E("r", 0))
    store.close()
    [events_file] = (root / "events").glob("*.parquet")
    events_file.write_bytes(b"not parquet")
    assert store.problems() == []
    with pytest.warns(RuntimeWarning, match=str(events_file)):
        assert store.read_run("r") == []
    [problem] = store.problems()
    assert problem["path"] == str(events_file) and set(problem) == {"path", "problem", "fix"}
    store.compact()  # puts it aside
    [quarantined] = store.problems()
    assert quarantined["path"] == str(root / "quarantine" / events_file.name)
