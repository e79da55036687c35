"""One reducer: the engine's state, the fold of stored events and the SQL views agree."""

from __future__ import annotations

import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernelflow as kf
from kernelflow.events import Event
from kernelflow.reducer import FoldError, RunState, TaskState, apply, fold
from kernelflow.store import FolderStore
from kernelflow.store_access import use_store


@st.composite
def dags_with_outcomes(draw):
    """A random DAG (edges only from lower to higher index) and, per task, its
    retries and how many attempts fail before one succeeds (or all fail)."""
    n = draw(st.integers(1, 7))
    deps = [sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else [] for i in range(n)]
    retries = [draw(st.integers(0, 2)) for _ in range(n)]
    fails_first = [draw(st.integers(0, 3)) for _ in range(n)]  # > retries means the task fails for good
    max_parallel = draw(st.integers(1, 4))
    return deps, retries, fails_first, max_parallel


def build(deps, retries, fails_first, max_parallel):
    calls: dict[str, int] = {}
    src = []
    for i, ds in enumerate(deps):
        params = ", ".join(f"t{d}" for d in ds)
        src.append(
            f"@kf.task(retries={retries[i]}, retry_delay=0)\n"
            f"def t{i}({params}):\n"
            f"    calls['t{i}'] = calls.get('t{i}', 0) + 1\n"
            f"    if calls['t{i}'] <= {fails_first[i]}:\n"
            f"        raise RuntimeError('planned failure ' + str(calls['t{i}']))\n"
            f"    return {i}\n"
        )
    ns = {"kf": kf, "calls": calls}
    exec("\n".join(src), ns)
    return kf.workflow("prop", [ns[f"t{i}"] for i in range(len(deps))], max_parallel=max_parallel)


def expected(deps, retries, fails_first):
    status, attempts = {}, {}
    for i, ds in enumerate(deps):
        t = f"t{i}"
        if any(status[f"t{d}"] != "succeeded" for d in ds):
            status[t], attempts[t] = "skipped", 0
        elif fails_first[i] <= retries[i]:
            status[t], attempts[t] = "succeeded", fails_first[i] + 1
        else:
            status[t], attempts[t] = "failed", retries[i] + 1
    return status, attempts


_STORE_DIR = tempfile.mkdtemp(prefix="kf-prop-")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dags_with_outcomes())
def test_fold_of_stored_events_equals_engine_state_and_expectation(case):
    deps, retries, fails_first, max_parallel = case
    use_store(_STORE_DIR)
    try:
        run = build(deps, retries, fails_first, max_parallel).run(raise_on_failure=False)
    finally:
        use_store(None)
    store = run.store
    stored = store.read_run(run.run_id)
    # 1. the engine's view is the fold of what it recorded, event for event
    assert fold(stored) == run.state
    assert [e.seq for e in stored] == list(range(len(stored)))
    # 2. and that fold is right, by an independent reading of the plan
    status, attempts = expected(deps, retries, fails_first)
    assert {t: s.status for t, s in run.state.tasks.items()} == status
    assert {t: s.attempt for t, s in run.state.tasks.items()} == attempts
    assert run.state.status == ("failed" if "failed" in status.values() else "succeeded")
    # 3. the SQL views agree with the fold
    runs = store.sql("SELECT status, tasks_total, tasks_succeeded, tasks_failed, tasks_skipped, last_seq FROM runs WHERE run_id = ?", [run.run_id])
    counts = run.state.counts()
    assert runs.rows() == [(run.state.status, len(deps), counts["succeeded"], counts["failed"], counts["skipped"], run.state.last_seq)]
    attempt_rows = store.sql(
        "SELECT task_id, max(attempt) AS n, arg_max(status, attempt) AS last FROM task_attempts WHERE run_id = ? GROUP BY task_id",
        [run.run_id],
    )
    from_sql = {r[0]: (r[1], r[2]) for r in attempt_rows.rows()}
    from_fold = {t: (s.attempt, s.status) for t, s in run.state.tasks.items() if s.attempt}
    assert from_sql == from_fold


