"""The on-disk formats of events, as DuckDB reads them.

Segments (``*.jsonl``) hold one ``Event.to_json_line()`` per line. Compacted
files (``*.parquet``) hold the same records with the same column names and
types (``ts`` stays BIGINT UTC microseconds, ``payload``/``actor`` JSON text),
sorted by ``run_id, seq``. Queries see both as ``_events_raw``, where ``ts`` is
renamed ``ts_us`` so that the public ``events.ts`` can be a TIMESTAMP.

Schema 2 writes every Parquet file the same way (:func:`parquet_copy_options`):
sorted by ``run_id, seq``, zstd, row groups of :data:`ROW_GROUP_ROWS`, and the
key-value metadata ``kernelflow_events = "2"`` that tells a schema-2 file from
an older one. DuckDB writes a bloom filter for ``run_id`` (it is dictionary
encoded), so a ``run_id = ?`` filter skips every row group, and every file,
that does not hold the run; the sort keeps one run's rows together.
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


EVENTS_FORMAT_KEY = "kernelflow_events"
EVENTS_FORMAT = "2"
"""Key-value metadata of a schema-2 events file: ``{EVENTS_FORMAT_KEY: EVENTS_FORMAT}``."""

ROW_GROUP_ROWS = 122_880
"""Rows per Parquet row group. Measured (docs/store.md): with bloom filters on
``run_id``, smaller row groups make a one-run lookup slower, not faster
(4,096 rows: ~4x slower on 10M events), because every row group's metadata
and filter are checked; DuckDB's own default is pinned here so that the
layout does not change with DuckDB's defaults."""


def parquet_copy_options() -> str:
    """The options of ``COPY ... TO`` for every events file this code writes."""
    return (
        f"FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_ROWS}, "
        f"KV_METADATA {{{EVENTS_FORMAT_KEY}: {quote(EVENTS_FORMAT)}}}"
    )


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
    drops, as it drops a JSON object that is not an event (no ``event_id``,
    ``run_id``, ``seq``, ``ts`` or ``type``); every other line is read as written.
    Empty lines produce no row at all.
    """
    columns = "{" + ", ".join(f"{quote(c)}: {quote(t)}" for c, t in COLUMN_TYPES.items()) + "}"
    return (
        f"SELECT * FROM read_json({path_list(paths)}, format = 'newline_delimited', "
        f"columns = {columns}, ignore_errors = true, maximum_object_size = {MAX_EVENT_BYTES + 1024}) "
        f"WHERE {GOOD_ROW}"
    )


GOOD_ROW = "event_id IS NOT NULL AND run_id IS NOT NULL AND seq IS NOT NULL AND ts IS NOT NULL AND type IS NOT NULL"
"""What a segment line must have to be an event (others are counted as damaged); an
event without its time cannot be read back (``Event.from_dict``) nor placed in time."""


def parquet_records_sql(paths: list[Path]) -> str:
    """Records of Parquet events files with the column names and types they have on disk."""
    cols = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in COLUMN_TYPES.items())
    return f"SELECT {cols} FROM read_parquet({path_list(paths)})"


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
