"""Reading the store (store/query.py): what each query sees of segments, events
files, workflows and trigger logs, its error messages, and the retries around
files that vanish while being read. Real files and real DuckDB; segment files
are written by hand where a test needs a line cut in half or a file replaced."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest

from kernelflow import events as ev
from kernelflow.events import Event
from kernelflow.exceptions import StoreError
from kernelflow.store import FolderStore
from kernelflow.store import query as query_mod
from kernelflow.store.problems import StoreDamageWarning

BASE_TS = 1_795_000_000_000_000  # 2026-11-18T...


def E(run: str, seq: int, **payload: Any) -> Event:
    first = seq == 0
    return Event(run, seq, BASE_TS + seq, ev.RUN_STARTED if first else ev.TASK_STARTED, "wf", "v1",
                 None if first else f"t{seq}", None if first else 1, payload,
                 actor={"user": "ada", "pid": 42})


def created(tmp_path: Path) -> FolderStore:
    """A store that exists on disk (its marker written), with no events yet."""
    store = FolderStore(tmp_path / "store")
    store.register_workflow({"name": "wf", "version": "v1", "tasks": []})
    return store


def write_segment(store: FolderStore, name: str, data: bytes) -> Path:
    """A segment of a writer that is gone (nobody holds its lock), written by hand."""
    folder = store.layout.segments
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def count(store: FolderStore, where: str = "true") -> int:
    return store.sql(f"SELECT count(*) FROM events WHERE {where}").item()


def seqs(store: FolderStore, run: str) -> list[int]:
    return [e.seq for e in store.read_run(run)]


# --- what a query sees ---------------------------------------------------------------


def test_run_rows_are_the_records_as_written(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "store")
    store.append_many([E("r", 1, n=1), E("other", 0), E("r", 0, text="é")])  # out of order in the file
    rows = store._query.run_rows("r")
    assert [row["seq"] for row in rows] == [0, 1]
    first = rows[0]
    assert list(first) == ["event_id", "run_id", "seq", "ts", "type", "workflow", "workflow_version",
                           "task_id", "attempt", "payload", "actor"]
    assert first["ts"] == BASE_TS and first["run_id"] == "r" and first["type"] == ev.RUN_STARTED
    assert json.loads(first["payload"]) == {"text": "é"} and json.loads(first["actor"]) == {"user": "ada", "pid": 42}
    assert store._query.run_rows("nope") == []
    store.close()
    assert store._query.run_rows("r") == rows  # the same once compacted


def test_a_growing_segment_is_read_up_to_its_last_complete_line(tmp_path: Path) -> None:
    store = created(tmp_path)
    lines = [E("r", i).to_json_line() for i in range(4)]
    segment = write_segment(store, "w-1-1-00000001.jsonl", lines[0] + lines[1][:10])
    assert seqs(store, "r") == [0]  # the cut line waits for its end
    with open(segment, "ab") as f:
        f.write(lines[1][10:] + lines[2])
    assert seqs(store, "r") == [0, 1, 2]  # read from where the last query stopped: nothing twice
    with open(segment, "ab") as f:
        f.write(lines[3])
    assert count(store) == 4 and seqs(store, "r") == [0, 1, 2, 3]
    assert store._query.segment_run_ids() == ["r"]
    assert store.compact() == 1  # compacted: its rows now come from the events file, once
    assert not segment.exists()
    assert count(store) == 4 and seqs(store, "r") == [0, 1, 2, 3]
    assert store._query.segment_run_ids() == []


def test_a_segment_replaced_under_the_same_name_is_read_again(tmp_path: Path) -> None:
    store = created(tmp_path)
    segment = write_segment(store, "w-1-1-00000001.jsonl", E("a", 0).to_json_line() + E("a", 1).to_json_line())
    assert count(store) == 2
    replacement = segment.with_name(".replacement")
    replacement.write_bytes(E("b", 0).to_json_line() + E("b", 1).to_json_line() + E("b", 2).to_json_line())
    os.rename(replacement, segment)  # another file (inode), same name, larger
    assert seqs(store, "a") == [] and seqs(store, "b") == [0, 1, 2]
    assert count(store) == 3


def test_only_visible_jsonl_files_are_segments(tmp_path: Path) -> None:
    store = created(tmp_path)
    write_segment(store, "w-1-1-00000001.jsonl", E("seen", 0).to_json_line())
    write_segment(store, ".w-1-2-00000002.opening", E("hidden", 0).to_json_line())  # being created
    write_segment(store, ".w-1-3-00000003.jsonl", E("hidden", 1).to_json_line())
    write_segment(store, "notes.txt", E("hidden", 2).to_json_line())
    assert [r for (r,) in store.sql("SELECT DISTINCT run_id FROM events").rows()] == ["seen"]


def test_a_segment_whose_events_file_exists_is_not_counted_twice(tmp_path: Path) -> None:
    store = created(tmp_path)
    data = E("r", 0).to_json_line() + E("r", 1).to_json_line()
    write_segment(store, "w-1-1-00000001.jsonl", data)
    assert store.compact() == 1
    # A compactor killed between the rename and the unlink leaves both.
    write_segment(store, "w-1-1-00000001.jsonl", data)
    assert count(store) == 2 and seqs(store, "r") == [0, 1]
    assert store._query.segment_run_ids() == []


def test_files_replaced_by_a_merged_file_are_not_read(tmp_path: Path) -> None:
    store = created(tmp_path)
    for i in range(8):
        write_segment(store, f"w-1-{i}-0000000{i}.jsonl", E("r", i).to_json_line())
    assert store.compact() == 8
    [merged] = (store.path / "events").glob("*.parquet")
    assert merged.name.startswith("merged+")
    sources = json.loads(merged.with_suffix(".sources").read_text())["sources"]
    assert len(sources) == 8
    # A merge killed before it removed its sources leaves them beside the merged
    # file (here: one, holding the same events): hidden by the merged file.
    shutil.copy(merged, store.path / "events" / f"{sources[0]}.parquet")
    for handle in (store, FolderStore(store.path)):  # one that read the manifest before, one that did not
        assert count(handle) == 8 and seqs(handle, "r") == list(range(8))


def test_workflows_are_read_and_a_file_that_is_not_json_is_left_out(tmp_path: Path) -> None:
    store = created(tmp_path)
    assert store.sql("SELECT definition->>'name' FROM workflows").rows() == [("wf",)]
    store.register_workflow({"name": "wf2", "version": "v9", "tasks": [{"id": "a"}]})
    (store.path / "workflows" / "wf2" / "broken.json").write_text("{not json")
    (store.path / "workflows" / "wf2" / "latin1.json").write_bytes('{"name": "café"}'.encode("latin-1"))  # not UTF-8
    (store.path / "workflows" / "wf2" / "notes.txt").write_text("{}")
    (store.path / "workflows" / "README.json").write_text("{}")  # not in a workflow's folder
    names = store.sql("SELECT definition->>'name' AS n, definition->>'version' AS v FROM workflows ORDER BY n").rows()
    assert names == [("wf", "v1"), ("wf2", "v9")]
    shutil.rmtree(store.path / "workflows")
    assert store.sql("SELECT count(*) FROM workflows").item() == 0


def test_the_workflows_view_has_its_columns_before_any_workflow_is_registered(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "store")
    store.append(E("r", 0))
    assert not (store.path / "workflows").exists()
    found = store.sql("SELECT * FROM workflows")
    assert found.height == 0
    assert found.columns == ["name", "version", "registered_at", "tasks", "definition", "runs", "last_run_at"]


def test_triggers_show_each_triggers_latest_record(tmp_path: Path) -> None:
    store = created(tmp_path)
    assert store.sql("SELECT * FROM triggers").height == 0
    folder = store.path / "triggers"
    folder.mkdir()

    def rec(trigger: str, outcome: str, at: str, n: int, **kw: Any) -> bytes:
        return json.dumps({"trigger_id": trigger, "schedule": "nightly", "kind": "cron", "outcome": outcome,
                           "scheduled_for": "2026-11-21T00:00:00Z", "fired_at": "2026-11-21T00:00:01Z",
                           "at": at, "n": n, "scheduler_pid": 7, "host": "vm", **kw}).encode() + b"\n"

    (folder / "s1.jsonl").write_bytes(
        rec("t1", "started", "2026-11-21T00:00:02Z", 1, run_id="r-1", pid=99)
        + rec("t1", "succeeded", "2026-11-21T00:05:00Z", 2, run_id="r-1", exit_code=0)
        + rec("t2", "started", "2026-11-21T01:00:00Z", 3)
        + b'{"trigger_id": "t3", "outc'  # a torn last line
    )
    (folder / ".s2.jsonl").write_bytes(rec("hidden", "started", "2026-11-21T00:00:00Z", 1))
    rows = store.sql("SELECT trigger_id, outcome, run_id, exit_code, strftime(started_at, '%H:%M:%S') AS s, "
                     "strftime(ended_at, '%H:%M:%S') AS e, strftime(updated_at, '%H:%M:%S') AS u, "
                     "strftime(scheduled_for, '%H:%M:%S') AS f, scheduler_pid, host "
                     "FROM triggers ORDER BY trigger_id").rows()
    assert rows == [
        ("t1", "succeeded", "r-1", 0, "00:00:02", "00:05:00", "00:05:00", "00:00:00", 7, "vm"),
        ("t2", "started", None, None, "01:00:00", None, "01:00:00", "00:00:00", 7, "vm"),
    ]
    # A later record of the same trigger, in another session's file, is seen by the next query.
    (folder / "s3.jsonl").write_bytes(rec("t2", "failed", "2026-11-21T01:30:00Z", 1, exit_code=1))
    assert store.sql("SELECT outcome, exit_code FROM triggers WHERE trigger_id = 't2'").rows() == [("failed", 1)]


def test_sessions_are_utc_and_temporary_tables_stay_with_their_thread(tmp_path: Path) -> None:
    store = created(tmp_path)
    assert store.sql("SELECT current_setting('TimeZone')").item() == "UTC"
    store.sql("CREATE TEMP TABLE mine AS SELECT 42 AS x")
    assert store.sql("SELECT x FROM mine").item() == 42
    seen: list[Any] = []

    def other() -> None:
        try:
            store.sql("SELECT x FROM mine")
        except StoreError as exc:
            seen.append(exc)

    worker = threading.Thread(target=other)
    worker.start()
    worker.join()
    assert len(seen) == 1 and "mine" in str(seen[0])
    store._query.close()  # closes every thread's connection; the next query opens a new one
    with pytest.raises(StoreError, match="mine"):
        store.sql("SELECT x FROM mine")
    assert count(store) == 0


def test_segment_lines_are_parsed_from_a_private_scratch_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    store = created(tmp_path)
    write_segment(store, "w-1-1-00000001.jsonl", E("r", 0).to_json_line())
    assert count(store) == 1
    assert os.listdir(scratch) == [] and sorted(os.listdir(store.layout.segments)) == ["w-1-1-00000001.jsonl"]


def test_parameters_and_statements_without_a_result(tmp_path: Path) -> None:
    store = created(tmp_path)
    store.append_many([E("a", 0), E("a", 1), E("b", 0)])
    assert store.sql("SELECT count(*) FROM events WHERE run_id = ?", ["a"]).item() == 2
    assert store.sql("SELECT count(*) FROM events WHERE run_id = $run", {"run": "b"}).item() == 1
    assert store.sql("SELECT '?' AS q").item() == "?"  # no parameters: a ? in a string is text
    empty = store.sql("-- only a comment: no statement, no result")
    assert empty.shape == (0, 0)


# --- errors ------------------------------------------------------------------------------


def test_an_sql_error_names_the_views_and_macros(tmp_path: Path) -> None:
    store = created(tmp_path)
    with pytest.raises(StoreError) as info:
        store.sql("SELECT nope FROM runs")
    text = str(info.value)
    assert text.startswith("SQL error: Binder Error")
    assert text.endswith(
        "\n  The store's views are events, runs, task_attempts, workflows, dead_letters, approvals, "
        "task_baselines, alerts, triggers, and its table macros state_at(run_id, point), runs_active_at(ts) "
        "(their columns: docs/sql.md, or DESCRIBE <view>)."
    )


def test_an_error_naming_a_file_of_the_store_says_so(tmp_path: Path) -> None:
    store = created(tmp_path)
    missing = store.path / "nope.parquet"
    with pytest.raises(StoreError) as info:
        store.sql(f"SELECT * FROM read_parquet('{missing}')")
    text = str(info.value)
    assert text.startswith(f"cannot read the event store at {store.path}: IO Error")
    assert text.endswith(
        "\n  A file in it is damaged or was removed while in use; move a damaged file out of the folder and retry."
    )


def test_a_failing_query_is_not_run_twice(tmp_path: Path) -> None:
    # Its first statement ran; running the query again would insert twice.
    store = created(tmp_path)
    store.sql("CREATE TEMP TABLE t (x INTEGER)")
    with pytest.raises(StoreError, match='SQL error: Binder Error: Referenced column "nope" not found'):
        store.sql("INSERT INTO t VALUES (1); SELECT nope FROM t")
    assert store.sql("SELECT count(*) FROM t").item() == 1


@pytest.mark.parametrize("statement", ["DROP VIEW runs", "DROP VIEW _events_raw", "DROP VIEW triggers",
                                       "DROP MACRO TABLE state_at"])
def test_a_query_that_dropped_one_of_the_views_does_not_break_the_next(statement: str, tmp_path: Path) -> None:
    store = created(tmp_path)
    store.append_many([E("r", 0), E("r", 1)])
    assert count(store) == 2
    store.sql(statement)
    assert store.sql("SELECT count(*) FROM runs").item() == 1
    assert store.sql("SELECT count(*) FROM state_at('r', now())").item() >= 0
    assert count(store) == 2 and seqs(store, "r") == [0, 1]


def test_a_failing_query_that_drops_a_view_is_retried_once_then_reports_its_own_error(tmp_path: Path) -> None:
    # Views are repaired once per query: a query that drops one every time it
    # runs must not be repaired and re-run until the retries run out.
    store = created(tmp_path)
    store.append_many([E("r", 0)])
    store.sql("CREATE TEMP TABLE t (x INTEGER)")
    with pytest.raises(StoreError, match='^SQL error: Binder Error: Referenced column "nope" not found'):
        store.sql("INSERT INTO t VALUES (1); DROP VIEW runs; SELECT nope FROM t")
    assert store.sql("SELECT count(*) FROM t").item() == 2
    assert store.sql("SELECT count(*) FROM runs").item() == 1


def test_a_dropped_internal_table_is_rebuilt(tmp_path: Path) -> None:
    store = created(tmp_path)
    store.append_many([E("r", 0), E("r", 1)])
    assert count(store) == 2
    store.sql("DROP TABLE _segment_rows")
    store.append(E("r", 2))  # reading it fails on the dropped table: the connection is set up again
    assert count(store) == 3 and seqs(store, "r") == [0, 1, 2]


def test_a_query_failing_in_an_open_transaction_reports_its_own_error(tmp_path: Path) -> None:
    # The failure aborts the transaction, so nothing can be looked up or repaired
    # afterwards; running the query again would only say "transaction is aborted".
    store = created(tmp_path)
    store.append_many([E("r", 0)])
    store.sql("BEGIN")
    with pytest.raises(StoreError, match=r"^SQL error: Conversion Error: Could not convert string 'x' to INT32"):
        store.sql("SELECT 'x'::INTEGER")
    with pytest.raises(StoreError, match=r"^SQL error: TransactionContext Error: Current transaction is aborted"):
        store.sql("SELECT 1")
    store.sql("ROLLBACK")
    assert count(store) == 1


def test_a_store_file_no_retry_can_read_fails_every_query_with_what_to_do(tmp_path: Path) -> None:
    # A folder where a trigger log should be: not damage DuckDB can be told to skip,
    # and setting the connection up afresh does not help either.
    store = created(tmp_path)
    store.append_many([E("r", 0)])
    (store.path / "triggers" / "nightly.jsonl").mkdir(parents=True)
    with pytest.raises(StoreError) as info:
        count(store)
    text = str(info.value)
    assert text.startswith(f"cannot read the event store at {store.path}: IO Error: No files found that match")
    assert text.endswith(". If a file in it is damaged, move it out of the folder and retry.")
    (store.path / "triggers" / "nightly.jsonl").rmdir()
    assert count(store) == 1


# --- files that vanish while being read ---------------------------------------------------


def vanish_after_listing(monkeypatch: pytest.MonkeyPatch, store: FolderStore, path: Path, times: int = 1) -> list[int]:
    """Remove ``path`` right after the next ``times`` listings of the folder (as a
    compaction or merge finishing at that instant would), putting it back in
    between; returns a counter of listings."""
    real = query_mod.QueryEngine._list
    data = path.read_bytes()
    calls: list[int] = []

    def listing(self: Any) -> Any:
        if not path.exists():
            path.write_bytes(data)
        out = real(self)
        calls.append(1)
        if len(calls) <= times:
            path.unlink()
        return out

    monkeypatch.setattr(query_mod.QueryEngine, "_list", listing)
    return calls


def test_a_segment_that_vanishes_after_listing_is_listed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = created(tmp_path)
    write_segment(store, "w-1-1-00000001.jsonl", E("r", 0).to_json_line())
    gone = write_segment(store, "w-1-2-00000002.jsonl", E("r", 1).to_json_line())
    calls = vanish_after_listing(monkeypatch, store, gone, times=2)
    assert seqs(store, "r") == [0, 1]
    assert len(calls) == 3  # two refreshes found it gone; the third read it


def test_an_events_file_that_vanishes_after_listing_is_listed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = created(tmp_path)
    write_segment(store, "w-1-1-00000001.jsonl", E("r", 0).to_json_line())
    write_segment(store, "w-1-2-00000002.jsonl", E("r", 1).to_json_line())
    assert store.compact() == 2
    first = sorted((store.path / "events").glob("*.parquet"))[0]
    fresh = FolderStore(store.path)
    calls = vanish_after_listing(monkeypatch, fresh, first, times=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreDamageWarning)  # gone is not damaged
        assert seqs(fresh, "r") == [0, 1]
    assert len(calls) >= 2 and fresh.problems() == []


def vanish_after_refresh(monkeypatch: pytest.MonkeyPatch, path: Path, times: int = 1) -> list[int]:
    """Remove ``path`` right after the next ``times`` refreshes of the views, before
    the query runs (a merge finishing right then), putting it back in between;
    returns a counter of refreshes."""
    data = path.read_bytes()
    real = query_mod.QueryEngine._refresh
    calls: list[int] = []

    def refresh(self: Any, conn: Any) -> None:
        if not path.exists():
            path.write_bytes(data)
        real(self, conn)
        calls.append(1)
        if len(calls) <= times:
            path.unlink()

    monkeypatch.setattr(query_mod.QueryEngine, "_refresh", refresh)
    return calls


def test_an_events_file_removed_after_the_refresh_is_listed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The query names the missing file; it runs again.
    store = created(tmp_path)
    write_segment(store, "w-1-1-00000001.jsonl", E("r", 0).to_json_line())
    assert store.compact() == 1
    [path] = (store.path / "events").glob("*.parquet")
    calls = vanish_after_refresh(monkeypatch, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreDamageWarning)
        assert count(store) == 1
    assert len(calls) == 2 and store.problems() == []


def test_a_query_whose_events_file_keeps_vanishing_gives_up_after_20_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = created(tmp_path)
    write_segment(store, "w-1-1-00000001.jsonl", E("r", 0).to_json_line())
    assert store.compact() == 1
    [path] = (store.path / "events").glob("*.parquet")
    calls = vanish_after_refresh(monkeypatch, path, times=10_000)
    with pytest.raises(StoreError) as info:
        count(store)
    assert str(info.value) == (
        f"the event store at {store.path} kept changing while being read (20 attempts); retry the query"
    )
    assert len(calls) == 20 and store.problems() == []


def test_a_folder_that_keeps_changing_gives_up_after_20_attempts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = created(tmp_path)
    gone = write_segment(store, "w-1-1-00000001.jsonl", E("r", 0).to_json_line())
    calls = vanish_after_listing(monkeypatch, store, gone, times=10_000)
    with pytest.raises(StoreError) as info:
        store.sql("SELECT count(*) FROM events")
    assert str(info.value) == (
        f"the event store at {store.path} kept changing while being read (20 attempts); retry the query"
    )
    assert len(calls) == 20


# --- damaged events files ----------------------------------------------------------------


def events_file(root: Path, run: str) -> Path:
    """One run written and compacted by its own 'process'; its events file."""
    store = FolderStore(root)
    store.append_many([E(run, 0), E(run, 1)])
    segment = store.segment_path
    assert segment is not None
    store.close()
    return root / "events" / f"{segment.stem}.parquet"


def damage_first_page(path: Path) -> None:
    # A page header overwritten: DuckDB's error names no file, so each listed
    # file is read through to find the damaged one.
    data = path.read_bytes()
    path.write_bytes(data[:4] + b"\xff" * 8 + data[12:])


def runs_read(store: FolderStore) -> list[str]:
    # event_id is the first column: its first page is the one damaged
    return [r for (r,) in store.sql("SELECT DISTINCT run_id FROM events WHERE event_id IS NOT NULL ORDER BY 1").rows()]


def test_a_damaged_events_file_found_later_is_found_among_files_known_to_be_sound(tmp_path: Path) -> None:
    root = tmp_path / "store"
    first = events_file(root, "a")
    bad = events_file(root, "c")
    damage_first_page(bad)
    store = FolderStore(root)
    with pytest.warns(StoreDamageWarning) as record:
        assert runs_read(store) == ["a"]
    [problem] = store.problems()
    assert problem["path"] == str(bad)
    assert problem["problem"].startswith("events file cannot be read (")
    assert problem["problem"].endswith("); its events are left out of every query")
    assert problem["fix"] == (
        "move it out of the store's events/ folder (`kernelflow gc` and store.compact() move it to "
        "quarantine/), then restore it from a backup if you have one"
    )
    assert [str(w.message) for w in record] == [f"{problem['problem']}: {bad}. {problem['fix']}"]
    # ``first`` is now known to be sound; a second damaged file, listed after it, is still found.
    later = events_file(root, "b")
    assert sorted([first.name, later.name])[0] == first.name
    damage_first_page(later)
    with pytest.warns(StoreDamageWarning, match=later.name):
        assert runs_read(store) == ["a"]
    assert [p["path"] for p in store.problems()] == sorted([str(bad), str(later)])


def test_only_the_damaged_file_an_error_names_is_left_out(tmp_path: Path) -> None:
    # a has no footer: binding the views to the first file's schema fails naming it, so a
    # alone is left out. b, damaged where this query does not read (the run filter skips
    # its row group), is not read through for it and stays in.
    root = tmp_path / "store"
    a = events_file(root, "a")
    b = events_file(root, "b")
    events_file(root, "c")
    a.write_bytes(a.read_bytes()[:100])
    damage_first_page(b)
    store = FolderStore(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert seqs(store, "c") == [0, 1]
    assert [p["path"] for p in store.problems()] == [str(a)]
    assert len([w for w in caught if issubclass(w.category, StoreDamageWarning)]) == 1
    with pytest.warns(StoreDamageWarning, match=b.name):
        assert runs_read(store) == ["c"]  # reading b's rows finds it
    assert [p["path"] for p in store.problems()] == sorted([str(a), str(b)])


def put_aside(tmp_path: Path) -> tuple[FolderStore, Path, bytes]:
    """A store whose events file of run b was found damaged by the handle
    returned, then moved to quarantine/ by its compact() and read since; b's file and its good content."""
    root = tmp_path / "store"
    events_file(root, "a")
    b = events_file(root, "b")
    good = b.read_bytes()
    b.write_bytes(good[:100])
    store = FolderStore(root)
    with pytest.warns(StoreDamageWarning, match=b.name):
        assert runs_read(store) == ["a"]
    store.compact()
    assert not b.exists() and (root / "quarantine" / b.name).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreDamageWarning)  # the same file, reported already
        assert runs_read(store) == ["a"]
    return store, b, good


