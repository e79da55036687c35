"""The engine's exact record of a run: which events, in which order, with which fields.

Fast, in-process runs on the thread executor (no kernels, no subprocesses). Each test
pins one behaviour of kernelflow/engine.py down to the event payloads, so that a
changed number, branch or message shows up as a different record.
"""

from __future__ import annotations

import threading
import time

import pytest

import kernelflow as kf
import kernelflow.engine as engine
from kernelflow.cell_compiler import compile_cell


def define(name, src, **options):
    ns: dict = {"kf": kf, "threading": threading, "time": time}
    exec(compile(src, f"<{name}>", "exec"), ns)
    fns = [v for k, v in ns.items() if callable(v) and not k.startswith("_") and getattr(v, "__module__", None) is None]
    return kf.workflow(name, fns, **options), ns


def cell(name, src, ns=None):
    return compile_cell(name, src, {} if ns is None else ns)


def record(run, *, tracebacks=False):
    """(type, task, attempt, payload) of every event; tracebacks shown as whether there is one."""
    out = []
    for e in run.store.read_run(run.run_id):
        payload = dict(e.payload)
        error = payload.get("error")
        if isinstance(error, dict) and not tracebacks:
            payload["error"] = {**error, "traceback": bool(error.get("traceback"))}
        out.append((e.type, e.task_id, e.attempt, payload))
    return out


def of_task(run, tid, *, tracebacks=False):
    return [(t, a, p) for t, task, a, p in record(run, tracebacks=tracebacks) if task == tid]


def types(run):
    return [e.type for e in run.store.read_run(run.run_id)]


def started_payload(run):
    return run.store.read_run(run.run_id)[0].payload


OK = {"output_ref": None, "stored": True}


def out(value, kind):
    return {"output": value, "output_ref": None, "output_type": kind, "stored": True}


NONE = {"output": None, "output_ref": None, "output_type": "NoneType", "stored": True}


# --- a plain run --------------------------------------------------------------------------


def test_a_chain_records_every_step_in_order_with_its_fields():
    wf, _ = define("chain", "def a(n):\n    return n + 1\ndef b(a):\n    return [a, a]\ndef c(b):\n    return None\n")
    run = wf.run(n=1)
    assert record(run) == [
        ("RunStarted", None, None, {"inputs": {"n": 1}, "tasks": ["a", "b", "c"], "max_parallel": 8,
                                    "executor": "threads", "notebook": None, "batch_id": None}),
        ("TaskScheduled", "a", 1, {}),
        ("TaskStarted", "a", 1, {"executor": "threads"}),
        ("TaskSucceeded", "a", 1, out(2, "int")),
        ("TaskScheduled", "b", 1, {}),
        ("TaskStarted", "b", 1, {"executor": "threads"}),
        ("TaskSucceeded", "b", 1, out([2, 2], "list")),
        ("TaskScheduled", "c", 1, {}),
        ("TaskStarted", "c", 1, {"executor": "threads"}),
        ("TaskSucceeded", "c", 1, NONE),
        ("RunSucceeded", None, None, {}),
    ]  # fmt: skip
    assert run.status == "succeeded" and run.output is None and run["b"] == [2, 2]


def test_run_options_that_are_set_show_in_run_started_and_deterministic_runs_one_at_a_time():
    wf, _ = define("opts", "def a():\n    return 1\ndef b():\n    return 2\n", max_parallel=3)
    plain = started_payload(wf.run())
    assert plain["max_parallel"] == 3 and "deterministic" not in plain
    run = wf.run(deterministic=True)
    payload = started_payload(run)
    assert payload["max_parallel"] == 1 and payload["deterministic"] is True
    # one at a time: each task is scheduled, started and done before the next starts
    assert [t for t, task, _, _ in record(run) if task == "b"] == ["TaskScheduled", "TaskStarted", "TaskSucceeded"]
    assert types(run)[1:4] == ["TaskScheduled", "TaskScheduled", "TaskStarted"]
    assert types(run)[4] == "TaskSucceeded"


def test_independent_tasks_are_all_scheduled_before_any_starts_when_max_parallel_is_one():
    wf, _ = define("one", "def a():\n    return 1\ndef b():\n    return 2\ndef c(a, b):\n    return a + b\n", max_parallel=1)
    run = wf.run()
    assert [(t, task) for t, task, _, _ in record(run)] == [
        ("RunStarted", None),
        ("TaskScheduled", "a"), ("TaskScheduled", "b"),
        ("TaskStarted", "a"), ("TaskSucceeded", "a"),
        ("TaskStarted", "b"), ("TaskSucceeded", "b"),
        ("TaskScheduled", "c"), ("TaskStarted", "c"), ("TaskSucceeded", "c"),
        ("RunSucceeded", None),
    ]  # fmt: skip
    assert run.output == 3


def test_max_parallel_two_runs_two_at_once_and_the_third_when_a_slot_is_free():
    # a and b meet at a barrier (both must run at once); c must not start before one of them is done
    src = (
        "barrier = threading.Barrier(2, timeout=0.4)\n"
        "def a():\n    barrier.wait()\n    return 1\n"
        "def b():\n    barrier.wait()\n    return 2\n"
        "def c():\n    return 3\n"
    )
    wf, _ = define("two", src, max_parallel=2)
    run = wf.run()
    rec = [(t, task) for t, task, _, _ in record(run)]
    assert rec[4:6] == [("TaskStarted", "a"), ("TaskStarted", "b")]
    assert rec.index(("TaskStarted", "c")) > rec.index(("TaskSucceeded", "a")) or rec.index(("TaskStarted", "c")) > rec.index(("TaskSucceeded", "b"))
    assert run.status == "succeeded"


# --- outputs and inputs -------------------------------------------------------------------


def test_outputs_up_to_2048_bytes_of_json_are_inline_and_larger_ones_are_artifacts():
    src = "def small():\n    return 'x' * 2046\ndef big():\n    return 'x' * 2047\n"
    wf, _ = define("sizes", src)
    run = wf.run()
    small = of_task(run, "small")[-1]
    big = of_task(run, "big")[-1]
    assert small[2] == out("x" * 2046, "str")  # 2048 bytes with the quotes
    assert big[2]["output"] is None and big[2]["output_type"] == "str" and big[2]["stored"] is True
    assert big[2]["output_ref"]["format"] == "pickle"
    assert run["big"] == "x" * 2047


def test_outputs_that_do_not_survive_json_are_artifacts_with_their_type():
    src = "def tup():\n    return (1, 2)\ndef st():\n    return {1, 2}\ndef fl():\n    return 1.5\ndef yes():\n    return True\n"
    wf, _ = define("kinds", src)
    run = wf.run()
    assert of_task(run, "fl")[-1][2] == out(1.5, "float")
    assert of_task(run, "yes")[-1][2] == out(True, "bool")
    for tid, kind, value in (("tup", "tuple", (1, 2)), ("st", "set", {1, 2})):
        payload = of_task(run, tid)[-1][2]
        assert payload["output"] is None and payload["output_type"] == kind and payload["output_ref"] is not None
        assert run[tid] == value


def test_an_output_that_cannot_be_stored_fails_the_task_with_a_clear_message():
    wf, _ = define("unstorable", "def lock():\n    return threading.Lock()\ndef after(lock):\n    return 1\n")
    run = wf.run(raise_on_failure=False)
    failed = of_task(run, "lock")[-1]
    assert failed[0] == "TaskFailed"
    assert failed[2]["error"]["exc_type"] == "UnstorableOutputError"
    assert failed[2]["error"]["message"].startswith("task 'lock' returned a value that cannot be stored: ")
    assert of_task(run, "after") == [("TaskSkipped", None, {"reason": "upstream task 'lock' failed", "upstream": "lock"})]


def test_inputs_that_are_not_small_json_are_shown_by_type_and_kept_as_artifacts():
    wf, _ = define("ins", "def a(n, big, tup):\n    return [n, len(big), tup]\n")
    run = wf.run(n=2, big="y" * 3000, tup=(1, 2))
    payload = started_payload(run)
    assert payload["inputs"]["n"] == 2
    assert payload["inputs"]["big"] == {"type": "str", "repr": repr("y" * 3000)[:200]}
    assert payload["inputs"]["tup"] == {"type": "tuple", "repr": "(1, 2)"}
    assert sorted(payload["input_refs"]) == ["big", "tup"]
    assert run["a"] == [2, 3000, (1, 2)]
    small = started_payload(wf.run(n=2, big="y" * 10, tup=[1]))
    assert "input_refs" not in small and small["inputs"] == {"n": 2, "big": "y" * 10, "tup": [1]}


def test_an_input_of_2048_bytes_of_json_is_inline_and_a_larger_one_an_artifact_of_attempt_0():
    wf, _ = define("in_sizes", "def a(s):\n    return len(s)\n")
    at_limit = started_payload(wf.run(s="x" * 2046))  # 2048 bytes with the quotes
    assert at_limit["inputs"] == {"s": "x" * 2046} and "input_refs" not in at_limit
    run = wf.run(s="x" * 2047)
    payload = started_payload(run)
    assert payload["inputs"] == {"s": {"type": "str", "repr": repr("x" * 2047)[:200]}}
    ref = payload["input_refs"]["s"]
    # attempt 0: the run's own inputs, before any task attempt (as a fork's reused outputs)
    assert (ref["ref"], ref["format"]) == (f"artifacts/{run.run_id}/input.s.0.pkl", "pickle")
    assert run.store.load_artifact(ref) == "x" * 2047


def test_an_input_json_cannot_encode_is_shown_by_its_repr_and_kept_as_an_artifact():
    wf, _ = define("in_set", "def a(s):\n    return sorted(s)\n")
    run = wf.run(s={2, 1})
    payload = started_payload(run)
    assert payload["inputs"] == {"s": {"type": "set", "repr": "{1, 2}"}}
    assert run.store.load_artifact(payload["input_refs"]["s"]) == {1, 2}
    assert run["a"] == [1, 2]


def test_print_output_is_recorded_as_a_log_event_of_the_attempt():
    wf, _ = define("logs", "def talk():\n    print('hello')\n    return 1\n")
    run = wf.run()
    assert of_task(run, "talk")[2] == ("TaskLogged", 1, {"text": "hello\n", "truncated": False})


# --- failures, retries, backoff -----------------------------------------------------------


def test_a_failure_skips_downstream_and_fails_the_run_naming_the_first_failed_task():
    src = (
        "def a():\n    return 1\n"
        "def bad(a):\n    raise ValueError('boom')\n"
        "def d1(bad):\n    return 1\n"
        "def d2(d1):\n    return 1\n"
        "def side(a):\n    return 2\n"
    )
    wf, _ = define("fail", src, max_parallel=1)
    run = wf.run(raise_on_failure=False)
    assert of_task(run, "bad")[-1] == ("TaskFailed", 1, {"error": {"exc_type": "ValueError", "message": "boom", "traceback": True}})
    assert of_task(run, "d1") == [("TaskSkipped", None, {"reason": "upstream task 'bad' failed", "upstream": "bad"})]
    assert of_task(run, "d2") == [("TaskSkipped", None, {"reason": "upstream task 'bad' failed", "upstream": "bad"})]
    assert of_task(run, "side")[-1][0] == "TaskSucceeded"
    assert record(run)[-1] == ("RunFailed", None, None, {"failed_tasks": ["bad"], "error": "task 'bad' failed: ValueError: boom"})
    assert run.status == "failed"
    with pytest.raises(kf.RunFailedError, match="boom"):
        wf.run()


