"""The engine's durable waits, to the exact record: approval gates, breakpoints, sleeps, and
how a replay answers them from the recorded run.

Covers what tests/test_engine_units.py leaves open in kernelflow/engine.py's gate code: answers
given while a run is still driven (who the driver records as actor, several gates at once, how
often it looks), an expiry at exactly its time and one of a gate the resumed code dropped, what
a gated function receives, the request's payload for a pydantic model, gates and breakpoints
whose inputs cannot be computed, and the events a replay writes for gates, side effects and
sleeps. Fast, in-process, thread executor.
"""

from __future__ import annotations

import time

import pytest
from test_engine_units import _no_watcher, cell, define, of_task, record  # noqa: F401 - _no_watcher: autouse fixture

import kernelflow as kf
from kernelflow import events as ev


def replayed(run, monkeypatch, workflow=None):
    """Replay ``run``; the report and the Event objects the replay wrote (kept in memory, not in the store)."""
    import importlib

    replay_module = importlib.import_module("kernelflow.replay")  # kernelflow.replay is also the function

    shadows = []
    real_init = replay_module.ReplayStore.__init__

    def keep(self, store):
        real_init(self, store)
        shadows.append(self)

    monkeypatch.setattr(replay_module.ReplayStore, "__init__", keep)
    report = replay_module.replay(run.run_id, workflow=workflow)
    [shadow] = shadows
    return report, list(shadow.appended)


def replay_events(run, monkeypatch, workflow=None):
    """Replay ``run``; the report and (type, task, attempt, payload) of the events the replay wrote."""
    report, events = replayed(run, monkeypatch, workflow)
    return report, [(e.type, e.task_id, e.attempt, dict(e.payload)) for e in events]


# --- answers given while the run is driven -------------------------------------------------------

TWO_GATES = """
import kernelflow as kf
@kf.approval('first?')
def first():
    return 1
@kf.approval('second?')
def second():
    return 2
def busy():
    answer = kf.approve(kf.context().run_id, 'second', by='bob', resume=False)
    return answer.recorded
"""


def test_an_answer_to_the_second_of_two_open_gates_is_recorded_by_the_driving_run_with_the_approver_as_actor():
    run = cell("two_gates", TWO_GATES).run()
    # the driver turned the claim into the event while busy waited for it; the first gate still waits
    assert run["busy"] is True
    assert run.status == "waiting"
    assert [w["task"] for w in record(run)[-1][3]["waiting"]] == ["first"]
    assert run["second"] == 2
    [granted] = [e for e in run.store.read_run(run.run_id) if e.type == "ApprovalGranted"]
    assert (granted.task_id, granted.attempt) == ("second", 1)
    assert granted.payload["by"]["name"] == "bob"
    assert granted.actor == granted.payload["by"]


def test_a_driven_run_looks_for_answers_once_per_poll_interval_not_in_a_busy_loop(monkeypatch):
    from kernelflow.store.answers import Answers

    from kernelflow.engine import GATE_POLL_S

    looks = []
    real_read = Answers.read

    def counted(self, run_id, task_id, request):
        looks.append(task_id)
        return real_read(self, run_id, task_id, request)

    monkeypatch.setattr(Answers, "read", counted)
    src = "import kernelflow as kf\n@kf.approval('ok?')\ndef gate():\n    return 1\ndef busy():\n    import time\n    time.sleep(0.5)\n    return 2\n"
    t0 = time.monotonic()
    run = cell("poll_rate", src).run()
    elapsed = time.monotonic() - t0
    assert run.status == "waiting"
    # at once when asked, every GATE_POLL_S while busy runs, a last look before suspending
    assert 2 <= looks.count("gate") <= 3 + elapsed / GATE_POLL_S


def test_a_gate_expires_when_the_clock_reaches_its_expiry_time_exactly(monkeypatch):
    clock = [1_700_000_000_000_000]
    monkeypatch.setattr(ev, "now_us", lambda: clock[0])
    src = "import kernelflow as kf\n@kf.approval('ok?', timeout='1s', on_timeout='skip')\ndef gate():\n    return 1\n"
    run = cell("expiry_edge", src).run()
    assert run.status == "waiting"
    [asked] = [p for t, _, p in of_task(run, "gate") if t == "ApprovalRequested"]
    assert asked["expires_at"] == clock[0] + 1_000_000
    clock[0] = asked["expires_at"]
    run.resume()
    assert run.status == "succeeded"
    assert of_task(run, "gate")[-2:] == [
        ("ApprovalExpired", 1, {"expires_at": asked["expires_at"], "outcome": "skip", "by": {"via": "timeout"}}),
        ("TaskSkipped", None, {"reason": "approval expired (on_timeout: skip)", "cause": "approval"}),
    ]


