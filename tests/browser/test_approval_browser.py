"""The approval widget in a real JupyterLab (headless Chromium, see lab.py).

DOM contract (widgets/approval.py + approval.js): a root ``div.kf-approval``
with ``data-status`` (pending|granted|rejected|expired), ``data-run-id`` and
``data-task``; ``.kf-approval-message``, ``.kf-approval-preview`` (a
``table`` for tabular data), inputs named after the gate's fields,
``textarea.kf-approval-comment``, ``button.kf-approve``, ``button.kf-reject``,
``.kf-approval-error`` and ``.kf-approval-answer``.

The kernels share the session's store (``lab.kernelflow_home``); the test
reads it with its own FolderStore, and the CLI answers with the same
``KERNELFLOW_HOME``. Waits are generous timeouts; no assertion is about timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .lab import ARTIFACTS, Lab, NotebookPage, expect

pytestmark = pytest.mark.browser

SHOW_TIMEOUT = 30_000  # ms: for the widget to appear or react
RUN_TIMEOUT = 120_000  # ms

GATED = '''import polars as pl
import kernelflow as kf

def stock():
    return pl.DataFrame({"sku": ["A1", "B2", "C3"], "qty": [3, 0, 7]})

@kf.approval("Publish **{n}** rows to `{table}`?", input={"table": str, "limit": {"type": "int", "default": 10}},
             preview="stock", timeout="1h")
def publish(stock, table, limit, approval):
    return f"{min(limit, stock.height)} rows into {table}, approved by {approval.by.get('name') or approval.by['user']}"

shop = kf.workflow("shop_publish", [stock, publish])
run = shop.run()
run.status'''
SHOW = "from kernelflow.widgets.approval import ApprovalWidget\nApprovalWidget.for_run(run)[0]"
BUSY = """import pathlib, time
for _ in range(1200):  # the kernel is busy until the test creates the file
    if pathlib.Path({path!r}).exists():
        break
    time.sleep(0.1)
"""


def start_cell(nb: NotebookPage, index: int) -> None:
    """Run cell ``index`` without waiting for it: the kernel is busy once its prompt says [*]."""
    nb.cell(index).locator(".jp-InputArea-prompt").click()
    nb.page.keyboard.press("Control+Enter")
    expect(nb.cell(index).locator(".jp-InputArea-prompt")).to_have_text("[*]:", timeout=SHOW_TIMEOUT)


def gated_notebook(lab: Lab, name: str, busy_until: Path | None = None) -> tuple[NotebookPage, Any, str]:
    """A notebook whose run waits at the gate, with its approval widget in cell 1's output.

    With ``busy_until``, cell 2 keeps the kernel busy until that file exists (start it with :func:`start_cell`).
    """
    if busy_until is None:
        nb = lab.notebook(name, [GATED, SHOW])
        assert nb.run_all(), nb.error_outputs()
    else:
        nb = lab.notebook(name, [GATED, SHOW, BUSY.format(path=str(busy_until))])
        nb.run_cell(0)
        nb.run_cell(1)
    expect(nb.output(0)).to_contain_text("waiting", timeout=SHOW_TIMEOUT)
    widget = nb.output(1).locator("div.kf-approval")
    expect(widget).to_be_visible(timeout=SHOW_TIMEOUT)
    expect(widget).to_have_attribute("data-status", "pending")
    expect(widget).to_have_attribute("data-task", "publish")
    run_id = widget.get_attribute("data-run-id")
    assert run_id and run_id.startswith("r-")
    return nb, widget, run_id


def store_query(lab: Lab, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    store = lab.store()
    try:
        return store.sql(sql, params).rows()
    finally:
        store.close()


def event_types(lab: Lab, run_id: str) -> list[str]:
    store = lab.store()
    try:
        return [e.type for e in store.read_run(run_id)]
    finally:
        store.close()


def wait_until(check, timeout: float = 60.0, what: str = "condition") -> Any:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_fill_the_field_and_approve_completes_the_run(lab: Lab) -> None:
    """(b) Fill the gate's input field, click Approve: the run completes with the input recorded."""
    nb, widget, run_id = gated_notebook(lab, "approve-in-widget")
    expect(widget.locator(".kf-approval-message strong")).to_have_text("3")
    expect(widget.locator(".kf-approval-message code")).to_have_text("{table}")
    preview = widget.locator(".kf-approval-preview table")
    expect(preview).to_be_visible()
    assert preview.locator("tbody tr").count() == 3 and "sku" in preview.locator("thead").inner_text()
    expect(widget.locator('input[name="limit"]')).to_have_value("10")  # the default
    widget.locator('input[name="table"]').fill("shop_stock")
    widget.locator('input[name="limit"]').fill("2")
    widget.locator("textarea.kf-approval-comment").fill("counts checked")
    nb.screenshot("approval-filled")
    widget.locator("button.kf-approve").click()

    expect(widget).to_have_attribute("data-status", "granted", timeout=SHOW_TIMEOUT)
    answer = widget.locator(".kf-approval-answer")
    expect(answer).to_contain_text("Granted by", timeout=SHOW_TIMEOUT)
    expect(answer).to_contain_text("table='shop_stock'")
    expect(widget.locator("button.kf-approve")).to_be_disabled()
    expect(widget.locator("button.kf-reject")).to_be_disabled()
    widget.scroll_into_view_if_needed()
    expect(widget.locator('input[name="table"]')).to_have_value("shop_stock")  # the form shows what was answered
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    widget.screenshot(path=str(ARTIFACTS / "approval-widget-granted.png"))

    # The run continued in the kernel (in the background) and the store has the answer.
    wait_until(lambda: store_query(lab, "SELECT status FROM runs WHERE run_id = ?", [run_id]) == [("succeeded",)],
               what="the run to succeed")  # fmt: skip
    rows = store_query(lab, "SELECT status, input, comment, answered_by FROM approvals WHERE run_id = ?", [run_id])
    assert len(rows) == 1
    status, given, comment, by = rows[0]
    assert (status, json.loads(given), comment) == ("granted", {"table": "shop_stock", "limit": 2}, "counts checked")
    assert by
    assert event_types(lab, run_id).count("ApprovalGranted") == 1