def test_two_failures_are_listed_in_the_order_they_failed():
    src = "def a():\n    raise KeyError('x')\ndef b():\n    raise OSError('y')\n"
    wf, _ = define("two_fail", src, max_parallel=1)
    run = wf.run(raise_on_failure=False)
    assert record(run)[-1] == ("RunFailed", None, None, {"failed_tasks": ["a", "b"], "error": "task 'a' failed: KeyError: 'x'"})


@pytest.mark.parametrize(
    ("backoff", "delays"),
    [("fixed", [0.01, 0.01, 0.01]), ("linear", [0.01, 0.02, 0.03]), ("exponential", [0.01, 0.02, 0.04])],
)
def test_retries_record_each_attempt_and_the_backoff_delay(backoff, delays):
    src = f"@kf.task(retries=3, backoff={backoff!r}, retry_delay=0.01, jitter=0)\ndef flaky():\n    raise ValueError('no')\n"
    wf, _ = define("retry_" + backoff, src)
    run = wf.run(raise_on_failure=False)
    error = {"exc_type": "ValueError", "message": "no", "traceback": True}
    expected = []
    for attempt in (1, 2, 3):
        expected += [("TaskScheduled", attempt, {}), ("TaskStarted", attempt, {"executor": "threads"}),
                     ("TaskRetrying", attempt, {"error": error, "reason": "error", "delay_s": pytest.approx(delays[attempt - 1]),
                                                "next_attempt": attempt + 1})]  # fmt: skip
    expected += [("TaskScheduled", 4, {}), ("TaskStarted", 4, {"executor": "threads"}), ("TaskFailed", 4, {"error": error})]
    assert of_task(run, "flaky") == expected
    assert run.state.tasks["flaky"].attempt == 4


def test_a_retry_waits_its_delay_before_the_next_attempt():
    src = "CALLS = []\n@kf.task(retries=1, retry_delay=0.15, jitter=0)\ndef flaky():\n    CALLS.append(time.monotonic())\n    if len(CALLS) == 1:\n        raise ValueError('once')\n    return len(CALLS)\n"
    wf, ns = define("waits", src)
    run = wf.run()
    assert run["flaky"] == 2
    first, second = ns["CALLS"]
    assert second - first >= 0.15


def test_a_retry_that_succeeds_gives_the_output_of_the_last_attempt():
    src = "CALLS = []\n@kf.task(retries=2, retry_delay=0, jitter=0)\ndef flaky():\n    CALLS.append(1)\n    if len(CALLS) < 2:\n        raise ValueError('once')\n    return len(CALLS)\n"
    wf, _ = define("recover", src)
    run = wf.run()
    assert [(t, a) for t, a, _ in of_task(run, "flaky")] == [
        ("TaskScheduled", 1), ("TaskStarted", 1), ("TaskRetrying", 1),
        ("TaskScheduled", 2), ("TaskStarted", 2), ("TaskSucceeded", 2),
    ]  # fmt: skip
    assert run["flaky"] == 2


def test_jitter_of_a_deterministic_run_is_the_same_for_the_same_run_id():
    src = "@kf.task(retries=2, retry_delay=0.01, jitter=0.5)\ndef flaky():\n    raise ValueError('no')\n"
    wf, _ = define("jit", src)
    run = wf.run(deterministic=True, raise_on_failure=False)
    delays = [p["delay_s"] for t, _, p in of_task(run, "flaky") if t == "TaskRetrying"]
    assert len(delays) == 2 and all(0.005 <= d <= 0.015 for d in delays) and delays[0] != 0.01
    import random

    rng = random.Random(run.run_id)
    expected = [0.01 * (1 + 0.5 * (2 * rng.random() - 1)) for _ in range(2)]
    assert delays == pytest.approx(expected)


def test_retry_on_other_errors_fails_at_the_first_attempt():
    src = "@kf.task(retries=3, retry_delay=0, retry_on=[KeyError])\ndef picky():\n    raise ValueError('not retried')\n"
    wf, _ = define("picky", src)
    run = wf.run(raise_on_failure=False)
    assert [t for t, _, _ in of_task(run, "picky")] == ["TaskScheduled", "TaskStarted", "TaskFailed"]


def test_continue_on_failure_records_continued_and_dependents_get_none():
    src = "@kf.task(continue_on_failure=True)\ndef bad():\n    raise KeyError('k')\ndef nxt(bad):\n    return [bad]\n"
    wf, _ = define("cont", src)
    run = wf.run()
    assert of_task(run, "bad")[-1] == ("TaskFailed", 1, {"error": {"exc_type": "KeyError", "message": "'k'", "traceback": True}, "continued": True})
    assert of_task(run, "nxt")[-1] == ("TaskSucceeded", 1, out([None], "list"))
    assert record(run)[-1][0] == "RunSucceeded"
    assert run.continued["bad"].exc_type == "KeyError"


def test_a_retry_starts_when_its_delay_is_over_while_other_work_still_runs(monkeypatch):
    # Only the second attempt lets `other` end: the driver must wake for the retry itself,
    # not when other work ends (other gives up after 10 s) nor at its next look around
    # (moved beyond that, so the test does not depend on how fast the machine is).
    monkeypatch.setattr(engine, "INTERRUPT_POLL_S", 60.0)
    src = (
        "go = threading.Event()\n"
        "@kf.task(retries=1, retry_delay=0.05, jitter=0)\n"
        "def flaky():\n    if kf.context().attempt == 1:\n        raise ValueError('once')\n    go.set()\n    return 2\n"
        "def other():\n    return go.wait(10)\n"
    )
    wf, _ = define("retry_wakes", src)
    run = wf.run()
    assert (run["flaky"], run["other"]) == (2, True)


# --- timeouts -------------------------------------------------------------------------------

SLOW = "gate = threading.Event()\n@kf.task(timeout=0.05{opts})\ndef slow():\n    gate.wait(2)\n    return 'late'\n"


def _timeout_error(tid="slow"):
    return {"exc_type": "TimeoutError", "message": f"task {tid!r} ran longer than its timeout of 50ms", "traceback": False}


def test_a_timeout_fails_the_task_at_once_by_default():
    wf, ns = define("to_fail", "ENDED = []\n" + SLOW.format(opts="").replace("gate.wait(2)", "gate.wait(30)\n    ENDED.append(1)")
                    + "def after(slow):\n    return 1\n")
    run = wf.run(raise_on_failure=False)
    # the run ended without waiting for the abandoned attempt, which is still blocked
    assert ns["ENDED"] == []
    ns["gate"].set()
    assert of_task(run, "slow") == [
        ("TaskScheduled", 1, {}), ("TaskStarted", 1, {"executor": "threads"}),
        ("TaskTimedOut", 1, {"timeout_s": 0.05, "error": _timeout_error()}),
    ]  # fmt: skip
    assert record(run)[-1] == ("RunFailed", None, None, {"failed_tasks": ["slow"],
                                                         "error": "task 'slow' failed: TimeoutError: task 'slow' ran longer than its timeout of 50ms"})  # fmt: skip


def test_a_deadline_that_is_not_due_does_not_fire_when_other_work_wakes_the_driver():
    # quick ends and wakes the driver while patient (timeout 5 s) still runs: only a deadline
    # that has passed may time an attempt out
    src = (
        "@kf.task(timeout=5)\ndef patient():\n    time.sleep(0.2)\n    return 'done'\n"
        "@kf.task\ndef quick():\n    return 1\n"
    )
    wf, _ = define("not_due", src)
    run = wf.run()
    assert run["patient"] == "done"
    assert [t for t, _, _ in of_task(run, "patient")] == ["TaskScheduled", "TaskStarted", "TaskSucceeded"]


def test_on_timeout_skip_records_the_timeout_then_the_skip():
    wf, ns = define("to_skip", SLOW.format(opts=", on_timeout='skip'") + "def after(slow):\n    return 1\n")
    run = wf.run()
    ns["gate"].set()
    assert of_task(run, "slow")[2:] == [
        ("TaskTimedOut", 1, {"timeout_s": 0.05, "error": _timeout_error(), "then": "skip"}),
        ("TaskSkipped", None, {"reason": "timed out after 50ms (on_timeout: skip)", "timeout_s": 0.05}),
    ]
    assert of_task(run, "after") == [("TaskSkipped", None, {"reason": "all upstream tasks were skipped", "upstream": ["slow"]})]
    assert run.status == "succeeded"


def test_on_timeout_retry_retries_with_reason_timeout():
    wf, ns = define("to_retry", SLOW.format(opts=", on_timeout='retry', retries=1, retry_delay=0"))
    run = wf.run(raise_on_failure=False)
    ns["gate"].set()
    assert of_task(run, "slow") == [
        ("TaskScheduled", 1, {}), ("TaskStarted", 1, {"executor": "threads"}),
        ("TaskRetrying", 1, {"error": _timeout_error(), "reason": "timeout", "delay_s": 0.0, "next_attempt": 2}),
        ("TaskScheduled", 2, {}), ("TaskStarted", 2, {"executor": "threads"}),
        ("TaskTimedOut", 2, {"timeout_s": 0.05, "error": _timeout_error()}),
    ]  # fmt: skip


def test_on_timeout_fail_does_not_retry_a_timeout():
    wf, ns = define("to_noretry", SLOW.format(opts=", on_timeout='fail', retries=2, retry_delay=0"))
    run = wf.run(raise_on_failure=False)
    ns["gate"].set()
    assert of_task(run, "slow") == [
        ("TaskScheduled", 1, {}), ("TaskStarted", 1, {"executor": "threads"}),
        ("TaskTimedOut", 1, {"timeout_s": 0.05, "error": _timeout_error()}),
    ]  # fmt: skip


def test_on_timeout_fallback_records_why_and_uses_the_fallback():
    # the fallback is not held to the task's timeout: it may take longer than 50 ms
    src = "def _plan_b():\n    time.sleep(0.15)\n    return 'b'\n" + SLOW.format(opts=", on_timeout='fallback', fallback=_plan_b")
    wf, ns = define("to_fallback", src)
    run = wf.run()
    ns["gate"].set()
    assert of_task(run, "slow")[2:] == [
        ("FallbackUsed", 1, {"reason": "timed out after 50ms", "fallback": "python:_plan_b"}),
        ("TaskSucceeded", 1, {**out("b", "str"), "fallback": "python:_plan_b"}),
    ]


def test_a_late_result_of_a_timed_out_attempt_is_ignored():
    # The timed-out attempt finishes (during the retry): its result must not count.
    src = (
        "CALLS = []\n"
        "@kf.task(timeout=0.1, on_timeout='retry', retries=1, retry_delay=0)\n"
        "def slow():\n    CALLS.append(1)\n    if len(CALLS) == 1:\n        time.sleep(0.2)\n        return 'first'\n"
        "    time.sleep(0.05)\n    return 'second'\n"
    )
    wf, _ = define("late", src)
    run = wf.run()
    assert run["slow"] == "second"
    assert [t for t, _, _ in of_task(run, "slow")].count("TaskSucceeded") == 1


class _Holding:
    """An executor that takes attempts and never runs them; it notes which ones it is asked to cancel."""

    name = "holding"

    def __init__(self, cancelled):
        self.cancelled = cancelled

    def submit(self, call, report):
        return _Ticket(call, self.cancelled)

    def shutdown(self, wait=False):
        pass


