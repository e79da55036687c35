"""Durable-execution behaviour found while writing docs/durability.md: regressions for the
bugs found then and since fixed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

import kernelflow as kf
from kernelflow import events as ev
from kernelflow.store_access import open_store


def _types(run_id: str) -> list[str]:
    return [e.type for e in open_store().read_run(run_id)]


def test_replay_of_a_run_resumed_with_replaced_inputs_matches_its_history(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELFLOW_NO_WATCH", "1")

    def raw():
        return [3, -1, 4]

    def clean(raw):
        return [x for x in raw if x >= 0]

    run = kf.workflow("bp_replay", [raw, clean]).run(break_before=["clean"])
    run.resume(replace={"raw": [10, 20]})
    assert run.status == "succeeded" and run["clean"] == [10, 20]
    report = run.replay()
    assert report.ok, report.summary()


def test_run_replay_uses_the_current_definition_like_resume(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELFLOW_NO_WATCH", "1")

    def rows():
        return [1, 2, 3]

    def total(rows):
        return sum(rows)

    run = kf.workflow("replay_current", [rows, total]).run()

    def total(rows):  # the redefinition under test
        return sum(rows) * 10

    redefined = kf.workflow("replay_current", [rows, total])
    report = run.replay()
    assert report.replayed_version == redefined.version
    assert not report.ok and report.first.task == "total"


def test_the_watcher_does_not_bring_back_a_run_resumed_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KERNELFLOW_NO_WATCH", raising=False)  # an interactive session: the watcher is on

    @kf.approval("Publish?")
    def publish():
        return "published"

    run = kf.workflow("watched_reject", [publish]).run()
    assert run.status == "waiting"
    kf.reject(run.run_id, "publish", "not today", resume=False)
    resumed = kf.resume(run.run_id, raise_on_failure=False)
    assert resumed.status == "failed"
    time.sleep(1.5)  # three watcher polls
    assert _types(run.run_id).count(ev.APPROVAL_REQUESTED) == 1
    assert kf.sql("SELECT status FROM runs WHERE run_id = ?", [run.run_id]).item() == "failed"


def test_a_watched_run_continues_into_the_users_handle_even_while_another_driver_holds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from kernelflow import watcher

    monkeypatch.delenv("KERNELFLOW_NO_WATCH", raising=False)

    @kf.approval("Publish to {table}?", input={"table": str})
    def publish(table):
        return {"table": table}

    run = kf.workflow("watched_busy", [publish]).run()
    assert run.run_id in watcher.watched()
    lease = open_store().lease(run.run_id)  # what approve() holds while it records an answer
    try:
        assert watcher.continue_here(run.run_id) is None
        assert run.run_id in watcher.watched()  # busy is not finished: still watched
    finally:
        lease.release()
    # The notebook's poller and approve() both see the answer; whichever wins
    # continues the run into the handle the user holds, before approve returns.
    kf.approve(run.run_id, "publish", table="t2")
    run.wait(30)
    assert run.status == "succeeded" and run["publish"]["table"] == "t2"
    assert run.run_id not in watcher.watched()


def test_run_resume_of_a_yaml_workflow_defined_in_this_process_finds_its_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    from kernelflow.yaml_compiler import compile_yaml

    monkeypatch.setenv("KERNELFLOW_NO_WATCH", "1")

    def count():
        return 2

    def ship(review):
        return "shipped"

    body = (
        "name: yaml_resume\n"
        "tasks:\n"
        "  - {id: count, run: 'python:count'}\n"
        "  - {id: review, needs: [count], approval: {message: 'Ship?'}}\n"
        "  - {id: ship, run: 'python:ship', needs: [review]}\n"
    )
    wf = compile_yaml(None, body, {"count": count, "ship": ship})
    run = wf.run()
    assert run.status == "waiting"
    kf.approve(run.run_id, "review", resume=False)
    run.resume()
    assert run.status == "succeeded" and run.output == "shipped"


def test_fork_refuses_an_input_the_workflow_does_not_have(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELFLOW_NO_WATCH", "1")

    def download():
        return [5, 1, 8, 3]

    def top(download, k=2):
        return sorted(download, reverse=True)[:k]

    first = kf.workflow("fork_inputs", [download, top]).run()
    with pytest.raises(kf.InputError, match="has no input 'kk'"):
        first.fork("top", kk=3)


def test_an_attempt_interrupted_by_a_crash_is_not_running_after_the_resume(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELFLOW_NO_WATCH", "1")
    crashing = textwrap.dedent("""
        import os
        import kernelflow as kf

        def first():
            return 1

        def second(first):
            os._exit(1)

        kf.workflow("crash_attempts", [first, second]).run()
    """)
    assert subprocess.run([sys.executable, "-c", crashing], check=False).returncode == 1
    run_id = kf.sql("SELECT run_id FROM runs WHERE workflow = 'crash_attempts'").item()

    def first():
        return 1

    def second(first):
        return first + 1

    assert kf.resume(run_id, workflow=kf.workflow("crash_attempts", [first, second])).status == "succeeded"
    attempts = kf.sql(
        "SELECT attempt, status, ended_at, will_retry FROM task_attempts WHERE run_id = ? AND task_id = 'second' ORDER BY attempt",
        [run_id],
    )
    assert attempts["attempt"].to_list() == [1, 2]
    assert attempts["status"].to_list() == ["interrupted", "succeeded"]
    assert attempts["ended_at"][0] is not None and attempts["will_retry"][0]


def test_an_expired_gate_approved_by_timeout_passes_the_input_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELFLOW_NO_WATCH", "1")

    def busy():  # keeps the run driven (on this thread) past the gate's expiry
        time.sleep(0.3)
        return "busy"

    @kf.approval("Publish?", input={"table": {"type": "str", "default": "staging"}}, timeout="50ms", on_timeout="approve")
    def publish(table, approval):
        return f"{table} (expired: {approval.expired})"

    run = kf.workflow("expire_defaults", [busy, publish]).run(raise_on_failure=False)
    assert run.state.tasks["publish"].status == "succeeded", run.state.tasks["publish"].error
    assert run["publish"] == "staging (expired: True)"


def test_a_replay_in_a_notebook_leaves_no_stale_progress_output(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import IPython.display
    from kernelflow.kernel_ext.live_status import NotebookStatusPlugin

    from kernelflow import plugin_host

    monkeypatch.setenv("KERNELFLOW_NO_WATCH", "1")

    def a():
        return 1

    def b(a):
        return a + 1

    run = kf.workflow("replay_display", [a, b]).run()
    shown: list[object] = []

    class Handle:
        def update(self, obj):  # type: ignore[no-untyped-def]
            shown.append(obj)

    def fake_display(obj, display_id=False):  # type: ignore[no-untyped-def]
        shown.append(obj)
        return Handle()

    monkeypatch.setattr(IPython.display, "display", fake_display)
    plugin = NotebookStatusPlugin(SimpleNamespace(kernel=object()))  # as in a kernel
    plugin_host.register(plugin, name="test.replay_display")
    try:
        assert run.replay().ok
    finally:
        plugin_host.unregister(plugin)
    assert shown == []  # a replay shows nothing live


def test_kf_replay_is_the_function_and_replays_a_run_by_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELFLOW_NO_WATCH", "1")

    def one():
        return 1

    run = kf.workflow("replay_by_id", [one]).run()
    report = kf.replay(run.run_id)
    assert report.ok and report.run_id == run.run_id
