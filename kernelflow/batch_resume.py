"""Resuming a notebook: re-execute it so each ``wf.run()`` continues its earlier run.

``kernelflow resume RUN`` for a run started by a notebook (papermill via
``kernelflow run``) executes the notebook again with
``$KERNELFLOW_RESUME_BATCH`` set to the batch id of the first execution. In
that mode the n-th ``wf.run()`` of workflow W in the notebook is matched with
the n-th run of W in that batch: a run that succeeded is returned as it was
(nothing runs), any other is resumed, and runs beyond the recorded ones start
fresh. The notebook's other cells run again; its workflows' completed tasks
do not (papermill issue 824).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .model import Workflow
    from .run import Run

RESUME_ENV = "KERNELFLOW_RESUME_BATCH"
_calls: dict[str, int] = {}
_lock = threading.Lock()


def resumed_in_batch(workflow: Workflow, *, wait: bool, raise_on_failure: bool) -> Run | None:
    batch = os.environ.get(RESUME_ENV)
    if not batch:
        return None
    from .store_access import open_store

    with _lock:
        n = _calls.get(workflow.name, 0)
        _calls[workflow.name] = n + 1
    rows = open_store().sql(
        "SELECT run_id, status FROM runs r JOIN events e USING (run_id) WHERE e.type = 'RunStarted' "
        "AND e.payload->>'batch_id' = ? AND r.workflow = ? ORDER BY r.started_at, r.run_id",
        [batch, workflow.name],
    ).unique(subset="run_id", keep="first", maintain_order=True)
    if n >= rows.height:
        return None
    run_id, status = rows["run_id"][n], rows["status"][n]
    if status == "succeeded":
        return finished_run(run_id, workflow)
    from .resume import resume

    return resume(run_id, workflow=workflow, wait=wait, raise_on_failure=raise_on_failure)


def finished_run(run_id: str, workflow: Workflow) -> Run:
    """A handle on a finished run, rebuilt from the store (nothing runs)."""
    from .api import prepare_run
    from .resume import load_history, started_payload, stored_inputs
    from .store_access import open_store

    store = open_store()
    events, state = load_history(store, run_id)
    run = prepare_run(workflow, run_id, stored_inputs(store, started_payload(events), run_id), store)
    run.state = state
    run._seq = state.last_seq + 1
    run._done.set()
    return run
