"""The contract between the core and a store plugin.

The core never imports a concrete store: it asks the plugin host for one
(hook ``kernelflow_open_store``) and talks to it through this protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ContextManager, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

    from .events import Event
    from .health import Health


@runtime_checkable
class EventStore(Protocol):
    """Where events, workflow definitions and artifacts are kept.

    Implementations must let several processes append and query at once
    without lock errors, and must hand each appended event to the OS before
    :meth:`append` returns, so a killed process loses nothing it appended.
    """

    location: str
    """Human-readable location (a path or URL), used in messages."""

    circuits: Any
    """Circuit-breaker state shared by every run and process on this store: a
    CircuitTable-like object (see ``kernelflow.store.circuits.CircuitTable``)
    with ``transact(name, update)`` (an exclusive read-modify-write across
    threads and processes; ``update(state) -> (result, new_state)``, ``None``
    deletes), ``read(name)`` and ``read_all()``. States are the JSON-able dicts
    of :mod:`kernelflow.circuit_breaker`."""

    def append(self, event: Event) -> None:
        """Record one event durably (at least handed to the OS) before returning."""

    def read_run(self, run_id: str) -> list[Event]:
        """All events of one run, ordered by ``seq``; empty if the run is unknown."""

    def sql(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> pl.DataFrame:
        """Run a SQL query over the store's views and return a polars DataFrame."""

    def register_workflow(self, definition: Mapping[str, Any]) -> None:
        """Record a workflow version's JSON definition unless already recorded."""

    def save_artifact(self, run_id: str, task_id: str, attempt: int, value: Any) -> Mapping[str, Any]:
        """Persist an output too big or too rich for an event payload.

        Returns a JSON-safe reference (at least ``{"ref": str, "format": str}``)
        that :meth:`load_artifact` accepts. Raises ``TypeError`` (or the
        serialiser's error) if the value cannot be stored.
        """

    def load_artifact(self, ref: Mapping[str, Any]) -> Any:
        """Load a value saved by :meth:`save_artifact`."""

    def run_lock(self, run_id: str) -> ContextManager[None]:
        """An exclusive lock, across processes, for appending to a run that no
        engine drives (dead letter actions on a finished run)."""

    def lease(self, run_id: str) -> Any:
        """The exclusive right to drive (append to) ``run_id``: an object with
        ``release()``, or None if another driver holds it. Must be dropped
        when the holding process dies (``flock`` in the folder store)."""

    def lease_holder(self, run_id: str) -> Mapping[str, Any] | None:
        """Who holds ``run_id``'s lease (pid, host, since), or None."""

    @property
    def answers(self) -> Any:
        """Approval answers claimed by any process: ``claim(run_id, task,
        iteration, answer) -> None | existing``, ``read(...)``, ``names(run_id)``
        (see ``kernelflow.store.answers.Answers``)."""

    def close(self) -> None:
        """Release what the store holds in this process (files, threads)."""

    def health(self) -> Health:
        """Optional: what ``kernelflow doctor`` reports about this store, as a
        :class:`kernelflow.health.Health` with ``component="store"``: where it
        is, its schema version, its size, and whether this process can really
        write there (``status="error"`` with a ``fix`` when it cannot, or when
        the schema is newer than this kernelflow reads). Must not create the
        store nor leave anything behind. Callers look it up with
        ``getattr(store, "health", None)``: stores written before it existed
        are reported as "no health check"."""
