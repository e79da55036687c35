"""Retention: removing runs that ended long ago (``kernelflow gc``).

:func:`collect` removes every run that **ended** (succeeded or failed) before
``now - older_than``, with everything the store keeps for it: its events in
``events/*.parquet``, ``artifacts/<run>/``, ``answers/<run>/`` and its
``locks/`` and ``leases/`` files. Runs that are running, waiting, sleeping or
were resumed are never touched, nor are

* runs with events in a segment that is still open (a live writer appended to
  them, e.g. a resume or a dead-letter decision), reported as ``live``;
* runs some process drives right now (their lease is held), also ``live``;
* sub-workflow runs whose parent is kept, and parents whose child is kept
  (``family``);
* runs whose artifacts a kept run refers to (a fork reusing outputs),
  ``referenced``.

It is safe while other processes append and query: closed segments are
compacted first, and events files are only rewritten, under ``store.lock``,
through a temporary file and a rename (see ``eventfiles.py``), so a reader
sees each file before or after, whole, and a writer's open segment is never
touched. New files that appear meanwhile (compaction by another process) hold
only events appended after the selection, which is why their runs count as
live. One window remains: a run resumed in the instant between the last check
and the rename of its file loses its old events; runs removed that way are
listed as ``raced`` and warned about.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import duckdb

from . import eventfiles
from .artifacts import safe_component
from .compaction import compact_closed
from .formats import path_list

if TYPE_CHECKING:  # pragma: no cover
    from .folder import FolderStore

ENDED = ("succeeded", "failed")

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(value: str | timedelta) -> timedelta:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"2w"``, ``"45s"`` (or a timedelta) as a timedelta."""
    if isinstance(value, timedelta):
        age = value
    else:
        m = _AGE.match(value) if isinstance(value, str) else None
        if m is None:
            raise ValueError(
                f"{value!r} is not an age; write a number and a unit: 30d (days), 12h (hours), "
                "90m (minutes), 2w (weeks) or 45s (seconds)"
            )
        age = timedelta(seconds=float(m.group(1)) * _UNIT[m.group(2)])
    if age <= timedelta(0):
        raise ValueError(f"the age must be more than zero, got {value!r}")
    return age


def format_age(age: timedelta) -> str:
    seconds = age.total_seconds()
    for unit in ("w", "d", "h", "m", "s"):
        n = seconds / _UNIT[unit]
        if n >= 1 and n == int(n):
            return f"{int(n)}{unit}"
    return f"{seconds:g}s"


