"""Comparing two runs (``kf.diff(a, b)``): what changed in inputs, statuses and outputs.

Both runs are read as the reducer folds their stored events (their latest
state), and outputs are compared by value: inline ones as they were recorded,
artifacts loaded from the store (polars and pyarrow tables with ``equals``).
"""

from __future__ import annotations

import reprlib
import sys
from typing import TYPE_CHECKING, Any

from .snapshots import Snapshot, has_output, latest_snapshot

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

    from .store_api import EventStore

INPUT_ROW = "<input:{}>"
"""The ``task`` of the row comparing one input (``<input:day>``): angle
brackets cannot occur in a task id, so these rows never collide with a task's."""

_ABSENT: Any = object()
_short_repr = reprlib.Repr()
_short_repr.maxstring = 40
_short_repr.maxother = 40
_short_repr.maxlist = _short_repr.maxtuple = _short_repr.maxdict = _short_repr.maxset = 6
_short_repr.maxlevel = 3


def diff_runs(store: EventStore, run_a: Any, run_b: Any) -> pl.DataFrame:
    """Compare two runs of ``store``, one row per input and per task of either run.

    ``run_a``/``run_b`` are run ids (or anything with a ``run_id``, such as a
    :class:`~kernelflow.Run`). Columns:

    - ``task``: the task id, or ``<input:name>`` for a row comparing one input
      (these come first; ``status``/``duration`` columns are null for them);
    - ``status_a, status_b``: the task's status in each run (null: not in that run);
    - ``duration_ms_a, duration_ms_b``: its latest attempt, start to end;
    - ``output_a, output_b``: a short repr of the output (null: none known);
    - ``same_output``: the outputs are equal by value; null when there is
      nothing to compare (no output on either side, or values that cannot say);
    - ``changed``: the status differs or ``same_output`` is false.

    Raises :class:`~kernelflow.exceptions.RunNotFoundError` for an unknown run.
    Nothing is written to the store.
    """
    import polars as pl

    a = latest_snapshot(store, getattr(run_a, "run_id", run_a))
    b = latest_snapshot(store, getattr(run_b, "run_id", run_b))
    rows = _input_rows(a, b) + _task_rows(a, b)
    return pl.DataFrame(
        rows,
        schema={
            "task": pl.String,
            "status_a": pl.String,
            "status_b": pl.String,
            "duration_ms_a": pl.Float64,
            "duration_ms_b": pl.Float64,
            "output_a": pl.String,
            "output_b": pl.String,
            "same_output": pl.Boolean,
            "changed": pl.Boolean,
        },
        orient="row",
    )


def _input_rows(a: Snapshot, b: Snapshot) -> list[tuple[Any, ...]]:
    rows = []
    names = list(dict.fromkeys([*a.inputs, *b.inputs]))
    for name in names:
        va, vb = a.inputs.get(name, _ABSENT), b.inputs.get(name, _ABSENT)
        same = False if va is _ABSENT or vb is _ABSENT else same_value(va, vb)
        rows.append((INPUT_ROW.format(name), None, None, None, None, _show(va), _show(vb), same, same is False))
    return rows


def _task_rows(a: Snapshot, b: Snapshot) -> list[tuple[Any, ...]]:
    rows = []
    for tid in dict.fromkeys([*a.task_ids, *b.task_ids]):
        ta, tb = a.state.tasks.get(tid), b.state.tasks.get(tid)
        va = a.output(tid) if ta is not None and has_output(ta) else _ABSENT
        vb = b.output(tid) if tb is not None and has_output(tb) else _ABSENT
        same = None if va is _ABSENT or vb is _ABSENT else same_value(va, vb)
        status_a = ta.status if ta is not None else None
        status_b = tb.status if tb is not None else None
        rows.append(
            (
                tid,
                status_a,
                status_b,
                _duration_ms(ta),
                _duration_ms(tb),
                _show(va),
                _show(vb),
                same,
                status_a != status_b or same is False,
            )
        )
    return rows


def same_value(a: Any, b: Any) -> bool | None:
    """Whether two outputs are equal by value; None when the values cannot say
    (an ``==`` that raises or gives no single truth value, such as a dict
    holding DataFrames)."""
    pl = sys.modules.get("polars")
    pa = sys.modules.get("pyarrow")
    for module, kinds in ((pl, ("DataFrame", "Series")), (pa, ("Table", "Array"))):
        if module is None:
            continue
        for kind in kinds:
            cls = getattr(module, kind)
            if isinstance(a, cls) or isinstance(b, cls):
                return isinstance(a, cls) and isinstance(b, cls) and bool(a.equals(b))
    np = sys.modules.get("numpy")
    if np is not None and (isinstance(a, np.ndarray) or isinstance(b, np.ndarray)):
        return bool(np.array_equal(a, b))
    try:
        result = a == b
    except Exception:  # noqa: BLE001 - an __eq__ that refuses means "cannot say", not a failure
        return None
    return result if isinstance(result, bool) else None


def _show(value: Any) -> str | None:
    if value is _ABSENT:
        return None
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple) and type(value).__name__ in ("DataFrame", "Table"):
        return f"{type(value).__name__}({' × '.join(map(str, shape))})"
    return _short_repr.repr(value)


def _duration_ms(task: Any) -> float | None:
    if task is None or task.started_at is None or task.ended_at is None:
        return None
    return (task.ended_at - task.started_at) / 1000
