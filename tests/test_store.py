"""The folder store, with real files, real DuckDB and real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

import kernelflow.store.layout as layout_mod
from kernelflow import events as ev
from kernelflow.events import Event
from kernelflow.exceptions import NotAStoreError, StoreError, StoreVersionError
from kernelflow.reducer import fold
from kernelflow.store import FolderStore
from kernelflow.store.problems import StoreDamageWarning
from kernelflow.store.query import load_views_sql

BASE_TS = 1_795_000_000_000_000  # 2026-11-18, in UTC microseconds


def E(run: str, seq: int, type_: str, task: str | None = None, attempt: int | None = None, **payload: Any) -> Event:
    return Event(
        run_id=run,
        seq=seq,
        ts=BASE_TS + seq * 1_000 + sum(map(ord, run)) % 1000,
        type=type_,
        workflow="wf",
        workflow_version="v1",
        task_id=task,
        attempt=attempt,
        payload=payload,
        actor={"user": "ada", "host": "lab", "pid": 42, "via": "python"},
    )


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def segments(store: FolderStore) -> list[Path]:
    folder = store.layout.segments
    return sorted(p for p in folder.glob("*.jsonl")) if folder.exists() else []


# --- round trip and views ---------------------------------------------------------


def test_append_and_read_run_round_trip(tmp_store: FolderStore) -> None:
    appended = [
        E("r1", 0, ev.RUN_STARTED, inputs={"text": "héllo 😀 \"quoted\"\n", "n": [1, 2.5, None]}, tasks=["a"]),
        E("r1", 1, ev.TASK_STARTED, "a", 1, executor="thread"),
        E(
            "r1",
            2,
            ev.TASK_SUCCEEDED,
            "a",
            1,
            output={"nested": {"deep": [{"x": 0.1}, {"y": 1 / 3}, 1e-300, -0.0, 2**62]}, "empty": {}},
            output_ref=None,
            stored=False,
            duration_ms=1.25,
        ),
        Event("r1", 3, BASE_TS + 9, ev.RUN_SUCCEEDED, "wf", "v1"),  # no payload, no actor
    ]
    other = E("r2", 0, ev.RUN_STARTED, tasks=[])
    for event in appended[:2] + [other] + appended[2:]:
        tmp_store.append(event)

    assert tmp_store.read_run("r1") == appended
    assert tmp_store.read_run("r2") == [other]
    assert tmp_store.read_run("nope") == []

    tmp_store.close()  # compacts: the same events must come back from Parquet
    assert segments(tmp_store) == []
    assert tmp_store.read_run("r1") == appended


def test_views_have_documented_columns_and_types(tmp_store: FolderStore) -> None:
    expected = {
        "events": [
            ("event_id", "VARCHAR"), ("run_id", "VARCHAR"), ("seq", "BIGINT"), ("ts", "TIMESTAMP"),
            ("type", "VARCHAR"), ("workflow", "VARCHAR"), ("workflow_version", "VARCHAR"),
            ("task_id", "VARCHAR"), ("attempt", "BIGINT"), ("payload", "JSON"), ("actor", "JSON"),
        ],
        "runs": [
            ("run_id", "VARCHAR"), ("workflow", "VARCHAR"), ("workflow_version", "VARCHAR"),
            ("status", "VARCHAR"), ("started_at", "TIMESTAMP"), ("ended_at", "TIMESTAMP"),
            ("duration_s", "DOUBLE"), ("inputs", "JSON"), ("tasks_total", "BIGINT"),
            ("tasks_succeeded", "BIGINT"), ("tasks_failed", "BIGINT"), ("tasks_skipped", "BIGINT"),
            ("actor", "JSON"), ("notebook", "VARCHAR"), ("parameters", "JSON"), ("output_notebook", "VARCHAR"),
            ("batch_id", "VARCHAR"), ("trigger_id", "VARCHAR"), ("events", "BIGINT"), ("last_seq", "BIGINT"),
        ],
        "task_attempts": [
            ("run_id", "VARCHAR"), ("workflow", "VARCHAR"), ("workflow_version", "VARCHAR"),
            ("task_id", "VARCHAR"), ("attempt", "BIGINT"), ("status", "VARCHAR"), ("will_retry", "BOOLEAN"),
            ("started_at", "TIMESTAMP"), ("ended_at", "TIMESTAMP"), ("duration_ms", "DOUBLE"),
            ("error_type", "VARCHAR"), ("error_message", "VARCHAR"),
        ],
        "workflows": [
            ("name", "VARCHAR"), ("version", "VARCHAR"), ("registered_at", "TIMESTAMP"), ("tasks", "BIGINT"),
            ("definition", "JSON"), ("runs", "BIGINT"), ("last_run_at", "TIMESTAMP"),
        ],
    }
    for view, columns in expected.items():
        # Empty store first, then with data (segments, then Parquet): same shape.
        described = tmp_store.sql(f"DESCRIBE {view}")
        assert list(zip(described["column_name"], described["column_type"])) == columns, view
    tmp_store.append(E("r1", 0, ev.RUN_STARTED, tasks=["a"]))
    tmp_store.register_workflow({"name": "wf", "version": "v1", "tasks": [{"id": "a"}]})
    for view, columns in expected.items():
        described = tmp_store.sql(f"DESCRIBE {view}")
        assert list(zip(described["column_name"], described["column_type"])) == columns, view
    events = tmp_store.sql("SELECT * FROM events")
    assert events.schema["ts"] == pl.Datetime("us")
    first = tmp_store.read_run("r1")[0]
    assert events["ts"][0] == first.timestamp.replace(tzinfo=None)  # naive, in UTC
    assert events["ts"].dt.epoch("us")[0] == first.ts


def _status_scenarios() -> list[Event]:
    err = {"exc_type": "ValueError", "message": "boom", "traceback": "Traceback ..."}
    tmo = {"exc_type": "TimeoutError", "message": "ran past 0.5s", "traceback": ""}
    out = {"output_ref": None, "output_type": "int", "stored": False}
    ok = [
        E("ok", 0, ev.RUN_STARTED, inputs={"n": 1}, tasks=["a", "b"], max_parallel=2, executor="thread",
          notebook="etl.ipynb", batch_id=None),
        E("ok", 1, ev.TASK_SCHEDULED, "a", 1),
        E("ok", 2, ev.TASK_STARTED, "a", 1, executor="thread"),
        E("ok", 3, ev.TASK_SUCCEEDED, "a", 1, output=1, duration_ms=2.5, **out),
        E("ok", 4, ev.TASK_SCHEDULED, "b", 1),
        E("ok", 5, ev.TASK_STARTED, "b", 1, executor="thread"),
        E("ok", 6, ev.TASK_RETRYING, "b", 1, error=err, reason="error", delay_s=0.1, next_attempt=2),
        E("ok", 7, ev.TASK_SCHEDULED, "b", 2),
        E("ok", 8, ev.TASK_STARTED, "b", 2, executor="thread"),
        E("ok", 9, ev.TASK_SUCCEEDED, "b", 2, output=2, duration_ms=1.0, **out),
        E("ok", 10, ev.RUN_SUCCEEDED),
    ]
    retry_fail = [
        E("retry_fail", 0, ev.RUN_STARTED, inputs={}, tasks=["a"], notebook=None),
        E("retry_fail", 1, ev.TASK_SCHEDULED, "a", 1),
        E("retry_fail", 2, ev.TASK_STARTED, "a", 1),
        E("retry_fail", 3, ev.TASK_RETRYING, "a", 1, error=tmo, reason="timeout", delay_s=0.0, next_attempt=2),
        E("retry_fail", 4, ev.TASK_SCHEDULED, "a", 2),
        E("retry_fail", 5, ev.TASK_STARTED, "a", 2),
        E("retry_fail", 6, ev.TASK_FAILED, "a", 2, error={**err, "exc_type": "KeyError", "message": "'k'"}),
        E("retry_fail", 7, ev.RUN_FAILED, failed_tasks=["a"], error="task 'a' failed"),
    ]
    timeout = [
        E("timeout", 0, ev.RUN_STARTED, inputs={"x": "y"}, tasks=["a", "b"]),
        E("timeout", 1, ev.TASK_SCHEDULED, "a", 1),
        E("timeout", 2, ev.TASK_STARTED, "a", 1),
        E("timeout", 3, ev.TASK_TIMED_OUT, "a", 1, timeout_s=0.5, error=tmo),
        E("timeout", 4, ev.TASK_SKIPPED, "b", None, reason="upstream failed", upstream="a"),
        E("timeout", 5, ev.RUN_FAILED, failed_tasks=["a"], error="task 'a' timed out"),
    ]
    live = [
        E("live", 0, ev.RUN_STARTED, inputs={}, tasks=["a", "b"]),
        E("live", 1, ev.TASK_SCHEDULED, "a", 1),
        E("live", 2, ev.TASK_STARTED, "a", 1),
        E("live", 3, ev.TASK_SCHEDULED, "b", 1),
    ]
    return ok + retry_fail + timeout + live


@pytest.mark.parametrize("compacted", [False, True], ids=["segments", "parquet"])
def test_runs_and_task_attempts_statuses(tmp_store: FolderStore, compacted: bool) -> None:
    scenario = _status_scenarios()
    for event in scenario:
        tmp_store.append(event)
    if compacted:
        tmp_store.close()

    attempts = tmp_store.sql(
        "SELECT run_id, task_id, attempt, status, will_retry, started_at IS NOT NULL AS started, "
        "ended_at IS NOT NULL AS ended, duration_ms, error_type, error_message "
        "FROM task_attempts ORDER BY run_id, task_id, attempt"
    ).rows()
    assert attempts == [
        ("live", "a", 1, "running", False, True, False, None, None, None),
        ("live", "b", 1, "scheduled", False, False, False, None, None, None),
        ("ok", "a", 1, "succeeded", False, True, True, 2.5, None, None),
        ("ok", "b", 1, "failed", True, True, True, 1.0, "ValueError", "boom"),  # 1 ms between events
        ("ok", "b", 2, "succeeded", False, True, True, 1.0, None, None),
        ("retry_fail", "a", 1, "timed_out", True, True, True, 1.0, "TimeoutError", "ran past 0.5s"),
        ("retry_fail", "a", 2, "failed", False, True, True, 1.0, "KeyError", "'k'"),
        ("timeout", "a", 1, "timed_out", False, True, True, 1.0, "TimeoutError", "ran past 0.5s"),
    ]

    runs = {r["run_id"]: r for r in tmp_store.sql("SELECT * FROM runs").to_dicts()}
    expect = {  # status, total, succeeded, failed, skipped
        "ok": ("succeeded", 2, 2, 0, 0),
        "retry_fail": ("failed", 1, 0, 1, 0),
        "timeout": ("failed", 2, 0, 1, 1),
        "live": ("running", 2, 0, 0, 0),
    }
    for run_id, (status, total, succ, failed, skipped) in expect.items():
        row = runs[run_id]
        got = (row["status"], row["tasks_total"], row["tasks_succeeded"], row["tasks_failed"], row["tasks_skipped"])
        assert got == (status, total, succ, failed, skipped), run_id
        events = [e for e in scenario if e.run_id == run_id]
        assert row["events"] == len(events) and row["last_seq"] == len(events) - 1
        assert row["workflow"] == "wf" and row["workflow_version"] == "v1"
        assert json.loads(row["inputs"]) == events[0].payload["inputs"]
        assert json.loads(row["actor"])["user"] == "ada"
        if status == "running":
            assert row["ended_at"] is None and row["duration_s"] is None
        else:
            assert row["duration_s"] == pytest.approx((events[-1].ts - events[0].ts) / 1e6)
    assert runs["ok"]["notebook"] == "etl.ipynb" and runs["retry_fail"]["notebook"] is None


def test_views_agree_with_the_reducer(tmp_store: FolderStore) -> None:
    for event in _status_scenarios():
        tmp_store.append(event)
    for row in tmp_store.sql("SELECT * FROM runs").to_dicts():
        state = fold(tmp_store.read_run(row["run_id"]))
        counts = state.counts()
        assert row["status"] == state.status
        assert row["tasks_succeeded"] == counts["succeeded"]
        assert row["tasks_failed"] == counts["failed"] + counts["timed_out"]
        assert row["tasks_skipped"] == counts["skipped"]
        assert row["last_seq"] == state.last_seq
        assert pl.Series([row["started_at"]]).dt.epoch("us")[0] == state.started_at
        if state.done:
            assert pl.Series([row["ended_at"]]).dt.epoch("us")[0] == state.ended_at
        for task in state.tasks.values():
            if task.attempt:
                latest = tmp_store.sql(
                    "SELECT status FROM task_attempts WHERE run_id = ? AND task_id = ? AND attempt = ?",
                    [row["run_id"], task.task_id, task.attempt],
                ).item()
                # The reducer's task status is its latest attempt's, except that
                # a retried attempt shows as the task 'retrying' until the next starts.
                if task.status not in ("retrying", "scheduled"):
                    assert latest == task.status, (row["run_id"], task.task_id)


def test_sessions_are_in_utc(tmp_store: FolderStore) -> None:
    # Stored timestamps are naive UTC: `now()`-based filters must be UTC too.
    assert tmp_store.sql("SELECT current_setting('TimeZone')").item() == "UTC"


def test_views_sql_names_only_known_event_types() -> None:
    literals = set(re.findall(r"'([A-Z][A-Za-z]+)'", load_views_sql()))
    assert literals and literals <= set(ev.EVENT_TYPES)


def test_sql_params_and_errors(tmp_store: FolderStore) -> None:
    for event in _status_scenarios():
        tmp_store.append(event)
    assert tmp_store.sql("SELECT count(*) AS n FROM events WHERE run_id = ?", ["ok"]).item() == 11
    assert tmp_store.sql("SELECT count(*) AS n FROM events WHERE run_id = $r", {"r": "live"}).item() == 4
    with pytest.raises(StoreError) as info:
        tmp_store.sql("SELECT nope FROM runs")
    message = str(info.value)
    assert message.startswith("SQL error:") and "nope" in message
    assert "events, runs, task_attempts, workflows" in message
    assert info.value.__cause__ is not None
    # A thread keeps its connection: user tables persist, and dropping one of
    # the store's views is repaired on the next failing query.
    tmp_store.sql("CREATE TEMP TABLE mine AS SELECT 1 AS x")
    assert tmp_store.sql("SELECT x FROM mine").item() == 1
    tmp_store.sql("DROP VIEW runs")
    assert tmp_store.sql("SELECT count(*) FROM runs").item() == 4
    assert tmp_store.sql("SELECT x FROM mine").item() == 1
    tmp_store.sql("DROP TABLE _segment_rows")  # even the internals come back
    tmp_store.append(E("late", 0, ev.RUN_STARTED))
    assert tmp_store.sql("SELECT count(*) FROM runs").item() == 5


def test_queries_from_threads(tmp_store: FolderStore) -> None:
    import threading

    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for seq in range(200):
                tmp_store.append(E(f"t{n}", seq, ev.RUN_STARTED if seq == 0 else ev.TASK_STARTED, None if seq == 0 else "a", 1))
                if seq % 50 == 0:
                    tmp_store.sql("SELECT count(*) FROM runs")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    got = tmp_store.sql("SELECT run_id, count(*) AS n, max(seq) AS m FROM events GROUP BY run_id ORDER BY run_id").rows()
    assert got == [(f"t{n}", 200, 199) for n in range(4)]


# --- laziness and opening errors -------------------------------------------------------


def test_opening_and_reading_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "store"
    store = FolderStore(path)
    assert store.sql("SELECT count(*) FROM events").item() == 0
    assert store.sql("SELECT * FROM runs").is_empty()
    assert store.sql("SELECT * FROM workflows").is_empty()
    assert store.read_run("r") == []
    assert store.compact() == 0
    with pytest.raises(TypeError, match="threading.Lock|_thread.lock"):
        import threading

        store.save_artifact("r", "t", 1, threading.Lock())
    store.close()
    assert not (tmp_path / "missing").exists()
    assert store.exists is False

    store.append(E("r", 0, ev.RUN_STARTED))
    marker = json.loads((path / "store.json").read_text())
    assert marker["kind"] == "kernelflow-store" and marker["schema_version"] == layout_mod.SCHEMA_VERSION
    assert marker["created_at"].endswith("Z") and marker["migrations"] == []
    store.close()


def test_empty_existing_folder_is_fine(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    store = FolderStore(tmp_path / "empty")
    store.append(E("r", 0, ev.RUN_STARTED))
    assert (tmp_path / "empty" / "store.json").exists()
    store.close()


def test_not_a_store_folder(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    with pytest.raises(NotAStoreError) as info:
        FolderStore(folder)
    message = str(info.value)
    assert str(folder) in message and "no store.json" in message
    assert "KERNELFLOW_HOME" in message and "new or empty folder" in message
    assert files(folder) == ["thesis.tex"]


def test_a_file_at_the_path(tmp_path: Path) -> None:
    path = tmp_path / "store"
    path.write_text("x")
    with pytest.raises(NotAStoreError) as info:
        FolderStore(path)
    assert str(path) in str(info.value) and "is a file" in str(info.value)
    assert "KERNELFLOW_HOME" in str(info.value)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "is not valid JSON"),
        ('{"kind": "something-else", "schema_version": 1}', "kind 'something-else'"),
        ('["a list"]', "does not describe a kernelflow store"),
        ('{"kind": "kernelflow-store", "schema_version": "one"}', "no valid schema_version"),
    ],
)
def test_damaged_or_foreign_marker(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "store").mkdir()
    marker = tmp_path / "store" / "store.json"
    marker.write_text(content)
    with pytest.raises(NotAStoreError) as info:
        FolderStore(tmp_path / "store")
    message = str(info.value)
    assert str(marker) in message and expected in message
    assert "KERNELFLOW_HOME" in message


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    marker = tmp_path / "store" / "store.json"
    marker.write_text(json.dumps({"kind": "kernelflow-store", "schema_version": 7, "written_by": "9.0.0"}))
    with pytest.raises(StoreVersionError) as info:
        FolderStore(tmp_path / "store")
    message = str(info.value)
    assert str(marker) in message
    assert "schema version 7" in message and "kernelflow 9.0.0" in message
    assert f"supports schema version {layout_mod.SCHEMA_VERSION}" in message
    assert "pip install -U kernelflow" in message and "another folder" in message


def test_older_schema_is_migrated_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FolderStore(tmp_path / "store")
    store.append(E("r", 0, ev.RUN_STARTED))
    store.close()
    calls: list[Path] = []

    def add_notes_folder(root: Path) -> None:
        calls.append(root)
        (root / "notes").mkdir(exist_ok=True)

    # Pretend this code is one schema ahead of the store on disk.
    now = layout_mod.SCHEMA_VERSION
    monkeypatch.setattr(layout_mod, "SCHEMA_VERSION", now + 1)
    monkeypatch.setattr(layout_mod, "MIGRATIONS", [*layout_mod.MIGRATIONS, (now + 1, "add_notes_folder", add_notes_folder)])
    migrated = FolderStore(tmp_path / "store")
    assert calls == [tmp_path / "store"] and (tmp_path / "store" / "notes").is_dir()
    marker = json.loads((tmp_path / "store" / "store.json").read_text())
    assert marker["schema_version"] == now + 1 and migrated.schema_version == now + 1
    assert [(m["to_version"], m["name"]) for m in marker["migrations"]] == [(now + 1, "add_notes_folder")]
    assert migrated.read_run("r")[0].seq == 0
    FolderStore(tmp_path / "store")  # already there: nothing runs again
    assert len(calls) == 1


def test_failed_migration_leaves_the_store_at_its_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FolderStore(tmp_path / "store").register_workflow({"name": "w", "version": "1", "tasks": []})

    def broken(root: Path) -> None:
        raise OSError("disk on fire")

    now = layout_mod.SCHEMA_VERSION
    monkeypatch.setattr(layout_mod, "SCHEMA_VERSION", now + 1)
    monkeypatch.setattr(layout_mod, "MIGRATIONS", [*layout_mod.MIGRATIONS, (now + 1, "broken", broken)])
    with pytest.raises(StoreError, match=rf"migration 'broken'.*disk on fire.*left at schema version {now}"):
        FolderStore(tmp_path / "store")
    assert json.loads((tmp_path / "store" / "store.json").read_text())["schema_version"] == now


# --- damaged segments, compaction ------------------------------------------------------


def test_torn_and_garbage_lines_are_ignored(tmp_store: FolderStore) -> None:
    good = [E("r", i, ev.RUN_STARTED if i == 0 else ev.TASK_STARTED, None if i == 0 else "a", 1) for i in range(4)]
    tmp_store.append(good[0])
    tmp_store.close()  # creates the store; its own segment is compacted
    # A segment as a killed writer leaves it: garbage in the middle, a torn last line.
    seg = tmp_store.layout.segments / "otherhost-999-1-deadbeef.jsonl"
    seg.write_bytes(
        good[1].to_json_line()
        + b"this is not json\n"
        + b'{"half": \n'
        + good[2].to_json_line()
        + good[3].to_json_line()
        + E("r", 4, ev.TASK_SUCCEEDED, "a", 1).to_json_line()[:40]
    )
    with pytest.warns(StoreDamageWarning, match=r"damaged lines \(lines 2, 3\).*otherhost-999-1-deadbeef"):
        assert tmp_store.read_run("r") == good
    assert tmp_store.sql("SELECT count(*) FROM events").item() == 4
    assert tmp_store.compact() == 1
    assert not seg.exists() and (tmp_store.layout.events / f"{seg.stem}.parquet").exists()
    assert (tmp_store.path / "quarantine" / seg.name).exists()  # damaged: put aside, not deleted
    assert tmp_store.read_run("r") == good


def test_compaction_keeps_events_and_spares_live_segments(tmp_path: Path) -> None:
    writer = FolderStore(tmp_path / "store")
    events = [E(f"r{i % 3}", i // 3, ev.RUN_STARTED if i < 3 else ev.TASK_STARTED, None if i < 3 else "t", 1) for i in range(30)]
    for event in events:
        writer.append(event)
    live = writer.segment_path
    assert live is not None and live.exists()

    other = FolderStore(tmp_path / "store")  # another handle: separate file description, so flock conflicts
    before = other.sql("SELECT * FROM events ORDER BY run_id, seq")
    assert other.compact() == 0 and live.exists()  # the writer still holds it
    assert other.wait_for_compaction(30) and live.exists()  # so does the sweep at open

    writer.close()  # closes and compacts its own segment
    assert not live.exists()
    assert (tmp_path / "store" / "events" / f"{live.stem}.parquet").exists()
    after = other.sql("SELECT * FROM events ORDER BY run_id, seq")
    assert after.equals(before)
    for run in ("r0", "r1", "r2"):
        assert other.read_run(run) == [e for e in events if e.run_id == run]
    other.close()


def test_segment_whose_parquet_exists_is_counted_once_and_removed(tmp_store: FolderStore) -> None:
    tmp_store.append(E("r", 0, ev.RUN_STARTED))
    tmp_store.append(E("r", 1, ev.RUN_SUCCEEDED))
    seg = tmp_store.segment_path
    assert seg is not None
    copy = seg.read_bytes()
    tmp_store.close()
    # As if a compactor died between renaming the Parquet file and unlinking the segment.
    seg.write_bytes(copy)
    assert tmp_store.sql("SELECT count(*) FROM events").item() == 2
    assert tmp_store.compact() == 1 and not seg.exists()
    assert tmp_store.sql("SELECT count(*) FROM events").item() == 2


def test_rotation_compacts_in_the_background(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "store", segment_max_events=10)
    events = [E("r", i, ev.RUN_STARTED if i == 0 else ev.TASK_STARTED, None if i == 0 else "t", 1) for i in range(35)]
    for event in events:
        store.append(event)
    assert store.wait_for_compaction(30)
    assert len(list((tmp_path / "store" / "events").glob("*.parquet"))) == 3
    assert len(segments(store)) == 1  # the open one, with 5 events
    assert store.read_run("r") == events
    store.close()
    assert segments(store) == [] and store.read_run("r") == events


def test_fork_child_writes_its_own_segment(tmp_path: Path) -> None:
    # Forked from a fresh process: forking this test process, with the threads
    # other tests leave (widget pollers, alert workers, DuckDB's own), is unsafe
    # in itself (POSIX allows a child of a threaded process little), and that
    # is not what is tested here.
    script = textwrap.dedent(f"""
        import os, sys
        from kernelflow import events as ev
        from kernelflow.events import Event
        from kernelflow.store import FolderStore

        def E(run, seq, type_):
            return Event(run, seq, 1_700_000_000_000_000 + seq, type_, "wf", "v1")

        store = FolderStore({str(tmp_path / "store")!r})
        store.append(E("parent", 0, ev.RUN_STARTED))
        parent_segment = store.segment_path
        pid = os.fork()
        if pid == 0:  # child: must not write into the parent's file
            code = 0
            try:
                store.append(E("child", 0, ev.RUN_STARTED))
                if store.segment_path == parent_segment:
                    code = 3
            except BaseException:
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, os.waitstatus_to_exitcode(status)
        store.append(E("parent", 1, ev.RUN_SUCCEEDED))
        assert store.segment_path == parent_segment  # the parent's lock survived the child
        assert [e.seq for e in store.read_run("parent")] == [0, 1]
        assert [e.seq for e in store.read_run("child")] == [0]
        assert len(list(store.layout.segments.glob("*.jsonl"))) == 2
        assert store.compact() == 1  # the child's (it died without closing); ours is live
        store.close()
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


