"""back_to and skip_to in kernelflow/engine.py, to the exact record: what tests/test_engine_units.py
and tests/test_control_flow.py leave open.

Covers what a back_to jump does to work of its loop body that is still under way: attempts of
tasks and of forEach items that are running (cancelled through the executor's handle, their late
results ignored), a body task that is not reached yet (left pending while the tasks after it are
reset), a forEach loop outside the body (its items go on), a body task that failed in the
iteration (its failure is forgotten and it runs again), outputs of the iteration (gone once
reset), and retries that are due when the jump happens (the ones of the body's items dropped,
the others kept). For skip_to: a task after a skipped one that still waits for another upstream
task is not started early. Fast, in-process; a scripted executor runs each attempt on the
driving thread as it is handed over (or holds it, as if still running), so that what is under
way when a task jumps is fixed, without timing.
"""

from __future__ import annotations

import contextlib

import pytest
from test_engine_units import define, of_task, record

import kernelflow as kf
from kernelflow.executor_api import TaskOutcome


class _Ticket:
    def __init__(self, executor, call):
        self.executor, self.call = executor, call
        self.cancelled = False

    def cancel(self):
        self.cancelled = True
        self.executor.cancelled.append((self.call.task_id, self.call.attempt))
        return True


class _Scripted:
    """Runs each attempt at once on the driving thread, except the first call of each task in
    ``hold``: that one is held (running, as far as the engine knows). Held calls that were not
    cancelled are run and reported once a call of ``release`` (task, attempt) is handed over."""

    name = "scripted"

    def __init__(self, hold=(), release=None):
        self.hold, self.release = set(hold), release
        self.held: list = []
        self.cancelled: list = []
        self.seen: set = set()

    def submit(self, call, report):
        ticket = _Ticket(self, call)
        if call.task_id in self.hold and call.task_id not in self.seen:
            self.seen.add(call.task_id)
            self.held.append((ticket, report))
            return ticket
        report(self.outcome(call))
        if (call.task_id, call.attempt) == self.release:
            for held, held_report in self.held:
                if not held.cancelled:
                    held_report(self.outcome(held.call))
            self.held = []
        return ticket

    @staticmethod
    def outcome(call):
        try:
            return TaskOutcome(call, value=call.fn(**call.kwargs))
        except Exception as exc:  # noqa: BLE001 - the task's failure is data for the engine
            return TaskOutcome(call, error=exc, traceback="")

    def shutdown(self, wait=False):
        pass


@contextlib.contextmanager
def scripted(**script):
    from kernelflow import plugin_host
    from kernelflow.executor_api import ExecutorSpec

    executor = _Scripted(**script)

    class Plugin:
        @kf.hookimpl
        def kernelflow_register_executors(self):
            return [ExecutorSpec("scripted", lambda max_parallel: executor, "runs attempts as the test says")]

    plugin = Plugin()
    plugin_host.register(plugin, name="scripted-executor")
    try:
        yield executor
    finally:
        plugin_host.unregister(plugin)


def flow(run, *tids):
    return [(t, task, a) for t, task, a, _ in record(run) if task in tids]


# --- back_to: work of the body that is under way -------------------------------------------------

UNDER_WAY = """
CALLS = []
def fetch():
    CALLS.append('fetch')
    return CALLS.count('fetch')
@kf.task(back_to={'step': 'fetch', 'when': '{{output}} < 2'})
def check(fetch):
    return fetch
def side(fetch):
    CALLS.append('side')
    return 'side'
def late(side):
    return side
@kf.for_each([1, 2], max_parallel=1)
def each(fetch, item):
    CALLS.append(('each', item))
    return item
@kf.for_each([1, 2], max_parallel=1)
def other(item):
    CALLS.append(('other', item))
    return item
"""