def test_a_file_restored_after_it_was_put_aside_is_read_and_not_reported_again(tmp_path: Path) -> None:
    store, b, good = put_aside(tmp_path)
    moved = store.path / "quarantine" / b.name
    restored = b.with_name(".restore")
    restored.write_bytes(good)
    os.replace(restored, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreDamageWarning)  # its damaged copy was reported already
        assert runs_read(store) == ["a", "b"]
        assert runs_read(store) == ["a", "b"]
    assert [p["path"] for p in store.problems()] == [str(moved)]
    assert store._query.damaged_files() == []
    b.unlink()  # merged away, say: what was read fine is not called damaged once gone
    assert store._query.damaged_files() == []
    assert runs_read(store) == ["a"]


def test_a_file_another_handle_put_aside_is_reported_once(tmp_path: Path) -> None:
    root = tmp_path / "store"
    events_file(root, "a")
    b = events_file(root, "b")
    reader = FolderStore(root)
    assert runs_read(reader) == ["a", "b"]
    b.write_bytes(b.read_bytes()[:100])
    store, moved = FolderStore(root), root / "quarantine" / b.name
    with pytest.warns(StoreDamageWarning, match=b.name):
        assert runs_read(store) == ["a"]
    store.compact()
    assert moved.exists()
    with pytest.warns(StoreDamageWarning) as record:
        assert runs_read(reader) == ["a"]
    [problem] = reader.problems()
    assert [str(w.message) for w in record] == [f"{problem['problem']}: {moved}. {problem['fix']}"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreDamageWarning)
        assert runs_read(reader) == ["a"]
    assert reader.problems() == [problem] and problem["path"] == str(moved)