def test_a_waiting_gate_dropped_from_the_definition_expires_with_the_default_outcome_and_the_step_runs(monkeypatch):
    clock = [1_700_000_000_000_000]
    monkeypatch.setattr(ev, "now_us", lambda: clock[0])
    src = "import kernelflow as kf\n@kf.approval('ok?', timeout='1s', on_timeout='skip')\ndef gate():\n    return 1\n"
    run = cell("dropped_gate", src).run()
    assert run.status == "waiting"
    [asked] = [p for t, _, p in of_task(run, "gate") if t == "ApprovalRequested"]
    # resumed with code whose step has no gate: the open request expires as "reject" (not the skip it
    # was asked with), and the step, no longer gated, runs
    cell("dropped_gate", "def gate():\n    return 2\n")
    clock[0] = asked["expires_at"] + 1
    run.resume()
    assert of_task(run, "gate")[2:] == [
        ("ApprovalExpired", 1, {"expires_at": asked["expires_at"], "outcome": "reject", "by": {"via": "timeout"}}),
        ("TaskStarted", 1, {"executor": "threads"}),
        ("TaskSucceeded", 1, {"output": 2, "output_ref": None, "output_type": "int", "stored": True}),
    ]


# --- what the gated function receives, what the gate asks ----------------------------------------


def test_a_gate_without_a_model_gives_the_function_the_answer_input_as_a_dict_and_when_it_was_answered():
    src = (
        "import kernelflow as kf\n"
        "@kf.approval('Ship?', input={'table': str, 'limit': {'type': 'int', 'default': 10}})\n"
        "def ship(table, approval):\n    return [approval.input, approval.answered_at]\n"
    )
    run = cell("plain_gate", src).run()
    answer = kf.approve(run.run_id, "ship", table="t", by="ann", resume=False)
    run.resume()
    assert run["ship"] == [{"table": "t", "limit": 10}, answer.answered_at]
    [granted] = [p for t, _, p in of_task(run, "ship") if t == "ApprovalGranted"]
    assert granted["answered_at"] == answer.answered_at


def test_a_gate_with_a_pydantic_model_asks_with_its_fields_and_model_but_not_its_json_schema():
    from pydantic import BaseModel

    class Ship(BaseModel):
        table: str
        limit: int = 5

    src = "import kernelflow as kf\n@kf.approval('Ship?', input=Ship)\ndef ship(approval):\n    return 1\n"
    run = cell("schema_gate", src, {"Ship": Ship}).run()
    [asked] = [p for t, _, p in of_task(run, "ship") if t == "ApprovalRequested"]
    assert asked["input_schema"] == {
        "fields": {"table": {"type": "str", "required": True}, "limit": {"type": "int", "required": False, "default": 5}},
        "model": f"{Ship.__module__}:{Ship.__qualname__}",
    }


def test_an_approval_message_that_cannot_render_fails_the_task_with_the_template_error():
    src = "import kernelflow as kf\ndef rows():\n    return {'a': 1}\n@kf.approval('Ship {{tasks.rows.output.missing}}?')\ndef ship(rows):\n    return 1\n"
    run = cell("bad_message_exact", src).run(raise_on_failure=False)
    error = of_task(run, "ship")[-1][2]["error"]
    assert error == {
        "exc_type": "EvaluationError",
        "message": "approval message: {{tasks.rows.output.missing}}: the output of task 'rows' has no field 'missing' (fields: a)",
        "traceback": False,
    }


def test_a_breakpoint_before_a_task_whose_input_mapping_cannot_render_shows_no_inputs():
    src = "def a():\n    return {'v': 3}\n@kf.task(input={'x': '{{tasks.a.output.missing}}'})\ndef b(a, x):\n    return x\n"
    wf, _ = define("bp_bad_input", src)
    run = wf.run(break_before=["b"])
    assert run.status == "waiting"
    assert of_task(run, "b") == [("TaskScheduled", 1, {}), ("BreakpointHit", 1, {"inputs": {}, "iteration": 0})]