def _ev(seq, type_, task=None, attempt=None, payload=None, run_id="r-1"):
    return Event(run_id, seq, 1_000 + seq, type_, "wf", "v1", task, attempt, payload or {}, {})


def test_fold_refuses_gaps_and_foreign_events():
    state = RunState("r-1")
    apply(state, _ev(0, "RunStarted", payload={"tasks": ["a"]}))
    with pytest.raises(FoldError, match="expected seq 1, got 2"):
        apply(state, _ev(2, "TaskStarted", "a", 1))
    with pytest.raises(FoldError, match="belongs to run r-2"):
        apply(state, _ev(1, "TaskStarted", "a", 1, run_id="r-2"))


def test_fold_walks_a_task_through_its_life():
    events = [
        _ev(0, "RunStarted", payload={"tasks": ["a", "b"], "inputs": {"n": 1}}),
        _ev(1, "TaskScheduled", "a", 1),
        _ev(2, "TaskStarted", "a", 1),
        _ev(3, "TaskRetrying", "a", 1, {"error": {"exc_type": "E", "message": "m", "traceback": ""}, "reason": "error"}),
        _ev(4, "TaskScheduled", "a", 2),
        _ev(5, "TaskStarted", "a", 2),
        _ev(6, "TaskSucceeded", "a", 2, {"output": [1], "stored": True}),
        _ev(7, "TaskSkipped", "b", None, {"reason": "because"}),
        _ev(8, "RunSucceeded"),
    ]
    states = [fold(events[: i + 1]) for i in range(len(events))]
    assert [s.tasks["a"].status for s in states] == [
        "pending", "scheduled", "running", "retrying", "scheduled", "running", "succeeded", "succeeded", "succeeded",
    ]
    final = states[-1]
    assert final.tasks["a"].attempt == 2 and final.tasks["a"].error is None and final.tasks["a"].output == [1]
    assert final.tasks["b"].reason == "because" and final.status == "succeeded" and final.inputs == {"n": 1}
    assert final.started_at == 1_000 and final.ended_at == 1_008


def test_unknown_event_types_only_advance_seq():
    state = fold([_ev(0, "RunStarted", payload={"tasks": ["a"]}), _ev(1, "SomethingFromTheFuture", "a")])
    assert state.last_seq == 1 and state.tasks["a"].status == "pending"


def test_store_round_trip_preserves_events(tmp_store: FolderStore):
    events = [_ev(0, "RunStarted", payload={"tasks": ["a"], "inputs": {"s": "ünï", "f": 1.5}}), _ev(1, "TaskStarted", "a", 1)]
    for e in events:
        tmp_store.append(e)
    assert tmp_store.read_run("r-1") == events


# --- exact states from hand-built event lists ---------------------------------
# The property test compares the fold with the engine's state, which is the same
# fold: these pin down what each event type does to each field, so a reducer that
# drops or misnames a field cannot agree with itself unnoticed.

def _run(*events):
    """Fold ``RunStarted`` (tasks a and b) followed by ``events`` (given as
    (type, task, attempt, payload) tuples, seq and ts counted on)."""
    out = [_ev(0, "RunStarted", payload={"tasks": ["a", "b"]})]
    for i, (type_, task, attempt, payload) in enumerate(events, start=1):
        out.append(_ev(i, type_, task, attempt, payload))
    return fold(out)


def test_run_started_sets_workflow_inputs_and_pending_tasks():
    state = fold([Event("r-1", 0, 1_000, "RunStarted", "wf", "v7", None, None, {"tasks": ["a", "b"], "inputs": {"n": 1}}, {})])
    assert state == RunState(
        "r-1", workflow="wf", workflow_version="v7", status="running", inputs={"n": 1},
        tasks={"a": TaskState("a"), "b": TaskState("b")}, started_at=1_000, ended_at=None, last_seq=0,
        error=None, failed_tasks=[],
    )


