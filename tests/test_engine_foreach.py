"""forEach loops in kernelflow/engine.py, to the exact record: what tests/test_engine_units.py and
tests/test_control_flow.py leave open.

Covers per-item retries (the delay of each backoff, jitter, retry_on, the slot a waiting retry
holds, retries that fall due at the same reading of a coarse clock), max_parallel with more items
than slots, items given as a tuple, items whose arguments cannot be computed, inner loops whose
items cannot be computed, fail, or are templates of the outer item, forEach.$root three levels
down, and the loop's own outcome (its attempt, the error a failed loop raises, a fallback that is
not loaded). Fast, in-process, thread executor; the coarse clock stands in only for the engine's
time.monotonic.
"""

from __future__ import annotations

import importlib
import math
import random
import time

import pytest
from test_engine_units import _bare, define, of_task

import kernelflow as kf


def items_of(run, tid):
    return [p for t, _, p in of_task(run, tid, tracebacks=True) if t == "ForEachItem"]


# --- per-item retries ------------------------------------------------------------------------


def test_an_items_second_retry_waits_the_exponential_delay_of_attempt_three():
    src = (
        "SEEN = []\n"
        "@kf.task(retries=2, retry_delay=0.004, backoff='exponential', jitter=0)\n@kf.for_each(['x'])\ndef it(item):\n"
        "    SEEN.append(item)\n    if len(SEEN) < 3:\n        raise ValueError('again')\n    return len(SEEN)\n"
    )
    wf, _ = define("each_backoff", src)
    run = wf.run()
    # retry_delay * 2 ** (attempt - 2): 0.004 before attempt 2, 0.008 before attempt 3
    assert [p["delay_s"] for p in items_of(run, "it") if p["status"] == "retrying"] == [0.004, 0.008]
    assert run["it"]["outputs"] == [3]


def test_an_items_retry_delay_is_jittered_by_the_runs_seeded_random_numbers():
    src = (
        "SEEN = []\n"
        "@kf.task(retries=1, retry_delay=0.01, backoff='exponential', jitter=0.5)\n@kf.for_each(['x'])\ndef it(item):\n"
        "    SEEN.append(item)\n    if len(SEEN) == 1:\n        raise ValueError('again')\n    return item\n"
    )
    wf, _ = define("each_jitter", src)
    run = wf.run(deterministic=True)
    [delay] = [p["delay_s"] for p in items_of(run, "it") if p["status"] == "retrying"]
    # the item's retry is the run's first draw from its generator (seeded with the run id)
    expected = 0.01 * (1 + 0.5 * (2 * random.Random(run.run_id).random() - 1))
    assert delay == pytest.approx(expected) and delay != 0.01


def test_an_item_failing_with_an_error_in_retry_on_is_retried_and_one_outside_it_is_not():
    src = (
        "SEEN = []\n"
        "@kf.task(retries=1, retry_delay=0, retry_on=[KeyError])\n@kf.for_each(['key', 'value'], on_failure='continue', max_parallel=1)\n"
        "def it(item):\n    SEEN.append(item)\n    if SEEN.count(item) == 1:\n"
        "        raise KeyError(item) if item == 'key' else ValueError(item)\n    return item\n"
    )
    wf, ns = define("each_retry_on", src)
    run = wf.run()
    assert [(p["index"], p["status"]) for p in items_of(run, "it")] == [(0, "retrying"), (0, "succeeded"), (1, "failed")]
    assert ns["SEEN"] == ["key", "key", "value"]


def test_a_failed_first_item_of_two_is_retried_before_the_second_starts():
    # max_parallel=1: the waiting retry keeps the only slot; the attempt counted is the failed item's own
    src = (
        "SEEN = []\n"
        "@kf.task(retries=1, retry_delay=0.05, jitter=0)\n@kf.for_each([0, 1], max_parallel=1)\ndef it(item):\n"
        "    SEEN.append(item)\n    if SEEN == [0]:\n        raise ValueError('again')\n    return item\n"
    )
    wf, ns = define("each_first_retry", src)
    run = wf.run()
    assert ns["SEEN"] == [0, 0, 1]
    assert [(p["index"], p["status"]) for p in items_of(run, "it")] == [(0, "retrying"), (0, "succeeded"), (1, "succeeded")]


