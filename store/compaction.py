"""Compaction: closed segments become Parquet files.

A segment is closed when its ``flock`` can be taken: its writer closed it,
rotated away from it, or died. Compacting one, all under that lock:

1. if ``events/<stem>.parquet`` does not exist yet: DuckDB copies the
   segment's readable lines (sorted by run and seq) into a hidden temporary
   file, which is fsynced and renamed into place (atomic: readers see the
   whole file or none of it);
2. the segment is unlinked.

Readers list segments before Parquet files and ignore a segment whose Parquet
file exists, so at every instant each event is counted exactly once: before
step 1 it is only in the segment, between 1 and 2 the segment is ignored,
after 2 it is only in the Parquet file. A reader that listed a segment which
step 2 then removed gets a "file not found" and retries (see ``query.py``).

A segment with damaged lines (anything but a torn last line, which is what a
killed writer leaves) is not unlinked in step 2 but moved to ``quarantine/``
with a note naming the lines (``problems.py``); its readable events are in the
Parquet file like any other segment's.

After compacting, the background compactor merges small Parquet files when
enough have piled up (``eventfiles.consolidate``), without waiting for
another process that is already doing so.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Callable

import duckdb

from . import eventfiles
from .formats import segment_records_sql
from .layout import Layout
from .problems import damaged_count, damaged_line_numbers, describe_lines, is_event_line, quarantine
from .segments import OPENING_SUFFIX, SEGMENT_SUFFIX

log = logging.getLogger("kernelflow.store")

STALE_TMP_AGE_S = 3600.0
"""Hidden temporary files older than this were left by a killed compactor."""


def list_segments(layout: Layout) -> list[Path]:
    """Visible segment files, oldest name first (names start with host-pid-time)."""
    try:
        names = os.listdir(layout.segments)
    except FileNotFoundError:
        return []
    return sorted(layout.segments / n for n in names if n.endswith(SEGMENT_SUFFIX) and not n.startswith("."))


def compact_segment(segment: Path, layout: Layout, con: duckdb.DuckDBPyConnection | None = None) -> bool:
    """Compact one segment if it is closed.

    Returns True if this call converted or removed it; False if a live writer
    still holds it, or another process got to it first.
    """
    try:
        fd = os.open(segment, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its writer is alive and still appending
        # Another compactor may have finished and unlinked this path between
        # our open() and our flock(): then we hold a lock on a deleted file.
        try:
            st = os.stat(segment)
        except FileNotFoundError:
            return False
        fst = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (fst.st_dev, fst.st_ino):
            return False
        target = layout.events / (segment.stem + ".parquet")
        damaged: str | None = None
        if not target.exists():
            damaged = _write_parquet(segment, target, con)
        if damaged is None:
            os.unlink(segment)
        else:
            dest = quarantine(
                layout,
                segment,
                f"event segment has damaged lines ({damaged}); they were skipped, its other "
                f"events were compacted into {target.name}",
                "nothing is needed for the events that were read; if you can repair the damaged "
                "lines, append them as a new file segments/<any-name>.jsonl in the store to recover "
                "them, then delete this file",
            )
            log.warning("segment %s has damaged lines (%s); moved it to %s", segment, damaged, dest)
        return True
    finally:
        os.close(fd)  # releases the flock


def _write_parquet(segment: Path, target: Path, con: duckdb.DuckDBPyConnection | None) -> str | None:
    """Write the segment's events to ``target``; returns a description of its
    damaged lines, or None if every complete line was an event."""
    own = con is None
    if con is None:
        con = duckdb.connect()
    try:
        # The segment is deleted right after this: write_events_file puts the
        # Parquet file on disk first, whatever the store's fsync setting.
        rows = eventfiles.write_events_file(con, segment_records_sql([segment]), target)
    finally:
        if own:
            con.close()
    data = segment.read_bytes()
    complete = data.rfind(b"\n") + 1
    tail = data[complete:]  # a torn last line is what a killed writer leaves: not damage
    # DuckDB reads a tail that happens to be a whole event (killed just before its newline).
    bad = damaged_count(data[:complete], rows - (1 if tail.strip() and is_event_line(tail) else 0))
    if bad <= 0:
        return None
    return describe_lines(damaged_line_numbers(memoryview(data)[:complete]), bad)


def compact_closed(
    layout: Layout,
    *,
    con: duckdb.DuckDBPyConnection | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Compact every closed segment in the store; returns how many were compacted."""
    segments = list_segments(layout)
    if not segments:
        return 0
    own = con is None
    if con is None:
        con = duckdb.connect()
    done = 0
    try:
        for segment in segments:
            if should_stop is not None and should_stop():
                break
            if compact_segment(segment, layout, con):
                done += 1
        remove_stale_temporaries(layout)
    finally:
        if own:
            con.close()
    return done