def test_an_answer_from_the_cli_updates_the_displayed_widget(lab: Lab) -> None:
    """(c) ``kernelflow approve`` in another process: the widget turns granted and says who answered,
    even while the kernel is busy running another cell (the store is polled on a thread)."""
    release = lab.new_path("release").with_suffix(".flag")
    nb, widget, run_id = gated_notebook(lab, "approve-from-cli", busy_until=release)
    start_cell(nb, 2)
    env = {**os.environ, "KERNELFLOW_HOME": str(lab.kernelflow_home)}
    cli = [sys.executable, "-m", "kernelflow", "approve", run_id, "publish", "-i", "table", "from_cli", "--by", "carol",
           "--comment", "done in a shell"]  # fmt: skip
    out = subprocess.run(cli, capture_output=True, text=True, env=env, cwd=lab.root, check=False)
    assert out.returncode == 0, out.stderr

    expect(widget).to_have_attribute("data-status", "granted", timeout=SHOW_TIMEOUT)
    answer = widget.locator(".kf-approval-answer")
    expect(answer).to_contain_text("Granted by carol")
    expect(answer).to_contain_text("table='from_cli'")
    expect(answer).to_contain_text("done in a shell")
    expect(widget.locator('input[name="table"]')).to_have_value("from_cli")
    expect(widget.locator("button.kf-approve")).to_be_disabled()
    expect(widget.locator('input[name="table"]')).to_be_disabled()
    expect(nb.cell(2).locator(".jp-InputArea-prompt")).to_have_text("[*]:")  # updated while the kernel was busy
    nb.screenshot("approval-answered-from-cli")
    release.touch()
    nb.wait_idle()
    wait_until(lambda: store_query(lab, "SELECT status FROM runs WHERE run_id = ?", [run_id]) == [("succeeded",)],
               what="the kernel's watcher to continue the run")  # fmt: skip


def test_a_click_while_the_kernel_is_busy_answers_when_it_is_free(lab: Lab) -> None:
    release = lab.new_path("release").with_suffix(".flag")
    nb, widget, run_id = gated_notebook(lab, "approve-while-busy", busy_until=release)
    start_cell(nb, 2)
    widget.locator('input[name="table"]').fill("later")
    widget.locator("button.kf-approve").click()
    expect(widget.locator(".kf-approval-note")).to_be_visible()  # sent; the kernel reads it when idle
    expect(widget.locator("button.kf-approve")).to_be_disabled()
    expect(widget).to_have_attribute("data-status", "pending")
    nb.screenshot("approval-sent-while-busy")
    assert "ApprovalGranted" not in event_types(lab, run_id)

    release.touch()
    expect(widget).to_have_attribute("data-status", "granted", timeout=SHOW_TIMEOUT)
    expect(widget.locator(".kf-approval-note")).to_be_hidden()
    wait_until(lambda: store_query(lab, "SELECT status FROM runs WHERE run_id = ?", [run_id]) == [("succeeded",)],
               what="the run to succeed")  # fmt: skip
    assert json.loads(store_query(lab, "SELECT input FROM approvals WHERE run_id = ?", [run_id])[0][0])["table"] == "later"