class _Ticket:
    def __init__(self, call, cancelled):
        self.call, self.cancelled = call, cancelled

    def cancel(self):
        self.cancelled.append((self.call.task_id, self.call.attempt))
        return True


def test_a_timed_out_attempt_is_cancelled_through_its_executors_handle():
    from kernelflow import plugin_host
    from kernelflow.executor_api import ExecutorSpec

    cancelled: list = []

    class Plugin:
        @kf.hookimpl
        def kernelflow_register_executors(self):
            return [ExecutorSpec("holding", lambda max_parallel: _Holding(cancelled), "never runs")]

    plugin = Plugin()
    plugin_host.register(plugin, name="holding-executor")
    try:
        wf, _ = define("to_cancel", "@kf.task(executor='holding', timeout=0.05)\ndef slow():\n    return 1\n")
        run = wf.run(raise_on_failure=False)
    finally:
        plugin_host.unregister(plugin)
    assert of_task(run, "slow")[-1] == ("TaskTimedOut", 1, {"timeout_s": 0.05, "error": _timeout_error()})
    assert cancelled == [("slow", 1)]


# --- fallbacks and compensation -------------------------------------------------------------


def test_a_fallback_after_the_last_retry_gives_the_output():
    # the fallback gets the task's arguments that it takes (here n, not m)
    src = "def _plan_b(n):\n    return n * 10\n@kf.task(retries=1, retry_delay=0, fallback=_plan_b)\ndef f1(n, m):\n    raise ValueError('v')\n"
    wf, _ = define("fb", src)
    run = wf.run(n=4, m=1)
    assert of_task(run, "f1")[3:] == [
        ("TaskScheduled", 2, {}), ("TaskStarted", 2, {"executor": "threads"}),
        ("FallbackUsed", 2, {"reason": "failed: ValueError: v", "fallback": "python:_plan_b"}),
        ("TaskSucceeded", 2, {**out(40, "int"), "fallback": "python:_plan_b"}),
    ]  # fmt: skip
    assert run["f1"] == 40


def test_a_failing_fallback_fails_the_task_for_good():
    src = "def _plan_b():\n    raise OSError('also')\n@kf.task(fallback=_plan_b, retries=2, retry_delay=0)\ndef f1():\n    raise ValueError('v')\n"
    wf, _ = define("fb_fail", src)
    run = wf.run(raise_on_failure=False)
    last = of_task(run, "f1")[-1]
    assert last == ("TaskFailed", 3, {"error": {"exc_type": "OSError", "message": "fallback failed: also", "traceback": True}})
    assert [t for t, _, _ in of_task(run, "f1")].count("FallbackUsed") == 1


def test_compensation_undoes_completed_tasks_last_first_and_goes_on_after_a_failed_undo():
    src = (
        "UNDONE = []\n"
        "def _undo_a(a, output):\n    UNDONE.append(('a', a, output))\n"
        "def _undo_b(b):\n    raise RuntimeError('cannot')\n"
        "@kf.task(compensate=_undo_a)\ndef a():\n    return 1\n"
        "@kf.task(compensate=_undo_b)\ndef b(a):\n    return 2\n"
        "def plain(b):\n    return 3\n"
        "def c(plain):\n    raise ValueError('c')\n"
    )
    wf, ns = define("saga", src)
    run = wf.run(raise_on_failure=False)
    tail = record(run)[-6:]
    assert tail == [
        ("TaskFailed", "c", 1, {"error": {"exc_type": "ValueError", "message": "c", "traceback": True}}),
        ("CompensationStarted", "b", None, {"compensate": "python:_undo_b"}),
        ("CompensationFailed", "b", None, {"compensate": "python:_undo_b",
                                           "error": {"exc_type": "RuntimeError", "message": "cannot", "traceback": False}}),
        ("CompensationStarted", "a", None, {"compensate": "python:_undo_a"}),
        ("CompensationSucceeded", "a", None, {"compensate": "python:_undo_a"}),
        ("RunFailed", None, None, {"failed_tasks": ["c"], "error": "task 'c' failed: ValueError: c"}),
    ]  # fmt: skip
    assert ns["UNDONE"] == [("a", 1, 1)]


def test_no_compensation_when_the_run_succeeds():
    src = "UNDONE = []\ndef _undo_a():\n    UNDONE.append(1)\n@kf.task(compensate=_undo_a)\ndef a():\n    return 1\n"
    wf, ns = define("saga_ok", src)
    run = wf.run()
    assert "CompensationStarted" not in types(run) and ns["UNDONE"] == []


# --- skips and conditions ------------------------------------------------------------------


def test_a_false_condition_records_its_evaluation_and_skips_what_only_follows_it():
    src = '@kf.task(when="{{inputs.n}} > 3")\ndef w(n):\n    return n\ndef z(w):\n    return 1\ndef mixed(w, n):\n    return [w, n]\n'
    wf, _ = define("cond", src)
    run = wf.run(n=1)
    assert of_task(run, "w") == [
        ("ConditionEvaluated", None, {"when": "{{inputs.n}} > 3", "result": False}),
        ("TaskSkipped", None, {"reason": "condition is false: {{inputs.n}} > 3", "when": "{{inputs.n}} > 3"}),
    ]
    assert of_task(run, "z") == [("TaskSkipped", None, {"reason": "all upstream tasks were skipped", "upstream": ["w"]})]
    # mixed also reads an input, but its only upstream task is w: all its upstream tasks were skipped
    assert of_task(run, "mixed")[0][0] == "TaskSkipped"
    run = wf.run(n=5)
    assert of_task(run, "w")[0] == ("ConditionEvaluated", None, {"when": "{{inputs.n}} > 3", "result": True})
    assert of_task(run, "w")[1:] == [("TaskScheduled", 1, {}), ("TaskStarted", 1, {"executor": "threads"}), ("TaskSucceeded", 1, out(5, "int"))]
    assert run["mixed"] == [5, 5]


def test_a_task_with_one_upstream_skipped_and_one_done_runs_with_none():
    src = '@kf.task(when="{{inputs.go}}")\ndef maybe(go):\n    return 1\ndef sure():\n    return 2\ndef both(maybe, sure):\n    return [maybe, sure]\n'
    wf, _ = define("half", src)
    run = wf.run(go=False)
    assert run["both"] == [None, 2]


def test_a_condition_that_cannot_be_evaluated_fails_the_task_on_the_engine():
    src = '@kf.task(when="{{tasks.q.output.x}} > 3")\ndef w2(q):\n    return 1\ndef q():\n    return {}\n'
    wf, _ = define("badcond", src)
    run = wf.run(raise_on_failure=False)
    message = ("condition '{{tasks.q.output.x}} > 3': {{tasks.q.output.x}}: the output of task 'q' has no field 'x' (it is empty)")
    assert of_task(run, "w2") == [
        ("TaskScheduled", 1, {}), ("TaskStarted", 1, {"executor": "engine"}),
        ("TaskFailed", 1, {"error": {"exc_type": "EvaluationError", "message": message, "traceback": False}}),
    ]  # fmt: skip


def test_conditions_read_task_outputs_and_statuses():
    src = (
        "def a():\n    return {'n': 4}\n"
        '@kf.task(when="{{tasks.a.output.n}} == 4 && {{tasks.a.status}} == \'succeeded\'")\ndef b(a):\n    return 1\n'
        '@kf.task(when="{{tasks.a.status}} == \'failed\'")\ndef c(a):\n    return 1\n'
    )
    wf, _ = define("reads", src)
    run = wf.run()
    assert of_task(run, "b")[0][2]["result"] is True and run["b"] == 1
    assert of_task(run, "c")[0][2]["result"] is False


def test_a_run_failed_by_a_condition_raises_from_the_conditions_error():
    src = '@kf.task(when="{{tasks.q.output.x}} > 3")\ndef w2(q):\n    return 1\ndef q():\n    return {}\n'
    wf, _ = define("badcond_cause", src)
    with pytest.raises(kf.RunFailedError) as info:
        wf.run()
    cause = info.value.__cause__
    assert type(cause).__name__ == "EvaluationError"
    assert str(cause) == "{{tasks.q.output.x}}: the output of task 'q' has no field 'x' (it is empty)"


# --- approval gates, breakpoints, sleeps ----------------------------------------------------

GATED = """
import kernelflow as kf
def rows():
    return [1, 2, 3]
@kf.approval("Publish {n} rows to {table}?", input={"table": str, "limit": {"type": "int", "default": 10}}, timeout="1h")
def publish(rows, table, limit, approval):
    return {"n": len(rows[:limit]), "table": table, "by": approval.by.get("name"), "comment": approval.comment,
            "expired": approval.expired, "limit": limit}
"""


@pytest.fixture(autouse=True)
def _no_watcher(monkeypatch):
    # answers are followed by an explicit resume in these tests
    monkeypatch.setenv("KERNELFLOW_NO_WATCH", "1")


def test_a_gate_records_its_request_then_suspends_the_run():
    run = cell("gated", GATED).run()
    assert run.status == "waiting"
    rec = record(run)
    assert [(t, task, a) for t, task, a, _ in rec[-3:]] == [
        ("TaskScheduled", "publish", 1), ("ApprovalRequested", "publish", 1), ("RunSuspended", None, None),
    ]  # fmt: skip
    asked = rec[-2][3]
    assert asked["expires_at"] - run.store.read_run(run.run_id)[-2].ts == 3600 * 1_000_000
    assert {k: v for k, v in asked.items() if k != "expires_at"} == {
        "message": "Publish 3 rows to {table}?",
        "preview": {"type": "list", "items": [1, 2, 3], "length": 3},
        "input_schema": {"fields": {"table": {"type": "str", "required": True},
                                    "limit": {"default": 10, "type": "int", "required": False}}, "model": None},
        "timeout_s": 3600.0, "on_timeout": "reject", "on_reject": "fail", "iteration": 0,
    }  # fmt: skip
    suspended = rec[-1][3]
    assert suspended["waiting"] == [{"task": "publish", "kind": "approval", "message": "Publish 3 rows to {table}?",
                                     "expires_at": asked["expires_at"]}]  # fmt: skip
    assert suspended["how"].startswith(f"step 'publish' waits for approval: kf.approve('{run.run_id}', 'publish')")


def test_a_granted_gate_runs_the_task_with_the_answers_fields():
    run = cell("gated", GATED).run()
    kf.approve(run.run_id, "publish", table="t", by="bob", comment="ok", resume=False)
    run.resume()
    assert run.status == "succeeded"
    assert run["publish"] == {"n": 3, "table": "t", "by": "bob", "comment": "ok", "expired": False, "limit": 10}
    assert [(t, a, p) for t, a, p in of_task(run, "publish")][-2:] == [
        ("TaskStarted", 1, {"executor": "threads"}),
        ("TaskSucceeded", 1, out({"n": 3, "table": "t", "by": "bob", "comment": "ok", "expired": False, "limit": 10}, "dict")),
    ]


def test_a_rejected_gate_fails_the_task_with_who_and_why():
    run = cell("gated", GATED).run()
    kf.reject(run.run_id, "publish", "nope", by="carol", resume=False)
    with pytest.raises(kf.RunFailedError, match="rejected by carol: nope"):
        run.resume()
    assert of_task(run, "publish")[-2:] == [
        ("TaskStarted", 1, {"executor": "gate"}),
        ("TaskFailed", 1, {"error": {"exc_type": "ApprovalRejected", "message": "rejected by carol: nope", "traceback": False}}),
    ]


