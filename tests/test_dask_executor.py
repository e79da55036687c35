"""The ``dask`` executor on a real LocalCluster with worker processes.

One cluster (2 workers x 8 threads) serves the whole module. Task functions
live at module level, so the workers import them by name (they inherit this
process's ``sys.path``); state they share with the test goes through files.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import kernelflow as kf
from kernelflow import dask_api
from kernelflow.dask_api import DaskError
from kernelflow.plugins.dask_executor import DaskOutput, DaskTaskError

pytestmark = pytest.mark.slow  # a cluster of worker processes


@pytest.fixture(scope="module")
def cluster() -> dask_api.DaskSession:
    session = kf.use_dask(n_workers=2, threads_per_worker=8, dashboard_address=":0")
    yield session
    session.close()


@pytest.fixture
def dask(cluster: dask_api.DaskSession) -> dask_api.DaskSession:
    """The module's cluster as the current session, outputs coming back; both workers up afterwards."""
    if dask_api.current_session() is not cluster:
        dask_api._install(cluster)
    cluster.keep_outputs = False
    yield cluster
    cluster.keep_outputs = False
    cluster.client.wait_for_workers(2, timeout=60)


def on(fn, **options):
    """``kf.task(**options)`` on a copy of ``fn``: the decorator marks the function
    itself, and each test wants its own options for the shared task functions."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__qualname__, copy.__module__, copy.__annotations__ = fn.__qualname__, fn.__module__, fn.__annotations__
    return kf.task(**options)(copy)


def task_events(run: kf.Run, type_: str, task: str | None = None) -> list[dict]:
    df = run.events.filter(run.events["type"] == type_)
    if task is not None:
        df = df.filter(df["task_id"] == task)
    return [{**row, "payload": json.loads(row["payload"])} for row in df.to_dicts()]


# --- tasks (importable by the workers) -----------------------------------------------------------


def numbers(n: int = 4) -> list[int]:
    return list(range(n))


def where(numbers: list[int]) -> dict:
    print("summing on a worker")
    return {"total": sum(numbers), "pid": os.getpid()}


def here(where: dict) -> dict:
    return {**where, "reader_pid": os.getpid()}


def flaky(folder: str) -> str:
    tries = Path(folder, "tries")
    n = int(tries.read_text()) + 1 if tries.exists() else 1
    tries.write_text(str(n))
    if n == 1:
        raise ConnectionError("the first call fails")
    return f"ok after {n} calls"


def sleepy(folder: str) -> int:
    Path(folder, "started").write_text("yes")
    time.sleep(2)
    Path(folder, "finished").write_text("yes")
    return 1


def doomed(folder: str) -> str:
    ctx = kf.context()
    if ctx.attempt == 1:
        Path(folder, "pid").write_text(str(os.getpid()))
        time.sleep(60)  # killed before this ends
    return f"done on attempt {ctx.attempt}"


def items() -> list[int]:
    return list(range(10_000))


def counted(n: int, folder: str) -> int:
    """Counts how many items run at once (on any worker), under a file lock."""
    path = os.path.join(folder, "counter")

    def change(delta: int) -> None:
        with open(path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            now, peak = map(int, (f.read() or "0 0").split())
            now += delta
            f.seek(0)
            f.truncate()
            f.write(f"{now} {max(now, peak)}")

    change(+1)
    if n < 40:
        time.sleep(0.2)  # the first items overlap: the loop fills up to its maxParallel
    change(-1)
    return n


def big() -> list[int]:
    return list(range(1000))


def total(big: list[int]) -> int:
    return sum(big)


def plus_one(total: int) -> int:
    return total + 1


# --- running workflows -------------------------------------------------------------------------


def test_workflow_runs_on_workers_and_passes_outputs(dask: dask_api.DaskSession) -> None:
    wf = kf.workflow("dask_chain", [numbers, where, here], executor="dask")
    run = wf.run(n=5)
    assert run.status == "succeeded"
    assert run["where"]["total"] == 10  # an input and an upstream output reached the worker
    assert run.output["pid"] != os.getpid() and run.output["reader_pid"] != os.getpid()
    started = task_events(run, "TaskStarted")
    assert {e["payload"]["executor"] for e in started} == {"dask"}
    logged = task_events(run, "TaskLogged", "where")
    assert logged[0]["payload"]["text"] == "summing on a worker\n"


def test_per_step_executor(dask: dask_api.DaskSession) -> None:
    remote = on(where, executor="dask")
    wf = kf.workflow("dask_one_step", [numbers, remote, here])
    run = wf.run()
    assert run["where"]["pid"] != os.getpid()
    assert run.output["reader_pid"] == os.getpid()  # 'here' ran on the default thread executor
    assert [e["payload"]["executor"] for e in task_events(run, "TaskStarted")] == ["threads", "dask", "threads"]


def test_yaml_executor_dask_runs_shell_steps_here(dask: dask_api.DaskSession, tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(textwrap.dedent("""\
        name: yaml_dask
        executor: dask
        tasks:
          - id: numbers
            run: python:numbers
          - id: where
            run: python:where
            needs: [numbers]
          - id: echo
            run: shell
            argv: [echo, "{{tasks.where.output.total}}"]
    """))
    run = kf.load(flow, namespace={"numbers": numbers, "where": where}).run()
    assert run["where"]["total"] == 6
    executors = {e["task_id"]: e["payload"]["executor"] for e in task_events(run, "TaskStarted")}
    assert executors == {"numbers": "dask", "where": "dask", "echo": "threads"}


def test_retries_follow_kernelflows_policy(dask: dask_api.DaskSession, tmp_path: Path) -> None:
    task = on(flaky, retries=2, retry_delay=0.05, executor="dask")
    run = kf.workflow("dask_retry", [task]).run(folder=str(tmp_path))
    assert run.output == "ok after 2 calls"
    retrying = task_events(run, "TaskRetrying", "flaky")
    assert len(retrying) == 1 and retrying[0]["payload"]["error"]["exc_type"] == "ConnectionError"
    assert [e["attempt"] for e in task_events(run, "TaskStarted")] == [1, 2]


def test_timeout_cancels_the_future_but_a_running_function_finishes(dask: dask_api.DaskSession, tmp_path: Path) -> None:
    task = on(sleepy, timeout=0.5, executor="dask")
    began = time.monotonic()
    run = kf.workflow("dask_timeout", [task]).run(folder=str(tmp_path), raise_on_failure=False)
    assert time.monotonic() - began < 1.8  # the run did not wait for the 2 s function
    assert run.status == "failed" and task_events(run, "TaskTimedOut", "sleepy")

    def states() -> dict[str, str]:
        per_worker = dask.client.run(lambda dask_worker: {str(k): ts.state for k, ts in dask_worker.state.tasks.items()})
        return {k: v for tasks in per_worker.values() for k, v in tasks.items() if k.startswith("sleepy-")}

    # The truth documented in docs/dask.md: the worker marks the task cancelled,
    # but the Python function goes on running to its end...
    assert Path(tmp_path, "started").exists() and not Path(tmp_path, "finished").exists()
    assert list(states().values()) == ["cancelled"]
    for _ in range(100):
        if Path(tmp_path, "finished").exists():
            break
        time.sleep(0.05)
    assert Path(tmp_path, "finished").exists()
    # ...and its result is thrown away.
    for _ in range(100):
        if not states():
            break
        time.sleep(0.05)
    assert states() == {}


def test_interrupt_cancels_what_runs_on_the_cluster(dask: dask_api.DaskSession, tmp_path: Path) -> None:
    # The timeout makes the engine wait for completions with a timeout: an
    # endless SimpleQueue.get() is not woken by SIGINT once polars is imported
    # (the interrupt then lands at the next completion), which is not what this tests.
    task = on(sleepy, executor="dask", timeout=60)
    wf = kf.workflow("dask_interrupt", [task])
    timer = threading.Timer(0.7, os.kill, (os.getpid(), signal.SIGINT))
    began = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            wf.run(folder=str(tmp_path))
    finally:
        timer.cancel()
    assert time.monotonic() - began < 1.8  # it did not wait for the 2 s task
    runs = kf.sql("SELECT status FROM runs WHERE workflow = 'dask_interrupt'")
    assert runs["status"].to_list() == ["failed"]

    def scheduler_keys() -> list[str]:
        return dask.client.run_on_scheduler(lambda dask_scheduler: [str(k) for k in dask_scheduler.tasks])

    for _ in range(20):  # within 1 s: the function itself runs for another 1.3 s at least
        if not [k for k in scheduler_keys() if k.startswith("sleepy-")]:
            break
        time.sleep(0.05)
    assert [k for k in scheduler_keys() if k.startswith("sleepy-")] == []


def test_a_killed_worker_is_retried_by_kernelflow(dask: dask_api.DaskSession, tmp_path: Path) -> None:
    task = on(doomed, retries=1, executor="dask")
    run = kf.workflow("dask_killed", [task]).start(folder=str(tmp_path))
    pid_file = tmp_path / "pid"
    for _ in range(400):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    run.wait(timeout=60)
    assert run.status == "succeeded"
    assert run.output == "done on attempt 2"
    retrying = task_events(run, "TaskRetrying", "doomed")
    assert len(retrying) == 1
    error = retrying[0]["payload"]["error"]
    assert error["exc_type"] == "WorkerDiedError"
    assert "'doomed'" in error["message"] and "worker tcp://" in error["message"] and "died" in error["message"]
    assert [e["attempt"] for e in task_events(run, "TaskStarted", "doomed")] == [1, 2]


def test_for_each_10000_items_respects_max_parallel_without_client_threads(dask: dask_api.DaskSession, tmp_path: Path) -> None:
    each = kf.for_each("{{tasks.items.output}}", as_="n", max_parallel=12)(on(counted, executor="dask"))
    wf = kf.workflow("dask_many", [items, each], max_parallel=16)
    before = threading.enumerate()
    run = wf.start(folder=str(tmp_path))
    most, names = len(before), set()
    while not run.done:
        now = threading.enumerate()
        most = max(most, len(now))
        names |= {t.name for t in now if t not in before}
        time.sleep(0.02)
    run.wait()
    assert run.status == "succeeded", run.status
    summary = run["counted"]
    assert summary["count"] == summary["succeeded"] == 10_000
    assert summary["outputs"][-1] == 9_999
    now, peak = map(int, (tmp_path / "counter").read_text().split())
    # 16 worker threads and max_parallel 16 for the run, but the loop's maxParallel holds.
    assert now == 0 and 8 <= peak <= 12, peak
    # The run's driver, Dask's callback and offload threads, a watchdog: nothing per item.
    assert most - len(before) <= 5, names


def test_unpicklable_function_argument_and_result_are_named(dask: dask_api.DaskSession) -> None:
    lock = threading.Lock()

    @kf.task(executor="dask")
    def guarded() -> int:
        with lock:
            return 1

    run = kf.workflow("dask_unpicklable_fn", [guarded]).run(raise_on_failure=False)
    message = run.failures["guarded"].message
    assert "task 'guarded'" in message and "guarded cannot be sent to a Dask worker" in message

    @kf.task(executor="dask")
    def takes(conn: object) -> int:
        return 1

    run = kf.workflow("dask_unpicklable_arg", [takes]).run(conn=threading.Lock(), raise_on_failure=False)
    message = run.failures["takes"].message
    assert "task 'takes': argument 'conn' is a _thread.lock" in message

    @kf.task(executor="dask")
    def gives() -> object:
        return threading.Lock()

    run = kf.workflow("dask_unpicklable_result", [gives]).run(raise_on_failure=False)
    message = run.failures["gives"].message
    assert "task 'gives' returned a _thread.lock, which cannot be sent back" in message


# --- outputs kept on the cluster ---------------------------------------------------------------


def test_keep_outputs_leaves_values_only_dask_tasks_read_on_the_cluster(dask: dask_api.DaskSession) -> None:
    dask.keep_outputs = True
    wf = kf.workflow("dask_keep", [big, total, plus_one], executor="dask")
    run = wf.run()
    assert run.output == sum(range(1000)) + 1  # the last output comes back
    kinds = {e["task_id"]: e["payload"]["output_type"] for e in task_events(run, "TaskSucceeded")}
    assert kinds == {"big": "DaskOutput", "total": "DaskOutput", "plus_one": "int"}
    recorded = run["big"]  # what the store holds: a description, not the value
    assert isinstance(recorded, DaskOutput) and not recorded.live
    assert recorded.type_name == "list" and recorded.repr.startswith("[0, 1, 2,") and recorded.key.startswith("big-a1-")
    with pytest.raises(DaskTaskError, match="not durable"):
        recorded.result()

    # A reader on another executor gets the value itself: 'big' then comes back.
    run = kf.workflow("dask_keep_mixed", [big, total, on(reads_big, executor="threads")], executor="dask").run()
    kinds = {e["task_id"]: e["payload"]["output_type"] for e in task_events(run, "TaskSucceeded")}
    assert kinds["big"] == "list" and run["reads_big"] == "list"


def reads_big(big: list[int]) -> str:
    return type(big).__name__


def total_once(big: list[int], folder: str) -> int:
    if not Path(folder, "ok").exists():
        raise RuntimeError("not yet")
    return sum(big)


def test_kept_outputs_are_not_durable_a_resume_says_so(dask: dask_api.DaskSession, tmp_path: Path) -> None:
    dask.keep_outputs = True
    wf = kf.workflow("dask_keep_resume", [big, total_once, plus_one_of], executor="dask")
    run = wf.run(folder=str(tmp_path), raise_on_failure=False)
    assert run.status == "failed"
    Path(tmp_path, "ok").write_text("")
    resumed = kf.resume(run.run_id, workflow=wf, raise_on_failure=False)
    assert resumed.status == "failed"
    message = resumed.failures["total_once"].message
    assert "task 'total_once' needs the output of task 'big' (list)" in message
    assert "not durable" in message and "keep_outputs=False" in message


def plus_one_of(total_once: int) -> int:
    return total_once + 1


# --- sessions, errors, health ----------------------------------------------------------------------


def test_unreachable_scheduler_fails_fast_with_the_address(dask: dask_api.DaskSession) -> None:
    began = time.monotonic()
    with pytest.raises(DaskError, match=r"cannot reach the Dask scheduler at 'tcp://127\.0\.0\.1:9' within 5 s"):
        kf.use_dask("tcp://127.0.0.1:9")
    assert time.monotonic() - began < 10
    assert dask_api.current_session() is dask  # the working session stays


def test_session_repr_health_and_env_address(dask: dask_api.DaskSession, monkeypatch: pytest.MonkeyPatch) -> None:
    assert dask.dashboard_link and dask.dashboard_link.startswith("http://")
    assert dask.dashboard_link in repr(dask) and dask.dashboard_link in dask._repr_html_()
    health = dask_api.health()
    assert health.ok and dask.address in health.detail and "2 workers" in health.detail

    monkeypatch.setattr(dask_api, "_session", None)
    monkeypatch.setattr(dask_api, "CONNECT_TIMEOUT_S", 1.0)
    monkeypatch.setenv(dask_api.ADDRESS_ENV, "tcp://127.0.0.1:9")
    health = dask_api.health()
    assert health.status == "error" and "tcp://127.0.0.1:9" in health.detail and health.fix

    monkeypatch.setenv(dask_api.ADDRESS_ENV, dask.address)
    assert dask_api.health().ok
    session = dask_api.session_for_run()  # what a run does when use_dask was never called
    try:
        assert session is not dask and session.address == dask.address and session.cluster is None
        run = kf.workflow("dask_env", [on(numbers, executor="dask")]).run()
        assert run.output == [0, 1, 2, 3]
    finally:
        session.close()


def test_without_dask_installed_the_error_says_what_to_install(dask: dask_api.DaskSession, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dask_api, "_session", None)
    monkeypatch.setitem(sys.modules, "distributed", None)  # what `import distributed` does when it is missing
    with pytest.raises(DaskError, match=r'pip install "kernelflow\[dask\]"'):
        kf.use_dask()
    run = kf.workflow("dask_missing", [on(numbers, executor="dask")]).run(raise_on_failure=False)
    message = run.failures["numbers"].message
    assert message.startswith("task 'numbers': executor 'dask' needs Dask's distributed scheduler, which is not installed")
    assert message.endswith('run pip install "kernelflow[dask]"')
    health = dask_api.health()
    assert health.status == "warning" and "kernelflow[dask]" in (health.fix or "")


def test_loading_the_plugin_imports_no_dask() -> None:
    code = (
        "import sys, kernelflow\n"
        "from kernelflow import plugin_host\n"
        "assert plugin_host.executor_spec('dask').remote\n"
        "assert 'distributed' not in sys.modules and 'dask' not in sys.modules, 'dask imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- notebooks and the CLI ---------------------------------------------------------------------------


def test_a_function_defined_in_a_notebook_cell_runs_on_the_cluster(dask: dask_api.DaskSession, tmp_path: Path) -> None:
    cell = textwrap.dedent(f"""\
        import os
        import kernelflow as kf

        session = kf.use_dask({dask.address!r})

        class Point:
            def __init__(self, x, y):
                self.x, self.y = x, y

        def square(x: int = 7):
            return Point(x * x, os.getpid())

        run = kf.workflow("nb_dask", [square], executor="dask").run()
        print(run.output.x, run.output.y != os.getpid(), type(run.output).__name__)
        session.close()
    """)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.get("output_type") == "stream")
    assert "49 True Point" in text


def test_cli_runs_a_yaml_with_executor_dask_on_a_local_cluster(tmp_path: Path) -> None:
    (tmp_path / "dask_cli_tasks.py").write_text(textwrap.dedent("""\
        import os

        def pid():
            return os.getpid()

        def check(pid):
            return {"elsewhere": pid != int(os.environ["CLI_PID"])}
    """))
    (tmp_path / "flow.yaml").write_text(textwrap.dedent("""\
        name: cli_dask
        executor: dask
        tasks:
          - id: pid
            run: dask_cli_tasks:pid
          - id: check
            run: dask_cli_tasks:check
            needs: [pid]
    """))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop(dask_api.ADDRESS_ENV, None)
    # The task compares the worker's pid with the CLI's: the CLI's own pid is its child's, so pass it via a wrapper.
    code = (
        "import os, sys; os.environ['CLI_PID'] = str(os.getpid()); "
        "from kernelflow.cli import main; sys.exit(main(['run', 'flow.yaml']))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    [status] = kf.sql("SELECT status FROM runs WHERE workflow = 'cli_dask'")["status"].to_list()
    assert status == "succeeded"
    rows = kf.sql(
        "SELECT task_id, payload FROM events WHERE workflow = 'cli_dask' AND type IN ('TaskStarted', 'TaskSucceeded') ORDER BY seq"
    ).to_dicts()
    assert next(json.loads(r["payload"])["executor"] for r in rows if r["task_id"] == "pid") == "dask"
    assert json.loads(rows[-1]["payload"])["output"] == {"elsewhere": True}
