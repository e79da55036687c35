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
        for run_id, (handle, workflow, names, expiry) in items:
            present = set(store.answers.names(run_id))
            if not (present & set(names)) and (expiry is None or expiry > now):
                continue
            with _lock:
                _watched.pop(run_id, None)
            _continue(run_id, workflow, handle())


def _continue(run_id: str, workflow: Any, run: Run | None) -> None:
    from .resume import ResumeError, resume

    try:
        resume(run_id, workflow=workflow, wait=False, release_breakpoints=False, only_if="waiting",
               raise_on_failure=run.raise_on_failure if run is not None else True, into=run)  # fmt: skip
    except ResumeError:
        pass  # resumed elsewhere, or finished: nothing to do here
    except Exception as exc:  # noqa: BLE001 - a background thread must not die silently
        import warnings

        warnings.warn(f"kernelflow could not continue run {run_id} after its approval: {exc}", RuntimeWarning, stacklevel=1)
