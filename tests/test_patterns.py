"""The workflow control-flow patterns of docs/patterns.md, checked event by event.

Numbers are those of Russell, ter Hofstede, van der Aalst and Mulyar,
"Workflow Control-Flow Patterns: A Revised View" (2006). Concurrency is
proven with barriers and events (a test that needed parallelism it did not
get fails after a timeout instead of passing by luck); nothing here asserts
on durations.
"""

from __future__ import annotations

import json
import queue
import re
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import pytest

import kernelflow as kf
from kernelflow.cell_compiler import compile_cell

PATTERNS_DOC = Path(__file__).resolve().parents[1] / "docs" / "patterns.md"


# --- reading a run's events ------------------------------------------------------------------


def events(run) -> list[tuple[int, str, str | None, dict]]:
    """(seq, type, task_id, payload) in seq order."""
    rows = run.events.select("seq", "type", "task_id", "payload").iter_rows()
    return [(seq, typ, tid, json.loads(payload) if payload else {}) for seq, typ, tid, payload in rows]


def seqs(run, type_: str, task: str | None = None) -> list[int]:
    return [s for s, t, tid, _ in events(run) if t == type_ and (task is None or tid == task)]


def seq(run, type_: str, task: str | None = None) -> int:
    """The seq of the one event of this type (for this task)."""
    found = seqs(run, type_, task)
    assert len(found) == 1, f"expected one {type_} for {task}, got {len(found)}"
    return found[0]


def payloads(run, type_: str, task: str | None = None) -> list[dict]:
    return [p for _, t, tid, p in events(run) if t == type_ and (task is None or tid == task)]


def statuses(run) -> dict[str, str]:
    return {tid: t.status for tid, t in run.state.tasks.items()}


def started(run) -> list[str]:
    return [tid for _, t, tid, _ in events(run) if t == "TaskStarted"]


def assert_clean_end(run, status: str = "succeeded") -> None:
    """The run ended with its final event last, and no task was left pending or running."""
    evs = events(run)
    assert run.status == status
    assert evs[-1][1] == ("RunSucceeded" if status == "succeeded" else "RunFailed")
    assert [s for s, *_ in evs] == list(range(len(evs)))
    assert all(t.status in ("succeeded", "failed", "skipped") for t in run.state.tasks.values()), statuses(run)


# --- 1-5: basic control flow ---------------------------------------------------------------------


def test_01_sequence():
    def extract():
        return [3, 1, 2]

    def order(extract):
        return sorted(extract)

    @kf.task(after=["order"])
    def notify():
        return "sorted"

    run = kf.workflow("p01_sequence", [extract, order, notify]).run()
    assert run["order"] == [1, 2, 3] and run.output == "sorted"
    assert started(run) == ["extract", "order", "notify"]
    # each task starts only after the one before it succeeded
    assert seq(run, "TaskSucceeded", "extract") < seq(run, "TaskStarted", "order")
    assert seq(run, "TaskSucceeded", "order") < seq(run, "TaskStarted", "notify")
    assert_clean_end(run)


def test_02_parallel_split_runs_the_branches_at_the_same_time():
    both_running = threading.Barrier(2, timeout=10)  # breaks (and fails the tasks) unless both wait at once

    def order():
        return 7

    def invoice(order):
        both_running.wait()
        return f"invoice {order}"

    def pick(order):
        both_running.wait()
        return f"pick {order}"

    run = kf.workflow("p02_split", [order, invoice, pick], max_parallel=4).run()
    assert run.output == {"invoice": "invoice 7", "pick": "pick 7"}
    starts = [seq(run, "TaskStarted", t) for t in ("invoice", "pick")]
    ends = [seq(run, "TaskSucceeded", t) for t in ("invoice", "pick")]
    assert seq(run, "TaskSucceeded", "order") < min(starts)
    assert max(starts) < min(ends)  # both were started before either finished
    assert_clean_end(run)


def test_03_synchronization_waits_for_every_branch():
    both_running = threading.Barrier(2, timeout=10)

    def invoice():
        both_running.wait()
        return 100

    def pick():
        both_running.wait()
        return "box"

    def ship(invoice, pick):
        return f"{pick} paid {invoice}"

    run = kf.workflow("p03_sync", [invoice, pick, ship]).run()
    assert run.output == "box paid 100"
    assert seq(run, "TaskStarted", "ship") > max(seq(run, "TaskSucceeded", t) for t in ("invoice", "pick"))
    assert started(run).count("ship") == 1
    assert_clean_end(run)


def test_03_synchronization_does_not_fire_when_a_branch_fails():
    def invoice():
        raise ValueError("card declined")

    def pick():
        return "box"

    def ship(invoice, pick):
        return "shipped"

    run = kf.workflow("p03_sync_fail", [invoice, pick, ship]).run(raise_on_failure=False)
    assert statuses(run) == {"invoice": "failed", "pick": "succeeded", "ship": "skipped"}
    assert "ship" not in started(run)
    assert payloads(run, "TaskSkipped", "ship") == [{"reason": "upstream task 'invoice' failed", "upstream": "invoice"}]
    assert_clean_end(run, "failed")