GATES = """
import kernelflow as kf
def rows():
    return [1]
@kf.approval('ok?', on_reject='skip')
def maybe(rows):
    return 1
@kf.approval('sure?')
def sure(rows):
    return 2
"""


def test_a_rejection_without_a_reason_skips_a_gate_with_on_reject_skip_and_the_run_waits_for_the_rest():
    run = cell("gates", GATES).run()
    kf.reject(run.run_id, "maybe", by="dan", resume=False)
    run.resume()
    assert of_task(run, "maybe")[-1] == ("TaskSkipped", None, {"reason": "rejected by dan", "cause": "approval"})
    assert run.status == "waiting"
    assert [w["task"] for w in record(run)[-1][3]["waiting"]] == ["sure"]
    kf.reject(run.run_id, "sure", by="eve", resume=False)
    with pytest.raises(kf.RunFailedError, match="rejected by eve"):
        run.resume()
    assert of_task(run, "sure")[-1][2]["error"]["message"] == "rejected by eve"


def test_when_the_run_fails_its_open_gates_are_skipped():
    src = GATES + "def boom(rows):\n    raise ValueError('x')\n"
    wf = cell("gates_fail", src)
    run = wf.run(raise_on_failure=False)
    assert run.status == "failed"
    rec = record(run)
    skipped = [(task, p) for t, task, _, p in rec if t == "TaskSkipped"]
    assert sorted(skipped) == [
        ("maybe", {"reason": "the run failed while 'maybe' was waiting", "cause": "run_failed"}),
        ("sure", {"reason": "the run failed while 'sure' was waiting", "cause": "run_failed"}),
    ]
    assert "RunSuspended" not in types(run)
    assert rec[-1][0] == "RunFailed"


EXPIRING = """
import kernelflow as kf
def rows():
    return [1]
@kf.approval('ok?', timeout='0.2s', on_timeout='approve', input={"k": {"type": "int", "default": 7}, "j": str})
def go(rows, k, approval):
    return [approval.expired, k]
@kf.approval('ok?', timeout='0.2s', on_timeout='skip')
def maybe(rows):
    return 1
@kf.approval('ok?', timeout='0.2s', on_timeout='fail')
def rej(rows):
    return 1
"""


def test_expired_gates_take_their_configured_outcome():
    run = cell("expiring", EXPIRING).run()
    assert run.status == "waiting"
    time.sleep(0.25)
    with pytest.raises(kf.RunFailedError, match=r"approval expired \(on_timeout: fail\)"):
        run.resume()
    expired = {task: p["outcome"] for t, task, _, p in record(run) if t == "ApprovalExpired"}
    assert expired == {"go": "approve", "maybe": "skip", "rej": "fail"}
    assert run.state.tasks["go"].status == "succeeded" and run["go"] == [True, 7]
    assert of_task(run, "maybe")[-1] == ("TaskSkipped", None, {"reason": "approval expired (on_timeout: skip)", "cause": "approval"})
    assert of_task(run, "rej")[-2:] == [
        ("TaskStarted", 1, {"executor": "gate"}),
        ("TaskFailed", 1, {"error": {"exc_type": "ApprovalRejected", "message": "approval expired (on_timeout: fail)", "traceback": False}}),
    ]


def test_a_gate_that_expires_while_the_run_is_driven_is_decided_without_suspending():
    src = (
        "import kernelflow as kf\n"
        "def rows():\n    return [1]\n"
        "@kf.approval('ok?', timeout='0.15s', on_timeout='reject', on_reject='skip')\n"
        "def gate(rows):\n    return 1\n"
        "def busy():\n    import time\n    time.sleep(0.6)\n    return 2\n"
    )
    run = cell("expire_driven", src).run()
    assert run.status == "succeeded" and "RunSuspended" not in types(run)
    assert of_task(run, "gate")[-1] == ("TaskSkipped", None, {"reason": "approval expired (on_timeout: reject)", "cause": "approval"})
    # gates are looked at every 0.2 s while the run is driven: the expiry is seen before busy ends
    kinds = [(t, task) for t, task, _, _ in record(run)]
    assert kinds.index(("ApprovalExpired", "gate")) < kinds.index(("TaskSucceeded", "busy"))


def test_a_pure_yaml_gate_succeeds_with_the_answer_as_its_output(tmp_path):
    path = tmp_path / "pure.yaml"
    path.write_text(
        "name: pure\ntasks:\n"
        "  - id: review\n    approval:\n      message: 'Ship?'\n      input: {note: str}\n"
        "  - id: ship\n    needs: [review]\n    run: python:ship\n"
    )
    wf = kf.load(path, {"ship": lambda review: review["input"]["note"]})
    run = wf.run()
    assert run.status == "waiting"
    kf.approve(run.run_id, "review", by="ana", comment="fine", resume=False, note="careful")
    run.resume()
    assert run["ship"] == "careful"
    review = of_task(run, "review")
    assert review[-2] == ("TaskStarted", 1, {"executor": "gate"})
    assert review[-1][0] == "TaskSucceeded"
    output = review[-1][2]["output"]
    assert output["by"]["name"] == "ana"
    assert {k: v for k, v in output.items() if k != "by"} == {"approved": True, "input": {"note": "careful"}, "comment": "fine", "expired": False}


def test_a_breakpoint_records_the_inputs_and_waits_then_runs_with_replaced_values():
    src = "def raw():\n    return [3, 1]\ndef clean(raw):\n    return sorted(raw)\n"
    run = cell("bp", src).run(break_before=["clean"])
    assert run.status == "waiting"
    assert of_task(run, "clean") == [
        ("TaskScheduled", 1, {}),
        ("BreakpointHit", 1, {"inputs": {"raw": {"type": "list", "items": [3, 1], "length": 2}}, "iteration": 0}),
    ]
    assert record(run)[-1][3]["waiting"] == [{"task": "clean", "kind": "breakpoint", "message": None, "expires_at": None}]
    run.resume(replace={"raw": [5, 4]})
    assert run["clean"] == [4, 5]


def test_a_replay_runs_a_released_breakpoints_task_with_the_replaced_values():
    src = "def raw():\n    return [3, 1]\ndef clean(raw):\n    return sorted(raw)\n"
    run = cell("bp_replay", src).run(break_before=["clean"])
    run.resume(replace={"raw": [5, 4]})
    report = run.replay()
    assert report.ok
    assert report.replayed.tasks["clean"].output == [4, 5]


def test_a_sleep_step_records_its_wake_up_time_and_succeeds_with_none(tmp_path):
    path = tmp_path / "nap.yaml"
    path.write_text("name: nap\ntasks:\n  - id: nap\n    sleep: 0.2s\n  - id: after\n    needs: [nap]\n    run: python:after\n")
    wf = kf.load(path, {"after": lambda nap: [nap]})
    t0 = time.monotonic()
    run = wf.run()
    assert time.monotonic() - t0 >= 0.2
    nap = of_task(run, "nap")
    assert [(t, a) for t, a, _ in nap] == [("TaskScheduled", 1), ("TaskStarted", 1), ("SleepStarted", 1), ("TaskSucceeded", 1)]
    assert nap[1][2] == {"executor": "engine"}
    started = [e for e in run.store.read_run(run.run_id) if e.type == "SleepStarted"][0]
    assert started.payload["seconds"] == 0.2
    assert 199_000 <= started.payload["wake_at"] - started.ts <= 201_000
    assert nap[-1][2] == NONE
    woke = [e for e in run.store.read_run(run.run_id) if e.type == "TaskSucceeded" and e.task_id == "nap"][0]
    assert woke.ts - started.payload["wake_at"] < 300_000  # not at the driver's next look around (0.5 s)
    assert started_payload(run)["source"] == str(path)
    assert run["after"] == [None]


def test_a_sleep_lasts_its_time_when_other_work_wakes_the_driver_first(tmp_path):
    path = tmp_path / "nap_busy.yaml"
    path.write_text("name: nap_busy\ntasks:\n  - id: nap\n    sleep: 0.2s\n  - id: quick\n    run: python:quick\n")
    run = kf.load(path, {"quick": lambda: 1}).run()
    # quick's completion wakes the driver long before the sleep is over: the sleep must go on
    events = run.store.read_run(run.run_id)
    started = next(e for e in events if e.type == "SleepStarted")
    woke = next(e for e in events if e.type == "TaskSucceeded" and e.task_id == "nap")
    assert woke.ts >= started.payload["wake_at"]


def test_a_breakpoint_replacement_kept_as_an_artifact_reaches_the_task():
    src = "def raw():\n    return [3, 1]\ndef clean(raw):\n    return [type(raw).__name__, sorted(raw)]\n"
    run = cell("bp_artifact", src).run(break_before=["clean"])
    run.resume(replace={"raw": (5, 4)})  # a tuple does not survive JSON: stored as an artifact
    released = [p for t, _, p in of_task(run, "clean") if t == "BreakpointReleased"]
    assert released[0]["replaced"]["raw"]["output_ref"] is not None
    assert run["clean"] == ["tuple", [4, 5]]


# --- loops ------------------------------------------------------------------------------------


def test_back_to_records_the_jump_and_resets_the_loop_body():
    src = (
        "def start():\n    return 0\n"
        "COUNT = [0]\n"
        "def step(start):\n    COUNT[0] += 1\n    return COUNT[0]\n"
        "def check(step):\n    return kf.back_to('step', output=step) if step < 3 else step\n"
        "def end(check):\n    return check\n"
    )
    wf, _ = define("loop", src)
    run = wf.run()
    assert run["end"] == 3
    jumps = [(task, p) for t, task, _, p in record(run) if t == "LoopJumped"]
    assert jumps == [
        ("check", {"kind": "back_to", "to": "step", "iteration": 1, "reset": ["step", "check", "end"]}),
        ("check", {"kind": "back_to", "to": "step", "iteration": 2, "reset": ["step", "check", "end"]}),
    ]
    resets = [(task, a, p) for t, task, a, p in record(run) if t == "TaskReset"]
    assert resets == [
        ("step", 1, {"iteration": 1, "loop_from": "check"}), ("check", 1, {"iteration": 1, "loop_from": "check"}),
        ("step", 2, {"iteration": 2, "loop_from": "check"}), ("check", 2, {"iteration": 2, "loop_from": "check"}),
    ]  # fmt: skip
    # attempt numbers go on across iterations; each iteration records the output the jump carried
    assert [a for t, a, _ in of_task(run, "step") if t == "TaskStarted"] == [1, 2, 3]
    assert [p["output"] for t, _, p in of_task(run, "check") if t == "TaskSucceeded"] == [1, 2, 3]


def test_a_declared_back_to_limit_fails_the_task_naming_it():
    src = (
        "def step():\n    return 1\n"
        "@kf.task(back_to={'step': 'step', 'max_iterations': 2})\ndef check(step):\n    return step\n"
    )
    wf, _ = define("limit", src)
    run = wf.run(raise_on_failure=False)
    assert [p["iteration"] for t, _, p in of_task(run, "check") if t == "LoopJumped"] == [1, 2]
    assert of_task(run, "check")[-1][2]["error"]["message"] == (
        "loop from 'check' back to 'step' exceeded its limit of 2 iterations; raise max_iterations or fix the loop's condition"
    )


