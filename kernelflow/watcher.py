"""Suspended runs in an interactive session continue by themselves once answered.

When a run in a notebook suspends at a gate, this process keeps a note of it
(not the run: nothing is held but the run id and its gates). A daemon thread
looks for answers every :data:`POLL_S` seconds — one directory listing per
run — and for gates that expire, and resumes the run here when one comes,
whether it was answered in this notebook, another one, a script or the CLI.
Batch processes (``kernelflow run``, papermill with ``KERNELFLOW_BATCH_ID``)
do not watch: they end, and ``kernelflow resume`` continues the run.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from .events import now_us
from .store.artifacts import safe_component

if TYPE_CHECKING:  # pragma: no cover
    from .run import Run

POLL_S = 0.5

_lock = threading.Lock()
# run_id -> (the user's Run handle, weakly: it is updated in place when the run goes on;
#            the workflow; {answer file: 1}; earliest expiry)
_watched: dict[str, tuple[Any, Any, dict[str, int], int | None]] = {}
_thread: threading.Thread | None = None
# approve() and the poller may both see an answer at once; whichever continues
# the run does it under this lock, so the user's handle is re-initialised
# before the other one looks (and finds nothing left to do).
_continuing = threading.Lock()


def batch_mode() -> bool:
    """True in a batch run (``kernelflow run``, or ``$KERNELFLOW_BATCH_ID`` set)."""
    return bool(os.environ.get("KERNELFLOW_BATCH_ID"))


def watch_if_interactive(run: Run) -> None:
    if batch_mode() or os.environ.get("KERNELFLOW_NO_WATCH"):
        return
    names = {}
    expiry = None
    for tid, gate in run.state.waiting.items():
        if gate.get("kind") != "approval":
            continue
        names[f"{safe_component(tid)}.{int(gate['seq'])}.json"] = 1
        if gate.get("expires_at") is not None:
            expiry = gate["expires_at"] if expiry is None else min(expiry, gate["expires_at"])
    if not names:
        return  # breakpoints wait for the user's run.resume()
    global _thread
    with _lock:
        _watched[run.run_id] = (weakref.ref(run), run.workflow, names, expiry)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_loop, name="kernelflow-gate-watcher", daemon=True)
            _thread.start()


def forget(run_id: str) -> Run | None:
    """Stop watching ``run_id`` (someone continues it); returns the user's handle if alive."""
    with _lock:
        entry = _watched.pop(run_id, None)
    return entry[0]() if entry is not None else None


def watched() -> list[str]:
    """Run ids this process waits on."""
    with _lock:
        return list(_watched)


def _loop() -> None:
    import time

    from .store_access import open_store

    while True:
        time.sleep(POLL_S)
        with _lock:
            items = list(_watched.items())
        if not items:
            continue
        try:
            store = open_store()
        except Exception:  # noqa: BLE001 - the store moved away; try again later
            continue
        now = now_us()
        for run_id, (_, _, names, expiry) in items:
            present = set(store.answers.names(run_id))
            if not (present & set(names)) and (expiry is None or expiry > now):
                continue
            try:
                continue_here(run_id)
            except Exception as exc:  # noqa: BLE001 - a background thread must not die silently
                import warnings

                warnings.warn(f"kernelflow could not continue run {run_id} after its approval: {exc}",
                              RuntimeWarning, stacklevel=1)  # fmt: skip


def continue_here(run_id: str) -> Run | None:
    """Continue suspended run ``run_id`` in this process, into the user's handle
    when this process watches it; ``None`` when there is nothing to continue
    here (resumed elsewhere, finished, or its code is not loaded).

    While another driver holds the run (an approval being recorded), the run
    stays watched and the next poll tries again.
    """
    from .resume import ResumeError, RunBusyError, resume

    with _continuing:
        with _lock:
            entry = _watched.get(run_id)
        handle = entry[0]() if entry is not None else None
        try:
            return resume(run_id, workflow=entry[1] if entry is not None else None, wait=False,
                          release_breakpoints=False, only_if="waiting", into=handle,
                          raise_on_failure=handle.raise_on_failure if handle is not None else True)  # fmt: skip
        except RunBusyError:
            return None
        except ResumeError:
            forget(run_id)  # resumed elsewhere, or finished: nothing left to watch
            return None