def test_a_jump_back_cancels_the_bodys_running_attempts_and_items_and_leaves_other_loops_going():
    # When check jumps: side and each's first item are running (held), late waits for side,
    # other (outside the body) has an item running and one left to start.
    with scripted(hold=["side", "each", "other"], release=("check", 2)) as executor:
        wf, ns = define("under_way", UNDER_WAY, executor="scripted")
        run = wf.run()
    assert run.status == "succeeded"
    assert executor.cancelled == [("side", 1), ("each", 1)]
    # the cancelled attempts never ran; other's held item ran once released, then its second
    assert ns["CALLS"] == ["fetch", "fetch", ("other", 1), "side", ("each", 1), ("other", 2), ("each", 2)]
    jump = [p for t, task, _, p in record(run) if t == "LoopJumped"]
    assert jump == [{"kind": "back_to", "to": "fetch", "iteration": 1, "reset": ["fetch", "check", "side", "late", "each"]}]
    # late was not reached: nothing to reset; the tasks after it in the body are reset all the same
    resets = [(task, a, p) for t, task, a, p in record(run) if t == "TaskReset"]
    assert resets == [
        ("fetch", 1, {"iteration": 1, "loop_from": "check"}),
        ("check", 1, {"iteration": 1, "loop_from": "check"}),
        ("side", 1, {"iteration": 1, "loop_from": "check"}),
        ("each", 1, {"iteration": 1, "loop_from": "check"}),
    ]
    assert [(t, a) for t, a, _ in of_task(run, "side")] == [
        ("TaskScheduled", 1), ("TaskStarted", 1), ("TaskReset", 1),
        ("TaskScheduled", 2), ("TaskStarted", 2), ("TaskSucceeded", 2),
    ]  # fmt: skip
    assert [(t, a) for t, a, _ in of_task(run, "late")] == [("TaskScheduled", 1), ("TaskStarted", 1), ("TaskSucceeded", 1)]
    assert [p for t, _, p in of_task(run, "each") if t == "ForEachItem"] == [
        {"path": [0], "index": 0, "status": "succeeded"},
        {"path": [1], "index": 1, "status": "succeeded"},
    ]
    assert run["each"]["outputs"] == [1, 2] and run["other"]["outputs"] == [1, 2]
    assert (run["check"], run["late"]) == (2, "side")


def test_a_task_of_the_body_that_failed_runs_again_and_its_failure_is_forgotten():
    # bad fails for good in the first iteration (nothing depends on it), then check jumps back
    src = (
        "CALLS = []\n"
        "def fetch():\n    CALLS.append('fetch')\n    return CALLS.count('fetch')\n"
        "def bad(fetch):\n    if fetch == 1:\n        raise ValueError('first pass')\n    return fetch\n"
        "@kf.task(back_to={'step': 'fetch', 'when': '{{output}} < 2'})\ndef check(fetch):\n    return fetch\n"
    )
    with scripted():
        wf, _ = define("failed_in_body", src, executor="scripted")
        run = wf.run()
    assert run.status == "succeeded"
    assert run.failures == {}
    assert [(t, a) for t, a, _ in of_task(run, "bad")] == [
        ("TaskScheduled", 1), ("TaskStarted", 1), ("TaskFailed", 1), ("TaskReset", 1),
        ("TaskScheduled", 2), ("TaskStarted", 2), ("TaskSucceeded", 2),
    ]  # fmt: skip
    assert run["bad"] == 2


def test_the_output_of_a_reset_task_is_gone_when_the_next_iteration_does_not_reach_it():
    src = (
        "CALLS = []\n"
        "def fetch():\n    CALLS.append('fetch')\n    if len(CALLS) == 2:\n        raise ValueError('second pass')\n    return 1\n"
        "@kf.task(back_to={'step': 'fetch', 'when': '{{output}} < 2'})\ndef check(fetch):\n    return fetch\n"
    )
    with scripted():
        wf, _ = define("gone", src, executor="scripted")
        run = wf.run(raise_on_failure=False)
    assert run.status == "failed"
    assert of_task(run, "check")[-1] == ("TaskSkipped", None, {"reason": "upstream task 'fetch' failed", "upstream": "fetch"})
    with pytest.raises(kf.KernelflowError, match=r"task 'check' of run \S+ has no output \(status skipped: upstream task 'fetch' failed\)"):
        run["check"]


# --- back_to: retries that are due ------------------------------------------------------------

DUE = """
CALLS = []
def fetch():
    CALLS.append('fetch')
    return CALLS.count('fetch')
def pre():
    return 0
@kf.task(back_to={'step': 'fetch', 'when': '{{output}} < 2'})
def check(fetch):
    return fetch
@kf.task(retries=1, retry_delay=0, jitter=0)
def flaky(pre):
    CALLS.append('flaky')
    if CALLS.count('flaky') == 1:
        raise ValueError('once')
    return 'flaky'
@kf.task(retries=1, retry_delay=0, jitter=0)
@kf.for_each(['a'])
def inside(fetch, item):
    CALLS.append(('inside', item))
    if CALLS.count(('inside', item)) == 1:
        raise ValueError('once')
    return item
@kf.task(retries=1, retry_delay=0, jitter=0)
@kf.for_each(['b'])
def outside(pre, item):
    CALLS.append(('outside', item))
    if CALLS.count(('outside', item)) == 1:
        raise ValueError('once')
    return item
"""