@dataclass
class GcReport:
    """What :func:`collect` removed, or would remove with ``dry_run``."""

    older_than: str
    cutoff: str
    """UTC, ISO 8601: runs that ended before this are removed."""
    dry_run: bool
    runs: list[str] = field(default_factory=list)
    events: int = 0
    artifacts: int = 0
    """Artifact files."""
    bytes: int = 0
    """Bytes of those artifact files."""
    other_files: int = 0
    """``answers/``, ``locks/`` and ``leases/`` files."""
    files_rewritten: int = 0
    files_removed: int = 0
    kept: dict[str, list[str]] = field(default_factory=dict)
    """Runs old enough but kept, by reason: live, family, referenced."""
    raced: list[str] = field(default_factory=list)
    """Removed while a process started appending to them again (see the module docs)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        what = f"{len(self.runs):,} run{'s' if len(self.runs) != 1 else ''} ({self.events:,} events, " \
            f"{self.artifacts:,} artifact{'s' if self.artifacts != 1 else ''}, {_size(self.bytes)})"
        if self.dry_run:
            text = f"would remove {what} older than {self.older_than}"
            if self.runs:
                text += "; run again with --yes to delete"
        else:
            text = f"removed {what} older than {self.older_than}"
            if self.runs:
                text += f"; {self.files_rewritten} events file(s) rewritten, {self.files_removed} removed"
        for reason, runs in self.kept.items():
            if runs:
                text += f"\nkept {len(runs):,} old run(s) ({reason}: {_KEPT[reason]})"
        if self.raced:
            text += f"\nWARNING: {len(self.raced)} run(s) were appended to while being removed: {', '.join(self.raced)}"
        return text


_KEPT = {
    "live": "a process is appending to them or driving them",
    "family": "a sub-workflow parent or child is kept",
    "referenced": "a kept run uses their artifacts",
}


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} bytes"  # pragma: no cover


def collect(
    store: FolderStore, older_than: timedelta | str, *, dry_run: bool = True, now: datetime | None = None
) -> GcReport:
    """Remove (or with ``dry_run``, only count) the runs that ended before
    ``now - older_than``; see the module documentation for what is kept."""
    age = parse_age(older_than)
    now = datetime.now(timezone.utc) if now is None else now
    cutoff = now - age
    report = GcReport(format_age(age), cutoff.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), dry_run)
    if not store.exists:
        return report
    layout = store.layout
    if dry_run:
        _select(store, cutoff, report)
        return report
    compact_closed(layout)  # closed segments to Parquet: only live writers' segments remain
    with eventfiles.maintenance(layout, blocking=True) as held:
        if not held:  # pragma: no cover - the store vanished under us
            return report
        eventfiles.finish_merges(layout)
        chosen = _select(store, cutoff, report)
        if chosen:
            _remove_events(store, chosen, report)
            _remove_files(store, chosen, report)
    return report


def _select(store: FolderStore, cutoff: datetime, report: GcReport) -> dict[str, int]:
    """The runs to remove -> their event counts; fills the report's counts."""
    naive_cutoff = cutoff.astimezone(timezone.utc).replace(tzinfo=None)
    old = store.sql(
        "SELECT run_id, events FROM runs WHERE status IN ('succeeded', 'failed') AND ended_at < ? ORDER BY run_id",
        [naive_cutoff],
    )
    candidates = dict(zip(old["run_id"].to_list(), old["events"].to_list()))
    if not candidates:
        return {}
    live = _live_runs(store, candidates)
    kept: dict[str, set[str]] = {"live": live, "family": set(), "referenced": set()}
    chosen = {r: n for r, n in candidates.items() if r not in live}

    # A sub-workflow's runs go together or stay together.
    family = store.sql(
        "WITH known AS (SELECT DISTINCT run_id FROM events) "
        "SELECT e.run_id, e.payload ->> 'parent_run_id' AS parent, k.run_id IS NOT NULL AS parent_known "
        "FROM events e LEFT JOIN known k ON k.run_id = e.payload ->> 'parent_run_id' "
        "WHERE e.type = 'RunStarted' AND e.payload ->> 'parent_run_id' IS NOT NULL"
    ).rows()
    changed = True
    while changed:
        changed = False
        for child, parent, parent_known in family:
            if child in chosen and parent_known and parent not in chosen:
                del chosen[child]
            elif parent in chosen and child not in chosen:
                del chosen[parent]
            else:
                continue
            changed = True
    kept["family"] = {r for r in candidates if r not in chosen and r not in live}

    # Artifacts a kept run refers to (a fork reusing outputs) keep their run.
    folders = {safe_component(r): r for r in chosen}
    if folders:
        store.sql("CREATE OR REPLACE TEMP TABLE _gc_all AS SELECT unnest(?::VARCHAR[]) AS run_id", [list(chosen)])
        used = store.sql(
            "SELECT DISTINCT unnest(regexp_extract_all(CAST(payload AS VARCHAR), '\"artifacts/([^/\"]+)/', 1)) "
            "AS folder FROM events WHERE run_id NOT IN (SELECT run_id FROM _gc_all) "
            "AND CAST(payload AS VARCHAR) LIKE '%artifacts/%'"
        )["folder"].to_list()
        store.sql("DROP TABLE IF EXISTS _gc_all")
        for folder in used:
            run = folders.get(folder)
            if run is not None and run in chosen:
                del chosen[run]
                kept["referenced"].add(run)

    report.runs = sorted(chosen)
    report.events = int(sum(chosen.values()))
    report.kept = {k: sorted(v) for k, v in kept.items() if v}
    for run in chosen:
        files, size = _tree_size(store.layout.artifacts / safe_component(run))
        report.artifacts += files
        report.bytes += size
    return chosen


def _live_runs(store: FolderStore, runs: Iterable[str], known_files: set[Path] | None = None) -> set[str]:
    """Of ``runs``: those with events in open segments, driven by a process
    now (lease held), or, given the events files listed when the selection
    was made, with events in files that appeared since."""
    runs = set(runs)
    live = set(store._query.segment_run_ids()) & runs
    if known_files is not None:
        new = [p for p in eventfiles.event_files(store.layout) if p not in known_files]
        if new:
            con = duckdb.connect()
            try:
                con.execute("CREATE TEMP TABLE _gc_q AS SELECT unnest(?::VARCHAR[]) AS run_id", [sorted(runs)])
                found = con.execute(
                    f"SELECT DISTINCT run_id FROM read_parquet({path_list(new)}) "
                    "WHERE run_id IN (SELECT run_id FROM _gc_q)"
                ).fetchall()
            except duckdb.Error:
                found = [(r,) for r in runs]  # cannot tell: keep them all
            finally:
                con.close()
            live.update(r for (r,) in found)
    holder = getattr(store, "lease_holder", None)
    if holder is not None and (store.path / "leases").is_dir():
        live.update(r for r in runs if r not in live and holder(r) is not None)
    return live


