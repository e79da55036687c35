"""The dead letter queue: failed runs listed, retried (same or changed inputs), discarded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import kernelflow as kf
from kernelflow.dead_letters import DeadLetterError


def _checked(x: int) -> int:
    if x < 0:
        raise ValueError(f"x must be >= 0, got {x}")
    return x * 2


def make_workflow() -> kf.Workflow:
    def double(x: int) -> int:
        return _checked(x)

    return kf.workflow("dl_flow", [double])


def test_failed_runs_are_listed_and_succeeded_ones_are_not():
    wf = make_workflow()
    ok = wf.run(x=1)
    bad = wf.run(x=-1, raise_on_failure=False)
    queue = kf.dlq()
    assert queue["run_id"].to_list() == [bad.run_id]
    row = queue.row(0, named=True)
    assert row["workflow"] == "dl_flow"
    assert json.loads(row["inputs"]) == {"x": -1}
    assert "ValueError: x must be >= 0, got -1" in row["error"]
    assert ok.run_id not in queue["run_id"].to_list()
    assert kf.dlq("other_flow").height == 0


def test_retry_with_changed_inputs_runs_again_and_leaves_the_queue():
    wf = make_workflow()
    bad = wf.run(x=-3, raise_on_failure=False)
    again = kf.dlq.retry(bad.run_id, x=4)
    assert again.status == "succeeded" and again.output == 8
    assert again.run_id != bad.run_id
    assert kf.dlq().height == 0
    decided = kf.sql("SELECT type, payload FROM events WHERE run_id = ? ORDER BY seq", [bad.run_id])
    assert decided["type"].to_list()[-2:] == ["RunFailed", "DeadLetterRetried"]
    payload = json.loads(decided["payload"][-1])
    assert payload["new_run_id"] == again.run_id and payload["inputs"] == {"x": 4}
    # the fold of the failed run still says failed: the decision is history, not a status
    assert kf.fold(kf.open_store().read_run(bad.run_id)).status == "failed"


def test_retry_with_the_same_inputs_fails_again_into_the_queue():
    wf = make_workflow()
    bad = wf.run(x=-1, raise_on_failure=False)
    with pytest.raises(kf.RunFailedError):
        kf.dlq.retry(bad.run_id)
    assert len(kf.dlq()) == 1 and kf.dlq()["run_id"][0] != bad.run_id


def test_discard_is_recorded_and_a_second_decision_is_refused():
    wf = make_workflow()
    bad = wf.run(x=-1, raise_on_failure=False)
    kf.dlq.discard(bad.run_id, reason="bad upstream data")
    assert kf.dlq().height == 0
    last = kf.sql("SELECT type, payload FROM events WHERE run_id = ? ORDER BY seq DESC LIMIT 1", [bad.run_id])
    assert last["type"][0] == "DeadLetterDiscarded"
    assert json.loads(last["payload"][0]) == {"reason": "bad upstream data"}
    with pytest.raises(DeadLetterError, match="already retried or discarded"):
        kf.dlq.retry(bad.run_id)


def test_runs_that_are_not_dead_letters_are_refused_clearly():
    wf = make_workflow()
    ok = wf.run(x=1)
    with pytest.raises(DeadLetterError, match="it did not fail"):
        kf.dlq.discard(ok.run_id)
    with pytest.raises(DeadLetterError, match="no run 'r-nope'"):
        kf.dlq.retry("r-nope")


def test_a_failed_sub_workflow_child_is_not_a_dead_letter_its_parent_is():
    def inner(x: int) -> int:
        return _checked(x)

    child = kf.workflow("dl_child", [inner])
    ns = {"kf": kf, "dl_child": child}
    from kernelflow.cell_compiler import compile_cell

    parent = compile_cell("dl_parent", "call = kf.subworkflow(dl_child, input={'x': '{{inputs.x}}'})\n", ns)
    run = parent.run(x=-1, raise_on_failure=False)
    assert run.status == "failed"
    assert kf.dlq()["run_id"].to_list() == [run.run_id]


@pytest.mark.slow
def test_cli_lists_and_discards(tmp_path, kernelflow_home):
    wf = make_workflow()
    bad = wf.run(x=-1, raise_on_failure=False)
    cli = [sys.executable, "-m", "kernelflow.cli", "--store", str(kernelflow_home), "dlq"]
    listed = subprocess.run([*cli, "list"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert bad.run_id in listed.stdout
    missing = subprocess.run([*cli, "discard"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "needs a RUN_ID" in missing.stderr
    done = subprocess.run([*cli, "discard", bad.run_id, "--reason", "cli"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert kf.dlq().height == 0
    empty = subprocess.run([*cli, "list"], capture_output=True, text=True, timeout=120)
    assert "empty" in empty.stdout
