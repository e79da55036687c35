"""Time travel in SQL: ``state_at``, ``runs_active_at``, ``approvals`` and ``runs``
agree with the one reducer, at every point of real and synthetic histories."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernelflow.store import FolderStore, statuses
from kernelflow.store.query import PUBLIC_MACROS, PUBLIC_VIEWS

import kernelflow as kf
from kernelflow import events as ev
from kernelflow.events import Event
from kernelflow.exceptions import StoreError
from kernelflow.reducer import (
    FINAL_RUN_STATUSES,
    RUN_STATUS_BY_EVENT,
    TASK_STATUS_BY_EVENT,
    RunState,
    fold,
)
from kernelflow.store_access import use_store

BASE_TS = 1_795_000_000_000_000  # 2026-11-18, UTC microseconds
STATE_SQL = "SELECT * FROM state_at(?, ?)"

# --- comparing SQL with the fold ------------------------------------------------------


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _us(value: datetime | None) -> int | None:
    if value is None:
        return None
    return (value.replace(tzinfo=timezone.utc) - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)


def sql_state(store: FolderStore, run_id: str, point: Any) -> tuple[list[tuple[Any, ...]], set[tuple[Any, Any]]]:
    """state_at's tasks in its order, and the (last_seq, run_status) its rows carry."""
    df = store.sql(STATE_SQL, [run_id, point])
    tasks = [
        (
            r["task_id"], r["status"], r["attempt"], r["iteration"], _us(r["started_at"]), _us(r["ended_at"]),
            _json(r["output"]), _json(r["output_ref"]), _json(r["error"]), r["reason"],
        )
        for r in df.iter_rows(named=True)
    ]
    assert set(df["run_id"]) <= {run_id}
    return tasks, {(r["last_seq"], r["run_status"]) for r in df.iter_rows(named=True)}


def fold_state(state: RunState) -> tuple[list[tuple[Any, ...]], set[tuple[Any, Any]]]:
    tasks = [
        (tid, t.status, t.attempt, t.iteration, t.started_at, t.ended_at, t.output, t.output_ref, t.error, t.reason)
        for tid, t in state.tasks.items()
    ]
    return tasks, ({(state.last_seq, state.status)} if tasks else set())