CHOICE_CELL = '''
def order(country):
    return {"country": country}

def by_road(order):
    return "truck"

def by_sea(order):
    return "ship"

def by_air(order):
    return "plane"

route = kf.switch("{{tasks.order.output.country}}", cases={"NL": by_road, "BR": by_sea}, default=by_air)

def book(route):
    return f"booked a {route}"
'''


@pytest.mark.parametrize(
    ("country", "case", "target", "output"),
    [("NL", "NL", "python:by_road", "truck"), ("BR", "BR", "python:by_sea", "ship"), ("JP", "default", "python:by_air", "plane")],
)
def test_04_exclusive_choice_with_a_switch(country, case, target, output):
    wf = compile_cell("p04_switch", CHOICE_CELL, {"kf": kf})
    assert wf.task_ids == ("order", "route", "book")  # the cases are not tasks
    run = wf.run(country=country)
    assert run["route"] == output and run.output == f"booked a {output}"
    assert payloads(run, "SwitchMatched", "route") == [{"value": country, "case": case, "target": target}]
    assert seq(run, "TaskStarted", "route") < seq(run, "SwitchMatched", "route") < seq(run, "TaskSucceeded", "route")
    assert_clean_end(run)


def _choice_by_when():
    def amount(n):
        return n

    @kf.task(when="{{tasks.amount.output}} > 100")
    def manual(amount):
        return "by hand"

    @kf.task(when="{{tasks.amount.output}} <= 100")
    def automatic(amount):
        return "automatic"

    def book(manual, automatic):
        return manual or automatic

    return kf.workflow("p04_p05_when", [amount, manual, automatic, book])


@pytest.mark.parametrize(("n", "chosen", "other"), [(500, "manual", "automatic"), (5, "automatic", "manual")])
def test_04_exclusive_choice_with_when_conditions(n, chosen, other):
    run = _choice_by_when().run(n=n)
    assert statuses(run)[chosen] == "succeeded" and statuses(run)[other] == "skipped"
    assert other not in started(run)
    conditions = {p["when"].split()[-2]: p["result"] for p in payloads(run, "ConditionEvaluated")}
    assert sorted(conditions.values()) == [False, True]
    assert payloads(run, "TaskSkipped", other)[0]["reason"].startswith("condition is false")
    assert_clean_end(run)


@pytest.mark.parametrize(("n", "chosen", "other", "output"), [(500, "manual", "automatic", "by hand"), (5, "automatic", "manual", "automatic")])
def test_05_simple_merge_runs_once_after_the_chosen_branch(n, chosen, other, output):
    run = _choice_by_when().run(n=n)
    assert run["book"] == output
    assert started(run).count("book") == 1
    assert seq(run, "TaskStarted", "book") > seq(run, "TaskSucceeded", chosen)
    assert seq(run, "TaskStarted", "book") > seq(run, "TaskSkipped", other)
    assert_clean_end(run)


# --- 6-9: advanced branching and synchronization ------------------------------------------------------


def _claims():
    def claim(damage, injured):
        return {"damage": damage, "injured": injured}

    @kf.task(when="{{tasks.claim.output.damage}} > 0")
    def insurer(claim):
        return "insurer"

    @kf.task(when="{{tasks.claim.output.injured}}")
    def ambulance(claim):
        return "ambulance"

    @kf.task(when="{{tasks.claim.output.damage}} > 10000 || {{tasks.claim.output.injured}} && {{tasks.claim.output.damage}} > 0")
    def police(claim):
        return "police"

    def close(insurer, ambulance, police):
        return [x for x in (insurer, ambulance, police) if x is not None]

    return kf.workflow("p06_p07_claims", [claim, insurer, ambulance, police, close])


CLAIMS = [
    (900, True, ["insurer", "ambulance", "police"]),
    (900, False, ["insurer"]),
    (20000, False, ["insurer", "police"]),
    (0, True, ["ambulance"]),
    (0, False, []),
]


@pytest.mark.parametrize(("damage", "injured", "chosen"), CLAIMS)
def test_06_multi_choice_runs_every_branch_whose_condition_holds(damage, injured, chosen):
    run = _claims().run(damage=damage, injured=injured)
    branches = ("insurer", "ambulance", "police")
    assert [t for t in branches if statuses(run)[t] == "succeeded"] == chosen
    assert [t for t in branches if statuses(run)[t] == "skipped"] == [t for t in branches if t not in chosen]
    assert sorted(t for t in started(run) if t in branches) == sorted(chosen)
    assert len(payloads(run, "ConditionEvaluated")) == 3
    assert_clean_end(run)