def test_a_jump_back_drops_the_retries_of_the_bodys_items_and_keeps_the_others():
    # check's first result is reported after the first tries of flaky and of both loops' items
    # failed: their retries are due when it jumps.
    with scripted(hold=["check"], release=("outside", 1)):
        wf, ns = define("due", DUE, executor="scripted")
        run = wf.run()
    assert run.status == "succeeded"
    flaky = [(t, a) for t, a, _ in of_task(run, "flaky")]
    assert flaky == [("TaskScheduled", 1), ("TaskStarted", 1), ("TaskRetrying", 1), ("TaskScheduled", 2), ("TaskStarted", 2), ("TaskSucceeded", 2)]
    # inside's item is tried once per iteration: the retry due in the first was dropped with the loop
    assert [(p["index"], p["status"]) for t, _, p in of_task(run, "inside") if t == "ForEachItem"] == [(0, "retrying"), (0, "succeeded")]
    assert [(p["index"], p["status"]) for t, _, p in of_task(run, "outside") if t == "ForEachItem"] == [(0, "retrying"), (0, "succeeded")]
    assert ns["CALLS"].count(("inside", "a")) == 2 and ns["CALLS"].count(("outside", "b")) == 2
    assert (run["inside"]["outputs"], run["outside"]["outputs"], run["flaky"]) == (["a"], ["b"], "flaky")


RETRIED_IN_BODY = (
    "CALLS = []\n"
    "def fetch():\n    CALLS.append('fetch')\n    return CALLS.count('fetch')\n"
    "@kf.task(back_to={'step': 'fetch', 'when': '{{output}} < 2'})\ndef check(fetch):\n    return fetch\n"
    "@kf.task(retries=3, retry_delay=0.2, jitter=0)\n"
    "def side(fetch):\n    CALLS.append('side')\n    if CALLS.count('side') < 3:\n        raise ValueError('no')\n    return 1\n"
)


def test_a_retry_due_to_a_task_of_the_body_is_dropped_so_its_next_pass_retries_on_its_own_delay():
    # side's first try fails (retry due in 0.2 s) before check jumps back over it; in the next
    # pass it fails again: the retry that follows is the new one, at the next attempt
    with scripted(hold=["check"], release=("side", 1)):
        wf, _ = define("retried_in_body", RETRIED_IN_BODY, executor="scripted")
        run = wf.run()
    assert run.status == "succeeded"
    assert [(t, a) for t, a, _ in of_task(run, "side")] == [
        ("TaskScheduled", 1), ("TaskStarted", 1), ("TaskRetrying", 1), ("TaskReset", 1),
        ("TaskScheduled", 2), ("TaskStarted", 2), ("TaskRetrying", 2), ("TaskScheduled", 3), ("TaskStarted", 3), ("TaskSucceeded", 3),
    ]  # fmt: skip


# --- skip_to ------------------------------------------------------------------------------------


def test_a_task_after_a_skipped_one_waits_for_its_other_upstream_task():
    # d follows b (skipped by a's jump) and s, whose result comes after the jump
    src = (
        "def a():\n    return kf.skip_to('c')\n"
        "def s():\n    return 's'\n"
        "def b(a):\n    return 'b'\n"
        "def c(b):\n    return 'c'\n"
        "def d(b, s):\n    return [b, s]\n"
    )
    with scripted():
        wf, _ = define("skip_wait", src, executor="scripted")
        run = wf.run()
    assert [(t, task) for t, task, _, _ in record(run)][5:] == [
        ("TaskSucceeded", "a"), ("LoopJumped", "a"), ("TaskSkipped", "b"), ("TaskScheduled", "c"),
        ("TaskSucceeded", "s"), ("TaskScheduled", "d"),
        ("TaskStarted", "c"), ("TaskStarted", "d"), ("TaskSucceeded", "c"), ("TaskSucceeded", "d"),
        ("RunSucceeded", None),
    ]  # fmt: skip
    assert run["d"] == [None, "s"]
