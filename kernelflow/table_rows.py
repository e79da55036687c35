"""A query result handed to people: a list of dicts to loop over, the polars table as ``.df``.

``kf.approvals()`` and ``kf.schedules()`` return one; each says what a text
index (``result["name"]``) means for it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl


class TableRows(Sequence[dict[str, Any]]):
    """The rows of ``df`` as dicts, in order; ``df`` itself for column work."""

    def __init__(self, df: pl.DataFrame) -> None:
        self.df = df
        """The rows as a polars DataFrame."""
        self._rows: list[dict[str, Any]] = list(df.iter_rows(named=True))

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._rows)

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, i: int | slice | str) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, str):
            return self._by_text(i)
        return self._rows[i]

    def _by_text(self, key: str) -> dict[str, Any]:
        raise TypeError(f"{type(self).__name__} is a list of rows; for the column {key!r} use .df[{key!r}]")
