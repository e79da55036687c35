"""Task outputs kept as files: tables as Parquet, everything else pickled.

``artifacts/<run_id>/<task_id>.<attempt>.<ext>``, written through a temporary
file and a rename so a reader never sees half an artifact. The value is
serialised in memory first, so an output that cannot be stored fails before
anything is written.
"""

from __future__ import annotations

import io
import pickle
import re
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

from kernelflow.exceptions import StoreError

from .layout import Layout, write_atomic

FORMATS = {"polars": "parquet", "arrow": "parquet", "pickle": "pkl"}
"""format -> file extension."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def safe_component(text: str) -> str:
    """A file-name-safe, reversible-enough spelling of a run or task id.

    Ids are usually identifiers already; anything else (``/``, spaces, a
    leading dot) is percent-encoded so it cannot escape its folder.
    """
    out = _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), text)
    if not out or out.startswith("."):
        out = "%2E" + out[1:] if out else "%00"
    return out


def serialise(value: Any) -> tuple[str, bytes]:
    """``(format, bytes)`` for a task output."""
    pl = sys.modules.get("polars")
    pa = sys.modules.get("pyarrow")
    if pl is not None and isinstance(value, pl.DataFrame):
        buf = io.BytesIO()
        value.write_parquet(buf, compression="zstd")
        return "polars", buf.getvalue()
    if pa is not None and isinstance(value, pa.Table):
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(value, buf, compression="zstd")
        return "arrow", buf.getvalue()
    try:
        # cloudpickle: classes and functions defined in a notebook are saved by value, so they load again.
        import cloudpickle

        return "pickle", cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # PicklingError, TypeError, AttributeError (lambdas, locks, ...)
        kind = f"{type(value).__module__}.{type(value).__qualname__}"
        raise TypeError(
            f"cannot store a value of type {kind}: it cannot be pickled ({type(exc).__name__}: {exc}). "
            "Return plain data (dict, list, numbers, strings), a polars DataFrame or a pyarrow Table "
            "instead, or make the type picklable."
        ) from exc


def save(
    layout: Layout,
    run_id: str,
    task_id: str,
    attempt: int,
    value: Any,
    *,
    fsync: bool,
    before_write: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Store ``value``; returns ``{"ref": <path relative to the store>, "format", "bytes"}``."""
    fmt, data = serialise(value)
    before_write()
    rel = PurePosixPath("artifacts", safe_component(run_id), f"{safe_component(task_id)}.{int(attempt)}.{FORMATS[fmt]}")
    target = layout.root / rel
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data, fsync=fsync)
    except OSError as exc:
        raise StoreError(
            f"could not save the output of task {task_id!r} (run {run_id}) to {target}: "
            f"{exc.strerror or exc}. Free disk space or fix permissions, then retry."
        ) from exc
    return {"ref": str(rel), "format": fmt, "bytes": len(data)}


def resolve(layout: Layout, ref: Mapping[str, Any] | str) -> tuple[Path, str]:
    """The file and format a reference points to, refusing paths outside the store."""
    rel = ref if isinstance(ref, str) else ref.get("ref")
    if not isinstance(rel, str) or not rel:
        raise StoreError(f"not an artifact reference: {ref!r} (expected {{'ref': 'artifacts/...', 'format': ...}})")
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or ".." in parts or not parts or parts[0] != "artifacts":
        raise StoreError(f"artifact reference {rel!r} points outside the store's artifacts folder")
    fmt = None if isinstance(ref, str) else ref.get("format")
    if fmt is None:
        fmt = "pickle" if rel.endswith(".pkl") else "polars"
    if fmt not in FORMATS:
        raise StoreError(f"artifact {rel!r} has unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return layout.root / rel, fmt


def load(layout: Layout, ref: Mapping[str, Any] | str) -> Any:
    path, fmt = resolve(layout, ref)
    try:
        if fmt == "polars":
            import polars as pl

            return pl.read_parquet(path)
        if fmt == "arrow":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        with open(path, "rb") as f:
            return pickle.load(f)
    except FileNotFoundError as exc:
        raise StoreError(
            f"artifact {path} does not exist: it was deleted (retention cleanup?) or the store "
            "was moved without its artifacts folder. Re-run the task to produce it again."
        ) from exc
