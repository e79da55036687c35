"""The per-process segment writer: how events get to disk.

Each process appends to its own file, ``segments/<host>-<pid>-<time_ns>-<rand>.jsonl``,
one ``os.write`` of one JSON line per event, so

* writers never contend: no lock between processes, nothing to wait for;
* an event is in the OS page cache when :meth:`SegmentWriter.append` returns,
  so killing the process (even ``kill -9``) loses nothing it appended; only a
  machine crash can, and ``fsync=True`` closes that gap at ~ms per event;
* the writer holds ``flock(LOCK_EX)`` on its segment for as long as it is
  open. That lock is the whole protocol: a compactor that can take it knows
  the writer is gone (closed, or dead; the kernel drops a dead process's locks).
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import socket
import threading
import time
import weakref
from pathlib import Path
from typing import Callable

from kernelflow.exceptions import StoreError

from .layout import fsync_dir

SEGMENT_SUFFIX = ".jsonl"
OPENING_SUFFIX = ".opening"

MAX_EVENT_BYTES = 64 * 1024 * 1024
"""Largest event line accepted. The JSON reader is configured to accept lines
up to this size; a longer line would be dropped by it as unreadable, so it is
refused at append time instead. Big outputs belong in artifacts."""

_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"


def new_segment_stem() -> str:
    """A name no other writer, on any host sharing the folder, will pick."""
    return f"{_HOST}-{os.getpid()}-{time.time_ns()}-{secrets.token_hex(4)}"


class SegmentWriter:
    """Appends event lines to this process's current segment.

    Thread-safe. Fork-safe: a forked child drops the parent's segment (without
    releasing the parent's lock) and opens its own on its first append.
    """

    def __init__(
        self,
        segments_dir: Path,
        *,
        fsync: bool,
        max_events: int,
        before_first_write: Callable[[], None],
        on_closed: Callable[[Path], None],
    ) -> None:
        if max_events < 1:
            raise ValueError(f"segment_max_events must be at least 1, got {max_events}")
        self.segments_dir = segments_dir
        self.fsync = fsync
        self.max_events = max_events
        self._before_first_write = before_first_write
        self._on_closed = on_closed
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._count = 0
        _track_for_fork(self)

    @property
    def path(self) -> Path | None:
        """The segment currently open for appending, if any."""
        return self._path

    def append(self, line: bytes) -> None:
        """Write one newline-terminated event line; it is handed to the OS
        (and fsynced if configured) before this returns."""
        if len(line) > MAX_EVENT_BYTES:
            raise StoreError(
                f"an event of {len(line):,} bytes is larger than the store accepts "
                f"({MAX_EVENT_BYTES:,}); it was not recorded. Keep large values out of event "
                "payloads (task outputs of that size are saved as artifacts)."
            )
        closed: Path | None = None
        with self._lock:
            if self._fd is None:
                self._open_locked()
            fd, path = self._fd, self._path
            assert fd is not None and path is not None
            written = False
            try:
                view = memoryview(line)
                while view:  # a regular file only writes short on error, but be exact
                    view = view[os.write(fd, view) :]
                written = True
                if self.fsync:
                    os.fsync(fd)
            except OSError as exc:
                # The segment may now end in a partial line; anything appended
                # after it would be glued to that fragment and unreadable, so
                # the next event goes to a fresh segment.
                self._close_locked()
                self._on_closed(path)
                if written:  # readers will see it: appending it again would duplicate it
                    raise StoreError(
                        f"an event was written to {path} but fsync failed: {exc.strerror or exc}; "
                        "it is recorded but may not survive a machine crash. Check the disk "
                        "(`dmesg`) before trusting this store with more runs."
                    ) from exc
                raise StoreError(
                    f"could not record an event in {path}: {exc.strerror or exc}. "
                    "Free disk space (or fix the folder's permissions) and retry; "
                    "events recorded before this one are safe."
                ) from exc
            self._count += 1
            if self._count >= self.max_events:
                closed = self._close_locked()
        if closed is not None:
            self._on_closed(closed)

    def append_many(self, lines: list[bytes], *, before: int = 0) -> None:
        """Write many event lines, one ``os.write`` (and one fsync, if
        configured) per segment they go to; handed to the OS before this returns.

        Rotation is exact: a batch that fills the segment is split at
        ``max_events``, the rest goes to the next segment. If a write fails,
        the error says how many of the batch's events were recorded (they are
        the first ones, in order); the others were not. ``before`` counts
        events of the same call recorded by earlier batches (for that message).
        """
        for line in lines:
            if len(line) > MAX_EVENT_BYTES:
                raise StoreError(
                    f"an event of {len(line):,} bytes is larger than the store accepts "
                    f"({MAX_EVENT_BYTES:,}); none of the batch was recorded. Keep large values out of "
                    "event payloads (task outputs of that size are saved as artifacts)."
                )
        recorded = 0
        while recorded < len(lines):
            closed: Path | None = None
            with self._lock:
                if self._fd is None:
                    self._open_locked()
                fd, path = self._fd, self._path
                assert fd is not None and path is not None
                take = min(len(lines) - recorded, self.max_events - self._count)
                data = b"".join(lines[recorded : recorded + take])
                view = memoryview(data)
                try:
                    while view:
                        view = view[os.write(fd, view) :]
                    if self.fsync:
                        os.fsync(fd)
                except OSError as exc:
                    written = len(data) - len(view)
                    self._close_locked()
                    self._on_closed(path)
                    done = before + recorded + bytes(data[:written]).count(b"\n")
                    raise StoreError(
                        f"could not record events in {path}: {exc.strerror or exc}. Of the "
                        f"{before + len(lines):,} events given so far the first {done:,} are recorded"
                        + (" (not fsynced)" if not view else "")
                        + ", the rest are not. Free disk space (or fix the folder's permissions) and "
                        f"append the remaining ones (from index {done}) again."
                    ) from exc
                self._count += take
                recorded += take
                if self._count >= self.max_events:
                    closed = self._close_locked()
            if closed is not None:
                self._on_closed(closed)

    def close(self) -> Path | None:
        """Close the current segment (releasing its lock); returns its path."""
        with self._lock:
            return self._close_locked()

    # -- internals ----------------------------------------------------------------

    def _open_locked(self) -> None:
        self._before_first_write()
        try:
            self.segments_dir.mkdir(parents=True, exist_ok=True)
            stem = new_segment_stem()
            final = self.segments_dir / f"{stem}{SEGMENT_SUFFIX}"
            # Created under a hidden name and locked before it is visible: a
            # compactor must never see (and take) an unlocked, still-open segment.
            opening = self.segments_dir / f".{stem}{OPENING_SUFFIX}"
            fd = os.open(opening, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh file: never contended
                os.rename(opening, final)
                if self.fsync:
                    fsync_dir(self.segments_dir)
            except BaseException:
                os.close(fd)
                try:
                    os.unlink(opening)
                except FileNotFoundError:
                    pass
                raise
        except OSError as exc:
            raise StoreError(
                f"could not open a new event segment in {self.segments_dir}: {exc.strerror or exc}. "
                "Free disk space or fix the folder's permissions, then retry."
            ) from exc
        self._fd, self._path = fd, final  # _count is 0 whenever no segment is open

    def _close_locked(self) -> Path | None:
        fd, path = self._fd, self._path
        self._fd, self._path, self._count = None, None, 0
        if fd is not None:
            try:
                os.close(fd)  # releases the flock: the segment may now be compacted
            except OSError:
                pass
        return path

    def _after_fork_in_child(self) -> None:
        # The lock may have been held by another thread at fork time.
        self._lock = threading.Lock()
        if self._fd is not None:
            # Our copy of the parent's descriptor. Closing it does not release
            # the parent's flock (the parent's descriptor still holds it);
            # LOCK_UN would, so never unlock here.
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd, self._path, self._count = None, None, 0


_writers: weakref.WeakSet[SegmentWriter] = weakref.WeakSet()


def _track_for_fork(writer: SegmentWriter) -> None:
    _writers.add(writer)


def _after_fork_in_child() -> None:
    for writer in list(_writers):
        writer._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