@pytest.mark.parametrize(("damage", "injured", "chosen"), CLAIMS)
def test_07_structured_synchronizing_merge_waits_for_the_branches_that_run(damage, injured, chosen):
    run = _claims().run(damage=damage, injured=injured)
    if not chosen:
        assert statuses(run)["close"] == "skipped" and "close" not in started(run)
        assert payloads(run, "TaskSkipped", "close")[0]["reason"] == "all upstream tasks were skipped"
        assert_clean_end(run)
        return
    assert run["close"] == chosen
    assert started(run).count("close") == 1
    last_branch = max(
        seq(run, "TaskSucceeded" if t in chosen else "TaskSkipped", t) for t in ("insurer", "ambulance", "police")
    )
    assert seq(run, "TaskStarted", "close") > last_branch
    assert_clean_end(run)


def test_08_multi_merge_partly_one_instance_per_branch_after_all_branches():
    def start(sms_too):
        return "order"

    def email(start):
        return "email"

    @kf.task(when="{{inputs.sms_too}}")
    def sms(start):
        return "sms"

    @kf.task(for_each={"items": ["{{tasks.email.output}}", "{{tasks.sms.output}}"], "as": "channel"})
    def log_delivery(channel):
        return None if channel is None else f"logged {channel}"

    wf = kf.workflow("p08_multi_merge", [start, email, sms, log_delivery])
    run = wf.run(sms_too=True)
    assert run["log_delivery"]["outputs"] == ["logged email", "logged sms"]
    assert [p["status"] for p in payloads(run, "ForEachItem", "log_delivery")] == ["succeeded"] * 2
    # the "partly": the instances start only once every branch is final, not as each arrives
    assert seq(run, "TaskStarted", "log_delivery") > max(seq(run, "TaskSucceeded", t) for t in ("email", "sms"))
    # and a skipped branch still gets an instance, with None
    run = wf.run(sms_too=False)
    assert run["log_delivery"]["outputs"] == ["logged email", None]
    assert_clean_end(run)


def test_09_structured_discriminator_partly_the_first_branch_continues_the_flow():
    use_started = threading.Event()
    slow_result: list[bool] = []
    slow_done = threading.Event()

    def _fast():
        return "fast"

    def _slow():
        # finishes only once the flow has gone on without it
        slow_result.append(use_started.wait(10))
        slow_done.set()
        return "slow"

    def first_answer():
        pool = ThreadPoolExecutor(2)
        branches = [pool.submit(_fast), pool.submit(_slow)]
        done, _ = wait(branches, return_when=FIRST_COMPLETED)
        pool.shutdown(wait=False)
        return next(iter(done)).result()

    def use(first_answer):
        use_started.set()
        return f"used {first_answer}"

    run = kf.workflow("p09_discriminator", [first_answer, use]).run()
    assert run.output == "used fast"
    assert slow_done.wait(10) and slow_result == [True]  # the slow branch ended after the flow went on
    assert_clean_end(run)


# --- 10-11: structural ---------------------------------------------------------------------------


def test_10_arbitrary_cycles_overlapping_loops_with_different_entry_points():
    trace: list[str] = []

    def fetch():
        trace.append("fetch")

    def check(fetch):
        trace.append("check")
        if trace.count("check") == 1:
            return kf.back_to("fetch")

    def publish(check):
        trace.append("publish")
        if trace.count("publish") == 1:
            return kf.back_to("check")
        return " > ".join(trace)

    run = kf.workflow("p10_cycles", [fetch, check, publish]).run()
    assert run.output == "fetch > check > fetch > check > publish > check > publish"
    jumps = payloads(run, "LoopJumped")
    assert [(j["to"], j["iteration"], j["reset"]) for j in jumps] == [
        ("fetch", 1, ["fetch", "check", "publish"]),
        ("check", 1, ["check", "publish"]),
    ]
    assert [tid for _, t, tid, _ in events(run) if t == "TaskReset"] == ["fetch", "check", "check", "publish"]
    assert started(run) == ["fetch", "check", "fetch", "check", "publish", "check", "publish"]
    assert {t: (s.attempt, s.iteration) for t, s in run.state.tasks.items()} == {
        "fetch": (2, 1),
        "check": (3, 2),
        "publish": (2, 1),
    }
    assert_clean_end(run)


def test_11_implicit_termination_the_run_ends_when_nothing_is_left():
    def start():
        return 1

    def short(start):
        return "short"

    def long_first(start):
        return 2

    def long_second(long_first):
        return "long"

    @kf.task(when="false")
    def never(start):
        return "never"

    run = kf.workflow("p11_implicit", [start, short, long_first, long_second, never]).run()
    assert run.output == {"short": "short", "long_second": "long", "never": None}
    evs = events(run)
    final_task_events = [s for s, t, _, _ in evs if t in ("TaskSucceeded", "TaskSkipped")]
    assert evs[-1][1] == "RunSucceeded" and evs[-1][0] > max(final_task_events)
    assert len(final_task_events) == 5  # every task reached a final status before the run ended
    assert_clean_end(run)