def test_run_started_without_tasks_or_inputs():
    state = fold([_ev(0, "RunStarted")])
    assert state.tasks == {} and state.inputs == {} and state.status == "running"


def test_run_failed_records_error_failed_tasks_and_end():
    state = _run(("RunFailed", None, None, {"error": "task a failed", "failed_tasks": ["a"]}))
    assert (state.status, state.error, state.failed_tasks, state.ended_at) == ("failed", "task a failed", ["a"], 1_001)
    assert state.done


def test_run_failed_without_details():
    state = _run(("RunFailed", None, None, {}))
    assert (state.status, state.error, state.failed_tasks, state.ended_at) == ("failed", None, [], 1_001)


def test_run_succeeded_ends_the_run_without_error():
    state = _run(("RunSucceeded", None, None, {}))
    assert (state.status, state.error, state.failed_tasks, state.ended_at) == ("succeeded", None, [], 1_001)


def test_suspended_run_is_waiting_and_not_ended():
    state = _run(("RunSuspended", None, None, {"waiting": [{"task": "a", "kind": "approval"}]}))
    assert (state.status, state.ended_at, state.done) == ("waiting", None, False)


def test_run_started_again_clears_the_end_of_a_failed_run():
    # A run restarted under the same id (RunStarted after RunFailed) starts over.
    events = [
        _ev(0, "RunStarted", payload={"tasks": ["a"]}),
        _ev(1, "RunFailed", payload={"error": "boom", "failed_tasks": ["a"]}),
        Event("r-1", 2, 1_002, "RunStarted", "wf", "v2", None, None, {"tasks": ["a", "c"], "inputs": {"x": 2}}, {}),
    ]
    state = fold(events)
    assert (state.status, state.ended_at, state.error, state.failed_tasks) == ("running", None, None, [])
    assert (state.workflow_version, state.started_at, state.inputs) == ("v2", 1_002, {"x": 2})
    assert state.tasks == {"a": TaskState("a"), "c": TaskState("c")}


def test_resumed_run_runs_again_with_new_version_and_tasks():
    events = [
        _ev(0, "RunStarted", payload={"tasks": ["a"], "inputs": {"x": 1}}),
        _ev(1, "TaskScheduled", "a"),
        _ev(2, "RunFailed", payload={"error": "boom", "failed_tasks": ["a"]}),
        Event("r-1", 3, 1_003, "RunResumed", "wf", "v2", None, None, {"tasks": ["a", "new"]}, {}),
    ]
    state = fold(events)
    assert state == RunState(
        "r-1", workflow="wf", workflow_version="v2", status="running", inputs={"x": 1},
        tasks={"a": TaskState("a", status="scheduled", scheduled_at=1_001), "new": TaskState("new")},
        started_at=1_000, ended_at=None, last_seq=3, error=None, failed_tasks=[],
    )


def test_resumed_run_without_task_list_keeps_its_tasks():
    state = _run(("RunSuspended", None, None, {}), ("RunResumed", None, None, {}))
    assert state.status == "running" and set(state.tasks) == {"a", "b"}


def test_event_of_a_task_not_announced_creates_it():
    state = _run(("TaskScheduled", "late", None, {}))
    assert state.tasks["late"] == TaskState("late", status="scheduled", scheduled_at=1_001)


def test_task_scheduled_started_succeeded_fields():
    state = _run(
        ("TaskScheduled", "a", None, {}),
        ("TaskStarted", "a", 1, {}),
        ("TaskSucceeded", "a", 1, {"output": {"v": 1}, "output_ref": {"path": "p"}, "output_type": "dict", "stored": 1}),
    )
    assert state.tasks["a"] == TaskState(
        "a", status="succeeded", attempt=1, scheduled_at=1_001, started_at=1_002, ended_at=1_003,
        output={"v": 1}, output_ref={"path": "p"}, output_type="dict", output_stored=True,
    )


def test_task_succeeded_without_stored_output():
    state = _run(("TaskStarted", "a", 1, {}), ("TaskSucceeded", "a", 1, {"output": 3}))
    t = state.tasks["a"]
    assert (t.output, t.output_ref, t.output_type, t.output_stored) == (3, None, None, False)


