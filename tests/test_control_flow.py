"""The engine's behaviour for each step construct, through real runs of Python cells.

Workflows are compiled from cell bodies with ``compile_cell`` (as ``%%workflow``
does) and run against the per-test store from conftest.py. Assertions are on
statuses, outputs, reasons and the recorded events, never on durations.
"""

from __future__ import annotations

import json
import pickle
import textwrap
import time
import traceback
from collections import namedtuple
from pathlib import Path

import pytest
from http_server import http_server_fixture  # noqa: F401 - the `http_server` fixture

import kernelflow as kf
from kernelflow.cell_compiler import compile_cell
from kernelflow.store_access import close_stores

SECRET = "s3cr3t-value-123"
Point = namedtuple("Point", "x y")


# --- helpers -----------------------------------------------------------------------------


def cell(name: str, body: str, ns: dict | None = None, **options):
    """Compile a ``%%workflow name`` cell body; returns (workflow, namespace)."""
    ns = {} if ns is None else ns
    return compile_cell(name, textwrap.dedent(body), ns, **options), ns


def flow(run, *types: str) -> list[tuple[str, str | None]]:
    """(type, task_id) of the run's events, optionally only of these types."""
    ev = run.events
    return [(t, tid) for t, tid in zip(ev["type"], ev["task_id"]) if not types or t in types]


def payloads(run, type_: str, task: str | None = None) -> list[dict]:
    ev = run.events
    return [
        json.loads(p)
        for t, tid, p in zip(ev["type"], ev["task_id"], ev["payload"])
        if t == type_ and (task is None or tid == task)
    ]


def statuses(run) -> dict[str, str]:
    return {tid: t.status for tid, t in run.state.tasks.items()}


# --- when ---------------------------------------------------------------------------------

OPERATOR_CASES = [
    ("{{inputs.n}} == 3", 3, True),
    ("{{inputs.n}} == 3", 4, False),
    ("{{inputs.n}} != 3", 4, True),
    ("{{inputs.n}} != 3", 3, False),
    ("{{inputs.n}} < 3", 2, True),
    ("{{inputs.n}} < 3", 3, False),
    ("{{inputs.n}} <= 3", 3, True),
    ("{{inputs.n}} <= 3", 4, False),
    ("{{inputs.n}} > 3", 4, True),
    ("{{inputs.n}} > 3", 3, False),
    ("{{inputs.n}} >= 3", 3, True),
    ("{{inputs.n}} >= 3", 2, False),
    ("{{inputs.n}} > 1 && {{inputs.n}} < 5", 3, True),
    ("{{inputs.n}} > 1 && {{inputs.n}} < 5", 5, False),
    ("{{inputs.n}} < 1 || {{inputs.n}} > 5", 6, True),
    ("{{inputs.n}} < 1 || {{inputs.n}} > 5", 3, False),
    ("!({{inputs.n}} == 3)", 4, True),
    ("!({{inputs.n}} == 3)", 3, False),
    ("{{inputs.n}} == 'three' || ({{inputs.n}} >= 10 && !({{inputs.n}} == 11))", 10, True),
    ("{{inputs.n}} == 'three' || ({{inputs.n}} >= 10 && !({{inputs.n}} == 11))", 11, False),
]


@pytest.mark.parametrize(("condition", "n", "expected"), OPERATOR_CASES)
def test_when_operators_decide_whether_the_task_runs(condition, n, expected):
    wf, _ = cell(
        "gate",
        """
        import kernelflow as kf

        @kf.task(when=COND)
        def gated():
            return "ran"
        """,
        {"COND": condition},
    )
    run = wf.run(n=n)
    assert run.status == "succeeded"
    assert payloads(run, "ConditionEvaluated", "gated") == [{"when": condition, "result": expected}]
    task = run.state.tasks["gated"]
    if expected:
        assert task.status == "succeeded" and run["gated"] == "ran"
    else:
        assert task.status == "skipped"
        assert task.reason == f"condition is false: {condition}"
        assert payloads(run, "TaskSkipped", "gated") == [{"reason": f"condition is false: {condition}", "when": condition}]


EXCLUSIVE_CHOICE = """
import kernelflow as kf

def measure(n):
    return {"v": n * 2}

@kf.task(when="{{tasks.measure.output.v}} > 4")
def big(measure):
    return "big"

@kf.task(when="{{tasks.measure.output.v}} <= 4")
def small(measure):
    return "small"

def merge(big, small):
    return [big, small]
"""


def test_exclusive_choice_then_simple_merge_takes_the_true_branch():
    wf, _ = cell("choice", EXCLUSIVE_CHOICE)
    run = wf.run(n=3)
    assert statuses(run) == {"measure": "succeeded", "big": "succeeded", "small": "skipped", "merge": "succeeded"}
    assert run.output == ["big", None]  # rule 3: the skipped branch reads as None
    assert flow(run) == [
        ("RunStarted", None),
        ("TaskScheduled", "measure"), ("TaskStarted", "measure"), ("TaskSucceeded", "measure"),
        ("ConditionEvaluated", "big"), ("TaskScheduled", "big"),
        ("ConditionEvaluated", "small"), ("TaskSkipped", "small"),
        ("TaskStarted", "big"), ("TaskSucceeded", "big"),
        ("TaskScheduled", "merge"), ("TaskStarted", "merge"), ("TaskSucceeded", "merge"),
        ("RunSucceeded", None),
    ]  # fmt: skip
    assert payloads(run, "ConditionEvaluated") == [
        {"when": "{{tasks.measure.output.v}} > 4", "result": True},
        {"when": "{{tasks.measure.output.v}} <= 4", "result": False},
    ]


def test_exclusive_choice_then_simple_merge_takes_the_other_branch():
    wf, _ = cell("choice", EXCLUSIVE_CHOICE)
    run = wf.run(n=1)
    assert statuses(run) == {"measure": "succeeded", "big": "skipped", "small": "succeeded", "merge": "succeeded"}
    assert run.state.tasks["big"].reason == "condition is false: {{tasks.measure.output.v}} > 4"
    assert run.output == [None, "small"]


def test_when_on_an_input_makes_it_a_required_input():
    wf, _ = cell(
        "flagged",
        """
        import kernelflow as kf

        @kf.task(when="{{inputs.enabled}} == true")
        def maybe():
            return 1
        """,
    )
    assert [(i.name, i.required) for i in wf.inputs] == [("enabled", True)]
    assert wf.run(enabled=True).state.tasks["maybe"].status == "succeeded"
    assert wf.run(enabled=False).state.tasks["maybe"].status == "skipped"
    with pytest.raises(kf.InputError, match="needs input 'enabled'"):
        wf.run()


def test_a_missing_input_read_by_a_template_names_the_task_that_reads_it():
    wf, _ = cell(
        "template_input",
        """
        import kernelflow as kf

        @kf.task(when="{{inputs.limit}} > 0")
        def total(limit=10):
            return limit
        """,
    )
    with pytest.raises(kf.InputError) as err:
        wf.run()
    assert "'total'" in str(err.value)


def test_a_missing_input_names_each_task_once():
    wf, _ = cell(
        "template_input_once",
        """
        import kernelflow as kf

        @kf.task(when="{{inputs.limit}} > 0")
        def total(limit=10):
            return limit
        """,
    )
    assert wf.inputs[0].used_by == ("total",)
    with pytest.raises(kf.InputError) as err:
        wf.run()
    assert str(err.value).count("'total'") == 1


def test_rule_1_a_failed_task_skips_everything_downstream():
    wf, _ = cell(
        "rule1",
        """
        import kernelflow as kf

        def ok():
            return 1

        def bad():
            raise ValueError("broken")

        def child(bad):
            return 1

        def grandchild(child):
            return 1

        def mixed(bad, ok):
            return 1

        @kf.task(when="{{inputs.always}} == 1")
        def gated(bad):
            return 1

        def independent(ok):
            return "still runs"
        """,
    )
    run = wf.run(always=1, raise_on_failure=False)
    assert run.status == "failed"
    assert statuses(run) == {
        "ok": "succeeded", "bad": "failed", "child": "skipped", "grandchild": "skipped",
        "mixed": "skipped", "gated": "skipped", "independent": "succeeded",
    }  # fmt: skip
    for tid in ("child", "grandchild", "mixed", "gated"):
        assert run.state.tasks[tid].reason == "upstream task 'bad' failed"
    # A task skipped because of a failure never evaluates its condition.
    assert payloads(run, "ConditionEvaluated") == []
    assert run["independent"] == "still runs"