# --- 12-15: multiple instances ------------------------------------------------------------------------


def test_12_multiple_instances_without_synchronization():
    released = threading.Event()

    def batch():
        return ["a", "b", "c"]

    @kf.task(for_each={"items": "{{tasks.batch.output}}", "as": "name"})
    def notify(name):
        assert released.wait(10), "the flow waited for the instances"
        return f"notified {name}"

    def go_on(batch):
        released.set()
        return "not waiting"

    run = kf.workflow("p12_mi_no_sync", [batch, notify, go_on]).run()
    assert run["go_on"] == "not waiting"
    assert run["notify"]["outputs"] == ["notified a", "notified b", "notified c"]
    items = seqs(run, "ForEachItem", "notify")
    assert len(items) == 3
    assert seq(run, "ForEachStarted", "notify") < seq(run, "TaskStarted", "go_on") < min(items)
    assert_clean_end(run)


def test_13_multiple_instances_with_design_time_knowledge_and_max_parallel():
    pairs = threading.Barrier(2, timeout=10)  # needs two instances at once: proves max_parallel=2 is reached
    active, peak, lock = [0], [0], threading.Lock()

    @kf.for_each(["eu", "us", "ap", "sa"], as_="region", max_parallel=2)
    def deploy(region):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        pairs.wait()
        with lock:
            active[0] -= 1
        return f"deployed {region}"

    def announce(deploy):
        return f"{deploy['succeeded']} of {deploy['count']} regions"

    run = kf.workflow("p13_mi_design", [deploy, announce]).run()
    assert run["deploy"] == {
        "outputs": ["deployed eu", "deployed us", "deployed ap", "deployed sa"],
        "count": 4,
        "succeeded": 4,
        "failed": 0,
        "errors": [],
    }
    assert peak == [2]
    assert payloads(run, "ForEachStarted", "deploy") == [{"path": [], "count": 4}]
    assert sorted(p["index"] for p in payloads(run, "ForEachItem", "deploy")) == [0, 1, 2, 3]
    assert seq(run, "TaskStarted", "announce") > max(seqs(run, "ForEachItem", "deploy"))  # synchronised
    assert run.output == "4 of 4 regions"
    assert_clean_end(run)


@pytest.mark.parametrize("n", [0, 1, 5])
def test_14_multiple_instances_with_run_time_knowledge(n):
    def files(n):
        return [f"part-{i}.csv" for i in range(n)]

    @kf.task(for_each={"items": "{{tasks.files.output}}", "as": "name", "max_parallel": 3})
    def load(name):
        return name.upper()

    @kf.task(for_each={"items": "{{inputs.extra}}", "as": "x"})
    def extra(x):
        return x * 2

    def total(load, extra):
        return load["count"] + extra["count"]

    run = kf.workflow("p14_mi_run_time", [files, load, extra, total]).run(n=n, extra=list(range(n)))
    assert run["load"]["outputs"] == [f"PART-{i}.CSV" for i in range(n)]
    assert run["extra"]["outputs"] == [2 * i for i in range(n)]
    assert payloads(run, "ForEachStarted", "load") == [{"path": [], "count": n}]
    assert len(payloads(run, "ForEachItem", "load")) == n
    assert seq(run, "ForEachStarted", "load") > seq(run, "TaskSucceeded", "files")  # the count came from the run
    assert run.output == 2 * n
    assert_clean_end(run)


def test_15_multiple_instances_without_run_time_knowledge_partly_batches_in_a_loop():
    inbox = [["a", "b"], ["c"], ["d", "e", "f"]]
    handled: list[str] = []

    def take_batch():
        return inbox.pop(0)

    @kf.task(for_each={"items": "{{tasks.take_batch.output}}", "as": "item"})
    def handle(item):
        handled.append(item)
        return item

    @kf.task(back_to={"step": "take_batch", "when": "{{output}} > 0", "max_iterations": 50})
    def more(handle):
        return len(inbox)

    run = kf.workflow("p15_mi_unknown", [take_batch, handle, more]).run()
    assert sorted(handled) == ["a", "b", "c", "d", "e", "f"]
    assert [p["count"] for p in payloads(run, "ForEachStarted", "handle")] == [2, 1, 3]
    assert [p["iteration"] for p in payloads(run, "LoopJumped", "more")] == [1, 2]
    assert run["handle"]["outputs"] == ["d", "e", "f"]  # the last iteration's instances
    assert run.state.tasks["handle"].iteration == 2
    assert_clean_end(run)


# --- 16: state-based -----------------------------------------------------------------------------------

