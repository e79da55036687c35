"""The approval widget (widgets/approval.py) and ``kf.approvals()``, without a browser.

Runs are real: a workflow with ``@kf.approval`` suspends at its gate, the
widget is built from the store, and answers go through ``kf.approve`` /
``kf.reject``. ``KERNELFLOW_NO_WATCH=1`` keeps this process's gate watcher
from resuming runs behind a test's back (tests/browser covers the notebook).
"""

from __future__ import annotations

import enum
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Optional

import ipywidgets
import polars as pl
import pytest
from pydantic import BaseModel, Field

import kernelflow as kf
from kernelflow import events as ev
from kernelflow.approvals import Approvals
from kernelflow.store_access import close_stores, open_store
from kernelflow.widgets import poller
from kernelflow.widgets.approval import (
    ApprovalWidget,
    approval_widgets_for,
    approvals_view,
    form_fields,
    markdown_html,
    preview_html,
)

JS = Path(__file__).resolve().parents[1] / "widgets" / "approval.js"


@pytest.fixture(autouse=True)
def no_watcher(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("KERNELFLOW_NO_WATCH", "1")
    monkeypatch.delenv("JUPYTERHUB_USER", raising=False)
    yield
    ipywidgets.Widget.close_all()  # closed widgets leave the poller


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def types_of(run_id: str) -> list[str]:
    return [e.type for e in open_store().read_run(run_id)]


def view_row(run_id: str) -> dict:
    return next(r for r in kf.approvals(None) if r["run_id"] == run_id)


def stock_rows() -> pl.DataFrame:
    return pl.DataFrame({"sku": ["A1", "<b>B2</b>", "C3"], "qty": [3, 0, 7]})


@kf.approval(
    "Publish **{n}** rows to {table}?",
    input={"table": str, "limit": {"type": "int", "default": 10}, "dry_run": {"type": "bool", "default": False}},
    preview="stock_rows",
    timeout="1h",
)
def publish(stock_rows, table, limit, dry_run, approval):
    return {"rows": stock_rows.height, "table": table, "limit": limit, "dry_run": dry_run, "comment": approval.comment}


def gated_run() -> kf.Run:
    run = kf.workflow("stock", [stock_rows, publish]).run(raise_on_failure=False)
    assert run.status == "waiting"
    return run


def finish(widget: ApprovalWidget) -> kf.Run:
    """The run this widget's answer continued in this process, once it ends."""
    assert widget.last_answer is not None and widget.last_answer.run is not None
    run = widget.last_answer.run
    try:
        run.wait(30)
    except kf.RunFailedError:
        pass  # a rejection: the step failed
    return run


# --- built from the store ---------------------------------------------------------------


def test_the_widget_is_built_from_the_store(tmp_path: Path, kernelflow_home: Path) -> None:
    """A process that never saw the run (as after a kernel restart) shows the true gate."""
    script = tmp_path / "flow.py"
    script.write_text(textwrap.dedent('''
        import polars as pl
        import kernelflow as kf

        def orders():
            return pl.DataFrame({"id": [1, 2], "total": [9.5, 12.0]})

        @kf.approval("Refund {n} orders?", input={"note": str}, preview="orders")
        def refund(orders, note):
            return note

        print(kf.workflow("refunds", [orders, refund]).run().run_id)
    '''))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    run_id = out.stdout.split()[-1]

    widget = ApprovalWidget.for_gate(run_id, "refund")
    assert (widget.run_id, widget.task, widget.workflow, widget.status) == (run_id, "refund", "refunds", "pending")
    assert widget.answerable and widget.message == "Refund 2 orders?"
    assert widget.seq == next(e.seq for e in open_store().read_run(run_id) if e.type == ev.APPROVAL_REQUESTED)
    assert "<table>" in widget.preview_html and "<th>total<br><small>Float64</small></th>" in widget.preview_html
    assert [(f["name"], f["widget"], f["required"]) for f in widget.fields] == [("note", "text", True)]
    assert widget.expires_at == "" and "refunds · step refund · run " + run_id in widget.summary
    assert poller.watching(widget)  # pending: the store is polled for an answer

    close_stores()  # a fresh look at the store gives the same widget
    again = ApprovalWidget.for_gate(run_id, "refund")
    assert again.get_state(["message_html", "preview_html", "fields", "status", "seq"]) == widget.get_state(
        ["message_html", "preview_html", "fields", "status", "seq"]
    )
    assert [w.task for w in ApprovalWidget.for_run(run_id)] == ["refund"]


def test_for_run_gives_one_widget_per_gate_the_run_waits_at() -> None:
    @kf.approval("First?")
    def one():
        return 1

    @kf.approval("Second?")
    def two():
        return 2

    def free():
        return 0

    run = kf.workflow("two_gates", [one, two, free]).run()
    widgets = approval_widgets_for(run)
    assert sorted(w.task for w in widgets) == ["one", "two"]
    assert all(w.status == "pending" and w.run_id == run.run_id for w in widgets)
    with pytest.raises(kf.KernelflowError, match="has not asked for approval"):
        ApprovalWidget.for_gate(run.run_id, "free")


# --- what it shows -------------------------------------------------------------------------


def test_the_message_is_markdown_with_raw_html_escaped() -> None:
    text = "**Ship** it to `prod`? <img src=x onerror=alert(1)> <script>alert(2)</script> [docs](javascript:alert(3))"
    out = markdown_html(text)
    assert "<strong>Ship</strong>" in out and "<code>prod</code>" in out
    assert "<img" not in out and "<script" not in out and "javascript:" not in out
    assert "&lt;img src=x onerror=alert(1)&gt;" in out and "&lt;script&gt;" in out

    @kf.approval("Deploy **{who}**?")
    def deploy(who):
        return who

    def who():
        return "<b onmouseover=alert(1)>eve</b>"

    run = kf.workflow("deploying", [who, deploy]).run()
    widget = ApprovalWidget.for_gate(run.run_id, "deploy")
    assert "<strong>&lt;b onmouseover=alert(1)&gt;eve&lt;/b&gt;</strong>" in widget.message_html
    assert "<b " not in widget.static_html()


def test_previews_table_list_and_values_are_escaped_html() -> None:
    run = gated_run()
    table = ApprovalWidget.for_gate(run.run_id, "publish").preview_html
    assert table.startswith("<table><thead><tr><th>sku<br><small>String</small></th>")
    assert "<td>&lt;b&gt;B2&lt;/b&gt;</td>" in table and table.endswith("<small>3 rows</small>")
    many = {"type": "table", "columns": ["a"], "dtypes": ["Int64"], "rows": [[1], [2]], "height": 500}
    assert "2 of 500 rows" in preview_html(many)
    assert preview_html({"type": "list", "items": [1, "<x>"], "length": 40}) == "<ol><li>1</li><li>&lt;x&gt;</li></ol><small>2 of 40 items</small>"
    assert preview_html({"type": "value", "value": {"k": "<v>"}}) == '<pre>{\n &quot;k&quot;: &quot;&lt;v&gt;&quot;\n}</pre>'
    assert preview_html({"type": "repr", "repr": "<Thing>"}) == "<pre>&lt;Thing&gt;</pre>"
    assert preview_html(None) == ""


def test_fields_from_simple_types_with_defaults() -> None:
    schema = {
        "model": None,
        "fields": {
            "table": {"type": "str", "required": True},
            "limit": {"type": "int", "required": False, "default": 10, "description": "rows at most"},
            "ratio": {"type": "float", "required": False, "default": 0.5},
            "dry_run": {"type": "bool", "required": False, "default": True},
            "tags": {"type": "list", "required": False, "default": ["a"]},
            "extra": {"type": "any", "required": True},
        },
    }
    fields = {f["name"]: f for f in form_fields(schema)}
    assert {n: f["widget"] for n, f in fields.items()} == {
        "table": "text", "limit": "number", "ratio": "number", "dry_run": "checkbox", "tags": "json", "extra": "json",
    }  # fmt: skip
    assert fields["limit"]["default"] == 10 and fields["limit"]["text"] == "10" and fields["limit"]["description"] == "rows at most"
    assert fields["dry_run"]["default"] is True and fields["tags"]["text"] == '["a"]'
    assert fields["table"]["required"] and not fields["limit"]["required"] and "default" not in fields["table"]
    assert form_fields(None) == []

    widget = ApprovalWidget.for_gate(gated_run().run_id, "publish")
    assert [(f["name"], f["kind"], f["widget"], f.get("default")) for f in widget.fields] == [
        ("table", "str", "text", None), ("limit", "int", "number", 10), ("dry_run", "bool", "checkbox", False),
    ]  # fmt: skip


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Target(BaseModel):
    table: str
    limit: int = Field(10, description="rows at most")
    mode: Literal["append", "replace"] = "append"
    colour: Colour = Colour.BLUE
    ratio: Optional[float] = None  # noqa: UP045 - the JSON schema's anyOf is what is tested
    confirm: bool = False


def test_fields_from_a_pydantic_model_and_its_validation() -> None:
    @kf.approval("Load?", input=Target)
    def load(table, limit, mode, colour, ratio, confirm, approval):
        return {"input": type(approval.input).__name__, "mode": mode, "colour": colour, "ratio": ratio, "limit": limit}

    run = kf.workflow("loading", [load]).run()
    widget = ApprovalWidget.for_gate(run.run_id, "load")
    fields = {f["name"]: f for f in widget.fields}
    assert {n: (f["kind"], f["widget"]) for n, f in fields.items()} == {
        "table": ("str", "text"), "limit": ("int", "number"), "mode": ("str", "select"),
        "colour": ("str", "select"), "ratio": ("float", "number"), "confirm": ("bool", "checkbox"),
    }  # fmt: skip
    assert fields["mode"]["choices"] == ["append", "replace"] and fields["mode"]["text"] == "append"
    assert fields["colour"]["choices"] == ["red", "blue"]
    assert fields["limit"]["description"] == "rows at most" and fields["limit"]["text"] == "10"
    assert fields["table"]["required"] and not fields["ratio"]["required"]

    # The model validates: a wrong choice is an error shown in the widget, and nothing is answered.
    assert not widget.submit("approve", {"table": "sales", "mode": "merge", "limit": "x"})
    assert "mode: Input should be 'append' or 'replace'" in widget.error and "limit:" in widget.error
    assert widget.status == "pending" and ev.APPROVAL_GRANTED not in types_of(run.run_id)

    values = {"table": "sales", "limit": "25", "mode": "replace", "colour": "red", "ratio": "0.25", "confirm": True}
    assert widget.submit("approve", values, "looks right")
    assert widget.error == "" and widget.status == "granted"
    assert finish(widget).output == {"input": "Target", "mode": "replace", "colour": "red", "ratio": 0.25, "limit": 25}
    assert json.loads(view_row(run.run_id)["input"]) == {
        "table": "sales", "limit": 25, "mode": "replace", "colour": "red", "ratio": 0.25, "confirm": True,
    }  # fmt: skip


# --- answering -------------------------------------------------------------------------------


def test_invalid_input_shows_the_error_and_answers_nothing() -> None:
    run = gated_run()
    widget = ApprovalWidget.for_gate(run.run_id, "publish")
    before = types_of(run.run_id)
    assert not widget.submit("approve", {"table": "", "limit": "many", "dry_run": False})
    assert "table is required" in widget.error and "limit must be int, got str 'many'" in widget.error
    assert widget.status == "pending" and widget.answerable and not widget.busy
    assert types_of(run.run_id) == before
    assert open_store().answers.read(run.run_id, "publish", widget.seq) is None  # not even claimed
    assert view_row(run.run_id)["status"] == "pending"
    # The same form through the view's custom message
    widget._on_custom_msg(widget, {"type": "submit", "decision": "approve", "values": {"limit": "3"}, "comment": ""}, [])
    assert "table is required" in widget.error and types_of(run.run_id) == before
    # and a valid one afterwards clears the error.
    assert widget.submit("approve", {"table": "daily", "limit": "3", "dry_run": False})
    assert widget.error == ""
    finish(widget)


def test_a_valid_submit_answers_with_the_input_and_who(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTERHUB_USER", "ana")
    run = gated_run()
    widget = ApprovalWidget.for_gate(run.run_id, "publish")
    widget._on_custom_msg(
        widget,
        {"type": "submit", "decision": "approve", "values": {"table": "shop", "limit": "2", "dry_run": True}, "comment": "counts checked"},
        [],
    )
    assert widget.status == "granted" and not widget.answerable and widget.error == ""
    assert widget.answer["by_name"] == "ana" and widget.answer["input"] == {"table": "shop", "limit": 2, "dry_run": True}
    assert widget.answer_text.startswith("Granted by ana at ") and '"counts checked"' in widget.answer_text
    assert not poller.watching(widget) or not widget.poll()
    assert finish(widget).output == {"rows": 3, "table": "shop", "limit": 2, "dry_run": True, "comment": "counts checked"}
    row = view_row(run.run_id)
    assert (row["status"], row["answered_by"], row["comment"]) == ("granted", "ana", "counts checked")
    assert json.loads(row["input"]) == {"table": "shop", "limit": 2, "dry_run": True}
    assert json.loads(row["by"])["name"] == "ana" and json.loads(row["by"])["user"]


def test_a_default_applies_when_a_field_is_left_empty() -> None:
    run = gated_run()
    widget = ApprovalWidget.for_gate(run.run_id, "publish")
    assert widget.submit("approve", {"table": "t", "limit": "", "dry_run": False})
    assert finish(widget).output["limit"] == 10


def test_reject_records_the_comment_as_the_reason() -> None:
    run = gated_run()
    widget = ApprovalWidget.for_gate(run.run_id, "publish")
    assert widget.submit("reject", {"table": "", "limit": "not checked on reject"}, "counts look wrong")
    assert widget.status == "rejected" and widget.answer["reason"] == "counts look wrong"
    assert finish(widget).status == "failed"
    row = view_row(run.run_id)
    assert (row["status"], row["reason"]) == ("rejected", "counts look wrong")


def test_a_double_submit_answers_once() -> None:
    run = gated_run()
    widget = ApprovalWidget.for_gate(run.run_id, "publish")
    msg = {"type": "submit", "decision": "approve", "values": {"table": "once"}, "comment": ""}
    widget._on_custom_msg(widget, msg, [])
    widget._on_custom_msg(widget, msg, [])  # the second click of a double click, after the first finished
    assert widget.error == "" and widget.status == "granted"
    finish(widget)
    assert types_of(run.run_id).count(ev.APPROVAL_GRANTED) == 1

    # Two submits at the same moment (the kernel and a thread): one answers, the other is ignored.
    second = gated_run()
    widget = ApprovalWidget.for_gate(second.run_id, "publish")
    start = threading.Barrier(2)
    results: list[bool] = []

    def click() -> None:
        start.wait()
        results.append(widget.submit("approve", {"table": "t"}))

    threads = [threading.Thread(target=click) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert sorted(results) == [False, True] and widget.status == "granted"
    finish(widget)
    assert types_of(second.run_id).count(ev.APPROVAL_GRANTED) == 1


ATTEMPTS: list[int] = []


@kf.approval("Risky?")
def risky():
    ATTEMPTS.append(1)
    if len(ATTEMPTS) == 1:
        raise RuntimeError("first try fails")
    return "ok"


def test_a_widget_shows_one_request_and_a_re_asked_gate_gets_its_own() -> None:
    ATTEMPTS.clear()
    run = kf.workflow("risky_flow", [risky]).run(raise_on_failure=False)
    first = ApprovalWidget.for_gate(run.run_id, "risky")
    assert first.submit("approve", {}, "go")
    finish(first)
    assert first.last_answer.run.status == "failed"
    again = kf.resume(run.run_id, raise_on_failure=False)  # the step asks again: a new request
    assert again.status == "waiting"
    second = ApprovalWidget.for_gate(run.run_id, "risky")
    assert second.seq > first.seq and second.status == "pending" and second.answerable
    first.refresh()
    assert first.status == "granted" and first.answer["comment"] == "go"  # still its own request's story
    old = ApprovalWidget.for_gate(run.run_id, "risky", seq=first.seq)
    assert (old.seq, old.status) == (first.seq, "granted")
    assert [(w.seq, w.status) for w in approvals_view(kf.approvals(None)).children] == [
        (second.seq, "pending"), (first.seq, "granted"),
    ]  # fmt: skip
    assert second.submit("approve", {})
    assert finish(second).output == "ok"


# --- answered elsewhere, expired ----------------------------------------------------------------


def test_an_answer_given_elsewhere_shows_on_poll() -> None:
    run = gated_run()
    widget = ApprovalWidget.for_gate(run.run_id, "publish")
    poller.unwatch(widget)  # this test polls by hand
    assert widget.poll() is True  # still pending: keep polling
    kf.approve(run.run_id, "publish", by="bob", comment="fine", resume=False, table="elsewhere")
    assert widget.poll() is False  # answered: nothing left to watch
    assert widget.status == "granted" and not widget.answerable
    assert widget.answer["by_name"] == "bob" and widget.answer["input"] == {"table": "elsewhere", "limit": 10, "dry_run": False}
    assert widget.answer_text.startswith("Granted by bob at ") and "table='elsewhere'" in widget.answer_text
    assert not widget.submit("approve", {"table": "late"})
    assert "already answered: Granted by bob" in widget.error


def test_an_answer_from_the_cli_reaches_the_widget_through_the_poller_thread() -> None:
    run = gated_run()
    widget = ApprovalWidget.for_gate(run.run_id, "publish")
    assert poller.watching(widget)
    cli = [sys.executable, "-m", "kernelflow", "reject", run.run_id, "publish", "--reason", "not today", "--by", "carol"]
    out = subprocess.run(cli, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: widget.status == "rejected", what="the poller to see the answer")
    assert widget.answer["by_name"] == "carol" and widget.answer_text.startswith("Rejected by carol")
    assert '"not today"' in widget.answer_text
    wait_for(lambda: not poller.watching(widget), what="the poller to let go of an answered widget")


def test_an_answer_claimed_but_not_yet_recorded_shows_as_answered() -> None:
    run = gated_run()
    widget = ApprovalWidget.for_gate(run.run_id, "publish")
    claim = {"type": ev.APPROVAL_GRANTED, "by": {"user": "dan", "name": "dan"}, "answered_at": ev.now_us(), "input": {"table": "x"}}
    assert open_store().answers.claim(run.run_id, "publish", widget.seq, claim) is None
    widget.refresh()
    assert widget.status == "granted" and widget.answer["by_name"] == "dan"


def test_an_expired_gate_refuses_answers() -> None:
    @kf.approval("Release?", input={"note": str}, timeout="100ms")
    def release(note):
        return note

    run = kf.workflow("releasing", [release]).run(raise_on_failure=False)
    widget = ApprovalWidget.for_gate(run.run_id, "release")
    assert widget.expires_at.endswith(" UTC") and "expires" in widget.summary
    time.sleep(0.2)
    assert not widget.submit("approve", {"note": "late"})
    assert widget.status == "expired" and not widget.answerable
    assert "expired at" in widget.error and "can no longer be answered" in widget.error
    assert widget.answer_text.startswith("Expired at") and "on_timeout: reject" in widget.answer_text
    assert open_store().answers.read(run.run_id, "release", widget.seq) is None
    assert widget.poll() is False
    assert 'data-status="expired"' in widget.static_html() and "kf.approve(" not in widget.static_html()

    kf.resume(run.run_id, raise_on_failure=False)  # records ApprovalExpired (outcome reject): the step fails
    fresh = ApprovalWidget.for_gate(run.run_id, "release")
    assert fresh.status == "expired" and fresh.answer["outcome"] == "reject"
    assert view_row(run.run_id)["status"] == "expired"


# --- without JavaScript -----------------------------------------------------------------------------


def test_the_static_fallback_tells_the_truth() -> None:
    run = gated_run()
    widget = ApprovalWidget.for_gate(run.run_id, "publish")
    page = widget.static_html()
    assert page.startswith(f'<div class="kf-approval" data-status="pending" data-run-id="{run.run_id}" data-task="publish"')
    assert "<strong>3</strong>" in page and "<td>&lt;b&gt;B2&lt;/b&gt;</td>" in page
    assert "approval pending" in page and "input: table: str, limit: int = 10, dry_run: bool = False" in page
    assert f"kernelflow approve {run.run_id} publish -i table VALUE" in page
    assert f"kf.approve(&#x27;{run.run_id}&#x27;, &#x27;publish&#x27;, table=...," in page
    assert f"kernelflow resume {run.run_id}" in page
    bundle = widget._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert data["text/html"] == page and "application/vnd.jupyter.widget-view+json" in data

    kf.approve(run.run_id, "publish", by="ana", resume=False, table="daily")
    widget.poll()
    page = widget.static_html()
    assert 'data-status="granted"' in page and "Granted by ana at" in page and "kernelflow approve" not in page


def test_the_view_code_is_small_and_has_no_dependencies() -> None:
    code = JS.read_text()
    assert len(code.encode()) < 8 * 1024
    assert "import " not in code and "require(" not in code
    for name in ("kf-approval-message", "kf-approval-preview", "kf-approval-comment", "kf-approve", "kf-reject",
                 "kf-approval-error", "kf-approval-answer", "model.send"):  # fmt: skip
        assert name in code


# --- kf.approvals() ----------------------------------------------------------------------------------


def test_kf_approvals_is_a_list_of_requests_with_the_table_and_widgets() -> None:
    assert len(kf.approvals()) == 0 and "no pending approvals" in repr(kf.approvals())
    first, second = gated_run(), gated_run()
    pending = kf.approvals()
    assert isinstance(pending, Approvals) and len(pending) == 2 and bool(pending)
    assert [r["run_id"] for r in pending] == [second.run_id, first.run_id]  # newest first
    assert pending[0]["task_id"] == "publish" and pending[0]["status"] == "pending"
    assert isinstance(pending.df, pl.DataFrame) and pending.df["run_id"].to_list() == [second.run_id, first.run_id]
    assert pending.df.columns == list(pending[0])
    with pytest.raises(TypeError, match=r"kf.approvals\(\).df\['run_id'\]"):
        pending["run_id"]  # type: ignore[call-overload]
    assert f"kf.approve('{first.run_id}', 'publish')" in repr(pending)
    page = pending._repr_html_()
    assert page.count("<tr data-status='pending'>") == 2 and f"kernelflow approve {first.run_id} publish" in page
    assert pending._repr_mimebundle_() is None and pending.widget() is None  # no Jupyter kernel here

    box = approvals_view(pending)
    assert [(w.run_id, w.task, w.status) for w in box.children] == [
        (second.run_id, "publish", "pending"), (first.run_id, "publish", "pending"),
    ]  # fmt: skip
    kf.approve(first.run_id, "publish", by="ana", resume=False, table="t")
    assert [r["run_id"] for r in kf.approvals()] == [second.run_id]
    assert [r["answered_by"] for r in kf.approvals("granted")] == ["ana"]
    assert len(kf.approvals(None)) == 2
    with pytest.raises(ValueError, match="status must be one of"):
        kf.approvals("waiting")


def test_kf_approvals_shows_widgets_in_a_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    approvals_module = sys.modules["kernelflow.approvals"]  # kf.approvals is the function

    gated_run()
    monkeypatch.setattr(approvals_module, "_in_kernel", lambda: True)
    pending = kf.approvals()
    data = pending._repr_mimebundle_()
    assert data is not None and "application/vnd.jupyter.widget-view+json" in data
    assert data["text/html"] == pending._repr_html_() and data["text/plain"] == repr(pending)
    assert [type(w).__name__ for w in pending.widget().children] == ["ApprovalWidget"]