def test_rule_3_all_upstream_skipped_skips_and_some_skipped_reads_none():
    wf, _ = cell(
        "rule3",
        """
        import kernelflow as kf

        @kf.task(when="{{inputs.go}} == true")
        def maybe():
            return "value"

        def ok():
            return "ok"

        def only_skipped(maybe):
            return "should not run"

        def further(only_skipped):
            return "should not run either"

        def partly(maybe, ok):
            return [maybe, ok]
        """,
    )
    run = wf.run(go=False)
    assert run.status == "succeeded"
    assert statuses(run) == {
        "maybe": "skipped", "ok": "succeeded", "only_skipped": "skipped", "further": "skipped", "partly": "succeeded",
    }  # fmt: skip
    assert run.state.tasks["only_skipped"].reason == "all upstream tasks were skipped"
    assert run.state.tasks["further"].reason == "all upstream tasks were skipped"
    assert payloads(run, "TaskSkipped", "only_skipped") == [
        {"reason": "all upstream tasks were skipped", "upstream": ["maybe"]}
    ]
    assert run["partly"] == [None, "ok"]

    run = wf.run(go=True)
    assert statuses(run) == dict.fromkeys(("maybe", "ok", "only_skipped", "further", "partly"), "succeeded")
    assert run["partly"] == ["value", "ok"]


def test_a_when_reading_a_missing_field_fails_the_task_clearly():
    wf, _ = cell(
        "missing_field",
        """
        import kernelflow as kf

        def measure():
            return {"v": 1}

        @kf.task(when="{{tasks.measure.output.count}} > 0")
        def use(measure):
            return 1

        def after(use):
            return 1
        """,
    )
    run = wf.run(raise_on_failure=False)
    assert run.status == "failed"
    task = run.state.tasks["use"]
    assert task.status == "failed"
    assert task.error["message"] == (
        "condition '{{tasks.measure.output.count}} > 0': {{tasks.measure.output.count}}: "
        "the output of task 'measure' has no field 'count' (fields: v)"
    )
    assert run.state.tasks["after"].status == "skipped"
    with pytest.raises(kf.RunFailedError, match="has no field 'count'"):
        wf.run()


# --- switch ---------------------------------------------------------------------------------

SWITCH = """
import kernelflow as kf

def parse(kind):
    return {"kind": kind, "n": 5}

def handle_a(parse, kind):
    return ["a", parse["n"], kind]

def handle_b(parse):
    return ["b", parse["n"]]

def other(kind):
    return ["other", kind]

route = kf.switch("{{tasks.parse.output.kind}}", cases={"a": handle_a, "b": handle_b}, default=other)
"""


def test_switch_case_functions_are_not_tasks():
    wf, _ = cell("switcher", SWITCH)
    assert wf.task_ids == ("parse", "route")
    assert wf["route"].deps == ("parse",)


@pytest.mark.parametrize(
    ("kind", "case", "target", "output"),
    [
        ("a", "a", "python:handle_a", ["a", 5, "a"]),
        ("b", "b", "python:handle_b", ["b", 5]),
        ("zzz", "default", "python:other", ["other", "zzz"]),
    ],
)
def test_switch_runs_the_matching_case_or_the_default(kind, case, target, output):
    wf, _ = cell("switcher", SWITCH)
    run = wf.run(kind=kind)
    assert run.output == output  # cases get outputs and inputs by parameter name
    assert payloads(run, "SwitchMatched", "route") == [{"value": kind, "case": case, "target": target}]
    assert flow(run)[4:] == [
        ("TaskScheduled", "route"), ("TaskStarted", "route"), ("SwitchMatched", "route"),
        ("TaskSucceeded", "route"), ("RunSucceeded", None),
    ]  # fmt: skip


def test_switch_without_a_match_or_default_fails_listing_the_cases():
    wf, _ = cell(
        "no_default",
        """
        import kernelflow as kf

        def parse(kind):
            return {"kind": kind}

        def handle(parse):
            return 1

        route = kf.switch("{{tasks.parse.output.kind}}", cases={"csv": handle, "json": handle})
        """,
    )
    run = wf.run(kind="xml", raise_on_failure=False)
    assert run.status == "failed"
    assert run.state.tasks["route"].error["message"] == (
        "switch of task 'route': no case matches 'xml' (cases: csv, json) and there is no default; add the case or a default"
    )
    assert payloads(run, "SwitchMatched") == []


def test_switch_on_booleans_matches_true_and_false_cases():
    wf, _ = cell(
        "bool_switch",
        """
        import kernelflow as kf

        def yes():
            return "yes"

        def no():
            return "no"

        route = kf.switch("{{inputs.flag}}", cases={True: yes, False: no})
        """,
    )
    assert wf.run(flag=True).output == "yes"
    run = wf.run(flag=False)
    assert run.output == "no"
    assert payloads(run, "SwitchMatched") == [{"value": False, "case": "false", "target": "python:no"}]


# --- forEach ---------------------------------------------------------------------------------


def test_for_each_outputs_are_in_item_order_whatever_the_completion_order():
    # Item i waits until item i+1 has finished: they complete last item first.
    wf, _ = cell(
        "ordered",
        """
        import threading
        import time
        import kernelflow as kf

        finished = [threading.Event() for _ in range(4)]

        @kf.for_each("{{inputs.items}}", as_="i")
        def each(i):
            time.sleep(0.001 * (4 - i))
            if i < 3 and not finished[i + 1].wait(10):
                raise RuntimeError("items did not run at the same time")
            finished[i].set()
            return i * 10
        """,
    )
    run = wf.run(items=[0, 1, 2, 3])
    assert run.output == {"outputs": [0, 10, 20, 30], "count": 4, "succeeded": 4, "failed": 0, "errors": []}
    done_order = [p["index"] for p in payloads(run, "ForEachItem") if p["status"] == "succeeded"]
    assert done_order == [3, 2, 1, 0]


def test_for_each_events_for_a_simple_loop():
    wf, _ = cell(
        "simple_loop",
        """
        import kernelflow as kf

        @kf.for_each(["x", "y", "z"], max_parallel=1)
        def each(item):
            return item.upper()
        """,
    )
    run = wf.run()
    assert run.output["outputs"] == ["X", "Y", "Z"]
    assert flow(run) == [
        ("RunStarted", None), ("TaskScheduled", "each"), ("TaskStarted", "each"), ("ForEachStarted", "each"),
        ("ForEachItem", "each"), ("ForEachItem", "each"), ("ForEachItem", "each"),
        ("TaskSucceeded", "each"), ("RunSucceeded", None),
    ]  # fmt: skip
    assert payloads(run, "ForEachStarted") == [{"path": [], "count": 3}]
    assert payloads(run, "ForEachItem") == [
        {"path": [i], "index": i, "status": "succeeded"} for i in range(3)
    ]


def test_for_each_continue_counts_failures_and_keeps_errors():
    wf, _ = cell(
        "tolerant",
        """
        import kernelflow as kf

        def ids():
            return [1, 2, 3, 4]

        @kf.task(for_each={"items": "{{tasks.ids.output}}", "as": "x", "maxParallel": 2, "on_failure": "continue"})
        def each(x, ids):
            if x % 2 == 0:
                raise ValueError(f"even {x}")
            return x
        """,
    )
    run = wf.run()
    assert run.status == "succeeded"
    assert run.output == {
        "outputs": [1, None, 3, None],
        "count": 4,
        "succeeded": 2,
        "failed": 2,
        "errors": [
            {"index": 1, "exc_type": "ValueError", "message": "even 2"},
            {"index": 3, "exc_type": "ValueError", "message": "even 4"},
        ],
    }
    failed = [p for p in payloads(run, "ForEachItem") if p["status"] == "failed"]
    assert [(p["index"], p["error"]["message"]) for p in failed] == [(1, "even 2"), (3, "even 4")]


def test_for_each_fail_policy_fails_the_task_naming_the_first_failed_item():
    wf, _ = cell(
        "strict_loop",
        """
        import kernelflow as kf

        @kf.for_each("{{inputs.items}}", max_parallel=1)
        def each(item):
            if item == "bad":
                raise ValueError("cannot handle bad")
            return item

        def after(each):
            return 1
        """,
    )
    run = wf.run(items=["ok", "bad", "fine"], raise_on_failure=False)
    assert run.status == "failed"
    assert run.state.tasks["each"].error["message"] == (
        "forEach of task 'each': 1 of 3 items failed; first: item 1: ValueError: cannot handle bad"
    )
    assert [p["status"] for p in payloads(run, "ForEachItem")] == ["succeeded", "failed", "succeeded"]
    assert run.state.tasks["after"].status == "skipped"


