"""One reducer: the engine's state, the fold of stored events and the SQL views agree."""

from __future__ import annotations

import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernelflow as kf
from kernelflow.events import Event
from kernelflow.reducer import FoldError, RunState, apply, fold
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
