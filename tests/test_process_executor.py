"""The ``processes`` executor with real worker processes: values, notebooks, scripts, retries, timeouts, deaths, logs.

Functions at module level travel by reference (the worker imports this file
from the same sys.path); functions defined inside a test, in a notebook cell
or in a script's ``__main__`` travel by value.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import kernelflow as kf
from kernelflow import events as ev
from kernelflow.executor_api import TaskCall
from kernelflow.plugin_host import executor_spec
from kernelflow.plugins.process_executor import ProcessExecutor, cpu_count

pytestmark = pytest.mark.slow  # every test starts worker processes


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- tasks sent by reference ---------------------------------------------------------------------


def numbers(n: int) -> list[int]:
    return list(range(n))


@kf.task(executor="processes")
def square_sum(numbers: list[int]) -> dict:
    total = 0
    for _ in range(20):  # some real CPU work
        total = sum(i * i for i in numbers)
    return {"pid": os.getpid(), "total": total}


@kf.task(executor="processes")
def again(square_sum: dict) -> dict:
    return {"pid": os.getpid(), "total": square_sum["total"]}


def report_pid(path: str) -> int:
    Path(path).write_text(str(os.getpid()))
    return os.getpid()


def spin_forever(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    while True:
        pass


# --- values cross, workers are reused and stop with the run ----------------------------------------


def test_cpu_bound_tasks_run_in_worker_processes_and_values_pass():
    wf = kf.workflow("crunch", [numbers, square_sum, again])
    run = wf.run(n=1000)
    expected = sum(i * i for i in range(1000))
    first, second = run["square_sum"], run["again"]
    assert first["total"] == second["total"] == expected
    assert first["pid"] != os.getpid()
    assert second["pid"] == first["pid"], "the second task should reuse the run's idle worker"
    started = {e.task_id: e.payload["executor"] for e in kf.open_store().read_run(run.run_id) if e.type == ev.TASK_STARTED}
    assert started == {"numbers": "threads", "square_sum": "processes", "again": "processes"}
    assert gone(first["pid"]), "the run ended: its workers must stop"


def test_workers_are_capped_at_the_cpus_and_run_side_by_side(tmp_path: Path):
    def napping(i: int) -> int:  # defined here: travels by value
        time.sleep(0.5)
        return os.getpid()

    tasks = []
    for i in range(4):
        tasks.append(kf.task(executor="processes", input={"i": i})(_renamed(napping, f"nap{i}")))
    run = kf.workflow("naps", tasks, max_parallel=4).run()
    pids = {run[f"nap{i}"] for i in range(4)}
    assert os.getpid() not in pids
    assert len(pids) == min(4, cpu_count())
    assert all(gone(pid) for pid in pids)


def _renamed(fn, name):
    def renamed(i: int) -> int:
        return fn(i)

    renamed.__name__ = renamed.__qualname__ = name
    return renamed


# --- notebooks and scripts ---------------------------------------------------------------------------


NOTEBOOK = [
    "import os\nimport kernelflow as kf",
    textwrap.dedent("""\
        class Point:  # defined in the notebook: it travels by value
            def __init__(self, x):
                self.x = x

        def make(n):
            return [Point(i) for i in range(n)]

        def total(make):
            return {"pid": os.getpid(), "sum": sum(p.x for p in make), "types": sorted({type(p).__name__ for p in make})}
        """),
    textwrap.dedent("""\
        run = kf.workflow("nb_processes", [make, total], executor="processes").run(n=5)
        assert run.output["sum"] == 10 and run.output["types"] == ["Point"], run.output
        assert run.output["pid"] != os.getpid()
        assert isinstance(run["make"][0], Point)
        print("worker", run.output["pid"], "kernel", os.getpid())
        """),
]


def test_functions_and_classes_defined_in_a_notebook_cell_run_on_processes(tmp_path: Path, kernel_env: Path):
    import nbformat  # here, not at the top: workers import this module for its tasks, and these take 2 s
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in NOTEBOOK]
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [f"{o.get('ename')}: {o.get('evalue')}" for c in nb.cells for o in c.outputs if o.output_type == "error"]
    assert errors == []
    printed = "".join(o.get("text", "") for o in nb.cells[2].outputs)
    worker, kernel = printed.split()[1], printed.split()[3]
    assert worker != kernel


SCRIPT = """\
import os, sys, json
import kernelflow as kf

# No `if __name__ == "__main__":` guard: multiprocessing's spawn would run this again in every worker.
with open(sys.argv[1], "a") as f:
    f.write(f"{os.getpid()}\\n")

def left():
    return os.getpid()

def right():
    return os.getpid()