def remove_stale_temporaries(layout: Layout, max_age_s: float = STALE_TMP_AGE_S) -> None:
    """Delete hidden files a killed writer or compactor left behind."""
    now = time.time()
    for folder, is_leftover in (
        (layout.events, lambda n: n.startswith(".") and ".tmp-" in n),
        (layout.segments, lambda n: n.startswith(".") and n.endswith(OPENING_SUFFIX)),
    ):
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            continue
        for name in names:
            if not is_leftover(name):
                continue
            path = folder / name
            try:
                if now - path.stat().st_mtime > max_age_s:
                    os.unlink(path)
            except FileNotFoundError:
                pass


class BackgroundCompactor:
    """Compacts segments on one daemon thread, off the caller's path.

    The thread exists only while there is work; a notebook that appends and
    rotates rarely has no idle thread lying around.
    """

    def __init__(self, layout: Layout) -> None:
        self._layout = layout
        self._reset()
        _compactors.add(self)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[Path | None] = []  # None means: every closed segment
        self._busy = False
        self._con: duckdb.DuckDBPyConnection | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    def submit(self, segment: Path | None) -> None:
        """Queue one segment, or ``None`` for a sweep of every closed segment."""
        with self._cond:
            if self._stopping or segment in self._queue:
                return
            self._queue.append(segment)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kernelflow-store-compactor", daemon=True)
                self._thread.start()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the queue is empty and nothing is being compacted."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def stop(self, timeout: float | None = 30.0) -> None:
        """Drop queued work, let the segment in progress finish, stop the thread."""
        with self._cond:
            self._stopping = True
            self._queue.clear()
            thread = self._thread
            con = self._con
        if con is not None:
            # A merge of many files can take seconds: cut it short (it leaves
            # nothing behind but a temporary file; the next one starts over).
            try:
                con.interrupt()
            except Exception:  # pragma: no cover - closed in the meantime
                pass
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cond:
            self._stopping = False

    def _run(self) -> None:
        con: duckdb.DuckDBPyConnection | None = None
        try:
            while True:
                with self._cond:
                    if not self._queue or self._stopping:
                        self._thread = None
                        self._cond.notify_all()
                        return
                    item = self._queue.pop(0)
                    self._busy = True
                try:
                    if con is None:
                        con = duckdb.connect()
                    if item is None:
                        compact_closed(self._layout, con=con, should_stop=lambda: self._stopping)
                    else:
                        compact_segment(item, self._layout, con)
                    with self._cond:
                        last = not self._queue
                    if last and not self._stopping:
                        # Small files piled up? Merge them, unless another process is at it.
                        with self._cond:
                            self._con = con  # stop() may interrupt a merge, never a compaction
                        try:
                            eventfiles.consolidate(self._layout, con, should_stop=lambda: self._stopping)
                        finally:
                            with self._cond:
                                self._con = None
                except Exception:
                    # Never fatal: the segment stays readable where it is and
                    # the next open or compact() tries again.
                    if not self._stopping:
                        log.warning(
                            "compacting %s failed; it will be retried later", item or self._layout.segments, exc_info=True
                        )
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
        finally:
            if con is not None:
                con.close()


_compactors: weakref.WeakSet[BackgroundCompactor] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The parent's thread does not exist in the child, and its condition may
    # have been held at fork time: start from scratch.
    for compactor in list(_compactors):
        compactor._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
