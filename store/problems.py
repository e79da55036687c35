"""Damaged files: how they are found, reported and put aside.

A store must stay readable when one of its files is damaged (a disk error, a
file truncated by a full disk or a bad copy, garbage written into a segment by
hand). The rule everywhere:

* readers skip what they cannot read, the damaged lines of a segment or a
  whole Parquet file, and keep reading everything else;
* each damaged file is reported once per store handle, with a
  :class:`StoreDamageWarning` whose message names the file and says what to
  do, and is listed by ``FolderStore.problems()``;
* nothing damaged is deleted: compaction moves a segment with damaged lines
  to ``quarantine/`` (after writing its readable events to Parquet), with a
  ``<name>.txt`` note beside it, and maintenance (``store.compact()``, gc,
  migrations) moves a Parquet file it cannot read there too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from .layout import Layout, utc_iso_now, write_atomic

QUARANTINE = "quarantine"
NOTE_SUFFIX = ".txt"
REQUIRED = ("event_id", "run_id", "seq", "ts", "type")  # as formats.GOOD_ROW


class StoreDamageWarning(RuntimeWarning):
    """A file of the store is damaged and was skipped; the message says which and what to do."""


@dataclass(frozen=True)
class Problem:
    """One damaged file, as ``FolderStore.problems()`` lists it."""

    path: str
    """Where the file is now (``quarantine/...`` once it was moved there)."""
    problem: str
    fix: str

    def message(self) -> str:
        return f"{self.problem}: {self.path}. {self.fix}"

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "problem": self.problem, "fix": self.fix}


def quarantine_folder(layout: Layout) -> Path:
    return layout.root / QUARANTINE


def count_lines(data: bytes | memoryview) -> int:
    """Non-blank newline-terminated lines in ``data`` (DuckDB's reader skips blank ones)."""
    return sum(1 for line in bytes(data).split(b"\n")[:-1] if line.strip())


def damaged_count(data: bytes | memoryview, events_read: int) -> int:
    """How many complete, non-blank lines of ``data`` were not events, given
    that DuckDB read ``events_read`` events from it. A fast upper bound of
    the lines first (blank lines are rare); exact only when it disagrees."""
    raw = data if isinstance(data, bytes) else bytes(data)
    quick = raw.count(b"\n") - raw.count(b"\n\n") - (1 if raw.startswith(b"\n") else 0)
    if quick <= events_read:  # quick >= the exact count >= events_read: no damage
        return 0
    return max(0, count_lines(raw) - events_read)


def is_event_line(line: bytes) -> bool:
    """Whether one line reads as an event (a JSON object with the required fields)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(record, dict) and all(record.get(k) is not None for k in REQUIRED)


def damaged_line_numbers(data: bytes | memoryview, first_line: int = 1, limit: int = 20) -> list[int]:
    """1-based numbers of the complete, non-blank lines that are not events (at most ``limit``)."""
    out: list[int] = []
    for number, line in enumerate(bytes(data).split(b"\n")[:-1], start=first_line):
        if line.strip() and not is_event_line(line):
            out.append(number)
            if len(out) >= limit:
                break
    return out


def describe_lines(numbers: list[int], total: int) -> str:
    if not numbers:
        return f"{total} line{'s' if total > 1 else ''}"
    shown = ", ".join(map(str, numbers))
    more = f" and {total - len(numbers)} more" if total > len(numbers) else ""
    return f"line{'s' if total > 1 else ''} {shown}{more}"


def quarantine(layout: Layout, path: Path, problem: str, fix: str) -> Path:
    """Move ``path`` into ``quarantine/`` with a note beside it; returns where it went.

    The move is a rename (same file system), so the file is either where it
    was or in quarantine, never lost. The note is written after the move: a
    quarantined file without a note is still listed by ``problems()``.
    """
    folder = quarantine_folder(layout)
    folder.mkdir(exist_ok=True)
    dest = folder / path.name
    n = 1
    while dest.exists():  # never replace an earlier quarantined file of the same name
        n += 1
        dest = folder / f"{path.stem}.{n}{path.suffix}"
    os.rename(path, dest)
    note = (
        f"{problem}\n"
        f"moved here from {path} at {utc_iso_now()} by kernelflow (pid {os.getpid()})\n"
        f"what to do: {fix}\n"
    )
    write_atomic(dest.with_name(dest.name + NOTE_SUFFIX), note.encode(), fsync=True)
    return dest


def quarantined(layout: Layout) -> list[Problem]:
    """Every file in ``quarantine/``, with what its note says."""
    folder = quarantine_folder(layout)
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    out = []
    present = set(names)
    for name in names:
        if name.startswith(".") or name.endswith(NOTE_SUFFIX):
            continue
        problem, fix = "a damaged file was put aside", f"see {folder / (name + NOTE_SUFFIX)}"
        if name + NOTE_SUFFIX in present:
            try:
                lines = (folder / (name + NOTE_SUFFIX)).read_text(errors="replace").splitlines()
            except OSError:
                lines = []
            if lines:
                problem = lines[0]
                fix = next((ln[len("what to do: "):] for ln in lines if ln.startswith("what to do: ")), fix)
        out.append(Problem(str(folder / name), problem, fix))
    return out