DEFERRED_CELL = '''
def wait_for_customer():
    waiting.set()
    return outside.get(timeout=10)

def ship(wait_for_customer):
    return "shipped"

def refund(wait_for_customer):
    return "refunded"

decide = kf.switch("{{tasks.wait_for_customer.output}}", cases={"paid": ship, "cancelled": refund})
'''


@pytest.mark.parametrize(("message", "outcome"), [("paid", "shipped"), ("cancelled", "refunded")])
def test_16_deferred_choice_partly_the_environment_decides_while_the_run_waits(message, outcome):
    outside: queue.Queue[str] = queue.Queue()
    waiting = threading.Event()
    wf = compile_cell("p16_deferred", DEFERRED_CELL, {"kf": kf, "outside": outside, "waiting": waiting})
    run = wf.start()
    assert waiting.wait(10)  # the run is waiting: both branches are still possible
    assert statuses(run)["decide"] == "pending"
    outside.put(message)
    run.wait(10)
    assert run["decide"] == outcome
    assert [p["case"] for p in payloads(run, "SwitchMatched", "decide")] == [message]
    assert seq(run, "TaskSucceeded", "wait_for_customer") < seq(run, "SwitchMatched", "decide")
    assert_clean_end(run)


GATED_DEFERRED_CELL = '''
@kf.approval("Paid or cancelled?", input={"event": str})
def customer(event):
    return event

def ship(customer):
    return "shipped"

def refund(customer):
    return "refunded"

decide = kf.switch("{{tasks.customer.output}}", cases={"paid": ship, "cancelled": refund})
'''


@pytest.mark.parametrize(("first", "second", "outcome"), [("paid", "cancelled", "shipped"), ("cancelled", "paid", "refunded")])
def test_16_deferred_choice_partly_a_durable_gate_takes_the_first_answer(first, second, outcome):
    from kernelflow.approvals import ApprovalError

    wf = compile_cell("p16_gate", GATED_DEFERRED_CELL, {"kf": kf})
    run = wf.run()
    assert run.status == "waiting" and statuses(run)["decide"] == "pending"  # both branches still possible
    assert kf.open_store().lease_holder(run.run_id) is None  # suspended: no process holds the run
    kf.approve(run.run_id, "customer", event=first)
    with pytest.raises(ApprovalError, match="already answered"):
        kf.approve(run.run_id, "customer", event=second)  # the environment's other event is too late
    run.wait(10)
    assert run["decide"] == outcome
    assert [p["case"] for p in payloads(run, "SwitchMatched", "decide")] == [first]
    assert seq(run, "ApprovalGranted", "customer") < seq(run, "SwitchMatched", "decide")
    assert_clean_end(run)


# --- 23: triggers -----------------------------------------------------------------------------------------


def test_23_transient_trigger_partly_a_trigger_before_the_gate_waits_is_lost():
    from kernelflow.approvals import ApprovalError

    outcome = {}

    def prepare():
        try:
            kf.approve(kf.context().run_id, "dispatch")
        except ApprovalError as err:
            outcome["early"] = str(err)
        return "ready"

    @kf.approval("Dispatch?")
    def dispatch(prepare):
        return "dispatched"

    run = kf.workflow("p23_transient", [prepare, dispatch]).run()
    assert "is not waiting for approval" in outcome["early"]
    assert run.status == "waiting" and statuses(run)["dispatch"] == "waiting"
    assert not payloads(run, "ApprovalGranted")  # the early trigger left nothing behind
    kf.approve(run.run_id, "dispatch")
    run.wait(10)
    assert run.output == "dispatched"
    assert seq(run, "ApprovalRequested", "dispatch") < seq(run, "ApprovalGranted", "dispatch")
    assert_clean_end(run)


# --- 19-21: cancellation and loops ---------------------------------------------------------------------


def test_19_cancel_task_when_false_withdraws_it_before_it_starts():
    def order(express):
        return {"express": express}

    @kf.task(when="!{{tasks.order.output.express}}")
    def consolidate(order):
        return "waited for a full truck"

    def ship(order, consolidate):
        return f"shipped ({consolidate or 'express'})"

    wf = kf.workflow("p19_cancel_when", [order, consolidate, ship])
    run = wf.run(express=True)
    assert statuses(run) == {"order": "succeeded", "consolidate": "skipped", "ship": "succeeded"}
    assert "consolidate" not in started(run)
    assert payloads(run, "ConditionEvaluated", "consolidate") == [{"when": "!{{tasks.order.output.express}}", "result": False}]
    assert seq(run, "ConditionEvaluated", "consolidate") < seq(run, "TaskSkipped", "consolidate")
    assert run["ship"] == "shipped (express)"
    assert wf.run(express=False)["ship"] == "shipped (waited for a full truck)"
    assert_clean_end(run)