def test_for_each_max_parallel_is_reached_and_never_exceeded():
    wf, ns = cell(
        "bounded",
        """
        import threading
        import kernelflow as kf

        lock = threading.Lock()
        seen = {"now": 0, "peak": 0}
        meet = threading.Barrier(3, timeout=10)

        @kf.for_each("{{inputs.items}}", max_parallel=3)
        def each(item):
            with lock:
                seen["now"] += 1
                seen["peak"] = max(seen["peak"], seen["now"])
            try:
                meet.wait()  # breaks (and the item fails) unless 3 run at once
            finally:
                with lock:
                    seen["now"] -= 1
            return item
        """,
    )
    run = wf.run(items=list(range(9)))
    assert run.output["succeeded"] == 9
    assert ns["seen"]["peak"] == 3


def test_for_each_max_parallel_one_runs_items_one_at_a_time():
    wf, ns = cell(
        "serial",
        """
        import threading
        import kernelflow as kf

        lock = threading.Lock()
        seen = {"now": 0, "peak": 0}

        @kf.for_each("{{inputs.items}}", max_parallel=1)
        def each(item):
            with lock:
                seen["now"] += 1
                seen["peak"] = max(seen["peak"], seen["now"])
            with lock:
                seen["now"] -= 1
            return item
        """,
    )
    assert wf.run(items=list(range(5))).output["outputs"] == [0, 1, 2, 3, 4]
    assert ns["seen"]["peak"] == 1


def test_for_each_items_get_all_of_the_workflows_slots():
    # Regression: the loop itself used to hold one of the workflow's slots
    # (and with max_parallel=1 no item could ever start).
    wf, _ = cell(
        "slots",
        """
        import threading
        import kernelflow as kf

        meet = threading.Barrier(2, timeout=1)

        @kf.for_each([1, 2])
        def pair(item):
            meet.wait()  # both items must run at once
            return item
        """,
        max_parallel=2,
    )
    assert wf.run(raise_on_failure=False).status == "succeeded"
    single, _ = cell("one_slot", "import kernelflow as kf\n@kf.for_each([1, 2])\ndef each(item):\n    return item\n", max_parallel=1)
    run = single.start()
    run.wait(timeout=10)
    assert run.output["outputs"] == [1, 2]


def test_for_each_item_is_retried_on_its_own():
    wf, ns = cell(
        "item_retry",
        """
        import threading
        import kernelflow as kf

        lock = threading.Lock()
        calls = []

        @kf.task(for_each={"items": ["a", "b", "c"], "as": "x"}, retries=1, retry_delay=0.01)
        def each(x):
            with lock:
                calls.append(x)
                first = calls.count(x) == 1
            if x == "b" and first:
                raise ConnectionError("flaky b")
            return x * 2
        """,
    )
    run = wf.run()
    assert run.output["outputs"] == ["aa", "bb", "cc"]
    assert sorted(ns["calls"]) == ["a", "b", "b", "c"]
    retrying = [p for p in payloads(run, "ForEachItem") if p["status"] == "retrying"]
    assert [(p["index"], p["delay_s"], p["error"]["message"]) for p in retrying] == [(1, 0.01, "flaky b")]
    assert payloads(run, "TaskRetrying") == []
    assert run.state.tasks["each"].attempt == 1


def test_failed_items_are_not_retried_again_by_a_whole_loop_retry():
    # Regression: a failed loop used to be retried as a whole with the task's
    # retries after each item had used them, running succeeded items again.
    wf, ns = cell(
        "double_retry",
        """
        import kernelflow as kf

        calls = []

        @kf.task(for_each={"items": ["good", "bad"], "as": "x", "max_parallel": 1}, retries=1, retry_delay=0.01)
        def each(x):
            calls.append(x)
            if x == "bad":
                raise ValueError("always bad")
            return x
        """,
    )
    run = wf.run(raise_on_failure=False)
    assert run.status == "failed"
    assert ns["calls"] == ["good", "bad", "bad"]
    assert payloads(run, "TaskRetrying") == []


def test_for_each_over_an_empty_list_succeeds_with_no_outputs():
    wf, ns = cell(
        "empty",
        """
        import kernelflow as kf

        calls = []

        @kf.for_each("{{inputs.items}}")
        def each(item):
            calls.append(item)
        """,
    )
    run = wf.run(items=[])
    assert run.output == {"outputs": [], "count": 0, "succeeded": 0, "failed": 0, "errors": []}
    assert ns["calls"] == []
    assert payloads(run, "ForEachStarted") == [{"path": [], "count": 0}]
    assert payloads(run, "ForEachItem") == []


@pytest.mark.parametrize(("items", "shown"), [({"a": 1}, "dict {'a': 1}"), ("abc", "str 'abc'"), (7, "int 7")])
def test_for_each_items_that_are_not_a_list_fail_the_task(items, shown):
    wf, _ = cell(
        "not_a_list",
        """
        import kernelflow as kf

        @kf.for_each("{{inputs.items}}")
        def each(item):
            return item
        """,
    )
    run = wf.run(items=items, raise_on_failure=False)
    assert run.status == "failed"
    assert run.state.tasks["each"].error["message"] == (
        f"forEach of task 'each': items must be a list, but '{{{{inputs.items}}}}' gave {shown}"
    )


def test_nested_for_each_top_decorator_is_the_outer_loop():
    wf, _ = cell(
        "nested",
        """
        import kernelflow as kf

        def groups():
            return [["a", "b"], ["c"]]

        @kf.for_each("{{tasks.groups.output}}", as_="group")
        @kf.for_each("{{forEach.item}}", as_="letter")
        @kf.task(input={"g": "{{forEach.$parent.index}}", "i": "{{forEach.index}}", "root": "{{forEach.$root.item}}"})
        def each(group, letter, g, i, root):
            return f"{g}.{i}:{letter}/{len(group)}/{len(root)}"
        """,
    )
    run = wf.run()
    assert run.output == {
        "outputs": [
            {"outputs": ["0.0:a/2/2", "0.1:b/2/2"], "count": 2, "succeeded": 2, "failed": 0, "errors": []},
            {"outputs": ["1.0:c/1/1"], "count": 1, "succeeded": 1, "failed": 0, "errors": []},
        ],
        "count": 2,
        "succeeded": 2,
        "failed": 0,
        "errors": [],
    }
    assert payloads(run, "ForEachStarted") == [
        {"path": [], "count": 2},
        {"path": [0], "count": 2},
        {"path": [1], "count": 1},
    ]
    items = sorted((p["path"], p["status"]) for p in payloads(run, "ForEachItem"))
    assert items == [([0], "succeeded"), ([0, 0], "succeeded"), ([0, 1], "succeeded"), ([1], "succeeded"), ([1, 0], "succeeded")]


def test_nested_for_each_inner_failure_fails_the_outer_item():
    wf, _ = cell(
        "nested_fail",
        """
        import kernelflow as kf

        @kf.for_each([[1, 2], [3]], as_="group", on_failure="continue")
        @kf.for_each("{{forEach.item}}", as_="x")
        def each(group, x):
            if x == 2:
                raise ValueError("two")
            return x
        """,
    )
    run = wf.run()
    out = run.output
    assert (out["count"], out["succeeded"], out["failed"]) == (2, 1, 1)
    assert out["outputs"][1] == {"outputs": [3], "count": 1, "succeeded": 1, "failed": 0, "errors": []}
    assert out["errors"] == [
        {"index": 0, "exc_type": "StepFailed", "message": "1 of 2 inner items failed; first: item 1: ValueError: two"}
    ]


def test_for_each_nesting_deeper_than_three_is_a_definition_error():
    with pytest.raises(kf.DefinitionError) as err:
        cell(
            "too_deep",
            """
            import kernelflow as kf

            @kf.for_each([1], as_="a")
            @kf.for_each([1], as_="b")
            @kf.for_each([1], as_="c")
            @kf.for_each([1], as_="d")
            def each(a, b, c, d):
                return 1
            """,
        )
    assert err.value.message == "task 'each' nests 4 forEach loops; the limit is 3"
    assert err.value.location == "cell line 9"
    assert "max_foreach_depth" in err.value.hint
    # Three levels are fine.
    wf, _ = cell(
        "deep_enough",
        """
        import kernelflow as kf

        @kf.for_each([1, 2], as_="a")
        @kf.for_each([10], as_="b")
        @kf.for_each([100], as_="c")
        def each(a, b, c):
            return a + b + c
        """,
    )
    out = wf.run().output
    assert [o["outputs"][0]["outputs"] for o in out["outputs"]] == [[111], [112]]