def test_task_started_takes_the_events_attempt():
    state = _run(("TaskStarted", "a", 3, {}))
    assert state.tasks["a"].attempt == 3


def test_task_started_without_attempt_counts_on():
    state = _run(("TaskStarted", "a", None, {}), ("TaskStarted", "a", None, {}))
    assert state.tasks["a"].attempt == 2


def test_retry_clears_end_and_error_when_the_next_attempt_starts():
    err = {"exc_type": "E", "message": "m", "traceback": ""}
    state = _run(("TaskStarted", "a", 1, {}), ("TaskRetrying", "a", 1, {"error": err}))
    assert (state.tasks["a"].status, state.tasks["a"].ended_at, state.tasks["a"].error) == ("retrying", 1_002, err)
    state = _run(("TaskStarted", "a", 1, {}), ("TaskRetrying", "a", 1, {"error": err}), ("TaskStarted", "a", 2, {}))
    assert (state.tasks["a"].started_at, state.tasks["a"].ended_at, state.tasks["a"].error) == (1_003, None, None)


@pytest.mark.parametrize("type_, status", [("TaskFailed", "failed"), ("TaskTimedOut", "timed_out"), ("TaskRetrying", "retrying")])
def test_bad_ends_record_end_time_and_error(type_, status):
    err = {"exc_type": "TimeoutError", "message": "too slow", "traceback": "tb"}
    state = _run(("TaskStarted", "a", 1, {}), (type_, "a", 1, {"error": err}))
    assert state.tasks["a"] == TaskState("a", status=status, attempt=1, started_at=1_001, ended_at=1_002, error=err)


def test_skipped_task_records_end_time_and_reason():
    state = _run(("TaskSkipped", "b", None, {"reason": "upstream failed"}))
    assert state.tasks["b"] == TaskState("b", status="skipped", ended_at=1_001, reason="upstream failed")


def test_approval_gate_and_its_answer():
    request = {"message": "ok?", "timeout_s": 60}
    state = _run(("TaskScheduled", "a", None, {}), ("ApprovalRequested", "a", None, request))
    assert state.tasks["a"].status == "waiting"
    assert state.tasks["a"].gate == {"kind": "approval", "seq": 2, "requested_at": 1_002, "message": "ok?", "timeout_s": 60}
    assert state.tasks["a"].answer is None
    assert state.waiting == {"a": state.tasks["a"].gate}
    state = _run(("ApprovalRequested", "a", None, request), ("ApprovalGranted", "a", None, {"by": "ann", "input": {"k": 1}}))
    assert state.tasks["a"].status == "scheduled" and state.waiting == {}
    assert state.tasks["a"].answer == {"type": "ApprovalGranted", "seq": 2, "at": 1_002, "by": "ann", "input": {"k": 1}}
    assert state.tasks["a"].gate["kind"] == "approval"  # the gate it last waited at stays


@pytest.mark.parametrize("answer", ["ApprovalRejected", "ApprovalExpired"])
def test_other_approval_answers(answer):
    state = _run(("ApprovalRequested", "a", None, {}), (answer, "a", None, {"reason": "no"}))
    assert state.tasks["a"].status == "scheduled"
    assert state.tasks["a"].answer == {"type": answer, "seq": 2, "at": 1_002, "reason": "no"}


def test_a_new_gate_forgets_the_previous_answer():
    state = _run(
        ("ApprovalRequested", "a", None, {}),
        ("ApprovalGranted", "a", None, {"by": "ann"}),
        ("ApprovalRequested", "a", None, {"message": "again"}),
    )
    assert state.tasks["a"].answer is None
    assert state.tasks["a"].gate == {"kind": "approval", "seq": 3, "requested_at": 1_003, "message": "again"}