def _keep_live(report: GcReport, chosen: dict[str, int], late: set[str]) -> None:
    for run in late:
        chosen.pop(run, None)
    report.kept["live"] = sorted(set(report.kept.get("live", [])) | late)


def _remove_events(store: FolderStore, chosen: dict[str, int], report: GcReport) -> None:
    layout = store.layout
    listed = eventfiles.event_files(layout)
    known = set(listed)
    files = eventfiles.mergeable_files(layout)
    con = duckdb.connect()
    try:
        con.execute("CREATE TEMP TABLE _gc_all AS SELECT unnest(?::VARCHAR[]) AS run_id", [list(chosen)])
        infos, damaged = eventfiles.describe(con, files)
        for path, error in damaged:
            eventfiles.quarantine_parquet(layout, path, error)
        readable = [i.path for i in infos]
        # A file whose segment is still there is being compacted by another
        # process: its runs are left for the next gc.
        busy = [p for p in listed if p not in set(files) and p.exists()]
        if busy:
            found = con.execute(
                f"SELECT DISTINCT run_id FROM read_parquet({path_list(busy)}) WHERE run_id IN (SELECT run_id FROM _gc_all)"
            ).fetchall()
            _keep_live(report, chosen, {r for (r,) in found})
        hits = []
        if readable:
            hits = con.execute(
                f"SELECT filename, list(DISTINCT run_id) FROM read_parquet({path_list(readable)}, filename = true) "
                "WHERE run_id IN (SELECT run_id FROM _gc_all) GROUP BY filename"
            ).fetchall()
        removed_runs: set[str] = set()
        removed_events = 0
        for filename, runs in sorted(hits):
            # The last check before this file changes: appended to or driven since selected?
            late = _live_runs(store, [r for r in runs if r in chosen], known)
            if late:
                _keep_live(report, chosen, late)
            runs = [r for r in runs if r in chosen]
            if not runs:
                continue
            removed, kept = eventfiles.rewrite_without_runs(layout, con, Path(filename), runs)
            removed_events += removed
            if kept:
                report.files_rewritten += 1
            else:
                report.files_removed += 1
            removed_runs.update(runs)
        # A run kept at a late check may have lost events in a file rewritten before it.
        raced = _live_runs(store, removed_runs | set(chosen), known) & removed_runs
        if raced:
            report.raced = sorted(raced)
            warnings.warn(
                f"kernelflow gc: run(s) {', '.join(sorted(raced))} were appended to while their old events "
                "were being removed; their history in the store is now incomplete",
                RuntimeWarning,
                stacklevel=3,
            )
    finally:
        con.close()
    report.runs = sorted(chosen)
    report.events = removed_events


def _remove_files(store: FolderStore, chosen: dict[str, int], report: GcReport) -> None:
    root = store.path
    artifacts = 0
    size = 0
    for run in chosen:
        folder = root / "artifacts" / safe_component(run)
        files, nbytes = _tree_size(folder)
        artifacts += files
        size += nbytes
        shutil.rmtree(folder, ignore_errors=True)
        answers = root / "answers" / safe_component(run)
        n, _ = _tree_size(answers)
        shutil.rmtree(answers, ignore_errors=True)
        report.other_files += n
        for lock in (root / "locks" / f"{_lock_name(run)}.lock", root / "leases" / f"{safe_component(run)}.lock"):
            report.other_files += _unlink_if_unlocked(lock)
    report.artifacts, report.bytes = artifacts, size


def _lock_name(run_id: str) -> str:
    # as FolderStore.run_lock names it
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)


def _unlink_if_unlocked(path: Path) -> int:
    """Remove a lock file nobody holds (held while unlinking, so no one gets it meanwhile)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # in use right now: left alone
        try:
            os.unlink(path)
        except FileNotFoundError:
            return 0
        return 1
    finally:
        os.close(fd)


def _tree_size(folder: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            try:
                size += os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue
            files += 1
    return files, size