# --- max_parallel ----------------------------------------------------------------------------


def test_a_loop_with_two_slots_does_not_start_a_third_item_while_the_first_two_run():
    # the first two wait a little for a third to start (only an over-full loop would start one),
    # and neither ends before both have stopped looking
    src = (
        "third = threading.Event()\nboth = threading.Barrier(2, timeout=5)\nSAW = {}\n"
        "@kf.for_each([0, 1, 2, 3], max_parallel=2)\ndef it(item):\n"
        "    if item < 2:\n        SAW[item] = third.wait(0.15)\n        both.wait()\n    else:\n        third.set()\n    return item\n"
    )
    wf, ns = define("each_two_slots", src, max_parallel=8)
    run = wf.run()
    assert run["it"]["outputs"] == [0, 1, 2, 3]
    assert ns["SAW"] == {0: False, 1: False}


# --- retries that fall due at the same tick of a coarse clock --------------------------------


class _CoarseClock:
    """A monotonic clock that ticks every 100 ms, as Windows' did before Python 3.13."""

    @staticmethod
    def monotonic():
        return math.floor(time.monotonic() / 0.1) * 0.1


def test_retries_of_items_of_two_loops_due_at_the_same_tick_both_run(monkeypatch):
    # the two inner loops' items fail together: their retries fall due at the same reading of a
    # coarse clock, and the heap must order them without comparing the loops
    monkeypatch.setattr(importlib.import_module("kernelflow.engine"), "time", _CoarseClock)
    src = (
        "meet = threading.Barrier(2, timeout=5)\nSEEN = []\n"
        "@kf.task(retries=1, retry_delay=0.1, jitter=0)\n@kf.for_each([[0], [1]])\n@kf.for_each('{{forEach.item}}', as_='x')\n"
        "def it(item, x):\n    SEEN.append(x)\n    if SEEN.count(x) == 1:\n        meet.wait()\n        raise ValueError(x)\n    return x\n"
    )
    wf, ns = define("each_tied_retries", src)
    run = wf.run()
    assert [o["outputs"] for o in run["it"]["outputs"]] == [[0], [1]]
    assert sorted(ns["SEEN"]) == [0, 0, 1, 1]


def test_outer_items_whose_retries_fall_due_at_the_same_tick_are_retried_in_the_order_they_failed(monkeypatch):
    # One slot: the outer items fail one after the other (0, then 1) within a tick of the coarse
    # clock; each retry opens a new inner loop, and the inner loops run in the order the retries
    # were taken from the heap. Only the outer items' StepFailed is retried, not the inner ValueError.
    monkeypatch.setattr(importlib.import_module("kernelflow.engine"), "time", _CoarseClock)
    src = (
        "SEEN = []\n"
        "@kf.task(retries=1, retry_delay=0.1, jitter=0, retry_on=['StepFailed'])\n@kf.for_each([[0], [1]])\n"
        "@kf.for_each('{{forEach.item}}', as_='x')\ndef it(item, x):\n"
        "    SEEN.append(x)\n    if SEEN.count(x) == 1:\n        raise ValueError(x)\n    return x\n"
    )
    wf, ns = define("each_tied_outer", src, max_parallel=1)
    run = wf.run()
    assert ns["SEEN"] == [0, 1, 0, 1]
    assert [(p["path"], p["status"]) for p in items_of(run, "it") if len(p["path"]) == 1] == [
        ([0], "retrying"), ([1], "retrying"), ([0], "succeeded"), ([1], "succeeded"),
    ]  # fmt: skip


# --- items that are not what a loop needs -----------------------------------------------------


def test_items_given_as_a_tuple_by_an_upstream_task_are_looped_over_as_a_list():
    wf, _ = define("each_tuple", "def n():\n    return (1, 2)\n@kf.for_each('{{tasks.n.output}}')\ndef each(item, n):\n    return item * 10\n")
    run = wf.run()
    assert run["each"]["outputs"] == [10, 20]
    assert [p for t, _, p in of_task(run, "each") if t == "ForEachStarted"] == [{"path": [], "count": 2}]