def test_bad_input_shows_the_validation_error_and_the_run_keeps_waiting(lab: Lab) -> None:
    nb, widget, run_id = gated_notebook(lab, "approve-bad-input")
    widget.locator('input[name="table"]').fill("shop")
    widget.locator('input[name="limit"]').fill("many")
    widget.locator("button.kf-approve").click()

    error = widget.locator(".kf-approval-error")
    expect(error).to_be_visible(timeout=SHOW_TIMEOUT)
    expect(error).to_contain_text("limit must be int, got str 'many'")
    expect(widget).to_have_attribute("data-status", "pending")
    expect(widget.locator("button.kf-approve")).to_be_enabled(timeout=SHOW_TIMEOUT)  # fix it and try again
    nb.screenshot("approval-bad-input")
    nb.wait_idle()
    assert store_query(lab, "SELECT status FROM approvals WHERE run_id = ?", [run_id]) == [("pending",)]
    assert store_query(lab, "SELECT status FROM runs WHERE run_id = ?", [run_id]) == [("waiting",)]
    assert "ApprovalGranted" not in event_types(lab, run_id)

    # A required field left empty is refused too.
    widget.locator('input[name="table"]').fill("")
    widget.locator('input[name="limit"]').fill("5")
    widget.locator("button.kf-approve").click()
    expect(error).to_contain_text("table is required", timeout=SHOW_TIMEOUT)
    expect(widget).to_have_attribute("data-status", "pending")


def test_a_double_click_answers_once(lab: Lab) -> None:
    nb, widget, run_id = gated_notebook(lab, "approve-double-click")
    widget.locator('input[name="table"]').fill("twice")
    widget.locator("button.kf-approve").dblclick()

    expect(widget).to_have_attribute("data-status", "granted", timeout=SHOW_TIMEOUT)
    expect(widget.locator(".kf-approval-error")).to_be_hidden()
    nb.screenshot("approval-double-click")
    wait_until(lambda: store_query(lab, "SELECT status FROM runs WHERE run_id = ?", [run_id]) == [("succeeded",)],
               what="the run to succeed")  # fmt: skip
    assert event_types(lab, run_id).count("ApprovalGranted") == 1
    assert store_query(lab, "SELECT count(*) FROM approvals WHERE run_id = ?", [run_id]) == [(1,)]


def test_a_reject_with_a_reason_fails_the_step(lab: Lab) -> None:
    nb, widget, run_id = gated_notebook(lab, "reject-in-widget")
    widget.locator("textarea.kf-approval-comment").fill("stock counts look wrong")
    widget.locator("button.kf-reject").click()
    expect(widget).to_have_attribute("data-status", "rejected", timeout=SHOW_TIMEOUT)
    expect(widget.locator(".kf-approval-answer")).to_contain_text("stock counts look wrong")
    nb.screenshot("approval-rejected")
    wait_until(lambda: store_query(lab, "SELECT status FROM runs WHERE run_id = ?", [run_id]) == [("failed",)],
               what="the run to fail")  # fmt: skip
    assert store_query(lab, "SELECT status, reason FROM approvals WHERE run_id = ?", [run_id]) == [
        ("rejected", "stock counts look wrong")
    ]


def test_the_cell_that_runs_the_workflow_shows_the_gate_and_kf_approvals_lists_it(lab: Lab) -> None:
    """With the extension loaded, the run's cell shows the approval widget where the run stops;
    ``kf.approvals()`` shows the pending gates as widgets too."""
    nb = lab.notebook("approval-in-run-cell", ["%load_ext kernelflow\n" + GATED, "kf.approvals()"])
    assert nb.run_all(), nb.error_outputs()
    in_cell = nb.output(0).locator("div.kf-approval")
    expect(in_cell.first).to_be_visible(timeout=SHOW_TIMEOUT)
    expect(in_cell.first).to_have_attribute("data-status", "pending")
    run_id = in_cell.first.get_attribute("data-run-id")
    listed = nb.output(1).locator(f'div.kf-approval[data-run-id="{run_id}"]')
    expect(listed).to_be_visible(timeout=SHOW_TIMEOUT)
    nb.screenshot("approval-in-run-cell")

    listed.locator('input[name="table"]').fill("from_the_list")
    listed.locator("button.kf-approve").click()
    expect(listed).to_have_attribute("data-status", "granted", timeout=SHOW_TIMEOUT)
    # The widget in the run's cell hears about it from the store.
    expect(in_cell.first).to_have_attribute("data-status", "granted", timeout=SHOW_TIMEOUT)
    expect(in_cell.first.locator(".kf-approval-answer")).to_contain_text("table='from_the_list'")