run = kf.workflow("unguarded", [left, right], executor="processes", max_parallel=2).run()
print(json.dumps({"main": os.getpid(), "left": run["left"], "right": run["right"]}))
"""


def test_a_script_without_a_main_guard_does_not_run_again_in_the_workers(tmp_path: Path):
    script, marker = tmp_path / "unguarded.py", tmp_path / "bodies.txt"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(marker)], capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    pids = json.loads(done.stdout.strip().splitlines()[-1])
    assert marker.read_text().split() == [str(pids["main"])], "the script's body ran more than once"
    assert pids["main"] not in (pids["left"], pids["right"])


# --- failures: retries, timeouts, dead workers -----------------------------------------------------


def test_a_failing_attempt_is_retried_with_its_error_and_context():
    @kf.task(executor="processes", retries=2, retry_delay=0)
    def flaky() -> dict:
        ctx = kf.context()
        if ctx.attempt < 3:
            raise ValueError(f"not yet (attempt {ctx.attempt})")
        return {"attempt": ctx.attempt, "key": ctx.idempotency_key, "pid": os.getpid()}

    run = kf.workflow("flaky", [flaky]).run()
    assert run.output["attempt"] == 3
    assert run.output["key"] == f"{run.run_id}/flaky#0"
    retrying = [e for e in kf.open_store().read_run(run.run_id) if e.type == ev.TASK_RETRYING]
    assert [e.payload["error"]["message"] for e in retrying] == ["not yet (attempt 1)", "not yet (attempt 2)"]
    assert all(e.payload["error"]["exc_type"] == "ValueError" for e in retrying)
    assert "in flaky" in retrying[0].payload["error"]["traceback"]
    assert "process_worker" not in retrying[0].payload["error"]["traceback"]


def test_a_timeout_kills_the_worker_and_what_it_started_and_the_run_goes_on(tmp_path: Path):
    pid_file, child_file = tmp_path / "spin.pid", tmp_path / "child.pid"

    # Defined here, it travels by value; its retry must start a new worker within the timeout.
    @kf.task(executor="processes", timeout=2.5, retries=1, retry_delay=0)
    def spin() -> int:
        if kf.context().attempt == 1:
            child = subprocess.Popen(["sleep", "60"])
            child_file.write_text(str(child.pid))
            pid_file.write_text(str(os.getpid()))
            while True:  # CPU-bound, never returns: a thread could not be stopped
                pass
        return os.getpid()

    @kf.task(executor="processes")
    def after(spin: int) -> dict:
        # While the run goes on (not when it ends and its workers stop), the first attempt is gone.
        first, child = int(pid_file.read_text()), int(child_file.read_text())
        return {"pid": os.getpid(), "first_alive": alive(first), "child_alive": alive(child)}

    started = time.monotonic()
    run = kf.workflow("spinning", [spin, after]).run()
    assert time.monotonic() - started < 20
    first = int(pid_file.read_text())
    assert run["spin"] != first and run["after"]["pid"] != first
    assert run["after"]["first_alive"] is False, "the timed-out attempt's worker was not killed at the timeout"
    assert run["after"]["child_alive"] is False, "a process the timed-out task started is still running"
    assert gone(first) and gone(int(child_file.read_text()))
    retrying = [e for e in kf.open_store().read_run(run.run_id) if e.type == ev.TASK_RETRYING]
    assert [e.payload["reason"] for e in retrying] == ["timeout"]


def test_a_worker_that_dies_is_a_failed_attempt_that_is_retried():
    @kf.task(executor="processes", retries=2, retry_delay=0)
    def fragile() -> int:
        attempt = kf.context().attempt
        if attempt == 1:
            os._exit(3)
        if attempt == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return attempt

    @kf.task(executor="processes")
    def later(fragile: int) -> int:
        return fragile * 10

    run = kf.workflow("fragile_workers", [fragile, later]).run()
    assert run.output == 30
    errors = [e.payload["error"] for e in kf.open_store().read_run(run.run_id) if e.type == ev.TASK_RETRYING]
    assert [e["exc_type"] for e in errors] == ["WorkerDiedError", "WorkerDiedError"]
    assert "task 'fragile'" in errors[0]["message"] and "exited with code 3" in errors[0]["message"]
    assert "task 'fragile'" in errors[1]["message"] and "killed by signal 9 (SIGKILL)" in errors[1]["message"]


def test_a_worker_that_dies_on_the_last_attempt_fails_the_run_with_the_reason():
    @kf.task(executor="processes")
    def crash() -> None:
        os.kill(os.getpid(), signal.SIGSEGV)

    run = kf.workflow("crashing", [crash]).run(raise_on_failure=False)
    assert run.status == "failed"
    error = run.state.tasks["crash"].error
    assert error["exc_type"] == "WorkerDiedError"
    assert "task 'crash'" in error["message"] and "SIGSEGV" in error["message"]


LOCK = threading.Lock()


def _locked_function():
    lock = threading.Lock()

    def locked() -> int:
        with lock:
            return 1

    return [kf.task(executor="processes")(locked)], {}


def _lock_argument():
    def takes(lock) -> int:
        return 1

    return [kf.task(executor="processes")(takes)], {"lock": LOCK}


def _generator_result():
    def gives() -> object:
        return (i for i in range(3))

    return [kf.task(executor="processes")(gives)], {}


@pytest.mark.parametrize(
    "build, task, words",
    [
        (_locked_function, "locked", ["its function", "locked", "cannot be sent to a worker process", "_thread.lock"]),
        (_lock_argument, "takes", ["argument 'lock' is a _thread.lock", "cannot be sent to a worker process"]),
        (_generator_result, "gives", ["returned a generator", "cannot be sent back"]),
    ],
    ids=["function", "argument", "result"],
)
def test_what_cannot_be_pickled_is_named_with_its_task(build, task, words):
    tasks, inputs = build()
    run = kf.workflow(f"unpicklable_{task}", tasks).run(raise_on_failure=False, **inputs)
    error = run.state.tasks[task].error
    assert error["exc_type"] == "UnpicklableTaskError"
    assert f"task {task!r}" in error["message"]
    for word in words:
        assert word in error["message"]


# --- logs, YAML, health, the executor itself -------------------------------------------------------


def test_what_a_task_prints_comes_back_as_its_logs(capsys: pytest.CaptureFixture[str]):
    @kf.task(executor="processes")
    def chatty() -> int:
        print("crunching 3 numbers")
        print("odd input", file=sys.stderr)
        logging.getLogger("chatty").warning("careful now")
        return os.getpid()

    run = kf.workflow("chatty", [chatty]).run()
    logged = [e for e in kf.open_store().read_run(run.run_id) if e.type == ev.TASK_LOGGED]
    assert len(logged) == 1 and logged[0].task_id == "chatty" and logged[0].attempt == 1
    text = logged[0].payload["text"]
    assert "crunching 3 numbers" in text and "odd input" in text and "WARNING chatty: careful now" in text

    from kernelflow.cli import main

    capsys.readouterr()
    assert main(["logs", run.run_id, "chatty"]) == 0
    assert "crunching 3 numbers" in capsys.readouterr().out


YAML_STEP = """\
name: yaml_step
tasks:
  - id: here
    run: python:where
  - id: there
    run: python:where
    executor: processes