def test_breakpoint_gate_and_release_with_replaced_inputs():
    state = _run(("BreakpointHit", "a", None, {"inputs": {"x": "1"}}))
    assert state.tasks["a"].status == "waiting"
    assert state.tasks["a"].gate == {"kind": "breakpoint", "seq": 1, "requested_at": 1_001, "inputs": {"x": "1"}}
    state = _run(("BreakpointHit", "a", None, {}), ("BreakpointReleased", "a", None, {"replaced": {"x": {"ref": 1}}}))
    t = state.tasks["a"]
    assert t.status == "scheduled" and t.replaced == {"x": {"ref": 1}}
    assert t.answer == {"type": "BreakpointReleased", "seq": 2, "at": 1_002, "replaced": {"x": {"ref": 1}}}


def test_breakpoint_released_without_replacements():
    state = _run(("BreakpointHit", "a", None, {}), ("BreakpointReleased", "a", None, {}))
    assert state.tasks["a"].replaced == {}
    assert state.tasks["a"].answer == {"type": "BreakpointReleased", "seq": 2, "at": 1_002}


def test_sleep_records_wake_time():
    state = _run(("TaskStarted", "a", 1, {}), ("SleepStarted", "a", 1, {"seconds": 5, "wake_at": 9_000_000}))
    assert (state.tasks["a"].status, state.tasks["a"].wake_at) == ("sleeping", 9_000_000)


def test_task_reset_starts_over_but_keeps_attempts():
    # Everything a finished iteration left behind goes; only the attempt count
    # (attempt numbers stay unique per task) and the iteration remain.
    state = _run(
        ("TaskScheduled", "a", None, {}),
        ("BreakpointHit", "a", None, {}),
        ("BreakpointReleased", "a", None, {"replaced": {"x": 1}}),
        ("TaskStarted", "a", 1, {}),
        ("SleepStarted", "a", 1, {"wake_at": 5}),
        ("TaskRetrying", "a", 1, {"error": {"message": "m"}}),
        ("TaskStarted", "a", 2, {}),
        ("TaskSucceeded", "a", 2, {"output": 1, "output_ref": {"p": 1}, "output_type": "int", "stored": True}),
        ("TaskSkipped", "a", None, {"reason": "r"}),
        ("TaskReset", "a", None, {}),
    )
    assert state.tasks["a"] == TaskState("a", status="pending", attempt=2, iteration=1)


def test_task_reset_counts_iterations_or_takes_the_given_one():
    state = _run(("TaskReset", "a", None, {}), ("TaskReset", "a", None, {}))
    assert state.tasks["a"].iteration == 2
    state = _run(("TaskReset", "a", None, {"iteration": 7}))
    assert state.tasks["a"].iteration == 7


def test_fold_with_run_id():
    # With a run_id, an empty history is that run's initial state and
    # another run's events are refused.
    assert fold([], "r-9") == RunState("r-9")
    with pytest.raises(FoldError, match="belongs to run r-1, not r-9"):
        fold([_ev(0, "RunStarted")], "r-9")
    assert fold([_ev(0, "RunStarted")], "r-1").status == "running"


def test_fold_of_nothing_without_run_id_is_an_error():
    with pytest.raises(FoldError, match="^no events to fold and no run_id given$"):
        fold([])


def test_copy_is_deep():
    state = _run(("TaskStarted", "a", 1, {}))
    copied = state.copy()
    assert copied == state and copied is not state
    copied.tasks["a"].status = "failed"
    copied.inputs["x"] = 1
    assert state.tasks["a"].status == "running" and state.inputs == {}


def test_counts_and_waiting():
    assert _run().counts() == {
        "pending": 2, "scheduled": 0, "running": 0, "succeeded": 0, "retrying": 0, "failed": 0,
        "timed_out": 0, "skipped": 0, "waiting": 0, "sleeping": 0,
    }
    state = _run(("TaskScheduled", "a", None, {}), ("BreakpointHit", "b", None, {}))
    counts = state.counts()
    assert counts["waiting"] == 1 and counts["scheduled"] == 1 and counts["pending"] == 0
    assert sum(counts.values()) == 2
    assert set(state.waiting) == {"b"}