def test_19_cancel_task_skip_to_withdraws_the_tasks_in_between():
    def check(rows):
        if not rows:
            return kf.skip_to("report", output=[])
        return rows

    def transform(check):
        return [r * 2 for r in check]

    def report(check, transform):
        return transform if transform is not None else "nothing to do"

    wf = kf.workflow("p19_cancel_skip_to", [check, transform, report])
    run = wf.run(rows=[])
    assert run.output == "nothing to do"
    assert "transform" not in started(run)
    assert payloads(run, "LoopJumped", "check") == [{"kind": "skip_to", "to": "report", "skipped": ["transform"]}]
    assert payloads(run, "TaskSkipped", "transform") == [{"reason": "skipped by skip_to from 'check'", "skip_to": "report"}]
    assert seq(run, "TaskSucceeded", "check") < seq(run, "LoopJumped", "check") < seq(run, "TaskSkipped", "transform")
    assert wf.run(rows=[1, 2]).output == [2, 4]
    assert_clean_end(run)


def test_19_cancel_task_a_running_task_that_times_out_is_skipped():
    stop = threading.Event()

    @kf.task(timeout="200ms", on_timeout="skip")
    def slow_lookup():
        stop.wait(10)
        return "late"

    def carry_on(slow_lookup):
        return slow_lookup or "without the lookup"

    def other():
        return "other"

    try:
        run = kf.workflow("p19_cancel_timeout", [slow_lookup, carry_on, other]).run()
    finally:
        stop.set()
    assert statuses(run)["slow_lookup"] == "skipped"
    assert seq(run, "TaskStarted", "slow_lookup") < seq(run, "TaskTimedOut", "slow_lookup") < seq(run, "TaskSkipped", "slow_lookup")
    # carry_on's only upstream task was skipped, so it is skipped too (rule 3)
    assert statuses(run)["carry_on"] == "skipped" and run["other"] == "other"
    assert_clean_end(run)


def test_20_cancel_case_partly_failure_skips_downstream_and_compensates():
    undone: list[str] = []

    def _release_seat(reserve):
        undone.append(f"released {reserve}")

    def _refund(charge):
        undone.append(f"refunded {charge}")

    @kf.task(compensate=_release_seat)
    def reserve():
        return "seat 12A"

    @kf.task(compensate=_refund)
    def charge(reserve):
        return "EUR 90"

    def confirm(charge):
        raise RuntimeError("the airline said no")

    def email(confirm):
        return "never sent"

    def newsletter():
        return "independent branch"

    wf = kf.workflow("p20_cancel_case", [reserve, charge, confirm, email, newsletter])
    with pytest.raises(kf.RunFailedError, match="the airline said no") as err:
        wf.run()
    run = err.value.run
    assert undone == ["refunded EUR 90", "released seat 12A"]
    assert statuses(run) == {
        "reserve": "succeeded",
        "charge": "succeeded",
        "confirm": "failed",
        "email": "skipped",
        "newsletter": "succeeded",  # the "partly": an independent branch is not cancelled
    }
    assert "email" not in started(run)
    compensation = [(t, tid) for _, t, tid, _ in events(run) if t.startswith("Compensation")]
    assert compensation == [
        ("CompensationStarted", "charge"),
        ("CompensationSucceeded", "charge"),
        ("CompensationStarted", "reserve"),
        ("CompensationSucceeded", "reserve"),
    ]
    assert seq(run, "TaskFailed", "confirm") < seqs(run, "CompensationStarted")[0]
    assert seqs(run, "CompensationSucceeded")[-1] < seq(run, "RunFailed")
    assert payloads(run, "RunFailed")[0]["failed_tasks"] == ["confirm"]
    assert_clean_end(run, "failed")


@pytest.mark.parametrize("pages", [1, 3])
def test_21_structured_loop_repeat_until_runs_the_body_at_least_once(pages):
    fetched: list[int] = []

    @kf.task(back_to={"step": "fetch_page", "when": "{{output.more}}", "max_iterations": 10})
    def fetch_page(total_pages):
        fetched.append(len(fetched) + 1)
        return {"page": fetched[-1], "more": len(fetched) < total_pages}

    def done(fetch_page):
        return f"{len(fetched)} pages"

    run = kf.workflow("p21_repeat", [fetch_page, done]).run(total_pages=pages)
    assert run.output == f"{pages} pages"
    assert started(run) == ["fetch_page"] * pages + ["done"]
    assert len(payloads(run, "LoopJumped", "fetch_page")) == pages - 1
    # the test comes after the body: each jump follows the body's success
    for jump in seqs(run, "LoopJumped", "fetch_page"):
        assert max(s for s in seqs(run, "TaskSucceeded", "fetch_page") if s < jump) == jump - 1
    assert_clean_end(run)


