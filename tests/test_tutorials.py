"""The tutorial notebooks run top to bottom in a real kernel and show what they teach."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import nbformat
import pytest
from kernelflow.store import FolderStore
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
CONTROL_FLOW = ROOT / "notebooks" / "02-control-flow.ipynb"


def _cell(nb, start: str):
    """The first code cell whose source starts with ``start``."""
    return next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(start))


def _text(cell) -> str:
    """Everything a cell printed or displayed as plain text."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out["text"])
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
    return "\n".join(parts)


def test_the_control_flow_notebook_is_saved_clean():
    """Small, outputs cleared, nbformat 4, a python3 kernel: what a reader should get from git."""
    nb = nbformat.read(CONTROL_FLOW, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert code[0].source.startswith("%load_ext kernelflow")
    assert CONTROL_FLOW.stat().st_size < 30_000
    # Every kind of step is taught, each with an explanation before it.
    sources = "\n".join(c.source for c in code)
    for needle in ("when=", "kf.switch(", "max_parallel=", "back_to=", "max_iterations", "kf.subworkflow(",
                   "backoff=", "fallback=", "compensate=", "kf.RunFailedError", "continue_on_failure=True",
                   "kf.shell([", "forEach:", "python:parse", "%%kfsql"):  # fmt: skip
        assert needle in sources, needle
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 10


@pytest.mark.slow
def test_the_control_flow_notebook_runs_top_to_bottom(tmp_path, kernel_env):
    workdir = tmp_path / "work"
    workdir.mkdir()
    copy = workdir / CONTROL_FLOW.name
    shutil.copy(CONTROL_FLOW, copy)
    nb = nbformat.read(copy, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    errors = [f"{o.ename}: {o.evalue}" for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []

    # 1. when + switch
    triage = _text(_cell(nb, "small = triage.run"))
    assert "small: US carrier | review skipped" in triage
    assert "big: courier | review succeeded -> a human looks at 250" in triage
    # 2. forEach with maxParallel
    fanout = _text(_cell(nb, "run = fanout.run"))
    assert "'outputs': [0, 1, 4, 9, 16, 25], 'count': 6, 'succeeded': 6" in fanout and "total: 55" in fanout
    # 3. back_to: two jumps, then done
    assert "job-7 done after 3 polls" in _text(_cell(nb, "run = poll.run"))
    # 4. sub-workflow
    assert "shipped with LABEL-A007" in _text(_cell(nb, "print(fulfil.run"))
    # 5. retries then success; retries exhausted then the fallback
    resilient = _text(_cell(nb, "run = resilient.run"))
    assert "data priced in EUR from the cache" in resilient
    assert "download ┆ succeeded ┆ 3" in resilient
    # 6. compensation, in reverse order, after the failure was caught
    booking = _text(_cell(nb, "try:\n    booking.run"))
    assert "task 'car' raised RuntimeError: no cars left" in booking
    assert "['cancel hotel by the sea', 'cancel flight to Lisbon']" in booking
    assert booking.count("CompensationStarted") == 2 and booking.count("CompensationSucceeded") == 2
    # 7. continue_on_failure
    digest = _text(_cell(nb, "run = digest.run"))
    assert "succeeded {'rows': 3, 'enriched': False}" in digest and "enrich  ┆ failed" in digest
    # 8. + 9. the Python cell and its YAML twin give the same results
    assert "42 [0, 1, 4, 9, 16]" in _text(_cell(nb, "py = numbers_py.run"))
    assert "42 [0, 1, 4, 9, 16]" in _text(_cell(nb, "ym = numbers_yaml.run"))
    yaml_cell = _cell(nb, "%%workflow numbers_yaml")
    assert "square ← parse" in _text(yaml_cell)
    # 10. %%kfsql over the events
    counts = ast.literal_eval(_text(_cell(nb, "dict(counts.iter_rows())")))
    assert counts["CompensationSucceeded"] == 2 and counts["FallbackUsed"] == 1
    assert counts["LoopJumped"] == 2 and counts["TaskReset"] == 2 and counts["SwitchMatched"] == 2
    assert counts["RunFailed"] == 1 and counts["RunSucceeded"] == counts["RunStarted"] - 1

    # The store agrees: every workflow of the notebook ran, the child run names its parent.
    store = FolderStore(kernel_env)
    runs = store.sql("SELECT workflow, status FROM runs ORDER BY started_at").rows()
    assert [w for w, _ in runs] == ["triage", "triage", "fanout", "poll", "fulfil", "shipping", "resilient",
                                    "booking", "digest", "numbers_py", "numbers_yaml"]  # fmt: skip
    assert [w for w, s in runs if s != "succeeded"] == ["booking"]
    child = store.sql("SELECT payload FROM events WHERE type = 'RunStarted' AND workflow = 'shipping'")
    assert json.loads(child["payload"][0])["parent_task"] == "ship"
