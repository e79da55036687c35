"""The compacted events files (``events/*.parquet``): writing, merging, rewriting.

Readers take no lock, so every change here keeps one invariant: a reader that
lists ``events/`` and reads what it listed counts every event exactly once, or
finds a listed file gone and lists again (``query.py``).

* **New file** (compaction, merge): written under a hidden temporary name,
  fsynced, renamed into place.
* **Rewriting a file** (retention): the new content under a temporary name,
  renamed over the old path, so a reader opens the old file or the new one,
  whole.
* **Merging** files A, B, ... into M = ``merged+<time_ns>-<rand>.parquet``:
  first ``M.sources`` (JSON: the stems of A, B, ...) is written, then M is
  renamed into place, then A, B, ... are unlinked. A reader that lists M
  ignores the files it replaces (it reads ``M.sources`` by path, so a
  directory listing that missed it cannot fool it); one that listed A but not
  M reads A, or finds A gone and lists again. ``M.sources`` is kept for an
  hour after its sources are gone, longer than any listing is used.

Why merge: every file costs a lookup about 0.1 ms (opened, footer parsed,
bloom filter read) even when none of its rows match, and each writing
process leaves at least one file per session, so a store that has seen a
thousand sessions would spend ~100 ms per ``read_run`` on files that do not
hold the run. Small files are merged by size tier (:func:`plan_merges`), so
the count stays near ``total rows / MERGE_TARGET_ROWS`` plus a few dozen.

Merging, rewriting and removing files happen under ``store.lock`` (an
``flock``), so two maintainers never work on the same files; compaction only
adds files and needs no lock. A file is merged only once its segment is gone,
so a segment can never come back to life for events that moved elsewhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import duckdb
import orjson

from .formats import EVENTS_FORMAT, EVENTS_FORMAT_KEY, parquet_copy_options, parquet_records_sql, path_list, quote
from .layout import Layout, fsync_dir, tmp_name, utc_iso_now, write_atomic
from .problems import quarantine
from .segments import SEGMENT_SUFFIX

log = logging.getLogger("kernelflow.store")

MERGED_PREFIX = "merged+"
"""Merged files' names start with this; ``+`` never appears in a segment's stem."""
SOURCES_SUFFIX = ".sources"
MERGE_TARGET_ROWS = 1_000_000
"""A merge writes at most about this many rows; files of half as many or more are left alone."""
MERGE_FANIN = 8
"""Files of one size tier that trigger a merge (tiers grow by this factor)."""
MERGE_MAX_FILES = 64
STALE_MANIFEST_AGE_S = 3600.0


def is_merged(name: str) -> bool:
    return name.startswith(MERGED_PREFIX)


def event_files(layout: Layout) -> list[Path]:
    """Visible ``events/*.parquet``, sorted by name."""
    try:
        names = os.listdir(layout.events)
    except FileNotFoundError:
        return []
    return sorted(layout.events / n for n in names if n.endswith(".parquet") and not n.startswith("."))


def manifest_path(merged: Path) -> Path:
    return merged.with_name(merged.stem + SOURCES_SUFFIX)


def read_sources(manifest: Path) -> list[str] | None:
    """The stems a merged file replaces, or None if its manifest is missing or unreadable."""
    try:
        record = orjson.loads(manifest.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    sources = record.get("sources") if isinstance(record, dict) else None
    return [s for s in sources if isinstance(s, str)] if isinstance(sources, list) else None


def replaced_stems(paths: Iterable[Path], cache: dict[str, list[str]] | None = None) -> set[str]:
    """Stems of the files replaced by the merged files among ``paths``.

    ``cache`` (merged file path -> stems) spares reading a manifest twice:
    a merged file's sources never change.
    """
    out: set[str] = set()
    for path in paths:
        if not is_merged(path.name):
            continue
        key = str(path)
        stems = cache.get(key) if cache is not None else None
        if stems is None:
            stems = read_sources(manifest_path(path))
            if stems is None:
                continue  # gone with its file, or removed by hand: nothing to hide
            if cache is not None:
                cache[key] = stems
        out.update(stems)
    return out


# --- writing ------------------------------------------------------------------------


def write_events_file(con: duckdb.DuckDBPyConnection, records_sql: str, target: Path) -> int:
    """Write ``records_sql`` (on-disk column names) to ``target``, sorted by
    ``run_id, seq`` in the schema-2 format, through a temporary file, fsync
    and a rename (over ``target`` if it exists). Returns the rows written; 0
    writes nothing (and leaves an existing ``target`` alone)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(target)
    try:
        rows = con.execute(
            f"COPY ({records_sql} ORDER BY run_id, seq) TO {quote(tmp)} ({parquet_copy_options()})"
        ).fetchall()[0][0]
        if rows == 0:
            _unlink_quietly(tmp)
            return 0
        # Whatever the store's fsync setting: the next step deletes or
        # replaces the only other copy of these events.
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, target)
        fsync_dir(target.parent)
        return int(rows)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# --- the maintenance lock -------------------------------------------------------------


@contextlib.contextmanager
def maintenance(layout: Layout, *, blocking: bool = True) -> Iterator[bool]:
    """Hold ``store.lock`` while rewriting or removing events files.

    Yields False (holding nothing) if the store does not exist yet, or if
    ``blocking`` is False and another process is maintaining the store.
    """
    if not layout.marker.exists():
        yield False
        return
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


# --- describing files ---------------------------------------------------------------------


def damage_message(exc: BaseException) -> str | None:
    """DuckDB's one-line message if ``exc``, raised while reading an events
    file, says that a file's content is damaged; None for trouble that says
    nothing about the file (interrupted, out of memory, a failing disk, too
    many open files), which callers let propagate."""
    if isinstance(exc, UnicodeDecodeError):
        # DuckDB quoted undecodable bytes of the file in its message; Python could not decode the message.
        return f"a damaged value (DuckDB's message about it was not UTF-8: {exc.reason})"
    text = str(exc).split("\n")[0]
    # The plain duckdb.Error class is what the Parquet reader's own decoding errors become
    # ("TProtocolException: Invalid data", "don't know what type", "Out of buffer").
    if isinstance(exc, duckdb.InvalidInputException) or type(exc) is duckdb.Error:
        return text
    if isinstance(exc, duckdb.IOException) and "Could not read enough bytes" in text:
        return text  # the footer points past the end of the file: the file's fault, not the disk's
    return None


@dataclass(frozen=True)
class FileInfo:
    path: Path
    rows: int
    current: bool
    """Written in the schema-2 format (sorted, tagged)."""


_info_cache: dict[tuple[str, int, int, int], FileInfo] = {}


def describe(con: duckdb.DuckDBPyConnection, paths: list[Path]) -> tuple[list[FileInfo], list[tuple[Path, str]]]:
    """Rows and format of each file; also the files whose metadata cannot be
    read, with DuckDB's message. Cached per (path, inode, size, mtime)."""
    infos: list[FileInfo] = []
    todo: list[tuple[Path, tuple[str, int, int, int]]] = []
    for path in paths:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
        cached = _info_cache.get(key)
        if cached is not None:
            infos.append(cached)
        else:
            todo.append((path, key))
    damaged: list[tuple[Path, str]] = []
    for path, key in todo:
        try:
            rows = con.execute(f"SELECT num_rows FROM parquet_file_metadata({quote(path)})").fetchone()[0]
            kv = con.execute(
                f"SELECT decode(key), decode(value) FROM parquet_kv_metadata({quote(path)})"
            ).fetchall()
        except (duckdb.Error, UnicodeDecodeError) as exc:
            # Not a Parquet file (any more): truncated, garbage, a damaged footer.
            # Other errors (interrupted, I/O, too many open files) say
            # nothing about the file and propagate.
            message = damage_message(exc)
            if message is None:
                raise
            if path.exists():
                damaged.append((path, message))
            continue
        info = FileInfo(path, int(rows), (EVENTS_FORMAT_KEY, EVENTS_FORMAT) in kv)
        if len(_info_cache) > 100_000:  # entries of files long merged away
            _info_cache.clear()
        _info_cache[key] = info
        infos.append(info)
    return infos, damaged


def unreadable(con: duckdb.DuckDBPyConnection, path: Path) -> str | None:
    """DuckDB's message if any row of ``path`` cannot be decoded (every
    column of every row group is read), else None."""
    cols = "event_id, run_id, seq, ts, type, workflow, workflow_version, task_id, attempt, payload, actor"
    try:
        con.execute(f"SELECT count(*) FROM read_parquet({quote(path)}) WHERE hash({cols}) IS NOT NULL").fetchall()
    except (duckdb.Error, UnicodeDecodeError) as exc:
        message = damage_message(exc) or _schema_damage(exc)
        if message is None:
            raise
        return message
    return None


def _schema_damage(exc: BaseException) -> str | None:
    """Reading the events columns of one file, a binder error means the file does not
    have them: its schema is damaged (a column name with a flipped bit, say)."""
    if isinstance(exc, duckdb.BinderException):
        return "its columns are not those of an events file: " + str(exc).split("\n")[0]
    return None


def damaged_file_in(
    exc: BaseException, paths: Iterable[Path], con: duckdb.DuckDBPyConnection
) -> tuple[Path, str] | None:
    """The file among ``paths`` that made ``exc`` (a read of all of them) fail
    because it is damaged, and why, if any: the one DuckDB's message names,
    else (the Parquet reader's decoding errors name no file) the first that
    cannot be read through."""
    message = damage_message(exc) or _schema_damage(exc)
    if message is None:
        return None
    paths = [p for p in paths if p.exists()]
    text = "" if isinstance(exc, UnicodeDecodeError) else str(exc)
    for path in paths:
        if str(path) in text:
            return path, message
    for path in paths:
        error = unreadable(con, path)
        if error is not None:
            return path, error
    return None


def quarantine_parquet(layout: Layout, path: Path, error: str) -> Path:
    """Move an events file that cannot be read to ``quarantine/`` (under the maintenance lock)."""
    dest = quarantine(
        layout,
        path,
        f"events file cannot be read ({error}); its events are not in the store's views",
        "restore the file from a backup into the store's events/ folder if you have one (its name "
        "must stay the same); otherwise the events it held are lost and this file can be deleted",
    )
    log.warning("moved the damaged events file %s to %s", path, dest)
    return dest


# --- merging --------------------------------------------------------------------------------


def tier(rows: int) -> int:
    """Size tier: 0 below 8k rows, then one tier per factor of :data:`MERGE_FANIN`."""
    return max(0, int(math.log(max(rows, 1) / 1000, MERGE_FANIN)))


def plan_merges(infos: list[FileInfo], *, legacy: bool = False) -> list[list[FileInfo]]:
    """Groups of files to merge, each into one file.

    Files of the same tier are merged once there are :data:`MERGE_FANIN` of
    them (at most :data:`MERGE_MAX_FILES` and :data:`MERGE_TARGET_ROWS` rows
    at a time), so a row is rewritten about once per tier it climbs, not
    every time a small file arrives. Files of at least half the target size
    are left alone. With ``legacy`` (the schema-2 migration) every file not
    in the schema-2 format is merged too, whatever its size, a lone one
    rewritten on its own.
    """
    groups: list[list[FileInfo]] = []
    small = [i for i in infos if i.rows < MERGE_TARGET_ROWS // 2 and (i.current or not legacy)]
    by_tier: dict[int, list[FileInfo]] = {}
    for info in sorted(small, key=lambda i: i.path.name):
        by_tier.setdefault(tier(info.rows), []).append(info)
    for members in by_tier.values():
        if len(members) >= MERGE_FANIN:
            groups.extend(g for g in _batches(members) if len(g) > 1)
    if legacy:
        old = sorted((i for i in infos if not i.current), key=lambda i: i.path.name)
        groups.extend(_batches(old))
    return groups


def _batches(members: list[FileInfo]) -> list[list[FileInfo]]:
    out: list[list[FileInfo]] = []
    batch: list[FileInfo] = []
    rows = 0
    for info in members:
        if batch and (rows + info.rows > MERGE_TARGET_ROWS or len(batch) >= MERGE_MAX_FILES):
            out.append(batch)
            batch, rows = [], 0
        batch.append(info)
        rows += info.rows
    if batch:
        out.append(batch)
    return out


def merge(layout: Layout, con: duckdb.DuckDBPyConnection, sources: list[Path]) -> Path | None:
    """Merge ``sources`` into one new file and remove them (under the maintenance lock)."""
    name = f"{MERGED_PREFIX}{time.time_ns()}-{secrets.token_hex(4)}"
    target = layout.events / f"{name}.parquet"
    manifest = {"sources": [p.stem for p in sources], "created_at": utc_iso_now(), "pid": os.getpid()}
    # The manifest first: once the merged file is visible, readers must be
    # able to tell which files it replaces.
    write_atomic(manifest_path(target), orjson.dumps(manifest), fsync=True)
    sources = list(sources)
    while True:
        try:
            rows = write_events_file(con, parquet_records_sql(sources), target) if sources else 0
            break
        except (duckdb.Error, UnicodeDecodeError) as exc:
            found = damaged_file_in(exc, sources, con)
            if found is None:
                raise
            # A source whose footer reads but whose rows do not: put it aside, merge the rest.
            bad, error = found
            quarantine_parquet(layout, bad, error)
            sources.remove(bad)
    for path in sources:
        _unlink_quietly(path)
    fsync_dir(layout.events)
    return target if rows else None


def finish_merges(layout: Layout, now: float | None = None) -> None:
    """Complete merges a killed process left half done, drop old manifests
    (under the maintenance lock)."""
    try:
        names = set(os.listdir(layout.events))
    except FileNotFoundError:
        return
    now = time.time() if now is None else now
    changed = False
    for name in sorted(names):
        if not name.endswith(SOURCES_SUFFIX):
            continue
        manifest = layout.events / name
        merged = name[: -len(SOURCES_SUFFIX)] + ".parquet"
        stems = read_sources(manifest) or []
        left = [s for s in stems if f"{s}.parquet" in names]
        if merged in names:
            if left:  # renamed into place, killed before unlinking its sources
                for stem in left:
                    _unlink_quietly(layout.events / f"{stem}.parquet")
                changed = True
                left = []
                # A reader may have listed those sources a moment ago: the
                # manifest's hour starts now.
                with contextlib.suppress(FileNotFoundError):
                    os.utime(manifest)
                continue
        try:
            old = now - manifest.stat().st_mtime > STALE_MANIFEST_AGE_S
        except FileNotFoundError:
            continue
        # Without its merged file, a manifest hides nothing (killed before the rename).
        if old and (not left or merged not in names):
            _unlink_quietly(manifest)
    if changed:
        fsync_dir(layout.events)


def consolidate_locked(
    layout: Layout,
    con: duckdb.DuckDBPyConnection,
    *,
    legacy: bool = False,
    should_stop: Callable[[], bool] | None = None,
    suspects: Iterable[Path] = (),
) -> int:
    """Merge what :func:`plan_merges` says, until nothing is left to merge;
    returns how many merges ran. Files in ``suspects`` (a reader found them
    damaged) are read through first and put aside if they are. The caller
    holds the maintenance lock."""
    finish_merges(layout)
    for path in suspects:
        if path.exists() and path.parent == layout.events:
            error = unreadable(con, path)
            if error is not None:
                quarantine_parquet(layout, path, error)
    merges = 0
    for _ in range(1000):  # each round removes files; bounded anyway
        infos, damaged = describe(con, mergeable_files(layout))
        for path, error in damaged:
            quarantine_parquet(layout, path, error)
        groups = plan_merges(infos, legacy=legacy)
        if not groups:
            break
        for group in groups:
            if should_stop is not None and should_stop():
                return merges
            merge(layout, con, [i.path for i in group])
            merges += 1
    return merges


def consolidate(
    layout: Layout,
    con: duckdb.DuckDBPyConnection | None = None,
    *,
    blocking: bool = False,
    should_stop: Callable[[], bool] | None = None,
    suspects: Iterable[Path] = (),
) -> int:
    """Merge small events files if enough have piled up; returns how many merges ran.

    Non-blocking by default: if another process is maintaining the store,
    this one has nothing to do.
    """
    with maintenance(layout, blocking=blocking) as held:
        if not held:
            return 0
        own = con is None
        con = duckdb.connect() if con is None else con
        try:
            return consolidate_locked(layout, con, should_stop=should_stop, suspects=suspects)
        finally:
            if own:
                con.close()


def worth_merging(layout: Layout) -> bool:
    """Cheap check (one listing): are there enough events files that a merge may be due?"""
    try:
        names = os.listdir(layout.events)
    except FileNotFoundError:
        return False
    return sum(1 for n in names if n.endswith(".parquet") and not n.startswith(".")) >= MERGE_FANIN


def mergeable_files(layout: Layout) -> list[Path]:
    """Events files whose segment is gone (a segment still there is being
    compacted, or its compactor died between the rename and the unlink)."""
    try:
        segments = {n[: -len(SEGMENT_SUFFIX)] for n in os.listdir(layout.segments) if n.endswith(SEGMENT_SUFFIX)}
    except FileNotFoundError:
        segments = set()
    return [p for p in event_files(layout) if p.stem not in segments]


def migrate_sort_events_by_run(layout: Layout) -> None:
    """Schema 1 -> 2 (``sort-events-by-run``): merge and rewrite every
    schema-1 events file into run-sorted schema-2 files.

    Runs under ``store.lock`` (held by :func:`~kernelflow.store.layout.migrate`).
    Safe to run again after an interruption: a merge that was cut short is
    finished or ignored (:func:`finish_merges`), files already in the schema-2
    format are left alone.
    """
    con = duckdb.connect()
    try:
        consolidate_locked(layout, con, legacy=True)
    finally:
        con.close()


# --- retention ----------------------------------------------------------------------------


def rewrite_without_runs(
    layout: Layout, con: duckdb.DuckDBPyConnection, path: Path, run_ids: list[str]
) -> tuple[int, int]:
    """Remove ``run_ids``' events from one file (under the maintenance lock):
    rewritten through a rename, or unlinked if nothing is left. Returns
    ``(events removed, events kept)``."""
    con.execute("CREATE OR REPLACE TEMP TABLE _gc_runs AS SELECT unnest(?::VARCHAR[]) AS run_id", [run_ids])
    source = f"read_parquet({path_list([path])})"
    total, removed = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE run_id IN (SELECT run_id FROM _gc_runs)) FROM {source}"
    ).fetchone()
    if removed == 0:
        return 0, int(total)
    kept = int(total) - int(removed)
    if kept == 0:
        os.unlink(path)
        fsync_dir(path.parent)
        return int(removed), 0
    records = f"SELECT * FROM ({parquet_records_sql([path])}) WHERE run_id NOT IN (SELECT run_id FROM _gc_runs)"
    written = write_events_file(con, records, path)
    assert written == kept, (written, kept)
    return int(removed), kept
