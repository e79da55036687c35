"""Damaged store files: skipped, reported once with their path, never deleted."""

from __future__ import annotations

import fcntl
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest

from kernelflow import events as ev
from kernelflow.events import Event
from kernelflow.store import FolderStore
from kernelflow.store.problems import StoreDamageWarning

BASE_TS = 1_795_000_000_000_000


def E(run: str, seq: int, **payload: Any) -> Event:
    first = seq == 0
    return Event(run, seq, BASE_TS + seq, ev.RUN_STARTED if first else ev.TASK_STARTED, "wf", "v1",
                 None if first else f"t{seq}", None if first else 1, payload)


def one_file_per_run(root: Path, runs: dict[str, int], pad: int = 0) -> dict[str, Path]:
    """Each run written and compacted by its own 'process': run -> its events file."""
    out = {}
    for run, n in runs.items():
        store = FolderStore(root)
        store.append_many(E(run, s, pad="x" * pad, i=s) for s in range(n))
        segment = store.segment_path
        assert segment is not None
        store.close()
        out[run] = root / "events" / f"{segment.stem}.parquet"
        assert out[run].exists()
    return out


def held(segment: Path) -> int:
    """Lock a segment as its live writer would: compaction leaves it alone."""
    fd = os.open(segment, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def damage_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, StoreDamageWarning)]


def read_all(store: FolderStore) -> list[str]:
    """What a user would do: a few queries."""
    store.sql("SELECT * FROM runs")
    store.sql("SELECT count(*) FROM events")
    return [r for (r,) in store.sql("SELECT DISTINCT run_id FROM events ORDER BY 1").rows()]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "middle"])