def test_a_put_aside_file_deleted_from_quarantine_is_no_longer_a_problem(tmp_path: Path) -> None:
    store, b, _ = put_aside(tmp_path)
    moved = store.path / "quarantine" / b.name
    [problem] = store.problems()
    assert problem["path"] == str(moved)
    moved.unlink()
    moved.with_name(moved.name + ".txt").unlink()
    assert store.problems() == []
    assert runs_read(store) == ["a"]


# --- damaged segment lines -----------------------------------------------------------------


def test_damaged_lines_appended_later_are_numbered_from_the_start_of_the_segment(tmp_path: Path) -> None:
    store = created(tmp_path)
    segment = write_segment(store, "w-1-1-00000001.jsonl", E("r", 0).to_json_line() + E("r", 1).to_json_line())
    assert count(store) == 2
    with open(segment, "ab") as f:
        f.write(b"garbage\n" + E("r", 2).to_json_line() + b"{\"also\": 1}\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert seqs(store, "r") == [0, 1, 2]
    [warning] = [w for w in caught if issubclass(w.category, StoreDamageWarning)]
    assert str(warning.message) == (
        f"event segment has damaged lines (lines 3, 5); they are skipped, the lines after them are read: {segment}. "
        "nothing is needed for the other events; when the segment is compacted it is moved to quarantine/ with a "
        "note, where the damaged lines can be inspected"
    )
    with open(segment, "ab") as f:  # more damage in the same segment: reported once, as first found
        f.write(b"more garbage\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert count(store) == 3
    assert not [w for w in caught if issubclass(w.category, StoreDamageWarning)]
    [problem] = store.problems()
    assert problem["problem"].startswith("event segment has damaged lines (lines 3, 5)")
