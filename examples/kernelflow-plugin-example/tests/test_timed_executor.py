"""The ``timed`` executor, used the way a workflow author would: through kernelflow."""

from __future__ import annotations

import threading
from importlib.metadata import entry_points

import kernelflow as kf
from kernelflow_plugin_example import timings


def started_on(run):
    return kf.sql(
        f"SELECT task_id, payload->>'executor' FROM events WHERE run_id = '{run.run_id}' AND type = 'TaskStarted' ORDER BY seq"
    ).rows()


def test_kernelflow_finds_the_plugin_through_its_entry_point():
    [ep] = [ep for ep in entry_points(group="kernelflow") if ep.name == "example"]
    assert ep.value == "kernelflow_plugin_example.plugin"
    assert ep.dist.name == "kernelflow-plugin-example"
    assert "example" in kf.plugin_names()


def test_a_task_runs_on_timed_and_its_attempt_is_timed():
    def extract():
        return [1, 2, 3]

    @kf.task(executor="timed")
    def total(extract):
        print("adding up")
        return sum(extract)

    run = kf.workflow("timed_demo", [extract, total]).run()
    assert run.output == 6
    assert started_on(run) == [("extract", "threads"), ("total", "timed")]
    [timing] = timings(run.run_id)
    assert (timing.task_id, timing.attempt, timing.outcome) == ("total", 1, "ok")
    assert 0 <= timing.seconds < 5
    # What the task printed is captured like on any executor.
    logged = kf.sql(f"SELECT payload->>'text' FROM events WHERE run_id = '{run.run_id}' AND type = 'TaskLogged'").rows()
    assert logged == [("adding up\n",)]


def test_failed_attempts_are_retried_on_timed():
    calls = []

    @kf.task(executor="timed", retries=2, retry_delay=0)
    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not yet")
        return "done"

    run = kf.workflow("timed_retries", [flaky]).run()
    assert run.output == "done"
    assert [(t.attempt, t.outcome) for t in timings(run.run_id)] == [(1, "error"), (2, "error"), (3, "ok")]


def test_a_timed_out_attempt_is_abandoned_and_its_retry_runs_beside_it():
    release = threading.Event()
    calls = []

    @kf.task(executor="timed", timeout=0.3, retries=1, retry_delay=0)
    def slow():
        calls.append(1)
        if len(calls) == 1:
            release.wait(10)  # the first attempt hangs past its timeout
        return len(calls)

    # One task at a time: the retry must not wait for the abandoned attempt's thread.
    run = kf.workflow("timed_timeout", [slow], max_parallel=1).run()
    assert run.output == 2
    reasons = kf.sql(
        f"SELECT payload->>'reason' FROM events WHERE run_id = '{run.run_id}' AND type = 'TaskRetrying'"
    ).rows()
    assert reasons == [("timeout",)]
    release.set()
    for _ in range(200):
        if len(timings(run.run_id)) == 2:
            break
        threading.Event().wait(0.01)
    assert sorted((t.attempt, t.outcome) for t in timings(run.run_id)) == [(1, "abandoned"), (2, "ok")]


def test_independent_tasks_run_at_the_same_time():
    both = threading.Barrier(2, timeout=10)  # only passes if the two attempts overlap

    @kf.task(executor="timed")
    def left():
        both.wait()
        return 1

    @kf.task(executor="timed")
    def right():
        both.wait()
        return 2

    def total(left, right):
        return left + right

    run = kf.workflow("timed_parallel", [left, right, total]).run()
    assert run.output == 3
    assert {t.task_id for t in timings(run.run_id)} == {"left", "right"}


def test_a_task_that_fails_for_good_keeps_its_traceback():
    @kf.task(executor="timed")
    def broken():
        raise ValueError("bad row 7")

    run = kf.workflow("timed_failure", [broken]).run(raise_on_failure=False)
    assert run.status == "failed"
    failure = run.failures["broken"]
    assert (failure.exc_type, failure.message) == ("ValueError", "bad row 7")
    assert 'raise ValueError("bad row 7")' in failure.traceback