def check_every_point(store: FolderStore, events: list[Event]) -> None:
    """state_at equals the fold at every seq, and at times around every event."""
    run_id = events[0].run_id
    for seq in range(len(events)):
        assert sql_state(store, run_id, seq) == fold_state(fold(events[: seq + 1])), f"seq {seq}"
    # Past the end: the state after everything; before seq 0: nothing.
    assert sql_state(store, run_id, len(events) + 5) == fold_state(fold(events))
    assert sql_state(store, run_id, -1) == ([], set())
    # A time stands for the events recorded up to it: the prefix that ends
    # before the first event with a later timestamp.
    stamps = sorted({e.ts + d for e in events for d in (-1, 0, 1)})
    for us in stamps[:: max(1, len(stamps) // 4)] + [stamps[-1]]:
        when = datetime(1970, 1, 1) + timedelta(microseconds=us)  # naive = UTC
        assert sql_state(store, run_id, when) == expected_at(events, us), f"at {when}"
    last = events[-1].ts
    text = (datetime(1970, 1, 1) + timedelta(microseconds=last)).isoformat(sep=" ")
    aware = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=last)
    assert sql_state(store, run_id, text) == sql_state(store, run_id, aware) == expected_at(events, last)


def expected_at(events: list[Event], us: int) -> tuple[list[tuple[Any, ...]], set[tuple[Any, Any]]]:
    cut = next((i for i, e in enumerate(events) if e.ts > us), len(events))
    return fold_state(fold(events[:cut])) if cut else ([], set())


def check_runs_view(store: FolderStore, events: list[Event]) -> None:
    run_id = events[0].run_id
    state = fold(events)
    row = store.sql("SELECT * FROM runs WHERE run_id = ?", [run_id]).row(0, named=True)
    counts = state.counts()
    assert row["status"] == state.status
    assert row["workflow"] == state.workflow and row["workflow_version"] == state.workflow_version
    assert _us(row["started_at"]) == state.started_at
    assert _us(row["ended_at"]) == state.ended_at
    assert row["tasks_total"] == len(state.tasks)
    assert (row["tasks_succeeded"], row["tasks_failed"], row["tasks_skipped"]) == (
        counts["succeeded"], counts["failed"] + counts["timed_out"], counts["skipped"],
    )
    assert (_json(row["inputs"]) or {}) == state.inputs
    assert row["last_seq"] == state.last_seq and row["events"] == len(events)


def check_runs_active_at(store: FolderStore, events: list[Event]) -> None:
    run_id = events[0].run_id
    for event in events[:: max(1, len(events) // 3)] + [events[-1]]:
        us = event.ts
        cut = next((i for i, e in enumerate(events) if e.ts > us), len(events))
        state = fold(events[:cut]) if cut else RunState(run_id)
        started = any(e.type in RUN_STATUS_BY_EVENT for e in events[:cut])
        when = datetime(1970, 1, 1) + timedelta(microseconds=us)
        got = store.sql(
            "SELECT workflow, workflow_version, status, started_at FROM runs_active_at(?) WHERE run_id = ?", [when, run_id]
        ).rows()
        if started and state.status not in FINAL_RUN_STATUSES:
            started_at = None if state.started_at is None else datetime(1970, 1, 1) + timedelta(microseconds=state.started_at)
            assert got == [(state.workflow, state.workflow_version, state.status, started_at)]
        else:
            assert got == []


def expected_approvals(events: list[Event]) -> list[tuple[Any, ...]]:
    """The approvals view, spelled out independently in Python."""
    rows = []
    for req in events:
        if req.type != ev.APPROVAL_REQUESTED:
            continue
        later = [e.seq for e in events if e.type == ev.APPROVAL_REQUESTED and e.task_id == req.task_id and e.seq > req.seq]
        bound = later[0] if later else None
        answer = next(
            (
                e for e in events
                if req.task_id is not None and e.task_id == req.task_id and e.type in ev.APPROVAL_ANSWERS
                and e.seq > req.seq and (bound is None or e.seq < bound)
            ),
            None,
        )
        p = answer.payload if answer else {}
        by = p.get("by")
        rows.append(
            (
                req.seq, req.task_id, req.payload.get("message"), req.payload.get("expires_at"),
                statuses.APPROVAL_STATUS[answer.type] if answer else statuses.APPROVAL_PENDING,
                p.get("outcome"),
                (p.get("answered_at") or answer.ts) if answer else None,
                (by.get("name") or by.get("user")) if by else None,
                by, p.get("input"), p.get("comment"), p.get("reason"),
            )
        )
    return rows


def check_approvals(store: FolderStore, events: list[Event]) -> None:
    df = store.sql("SELECT * FROM approvals WHERE run_id = ? ORDER BY seq", [events[0].run_id])
    got = [
        (
            r["seq"], r["task_id"], r["message"], _us(r["expires_at"]), r["status"], r["outcome"], _us(r["answered_at"]),
            r["answered_by"], _json(r["by"]), _json(r["input"]), r["comment"], r["reason"],
        )
        for r in df.iter_rows(named=True)
    ]
    assert got == expected_approvals(events)


# --- real runs of random workflows ------------------------------------------------------


@st.composite
def workflows_with_outcomes(draw):
    """Random DAGs of python tasks: per task its dependencies, retries, how
    many calls fail first, what it returns (inline JSON, an artifact, a
    DataFrame), whether failure is tolerated, a when-condition and a loop."""
    n = draw(st.integers(1, 6))
    tasks = []
    for i in range(n):
        deps = sorted(draw(st.sets(st.integers(0, i - 1), max_size=2))) if i else []
        spec = {
            "deps": deps,
            "retries": draw(st.integers(0, 2)),
            "fails_first": draw(st.sampled_from((0, 0, 0, 1, 2, 3))),  # > retries: fails for good
            "returns": draw(st.sampled_from(["int", "list", "big", "frame", "none"])),
            "continue_on_failure": draw(st.booleans()),
            "when": draw(st.sampled_from([None, None, None, "flag", "not_flag"])),
            "back_to": None,
        }
        if deps and draw(st.integers(0, 2)) == 0:
            spec["back_to"] = (deps[0], draw(st.integers(2, 4)), draw(st.integers(1, 3)))
            spec["returns"] = "count"
        tasks.append(spec)
    return tasks, draw(st.booleans()), draw(st.integers(1, 3))


RETURNS = {
    "int": "{i}",
    "list": "[{i}, 'x', {{'k': calls['t{i}']}}]",
    "big": "'x' * 3000",  # past the inline limit: kept as an artifact
    "frame": "pl.DataFrame({{'v': [{i}, calls['t{i}']]}})",
    "none": "None",
    "count": "calls['t{i}']",
}


def build(tasks, max_parallel):
    calls: dict[str, int] = {}
    src = []
    for i, spec in enumerate(tasks):
        options = [f"retries={spec['retries']}", "retry_delay=0"]
        if spec["continue_on_failure"]:
            options.append("continue_on_failure=True")
        if spec["when"] == "flag":
            options.append('when="{{inputs.flag}} == true"')
        elif spec["when"] == "not_flag":
            options.append('when="{{inputs.flag}} == false"')
        if spec["back_to"]:
            target, limit, max_iterations = spec["back_to"]
            options.append(
                f'back_to={{"step": "t{target}", "when": "{{{{output}}}} < {limit}", "max_iterations": {max_iterations}}}'
            )
        params = ", ".join(f"t{d}" for d in spec["deps"])
        src.append(
            f"@kf.task({', '.join(options)})\n"
            f"def t{i}({params}):\n"
            f"    calls['t{i}'] = calls.get('t{i}', 0) + 1\n"
            f"    if calls['t{i}'] <= {spec['fails_first']}:\n"
            f"        raise RuntimeError('planned failure ' + str(calls['t{i}']))\n"
            f"    return {RETURNS[spec['returns']].format(i=i)}\n"
        )
    ns = {"kf": kf, "pl": pl, "calls": calls}
    exec("\n".join(src), ns)  # noqa: S102 - the test writes the source it runs
    return kf.workflow("travel", [ns[f"t{i}"] for i in range(len(tasks))], max_parallel=max_parallel)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(workflows_with_outcomes())
def test_state_at_equals_the_fold_at_every_seq_of_real_runs(tmp_store: FolderStore, case) -> None:
    tasks, flag, max_parallel = case
    wf = build(tasks, max_parallel)
    use_store(tmp_store.path)
    try:
        inputs = {"flag": flag} if any(t["when"] for t in tasks) else {}
        run = wf.run(raise_on_failure=False, **inputs)
    finally:
        use_store(None)
    events = tmp_store.read_run(run.run_id)
    assert fold(events) == run.state
    check_every_point(tmp_store, events)
    check_runs_view(tmp_store, events)


def test_state_at_follows_a_real_run_through_a_gate_a_failure_and_a_resume(tmp_store: FolderStore) -> None:
    calls = {"flaky": 0}

    def load():
        return [1, 2]

    @kf.approval("Go on with {n} rows?", input={"factor": int})
    def gate(load, factor):
        return len(load) * factor

    def flaky(gate):
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise RuntimeError("first time fails")
        return gate + 1

    use_store(tmp_store.path)
    try:
        run = kf.workflow("gated_travel", [load, gate, flaky]).run(raise_on_failure=False)
        assert run.status == "waiting"
        kf.approve(run.run_id, "gate", by="ana", factor=3)
        run.wait()
        assert run.status == "failed"
        run.resume()
        assert run.status == "succeeded" and run.output == 7
    finally:
        use_store(None)
    events = tmp_store.read_run(run.run_id)
    kinds = {e.type for e in events}
    assert {ev.RUN_SUSPENDED, ev.RUN_RESUMED, ev.APPROVAL_REQUESTED, ev.APPROVAL_GRANTED, ev.TASK_RESET} <= kinds
    check_every_point(tmp_store, events)
    check_runs_view(tmp_store, events)
    check_runs_active_at(tmp_store, events)
    check_approvals(tmp_store, events)
    assert tmp_store.sql("SELECT status, answered_by FROM approvals WHERE run_id = ?", [run.run_id]).rows() == [("granted", "ana")]


# --- synthetic histories, durable events included -----------------------------------------

TASK_POOL = ("a", "b", "c")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=5,
)
errors = st.one_of(
    st.none(),
    st.builds(lambda m: {"exc_type": "ValueError", "message": m, "traceback": "Traceback ..."}, st.text(max_size=8)),
)
actors = st.fixed_dictionaries(
    {"user": st.sampled_from(["ada", "bob"]), "host": st.just("lab"), "pid": st.integers(1, 99), "via": st.just("cli")},
    optional={"name": st.sampled_from(["Ada Lovelace", "Bob"])},
)
stamps = st.integers(BASE_TS, BASE_TS + 10**9)


def _maybe(key: str, values: st.SearchStrategy) -> st.SearchStrategy:
    """A payload with ``key`` set to a drawn value, or without it."""
    return st.one_of(st.just({}), values.map(lambda v: {key: v}))


def payloads(type_: str) -> st.SearchStrategy:
    task_lists = st.lists(st.sampled_from(TASK_POOL), max_size=3)
    by_type = {
        ev.RUN_STARTED: st.fixed_dictionaries({"tasks": task_lists, "inputs": st.dictionaries(st.sampled_from("xyz"), json_values, max_size=2)}),
        ev.RUN_RESUMED: st.fixed_dictionaries(
            {"from_status": st.sampled_from(["failed", "waiting"]), "from_version": st.just("v1"),
             "version": st.sampled_from(["v1", "v2"]), "interrupted": st.booleans(), "reset": task_lists},
            optional={"tasks": task_lists},
        ),
        ev.RUN_SUSPENDED: st.just({"waiting": [{"task": "a", "kind": "approval"}], "how": "gate"}),
        ev.RUN_FAILED: st.fixed_dictionaries({"failed_tasks": task_lists, "error": st.text(max_size=5)}),
        ev.TASK_SUCCEEDED: st.one_of(
            st.just({}),
            st.builds(lambda v: {"output": v, "output_ref": None, "output_type": "x", "stored": True}, json_values),
            st.just({"output": None, "output_ref": {"ref": "artifacts/r/a.1.pkl", "format": "pickle", "bytes": 9}, "stored": True}),
        ),
        ev.TASK_RETRYING: _maybe("error", errors).map(lambda p: {**p, "reason": "error"}),
        ev.TASK_FAILED: _maybe("error", errors),
        ev.TASK_TIMED_OUT: _maybe("error", errors).map(lambda p: {**p, "timeout_s": 0.5}),
        ev.TASK_SKIPPED: _maybe("reason", st.one_of(st.none(), st.text(max_size=8))),
        ev.TASK_RESET: _maybe("iteration", st.integers(0, 5)).map(lambda p: {**p, "loop_from": "c"}),
        ev.APPROVAL_REQUESTED: st.fixed_dictionaries(
            {"message": st.text(max_size=8), "preview": json_values, "input_schema": st.just({"type": "object"}),
             "timeout_s": st.just(60), "expires_at": st.one_of(st.none(), stamps), "on_timeout": st.just("reject"),
             "on_reject": st.just("fail"), "iteration": st.integers(0, 2)}
        ),
        ev.APPROVAL_GRANTED: st.fixed_dictionaries(
            {"by": actors, "answered_at": stamps, "input": st.dictionaries(st.sampled_from("pq"), json_values, max_size=2),
             "comment": st.one_of(st.none(), st.text(max_size=6))}
        ),
        ev.APPROVAL_REJECTED: st.fixed_dictionaries({"by": actors, "answered_at": stamps, "reason": st.text(max_size=6)}),
        ev.APPROVAL_EXPIRED: st.fixed_dictionaries(
            {"expires_at": stamps, "outcome": st.sampled_from(["approve", "reject", "skip", "fail"])}
        ),
        ev.SLEEP_STARTED: st.builds(lambda s: {"seconds": 5, "wake_at": s}, stamps),
        ev.BREAKPOINT_RELEASED: st.just({"replaced": {"x": 1}}),
        ev.SIDE_EFFECT_RECORDED: st.fixed_dictionaries(
            {"kind": st.sampled_from(["now", "random", "remember"]), "call": st.integers(0, 3), "scope": st.just("a"), "value": json_values}
        ),
    }
    return by_type.get(type_, st.just({}))


TYPES = (*ev.EVENT_TYPES, "SomethingFromTheFuture")
TASK_TYPES = tuple(TASK_STATUS_BY_EVENT)


@st.composite
def synthetic_histories(draw):
    """Any sequence the reducer folds: a start, then events of every kind in
    any order (task events without a task, unknown types, answers without a
    request, a clock that sometimes steps back)."""
    run_id = f"s-{uuid.uuid4().hex[:10]}"
    ts = BASE_TS + draw(st.integers(0, 10**6))
    version = "v1"
    events = [Event(run_id, 0, ts, ev.RUN_STARTED, "wf", version, None, None, draw(payloads(ev.RUN_STARTED)), {"user": "ada"})]
    for seq in range(1, draw(st.integers(1, 18)) + 1):
        type_ = draw(st.one_of(st.sampled_from(TASK_TYPES), st.sampled_from(TASK_TYPES), st.sampled_from(TYPES)))
        task = draw(st.sampled_from(TASK_POOL)) if draw(st.integers(0, 9)) else draw(st.sampled_from((None, "d")))
        if type_ in RUN_STATUS_BY_EVENT and draw(st.booleans()):
            task = None
        attempt = draw(st.sampled_from((None, 0, 1, 2, 3, 7)))
        payload = draw(payloads(type_))
        if type_ in (ev.RUN_STARTED, ev.RUN_RESUMED):
            version = payload.get("version", draw(st.sampled_from(["v1", "v2", "v3"])))
        ts += draw(st.sampled_from((0, 1, 7, 1000, 250_000, -300)))
        events.append(Event(run_id, seq, ts, type_, "wf" if seq % 5 else "wf2", version, task, attempt, payload, {"user": "ada"}))
    return events


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(synthetic_histories())
def test_state_at_equals_the_fold_at_every_seq_of_synthetic_histories(tmp_store: FolderStore, events: list[Event]) -> None:
    for event in events:
        tmp_store.append(event)
    assert tmp_store.read_run(events[0].run_id) == events
    check_every_point(tmp_store, events)
    check_runs_view(tmp_store, events)
    check_runs_active_at(tmp_store, events)
    check_approvals(tmp_store, events)


# --- the same from Parquet, and the lookup tables -------------------------------------------


def _durable_history(run_id: str = "d1") -> list[Event]:
    by = {"user": "ada", "host": "lab", "pid": 7, "via": "cli"}
    steps = [
        (ev.RUN_STARTED, None, None, {"tasks": ["load", "gate", "publish"], "inputs": {"day": 3}}),
        (ev.TASK_SCHEDULED, "load", 1, {}),
        (ev.TASK_STARTED, "load", 1, {}),
        (ev.SIDE_EFFECT_RECORDED, "load", 1, {"kind": "now", "call": 0, "scope": "load", "value": 5}),
        (ev.TASK_SUCCEEDED, "load", 1, {"output": {"rows": 3}, "output_ref": None, "stored": True}),
        (ev.APPROVAL_REQUESTED, "gate", None, {"message": "ship it?", "preview": [1], "input_schema": {"type": "object"},
                                               "timeout_s": 60, "expires_at": BASE_TS + 60_000_000, "on_timeout": "reject",
                                               "on_reject": "fail", "iteration": 0}),
        (ev.RUN_SUSPENDED, None, None, {"waiting": [{"task": "gate", "kind": "approval"}], "how": "gate"}),
        (ev.APPROVAL_GRANTED, "gate", None, {"by": {**by, "name": "Ada L."}, "answered_at": BASE_TS + 9_000_000,
                                             "input": {"ok": True}, "comment": "go"}),
        (ev.RUN_RESUMED, None, None, {"from_status": "waiting", "from_version": "v1", "version": "v2", "interrupted": False,
                                      "reset": [], "tasks": ["load", "gate", "publish", "notify"]}),
        (ev.TASK_STARTED, "gate", 1, {}),
        (ev.TASK_SUCCEEDED, "gate", 1, {"output": {"ok": True}, "output_ref": None, "stored": True}),
        (ev.TASK_STARTED, "publish", 1, {}),
        (ev.TASK_FAILED, "publish", 1, {"error": {"exc_type": "IOError", "message": "disk", "traceback": ""}}),
        (ev.RUN_FAILED, None, None, {"failed_tasks": ["publish"], "error": "publish failed"}),
    ]
    return [
        Event(run_id, seq, BASE_TS + seq * 1_000_000, t, "ship", "v2" if seq >= 8 else "v1", task, attempt, p, by)
        for seq, (t, task, attempt, p) in enumerate(steps)
    ]


@pytest.mark.parametrize("compacted", [False, True], ids=["segments", "parquet"])
def test_a_durable_history_reads_the_same_from_segments_and_parquet(tmp_store: FolderStore, compacted: bool) -> None:
    events = _durable_history()
    for event in events:
        tmp_store.append(event)
    if compacted:
        tmp_store.close()
    check_every_point(tmp_store, events)
    check_runs_view(tmp_store, events)
    check_approvals(tmp_store, events)
    at_gate = tmp_store.sql("SELECT task_id, status FROM state_at('d1', 6)").rows()
    assert at_gate == [("load", "succeeded"), ("gate", "waiting"), ("publish", "pending")]
    assert tmp_store.sql("SELECT DISTINCT run_status FROM state_at('d1', 6)").item() == "waiting"
    # The resume lists a task the first version did not have: it is known (pending) from then on.
    assert tmp_store.sql("SELECT count(*) FROM state_at('d1', 7)").item() == 3
    assert tmp_store.sql("SELECT status FROM state_at('d1', 8) WHERE task_id = 'notify'").item() == "pending"
    runs = tmp_store.sql("SELECT workflow_version, status, tasks_total, tasks_succeeded, tasks_failed FROM runs").rows()
    assert runs == [("v2", "failed", 4, 2, 1)]
    approval = tmp_store.sql("SELECT status, answered_by, input->>'ok' AS ok, comment, expires_at FROM approvals").row(0)
    assert approval == ("granted", "Ada L.", "true", "go", datetime(1970, 1, 1) + timedelta(microseconds=BASE_TS + 60_000_000))


def test_runs_follows_suspend_and_resume(tmp_store: FolderStore) -> None:
    events = _durable_history()
    for event in events[:7]:  # suspended at the gate
        tmp_store.append(event)
    row = tmp_store.sql("SELECT status, ended_at, workflow_version FROM runs").row(0)
    assert row == ("waiting", None, "v1")
    active = tmp_store.sql("SELECT run_id, status FROM runs_active_at(?)", [datetime(2100, 1, 1)]).rows()
    assert active == [("d1", "waiting")]
    for event in events[7:]:
        tmp_store.append(event)
    assert tmp_store.sql("SELECT status, workflow_version FROM runs").row(0) == ("failed", "v2")
    assert tmp_store.sql("SELECT count(*) FROM runs_active_at(?)", [datetime(2100, 1, 1)]).item() == 0
    # A run resumed after failing is under way again: no end time until it ends anew.
    tmp_store.append(
        Event("d1", len(events), BASE_TS + 10**8, ev.RUN_RESUMED, "ship", "v3", payload={"from_status": "failed", "tasks": []})
    )
    assert tmp_store.sql("SELECT status, ended_at, duration_s, workflow_version FROM runs").row(0) == ("running", None, None, "v3")


def test_a_task_reset_by_a_loop_is_not_counted_as_done(tmp_store: FolderStore) -> None:
    steps = [
        (ev.RUN_STARTED, None, None, {"tasks": ["a"]}),
        (ev.TASK_STARTED, "a", 1, {}),
        (ev.TASK_SUCCEEDED, "a", 1, {"output": 1, "stored": True}),
        (ev.TASK_RESET, "a", 1, {"iteration": 1}),
    ]
    for seq, (t, task, attempt, p) in enumerate(steps):
        tmp_store.append(Event("loop", seq, BASE_TS + seq, t, "wf", "v1", task, attempt, p))
    assert tmp_store.sql("SELECT tasks_succeeded, tasks_total FROM runs").row(0) == (0, 1)
    assert tmp_store.sql("SELECT status, attempt, iteration, output FROM state_at('loop', 3)").row(0) == ("pending", 1, 1, None)


def test_approvals_pair_each_request_with_its_own_answer(tmp_store: FolderStore) -> None:
    by = {"user": "ada", "host": "lab", "pid": 7, "via": "notebook"}
    steps = [
        (ev.RUN_STARTED, None, {"tasks": ["g", "h"]}),
        (ev.APPROVAL_REQUESTED, "g", {"message": "first", "expires_at": None, "iteration": 0}),
        (ev.APPROVAL_REQUESTED, "h", {"message": "other task", "expires_at": BASE_TS + 5}),
        (ev.APPROVAL_REJECTED, "g", {"by": by, "answered_at": BASE_TS + 3, "reason": "not yet"}),
        (ev.APPROVAL_GRANTED, "g", {"by": by, "answered_at": BASE_TS + 4}),  # a second answer: ignored
        (ev.APPROVAL_REQUESTED, "g", {"message": "second", "expires_at": BASE_TS + 9, "iteration": 1}),
        (ev.APPROVAL_EXPIRED, "h", {"expires_at": BASE_TS + 5, "outcome": "skip"}),
    ]
    for seq, (t, task, p) in enumerate(steps):
        tmp_store.append(Event("ap", seq, BASE_TS + seq, t, "wf", "v1", task, None, p))
    rows = tmp_store.sql(
        "SELECT task_id, message, iteration, status, outcome, answered_by, reason, answered_at FROM approvals ORDER BY seq"
    ).rows()
    at = lambda us: datetime(1970, 1, 1) + timedelta(microseconds=us)
    assert rows == [
        ("g", "first", 0, "rejected", None, "ada", "not yet", at(BASE_TS + 3)),
        ("h", "other task", None, "expired", "skip", None, None, at(BASE_TS + 6)),  # when the expiry was recorded
        ("g", "second", 1, "pending", None, None, None, None),
    ]
    assert tmp_store.sql("SELECT count(*) FROM approvals WHERE status = 'pending' AND run_id = 'ap'").item() == 1


def test_missing_runs_give_empty_results_and_bad_points_say_what_they_accept(tmp_store: FolderStore) -> None:
    assert tmp_store.sql("SELECT * FROM state_at('nope', 3)").height == 0  # nothing stored yet
    for event in _durable_history():
        tmp_store.append(event)
    assert tmp_store.sql("SELECT * FROM state_at('nope', 3)").height == 0
    assert tmp_store.sql("SELECT * FROM state_at('nope', TIMESTAMP '2030-01-01')").height == 0
    assert tmp_store.sql("SELECT * FROM approvals WHERE run_id = 'nope'").height == 0
    assert tmp_store.sql("SELECT * FROM state_at('d1', TIMESTAMP '2000-01-01')").height == 0  # before it started
    # Text and TIMESTAMPTZ points: naive text is UTC; an offset is honoured.
    t5 = datetime(1970, 1, 1) + timedelta(microseconds=BASE_TS + 5_000_000)
    plus_two = (t5 + timedelta(hours=2)).isoformat() + "+02:00"
    for point in (t5.isoformat(), t5.isoformat(sep=" "), plus_two):
        assert tmp_store.sql("SELECT DISTINCT last_seq FROM state_at('d1', ?)", [point]).item() == 5
    assert tmp_store.sql(f"SELECT DISTINCT last_seq FROM state_at('d1', TIMESTAMPTZ '{plus_two}')").item() == 5
    for bad in ("'yesterday'", "3.5", "NULL"):
        with pytest.raises(StoreError, match=r"state_at\(run_id, point\): point must be a seq \(an integer\) or a timestamp"):
            tmp_store.sql(f"SELECT * FROM state_at('d1', {bad})")
    with pytest.raises(StoreError, match=r"runs_active_at\(ts\): ts must be a timestamp"):
        tmp_store.sql("SELECT * FROM runs_active_at(42)")


def test_new_views_and_macros_are_public_listed_and_repaired(tmp_store: FolderStore) -> None:
    assert {"approvals", "dead_letters"} <= set(PUBLIC_VIEWS)
    assert PUBLIC_MACROS == ("state_at(run_id, point)", "runs_active_at(ts)")
    with pytest.raises(StoreError) as info:
        tmp_store.sql("SELECT nope FROM approvals")
    assert "approvals" in str(info.value) and "state_at(run_id, point), runs_active_at(ts)" in str(info.value)
    tmp_store.sql("DROP MACRO TABLE state_at")
    assert tmp_store.sql("SELECT count(*) FROM state_at('x', 0)").item() == 0  # put back on the next query
    columns = {
        "state_at": ("SELECT * FROM state_at('x', 0)", [
            "run_id", "task_id", "status", "attempt", "iteration", "started_at", "ended_at", "output", "output_ref",
            "error", "reason", "last_seq", "run_status"]),
        "runs_active_at": ("SELECT * FROM runs_active_at(now())", ["run_id", "workflow", "workflow_version", "status", "started_at"]),
        "approvals": ("SELECT * FROM approvals", [
            "run_id", "workflow", "task_id", "iteration", "requested_at", "message", "preview", "input_schema", "expires_at",
            "status", "outcome", "answered_at", "answered_by", "by", "input", "comment", "reason", "seq"]),
    }
    for name, (query, expected) in columns.items():
        assert tmp_store.sql(f"DESCRIBE {query}")["column_name"].to_list() == expected, name


def test_every_status_event_says_which_fields_it_writes() -> None:
    # A status type added to the reducer must be given its field effects here,
    # or state_at would silently ignore what the new event changes.
    assert set(statuses.TASK_FIELD_EFFECTS) == set(TASK_STATUS_BY_EVENT)
    assert set(statuses.RUN_FIELD_EFFECTS) == set(RUN_STATUS_BY_EVENT)
    for effects, fields in ((statuses.TASK_FIELD_EFFECTS, statuses.TASK_FIELDS), (statuses.RUN_FIELD_EFFECTS, statuses.RUN_FIELDS)):
        for type_, written in effects.items():
            assert set(written) <= set(fields), type_
            assert set(written.values()) <= {statuses.SET, statuses.CLEAR, statuses.NEXT}, type_
    assert set(statuses.APPROVAL_STATUS) == set(ev.APPROVAL_ANSWERS)