@pytest.mark.parametrize("items", [[], ["x"], ["x", "y", "z"]])
def test_21_structured_loop_while_may_run_the_body_zero_times(items):
    todo = list(items)
    done_items: list[str] = []

    @kf.task(skip_to={"step": "after_loop", "when": "{{output}} == 0"})
    def test():
        return len(todo)

    @kf.task(back_to={"step": "test", "max_iterations": 10})
    def body(test):
        done_items.append(todo.pop())

    def after_loop(body):
        return "loop done"

    run = kf.workflow("p21_while", [test, body, after_loop]).run()
    assert run.output == "loop done"
    assert sorted(done_items) == sorted(items) and todo == []
    assert started(run) == ["test", "body"] * len(items) + ["test", "after_loop"]
    assert payloads(run, "LoopJumped", "test") == [{"kind": "skip_to", "to": "after_loop", "skipped": ["body"]}]
    assert len(payloads(run, "LoopJumped", "body")) == len(items)
    assert_clean_end(run)


def test_21_structured_loop_stops_at_its_iteration_limit():
    @kf.task(back_to={"step": "spin", "when": "true", "max_iterations": 3})
    def spin():
        return "again"

    def after(spin):
        return "never"

    run = kf.workflow("p21_limit", [spin, after]).run(raise_on_failure=False)
    assert started(run) == ["spin"] * 4
    assert len(payloads(run, "LoopJumped", "spin")) == 3
    error = run.state.tasks["spin"].error
    assert error["exc_type"] == "StepFailed" and "exceeded its limit of 3 iterations" in error["message"]
    assert statuses(run)["after"] == "skipped"
    assert_clean_end(run, "failed")


def test_21_nested_loops_count_their_iterations_per_entry():
    batches = ["a", "b", "c"]
    polls: list[str] = []

    def batch():
        polls.clear()
        return batches.pop(0)

    @kf.task(back_to={"step": "poll", "when": "{{output}} < 3", "max_iterations": 3})
    def poll(batch):  # 2 jumps per batch, within its limit of 3
        polls.append(batch)
        return len(polls)

    @kf.task(back_to={"step": "batch", "when": "{{output}} > 0", "max_iterations": 5})
    def more(poll):
        return len(batches)

    run = kf.workflow("p21_nested", [batch, poll, more]).run(raise_on_failure=False)
    assert run.state.error is None
    assert run.status == "succeeded"
    assert len(payloads(run, "LoopJumped", "poll")) == 6


def test_skip_to_target_follows_rule_3_again_after_a_loop_resets_it():
    iteration: list[int] = []

    def a():
        iteration.append(1)
        if len(iteration) == 1:
            return kf.skip_to("c")  # first iteration: c is a skip_to target
        return len(iteration)

    @kf.task(when="{{tasks.a.output}} != 2")
    def b(a):
        return "b"

    def c(b):
        return "c ran"

    def d(c):
        if len(iteration) < 2:
            return kf.back_to("a")
        return "end"

    run = kf.workflow("p19_forced", [a, b, c, d]).run()
    # second iteration: b is skipped by its condition, so c (all upstream skipped) must be skipped too
    assert statuses(run)["b"] == "skipped"
    assert statuses(run)["c"] == "skipped"


# --- partly supported patterns beyond the required ones ------------------------------------------------


def test_17_40_interleaved_routing_in_a_sub_workflow_with_max_parallel_1():
    # one of the child's tasks meets the parent's other branch: the child runs alongside the rest
    # of the parent while its own tasks run one at a time
    alongside = threading.Barrier(2, timeout=10)

    def audit():
        return "audited"

    def backup():
        alongside.wait()
        return "backed up"

    def report(audit):
        return "reported"

    maintenance = kf.workflow("p17_maintenance", [audit, backup, report], max_parallel=1)
    cell = '''
def start():
    return 1

serial = kf.subworkflow(maintenance, after=["start"])

def meanwhile(start):
    alongside.wait()
    return "alongside"
'''
    run = compile_cell("p17_nightly", cell, {"kf": kf, "maintenance": maintenance, "alongside": alongside}).run()
    assert run["serial"] == {"backup": "backed up", "report": "reported"}
    child_id = kf.sql("SELECT run_id FROM runs WHERE workflow = 'p17_maintenance'")["run_id"][0]
    child = kf.sql(
        "SELECT type, task_id FROM events WHERE run_id = ? AND type IN ('TaskStarted', 'TaskSucceeded') ORDER BY seq",
        [child_id],
    ).rows()
    assert [t for t, _ in child] == ["TaskStarted", "TaskSucceeded"] * 3  # never two at once
    order = [tid for t, tid in child if t == "TaskStarted"]
    assert order.index("audit") < order.index("report")  # the partial order holds
    assert_clean_end(run)


