"""FolderStore.append_many: one write per segment, same guarantees as append."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import kernelflow.store.folder as folder_mod
from kernelflow import events as ev
from kernelflow.events import Event
from kernelflow.exceptions import StoreError
from kernelflow.store import FolderStore


def E(run: str, seq: int, **payload: Any) -> Event:
    first = seq == 0
    return Event(run, seq, 1_795_000_000_000_000 + seq, ev.RUN_STARTED if first else ev.TASK_STARTED, "wf", "v1",
                 None if first else "t", None if first else 1, payload)


def test_append_many_round_trip(tmp_store: FolderStore) -> None:
    events = [E(f"r{i % 3}", i // 3, text="héllo", i=i) for i in range(30)]
    assert tmp_store.append_many(iter(events)) == 30  # any iterable
    assert tmp_store.append_many([]) == 0
    for run in ("r0", "r1", "r2"):
        assert tmp_store.read_run(run) == [e for e in events if e.run_id == run]
    tmp_store.close()
    assert tmp_store.read_run("r1") == [e for e in events if e.run_id == "r1"]


def test_one_write_and_one_fsync_per_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FolderStore(tmp_path / "store", fsync=True, segment_max_events=1000)
    store.append(E("r", 0))  # opens the segment
    fd = store._writer._fd
    calls: list[tuple[str, int]] = []
    real_write, real_fsync = os.write, os.fsync
    monkeypatch.setattr(os, "write", lambda f, data: (calls.append(("write", f)), real_write(f, data))[1])
    monkeypatch.setattr(os, "fsync", lambda f: (calls.append(("fsync", f)), real_fsync(f))[1])
    store.append_many(E("r", i) for i in range(1, 501))
    monkeypatch.undo()
    assert calls == [("write", fd), ("fsync", fd)]
    assert len(store.read_run("r")) == 501
    store.close()


def test_rotation_splits_a_batch_exactly(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "store", segment_max_events=10)
    store.append(E("r", 0))
    events = [E("r", i) for i in range(1, 35)]
    store.append_many(events)
    assert store.wait_for_compaction(30)
    # 35 events in segments of 10: three full ones (compacted), five in the open one.
    assert len(list((tmp_path / "store" / "events").glob("*.parquet"))) == 3
    [open_segment] = (tmp_path / "store" / "segments").glob("*.jsonl")
    assert open_segment.read_bytes().count(b"\n") == 5
    assert store.read_run("r") == [E("r", 0), *events]
    store.close()


def test_large_iterables_are_written_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(folder_mod, "APPEND_MANY_CHUNK", 7)
    store = FolderStore(tmp_path / "store")
    sizes: list[int] = []
    real = store._writer.append_many
    monkeypatch.setattr(store._writer, "append_many", lambda lines, **kw: (sizes.append(len(lines)), real(lines, **kw))[1])
    assert store.append_many(E("r", i) for i in range(20)) == 20
    assert sizes == [7, 7, 6]
    assert [e.seq for e in store.read_run("r")] == list(range(20))
    store.close()


def test_an_oversized_event_fails_before_anything_is_written(tmp_store: FolderStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import kernelflow.store.segments as segments_mod

    monkeypatch.setattr(segments_mod, "MAX_EVENT_BYTES", 1000)
    with pytest.raises(StoreError, match="larger than the store accepts.*none of the batch was recorded"):
        tmp_store.append_many([E("r", 0), E("r", 1, blob="x" * 2000), E("r", 2)])
    assert not tmp_store.path.exists()


def test_a_failed_batch_says_what_was_recorded(tmp_path: Path) -> None:
    # A real short write (file-size limit, as a full disk): the message says
    # how many of the batch are in the store; appending the rest completes it.
    code = """
    import re, resource, signal, sys
    from kernelflow.store import FolderStore
    from kernelflow.events import Event
    from kernelflow.exceptions import StoreError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    store = FolderStore(sys.argv[1])
    events = [Event("r", i, 1_795_000_000_000_000 + i, "RunStarted" if i == 0 else "TaskStarted", "wf", "v1",
                    None if i == 0 else "t", None if i == 0 else 1, {"pad": "x" * 100}) for i in range(200)]
    store.append(events[0])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (6000, hard))
    try:
        store.append_many(events[1:])
    except StoreError as exc:
        print("ERROR", exc)
        done = int(re.search(r"the first ([0-9,]+) are recorded", str(exc)).group(1).replace(",", ""))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    store.append_many(events[1 + done:])
    print("DONE", done)
    store.close()
    """
    env = {k: v for k, v in os.environ.items() if k != "KERNELFLOW_FSYNC"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(tmp_path / "store")],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    error = next(line for line in proc.stdout.splitlines() if line.startswith("ERROR"))
    done = int(next(line for line in proc.stdout.splitlines() if line.startswith("DONE")).split()[1])
    assert 0 < done < 199
    assert "could not record events in" in error and str(tmp_path / "store" / "segments") in error
    assert "Of the 199 events given so far" in error and f"from index {done}" in error
    store = FolderStore(tmp_path / "store")
    assert [e.seq for e in store.read_run("r")] == list(range(200))  # nothing lost, nothing twice