def test_an_item_whose_arguments_cannot_be_computed_fails_that_item_only():
    src = (
        "@kf.for_each([{'n': 1}, {}], on_failure='continue')\n@kf.task(input={'n': '{{forEach.item.n}}'})\n"
        "def it(item, n):\n    return n\n"
    )
    wf, _ = define("each_bad_input", src)
    run = wf.run()
    failed = [p for p in items_of(run, "it") if p["status"] == "failed"]
    assert failed == [{"path": [1], "index": 1, "status": "failed", "error": {
        "exc_type": "EvaluationError", "message": "{{forEach.item.n}}: forEach.item has no field 'n' (it is empty)", "traceback": ""}}]  # fmt: skip
    assert run["it"]["succeeded"] == 1 and run["it"]["failed"] == 1
    assert run["it"]["outputs"] == [1, None]


# --- nested loops ----------------------------------------------------------------------------


def test_an_inner_loop_whose_items_are_not_a_list_fails_its_outer_item_with_an_empty_traceback():
    src = (
        "@kf.for_each([[1], 5], on_failure='continue')\n@kf.for_each('{{forEach.item}}', as_='x')\n"
        "def it(item, x):\n    return x\n"
    )
    wf, _ = define("each_inner_bad", src)
    run = wf.run()
    message = "forEach of task 'it': items must be a list, but '{{forEach.item}}' gave int 5"
    assert [p for p in items_of(run, "it") if p["status"] == "failed"] == [
        {"path": [1], "index": 1, "status": "failed", "error": {"exc_type": "StepFailed", "message": message, "traceback": ""}}
    ]
    assert run["it"]["errors"] == [{"index": 1, "exc_type": "StepFailed", "message": message}]


def test_a_failed_inner_loop_fails_its_outer_item_with_an_empty_traceback():
    src = "@kf.for_each([[1, 0]], on_failure='continue')\n@kf.for_each('{{forEach.item}}', as_='x')\ndef it(item, x):\n    return 1 // x\n"
    wf, _ = define("each_inner_failed", src)
    run = wf.run()
    message = "1 of 2 inner items failed; first: item 1: ZeroDivisionError: integer division or modulo by zero"
    assert [p for p in items_of(run, "it") if p["path"] == [0]] == [
        {"path": [0], "index": 0, "status": "failed", "error": {"exc_type": "StepFailed", "message": message, "traceback": ""}}
    ]


def test_inner_items_given_as_a_list_of_templates_are_rendered_with_the_outer_item():
    src = (
        "@kf.for_each(['a', 'b'])\n@kf.for_each(['{{forEach.item}}1', '{{forEach.item}}2'], as_='x')\n"
        "def it(item, x):\n    return x\n"
    )
    wf, _ = define("each_inner_list", src)
    run = wf.run()
    assert [o["outputs"] for o in run["it"]["outputs"]] == [["a1", "a2"], ["b1", "b2"]]


def test_root_three_levels_down_is_the_outermost_loops_item():
    src = (
        "@kf.for_each(['r'], as_='a')\n@kf.for_each(['m'], as_='b')\n@kf.for_each(['i'], as_='c')\n"
        "@kf.task(input={'root': '{{forEach.$root.item}}', 'parent': '{{forEach.$parent.item}}'})\n"
        "def it(a, b, c, root, parent):\n    return [root, parent, c]\n"
    )
    wf, _ = define("each_root", src)
    run = wf.run()
    assert run["it"]["outputs"][0]["outputs"][0]["outputs"] == [["r", "m", "i"]]


# --- the loop's own outcome ------------------------------------------------------------------


def test_a_loops_success_is_recorded_under_the_tasks_attempt():
    wf, _ = define("each_ok", "@kf.for_each([1])\ndef it(item):\n    return item\n")
    run = wf.run()
    assert [(t, a) for t, a, _ in of_task(run, "it")][-1] == ("TaskSucceeded", 1)


