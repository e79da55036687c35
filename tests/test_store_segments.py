"""The segment writer (store/segments.py) on its own: names, rotation, limits and
write errors, with real files and real OS errors (a file-size limit, /dev/full)."""

from __future__ import annotations

import fcntl
import os
import re
import resource
import signal
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import kernelflow.store.segments as segments_mod
from kernelflow.exceptions import StoreError
from kernelflow.store.segments import MAX_EVENT_BYTES, SegmentWriter, new_segment_stem


class Recorder:
    """The two callbacks a FolderStore gives its writer, recording their calls."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.opened = 0
        self.closed: list[Path] = []

    def before_first_write(self) -> None:
        self.opened += 1

    def on_closed(self, path: Path) -> None:
        self.closed.append(path)


def writer_for(tmp_path: Path, *, fsync: bool = False, max_events: int = 1000) -> tuple[SegmentWriter, Recorder]:
    rec = Recorder(tmp_path / "segments")
    writer = SegmentWriter(
        rec.folder, fsync=fsync, max_events=max_events, before_first_write=rec.before_first_write, on_closed=rec.on_closed
    )
    return writer, rec


def line(n: int, size: int = 20) -> bytes:
    """A newline-terminated line of exactly ``size`` bytes."""
    head = f"{n:06d}".encode()
    return head + b"x" * (size - len(head) - 1) + b"\n"


def lines_in(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def segment_files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


def lock_is_free(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


@pytest.fixture
def file_size_limit() -> Iterator[object]:
    """``limit(n)``: regular files of this process cannot grow past n bytes (a full
    disk, as the OS reports it to one writer: a short write, then EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        yield lambda n: resource.setrlimit(resource.RLIMIT_FSIZE, (n, hard))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def redirect(writer: SegmentWriter, device: str) -> None:
    """Point the writer's open segment descriptor at ``device`` (/dev/full: every
    write fails with ENOSPC; /dev/null: writes succeed, fsync fails with EINVAL)."""
    target = os.open(device, os.O_WRONLY)
    try:
        assert writer._fd is not None
        os.dup2(target, writer._fd)
    finally:
        os.close(target)


# --- names and files --------------------------------------------------------------


def test_segment_names_are_host_pid_time_and_eight_random_hex_digits() -> None:
    stem = new_segment_stem()
    host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"
    assert re.fullmatch(rf"{re.escape(host)}-{os.getpid()}-\d{{19}}-[0-9a-f]{{8}}", stem), stem
    assert new_segment_stem() != stem


def test_the_first_append_creates_a_locked_append_only_segment(tmp_path: Path) -> None:
    # Nested folders that do not exist yet are created (the store folder itself
    # may not exist before its first event).
    rec = Recorder(tmp_path / "a" / "b" / "segments")
    writer = SegmentWriter(rec.folder, fsync=False, max_events=10, before_first_write=rec.before_first_write,
                           on_closed=rec.on_closed)
    assert writer.path is None and rec.opened == 0 and not (tmp_path / "a").exists()
    old_umask = os.umask(0o022)
    try:
        writer.append(line(0))
    finally:
        os.umask(old_umask)
    path = writer.path
    assert path is not None and path.parent == rec.folder and path.name.endswith(".jsonl")
    assert segment_files(rec.folder) == [path.name]  # no hidden .opening file left
    assert rec.opened == 1 and rec.closed == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert writer._fd is not None
    assert fcntl.fcntl(writer._fd, fcntl.F_GETFL) & os.O_APPEND
    # Not inherited by programs a task starts: they must not keep the lock alive.
    assert fcntl.fcntl(writer._fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert not lock_is_free(path)  # a compactor must leave it alone
    writer.append(line(1))
    assert lines_in(path) == [line(0), line(1)]
    assert writer.close() == path
    assert lock_is_free(path) and writer.path is None and rec.closed == []  # close() hands the path back instead
    assert writer.close() is None


def test_max_events_must_be_at_least_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        writer_for(tmp_path, max_events=0)
    assert str(info.value) == "segment_max_events must be at least 1, got 0"


# --- rotation ---------------------------------------------------------------------


def test_append_rotates_exactly_at_max_events(tmp_path: Path) -> None:
    writer, rec = writer_for(tmp_path, max_events=3)
    for n in range(7):
        writer.append(line(n))
        if n == 2:  # the third event fills the segment: closed at once, not on the fourth append
            assert writer.path is None and len(rec.closed) == 1 and lock_is_free(rec.closed[0])
    assert [lines_in(p) for p in rec.closed] == [[line(0), line(1), line(2)], [line(3), line(4), line(5)]]
    assert writer.path is not None and lines_in(writer.path) == [line(6)]
    assert rec.opened == 3  # once per segment


def test_max_events_one_gives_each_event_its_own_segment(tmp_path: Path) -> None:
    writer, rec = writer_for(tmp_path, max_events=1)
    writer.append(line(0))
    writer.append_many([line(1), line(2)])
    assert writer.path is None
    assert [lines_in(p) for p in rec.closed] == [[line(0)], [line(1)], [line(2)]]


def test_append_many_splits_at_max_events_and_counts_earlier_appends(tmp_path: Path) -> None:
    writer, rec = writer_for(tmp_path, max_events=4)
    writer.append(line(0))
    writer.append_many([line(n) for n in range(1, 11)])
    assert [lines_in(p) for p in rec.closed] == [[line(n) for n in range(4)], [line(n) for n in range(4, 8)]]
    assert writer.path is not None and lines_in(writer.path) == [line(8), line(9), line(10)]
    writer.append(line(11))  # the fourth event of this segment closes it
    assert writer.path is None and lines_in(rec.closed[-1]) == [line(8), line(9), line(10), line(11)]


def test_append_many_of_nothing_opens_nothing(tmp_path: Path) -> None:
    writer, rec = writer_for(tmp_path)
    writer.append_many([])
    assert writer.path is None and rec.opened == 0 and not rec.folder.exists()


# --- size limit -------------------------------------------------------------------


def test_an_event_over_the_limit_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    assert MAX_EVENT_BYTES == 64 * 1024 * 1024  # documented: "An event larger than 64 MiB is refused"
    writer, rec = writer_for(tmp_path)
    too_big = b"x" * MAX_EVENT_BYTES + b"\n"
    with pytest.raises(StoreError) as info:
        writer.append(too_big)
    assert str(info.value) == (
        "an event of 67,108,865 bytes is larger than the store accepts (67,108,864); it was not recorded. "
        "Keep large values out of event payloads (task outputs of that size are saved as artifacts)."
    )
    with pytest.raises(StoreError) as info:
        writer.append_many([line(0), too_big])
    assert str(info.value) == (
        "an event of 67,108,865 bytes is larger than the store accepts (67,108,864); none of the batch was "
        "recorded. Keep large values out of event payloads (task outputs of that size are saved as artifacts)."
    )
    assert rec.opened == 0 and not rec.folder.exists()


def test_an_event_of_exactly_the_limit_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A smaller limit for speed; the comparison is the same (writing 64 MiB twice is not).
    monkeypatch.setattr(segments_mod, "MAX_EVENT_BYTES", 100)
    writer, rec = writer_for(tmp_path)
    for append in (writer.append, lambda data: writer.append_many([data])):
        with pytest.raises(StoreError, match="an event of 101 bytes is larger than the store accepts \\(100\\)"):
            append(line(1, 101))
        append(line(0, 100))
    assert writer.path is not None and lines_in(writer.path) == [line(0, 100), line(0, 100)]


# --- write errors -----------------------------------------------------------------


def test_a_failed_write_names_the_segment_and_moves_on_to_a_new_one(tmp_path: Path) -> None:
    writer, rec = writer_for(tmp_path)
    writer.append(line(0))
    first = writer.path
    assert first is not None
    redirect(writer, "/dev/full")  # the disk is full
    with pytest.raises(StoreError) as info:
        writer.append(line(1))
    assert str(info.value) == (
        f"could not record an event in {first}: No space left on device. Free disk space (or fix the "
        "folder's permissions) and retry; events recorded before this one are safe."
    )
    assert isinstance(info.value.__cause__, OSError)
    # The failed segment is handed over (to be compacted) and the next event starts a new one.
    assert rec.closed == [first] and writer.path is None
    writer.append(line(1))
    assert writer.path not in (None, first) and lines_in(writer.path) == [line(1)]
    assert lines_in(first) == [line(0)]


def test_a_failed_fsync_says_the_event_is_recorded(tmp_path: Path) -> None:
    writer, rec = writer_for(tmp_path, fsync=True)
    writer.append(line(0))
    first = writer.path
    redirect(writer, "/dev/null")  # write() succeeds, fsync() fails
    with pytest.raises(StoreError) as info:
        writer.append(line(1))
    assert str(info.value) == (
        f"an event was written to {first} but fsync failed: Invalid argument; it is recorded but may not "
        "survive a machine crash. Check the disk (`dmesg`) before trusting this store with more runs."
    )
    assert rec.closed == [first] and writer.path is None


def test_a_failed_open_names_the_folder(tmp_path: Path) -> None:
    (tmp_path / "segments").write_text("a file where the folder should be")
    writer, rec = writer_for(tmp_path)
    for attempt in (lambda: writer.append(line(0)), lambda: writer.append_many([line(0)])):
        with pytest.raises(StoreError) as info:
            attempt()
        assert str(info.value) == (
            f"could not open a new event segment in {tmp_path / 'segments'}: File exists. "
            "Free disk space or fix the folder's permissions, then retry."
        )
    assert writer.path is None and rec.closed == []


def test_a_segment_that_cannot_be_put_in_place_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The hidden file is created, then renamed to its final name; if the rename
    # fails (here: a folder already has that name), the hidden file is removed
    # and its descriptor closed.
    monkeypatch.setattr(segments_mod, "new_segment_stem", lambda: "host-1-2-abcdef01")
    folder = tmp_path / "segments"
    (folder / "host-1-2-abcdef01.jsonl").mkdir(parents=True)
    writer, rec = writer_for(tmp_path)
    fds_before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(StoreError) as info:
        writer.append(line(0))
    assert str(info.value) == (
        f"could not open a new event segment in {folder}: Is a directory. "
        "Free disk space or fix the folder's permissions, then retry."
    )
    assert segment_files(folder) == ["host-1-2-abcdef01.jsonl"]
    assert sorted(os.listdir("/proc/self/fd")) == fds_before
    assert writer.path is None


def test_a_hidden_name_already_taken_is_never_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Names are random, but if two writers ever drew the same one, the second
    # must fail rather than append to (and later rename) the first one's file.
    monkeypatch.setattr(segments_mod, "new_segment_stem", lambda: "host-1-2-abcdef01")
    folder = tmp_path / "segments"
    folder.mkdir()
    (folder / ".host-1-2-abcdef01.opening").write_bytes(b"another writer's\n")
    writer, rec = writer_for(tmp_path)
    with pytest.raises(StoreError) as info:
        writer.append(line(0))
    assert str(info.value) == (
        f"could not open a new event segment in {folder}: File exists. "
        "Free disk space or fix the folder's permissions, then retry."
    )
    assert (folder / ".host-1-2-abcdef01.opening").read_bytes() == b"another writer's\n"
    assert segment_files(folder) == [".host-1-2-abcdef01.opening"]


def test_a_batch_cut_short_says_how_many_are_recorded(tmp_path: Path, file_size_limit) -> None:
    # Segments of 3 events; the limit lets the first segment fill up, then cuts
    # the second one's write after two whole lines and a half.
    writer, rec = writer_for(tmp_path, max_events=3)
    batch = [line(0, 50), line(1, 50), line(2, 50), line(3, 50), line(4, 150), line(5, 50)]
    file_size_limit(225)
    with pytest.raises(StoreError) as info:
        writer.append_many(batch, before=7)
    file_size_limit(resource.RLIM_INFINITY)
    [full, failed] = rec.closed
    assert str(info.value) == (
        f"could not record events in {failed}: File too large. Of the 13 events given so far the first 12 "
        "are recorded, the rest are not. Free disk space (or fix the folder's permissions) and append the "
        "remaining ones (from index 12) again."
    )
    assert lines_in(full) == batch[:3]
    assert failed.read_bytes() == line(3, 50) + line(4, 150) + line(5, 50)[:25]  # a torn last line
    assert writer.path is None
    writer.append_many(batch[5:])  # the rest, in a new segment: the torn line never swallows it
    assert lines_in(writer.path) == [line(5, 50)]


def test_a_failed_first_batch_counts_from_zero(tmp_path: Path, file_size_limit) -> None:
    writer, rec = writer_for(tmp_path)
    file_size_limit(50)
    with pytest.raises(StoreError) as info:
        writer.append_many([line(0, 30), line(1, 30)])
    file_size_limit(resource.RLIM_INFINITY)
    assert "Of the 2 events given so far the first 1 are recorded, the rest are not." in str(info.value)
    assert "(from index 1) again." in str(info.value)


def test_a_batch_whose_fsync_fails_is_recorded_but_not_fsynced(tmp_path: Path) -> None:
    writer, rec = writer_for(tmp_path, fsync=True)
    writer.append(line(0))
    first = writer.path
    redirect(writer, "/dev/null")
    with pytest.raises(StoreError) as info:
        writer.append_many([line(1), line(2)])
    assert str(info.value) == (
        f"could not record events in {first}: Invalid argument. Of the 2 events given so far the first 2 "
        "are recorded (not fsynced), the rest are not. Free disk space (or fix the folder's permissions) and "
        "append the remaining ones (from index 2) again."
    )
    assert rec.closed == [first] and writer.path is None


def test_a_descriptor_closed_under_the_writer_is_a_write_error_not_a_crash(tmp_path: Path) -> None:
    writer, rec = writer_for(tmp_path)
    writer.append(line(0))
    first = writer.path
    os.close(writer._fd)  # e.g. closed by code that closes every descriptor it did not open
    with pytest.raises(StoreError, match=r"could not record an event in .*: Bad file descriptor"):
        writer.append(line(1))
    assert rec.closed == [first]
    writer.append(line(1))
    assert writer.close() not in (None, first)


# --- fork ---------------------------------------------------------------------------


def test_after_a_fork_the_child_drops_the_parents_segment_without_unlocking_it(tmp_path: Path) -> None:
    # What the at-fork hook does in a child, called here directly (forking the test
    # process is not safe, see test_store.py): ``parent`` plays the parent's
    # descriptor, which keeps the flock while the child's copy is closed.
    writer, rec = writer_for(tmp_path, max_events=2)
    untouched, _ = writer_for(tmp_path / "other")
    untouched._after_fork_in_child()  # never opened: nothing to close
    assert untouched.path is None
    writer.append(line(0))  # one of two: the count must start again in the child
    parent_path, child_fd = writer.path, writer._fd
    parent = os.dup(child_fd)
    try:
        old_lock = writer._lock
        segments_mod._after_fork_in_child()
        assert writer.path is None and writer._lock is not old_lock
        with pytest.raises(OSError):
            os.fstat(child_fd)  # the child's copy is closed
        assert not lock_is_free(parent_path)  # the parent still holds its segment
        writer.append(line(1))
        assert writer.path not in (None, parent_path) and lines_in(parent_path) == [line(0)]
        writer.append(line(2))  # the second event of the child's segment rotates it
        assert writer.path is None and lines_in(rec.closed[-1]) == [line(1), line(2)]
    finally:
        os.close(parent)