# --- replay: the events it writes for gates, side effects and sleeps ------------------------------


def test_a_replay_records_the_recorded_answer_at_the_attempt_it_answers(monkeypatch):
    src = "import kernelflow as kf\n@kf.approval('Go?')\ndef publish():\n    return 1\n"
    run = cell("replay_answer", src).run()
    kf.approve(run.run_id, "publish", by="bob", resume=False)
    run.resume()
    report, events = replay_events(run, monkeypatch)
    assert report.ok
    [answer] = [(t, a, p["by"]["name"]) for t, task, a, p in events if task == "publish" and t == "ApprovalGranted"]
    assert answer == ("ApprovalGranted", 1, "bob")


def test_a_replay_starts_a_gate_the_recorded_run_never_answered_as_a_replay_and_fails_it(monkeypatch):
    src = "import kernelflow as kf\ndef rows():\n    return [1]\n@kf.approval('ok?')\ndef maybe(rows):\n    return 1\ndef boom(rows):\n    raise ValueError('x')\n"
    run = cell("replay_unanswered", src).run(raise_on_failure=False)
    _, events = replay_events(run, monkeypatch)
    assert [(t, a, p) for t, task, a, p in events if task == "maybe"][-2:] == [
        ("TaskStarted", 1, {"executor": "replay"}),
        ("TaskFailed", 1, {"error": {"exc_type": "StepFailed", "message": "step 'maybe' reached its approval gate, which the recorded run never answered", "traceback": ""}}),
    ]  # fmt: skip


def test_a_replay_fails_a_side_effect_step_without_recorded_output_at_its_attempt(monkeypatch):
    cell("child_fails", "def bad(x):\n    raise ValueError('no')\n")
    src = "import kernelflow as kf\nsub = kf.subworkflow('child_fails', input={'x': 1})\n"
    run = cell("parent_fails", src).run(raise_on_failure=False)
    _, events = replay_events(run, monkeypatch)
    assert [(t, a) for t, task, a, _ in events if task == "sub"] == [("TaskScheduled", 1), ("TaskStarted", 1), ("TaskFailed", 1)]


def test_a_replay_does_not_wait_for_a_sleep_step(tmp_path, monkeypatch):
    short, long = tmp_path / "nap.yaml", tmp_path / "nap_long.yaml"
    short.write_text("name: replay_nap\ntasks:\n  - id: nap\n    sleep: 0.01s\n")
    long.write_text("name: replay_nap\ntasks:\n  - id: nap\n    sleep: 2s\n")
    run = kf.load(short, {}).run()
    assert run.status == "succeeded"
    # replayed with a 2 s sleep: done at once, long before the wake-up time it records
    report, events = replay_events(run, monkeypatch, workflow=kf.load(long, {}))
    [(_, slept)] = [(t, p) for t, task, _, p in events if t == "SleepStarted"]
    assert slept["seconds"] == 2.0
    nap = report.replayed.tasks["nap"]
    assert nap.status == "succeeded" and nap.ended_at < slept["wake_at"]


# --- the exact record of gates: attempts, defaults, who answered -----------------------------------


def test_a_gate_asks_with_the_on_timeout_and_on_reject_it_was_declared_with():
    # the defaults (reject, fail) are pinned elsewhere; here the declared values must reach the request
    src = "import kernelflow as kf\n@kf.approval('ok?', timeout='1h', on_timeout='skip', on_reject='skip')\ndef gate():\n    return 1\n"
    run = cell("declared_outcomes", src).run()
    [asked] = [p for t, _, p in of_task(run, "gate") if t == "ApprovalRequested"]
    assert (asked["on_timeout"], asked["on_reject"]) == ("skip", "skip")


def test_an_approval_message_that_cannot_render_fails_the_attempt_the_gate_would_have_asked_for():
    src = "import kernelflow as kf\ndef rows():\n    return {'a': 1}\n@kf.approval('Ship {{tasks.rows.output.missing}}?')\ndef ship(rows):\n    return 1\n"
    run = cell("bad_message_attempt", src).run(raise_on_failure=False)
    assert [(t, a) for t, a, _ in of_task(run, "ship")] == [("TaskScheduled", 1), ("TaskStarted", 1), ("TaskFailed", 1)]
    assert run.failures["ship"].attempt == 1
    assert run.state.tasks["ship"].attempt == 1


