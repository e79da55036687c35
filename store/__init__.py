"""kernelflow's built-in event store: a folder of per-process JSON-lines
segments and compacted Parquet files, queried with DuckDB in memory.

See ``docs/store.md`` for the layout, the concurrency design and the views.
"""

from __future__ import annotations

from .circuits import CircuitTable
from .folder import FolderStore, fsync_from_env
from .layout import MIGRATIONS, SCHEMA_VERSION, default_location
from .problems import StoreDamageWarning

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "CircuitTable",
    "FolderStore",
    "StoreDamageWarning",
    "default_location",
    "fsync_from_env",
]