def test_back_to_a_task_that_does_not_run_before_fails():
    src = "def a():\n    return kf.back_to('b')\ndef b():\n    return 1\ndef c():\n    return kf.skip_to('nope')\n"
    wf, _ = define("badjump", src)
    run = wf.run(raise_on_failure=False)
    assert of_task(run, "a")[-1][2]["error"] == {"exc_type": "StepFailed", "message": "task 'a' returned back_to('b'), but 'b' does not run before it", "traceback": False}
    assert of_task(run, "c")[-1][2]["error"]["message"] == "task 'c' returned skip_to('nope'), but there is no task 'nope'"


def test_skip_to_records_what_it_skipped_and_the_target_runs():
    src = (
        "def a():\n    return kf.skip_to('d', output=5)\n"
        "def b(a):\n    return 1\n"
        "def c(b):\n    return 2\n"
        "def d(c, a):\n    return [c, a]\n"
        "def e(b):\n    return 3\n"
    )
    wf, _ = define("skipper", src)
    run = wf.run()
    assert of_task(run, "a")[-2:] == [
        ("TaskSucceeded", 1, out(5, "int")),
        ("LoopJumped", None, {"kind": "skip_to", "to": "d", "skipped": ["b", "c"]}),
    ]
    assert of_task(run, "b") == [("TaskSkipped", None, {"reason": "skipped by skip_to from 'a'", "skip_to": "d"})]
    assert of_task(run, "c") == [("TaskSkipped", None, {"reason": "skipped by skip_to from 'a'", "skip_to": "d"})]
    assert run["d"] == [None, 5]
    assert of_task(run, "e")[-1][2]["reason"] == "all upstream tasks were skipped"


def test_a_declared_jump_with_a_condition_jumps_only_when_it_holds():
    src = (
        "def a(n):\n    return n\n"
        "@kf.task(skip_to={'step': 'd', 'when': '{{output}} > 2'})\ndef b(a):\n    return a\n"
        "def c(b):\n    return 1\n"
        "def d(c, b):\n    return [c, b]\n"
    )
    wf, _ = define("declared", src)
    assert wf.run(n=5)["d"] == [None, 5]
    assert wf.run(n=1)["d"] == [1, 1]


# --- forEach, switch --------------------------------------------------------------------------


def test_for_each_records_each_item_and_gives_the_summary():
    src = "@kf.for_each([1, 0, 2], on_failure='continue')\ndef inv(item):\n    return 10 // item\n"
    wf, _ = define("each", src)
    run = wf.run()
    rec = of_task(run, "inv")
    assert rec[:3] == [("TaskScheduled", 1, {}), ("TaskStarted", 1, {"executor": "threads"}), ("ForEachStarted", None, {"path": [], "count": 3})]
    items = sorted((p["index"], p["status"], p.get("error", {}).get("exc_type")) for t, _, p in rec if t == "ForEachItem")
    assert items == [(0, "succeeded", None), (1, "failed", "ZeroDivisionError"), (2, "succeeded", None)]
    assert [p["path"] for t, _, p in rec if t == "ForEachItem" and p["index"] == 1] == [[1]]
    failed = [p for t, _, p in rec if t == "ForEachItem" and p["status"] == "failed"]
    assert failed == [{"path": [1], "index": 1, "status": "failed", "error": {
        "exc_type": "ZeroDivisionError", "message": "integer division or modulo by zero", "traceback": True}}]  # fmt: skip
    assert run["inv"] == {"outputs": [10, None, 5], "count": 3, "succeeded": 2, "failed": 1,
                          "errors": [{"index": 1, "exc_type": "ZeroDivisionError", "message": "integer division or modulo by zero"}]}


def test_a_failed_item_fails_a_for_each_task_naming_the_first_failed_item():
    src = "@kf.for_each([1, 0, 2], max_parallel=1)\ndef inv(item):\n    return 10 // item\n"
    wf, _ = define("each_fail", src)
    run = wf.run(raise_on_failure=False)
    assert of_task(run, "inv")[-1] == ("TaskFailed", 1, {"error": {
        "exc_type": "StepFailed", "traceback": False,
        "message": "forEach of task 'inv': 1 of 3 items failed; first: item 1: ZeroDivisionError: integer division or modulo by zero"}})  # fmt: skip


def test_an_items_retry_takes_back_the_slot_it_held_so_no_other_item_runs_beside_it():
    # max_parallel=1: while item 0's retry runs, item 1 must wait for the slot (the run loop hands
    # the slot the waiting retry held back to it)
    src = (
        "second = threading.Event()\nTRIES = []\nSAW = []\n"
        "@kf.task(retries=1, retry_delay=0.05, jitter=0)\n@kf.for_each([0, 1], max_parallel=1)\ndef it(item):\n"
        "    TRIES.append(item)\n    if item == 1:\n        second.set()\n        return item\n"
        "    if TRIES == [0]:\n        raise ValueError('again')\n    SAW.append(second.wait(0.15))\n    return item\n"
    )
    wf, ns = define("each_retry_slot", src)
    run = wf.run()
    assert run["it"]["outputs"] == [0, 1]
    assert ns["TRIES"] == [0, 0, 1]
    assert ns["SAW"] == [False]


def test_a_for_each_item_is_retried_with_its_own_delay():
    src = (
        "SEEN = []\n"
        "@kf.task(retries=1, retry_delay=0.01, jitter=0)\n@kf.for_each([1, 2])\ndef it(item):\n"
        "    SEEN.append(item)\n    if item == 2 and SEEN.count(2) == 1:\n        raise ValueError('again')\n    return item\n"
    )
    wf, ns = define("each_retry", src)
    run = wf.run()
    retrying = [p for t, _, p in of_task(run, "it") if t == "ForEachItem" and p["status"] == "retrying"]
    assert retrying == [{"path": [1], "index": 1, "status": "retrying", "delay_s": 0.01,
                         "error": {"exc_type": "ValueError", "message": "again", "traceback": True}}]  # fmt: skip
    assert run["it"]["outputs"] == [1, 2] and sorted(ns["SEEN"]) == [1, 2, 2]


def test_nested_for_each_paths_and_outputs():
    src = "@kf.for_each([[1, 2], [3]])\n@kf.for_each('{{forEach.item}}', as_='x')\ndef each(item, x):\n    return x * 10\n"
    wf, _ = define("nested", src)
    run = wf.run()
    started = [p for t, _, p in of_task(run, "each") if t == "ForEachStarted"]
    assert sorted(map(str, started)) == sorted(map(str, [{"path": [], "count": 2}, {"path": [0], "count": 2}, {"path": [1], "count": 1}]))
    paths = sorted(p["path"] for t, _, p in of_task(run, "each") if t == "ForEachItem")
    assert paths == [[0], [0, 0], [0, 1], [1], [1, 0]]
    assert [o["outputs"] for o in run["each"]["outputs"]] == [[10, 20], [30]]


def test_a_retried_item_gives_its_slot_back_so_the_rest_of_a_one_at_a_time_loop_runs():
    src = (
        "SEEN = []\n"
        "@kf.task(retries=1, retry_delay=0, jitter=0)\n@kf.for_each([1, 2, 3], max_parallel=1)\ndef it(item):\n"
        "    SEEN.append(item)\n    if SEEN == [1]:\n        raise ValueError('again')\n    return item * 10\n"
    )
    wf, ns = define("each_slot", src)
    run = wf.run()
    assert ns["SEEN"] == [1, 1, 2, 3]
    assert run["it"]["outputs"] == [10, 20, 30]


def test_for_each_items_that_are_not_a_list_fail_the_task_naming_what_they_gave():
    src = "def n():\n    return 5\n@kf.for_each('{{tasks.n.output}}')\ndef each(item, n):\n    return item\n"
    wf, _ = define("each_not_list", src)
    run = wf.run(raise_on_failure=False)
    message = "forEach of task 'each': items must be a list, but '{{tasks.n.output}}' gave int 5"
    assert of_task(run, "each") == [
        ("TaskScheduled", 1, {}), ("TaskStarted", 1, {"executor": "threads"}),
        ("TaskFailed", 1, {"error": {"exc_type": "StepFailed", "message": message, "traceback": False}}),
    ]  # fmt: skip


def test_for_each_items_that_cannot_be_computed_are_retried_as_an_error_unless_retry_on_leaves_it_out():
    # the StepFailed of bad items is an "error" attempt: retried with that reason, and only if retry_on takes it
    base = "def n():\n    return 5\n@kf.task(retries=1, retry_delay=0, jitter=0{on})\n@kf.for_each('{{{{tasks.n.output}}}}')\ndef each(item, n):\n    return item\n"
    run = define("each_bad_retried", base.format(on=""))[0].run(raise_on_failure=False)
    rec = of_task(run, "each")
    assert [t for t, _, _ in rec] == ["TaskScheduled", "TaskStarted", "TaskRetrying", "TaskScheduled", "TaskStarted", "TaskFailed"]
    assert rec[2][2]["reason"] == "error"
    run = define("each_bad_not_retried", base.format(on=", retry_on=[ConnectionError]"))[0].run(raise_on_failure=False)
    assert [t for t, _, _ in of_task(run, "each")] == ["TaskScheduled", "TaskStarted", "TaskFailed"]


def test_a_for_each_item_has_its_path_in_its_context_and_a_plain_task_none():
    src = (
        "def plain():\n    c = kf.context()\n    return [list(c.item), c.scope]\n"
        "@kf.for_each(['a', 'b'])\ndef each(item):\n    c = kf.context()\n    return [list(c.item), c.scope]\n"
    )
    wf, _ = define("each_path", src)
    run = wf.run()
    assert run["plain"] == [[], "plain#0"]
    assert run["each"]["outputs"] == [[[0], "each#0[0]"], [[1], "each#0[1]"]]


def test_switch_records_the_value_case_and_target():
    src = """
import kernelflow as kf
def parse(kind):
    return {"kind": kind}
def handle_a(parse):
    return "a"
def other(parse):
    return "other"
route = kf.switch("{{tasks.parse.output.kind}}", cases={"a": handle_a, "true": handle_a}, default=other)
"""
    wf = cell("sw", src)
    run = wf.run(kind="a")
    assert of_task(run, "route")[2] == ("SwitchMatched", None, {"value": "a", "case": "a", "target": "python:handle_a"})
    assert run["route"] == "a"
    run = wf.run(kind="zz")
    assert of_task(run, "route")[2] == ("SwitchMatched", None, {"value": "zz", "case": "default", "target": "python:other"})
    assert run["route"] == "other"


def test_a_switch_value_json_cannot_hold_is_recorded_as_its_repr():
    src = """
import kernelflow as kf
def parse():
    return {"kind": {1, 2}}
def other(parse):
    return "other"
route = kf.switch("{{tasks.parse.output.kind}}", cases={"a": other}, default=other)
"""
    run = cell("sw_set", src).run()
    assert of_task(run, "route")[2] == ("SwitchMatched", None, {"value": "{1, 2}", "case": "default", "target": "python:other"})


# --- replay: recorded answers and side effects -----------------------------------------------


def test_a_replay_gives_a_gate_its_recorded_answer():
    src = "import kernelflow as kf\ndef rows():\n    return [1, 2]\n@kf.approval('Go?', input={'table': str})\ndef publish(rows, table):\n    return [table, len(rows)]\n"
    run = cell("gated_replay", src).run()
    kf.approve(run.run_id, "publish", table="t", by="bob", resume=False)
    run.resume()
    report = run.replay()
    assert report.ok
    task = report.replayed.tasks["publish"]
    assert task.status == "succeeded" and task.output == ["t", 2]
    assert task.answer["type"] == "ApprovalGranted" and task.answer["by"]["name"] == "bob"


