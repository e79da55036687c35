"""The contract for things that watch runs live (progress displays, tracing)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from .events import Event
    from .run import Run


@runtime_checkable
class RunObserver(Protocol):
    """Told about a run's events as the engine records them.

    Called on the thread that drives the run, after the events are in the
    store; an observer must be quick (batch or throttle its own work) and
    must not raise (the engine reports and drops an observer that does).
    """

    def on_events(self, run: Run, events: Sequence[Event]) -> None:
        """New events of ``run``, in ``seq`` order."""

    def on_finish(self, run: Run) -> None:
        """The run has ended (``run.status`` is final) or suspended."""