# --- loops -----------------------------------------------------------------------------------

LOOP = """
import kernelflow as kf

calls = {"fetch": 0, "check": 0, "publish": 0}

def fetch():
    calls["fetch"] += 1
    return calls["fetch"]

@kf.task(back_to={"step": "fetch", "when": "{{output}} < 3", "max_iterations": LIMIT})
def check(fetch):
    calls["check"] += 1
    return fetch

def publish(check):
    calls["publish"] += 1
    return check
"""


def test_back_to_loops_until_its_condition_is_false():
    wf, ns = cell("poll", LOOP, {"LIMIT": 5})
    run = wf.run()
    assert run.output == 3
    assert ns["calls"] == {"fetch": 3, "check": 3, "publish": 1}
    one_pass = [("TaskScheduled", "fetch"), ("TaskStarted", "fetch"), ("TaskSucceeded", "fetch"),
                ("TaskScheduled", "check"), ("TaskStarted", "check"), ("TaskSucceeded", "check")]  # fmt: skip
    reset = [("LoopJumped", "check"), ("TaskReset", "fetch"), ("TaskReset", "check")]
    assert flow(run) == [
        ("RunStarted", None), *one_pass, *reset, *one_pass, *reset, *one_pass,
        ("TaskScheduled", "publish"), ("TaskStarted", "publish"), ("TaskSucceeded", "publish"), ("RunSucceeded", None),
    ]  # fmt: skip
    assert payloads(run, "LoopJumped") == [
        {"kind": "back_to", "to": "fetch", "iteration": 1, "reset": ["fetch", "check", "publish"]},
        {"kind": "back_to", "to": "fetch", "iteration": 2, "reset": ["fetch", "check", "publish"]},
    ]
    assert payloads(run, "TaskReset", "fetch") == [
        {"iteration": 1, "loop_from": "check"},
        {"iteration": 2, "loop_from": "check"},
    ]
    # Attempt numbers go on across iterations.
    started = [(tid, a) for t, tid, a in zip(run.events["type"], run.events["task_id"], run.events["attempt"]) if t == "TaskStarted"]
    assert started == [("fetch", 1), ("check", 1), ("fetch", 2), ("check", 2), ("fetch", 3), ("check", 3), ("publish", 1)]
    state = run.state.tasks
    assert (state["fetch"].status, state["fetch"].attempt, state["fetch"].iteration) == ("succeeded", 3, 2)
    assert (state["check"].status, state["check"].attempt, state["check"].iteration) == ("succeeded", 3, 2)
    assert (state["publish"].attempt, state["publish"].iteration) == (1, 0)
    assert run["fetch"] == 3


def test_back_to_exceeding_its_iteration_limit_fails_the_run():
    wf, ns = cell("poll_limited", LOOP, {"LIMIT": 1})
    with pytest.raises(kf.RunFailedError) as err:
        wf.run()
    run = err.value.run
    message = "loop from 'check' back to 'fetch' exceeded its limit of 1 iterations; raise max_iterations or fix the loop's condition"
    assert run.state.tasks["check"].error["message"] == message
    assert message in str(err.value)
    assert ns["calls"] == {"fetch": 2, "check": 2, "publish": 0}
    assert len(payloads(run, "LoopJumped")) == 1
    assert run.state.tasks["publish"].status == "skipped"


def test_back_to_directive_returned_by_a_task():
    wf, ns = cell(
        "directive_loop",
        """
        import kernelflow as kf

        seen = []

        def fetch():
            seen.append("fetch")
            return len(seen)

        def check(fetch):
            if fetch < 3:
                return kf.back_to("fetch", output={"partial": fetch})
            return {"done": fetch}
        """,
    )
    run = wf.run()
    assert run.output == {"done": 3}
    assert ns["seen"] == ["fetch"] * 3
    assert [p["kind"] for p in payloads(run, "LoopJumped")] == ["back_to", "back_to"]
    # The directive's output is recorded as that iteration's output.
    assert [p["output"] for p in payloads(run, "TaskSucceeded", "check")] == [{"partial": 1}, {"partial": 2}, {"done": 3}]


def test_skip_to_directive_skips_the_tasks_in_between():
    wf, _ = cell(
        "shortcut",
        """
        import kernelflow as kf

        def check(ready):
            if ready:
                return kf.skip_to("publish", "cached")
            return "fresh"

        def transform(check):
            return check + "+t"

        def enrich(transform):
            return transform + "+e"

        def publish(enrich, check):
            return [enrich, check]
        """,
    )
    run = wf.run(ready=True)
    assert run.output == [None, "cached"]
    assert statuses(run) == {"check": "succeeded", "transform": "skipped", "enrich": "skipped", "publish": "succeeded"}
    assert run.state.tasks["transform"].reason == "skipped by skip_to from 'check'"
    assert payloads(run, "LoopJumped") == [{"kind": "skip_to", "to": "publish", "skipped": ["transform", "enrich"]}]
    assert payloads(run, "TaskSkipped", "enrich") == [{"reason": "skipped by skip_to from 'check'", "skip_to": "publish"}]

    run = wf.run(ready=False)
    assert run.output == ["fresh+t+e", "fresh"]
    assert payloads(run, "LoopJumped") == []


def test_a_skip_to_target_runs_even_when_all_its_upstream_tasks_were_skipped():
    wf, _ = cell(
        "forced",
        """
        import kernelflow as kf

        def check():
            return kf.skip_to("publish", "x")

        def transform(check):
            return 1

        def publish(transform):
            return ["published", transform]

        def after(publish):
            return publish
        """,
    )
    run = wf.run()
    assert statuses(run) == {"check": "succeeded", "transform": "skipped", "publish": "succeeded", "after": "succeeded"}
    assert run.output == ["published", None]


def test_retries_inside_a_loop_iteration_continue_the_attempt_numbers():
    wf, ns = cell(
        "loop_retry",
        """
        import kernelflow as kf

        calls = {"fetch": 0, "check": 0}

        def fetch():
            calls["fetch"] += 1
            return calls["fetch"]

        @kf.task(retries=1, retry_delay=0.01, back_to={"step": "fetch", "when": "{{output}} < 2"})
        def check(fetch):
            calls["check"] += 1
            if calls["check"] == 2:
                raise ValueError("flaky in the second iteration")
            return fetch
        """,
    )
    run = wf.run()
    assert run.output == 2
    assert ns["calls"] == {"fetch": 2, "check": 3}
    assert [(p["next_attempt"], p["error"]["message"]) for p in payloads(run, "TaskRetrying", "check")] == [
        (3, "flaky in the second iteration")
    ]
    assert (run.state.tasks["check"].attempt, run.state.tasks["fetch"].attempt) == (3, 2)


def test_an_inner_loops_limit_applies_to_each_pass_of_the_outer_loop():
    wf, ns = cell(
        "nested_loops",
        """
        import kernelflow as kf

        count = {"outer": 0, "inner": 0}

        def start():
            count["outer"] += 1
            count["inner"] = 0
            return count["outer"]

        def step(start):
            count["inner"] += 1
            return count["inner"]

        # Each pass of the outer loop needs two inner iterations; the limit is 3.
        @kf.task(back_to={"step": "step", "when": "{{output}} < 3", "max_iterations": 3})
        def inner(step):
            return step

        @kf.task(back_to={"step": "start", "when": "{{tasks.start.output}} < 3", "max_iterations": 5})
        def outer(inner, start):
            return start
        """,
    )
    run = wf.run(raise_on_failure=False)
    assert run.state.error is None
    assert run.status == "succeeded"
    assert ns["count"] == {"outer": 3, "inner": 3}


@pytest.mark.parametrize(("n", "skipped"), [(10, True), (1, False)])
def test_declared_skip_to_with_a_condition(n, skipped):
    wf, _ = cell(
        "declared_skip",
        """
        import kernelflow as kf

        @kf.task(skip_to={"step": "report", "when": "{{output}} > 5"})
        def count(n):
            return n

        def detail(count):
            return "detail"

        def report(detail, count):
            return [detail, count]
        """,
    )
    run = wf.run(n=n)
    assert run.output == ([None, n] if skipped else ["detail", n])
    assert run.state.tasks["detail"].status == ("skipped" if skipped else "succeeded")


