"""The timeline in a real JupyterLab (headless Chromium, see lab.py).

``kf.timeline(run)`` shows the run's DAG above its timeline. The timeline's DOM
contract (widgets/timeline.py + timeline.js): a root ``div.kf-timeline``, one
``rect.kf-bar[data-task][data-attempt][data-status]`` per attempt, a slider
``input[type=range].kf-scrub`` over the run's seqs and a label
``.kf-scrub-label`` (seq, time, event type, task). Moving the slider
re-colours the DAG's nodes (``g.kf-node[data-status]``) to the state
``run.at(seq)`` gives, in the browser alone: it works while the kernel is busy.
"""

from __future__ import annotations

import re

import pytest

from kernelflow import events as ev
from kernelflow.snapshots import snapshot_at

from .lab import Lab, expect

pytestmark = pytest.mark.browser

SHOW_TIMEOUT = 30_000  # ms

SETUP = "import kernelflow as kf\n%load_ext kernelflow"
WORKFLOW = '''calls = {"clean": 0}

def extract():
    return [1, 2, 3]

@kf.task(retries=2, retry_delay=0)
def clean(extract):
    calls["clean"] += 1
    if calls["clean"] == 1:
        raise RuntimeError("flaky source")
    return [x * 2 for x in extract]

@kf.task(continue_on_failure=True)
def audit(clean):
    raise ValueError("audit failed")

def report(clean):
    return sum(clean)

scrubbed = kf.workflow("scrubbed", [extract, clean, audit, report])
run = scrubbed.run(raise_on_failure=False)'''
SHOW = "kf.timeline(run)"
BUSY = "import time\ntime.sleep(25)"
TASKS = {"extract", "clean", "audit", "report"}


def scrub(slider, seq: int) -> None:
    """Move the range input as a user would: set its value and fire ``input``."""
    slider.evaluate("(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input', { bubbles: true })); }", seq)


def expect_dag_at(dag, expected: dict[str, str]) -> None:
    for task, status in sorted(expected.items()):
        expect(dag.locator(f'g.kf-node[data-task="{task}"]')).to_have_attribute("data-status", status, timeout=SHOW_TIMEOUT)


def test_scrubbing_the_timeline_recolours_the_dag_to_run_at(lab: Lab) -> None:
    nb = lab.notebook("timeline", [SETUP, WORKFLOW, SHOW, BUSY])
    for i in range(3):
        nb.run_cell(i)
    assert not nb.error_outputs(), nb.error_outputs()

    out = nb.output(2)
    tl = out.locator("div.kf-timeline").first
    expect(tl).to_be_visible(timeout=SHOW_TIMEOUT)
    dag = out.locator("div.kf-dag").first
    expect(dag).to_be_visible(timeout=SHOW_TIMEOUT)
    head = tl.locator(".kf-tl-head").inner_text()
    run_id = re.search(r"run (r-[0-9a-f]+)", head).group(1)

    store = lab.store()
    try:
        events = store.read_run(run_id)

        def expected_at(seq: int) -> dict[str, str]:
            snap = snapshot_at(store, run_id, seq)
            return dict(zip(snap.tasks["task"], snap.tasks["status"]))

        last = events[-1].seq
        retrying = next(e.seq for e in events if e.type == ev.TASK_RETRYING and e.task_id == "clean")
        audit_running = next(e.seq for e in events if e.type == ev.TASK_STARTED and e.task_id == "audit")

        # At first: the end of the run, everything final.
        slider = tl.locator("input[type=range].kf-scrub")
        assert slider.get_attribute("max") == str(last) and slider.input_value() == str(last)
        expect_dag_at(dag, expected_at(last))
        assert set(expected_at(last)) == TASKS

        # One bar per attempt, coloured by its outcome: clean failed once, then succeeded.
        expect(tl.locator('rect.kf-bar[data-task="clean"][data-attempt="1"]')).to_have_attribute("data-status", "failed")
        expect(tl.locator('rect.kf-bar[data-task="clean"][data-attempt="2"]')).to_have_attribute("data-status", "succeeded")
        expect(tl.locator('rect.kf-bar[data-task="audit"][data-attempt="1"]')).to_have_attribute("data-status", "failed")

        # Early in the run: clean had just failed its first attempt and waits for the retry.
        scrub(slider, retrying)
        at_retry = expected_at(retrying)
        assert at_retry["clean"] == "retrying" and at_retry["report"] == "pending"
        expect_dag_at(dag, at_retry)
        label = tl.locator(".kf-scrub-label")
        expect(label).to_contain_text(f"seq {retrying} ")
        expect(label).to_contain_text("TaskRetrying")
        expect(label).to_contain_text("clean")
        expect(dag).to_have_attribute("data-run-status", "running")
        tl.scroll_into_view_if_needed()
        nb.screenshot("timeline-scrubbed-to-retry")

        # The kernel busy with another cell: scrubbing needs no round trip to it.
        nb.cell(3).locator(".jp-InputArea-prompt").click()
        nb.page.keyboard.press("Control+Enter")
        busy = nb.cell(3).locator(".jp-InputArea-prompt")
        expect(busy).to_have_text("[*]:", timeout=SHOW_TIMEOUT)
        for seq in (0, audit_running, last):
            scrub(slider, seq)
            expect_dag_at(dag, expected_at(seq))
            expect(label).to_contain_text(f"seq {seq} ")
        assert expected_at(audit_running)["audit"] == "running"
        assert busy.inner_text().strip() == "[*]:"  # the cell still runs: all of that happened without the kernel
        scrub(slider, retrying)
        expect_dag_at(dag, at_retry)
    finally:
        store.close()