# --- durability -------------------------------------------------------------------------


def test_fsync_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELFLOW_FSYNC", "1")
    store = FolderStore(tmp_path / "store")
    assert store.fsync is True
    events = [E("r", i, ev.RUN_STARTED if i == 0 else ev.TASK_STARTED, None if i == 0 else "t", 1) for i in range(20)]
    for event in events:
        store.append(event)
    assert store.read_run("r") == events
    store.close()
    assert store.read_run("r") == events
    monkeypatch.delenv("KERNELFLOW_FSYNC")
    assert FolderStore(tmp_path / "store").fsync is False
    assert FolderStore(tmp_path / "store", fsync=True).fsync is True


def test_oversized_event_is_refused_before_writing(tmp_store: FolderStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import kernelflow.store.segments as segments_mod

    monkeypatch.setattr(segments_mod, "MAX_EVENT_BYTES", 1000)
    with pytest.raises(StoreError, match="larger than the store accepts"):
        tmp_store.append(E("r", 0, ev.RUN_STARTED, blob="x" * 2000))
    assert not tmp_store.path.exists()


def _run_python(code: str, *args: str, **kw: Any) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "KERNELFLOW_FSYNC"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], text=True, env=env, **kw
    )


def test_write_error_reports_and_loses_nothing(tmp_path: Path) -> None:
    # A real short write: the file-size limit makes write() stop mid-line, as a
    # full disk does. The error names the file; the next event goes to a fresh
    # segment, so the torn line never swallows it.
    code = """
    import resource, signal, sys, time
    from kernelflow.store import FolderStore
    from kernelflow.events import Event
    from kernelflow.exceptions import StoreError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    store = FolderStore(sys.argv[1])
    def event(i):
        return Event("r", i, 1_795_000_000_000_000 + i, "RunStarted" if i == 0 else "TaskStarted",
                     "wf", "v1", None if i == 0 else "t", 1, {"pad": "x" * 100})
    store.append(event(0))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4000, hard))
    seq = 1
    try:
        while seq < 1000:
            store.append(event(seq))
            seq += 1
    except StoreError as exc:
        print("ERROR", exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    store.append(event(seq))  # the same event again: recorded this time
    print("LAST", seq)
    store.close()
    """
    proc = _run_python(code, str(tmp_path / "store"), stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    error = next(line for line in out.splitlines() if line.startswith("ERROR"))
    last = int(next(line for line in out.splitlines() if line.startswith("LAST")).split()[1])
    assert 1 < last < 1000
    assert "could not record an event in" in error and str(tmp_path / "store" / "segments") in error
    assert "Free disk space" in error
    store = FolderStore(tmp_path / "store")
    assert [e.seq for e in store.read_run("r")] == list(range(last + 1))
    assert segments(store) == []


WRITER = """
import os, sys, time
from kernelflow.store import FolderStore
from kernelflow.events import Event
path, wid, n, runs, pause, ready = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
store = FolderStore(path, segment_max_events=700)
deadline = time.monotonic() + 60
while not os.path.exists(ready) and time.monotonic() < deadline:  # start once the reader reads
    time.sleep(0.005)
seqs = {}
for i in range(n):
    run = f"w{wid}-r{i % runs}"
    seq = seqs.get(run, 0)
    seqs[run] = seq + 1
    first = seq == 0
    store.append(Event(run, seq, time.time_ns() // 1000, "RunStarted" if first else "TaskStarted", "wf", "v1",
                       None if first else f"t{seq}", None if first else 1, {"i": i, "w": wid}))
    if i % 250 == 249:
        time.sleep(pause)
"""

READER = """
import os, sys, time, traceback
from kernelflow.store import FolderStore
path, stop, out, ready = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
store = FolderStore(path)
counts, errors = [], []
store.sql("SELECT count(*) FROM runs")
open(ready, "w").close()
while not os.path.exists(stop):
    try:
        n, distinct = store.sql("SELECT count(*), count(DISTINCT event_id) FROM events").row(0)
        if n != distinct:
            errors.append(f"duplicates: {n} rows, {distinct} distinct")
        store.sql("SELECT status, count(*) FROM runs GROUP BY status")
        counts.append(n)
    except Exception:
        errors.append(traceback.format_exc())
with open(out + ".counts", "w") as f:
    f.write("\\n".join(map(str, counts)))
with open(out + ".errors", "w") as f:
    f.write("\\n".join(errors))
"""


def test_many_writers_one_reader(tmp_path: Path) -> None:
    store_path, stop, out, ready = tmp_path / "store", tmp_path / "stop", tmp_path / "reader", tmp_path / "ready"
    n_writers, per_writer, runs_per_writer = 4, 5000, 50
    reader = _run_python(READER, str(store_path), str(stop), str(out), str(ready))
    writers = [
        # Different pauses: the writers finish (and compact at exit) at different
        # times while the reader keeps querying.
        _run_python(
            WRITER, str(store_path), str(w), str(per_writer), str(runs_per_writer), str(0.01 + 0.03 * w), str(ready)
        )
        for w in range(n_writers)
    ]
    try:
        for w in writers:
            assert w.wait(timeout=120) == 0
        time.sleep(0.3)  # let the reader see the final state too
    finally:
        stop.write_text("")
        assert reader.wait(timeout=60) == 0
    errors = Path(f"{out}.errors").read_text()
    assert errors == ""
    counts = [int(c) for c in Path(f"{out}.counts").read_text().split()]
    assert len(counts) > 5, counts
    assert counts == sorted(counts), "a later query saw fewer events than an earlier one"
    assert counts[-1] == n_writers * per_writer
    assert any(0 < c < n_writers * per_writer for c in counts), "the reader never overlapped the writers"

    store = FolderStore(store_path)
    assert segments(store) == []  # every writer compacted its own segments at exit
    total, distinct = store.sql("SELECT count(*), count(DISTINCT event_id) FROM events").row(0)
    assert total == distinct == n_writers * per_writer
    per_run = store.sql(
        "SELECT count(*) AS n, min(seq) AS lo, max(seq) AS hi, count(DISTINCT seq) AS d FROM events GROUP BY run_id"
    )
    expected = per_writer // runs_per_writer
    assert per_run.height == n_writers * runs_per_writer
    assert per_run.filter(
        (pl.col("n") != expected) | (pl.col("lo") != 0) | (pl.col("hi") != expected - 1) | (pl.col("d") != expected)
    ).is_empty()
    assert store.sql("SELECT count(*) FROM runs WHERE status = 'running'").item() == n_writers * runs_per_writer


def test_kill_9_loses_nothing_reported(tmp_path: Path) -> None:
    code = """
    import sys, time
    from kernelflow.store import FolderStore
    from kernelflow.events import Event
    store = FolderStore(sys.argv[1], segment_max_events=300)
    i = 0
    while True:
        store.append(Event("victim", i, time.time_ns() // 1000, "RunStarted" if i == 0 else "TaskStarted",
                           "wf", "v1", None if i == 0 else f"t{i}", None if i == 0 else 1, {"i": i}))
        print(i, flush=True)
        i += 1
    """
    proc = _run_python(code, str(tmp_path / "store"), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    reported: list[int] = []
    for line in proc.stdout:
        reported.append(int(line))
        if len(reported) >= 1500:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    reported += [int(x) for x in proc.stdout.read().split() if x.isdigit()]
    proc.stdout.close()

    store = FolderStore(tmp_path / "store")  # opening compacts what the dead writer left
    assert store.wait_for_compaction(30)
    assert segments(store) == []
    seqs = [e.seq for e in store.read_run("victim")]
    assert set(reported) <= set(seqs)
    assert seqs == list(range(len(seqs)))  # gapless; at most the one in flight beyond the last print
    assert len(seqs) - 1 <= max(reported) + 1


# --- registry, artifacts, plugin ----------------------------------------------------------


def test_register_workflow_once(tmp_store: FolderStore) -> None:
    definition = {"name": "etl", "version": "abc123", "tasks": [{"id": "a"}, {"id": "b"}], "inputs": {"x": "int"}}
    tmp_store.register_workflow(definition)
    path = tmp_store.path / "workflows" / "etl" / "abc123.json"
    first = json.loads(path.read_text())
    assert first["tasks"] == definition["tasks"] and first["registered_at"].endswith("Z")
    tmp_store.register_workflow(definition)
    FolderStore(tmp_store.path).register_workflow(definition)  # another process: file exists, kept
    assert json.loads(path.read_text()) == first
    tmp_store.append(E("r", 0, ev.RUN_STARTED, tasks=["a", "b"]))
    wf = tmp_store.sql("SELECT * FROM workflows").to_dicts()
    assert len(wf) == 1
    assert (wf[0]["name"], wf[0]["version"], wf[0]["tasks"], wf[0]["runs"]) == ("etl", "abc123", 2, 0)
    assert json.loads(wf[0]["definition"])["inputs"] == {"x": "int"}
    with pytest.raises(StoreError, match="needs 'version'"):
        tmp_store.register_workflow({"name": "x", "tasks": []})


def test_artifacts(tmp_store: FolderStore) -> None:
    frame = pl.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    table = pa.table({"n": [1.5, None]})
    ref = tmp_store.save_artifact("run/1", "clean", 2, frame)
    assert ref["format"] == "polars" and ref["ref"] == "artifacts/run%2F1/clean.2.parquet" and ref["bytes"] > 0
    assert tmp_store.load_artifact(ref).equals(frame)
    ref = tmp_store.save_artifact("r", "arrow", 1, table)
    assert ref["format"] == "arrow" and tmp_store.load_artifact(ref).equals(table)
    value = {"nested": [1, {2, 3}], "text": "ü"}
    ref = tmp_store.save_artifact("r", "obj", 1, value)
    assert ref["format"] == "pickle" and tmp_store.load_artifact(ref) == value
    assert tmp_store.load_artifact(json.loads(json.dumps(ref))) == value  # refs survive JSON
    with pytest.raises(TypeError, match="generator"):
        tmp_store.save_artifact("r", "gen", 1, (i for i in range(3)))
    assert not (tmp_store.path / "artifacts" / "r" / "gen.1.pkl").exists()
    with pytest.raises(StoreError, match="outside"):
        tmp_store.load_artifact({"ref": "../store.json", "format": "pickle"})
    with pytest.raises(StoreError, match="does not exist"):
        tmp_store.load_artifact({"ref": "artifacts/r/missing.1.pkl", "format": "pickle"})
    assert [p.name for p in (tmp_store.path / "artifacts" / "r").iterdir() if p.name.startswith(".")] == []


def test_plugin_opens_a_folder_store(tmp_path: Path) -> None:
    from kernelflow.plugin_host import get_plugin_manager

    store = get_plugin_manager().hook.kernelflow_open_store(location=str(tmp_path / "s"))
    assert isinstance(store, FolderStore) and store.location == str(tmp_path / "s")
    assert not (tmp_path / "s").exists()

    from kernelflow.store_api import EventStore

    assert isinstance(store, EventStore)