@pytest.mark.parametrize(
    ("decorator", "message", "hint"),
    [
        ('@kf.task(back_to="nope")', "task 'check' has back_to 'nope', which is not a task of this workflow", "name an existing task"),
        ('@kf.task(back_to={"step": "later"})', "task 'check' jumps back_to 'later', which does not run before it", "use skip_to to jump forward"),
        ('@kf.task(skip_to="fetch")', "task 'check' has skip_to 'fetch', which does not depend on it", "use back_to to go back"),
        ('@kf.task(skip_to="nowhere")', "task 'check' has skip_to 'nowhere', which is not a task of this workflow", "name an existing task"),
    ],
)
def test_bad_jump_targets_are_definition_errors_at_the_cells_line(decorator, message, hint):
    body = f"""
import kernelflow as kf

def fetch():
    return 1

{decorator}
def check(fetch):
    return 1

def later(check):
    return 1
"""
    with pytest.raises(kf.DefinitionError) as err:
        compile_cell("bad_jump", body, {})
    assert err.value.message == message
    assert err.value.location == "cell line 9"  # the line of `def check`
    assert hint in err.value.hint


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ('kf.back_to("nope")', "task 'check' returned back_to('nope'), but there is no task 'nope'"),
        ('kf.back_to("later")', "task 'check' returned back_to('later'), but 'later' does not run before it"),
        ('kf.skip_to("fetch")', "task 'check' returned skip_to('fetch'), but 'fetch' does not depend on it"),
    ],
)
def test_bad_jump_directives_fail_the_task(returned, message):
    wf, _ = cell(
        "bad_directive",
        f"""
        import kernelflow as kf

        def fetch():
            return 1

        def check(fetch):
            return {returned}

        def later(check):
            return 1
        """,
    )
    run = wf.run(raise_on_failure=False)
    assert run.status == "failed"
    assert run.state.tasks["check"].error == {"exc_type": "StepFailed", "message": message, "traceback": ""}
    assert run.state.tasks["later"].status == "skipped"


# --- sub-workflows ---------------------------------------------------------------------------


def test_subworkflow_runs_the_child_with_mapped_input_and_output():
    ns: dict = {}
    ns["sw_child"], _ = cell(
        "sw_child",
        """
        def double(x):
            if x < 0:
                raise ValueError("negative input")
            return {"z": x * 2}
        """,
        ns,
    )
    wf, _ = cell(
        "sw_parent",
        """
        import kernelflow as kf

        def a(n):
            return n + 1

        sub = kf.subworkflow(sw_child, input={"x": "{{tasks.a.output}}"}, output={"y": "{{output.z}}"})

        def after(sub):
            return sub["y"]
        """,
        ns,
    )
    run = wf.run(n=2)
    assert run["sub"] == {"y": 6}
    assert run.output == 6
    started = kf.sql("SELECT run_id, workflow, payload FROM events WHERE type = 'RunStarted' ORDER BY ts")
    child = [json.loads(p) | {"workflow": w} for w, p in zip(started["workflow"], started["payload"]) if w == "sw_child"]
    assert len(child) == 1
    assert child[0]["parent_run_id"] == run.run_id
    assert child[0]["parent_task"] == "sub"
    assert child[0]["inputs"] == {"x": 3}
    assert (child[0]["call_stack"], child[0]["depth"]) == (["sw_parent"], 1)
    assert "parent_run_id" not in json.loads(run.events["payload"][0])

    failed = wf.run(n=-5, raise_on_failure=False)
    assert failed.status == "failed"
    message = failed.state.tasks["sub"].error["message"]
    child_runs = kf.sql("SELECT run_id, status FROM runs WHERE workflow = 'sw_child' AND status = 'failed'")
    assert child_runs.height == 1
    child_id = child_runs["run_id"][0]
    assert message == f"sub-workflow 'sw_child' (run {child_id}) failed: task 'double' failed: ValueError: negative input"
    assert failed.state.tasks["after"].status == "skipped"


def test_subworkflow_resolves_the_latest_definition_unless_pinned():
    ns: dict = {}
    ns["sw_versioned"], _ = cell("sw_versioned", "def v():\n    return 1\n", ns)
    first = ns["sw_versioned"].version
    wf, _ = cell(
        "sw_caller",
        """
        import kernelflow as kf

        latest = kf.subworkflow(sw_versioned)
        pinned = kf.subworkflow(sw_versioned, version=FIRST)
        """,
        {**ns, "FIRST": first},
    )
    ns["sw_versioned"], _ = cell("sw_versioned", "def v():\n    return 2\n", ns)
    assert wf.run().output == {"latest": 2, "pinned": 1}


@pytest.mark.parametrize(
    ("step", "message", "hint"),
    [
        ('kf.subworkflow("sw_nothere")', "task 'sub' calls workflow 'sw_nothere', which is not defined (did you mean 'sw_there'?)", "define workflow"),
        ('kf.subworkflow("sw_self")', "task 'sub' calls workflow 'sw_self', the workflow being defined: a workflow may not call itself", "back_to"),
        ('kf.subworkflow(sw_there, input={"y": 1})', "task 'sub' passes input 'y' to workflow 'sw_there', which has no such input", "its inputs: x"),
        ("kf.subworkflow(sw_there)", "task 'sub' calls workflow 'sw_there' without its required input(s) 'x'", "input: {x: ...}"),
    ],
)
def test_subworkflow_mistakes_are_definition_errors(step, message, hint):
    ns: dict = {}
    ns["sw_there"], _ = cell("sw_there", "def t(x):\n    return x\n", ns)
    with pytest.raises(kf.DefinitionError) as err:
        compile_cell("sw_self", f"import kernelflow as kf\n\nsub = {step}\n", ns)
    assert err.value.message == message
    assert err.value.location == "cell line 4"
    assert hint in err.value.hint
    assert "sw_self" not in ns  # nothing bound (compile_cell never binds; the magic binds on success)


def test_subworkflow_call_cycle_is_a_definition_error():
    ns: dict = {}
    ns["cyc_a"], _ = cell("cyc_a", "def plain():\n    return 1\n", ns)
    ns["cyc_b"], _ = cell("cyc_b", "import kernelflow as kf\ncall_a = kf.subworkflow(cyc_a)\n", ns)
    with pytest.raises(kf.DefinitionError) as err:
        cell("cyc_a", "import kernelflow as kf\ncall_b = kf.subworkflow(cyc_b)\n", ns)
    assert err.value.message == "task 'call_b' makes a call cycle: cyc_a -> cyc_b -> cyc_a"
    assert err.value.location == "cell line 3"


def test_subworkflow_nesting_deeper_than_five_is_a_definition_error():
    ns: dict = {}
    ns["deep0"], _ = cell("deep0", "def leaf():\n    return 0\n", ns)
    for i in range(1, 6):
        ns[f"deep{i}"], _ = cell(f"deep{i}", f"import kernelflow as kf\ncall = kf.subworkflow(deep{i - 1})\n", ns)
    assert ns["deep5"].run().status == "succeeded"
    with pytest.raises(kf.DefinitionError, match=r"sub-workflow calls nest 6 deep \(deep6 -> deep5 .* -> deep0\); the limit is 5") as err:
        cell("deep6", "import kernelflow as kf\ncall = kf.subworkflow(deep5)\n", ns)
    assert err.value.location == "cell line 3" and err.value.message.startswith("task 'call': ")


def test_secrets_passed_to_a_subworkflow_are_not_stored(monkeypatch):
    # Regression: the child run had its own, empty masker and recorded the value in RunStarted.
    monkeypatch.setenv("KF_TEST_SECRET", SECRET)
    ns: dict = {}
    ns["sw_secret_child"], _ = cell("sw_secret_child", "def use(token):\n    return len(token)\n", ns)
    wf, _ = cell(
        "sw_secret_parent",
        'import kernelflow as kf\nsub = kf.subworkflow(sw_secret_child, input={"token": "{{secrets.KF_TEST_SECRET}}"})\n',
        ns,
    )
    assert wf.run().output == len(SECRET)
    stored = kf.sql("SELECT payload FROM events")["payload"].to_list()
    assert not any(SECRET in p for p in stored)