def test_a_replay_fails_a_gate_the_recorded_run_never_answered():
    src = "import kernelflow as kf\ndef rows():\n    return [1]\n@kf.approval('ok?')\ndef maybe(rows):\n    return 1\ndef boom(rows):\n    raise ValueError('x')\n"
    run = cell("unanswered", src).run(raise_on_failure=False)
    report = run.replay()
    task = report.replayed.tasks["maybe"]
    assert task.status == "failed"
    assert task.error == {"exc_type": "StepFailed", "message": "step 'maybe' reached its approval gate, which the recorded run never answered", "traceback": ""}
    assert task.attempt == 1


CHILD = "def double(x):\n    return x * 2\n"
PARENT = "import kernelflow as kf\ndef base(n):\n    return n\nsub = kf.subworkflow('child', input={'x': '{{tasks.base.output}}'})\ndef after(sub):\n    return [sub]\n"


def test_a_replay_uses_a_side_effect_steps_recorded_output():
    cell("child", CHILD)
    run = cell("parent", PARENT).run(n=3)
    assert run["after"] == [6]
    cell("child", "def double(x):\n    return x * 100\n")  # a new call would now give 300
    report = run.replay()
    assert report.ok
    assert report.replayed.tasks["sub"].output == 6 and report.replayed.tasks["after"].output == [6]
    assert report.replayed.tasks["sub"].output_type == "int"


def test_a_replay_loads_a_side_effect_output_kept_as_an_artifact():
    cell("child_big", "def big(x):\n    return 'z' * 3000\n")
    src = "import kernelflow as kf\nsub = kf.subworkflow('child_big', input={'x': 1})\ndef after(sub):\n    return len(sub)\n"
    run = cell("parent_big", src).run()
    report = run.replay()
    assert report.ok and report.replayed.tasks["after"].output == 3000


def test_a_replay_fails_a_side_effect_step_that_has_no_recorded_output():
    cell("child_bad", "def bad(x):\n    raise ValueError('no')\n")
    src = "import kernelflow as kf\nsub = kf.subworkflow('child_bad', input={'x': 1})\n"
    run = cell("parent_bad", src).run(raise_on_failure=False)
    report = run.replay()
    task = report.replayed.tasks["sub"]
    assert task.status == "failed" and task.attempt == 1
    assert task.error["message"] == "step 'sub' (workflow) is a side effect; replay uses its recorded output, but it has none (recorded: failed)"


@pytest.mark.parametrize(("step", "kind"), [("kf.shell(['false'])", "shell"), ("kf.notebook('missing.ipynb')", "notebook")])
def test_a_replay_does_not_run_a_shell_or_notebook_step_again(step, kind):
    run = cell(f"side_{kind}", f"import kernelflow as kf\nside = {step}\n").run(raise_on_failure=False)
    assert run.state.tasks["side"].status == "failed"
    task = run.replay().replayed.tasks["side"]
    assert task.error["message"] == f"step 'side' ({kind}) is a side effect; replay uses its recorded output, but it has none (recorded: failed)"


def test_a_replay_does_not_send_an_http_request_again(http_server):
    http_server.route("POST", "/orders", json={"id": 7})
    run = cell("side_http", "import kernelflow as kf\nside = kf.http('POST', URL + '/orders', json={'n': 1})\n",
               {"URL": http_server.url}).run()  # fmt: skip
    assert run["side"] == {"id": 7}
    http_server.route("POST", "/orders", json={"id": 8})  # a request sent again would give 8
    report = run.replay()
    assert report.ok and report.replayed.tasks["side"].output == {"id": 7}
    assert report.replayed.tasks["side"].attempt == 1
    assert len(http_server.requests) == 1


def test_a_fork_records_the_reused_outputs_as_its_own_then_runs_from_the_step():
    wf, _ = define("forked", "def a(n):\n    return n * 2\ndef b(a):\n    return a + 1\n")
    parent = wf.run(n=3)
    child = parent.fork("b")
    assert [r for r in record(child) if r[1] is not None] == [
        ("TaskSucceeded", "a", 0, {**out(6, "int"), "reused_from": parent.run_id}),
        ("TaskScheduled", "b", 1, {}), ("TaskStarted", "b", 1, {"executor": "threads"}), ("TaskSucceeded", "b", 1, out(7, "int")),
    ]  # fmt: skip


# --- circuit breakers, executors ----------------------------------------------------------------

BREAKER = """
import kernelflow as kf
CALLS = []
def _cached():
    return "cached"
@kf.task(circuit_breaker={"failure_threshold": 2, "window": "60s", "break_duration": "60s", "name": NAME}, **EXTRA)
def call():
    CALLS.append(1)
    if FAIL:
        raise ConnectionError("down")
    return "fresh"
"""


def test_a_circuit_opens_after_its_threshold_and_then_refuses_calls():
    ns = {"NAME": "svc", "EXTRA": {"retries": 2, "retry_delay": 0}, "FAIL": True}
    wf = cell("breaker", BREAKER, ns)
    run = wf.run(raise_on_failure=False)
    rec = of_task(run, "call")
    assert [t for t, _, _ in rec] == [
        "TaskScheduled", "TaskStarted", "TaskRetrying",
        "TaskScheduled", "TaskStarted", "CircuitChanged", "TaskRetrying",
        "TaskScheduled", "TaskStarted", "TaskFailed",
    ]  # fmt: skip
    assert rec[5][2] == {"circuit": "svc", "transition": "closed->open"}
    refused = rec[-1][2]["error"]
    assert refused["exc_type"] == "CircuitOpen" and refused["message"].startswith("circuit 'svc' is open until ")
    assert len(ns["CALLS"]) == 2  # the third attempt was refused, not made


def test_an_open_circuit_uses_the_fallback_without_calling():
    wf = cell("breaker_fb", BREAKER, {"NAME": "svc_fb", "EXTRA": {"fallback": "python:_cached"}, "FAIL": True})
    assert wf.run().output == "cached"  # first failure: fallback
    assert wf.run().output == "cached"  # second failure opens the circuit
    third = wf.run()
    rec = of_task(third, "call")
    assert [t for t, _, _ in rec] == ["TaskScheduled", "TaskStarted", "FallbackUsed", "TaskSucceeded"]
    assert rec[2][2]["reason"].startswith("circuit 'svc_fb' is open until ") and rec[2][2]["fallback"] == "python:_cached"


def test_a_half_open_circuit_records_the_probe_closing_it():
    src = BREAKER.replace('"60s", "name"', '"0.2s", "name"')
    wf = cell("probe", src, {"NAME": "svc_probe", "EXTRA": {}, "FAIL": True})
    wf.run(raise_on_failure=False)
    wf.run(raise_on_failure=False)
    time.sleep(0.25)
    healthy = cell("probe", src, {"NAME": "svc_probe", "EXTRA": {}, "FAIL": False})
    run = healthy.run()
    changes = [(p["transition"], p.get("reason") is not None) for t, _, p in of_task(run, "call") if t == "CircuitChanged"]
    assert changes == [("open->half_open", True), ("half_open->closed", False)]
    assert run.output == "fresh"


def test_a_call_refused_by_an_open_circuit_is_retried_as_an_error():
    ns = {"NAME": "svc_retry", "EXTRA": {"retries": 3, "retry_delay": 0, "jitter": 0}, "FAIL": True}
    run = cell("breaker_retry", BREAKER, ns).run(raise_on_failure=False)
    retrying = [(a, p["reason"], p["error"]["exc_type"]) for t, a, p in of_task(run, "call") if t == "TaskRetrying"]
    assert retrying == [(1, "error", "ConnectionError"), (2, "error", "ConnectionError"), (3, "error", "CircuitOpen")]
    assert len(ns["CALLS"]) == 2


class _Refusing:
    """An executor whose submit raises (a plugin that cannot start the attempt)."""

    name = "refusing"

    def __init__(self, max_parallel):
        pass

    def submit(self, call, report):
        raise ConnectionError("scheduler refused the job")

    def shutdown(self, wait=False):
        raise RuntimeError("cannot stop")


@pytest.fixture
def refusing_executor():
    """The executor 'refusing' (whose submit raises), from the plugin 'refusing-executor'."""
    from kernelflow import plugin_host
    from kernelflow.executor_api import ExecutorSpec

    class Plugin:
        @kf.hookimpl
        def kernelflow_register_executors(self):
            return [ExecutorSpec("refusing", _Refusing, "always refuses")]

    plugin = Plugin()
    plugin_host.register(plugin, name="refusing-executor")
    yield "refusing"
    plugin_host.unregister(plugin)


def test_an_executor_that_raises_in_submit_fails_the_attempt_naming_its_plugin(refusing_executor):
    from kernelflow import plugin_host

    wf, _ = define("refused", "@kf.task(executor='refusing')\ndef a():\n    return 1\n")
    with pytest.warns(plugin_host.PluginWarning) as warned:
        run = wf.run(raise_on_failure=False)
    assert [str(w.message) for w in warned] == [
        "kernelflow plugin 'refusing-executor' raised in executor 'refusing' shutdown: RuntimeError: cannot stop; the run goes on"
    ]
    rec = of_task(run, "a", tracebacks=True)
    assert [t for t, _, _ in rec] == ["TaskScheduled", "TaskStarted", "TaskFailed"]
    assert rec[1][2] == {"executor": "refusing"}
    error = rec[-1][2]["error"]
    assert error["exc_type"] == "PluginError"
    assert error["message"] == ("executor 'refusing' from plugin 'refusing-executor' raised instead of starting the attempt: "
                                "ConnectionError: scheduler refused the job")  # fmt: skip
    assert "scheduler refused the job" in error["traceback"]


def test_the_error_of_an_executor_that_raised_in_submit_comes_from_the_executors_exception(refusing_executor):
    from kernelflow import plugin_host
    from kernelflow.exceptions import PluginError

    wf, _ = define("refused_cause", "@kf.task(executor='refusing')\ndef a():\n    return 1\n")
    with pytest.warns(plugin_host.PluginWarning), pytest.raises(kf.RunFailedError) as failed:
        wf.run()
    error = failed.value.__cause__
    assert isinstance(error, PluginError)
    assert isinstance(error.__cause__, ConnectionError)
    assert str(error.__cause__) == "scheduler refused the job"


def test_an_executor_whose_plugin_is_gone_when_the_run_starts_fails_the_attempt_with_the_registry_error():
    from kernelflow import plugin_host
    from kernelflow.executor_api import ExecutorSpec

    class Plugin:
        @kf.hookimpl
        def kernelflow_register_executors(self):
            return [ExecutorSpec("vanishing", _Elsewhere, "unregistered before the run")]

    plugin = Plugin()
    plugin_host.register(plugin, name="vanishing-executor")
    try:
        wf, _ = define("vanished", "@kf.task(executor='vanishing')\ndef a():\n    return 1\n")
    finally:
        plugin_host.unregister(plugin)
    run = wf.run(raise_on_failure=False)
    rec = of_task(run, "a")
    assert [(t, a) for t, a, _ in rec] == [("TaskScheduled", 1), ("TaskStarted", 1), ("TaskFailed", 1)]
    error = rec[-1][2]["error"]
    # no plugin to name: the registry's own error, as it is
    assert (error["exc_type"], error["traceback"]) == ("PluginError", False)
    assert error["message"].startswith("no executor named 'vanishing'; registered executors: ")


