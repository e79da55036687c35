"""Circuit breakers from the notebook: list them, look at one, override it.

``kf.circuits()`` lists every circuit the store knows; ``kf.circuit(name)``
gives a handle to open, close or reset one by hand. The state lives in the
store (``circuits/``), so what you do here is seen at once by every run and
process using the same store.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from . import circuit_breaker as cb
from .durations import parse_duration
from .exceptions import OptionError, StoreError
from .store_access import open_store

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

    from .store_api import EventStore

COLUMNS = ("name", "state", "failures_in_window", "open_until", "probes_in_flight", "updated_at")


def _table(store: str | os.PathLike[str] | None) -> Any:
    # The same store kf.sql() uses, unless one is named.
    opened: EventStore = open_store(store)
    table = getattr(opened, "circuits", None)
    if table is None:
        raise StoreError(
            f"the store at {opened.location} does not keep circuit-breaker state "
            "(its plugin has no `circuits` table); use a kernelflow folder store"
        )
    return table


def _utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc)


def circuits(*, store: str | os.PathLike[str] | None = None) -> pl.DataFrame:
    """One row per circuit the store knows, sorted by name.

    Columns: ``name``, ``state`` (``closed``/``open``/``half_open``, as a call
    made now would find it), ``failures_in_window``, ``open_until`` (UTC
    datetime; null when not open, or open until closed by hand),
    ``probes_in_flight`` and ``updated_at`` (UTC datetime).
    """
    import polars as pl

    now = time.time()
    rows: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    for name, state in sorted(_table(store).read_all().items()):
        info = cb.describe(state, None, now)
        rows["name"].append(name)
        rows["state"].append(info["state"])
        rows["failures_in_window"].append(info["failures_in_window"])
        rows["open_until"].append(_utc(info["open_until"]) if info["state"] == cb.OPEN else None)
        rows["probes_in_flight"].append(info["probes_in_flight"])
        rows["updated_at"].append(_utc(info["updated_at"]))
    when = pl.Datetime("us", "UTC")
    return pl.DataFrame(
        rows,
        schema={
            "name": pl.String,
            "state": pl.String,
            "failures_in_window": pl.Int64,
            "open_until": when,
            "probes_in_flight": pl.Int64,
            "updated_at": when,
        },
    )


class Circuit:
    """A handle on one circuit breaker of a store.

    Cheap to make and holds nothing: every property and method reads or
    changes the shared state in the store at that moment.
    """

    def __init__(self, name: str, *, store: str | os.PathLike[str] | None = None) -> None:
        if not isinstance(name, str) or not name.strip():
            raise OptionError(f"a circuit name must be a non-empty string, got {name!r}")
        self.name = name
        self._store = store

    def __repr__(self) -> str:
        return f"<Circuit {self.name!r}: {self.state}>"

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` (an unknown circuit is closed)."""
        return self.info()["state"]

    def info(self) -> dict[str, Any]:
        """Everything known about the circuit now (see
        :func:`kernelflow.circuit_breaker.describe`), plus ``name`` and
        ``known`` (False if no call or override has touched it yet)."""
        state = _table(self._store).read(self.name)
        return {"name": self.name, "known": state is not None, **cb.describe(state, None, time.time())}

    def open(self, duration: float | str | None = None) -> None:
        """Refuse calls now: for ``duration`` (seconds, or ``"30s"``, ``"5m"``),
        after which probes are let through as usual; or, with ``None``, until
        :meth:`close` or :meth:`reset`."""
        seconds = None if duration is None else self._duration(duration)
        self._force("open", seconds)

    def close(self) -> None:
        """Let calls through again now; recorded failures are cleared."""
        self._force("close")

    def reset(self) -> None:
        """Forget the circuit entirely (it is no longer listed); the next call
        finds it closed with no history."""
        self._force("reset")

    def _force(self, action: str, duration: float | None = None) -> None:
        now = time.time()
        _table(self._store).transact(self.name, lambda state: cb.force(state, action, now, duration))

    @staticmethod
    def _duration(value: float | str) -> float:
        try:
            return parse_duration(value, what="the duration to keep the circuit open")
        except ValueError as exc:
            raise OptionError(str(exc)) from None


def circuit(name: str, *, store: str | os.PathLike[str] | None = None) -> Circuit:
    """A handle on circuit ``name`` of the store (default: the one ``kf.sql`` uses)."""
    return Circuit(name, store=store)


__all__ = ["Circuit", "circuit", "circuits"]