# --- continue_on_failure ----------------------------------------------------------------------


def test_continue_on_failure_lets_dependents_run_with_none():
    wf, _ = cell(
        "tolerated",
        """
        import kernelflow as kf

        @kf.task(continue_on_failure=True)
        def optional():
            raise ConnectionError("service down")

        def use(optional):
            return "got " + repr(optional)
        """,
    )
    run = wf.run()
    assert run.status == "succeeded"
    assert run.output == "got None"
    assert run.state.tasks["optional"].status == "failed"
    assert payloads(run, "TaskFailed", "optional")[0]["continued"] is True
    assert payloads(run, "TaskFailed", "optional")[0]["error"]["message"] == "service down"
    assert run.state.failed_tasks == []


# --- retries and backoff ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backoff", "delays"),
    [
        ("fixed", [0.01, 0.01, 0.01, 0.01]),
        ("linear", [0.01, 0.02, 0.03, 0.035]),
        ("exponential", [0.01, 0.02, 0.035, 0.035]),
    ],
)
def test_retry_delays_follow_the_backoff_capped_at_max_delay(backoff, delays):
    wf, ns = cell(
        "backoff",
        """
        import kernelflow as kf

        calls = []

        @kf.task(retries=4, backoff=BACKOFF, retry_delay=0.01, max_delay=0.035, jitter=0)
        def flaky():
            calls.append(1)
            raise ValueError("boom")
        """,
        {"BACKOFF": backoff},
    )
    run = wf.run(raise_on_failure=False)
    assert len(ns["calls"]) == 5
    retrying = payloads(run, "TaskRetrying", "flaky")
    assert [p["delay_s"] for p in retrying] == pytest.approx(delays)
    assert [p["next_attempt"] for p in retrying] == [2, 3, 4, 5]
    assert {p["reason"] for p in retrying} == {"error"}
    assert run.state.tasks["flaky"].attempt == 5
    assert flow(run, "TaskRetrying", "TaskFailed")[-1] == ("TaskFailed", "flaky")


def test_jitter_spreads_delays_within_its_band():
    wf, _ = cell(
        "jittery",
        """
        import kernelflow as kf

        @kf.task(retries=6, retry_delay=0.01, jitter=0.5)
        def flaky():
            raise ValueError("boom")
        """,
    )
    run = wf.run(raise_on_failure=False)
    delays = [p["delay_s"] for p in payloads(run, "TaskRetrying")]
    assert len(delays) == 6
    assert all(0.005 <= d <= 0.015 for d in delays)
    assert len(set(delays)) > 1


def test_max_attempts_counts_every_attempt_and_a_later_success_wins():
    wf, ns = cell(
        "attempts",
        """
        import kernelflow as kf

        calls = []

        @kf.task(max_attempts=3, retry_delay=0.01)
        def flaky():
            calls.append(1)
            if len(calls) < 3:
                raise TimeoutError("slow service")
            return "third time"
        """,
    )
    run = wf.run()
    assert run.output == "third time"
    assert len(ns["calls"]) == 3
    assert run.state.tasks["flaky"].attempt == 3
    assert flow(run) == [
        ("RunStarted", None),
        ("TaskScheduled", "flaky"), ("TaskStarted", "flaky"), ("TaskRetrying", "flaky"),
        ("TaskScheduled", "flaky"), ("TaskStarted", "flaky"), ("TaskRetrying", "flaky"),
        ("TaskScheduled", "flaky"), ("TaskStarted", "flaky"), ("TaskSucceeded", "flaky"),
        ("RunSucceeded", None),
    ]  # fmt: skip


@pytest.mark.parametrize(("raised", "calls"), [("ConnectionError", 3), ("ValueError", 1)])
def test_retry_on_retries_only_the_listed_errors(raised, calls):
    wf, ns = cell(
        "selective",
        """
        import kernelflow as kf

        calls = []

        @kf.task(retries=2, retry_delay=0.01, retry_on=[ConnectionError, "TimeoutError"])
        def call():
            calls.append(1)
            raise RAISED("nope")
        """,
        {"RAISED": {"ConnectionError": ConnectionError, "ValueError": ValueError}[raised]},
    )
    run = wf.run(raise_on_failure=False)
    assert run.status == "failed"
    assert len(ns["calls"]) == calls
    assert len(payloads(run, "TaskRetrying")) == calls - 1
    assert run.state.tasks["call"].error["exc_type"] == raised


def test_retry_on_matches_subclasses():
    wf, ns = cell(
        "subclass",
        """
        import kernelflow as kf

        calls = []

        @kf.task(retries=1, retry_delay=0.01, retry_on=OSError)
        def call():
            calls.append(1)
            if len(calls) == 1:
                raise ConnectionResetError("reset")
            return "ok"
        """,
    )
    assert wf.run().output == "ok"
    assert len(ns["calls"]) == 2


# --- timeouts ----------------------------------------------------------------------------------

SLOW = """
import threading
import kernelflow as kf

release = threading.Event()
calls = []

def _fallback():
    return "from fallback"

@kf.task(timeout=0.2, retries=1, retry_delay=0.01, **OPTIONS)
def slow():
    calls.append(1)
    release.wait(2)  # abandoned by the engine at the timeout; released after the test
    return "finished"

def after(slow):
    return slow
"""


@pytest.fixture
def slow_cell():
    made = []

    def make(name, options):
        wf, ns = cell(name, SLOW, {"OPTIONS": options})
        made.append(ns)
        return wf, ns

    yield make
    for ns in made:
        ns["release"].set()


def test_on_timeout_fail_fails_at_once(slow_cell):
    wf, ns = slow_cell("t_fail", {"on_timeout": "fail"})
    run = wf.run(raise_on_failure=False)
    assert statuses(run) == {"slow": "timed_out", "after": "skipped"}
    assert len(ns["calls"]) == 1  # no retry despite retries=1
    (timed_out,) = payloads(run, "TaskTimedOut", "slow")
    assert timed_out["timeout_s"] == 0.2
    assert timed_out["error"]["message"] == "task 'slow' ran longer than its timeout of 200ms"
    assert payloads(run, "TaskRetrying") == []


def test_on_timeout_skip_skips_the_task(slow_cell):
    wf, _ = slow_cell("t_skip", {"on_timeout": "skip"})
    run = wf.run()
    assert run.status == "succeeded"
    assert statuses(run) == {"slow": "skipped", "after": "skipped"}
    assert run.state.tasks["slow"].reason == "timed out after 200ms (on_timeout: skip)"
    assert run.state.tasks["after"].reason == "all upstream tasks were skipped"
    assert flow(run, "TaskTimedOut", "TaskSkipped") == [("TaskTimedOut", "slow"), ("TaskSkipped", "slow"), ("TaskSkipped", "after")]


def test_on_timeout_retry_retries_then_times_out(slow_cell):
    wf, ns = slow_cell("t_retry", {"on_timeout": "retry"})
    run = wf.run(raise_on_failure=False)
    assert run.status == "failed"
    assert len(ns["calls"]) == 2
    (retrying,) = payloads(run, "TaskRetrying", "slow")
    assert (retrying["reason"], retrying["next_attempt"]) == ("timeout", 2)
    assert flow(run, "TaskRetrying", "TaskTimedOut") == [("TaskRetrying", "slow"), ("TaskTimedOut", "slow")]
    assert (run.state.tasks["slow"].status, run.state.tasks["slow"].attempt) == ("timed_out", 2)


def test_on_timeout_fallback_gives_the_fallbacks_output(slow_cell):
    wf, ns = slow_cell("t_fallback", {"on_timeout": "fallback", "fallback": "python:_fallback"})
    run = wf.run()
    assert run.output == "from fallback"
    assert len(ns["calls"]) == 1
    assert payloads(run, "FallbackUsed", "slow") == [{"reason": "timed out after 200ms", "fallback": "python:_fallback"}]
    assert payloads(run, "TaskSucceeded", "slow")[0]["fallback"] == "python:_fallback"


def test_on_timeout_fallback_without_a_fallback_is_a_definition_error():
    with pytest.raises(kf.DefinitionError, match="on_timeout: fallback needs a fallback step"):
        cell("t_nofallback", "import kernelflow as kf\n@kf.task(timeout=1, on_timeout='fallback')\ndef f():\n    return 1\n")


# --- fallback ------------------------------------------------------------------------------------