def test_a_failed_loop_whose_fallback_is_not_loaded_fails_with_the_loops_own_error():
    src = (
        "READY = []\ndef _whole():\n    return 'fallback'\ndef first():\n    if not READY:\n        raise OSError('not yet')\n"
        "@kf.task(fallback=_whole)\n@kf.for_each([1, 0])\ndef inv(item, first):\n    return 1 // item\n"
    )
    wf, ns = define("each_bare_fb", src)
    run = wf.run(raise_on_failure=False)
    ns["READY"].append(True)
    with pytest.raises(kf.RunFailedError):
        kf.resume(run.run_id, workflow=_bare(wf, first=ns["first"], inv=ns["inv"]))
    message = "forEach of task 'inv': 1 of 2 items failed; first: item 1: ZeroDivisionError: integer division or modulo by zero"
    assert of_task(run, "inv")[-1] == ("TaskFailed", 1, {"error": {"exc_type": "StepFailed", "message": message, "traceback": False}})


def test_a_failed_loop_raises_its_own_error_as_the_cause_of_the_run_failure():
    wf, _ = define("each_raises", "@kf.for_each([0])\ndef inv(item):\n    return 1 // item\n")
    with pytest.raises(kf.RunFailedError) as info:
        wf.run()
    assert str(info.value.__cause__) == (
        "forEach of task 'inv': 1 of 1 items failed; first: item 0: ZeroDivisionError: integer division or modulo by zero"
    )


# --- an item's abandoned try never stands in for its retry -------------------------------------


def test_a_timed_out_try_that_reports_late_is_not_taken_for_its_retrys_result():
    # The first try outlives its timeout and returns while the retry still runs: its
    # late result belongs to an abandoned try, the item's output is the retry's.
    src = (
        "retry_started = threading.Event()\nfirst_returned = threading.Event()\nTRIES = []\n"
        "@kf.task(timeout=1, retries=1, retry_delay=0, jitter=0)\n@kf.for_each(['x'])\ndef it(item):\n"
        "    TRIES.append(item)\n"
        "    if len(TRIES) == 1:\n        retry_started.wait(5)\n        first_returned.set()\n        return 'abandoned first try'\n"
        "    retry_started.set()\n    first_returned.wait(5)\n    return 'retry'\n"
    )
    wf, ns = define("each_late", src)
    run = wf.run()
    assert ns["first_returned"].is_set() and len(ns["TRIES"]) == 2
    assert run["it"]["outputs"] == ["retry"]


def test_the_deadline_of_a_try_that_failed_at_once_does_not_cut_its_retry_short():
    # Try 1 fails at once (its 1 s deadline stays behind), the retry starts 0.6 s later and
    # runs 0.5 s: well within its own 1 s, though past the first try's deadline.
    src = (
        "@kf.task(timeout=1, retries=1, retry_delay=0.6, jitter=0)\n@kf.for_each(['x'])\ndef it(item):\n"
        "    if kf.context().attempt == 1 and not TRIED:\n        TRIED.append(1)\n        raise ValueError('once')\n"
        "    time.sleep(0.5)\n    return 'done'\n"
    )
    wf, _ = define("each_deadline", "import time\nTRIED = []\n" + src)
    run = wf.run()
    assert run["it"]["outputs"] == ["done"]
    assert [p["status"] for p in items_of(run, "it")][-1] == "succeeded"


def test_going_back_over_a_loop_whose_item_waits_for_a_retry_drops_that_retry():
    # check jumps back while each's item waits 0.3 s for its retry: the new pass runs the
    # item once (still running when the dropped retry would be due), and the old frame's
    # retry never starts.
    src = (
        "import time\nCOUNT = [0]\nCALLS = []\n"
        "def a():\n    COUNT[0] += 1\n    return [COUNT[0]]\n"
        "@kf.task(retries=1, retry_delay=0.3, jitter=0)\n@kf.for_each('{{tasks.a.output}}')\ndef each(item, a):\n"
        "    CALLS.append(item)\n    if item == 1:\n        raise ValueError('first pass')\n    time.sleep(0.6)\n    return item\n"
        "def check(a):\n    return kf.back_to('a', output=a) if a[0] < 2 else a\n"
    )
    wf, ns = define("each_back", src)
    run = wf.run()
    assert run["each"]["outputs"] == [2] and run["check"] == [2]
    assert ns["CALLS"] == [1, 2]
