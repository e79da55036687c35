"""The on-disk formats of events, as DuckDB reads them.

Segments (``*.jsonl``) hold one ``Event.to_json_line()`` per line. Compacted
files (``*.parquet``) hold the same records with the same column names and
types (``ts`` stays BIGINT UTC microseconds, ``payload``/``actor`` JSON text),
sorted by ``run_id, seq``. Queries see both as ``_events_raw``, where ``ts`` is
renamed ``ts_us`` so that the public ``events.ts`` can be a TIMESTAMP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from kernelflow.events import EVENT_FIELDS

from .segments import MAX_EVENT_BYTES

COLUMN_TYPES: dict[str, str] = {
    "event_id": "VARCHAR",
    "run_id": "VARCHAR",
    "seq": "BIGINT",
    "ts": "BIGINT",
    "type": "VARCHAR",
    "workflow": "VARCHAR",
    "workflow_version": "VARCHAR",
    "task_id": "VARCHAR",
    "attempt": "BIGINT",
    "payload": "JSON",
    "actor": "JSON",
}
assert tuple(COLUMN_TYPES) == EVENT_FIELDS, "store/formats.py is out of step with kernelflow.events.EVENT_FIELDS"

RAW_COLUMNS = tuple("ts_us" if c == "ts" else c for c in EVENT_FIELDS)
"""Columns of ``_events_raw``, in order."""


def quote(text: str | Path) -> str:
    """A SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def path_list(paths: Iterable[Path]) -> str:
    return "[" + ", ".join(quote(p) for p in paths) + "]"


def _raw_select(source: str) -> str:
    cols = ", ".join(
        f"CAST({c} AS {t}) AS {'ts_us' if c == 'ts' else c}" for c, t in COLUMN_TYPES.items()
    )
    return f"SELECT {cols} FROM {source}"


def segment_records_sql(paths: list[Path]) -> str:
    """Records of segment files, with the column names they have on disk.

    ``ignore_errors`` turns a line that is not a JSON object (a torn last line
    of a killed writer, or garbage) into an all-NULL row, which the filter
    drops; every other line is read as written.
    """
    columns = "{" + ", ".join(f"{quote(c)}: {quote(t)}" for c, t in COLUMN_TYPES.items()) + "}"
    return (
        f"SELECT * FROM read_json({path_list(paths)}, format = 'newline_delimited', "
        f"columns = {columns}, ignore_errors = true, maximum_object_size = {MAX_EVENT_BYTES + 1024}) "
        "WHERE event_id IS NOT NULL"
    )


def segments_raw_sql(paths: list[Path]) -> str:
    """Segment files as ``_events_raw`` rows (or a typed empty relation)."""
    if not paths:
        return empty_raw_sql()
    return _raw_select(f"({segment_records_sql(paths)})")


def parquet_raw_sql(paths: list[Path]) -> str:
    """Compacted files as ``_events_raw`` rows."""
    if not paths:
        return empty_raw_sql()
    return _raw_select(f"read_parquet({path_list(paths)})")


def empty_raw_sql() -> str:
    cols = ", ".join(f"NULL::{t} AS {'ts_us' if c == 'ts' else c}" for c, t in COLUMN_TYPES.items())
    return f"SELECT {cols} WHERE false"