def test_a_granted_gate_hands_the_function_an_approval_marked_granted():
    src = "import kernelflow as kf\n@kf.approval('Go?')\ndef go(approval):\n    return [approval.granted, approval.expired, approval.by.get('name')]\n"
    run = cell("granted_flag", src).run()
    kf.approve(run.run_id, "go", by="ann", resume=False)
    run.resume()
    assert run["go"] == [True, False, "ann"]


def test_a_pure_yaml_gate_records_its_answer_start_and_success_at_the_answered_attempt(tmp_path):
    path = tmp_path / "pure_attempt.yaml"
    path.write_text("name: pure_attempt\ntasks:\n  - id: review\n    approval: 'Ship?'\n")
    run = kf.load(path, {}).run()
    kf.approve(run.run_id, "review", by="ana", resume=False)
    run.resume()
    assert run.status == "succeeded"
    assert [(t, a) for t, a, _ in of_task(run, "review")] == [
        ("TaskScheduled", 1), ("ApprovalRequested", 1), ("ApprovalGranted", 1), ("TaskStarted", 1), ("TaskSucceeded", 1),
    ]  # fmt: skip
    assert run.state.tasks["review"].attempt == 1


def test_a_rejection_claimed_without_a_name_or_user_is_told_as_rejected_by_someone():
    src = "import kernelflow as kf\n@kf.approval('ok?')\ndef gate():\n    return 1\n"
    run = cell("nameless_reject", src).run()
    [request] = [e for e in run.store.read_run(run.run_id) if e.type == "ApprovalRequested"]
    # another tool answering through the store directly, with no identity at all
    claim = {"type": ev.APPROVAL_REJECTED, "by": {"via": "api"}, "answered_at": ev.now_us(), "reason": None}
    assert run.store.answers.claim(run.run_id, "gate", request.seq, claim) is None
    with pytest.raises(kf.RunFailedError, match="rejected by someone"):
        run.resume()
    assert of_task(run, "gate")[-1] == (
        "TaskFailed", 1, {"error": {"exc_type": "ApprovalRejected", "message": "rejected by someone", "traceback": False}},
    )  # fmt: skip


# --- replay: who answered, and a side effect the recorded run never reached -------------------------


def test_a_replay_records_the_recorded_answer_with_the_recorded_approver_as_actor(monkeypatch):
    src = "import kernelflow as kf\n@kf.approval('Go?')\ndef publish():\n    return 1\n"
    run = cell("replay_actor", src).run()
    kf.approve(run.run_id, "publish", by="bob", resume=False)
    run.resume()
    [recorded] = [e for e in run.store.read_run(run.run_id) if e.type == "ApprovalGranted"]
    _, events = replayed(run, monkeypatch)
    [again] = [e for e in events if e.type == "ApprovalGranted"]
    assert again.actor == recorded.actor and again.actor["name"] == "bob"


def test_a_replay_starts_a_side_effect_step_the_recorded_run_never_ran_as_a_replay_and_fails_it(tmp_path, monkeypatch):
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text("name: replay_new_step\ntasks:\n  - id: a\n    run: python:a\n")
    second.write_text("name: replay_new_step\ntasks:\n  - id: a\n    run: python:a\n  - id: sh\n    needs: [a]\n    run: shell\n    argv: [echo, hi]\n")
    run = kf.load(first, {"a": lambda: 1}).run()
    report, events = replay_events(run, monkeypatch, workflow=kf.load(second, {"a": lambda: 1}))
    message = "step 'sh' (shell) is a side effect; replay uses its recorded output, but it has none (recorded: never ran)"
    assert [(t, a, p) for t, task, a, p in events if task == "sh"] == [
        ("TaskScheduled", 1, {}),
        ("TaskStarted", 1, {"executor": "replay"}),
        ("TaskFailed", 1, {"error": {"exc_type": "StepFailed", "message": message, "traceback": ""}}),
    ]
    assert report.replayed.tasks["sh"].status == "failed"