"""

YAML_WORKFLOW = """\
name: yaml_workflow
executor: processes
tasks:
  - id: greet
    run: shell
    argv: ["echo", "hello"]
  - id: there
    run: python:where
    needs: [greet]
"""


def where() -> int:
    return os.getpid()


def test_yaml_executor_processes_on_a_step_and_shell_steps_on_threads(tmp_path: Path):
    (tmp_path / "step.yaml").write_text(YAML_STEP)
    run = kf.load(tmp_path / "step.yaml", {"where": where}).run()
    assert run["here"] == os.getpid() and run["there"] != os.getpid()

    (tmp_path / "workflow.yaml").write_text(YAML_WORKFLOW)
    run = kf.load(tmp_path / "workflow.yaml", {"where": where}).run()
    assert "hello" in str(run["greet"])
    assert run["there"] != os.getpid()
    started = {e.task_id: e.payload["executor"] for e in kf.open_store().read_run(run.run_id) if e.type == ev.TASK_STARTED}
    assert started == {"greet": "threads", "there": "processes"}


def test_the_health_check_runs_a_task_in_a_worker():
    health = executor_spec("processes").health()
    assert health.ok, health
    assert health.component == "executor processes"
    assert f"pid {os.getpid()})" not in health.detail and "pid " in health.detail


def test_cancel_kills_a_running_attempt_and_drops_a_queued_one(tmp_path: Path):
    executor = ProcessExecutor(1)
    answers: queue.SimpleQueue = queue.SimpleQueue()
    pid_file = tmp_path / "spin.pid"
    running = executor.submit(TaskCall("r", "spin", 1, spin_forever, {"path": str(pid_file)}), answers.put)
    waiting = executor.submit(TaskCall("r", "next", 1, report_pid, {"path": str(tmp_path / "never")}), answers.put)
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the attempt never started"
        time.sleep(0.02)
    spinning = int(pid_file.read_text())
    assert waiting.cancel() is True
    assert running.cancel() is True
    assert gone(spinning)
    later = executor.submit(TaskCall("r", "later", 1, report_pid, {"path": str(tmp_path / "later")}), answers.put)
    answer = answers.get(timeout=30)
    assert answer.call.task_id == "later" and answer.ok and answer.value not in (spinning, os.getpid())
    assert later.cancel() is False  # it has answered
    assert not (tmp_path / "never").exists()
    assert answers.empty(), "a cancelled attempt must not report"
    executor.shutdown(wait=True)
    assert gone(answer.value)