def test_outcomes_that_came_in_together_are_all_recorded_before_new_work_starts():
    # An executor that reports each attempt before its submit returns: a's and b's outcomes
    # are both waiting when the driver looks; c (after a) starts only once both are recorded.
    from kernelflow import plugin_host
    from kernelflow.executor_api import ExecutorSpec

    class Plugin:
        @kf.hookimpl
        def kernelflow_register_executors(self):
            return [ExecutorSpec("at_once", _Elsewhere, "reports inside submit")]

    plugin = Plugin()
    plugin_host.register(plugin, name="at-once-executor")
    try:
        src = "def a():\n    return 1\ndef b():\n    return 2\ndef c(a):\n    return 3\n"
        wf, _ = define("drained", src, executor="at_once")
        run = wf.run()
    finally:
        plugin_host.unregister(plugin)
    assert [(t, task) for t, task, _, _ in record(run)][1:-1] == [
        ("TaskScheduled", "a"), ("TaskScheduled", "b"),
        ("TaskStarted", "a"), ("TaskStarted", "b"),
        ("TaskSucceeded", "a"), ("TaskScheduled", "c"), ("TaskSucceeded", "b"),
        ("TaskStarted", "c"), ("TaskSucceeded", "c"),
    ]  # fmt: skip


# --- templates: input and output mappings --------------------------------------------------------


def test_an_input_mapping_renders_templates_into_arguments():
    src = "def a():\n    return {'v': 3}\n@kf.task(input={'x': '{{tasks.a.output.v}}', 'y': '{{inputs.k}}'})\ndef b(a, x, y):\n    return [x, y]\n"
    wf, _ = define("inmap", src)
    assert wf.run(k="s")["b"] == [3, "s"]


def test_an_output_mapping_shapes_the_recorded_output_and_a_bad_one_is_retried_then_fails():
    src = (
        "def a():\n    return {'v': 3, 'w': 4}\n"
        "@kf.task(output={'only': '{{output.v}}'})\ndef b(a):\n    return a\n"
        "@kf.task(output={'x': '{{output.nope}}'}, retries=1, retry_delay=0)\ndef c(a):\n    return a\n"
    )
    wf, _ = define("outmap", src)
    run = wf.run(raise_on_failure=False)
    assert of_task(run, "b")[-1] == ("TaskSucceeded", 1, out({"only": 3}, "dict"))
    rec = of_task(run, "c")
    assert [t for t, _, _ in rec] == ["TaskScheduled", "TaskStarted", "TaskRetrying", "TaskScheduled", "TaskStarted", "TaskFailed"]
    assert rec[-1][2]["error"]["message"].startswith("output mapping: {{output.nope}}: ")



def test_a_stored_definition_whose_input_mapping_reads_output_fails_the_task_at_run_time():
    # A definition refuses {{output}} outside output:, but one loaded with Workflow.from_dict
    # is not checked again: at run time there is no output to give it, not None.
    import json

    from kernelflow.model import Workflow

    wf, ns = define("stored_output", "@kf.task(input={'x': '{{inputs.k}}'})\ndef a(x):\n    return x\n")
    stored = json.loads(wf.to_json().replace("{{inputs.k}}", "{{output}}"))
    del stored["version"]  # edited by hand
    run = Workflow.from_dict(stored, namespace={"a": ns["a"]}).run(k=1, raise_on_failure=False)
    message = "{{output}}: there is no step output here (output is available once the step has run)"
    assert of_task(run, "a")[-1] == ("TaskFailed", 1, {"error": {"exc_type": "EvaluationError", "message": message, "traceback": False}})


def test_what_a_for_each_item_prints_is_logged_with_its_index():
    src = "@kf.for_each(['a', 'b'], max_parallel=1)\ndef talk(item):\n    print('hi', item)\n    return item\n"
    wf, _ = define("each_log", src)
    run = wf.run()
    logged = sorted((p["item"], p["text"], p["truncated"], a) for t, a, p in of_task(run, "talk") if t == "TaskLogged")
    assert logged == [(0, "hi a\n", False, 1), (1, "hi b\n", False, 1)]


# --- attempts across loop iterations, replays, the exception a failed run raises from ----------


def test_retries_inside_each_loop_iteration_count_from_that_iteration():
    src = (
        "COUNT = [0]\n"
        "@kf.task(retries=1, retry_delay=0.01, backoff='linear', jitter=0)\n"
        "def step():\n    COUNT[0] += 1\n    if COUNT[0] % 2:\n        raise ValueError('odd')\n    return COUNT[0]\n"
        "def check(step):\n    return kf.back_to('step') if step < 4 else step\n"
    )
    wf, _ = define("loop_retry", src)
    run = wf.run()
    assert run["check"] == 4
    retrying = [(a, p["delay_s"], p["next_attempt"]) for t, a, p in of_task(run, "step") if t == "TaskRetrying"]
    assert retrying == [(1, 0.01, 2), (3, 0.01, 4)]


def test_a_replay_does_not_wait_for_retry_delays(monkeypatch):
    from test_engine_gates import replay_events

    src = (
        "@kf.task(retries=1, retry_delay=0.3, jitter=0)\n"
        "def flaky():\n    if kf.context().attempt == 1:\n        raise ValueError('first')\n    return 'ok'\n"
    )
    wf, _ = define("replay_retry", src)
    run = wf.run()
    report, events = replay_events(run, monkeypatch)
    # the delay the replay's retry waits is the one it records
    assert [p["delay_s"] for t, task, _, p in events if t == "TaskRetrying"] == [0.0]
    assert report.ok and report.replayed.tasks["flaky"].attempt == 2


def test_a_failed_run_raises_from_the_tasks_own_exception():
    wf, _ = define("cause", "def a():\n    raise LookupError('where')\n")
    with pytest.raises(kf.RunFailedError) as info:
        wf.run()
    assert type(info.value.__cause__) is LookupError and str(info.value.__cause__) == "where"


def test_a_failed_fallback_raises_from_the_fallbacks_exception():
    src = "def _plan_b():\n    raise OSError('also')\n@kf.task(fallback=_plan_b)\ndef f1():\n    raise ValueError('v')\n"
    wf, _ = define("cause_fb", src)
    with pytest.raises(kf.RunFailedError) as info:
        wf.run()
    assert type(info.value.__cause__) is OSError


def test_a_timed_out_run_raises_from_nothing_the_task_raised():
    wf, ns = define("cause_to", SLOW.format(opts=", on_timeout='fail'"))
    with pytest.raises(kf.RunFailedError) as info:
        wf.run()
    ns["gate"].set()
    assert info.value.__cause__ is None


from http_server import http_server_fixture  # noqa: E402, F401 - the `http_server` fixture (a server thread)


def test_a_step_that_stops_itself_at_its_timeout_is_a_timeout(http_server):
    # The HTTP step enforces its own timeout (StepTimeoutError): a timeout, not an error, so
    # retry_on does not apply, on_timeout does, and the run raises from that exception.
    http_server.route("GET", "/slow", json={"ok": True}, delay=0.5)
    src = """
import kernelflow as kf
slow = kf.http("GET", URL + "/slow", timeout=0.1, retries=1, retry_delay=0, retry_on=["KeyError"], on_timeout="retry")
"""
    run = cell("http_to", src, {"URL": http_server.url}).run(raise_on_failure=False)
    rec = of_task(run, "slow")
    assert [(t, a) for t, a, _ in rec] == [
        ("TaskScheduled", 1), ("TaskStarted", 1), ("TaskRetrying", 1), ("TaskScheduled", 2), ("TaskStarted", 2), ("TaskTimedOut", 2),
    ]  # fmt: skip
    assert rec[2][2]["reason"] == "timeout"
    assert rec[-1][2]["timeout_s"] == 0.1 and rec[-1][2]["error"]["exc_type"] == "StepTimeoutError"
    with pytest.raises(kf.RunFailedError) as info:
        cell("http_to2", src.replace("on_timeout=\"retry\"", "on_timeout=\"fail\""), {"URL": http_server.url}).run()
    assert type(info.value.__cause__).__name__ == "StepTimeoutError"


# --- resumed with a definition whose functions are not all loaded -------------------------------


def _bare(wf, **functions):
    """The workflow as rebuilt from its stored definition, with only ``functions`` found."""
    from kernelflow.model import Workflow

    return Workflow.from_json(wf.to_json(), namespace=functions)


def test_a_compensation_whose_function_is_not_loaded_fails_saying_so():
    src = "def _undo():\n    pass\n@kf.task(compensate=_undo)\ndef a():\n    return 1\ndef c(a):\n    raise KeyError('c')\n"
    wf, ns = define("bare_comp", src)
    run = wf.run(raise_on_failure=False)
    with pytest.raises(kf.RunFailedError):
        kf.resume(run.run_id, workflow=_bare(wf, a=ns["a"], c=ns["c"]))
    assert record(run)[-3:-1] == [
        ("CompensationStarted", "a", None, {"compensate": "python:_undo"}),
        ("CompensationFailed", "a", None, {"compensate": "python:_undo", "error": {
            "exc_type": "StepFailed", "message": "compensation python:_undo was not found when the workflow was loaded", "traceback": False}}),
    ]  # fmt: skip


def test_a_fallback_whose_function_is_not_loaded_fails_the_task_saying_so():
    src = "def _plan_b():\n    raise OSError('also')\n" + SLOW.format(opts=", on_timeout='fallback', fallback=_plan_b")
    wf, ns = define("bare_fb", src)
    run = wf.run(raise_on_failure=False)
    with pytest.raises(kf.RunFailedError) as info:
        kf.resume(run.run_id, workflow=_bare(wf, slow=ns["slow"]))
    ns["gate"].set()
    message = "task 'slow': fallback python:_plan_b was not found when the workflow was loaded"
    assert of_task(run, "slow")[-1] == ("TaskFailed", 2, {"error": {"exc_type": "StepFailed", "message": message, "traceback": False}})
    assert str(info.value.__cause__) == message


def test_a_task_whose_function_is_not_loaded_fails_saying_so():
    src = "def a():\n    return 1\ndef c(a):\n    raise KeyError('c')\n"
    wf, ns = define("bare_fn", src)
    run = wf.run(raise_on_failure=False)
    with pytest.raises(kf.RunFailedError):
        kf.resume(run.run_id, workflow=_bare(wf, a=ns["a"]))
    assert of_task(run, "c")[-1][2]["error"] == {
        "exc_type": "StepFailed", "message": "task 'c' has no function (python:c was not found when the workflow was loaded)", "traceback": False,
    }


def test_run_failures_hold_the_failed_attempt():
    src = "@kf.task(retries=1, retry_delay=0)\ndef bad():\n    raise ValueError('boom')\n"
    wf, _ = define("failures", src)
    run = wf.run(raise_on_failure=False)
    failure = run.failures["bad"]
    assert (failure.task_id, failure.attempt, failure.exc_type, failure.message) == ("bad", 2, "ValueError", "boom")
    assert failure.traceback.endswith("ValueError: boom\n")


def test_a_for_each_item_that_times_out_fails_that_item():
    src = "gate = threading.Event()\n@kf.task(timeout=0.05, retries=0)\n@kf.for_each([0, 1], on_failure='continue')\ndef each(item):\n    if item:\n        gate.wait(2)\n    return item\n"
    wf, ns = define("each_to", src)
    run = wf.run()
    ns["gate"].set()
    assert run["each"]["outputs"] == [0, None]
    assert run["each"]["errors"] == [{"index": 1, "exc_type": "TimeoutError", "message": "task 'each' ran longer than its timeout of 50ms"}]
    failed = [p for t, _, p in of_task(run, "each", tracebacks=True) if t == "ForEachItem" and p["status"] == "failed"]
    assert failed == [{"path": [1], "index": 1, "status": "failed", "error": {
        "exc_type": "TimeoutError", "message": "task 'each' ran longer than its timeout of 50ms", "traceback": ""}}]  # fmt: skip


