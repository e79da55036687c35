"""Durable execution: crash and resume, gates answered from other processes, sleeps, determinism.

Processes are really killed (SIGKILL) and really separate; side-effect
counters in files prove what ran how many times.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kernelflow as kf
from kernelflow import events as ev
from kernelflow.approvals import ApprovalError
from kernelflow.cell_compiler import compile_cell
from kernelflow.exceptions import InputError
from kernelflow.resume import ResumeError
from kernelflow.store_access import open_store

PROCS = Path(__file__).parent / "procs"
sys.path.insert(0, str(PROCS))


@pytest.fixture(autouse=True)
def no_watcher(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests resume explicitly; the notebook watcher has its own test.
    monkeypatch.setenv("KERNELFLOW_NO_WATCH", "1")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def types_of(run_id: str) -> list[str]:
    return [e.type for e in open_store().read_run(run_id)]


def start_crashy(tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    (tmp_path / "hang").touch()
    proc = subprocess.Popen([sys.executable, str(PROCS / "crashy_flow.py"), str(tmp_path)], env=dict(os.environ))
    wait_for(lambda: (tmp_path / "slow.started").exists(), what="the slow task to start")
    return proc, (tmp_path / "run_id").read_text()


# --- crash and resume -----------------------------------------------------------------


def test_a_killed_process_is_resumed_without_rerunning_completed_tasks(tmp_path: Path) -> None:
    import crashy_flow

    proc, run_id = start_crashy(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = open_store()
    state = kf.fold(store.read_run(run_id))
    assert state.status == "running" and state.tasks["slow"].status == "running"
    assert store.lease_holder(run_id) is None  # the OS dropped the dead driver's lease

    (tmp_path / "hang").unlink()
    run = kf.resume(run_id, workflow=crashy_flow.build(str(tmp_path)))
    assert run.status == "succeeded"
    assert run["report"] == "total 6 (receipt-1)"
    assert lines(tmp_path / "extract") == ["x"]  # completed before the crash: not again
    assert lines(tmp_path / "payment") == ["x"]  # remembered side effect: not again
    slow = lines(tmp_path / "slow")
    assert len(slow) == 2  # in flight at the crash: at least once more
    assert slow[0].split()[0] == slow[1].split()[0] == f"{run_id}/slow#0"  # the same idempotency key
    assert slow[0].endswith("attempt=1") and slow[1].endswith("attempt=2")
    resumed = next(e for e in store.read_run(run_id) if e.type == ev.RUN_RESUMED)
    assert resumed.payload["interrupted"] is True and resumed.payload["reset"] == ["slow"]
    assert kf.sql("SELECT status FROM runs WHERE run_id = ?", [run_id])["status"][0] == "succeeded"


def test_resume_refuses_a_run_driven_by_a_live_process(tmp_path: Path) -> None:
    import crashy_flow

    proc, run_id = start_crashy(tmp_path)
    try:
        before = len(open_store().read_run(run_id))
        with pytest.raises(ResumeError, match=rf"run {run_id} is being driven right now by pid {proc.pid}"):
            kf.resume(run_id, workflow=crashy_flow.build(str(tmp_path)))
        assert len(open_store().read_run(run_id)) == before  # nothing written
    finally:
        (tmp_path / "hang").unlink()
        proc.wait(timeout=60)
    assert proc.returncode == 0
    with pytest.raises(ResumeError, match="already succeeded; there is nothing to resume"):
        kf.resume(run_id, workflow=crashy_flow.build(str(tmp_path)))


def test_resume_of_an_unknown_run_is_a_clear_error_and_writes_nothing(kernelflow_home: Path) -> None:
    with pytest.raises(ResumeError, match="no run 'r-nope' in the store"):
        kf.resume("r-nope")
    assert not kernelflow_home.exists()


def test_a_failed_run_is_fixed_and_resumed(tmp_path: Path) -> None:
    calls = {"extract": 0}
    ns: dict = {"calls": calls}
    src = "def extract():\n    calls['extract'] += 1\n    return [1, -2]\ndef clean(extract):\n    return [1 / (x > 0) for x in extract]\n"
    wf = compile_cell("fixme", src, ns)
    run = wf.run(raise_on_failure=False)
    assert run.status == "failed" and run.state.tasks["clean"].status == "failed"
    fixed = compile_cell("fixme", src.replace("1 / (x > 0)", "x"), ns)
    run.resume()
    assert run.status == "succeeded" and run["clean"] == [1, -2]
    assert calls["extract"] == 1
    resumed = next(e for e in run.store.read_run(run.run_id) if e.type == ev.RUN_RESUMED)
    assert resumed.payload["from_version"] != resumed.payload["version"] == fixed.version


def test_sleep_steps_record_a_wake_up_time_that_a_resumed_run_keeps(tmp_path: Path) -> None:
    yaml = tmp_path / "nap.yaml"
    marker = tmp_path / "before"
    yaml.write_text(
        "tasks:\n"
        f"  - id: before\n    run: shell\n    argv: [sh, -c, 'echo x >> {marker}']\n"
        "  - id: nap\n    needs: [before]\n    sleep: 1.5s\n"
        "  - id: after\n    needs: [nap]\n    run: shell\n    argv: [echo, done]\n"
    )
    code = (
        "import sys, kernelflow as kf\n"
        f"wf = kf.load({str(yaml)!r})\n"
        "wf.run(run_id='r-nap')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    store = open_store()
    wait_for(lambda: ev.SLEEP_STARTED in types_of("r-nap"), what="the sleep to start")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wake_at = next(e for e in store.read_run("r-nap") if e.type == ev.SLEEP_STARTED).payload["wake_at"]
    out = subprocess.run([sys.executable, "-m", "kernelflow", "resume", "r-nap"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    events = store.read_run("r-nap")
    assert [e.type for e in events].count(ev.SLEEP_STARTED) == 1  # no new sleep: the remainder of the old one
    woke = next(e for e in events if e.type == ev.TASK_SUCCEEDED and e.task_id == "nap")
    assert woke.ts >= wake_at
    assert lines(marker) == ["x"]
    assert kf.fold(events).status == "succeeded"


# --- approval gates ---------------------------------------------------------------------


GATED = '''
import kernelflow as kf
def rows():
    return [1, 2, 3]
@kf.approval("Publish {n} rows to {table}?", input={"table": str, "limit": {"type": "int", "default": 10}}, timeout="1h")
def publish(rows, table, limit, approval):
    return {"n": len(rows[:limit]), "table": table, "by": approval.by.get("name"), "comment": approval.comment}
'''


def test_a_gate_suspends_the_run_and_records_what_it_asks() -> None:
    wf = compile_cell("gated", GATED, {})
    run = wf.run()
    assert run.status == "waiting"
    gate = run.waiting["publish"]
    assert gate["message"] == "Publish 3 rows to {table}?"
    assert gate["preview"] == {"type": "list", "items": [1, 2, 3], "length": 3}
    assert gate["input_schema"]["fields"]["table"] == {"type": "str", "required": True}
    assert gate["expires_at"] - gate["requested_at"] == 3600 * 1_000_000
    assert types_of(run.run_id)[-2:] == [ev.APPROVAL_REQUESTED, ev.RUN_SUSPENDED]
    assert open_store().lease_holder(run.run_id) is None  # nothing held while waiting
    with pytest.raises(kf.KernelflowError, match="is waiting, so it has no output yet"):
        run.output
    pending = kf.approvals().df
    assert pending.filter(pending["run_id"] == run.run_id)["status"].to_list() == ["pending"]


def test_an_approval_from_another_process_is_recorded_and_the_run_resumes() -> None:
    wf = compile_cell("gated", GATED, {})
    run = wf.run()
    cli = [sys.executable, "-m", "kernelflow", "approve", run.run_id, "publish", "-i", "table", "daily", "--by", "bob",
           "--comment", "ok"]  # fmt: skip
    out = subprocess.run(cli, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "granted by bob" in out.stdout and f"kernelflow resume {run.run_id}" in out.stdout
    granted = next(e for e in open_store().read_run(run.run_id) if e.type == ev.APPROVAL_GRANTED)
    assert granted.actor["name"] == "bob" and granted.actor["pid"] != os.getpid()
    assert granted.payload["input"] == {"table": "daily", "limit": 10}
    run.resume()
    assert run.status == "succeeded"
    assert run["publish"] == {"n": 3, "table": "daily", "by": "bob", "comment": "ok"}
    row = next(r for r in kf.approvals(None) if r["run_id"] == run.run_id)
    assert row["status"] == "granted" and row["answered_by"] == "bob"


def test_a_driving_process_picks_up_an_answer_given_elsewhere(tmp_path: Path) -> None:
    gate = tmp_path / "go"
    src = GATED + (
        "import time, pathlib\n"
        "def busy():\n"
        f"    while not pathlib.Path({str(gate)!r}).exists():\n"
        "        time.sleep(0.02)\n"
        "    return 1\n"
    )
    wf = compile_cell("gated_busy", src, {})
    run = wf.start()
    wait_for(lambda: "publish" in run.waiting, what="the gate")
    out = subprocess.run(
        [sys.executable, "-m", "kernelflow", "approve", run.run_id, "publish", "-i", "table", "t1"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "granted" in out.stdout
    answer = next(e for e in open_store().read_run(run.run_id) if e.type == ev.APPROVAL_GRANTED)
    assert answer.actor["pid"] != os.getpid()  # recorded by this driver for the answering process
    gate.touch()
    run.wait(30)
    assert run.status == "succeeded" and run["publish"]["table"] == "t1"
    assert ev.RUN_SUSPENDED not in types_of(run.run_id)  # answered while still driven: never suspended


def test_bad_answers_are_refused_and_change_nothing() -> None:
    wf = compile_cell("gated", GATED, {})
    run = wf.run(raise_on_failure=False)
    before = types_of(run.run_id)
    with pytest.raises(ApprovalError, match="no step 'publsh' \\(did you mean 'publish'\\?\\)"):
        kf.approve(run.run_id, "publsh", table="x")
    with pytest.raises(ApprovalError, match="step 'rows' of run .* is not waiting for approval \\(it is succeeded\\)"):
        kf.approve(run.run_id, "rows")
    with pytest.raises(InputError, match="table is required.*limit must be int, got str 'many'"):
        kf.approve(run.run_id, "publish", limit="many")
    with pytest.raises(InputError, match="unknown field\\(s\\) colour"):
        kf.approve(run.run_id, "publish", table="x", colour="red")
    with pytest.raises(ApprovalError, match="no run 'r-missing'"):
        kf.approve("r-missing", "publish")
    assert types_of(run.run_id) == before
    kf.reject(run.run_id, "publish", "not today", by="carol", resume=False)
    with pytest.raises(ApprovalError, match="already answered: rejected by carol .*\\(not today\\)"):
        kf.approve(run.run_id, "publish", table="x")
    run.resume()
    assert run.status == "failed"
    assert run.state.tasks["publish"].error["exc_type"] == "ApprovalRejected"
    assert "rejected by carol: not today" in run.state.tasks["publish"].error["message"]


def test_two_processes_answering_at_once_give_exactly_one_answer() -> None:
    wf = compile_cell("gated", GATED, {})
    run = wf.run()
    cmds = [
        [sys.executable, "-m", "kernelflow", "approve", run.run_id, "publish", "-i", "table", f"t{i}"] for i in range(4)
    ] + [[sys.executable, "-m", "kernelflow", "reject", run.run_id, "publish", "--reason", "no"]]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    codes = [p.wait(60) for p in procs]
    assert sorted(codes) == [0, 1, 1, 1, 1]
    losers = [p.stderr.read() for p, c in zip(procs, codes) if c]
    assert all("already answered" in text for text in losers)
    answers = [e for e in open_store().read_run(run.run_id) if e.type in ev.APPROVAL_ANSWERS]
    assert len(answers) == 1


def test_an_expired_gate_takes_its_configured_outcome() -> None:
    src = (
        "import kernelflow as kf\n"
        "def rows():\n    return [1]\n"
        "@kf.approval('ok?', timeout='0.2s', on_timeout='approve')\n"
        "def go(rows, approval):\n    return approval.expired\n"
        "@kf.approval('ok?', timeout='0.2s', on_timeout='skip')\n"
        "def maybe(rows):\n    return 1\n"
    )
    wf = compile_cell("expiring", src, {})
    run = wf.run()
    assert run.status == "waiting"
    time.sleep(0.3)
    with pytest.raises(ApprovalError, match="expired at .* \\(on_timeout: approve\\)"):
        kf.approve(run.run_id, "go")
    run.resume()
    assert run.status == "succeeded"
    assert run["go"] is True
    assert run.state.tasks["maybe"].status == "skipped"
    expired = [e for e in run.store.read_run(run.run_id) if e.type == ev.APPROVAL_EXPIRED]
    assert sorted(e.payload["outcome"] for e in expired) == ["approve", "skip"]


def test_yaml_gates_and_pydantic_inputs() -> None:
    from pydantic import BaseModel

    class Publish(BaseModel):
        table: str
        limit: int = 5

    ns = {"Publish": Publish}
    src = "import kernelflow as kf\n@kf.approval('Ship?', input=Publish)\ndef ship(approval):\n    return approval.input.limit\n"
    wf = compile_cell("typed", src, ns)
    run = wf.run()
    with pytest.raises(InputError, match="limit: Input should be a valid integer"):
        kf.approve(run.run_id, "ship", table="t", limit="x")
    kf.approve(run.run_id, "ship", table="t", limit=7, resume=False)
    run.resume()
    assert run["ship"] == 7

    flow = kf.yaml_compiler.compile_yaml(
        "yflow",
        "tasks:\n  - id: a\n    run: shell\n    argv: [echo, '4']\n"
        "  - id: review\n    needs: [a]\n    approval: {message: 'Ship {{tasks.a.output.stdout}} items?', input: {note: str}}\n",
        {},
    )
    run = flow.run()
    assert run.waiting["review"]["message"].startswith("Ship 4")
    kf.approve(run.run_id, "review", note="fine", resume=False)
    run = kf.resume(run.run_id, workflow=flow)
    assert run["review"]["approved"] is True and run["review"]["input"] == {"note": "fine"}


def test_a_batch_run_suspends_with_instructions_and_resumes_from_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELFLOW_BATCH_ID", "b-test")
    wf = compile_cell("gated", GATED, {})
    with pytest.raises(kf.exceptions.RunSuspended, match="kernelflow approve r-.* publish"):
        wf.run(run_id="r-batchgate")
    monkeypatch.delenv("KERNELFLOW_BATCH_ID")
    assert kf.fold(open_store().read_run("r-batchgate")).status == "waiting"


# --- determinism, breakpoints, fork, replay -------------------------------------------


def test_recorded_time_and_randomness_come_back_on_retry() -> None:
    seen: list = []
    src = (
        "import kernelflow as kf\n"
        "@kf.task(retries=1, retry_delay=0)\n"
        "def t():\n"
        "    v = (kf.now(), kf.random(), kf.context().attempt)\n"
        "    SEEN.append(v)\n"
        "    if v[2] == 1:\n        raise RuntimeError('first attempt fails')\n"
        "    return str(v[0])\n"
    )
    wf = compile_cell("det", src, {"SEEN": seen})
    run = wf.run()
    assert run.status == "succeeded"
    assert seen[0][:2] == seen[1][:2] and seen[0][2] == 1 and seen[1][2] == 2
    recorded = [e.payload for e in run.store.read_run(run.run_id) if e.type == ev.SIDE_EFFECT_RECORDED]
    assert [p["kind"] for p in recorded] == ["now", "random"]
    assert recorded[0]["scope"] == "t#0"


def test_breakpoint_pauses_and_resumes_with_replaced_inputs() -> None:
    src = "def raw():\n    return [3, 1]\ndef clean(raw):\n    return sorted(raw)\ndef total(clean):\n    return sum(clean)\n"
    wf = compile_cell("bp", src, {})
    run = wf.run(break_before=["clean"])
    assert run.status == "waiting" and run.waiting["clean"]["kind"] == "breakpoint"
    assert run.step_inputs("clean") == {"raw": [3, 1]}
    with pytest.raises(InputError, match="task 'clean' has no parameter 'rw'"):
        run.resume(replace={"rw": [1]})
    run.resume(replace={"raw": [5, 4]})
    assert run.status == "succeeded" and run["clean"] == [4, 5] and run["total"] == 9
    with pytest.raises(InputError, match="break_before names 'cleam'.*did you mean 'clean'"):
        wf.run(break_before=["cleam"])


def test_fork_reuses_upstream_outputs_and_records_its_parent() -> None:
    calls = {"raw": 0, "total": 0}
    src = (
        "def raw(n):\n    CALLS['raw'] += 1\n    return list(range(n))\n"
        "def scale(raw, k):\n    return [x * k for x in raw]\n"
        "def total(scale):\n    CALLS['total'] += 1\n    return sum(scale)\n"
    )
    wf = compile_cell("forky", src, {"CALLS": calls})
    run = wf.run(n=4, k=1)
    child = run.fork("scale", k=10)
    assert child["total"] == 60 and calls == {"raw": 1, "total": 2}
    started = child.store.read_run(child.run_id)[0]
    assert started.payload["forked_from"] == run.run_id and started.payload["from_step"] == "scale"
    reused = next(e for e in child.store.read_run(child.run_id) if e.task_id == "raw" and e.type == ev.TASK_SUCCEEDED)
    assert reused.payload["reused_from"] == run.run_id
    with pytest.raises(InputError, match="input 'n' is read by step 'raw'"):
        run.fork("scale", n=3)
    with pytest.raises(ResumeError, match="no step 'scal' \\(did you mean 'scale'\\?\\)"):
        run.fork("scal")


def test_replay_reports_the_first_task_that_now_differs() -> None:
    calls: list = []
    src = (
        "import kernelflow as kf\n"
        "def fetch():\n    return kf.remember(lambda: CALLS.append(1) or 41)\n"
        "def add(fetch):\n    return fetch + 1\n"
        "def label(add):\n    return 'big' if add > 41 else 'small'\n"
    )
    ns = {"CALLS": calls}
    wf = compile_cell("rp", src, ns)
    run = wf.run()
    events_before = len(run.store.read_run(run.run_id))
    same = run.replay()
    assert same.ok and not same.version_changed and calls == [1]
    compile_cell("rp", src.replace("fetch + 1", "fetch - 1"), ns)  # redefines "rp": the current definition
    report = run.replay()  # with the current definition: the changed one
    assert report.version_changed and not report.ok
    assert (report.first.task, report.first.kind) == ("add", "output")
    assert [d.task for d in report.differences] == ["add", "label"]
    assert calls == [1]  # the remembered call was not made again
    assert len(run.store.read_run(run.run_id)) == events_before  # replay writes nothing


def test_deterministic_mode_runs_one_task_at_a_time_in_order() -> None:
    src = "".join(f"def t{i}():\n    return {i}\n" for i in range(6))
    wf = compile_cell("det_order", src, {})
    run = wf.run(deterministic=True)
    starts = [e.task_id for e in run.store.read_run(run.run_id) if e.type == ev.TASK_STARTED]
    assert starts == list(wf.order)
    assert run.store.read_run(run.run_id)[0].payload["deterministic"] is True
    assert run.store.read_run(run.run_id)[0].payload["max_parallel"] == 1


def test_a_waiting_run_in_an_interactive_session_goes_on_when_answered_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KERNELFLOW_NO_WATCH")
    wf = compile_cell("gated", GATED, {})
    run = wf.run()
    assert run.status == "waiting"
    out = subprocess.run(
        [sys.executable, "-m", "kernelflow", "approve", run.run_id, "publish", "-i", "table", "w"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    wait_for(lambda: run.status == "succeeded", what="the watcher to continue the run")  # the user's own handle
    run.wait(10)
    assert run["publish"]["table"] == "w"


def test_a_branch_listed_after_a_gate_does_not_block_the_driver_from_seeing_answers() -> None:
    import threading

    done = threading.Event()
    threads: list[str] = []

    def prepare():
        return 1

    @kf.approval("ok?")
    def publish(prepare):
        done.set()
        return prepare

    def busy(prepare):
        threads.append(threading.current_thread().name)
        done.wait(10)

    wf = kf.workflow("gate_first", [prepare, publish, busy])
    run = wf.start(run_id="r-gate-first")
    wait_for(lambda: "publish" in run.waiting, what="the gate")
    kf.approve("r-gate-first", "publish", resume=False)
    run.wait(30)
    assert run.status == "succeeded" and done.is_set()
    assert threads and threads[0] != "kernelflow-run-r-gate-first"  # the branch did not run on the driver's thread


def test_an_answer_to_a_driven_run_reports_it_recorded_once_the_driver_has(tmp_path: Path) -> None:
    gate = tmp_path / "go"
    src = GATED + (
        "import time, pathlib\n"
        "def busy():\n"
        f"    while not pathlib.Path({str(gate)!r}).exists():\n"
        "        time.sleep(0.02)\n"
        "    return 1\n"
    )
    run = compile_cell("gated_busy2", src, {}).start()
    wait_for(lambda: "publish" in run.waiting, what="the gate")
    answer = kf.approve(run.run_id, "publish", table="t2")
    assert answer.recorded is True  # the driver turned the claim into the event; nothing left pending
    assert open_store().lease_holder(run.run_id) is not None  # still driven: the driver recorded it, not us
    gate.touch()
    run.wait(30)
    assert run["publish"]["table"] == "t2"


def test_an_approval_field_named_like_an_argument_of_approve_is_refused_at_definition() -> None:
    from kernelflow.exceptions import DefinitionError

    with pytest.raises(DefinitionError, match="approval input field 'comment' clashes with an argument of kf.approve"):

        @kf.approval("Note?", input={"comment": str})
        def note():
            return 1

    from pydantic import BaseModel

    class Answer(BaseModel):
        by: str

    with pytest.raises(DefinitionError, match="approval input field 'by' clashes"):

        @kf.approval("Who?", input=Answer)
        def who():
            return 1


def test_a_failure_the_run_went_on_past_is_not_run_again_when_a_gate_resumes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELFLOW_NO_WATCH", "1")
    calls: list[str] = []

    @kf.task(continue_on_failure=True)
    def optional():
        calls.append("optional")
        raise RuntimeError("optional part failed")

    def base():
        return 1

    @kf.approval("Go on?")
    def publish(base):
        return base + 1

    run = kf.workflow("continued_then_gate", [optional, base, publish]).run()
    assert run.status == "waiting" and calls == ["optional"]
    kf.approve(run.run_id, "publish", resume=False)
    resumed = kf.resume(run.run_id)
    assert resumed.status == "succeeded" and resumed["publish"] == 2
    assert calls == ["optional"]  # kept as the outcome it was, not retried
    assert resumed.state.tasks["optional"].status == "failed" and "optional" in resumed.continued
    resets = kf.sql("SELECT task_id FROM events WHERE run_id = ? AND type = 'TaskReset'", [run.run_id])
    assert resets.height == 0


@pytest.mark.slow
def test_ctrl_c_stops_a_run_whose_tasks_are_all_on_worker_threads(tmp_path: Path) -> None:
    # Once polars is imported, an untimed queue wait is not woken by SIGINT: the
    # driver must still notice Ctrl-C while both tasks sleep on worker threads.
    started = tmp_path / "started"
    script = tmp_path / "stoppable.py"
    script.write_text(
        "import pathlib, sys, time\n"
        "import kernelflow as kf\n"
        "def a():\n"
        "    pathlib.Path(sys.argv[1]).touch()\n"
        "    time.sleep(60)\n"
        "def b():\n"
        "    time.sleep(60)\n"
        "kf.workflow('stoppable', [a, b]).run()\n"
    )
    proc = subprocess.Popen([sys.executable, str(script), str(started)], stderr=subprocess.PIPE, text=True)
    wait_for(started.exists, what="the tasks to start")
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the run did not stop on SIGINT while its tasks slept for 60 s") from None
    assert "KeyboardInterrupt" in err
    (run_id,) = kf.sql("SELECT run_id FROM runs WHERE workflow = 'stoppable'")["run_id"].to_list()
    failed = next(e for e in open_store().read_run(run_id) if e.type == ev.RUN_FAILED)
    assert failed.payload["interrupted"] is True