def test_fallback_after_retries_are_exhausted():
    wf, ns = cell(
        "fb",
        """
        import kernelflow as kf

        calls = []

        def _cached(region):
            return f"cached {region}"

        @kf.task(retries=2, retry_delay=0.01, fallback=_cached)
        def fetch(region):
            calls.append(region)
            raise ConnectionError("api down")

        def report(fetch):
            return fetch.upper()
        """,
    )
    run = wf.run(region="eu")
    assert run.output == "CACHED EU"
    assert len(ns["calls"]) == 3
    assert wf.task_ids == ("fetch", "report")
    assert payloads(run, "FallbackUsed", "fetch") == [
        {"reason": "failed: ConnectionError: api down", "fallback": "python:_cached"}
    ]
    (succeeded,) = payloads(run, "TaskSucceeded", "fetch")
    assert (succeeded["output"], succeeded["fallback"]) == ("cached eu", "python:_cached")
    assert flow(run, "TaskRetrying", "FallbackUsed", "TaskSucceeded")[:4] == [
        ("TaskRetrying", "fetch"), ("TaskRetrying", "fetch"), ("FallbackUsed", "fetch"), ("TaskSucceeded", "fetch"),
    ]  # fmt: skip


def test_a_fallback_that_fails_fails_the_task():
    wf, _ = cell(
        "fb_broken",
        """
        import kernelflow as kf

        def _broken():
            raise RuntimeError("no cache either")

        @kf.task(fallback=_broken)
        def fetch():
            raise ConnectionError("api down")
        """,
    )
    run = wf.run(raise_on_failure=False)
    assert run.status == "failed"
    error = run.state.tasks["fetch"].error
    assert (error["exc_type"], error["message"]) == ("RuntimeError", "fallback failed: no cache either")
    assert flow(run, "FallbackUsed", "TaskFailed") == [("FallbackUsed", "fetch"), ("TaskFailed", "fetch")]


# --- compensation ---------------------------------------------------------------------------------

SAGA = """
import threading
import kernelflow as kf

undone = []
early_done = threading.Event()

def _undo_late(late):
    undone.append(("late", late))

def _undo_early(output, order):
    undone.append(("early", output, order))
    raise RuntimeError("cannot undo early")

def _undo_first(first):
    undone.append(("first", first))

@kf.task(compensate=_undo_first)
def first(order):
    return f"first-{order}"

@kf.task(compensate=_undo_late)
def late(first):
    # Defined before `early` but completes after it.
    if not early_done.wait(10):
        raise RuntimeError("early never finished")
    return "late-out"

@kf.task(compensate=_undo_early)
def early(first, order):
    early_done.set()
    return "early-out"

def finish(late, early, fail):
    if fail:
        raise ValueError("finish failed")
    return "done"
"""


def test_compensation_runs_in_reverse_completion_order_when_the_run_fails():
    wf, ns = cell("saga", SAGA)
    run = wf.run(order=7, fail=True, raise_on_failure=False)
    assert run.status == "failed"
    completed = [tid for t, tid in flow(run, "TaskSucceeded")]
    assert completed == ["first", "early", "late"]
    # Last completed first; a compensation that raises does not stop the others.
    assert ns["undone"] == [("late", "late-out"), ("early", "early-out", 7), ("first", "first-7")]
    assert flow(run)[-7:] == [
        ("CompensationStarted", "late"), ("CompensationSucceeded", "late"),
        ("CompensationStarted", "early"), ("CompensationFailed", "early"),
        ("CompensationStarted", "first"), ("CompensationSucceeded", "first"),
        ("RunFailed", None),
    ]  # fmt: skip
    (failed,) = payloads(run, "CompensationFailed")
    assert failed["compensate"] == "python:_undo_early"
    assert (failed["error"]["exc_type"], failed["error"]["message"]) == ("RuntimeError", "cannot undo early")
    assert payloads(run, "CompensationStarted", "late") == [{"compensate": "python:_undo_late"}]


def test_compensation_does_not_run_when_the_run_succeeds():
    wf, ns = cell("saga_ok", SAGA)
    run = wf.run(order=1, fail=False)
    assert run.output == "done"
    assert ns["undone"] == []
    assert not any(t.startswith("Compensation") for t, _ in flow(run))


# --- circuit breakers --------------------------------------------------------------------------------

BREAKER = """
import kernelflow as kf

calls = []

def _cached():
    return "cached"

@kf.task(circuit_breaker={"failure_threshold": 2, "window": "60s", "break_duration": "60s", "name": CIRCUIT}, **EXTRA)
def call_service():
    calls.append(1)
    if FAIL:
        raise ConnectionError("service down")
    return "fresh"
"""


def test_an_open_circuit_is_shared_by_later_runs_which_use_the_fallback():
    extra = {"retries": 1, "retry_delay": 0.01, "fallback": "python:_cached"}
    wf, ns = cell("breaker", BREAKER, {"CIRCUIT": "svc", "EXTRA": extra, "FAIL": True})
    first = wf.run()
    assert first.output == "cached"
    assert len(ns["calls"]) == 2  # two failures: the circuit opens
    assert payloads(first, "CircuitChanged") == [{"circuit": "svc", "transition": "closed->open"}]
    assert flow(first, "CircuitChanged", "FallbackUsed", "TaskSucceeded") == [
        ("CircuitChanged", "call_service"), ("FallbackUsed", "call_service"), ("TaskSucceeded", "call_service"),
    ]  # fmt: skip

    second = wf.run()
    assert second.output == "cached"
    assert len(ns["calls"]) == 2  # not called at all
    (used,) = payloads(second, "FallbackUsed")
    assert used["reason"].startswith("circuit 'svc' is open until ")
    assert payloads(second, "TaskRetrying") == []
    circuits = kf.circuits()
    assert circuits.filter(circuits["name"] == "svc")["state"].to_list() == ["open"]


def test_an_open_circuit_without_fallback_fails_until_closed_by_hand():
    wf, _ = cell("breaker_trip", BREAKER, {"CIRCUIT": "svc2", "EXTRA": {"retries": 1, "retry_delay": 0.01}, "FAIL": True})
    assert wf.run(raise_on_failure=False).status == "failed"
    assert kf.circuit("svc2").state == "open"

    healthy, healthy_ns = cell("breaker_ok", BREAKER, {"CIRCUIT": "svc2", "EXTRA": {}, "FAIL": False})
    refused = healthy.run(raise_on_failure=False)
    assert refused.status == "failed"
    assert healthy_ns["calls"] == []
    error = refused.state.tasks["call_service"].error
    assert error["exc_type"] == "CircuitOpen"
    assert error["message"].startswith("circuit 'svc2' is open until ")
    assert "after 2 failures in 1m" in error["message"]

    kf.circuit("svc2").close()
    assert healthy.run().output == "fresh"
    assert healthy_ns["calls"] == [1]
    assert kf.circuit("svc2").state == "closed"


def test_a_half_open_circuit_lets_a_probe_through_and_closes_on_success():
    wf, ns = cell(
        "probing",
        """
        import kernelflow as kf

        state = {"fail": True, "calls": 0}

        @kf.task(circuit_breaker={"failure_threshold": 1, "window": "60s", "break_duration": "0.3s", "name": "probe"})
        def call():
            state["calls"] += 1
            if state["fail"]:
                raise ConnectionError("down")
            return "ok"
        """,
    )
    first = wf.run(raise_on_failure=False)
    assert payloads(first, "CircuitChanged") == [{"circuit": "probe", "transition": "closed->open"}]
    ns["state"]["fail"] = False
    time.sleep(0.35)  # let the break duration pass (nothing is asserted about time)
    second = wf.run()
    assert second.output == "ok"
    assert [p["transition"] for p in payloads(second, "CircuitChanged")] == ["open->half_open", "half_open->closed"]
    assert ns["state"]["calls"] == 2
    assert kf.circuit("probe").state == "closed"


# --- secrets ---------------------------------------------------------------------------------------


def _store_texts(root: Path) -> list[tuple[str, str]]:
    """Every file under the store as text: raw bytes, Parquet decoded, pickles loaded."""
    import pyarrow.parquet as pq

    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        out.append((str(path), raw.decode("utf-8", "replace")))
        if path.suffix == ".parquet":
            out.append((f"{path} (decoded)", repr(pq.read_table(path).to_pylist())))
        elif path.suffix == ".pkl":
            out.append((f"{path} (unpickled)", repr(pickle.loads(raw))))
    return out