def test_a_timeout_counts_as_a_failure_of_the_circuit():
    src = "gate = threading.Event()\n@kf.task(timeout=0.05, on_timeout='fail', circuit_breaker={'failure_threshold': 1, 'window': '60s', 'break_duration': '60s', 'name': 'slowsvc'})\ndef slow():\n    gate.wait(2)\n"
    wf, ns = define("circuit_to", src)
    run = wf.run(raise_on_failure=False)
    ns["gate"].set()
    assert [t for t, _, _ in of_task(run, "slow")] == ["TaskScheduled", "TaskStarted", "CircuitChanged", "TaskTimedOut"]
    assert of_task(run, "slow")[2][2] == {"circuit": "slowsvc", "transition": "closed->open"}


def test_outputs_that_json_would_change_are_kept_as_artifacts():
    src = "def nested():\n    return [(1, 2)]\ndef intkeys():\n    return {1: 'a'}\n"
    wf, _ = define("roundtrip", src)
    run = wf.run()
    for tid, value in (("nested", [(1, 2)]), ("intkeys", {1: "a"})):
        payload = of_task(run, tid)[-1][2]
        assert payload["output"] is None and payload["output_ref"] is not None, tid
        assert run[tid] == value


SECRET = "s3cr3t-value-xyz"


def test_secrets_are_masked_in_outputs_and_the_exception_a_run_raises_from(monkeypatch):
    monkeypatch.setenv("KF_UNIT_SECRET", SECRET)
    src = (
        "import kernelflow as kf\n"
        "@kf.task(input={'token': '{{secrets.KF_UNIT_SECRET}}'})\n"
        "def echo(token):\n    return {'token': token}\n"
        "@kf.task(input={'token': '{{secrets.KF_UNIT_SECRET}}'})\n"
        "def big(token):\n    return {'t': [token] * 300}\n"
        "@kf.task(input={'token': '{{secrets.KF_UNIT_SECRET}}'})\n"
        "def complain(token):\n    raise ValueError(f'token {token} was refused')\n"
        "def plain():\n    raise KeyError('nothing secret')\n"
    )
    wf = cell("secretive_units", src).with_options(max_parallel=1)  # complain fails before plain
    with pytest.raises(kf.RunFailedError) as info:
        wf.run()
    run = info.value.run
    assert of_task(run, "echo")[-1][2] == out({"token": "***"}, "dict")
    assert run["big"]["t"][0] == "***"
    cause = info.value.__cause__
    assert type(cause).__name__ == "SecretMaskedError" and str(cause) == "ValueError: token *** was refused"
    assert type(run._exceptions["plain"]) is KeyError  # nothing to hide: the exception itself



class _Interrupting:
    """An executor whose submit raises KeyboardInterrupt: what Ctrl-C does to the driving thread."""

    name = "interrupting"

    def __init__(self, max_parallel):
        pass

    def submit(self, call, report):
        raise KeyboardInterrupt

    def shutdown(self, wait=False):
        pass


def test_an_interrupt_records_an_interrupted_failed_run_and_propagates():
    from kernelflow import plugin_host
    from kernelflow.executor_api import ExecutorSpec

    class Plugin:
        @kf.hookimpl
        def kernelflow_register_executors(self):
            return [ExecutorSpec("interrupting", _Interrupting, "raises KeyboardInterrupt")]

    plugin = Plugin()
    plugin_host.register(plugin, name="interrupting-executor")
    try:
        wf, _ = define("interrupted", "def a():\n    return 1\n@kf.task(executor='interrupting')\ndef b(a):\n    return 1\n")
        with pytest.raises(KeyboardInterrupt):
            wf.run()
    finally:
        plugin_host.unregister(plugin)
    (run_id,) = kf.sql("SELECT run_id FROM runs WHERE workflow = 'interrupted'")["run_id"].to_list()
    last = kf.open_store().read_run(run_id)[-1]
    assert (last.type, last.payload) == ("RunFailed", {"failed_tasks": [], "error": "interrupted: KeyboardInterrupt: ", "interrupted": True})


# --- where an attempt runs -------------------------------------------------------------------

ON_MAIN = "threading.current_thread() is threading.main_thread()"


def test_an_attempt_with_nothing_beside_it_runs_on_the_driving_thread_and_others_on_workers():
    # Inline is only for an attempt that is alone: nothing running, ready, waiting to retry,
    # sleeping, at a gate or left in a loop; anything else must keep the driving thread free.
    src = (
        f"def first():\n    return {ON_MAIN}\n"
        f"def second(first):\n    return {ON_MAIN}\n"
        f"def a(second):\n    return {ON_MAIN}\n"
        f"def b(second):\n    return {ON_MAIN}\n"
    )
    wf, _ = define("where", src, max_parallel=1)
    run = wf.run()
    # a is started while b is ready (max_parallel=1): not alone; b is then alone
    assert (run["first"], run["second"], run["a"], run["b"]) == (True, True, False, True)


def test_an_attempt_beside_a_pending_retry_runs_on_a_worker():
    src = (
        "@kf.task(retries=1, retry_delay=0.3, jitter=0)\n"
        f"def flaky():\n    if kf.context().attempt == 1:\n        raise ValueError('once')\n    return {ON_MAIN}\n"
        "def quick():\n    time.sleep(0.05)\n    return 1\n"
        f"def after(quick):\n    return {ON_MAIN}\n"
    )
    wf, _ = define("where_retry", src)
    run = wf.run()
    assert run["after"] is False  # flaky waits to be retried meanwhile
    assert run["flaky"] is True  # its retry is alone again


def test_an_attempt_beside_a_waiting_gate_or_a_sleep_runs_on_a_worker(tmp_path):
    src = (
        "import kernelflow as kf, threading\n"
        "def rows():\n    return [1]\n"
        "@kf.approval('ok?')\ndef gate(rows):\n    return 1\n"
        f"def other(rows):\n    return {ON_MAIN}\n"
    )
    run = cell("where_gate", src).run()
    assert run.status == "waiting" and run["other"] is False
    path = tmp_path / "nap.yaml"
    path.write_text("name: where_nap\ntasks:\n  - id: nap\n    sleep: 0.2s\n  - id: other\n    run: python:other\n")
    run = kf.load(path, {"other": lambda: threading.current_thread() is threading.main_thread()}).run()
    assert run["other"] is False


def test_for_each_items_run_on_workers_until_the_last_one():
    src = f"@kf.for_each([1, 2, 3], max_parallel=1)\ndef each(item):\n    return {ON_MAIN}\n"
    wf, _ = define("where_each", src)
    assert wf.run()["each"]["outputs"] == [False, False, True]


class _Elsewhere:
    """A 'remote' executor (runs attempts here, inline, but says it is remote)."""

    name = "elsewhere"

    def __init__(self, max_parallel):
        pass

    def submit(self, call, report):
        from kernelflow.plugins.thread_executor import run_attempt

        report(run_attempt(call))
        return self

    def cancel(self):
        return False

    def shutdown(self, wait=False):
        pass


def test_steps_that_are_not_python_run_on_threads_when_the_executor_is_remote(http_server):
    from kernelflow import plugin_host
    from kernelflow.executor_api import ExecutorSpec

    class Plugin:
        @kf.hookimpl
        def kernelflow_register_executors(self):
            return [ExecutorSpec("elsewhere", _Elsewhere, "remote", remote=True)]

    http_server.route("GET", "/v", json={"v": 2})
    src = "import kernelflow as kf\ndef a():\n    return 1\nget = kf.http('GET', URL + '/v')\n"
    plugin = Plugin()
    plugin_host.register(plugin, name="elsewhere-executor")
    try:
        wf = cell("remote_mix", src, {"URL": http_server.url}).with_options(executor="elsewhere")
        run = wf.run()
    finally:
        plugin_host.unregister(plugin)
    assert of_task(run, "a")[1] == ("TaskStarted", 1, {"executor": "elsewhere"})
    assert of_task(run, "get")[1] == ("TaskStarted", 1, {"executor": "threads"})
    assert run["a"] == 1


def test_a_rejection_names_the_user_when_no_name_is_given():
    run = cell("gated_user", GATED).run()
    kf.reject(run.run_id, "publish", resume=False)
    answer = run.store.read_run(run.run_id)[-1]
    with pytest.raises(kf.RunFailedError):
        run.resume()
    assert of_task(run, "publish")[-1][2]["error"]["message"] == f"rejected by {answer.payload['by']['user']}"


def test_an_approval_message_that_cannot_render_fails_the_task_at_the_gate():
    src = "import kernelflow as kf\ndef rows():\n    return {'a': 1}\n@kf.approval('Ship {{tasks.rows.output.missing}}?')\ndef ship(rows):\n    return 1\n"
    run = cell("bad_message", src).run(raise_on_failure=False)
    rec = of_task(run, "ship")
    assert [t for t, _, _ in rec] == ["TaskScheduled", "TaskStarted", "TaskFailed"]
    assert rec[1][1:] == (1, {"executor": "gate"})
    assert rec[2][2]["error"]["message"].startswith("approval message: ")


def test_a_pure_gate_that_expires_approved_takes_the_declared_defaults(tmp_path):
    path = tmp_path / "pure_exp.yaml"
    path.write_text(
        "name: pure_exp\ntasks:\n"
        "  - id: review\n    approval:\n      message: 'Ship?'\n      timeout: 0.1s\n      on_timeout: approve\n"
        "      input: {note: {type: str, default: n/a}, count: {type: int, default: 3}, free: str}\n"
    )
    run = kf.load(path, {}).run()
    time.sleep(0.15)
    run.resume()
    output = run["review"]
    assert {k: v for k, v in output.items() if k != "by"} == {"approved": True, "input": {"note": "n/a", "count": 3}, "comment": None, "expired": True}


def test_a_gate_with_a_pydantic_model_gives_the_task_a_model_instance():
    from pydantic import BaseModel

    class Ship(BaseModel):
        table: str
        limit: int = 5

    src = "import kernelflow as kf\n@kf.approval('Ship?', input=Ship)\ndef ship(approval):\n    return [type(approval.input).__name__, approval.input.limit]\n"
    run = cell("typed_gate", src, {"Ship": Ship}).run()
    kf.approve(run.run_id, "ship", table="t", resume=False)
    run.resume()
    assert run["ship"] == ["Ship", 5]


def test_a_failed_for_each_uses_its_fallback_without_retrying_the_loop():
    src = (
        "def _whole():\n    return 'fallback'\n"
        "@kf.task(fallback=_whole, retries=2, retry_delay=0)\n@kf.for_each([1, 0])\ndef inv(item):\n    return 1 // item\n"
    )
    wf, _ = define("each_fb", src)
    run = wf.run()
    rec = of_task(run, "inv")
    assert [t for t, _, _ in rec].count("TaskRetrying") == 0
    used = [p for t, _, p in rec if t == "FallbackUsed"]
    assert used == [{"reason": "forEach of task 'inv': 1 of 2 items failed; first: item 1: ZeroDivisionError: integer division or modulo by zero",
                     "fallback": "python:_whole"}]  # fmt: skip
    assert run["inv"] == "fallback"