def test_a_damaged_events_file_is_skipped_and_reported_once(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "store"
    files = one_file_per_run(root, {"a": 5, "b": 3000, "c": 7}, pad=60)
    bad = files["b"]
    data = bad.read_bytes()
    if damage == "truncated":  # a copy cut short, a full disk
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        bad.write_bytes(os.urandom(5000))
    elif damage == "empty":
        bad.write_bytes(b"")
    else:  # footer intact, a data page overwritten: only reading the rows finds it
        middle = len(data) // 3
        bad.write_bytes(data[:middle] + bytes(range(256)) * 8 + data[middle + 2048 :])

    damaged = bad.read_bytes()
    store = FolderStore(root)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        if damage == "middle":
            # The footer is fine, so only a query touching b's rows finds out.
            assert store.read_run("a") == [E("a", s, pad="x" * 60, i=s) for s in range(5)]
            assert store.read_run("b") == []
        assert read_all(store) == ["a", "c"]
        assert store.read_run("c") == [E("c", s, pad="x" * 60, i=s) for s in range(7)]
        assert store.read_run("b") == []
        read_all(store)
    [message] = damage_warnings(record)  # once, however many queries
    assert str(bad) in message and "events file cannot be read" in message
    assert "move it out of the store's events/ folder" in message
    [problem] = store.problems()
    assert problem["path"] == str(bad) and "cannot be read" in problem["problem"]

    # Maintenance puts it aside, with a note, and nothing is lost.
    store.compact()
    assert not bad.exists()
    moved = root / "quarantine" / bad.name
    assert moved.read_bytes() == damaged
    note = (root / "quarantine" / f"{bad.name}.txt").read_text()
    assert "events file cannot be read" in note and str(bad) in note and "what to do:" in note
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert read_all(store) == ["a", "c"]
    assert damage_warnings(record) == []  # the same file: not reported again
    [problem] = store.problems()
    assert problem["path"] == str(moved) and "restore the file from a backup" in problem["fix"]

    # A new handle (another process) reports the quarantined file once.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        other = FolderStore(root)
        assert read_all(other) == ["a", "c"]
        read_all(other)
    [message] = damage_warnings(record)
    assert str(moved) in message
    store.close()
    other.close()


def test_a_restored_file_is_read_again(tmp_path: Path) -> None:
    root = tmp_path / "store"
    files = one_file_per_run(root, {"a": 3, "b": 4})
    backup = files["b"].read_bytes()
    files["b"].write_bytes(backup[:100])
    store = FolderStore(root)
    with pytest.warns(StoreDamageWarning, match="cannot be read"):
        assert read_all(store) == ["a"]
    tmp = files["b"].with_name(".restore")
    tmp.write_bytes(backup)
    os.replace(tmp, files["b"])  # put back from a backup, same name
    assert read_all(store) == ["a", "b"]
    assert store.problems() == []
    store.close()


def test_a_segment_with_damaged_lines_in_the_middle(tmp_path: Path) -> None:
    root = tmp_path / "store"
    one_file_per_run(root, {"other": 4})
    good = [E("r", i) for i in range(6)]
    segment = root / "segments" / "deadhost-999-1-deadbeef.jsonl"  # left by a writer that died
    segment.write_bytes(
        good[0].to_json_line()
        + good[1].to_json_line()
        + b"\x00\x17\xff garbage from a bad disk block \xfe\n"  # line 3
        + good[2].to_json_line()
        + b'{"event_id": "r:99", "note": "not an event"}\n'  # line 5: JSON, but no run_id/seq/type
        + good[3].to_json_line()
        + good[4].to_json_line()
        + good[5].to_json_line()[:30]  # torn last line: what a kill leaves, not damage
    )
    writer = held(segment)  # its writer is alive for the first part
    store = FolderStore(root)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert store.read_run("r") == good[:5]  # the lines after the damage are read
        assert [e.seq for e in store.read_run("other")] == [0, 1, 2, 3]
        assert store.sql("SELECT count(*) FROM events").item() == 9
    [message] = damage_warnings(record)
    assert str(segment) in message and "lines 3, 5" in message and "the lines after them are read" in message
    assert [p["path"] for p in store.problems()] == [str(segment)]

    # Appending the missing event later (the writer is gone; a hand repair) works too.
    with segment.open("ab") as f:
        f.write(b"\n" + good[5].to_json_line())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert store.read_run("r") == good  # the torn fragment is now a damaged line: still once
    assert damage_warnings(record) == []

    # Compaction keeps the readable events and puts the segment aside, not away.
    original = segment.read_bytes()
    assert store.compact() == 0  # not while its writer holds it
    os.close(writer)
    assert store.compact() == 1
    assert not segment.exists()
    moved = root / "quarantine" / segment.name
    assert moved.read_bytes() == original
    note = (root / "quarantine" / f"{segment.name}.txt").read_text()
    assert "damaged lines (lines 3, 5, 8)" in note and str(segment) in note
    assert (root / "events" / f"{segment.stem}.parquet").exists()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert store.read_run("r") == good
    assert damage_warnings(record) == []  # same file, reported already
    assert [p["path"] for p in store.problems()] == [str(moved)]
    store.close()


def test_an_all_garbage_segment_is_never_deleted(tmp_path: Path) -> None:
    root = tmp_path / "store"
    one_file_per_run(root, {"ok": 2})
    segment = root / "segments" / "deadhost-1-1-00000000.jsonl"
    junk = b"".join(os.urandom(50).replace(b"\n", b" ") + b"\n" for _ in range(20))
    segment.write_bytes(junk)
    writer = held(segment)
    store = FolderStore(root)
    with pytest.warns(StoreDamageWarning, match=r"damaged lines \(lines 1, 2, 3, .*, 20\)"):
        assert store.sql("SELECT count(*) FROM events").item() == 2
    os.close(writer)
    store.compact()
    assert not segment.exists() and (root / "quarantine" / segment.name).read_bytes() == junk
    assert not (root / "events" / f"{segment.stem}.parquet").exists()  # nothing readable: no file
    store.close()


def test_a_torn_last_line_is_not_damage(tmp_path: Path) -> None:
    root = tmp_path / "store"
    one_file_per_run(root, {"ok": 2})
    segment = root / "segments" / "deadhost-2-1-00000000.jsonl"
    segment.write_bytes(E("r", 0).to_json_line() + E("r", 1).to_json_line()[:25])
    store = FolderStore(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreDamageWarning)
        assert store.read_run("r") == [E("r", 0)]
        store.compact()
        assert store.read_run("r") == [E("r", 0)]
    assert not segment.exists() and not (root / "quarantine").exists()
    assert store.problems() == []
    store.close()


def test_damaged_files_do_not_stop_a_writer(tmp_path: Path) -> None:
    root = tmp_path / "store"
    files = one_file_per_run(root, {"a": 3})
    shutil.copy(files["a"], root / "events" / "copy-of-a.parquet")
    (root / "events" / "copy-of-a.parquet").write_bytes(b"PAR1 not really")
    store = FolderStore(root)
    with pytest.warns(StoreDamageWarning):
        store.append(E("new", 0))
        assert read_all(store) == ["a", "new"]
    store.close()


# --- found by fuzzing (tests/test_fuzz.py) ------------------------------------------------------


@pytest.mark.parametrize("bad_ts", ["missing", '"soon"', "null"])
def test_a_segment_line_without_a_time_is_a_damaged_line(tmp_path: Path, bad_ts: str) -> None:
    # DuckDB read such a line as an event with ts NULL; read_run then raised TypeError
    # (Event.from_dict: int(None)) and every later read of the run failed.
    root = tmp_path / "store"
    one_file_per_run(root, {"other": 2})
    good = [E("r", i) for i in range(3)]
    timeless = good[1].to_json_line().replace(b'"ts":1795000000000001', b"" if bad_ts == "missing" else b'"ts":' + bad_ts.encode())
    timeless = timeless.replace(b',,', b',')
    assert b'"ts":1795000000000001' not in timeless
    segment = root / "segments" / "deadhost-3-1-00000000.jsonl"
    segment.write_bytes(good[0].to_json_line() + timeless + good[2].to_json_line())
    writer = held(segment)
    store = FolderStore(root)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert store.read_run("r") == [good[0], good[2]]
        assert store.sql("SELECT count(*) FROM events WHERE ts IS NULL").item() == 0
    [message] = damage_warnings(record)
    # Line numbers come from a Python check of the required fields, which sees "soon" as a time.
    where = "(1 line)" if bad_ts == '"soon"' else "(line 2)"
    assert str(segment) in message and f"event segment has damaged lines {where}" in message
    os.close(writer)
    assert store.compact() == 1
    assert (root / "quarantine" / segment.name).exists()
    assert store.read_run("r") == [good[0], good[2]]
    store.close()


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    content = path.read_bytes()
    path.write_bytes(content[:offset] + data + content[offset + len(data) :])


@pytest.mark.parametrize("where", ["footer", "first page header"])
def test_parquet_decoding_errors_that_name_no_file_are_still_skipped(tmp_path: Path, where: str) -> None:
    # DuckDB's Parquet reader reports a corrupt footer or page as a plain duckdb.Error
    # ("don't know what type", "TProtocolException: Invalid data") without the file's
    # name: queries failed with "SQL error: ..." naming nothing, and compact() raised it.
    root = tmp_path / "store"
    files = one_file_per_run(root, {"a": 5, "b": 4, "c": 3})
    bad = files["b"]
    content = bad.read_bytes()
    footer = len(content) - 8 - int.from_bytes(content[-8:-4], "little")
    _overwrite(bad, footer if where == "footer" else 4, b"\xff" * 8)
    damaged = bad.read_bytes()
    store = FolderStore(root)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert read_all(store) == ["a", "c"]
        assert store.read_run("b") == []
        assert store.read_run("c") == [E("c", s, pad="", i=s) for s in range(3)]
    [message] = damage_warnings(record)
    assert str(bad) in message and "events file cannot be read" in message
    [problem] = store.problems()
    assert problem["path"] == str(bad)
    store.compact()  # puts it aside instead of raising
    assert not bad.exists() and (root / "quarantine" / bad.name).read_bytes() == damaged
    assert read_all(store) == ["a", "c"]
    store.close()


def test_a_damaged_page_in_one_of_many_files_does_not_stop_merging(tmp_path: Path) -> None:
    # The merge's read of all sources failed with a plain duckdb.Error naming no file:
    # only InvalidInputException naming one was handled, so compact() raised it.
    root = tmp_path / "store"
    files = one_file_per_run(root, {f"r{i}": 3 for i in range(9)})  # enough small files to merge
    bad = files["r4"]
    _overwrite(bad, 4, b"\xff" * 8)  # the first page header, right after the magic bytes
    damaged = bad.read_bytes()
    store = FolderStore(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreDamageWarning)
        store.wait_for_compaction(30)
        store.compact()
        assert read_all(store) == [f"r{i}" for i in range(9) if i != 4]
    assert [p.name.startswith("merged+") for p in (root / "events").glob("*.parquet")] == [True]
    assert (root / "quarantine" / bad.name).read_bytes() == damaged
    store.close()


def test_a_damaged_column_name_in_the_first_events_file_is_skipped(tmp_path: Path) -> None:
    # The views are bound to the first file's schema: with "run_id" spelled otherwise
    # there, binding failed with a binder error naming no file, so every query failed.
    root = tmp_path / "store"
    files = one_file_per_run(root, {"a": 5, "b": 4, "c": 3})
    bad = files["a"]
    content = bad.read_bytes()
    footer = len(content) - 8 - int.from_bytes(content[-8:-4], "little")
    _overwrite(bad, content.index(b"run_id", footer), b"run_ix")  # the schema's column name
    store = FolderStore(root)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert read_all(store) == ["b", "c"]
        assert store.read_run("c") == [E("c", s, pad="", i=s) for s in range(3)]
    [message] = damage_warnings(record)
    assert str(bad) in message and "its columns are not those of an events file" in message
    store.compact()
    assert (root / "quarantine" / bad.name).exists() and read_all(store) == ["b", "c"]
    store.close()