def test_secrets_are_masked_everywhere(monkeypatch, capfd):
    monkeypatch.setenv("KF_TEST_SECRET", SECRET)
    wf, _ = cell(
        "secretive",
        """
        import sys
        import kernelflow as kf

        shell_step = kf.shell(
            [sys.executable, "-c", "import os,sys; print(os.environ['TOK']); print(sys.argv[1]); raise SystemExit(3)",
             "{{secrets.KF_TEST_SECRET}}"],
            env={"TOK": "{{secrets.KF_TEST_SECRET}}"},
        )

        @kf.task(input={"token": "{{secrets.KF_TEST_SECRET}}"})
        def echo(token):
            return {"token": token, "long": [token] * 200}

        @kf.task(input={"token": "{{secrets.KF_TEST_SECRET}}"})
        def complain(token):
            raise ValueError(f"token {token} was refused")
        """,
    )
    with pytest.raises(kf.RunFailedError) as err:
        wf.run()
    run = err.value.run
    texts = [("RunFailedError", str(err.value)), ("summary", run.summary())]
    assert statuses(run) == {"shell_step": "failed", "echo": "succeeded", "complain": "failed"}
    # The values reached the steps (they printed and raised them: masked below)...
    # An output kept as an artifact is read back from the store once the run ends: masked.
    assert run["echo"]["token"] == "***" and len(run["echo"]["long"]) == 200
    shell_error = run.state.tasks["shell_step"].error["message"]
    assert shell_error == "shell step 'shell_step' exited with code 3 (stderr was empty; stdout ended with: ***\n***)"
    assert run.state.tasks["complain"].error["message"] == "token *** was refused"
    assert "token *** was refused" in str(err.value)
    assert "***" in run.failures["complain"].traceback
    # ...and are masked in what was recorded.
    assert payloads(run, "TaskSucceeded", "echo")[0]["output_ref"] is not None  # large: an artifact
    events = run.events
    texts += [("events", events.write_csv())]
    texts += [("sql", kf.sql("SELECT * FROM events").write_csv())]
    captured = capfd.readouterr()
    texts += [("stdout", captured.out), ("stderr", captured.err)]
    store = Path(kf.store_location())
    texts += _store_texts(store)
    close_stores()  # compacts this process's segment into Parquet
    texts += _store_texts(store)
    leaks = [where for where, text in texts if SECRET in text]
    assert leaks == []
    assert any("***" in text for where, text in texts if where == "events")


@pytest.mark.parametrize(
    "body",
    [
        'open("/nonexistent/" + token)',
        'raise ValueError(["token", token])',
        "try:\n        {}[token]\n    except KeyError as e:\n        raise ValueError('lookup failed') from e",
    ],
    ids=["os-error-filename", "non-str-arg", "chained"],
)
def test_secrets_do_not_reach_the_printed_traceback(monkeypatch, body):
    # wf.run() raises RunFailedError from the task's own exception: its whole chain is shown.
    monkeypatch.setenv("KF_TEST_SECRET", SECRET)
    src = f'import kernelflow as kf\n@kf.task(input={{"token": "{{{{secrets.KF_TEST_SECRET}}}}"}})\ndef use(token):\n    {body}\n'
    wf = compile_cell("leaky", src, {})
    with pytest.raises(kf.RunFailedError) as err:
        wf.run()
    assert SECRET not in "".join(traceback.format_exception(err.value))


def test_a_namedtuple_output_in_a_run_that_resolved_a_secret(monkeypatch):
    monkeypatch.setenv("KF_TEST_SECRET", SECRET)
    # Regression: masking rebuilt tuples with type(obj)(generator), which namedtuples refuse.
    wf, _ = cell(
        "named",
        """
        import kernelflow as kf

        @kf.task(input={"token": "{{secrets.KF_TEST_SECRET}}"})
        def size(token):
            return len(token)

        def point(size):
            return Point(size, 2)
        """,
        {"Point": Point},  # module level: picklable, so the output is stored
    )
    run = wf.run()
    assert run.output == Point(len(SECRET), 2)
    ref = payloads(run, "TaskSucceeded", "point")[0]["output_ref"]
    assert run.store.load_artifact(ref) == Point(len(SECRET), 2)


def test_a_missing_secret_fails_the_task_naming_it_and_the_provider(monkeypatch):
    monkeypatch.delenv("KF_MISSING_SECRET", raising=False)
    wf, ns = cell(
        "no_secret",
        """
        import kernelflow as kf

        calls = []

        @kf.task(input={"token": "{{secrets.KF_MISSING_SECRET}}"})
        def use(token):
            calls.append(token)
        """,
    )
    run = wf.run(raise_on_failure=False)
    assert run.status == "failed"
    error = run.state.tasks["use"].error
    assert error["exc_type"] == "SecretNotFoundError"
    assert error["message"] == (
        "secret 'KF_MISSING_SECRET' was not found by any secret provider (providers: env); "
        "with the built-in env provider, set the environment variable KF_MISSING_SECRET before the run"
    )
    assert ns["calls"] == []


# --- shell and http steps through the engine ------------------------------------------------------


def test_shell_step_output_and_templates_in_argv():
    wf, _ = cell(
        "shelly",
        """
        import sys
        import kernelflow as kf

        def name(who):
            return who.upper()

        greet = kf.shell([sys.executable, "-c", "import sys; print('hello', sys.argv[1])", "{{tasks.name.output}}-{{inputs.who}}"])

        def length(greet):
            return len(greet["stdout"])
        """,
    )
    run = wf.run(who="ada")
    out = run["greet"]
    assert (out["exit_code"], out["stdout"], out["stderr"]) == (0, "hello ADA-ada\n", "")
    assert out["stdout_truncated"] is False
    assert run.output == len("hello ADA-ada\n")


def test_shell_step_non_zero_exit_fails_with_the_exit_code():
    wf, _ = cell(
        "shell_fail",
        """
        import sys
        import kernelflow as kf

        extract = kf.shell([sys.executable, "-c", "import sys; sys.exit('no rows for today')"])
        """,
    )
    run = wf.run(raise_on_failure=False)
    error = run.state.tasks["extract"].error
    assert error["exc_type"] == "ShellStepError"
    assert error["message"] == "shell step 'extract' exited with code 1: no rows for today"


def test_shell_step_timeout_kills_it_and_records_timed_out():
    wf, _ = cell("shell_slow", 'import kernelflow as kf\nstuck = kf.shell(["sleep", "30"], timeout="0.5s")\n')
    run = wf.run(raise_on_failure=False)
    assert run.status == "failed"
    assert run.state.tasks["stuck"].status == "timed_out"
    (timed_out,) = payloads(run, "TaskTimedOut", "stuck")
    assert timed_out["timeout_s"] == 0.5
    assert timed_out["error"]["exc_type"] == "StepTimeoutError"
    assert timed_out["error"]["message"] == "shell step 'stuck' timed out after 0.5s; its process group was stopped"


def test_http_step_posts_a_templated_body_and_returns_the_json(http_server):
    http_server.route("POST", "/items", status=201, json={"id": 7, "ok": True})
    http_server.route("GET", "/broken", status=503, body="down for maintenance")
    wf, _ = cell(
        "webby",
        """
        import kernelflow as kf

        def count(n):
            return n * 2

        post = kf.http("POST", URL + "/items?src={{inputs.n}}", json={"count": "{{tasks.count.output}}", "note": "n={{inputs.n}}"})

        def use(post):
            return post["id"]
        """,
        {"URL": http_server.url},
    )
    run = wf.run(n=4)
    assert run["post"] == {"id": 7, "ok": True}
    assert run.output == 7
    (request,) = [r for r in http_server.requests if r.method == "POST"]
    assert request.path == "/items?src=4"
    assert request.json == {"count": 8, "note": "n=4"}

    bad, _ = cell("webby_bad", 'import kernelflow as kf\nping = kf.http("GET", URL + "/broken")\n', {"URL": http_server.url})
    run = bad.run(raise_on_failure=False)
    error = run.state.tasks["ping"].error
    assert error["exc_type"] == "HttpStepError"
    assert error["message"] == f"http step 'ping': GET {http_server.url}/broken returned 503 Service Unavailable: down for maintenance"


def test_a_misspelt_key_suggests_the_canonical_name():
    with pytest.raises(kf.DefinitionError, match=r"unknown key 'retrys' \(did you mean 'retries'\?\)"):
        kf.step(run="python:x", retrys=2)