def test_25_cancel_region_partly_skip_to_withdraws_a_region_only():
    def validate(rows):
        if all(r == r.strip() for r in rows):
            return kf.skip_to("publish", output=rows)
        return rows

    def strip(validate):
        return [r.strip() for r in validate]

    def dedupe(strip):
        return sorted(set(strip))

    def publish(validate, dedupe):
        return dedupe if dedupe is not None else validate

    def audit(validate):
        return len(validate)

    wf = kf.workflow("p25_region", [validate, strip, dedupe, publish, audit])
    run = wf.run(rows=["a", "b"])
    assert payloads(run, "LoopJumped", "validate") == [{"kind": "skip_to", "to": "publish", "skipped": ["strip", "dedupe"]}]
    assert not {"strip", "dedupe"} & set(started(run))
    assert run.output == {"publish": ["a", "b"], "audit": 2}
    assert wf.run(rows=[" b", "a", "a "])["publish"] == ["a", "b"]
    assert_clean_end(run)


def test_37_local_synchronizing_merge_skipping_spreads_down_a_branch():
    def request(urgent):
        return urgent

    @kf.task(when="{{tasks.request.output}}")
    def page_oncall(request):
        return "paged"

    def escalate(page_oncall):
        return "escalated"

    def ticket(request):
        return "ticket"

    def close(escalate, ticket):
        return [x for x in (escalate, ticket) if x]

    wf = kf.workflow("p37_local_merge", [request, page_oncall, escalate, ticket, close])
    run = wf.run(urgent=False)
    assert payloads(run, "TaskSkipped", "escalate") == [{"reason": "all upstream tasks were skipped", "upstream": ["page_oncall"]}]
    assert run["close"] == ["ticket"] and started(run).count("close") == 1
    assert seq(run, "TaskStarted", "close") > max(seq(run, "TaskSkipped", "escalate"), seq(run, "TaskSucceeded", "ticket"))
    assert wf.run(urgent=True)["close"] == ["escalated", "ticket"]
    assert_clean_end(run)


def test_38_general_synchronizing_merge_partly_waits_for_the_last_iteration():
    polls: list[str] = []

    def start():
        return "job"

    @kf.task(back_to={"step": "poll", "when": "{{output}} < 3", "max_iterations": 10})
    def poll(start):
        polls.append(start)
        return len(polls)

    @kf.task(when="{{inputs.notify}}")
    def notify(start):
        return "notified"

    def merge(poll, notify):
        return {"polls": poll, "notified": notify is not None}

    run = kf.workflow("p38_general_merge", [start, poll, notify, merge]).run(notify=False)
    assert run["merge"] == {"polls": 3, "notified": False}
    assert started(run).count("merge") == 1 and started(run).count("poll") == 3
    assert seq(run, "TaskStarted", "merge") > max(seqs(run, "TaskSucceeded", "poll"))
    assert_clean_end(run)


def test_30_structured_partial_join_partly_n_of_m_inside_one_task():
    third_may_finish = threading.Event()

    def _replica(name):
        if name == "r3":
            third_may_finish.wait(10)
        return name

    def quorum():
        pool = ThreadPoolExecutor(3)
        pending = {pool.submit(_replica, n) for n in ("r1", "r2", "r3")}
        acks: list[str] = []
        while len(acks) < 2:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            acks += [f.result() for f in done]
        pool.shutdown(wait=False)
        return sorted(acks)

    try:
        run = kf.workflow("p30_partial_join", [quorum]).run()
    finally:
        third_may_finish.set()
    assert run.output == ["r1", "r2"]


# --- the document itself ------------------------------------------------------------------------------


def test_the_pattern_table_lists_all_43_with_consistent_counts():
    text = PATTERNS_DOC.read_text()
    summary = text.split("## Summary", 1)[1].split("## Supported", 1)[0]
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \| (supported|partly|not) \|", summary, flags=re.MULTILINE)
    assert [int(n) for n, _, _ in rows] == list(range(1, 44))
    counts = {kind: sum(1 for *_, k in rows if k == kind) for kind in ("supported", "partly", "not")}
    assert f"{counts['supported']} supported, {counts['partly']} partly supported, {counts['not']} not supported" in summary
    names = {int(n): name.strip() for n, name, _ in rows}
    assert names[1] == "Sequence" and names[21] == "Structured Loop" and names[43] == "Explicit Termination"
    # every supported or partly supported pattern has an example section; every "not" a reason
    for n, name, kind in rows:
        if kind == "not":
            assert re.search(rf"^\| {n} \| {re.escape(name.strip())} \| \S", text.split("## Not supported", 1)[1], flags=re.MULTILINE), n
        else:
            heading = re.search(rf"^### {n}\. (.+)$", text, flags=re.MULTILINE)
            assert heading, f"pattern {n} has no example section"
            section = text[heading.end():].split("\n### ", 1)[0]
            assert "```python" in section, f"pattern {n} has no example"
            assert ("(partly)" in heading.group(1)) == (kind == "partly"), n
    required = {1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 19, 21}
    assert {int(n) for n, _, k in rows if k == "supported"} >= required
    assert {int(n) for n, _, k in rows if k == "partly"} >= {8, 9, 15, 16, 20}
