"""One background thread that keeps widgets true to the store.

A widget showing a run nobody in this process drives (answered from the CLI,
resumed by another kernel, finished while the browser was away) re-reads the
store now and then. One shared thread serves every such widget; it holds them
weakly, so a widget the notebook dropped stops being polled.
"""

from __future__ import annotations

import atexit
import threading
import warnings
import weakref
from typing import Protocol

POLL_S = 0.5


class Polled(Protocol):
    def poll(self) -> bool:
        """Re-read the store; return False when there is nothing left to watch."""


_lock = threading.Lock()
_stop = threading.Event()
_widgets: "weakref.WeakSet[Polled]" = weakref.WeakSet()
_thread: threading.Thread | None = None


def watch(widget: Polled) -> None:
    """Call ``widget.poll()`` every :data:`POLL_S` seconds until it returns False."""
    global _thread
    with _lock:
        _widgets.add(widget)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_loop, name="kernelflow-widget-poller", daemon=True)
            _thread.start()


def unwatch(widget: Polled) -> None:
    with _lock:
        _widgets.discard(widget)


def clear() -> None:
    """Stop polling every widget (a test's store goes away with the test)."""
    with _lock:
        _widgets.clear()


def watching(widget: Polled) -> bool:
    with _lock:
        return widget in _widgets


@atexit.register
def _stop_polling() -> None:
    # A daemon thread caught inside DuckDB or a comm send while the
    # interpreter tears down can abort the process: let it finish first.
    _stop.set()
    thread = _thread
    if thread is not None and thread.is_alive():
        thread.join(timeout=2 * POLL_S + 1)


def _loop() -> None:
    while not _stop.wait(POLL_S):
        with _lock:
            widgets = list(_widgets)
        for widget in widgets:
            if _stop.is_set():
                return
            try:
                keep = widget.poll()
            except Exception as exc:  # noqa: BLE001 - one widget's trouble must not stop the others
                warnings.warn(f"kernelflow widget {type(widget).__name__} stopped updating: {exc}",
                              RuntimeWarning, stacklevel=1)  # fmt: skip
                keep = False
            if not keep:
                unwatch(widget)
