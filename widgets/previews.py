"""Small, safe HTML previews of values for widget panels.

A preview is for the eye: a few rows of a table, the start of a long repr.
Everything is escaped (values are user data), and sizes are bounded so a
huge output cannot bloat the widget state saved into the notebook.
"""

from __future__ import annotations

import html
import json
from typing import Any

MAX_ROWS = 10
MAX_COLUMNS = 12
MAX_CHARS = 2_000


def short_text(value: Any, limit: int = MAX_CHARS) -> str:
    """``repr`` (or JSON for plain data), cut to ``limit`` characters."""
    try:
        text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else repr(value)
    except Exception:  # noqa: BLE001 - a repr that raises is still something to show
        text = f"<{type(value).__name__} (repr failed)>"
    return text if len(text) <= limit else text[:limit] + f"… ({len(text):,} characters)"


def _frame(value: Any) -> Any:
    """A polars DataFrame for tabular values (polars, pyarrow, pandas), else None."""
    import polars as pl

    if isinstance(value, pl.DataFrame):
        return value
    if isinstance(value, pl.LazyFrame):
        return None  # collecting would run the query: not for a preview
    module = type(value).__module__
    try:
        if module.startswith("pyarrow") and hasattr(value, "num_rows"):
            return pl.from_arrow(value)
        if module.startswith("pandas") and hasattr(value, "columns"):
            return pl.from_pandas(value)
    except Exception:  # noqa: BLE001 - fall back to the repr
        return None
    return None


def table_html(frame: Any) -> str:
    """The first rows and columns of a polars DataFrame as an HTML table."""
    rows, cols = frame.shape
    shown = frame.head(MAX_ROWS).select(frame.columns[:MAX_COLUMNS])
    head = "".join(
        f"<th>{html.escape(name)}<br><small>{html.escape(str(dtype))}</small></th>"
        for name, dtype in zip(shown.columns, shown.dtypes)
    )
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(short_text(v, 80) if not isinstance(v, str) else v[:80])}</td>" for v in row) + "</tr>"
        for row in shown.iter_rows()
    )
    more = []
    if rows > MAX_ROWS:
        more.append(f"{rows - MAX_ROWS:,} more rows")
    if cols > MAX_COLUMNS:
        more.append(f"{cols - MAX_COLUMNS:,} more columns")
    caption = f"{rows:,} rows × {cols:,} columns" + (f" ({', '.join(more)})" if more else "")
    return f"<table class='kf-table'><caption>{caption}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def value_html(value: Any) -> str:
    """A table for tabular values, else the escaped, shortened repr in ``<pre>``."""
    frame = _frame(value)
    if frame is not None:
        return table_html(frame)
    return f"<pre>{html.escape(short_text(value))}</pre>"
