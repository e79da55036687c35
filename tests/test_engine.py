"""The engine, against the real folder store and real threads."""

from __future__ import annotations

import asyncio
import json
import threading

import polars as pl
import pytest

import kernelflow as kf
from kernelflow import plugin_host
from kernelflow.reducer import fold


def define(name, src, **options):
    ns: dict = {"kf": kf, "threading": threading}
    exec(compile(src, f"<{name}>", "exec"), ns)
    fns = [v for k, v in ns.items() if callable(v) and not k.startswith("_") and k not in ("kf", "threading")]
    return kf.workflow(name, fns, **options), ns


def types_of(run):
    return list(run.events["type"])


def test_outputs_flow_to_dependents_and_run_output_is_the_final_task():
    wf, _ = define("etl", "def extract(n):\n return list(range(n))\ndef total(extract):\n return sum(extract)\n")
    run = wf.run(n=5)
    assert run.status == "succeeded"
    assert run["extract"] == [0, 1, 2, 3, 4]
    assert run.output == 10
    assert types_of(run) == [
        "RunStarted", "TaskScheduled", "TaskStarted", "TaskSucceeded",
        "TaskScheduled", "TaskStarted", "TaskSucceeded", "RunSucceeded",
    ]
    assert list(run.events["seq"]) == list(range(8))
    assert fold(run.store.read_run(run.run_id)) == run.state


def test_several_final_tasks_give_a_dict_output():
    wf, _ = define("fan", "def a():\n return 1\ndef b(a):\n return a + 1\ndef c(a):\n return a + 2\n")
    assert wf.run().output == {"b": 2, "c": 3}


def test_max_parallel_is_reached_and_never_exceeded():
    src = """
lock = threading.Lock()
state = {"now": 0, "peak": 0}
barrier = threading.Barrier(3, timeout=10)
def _enter():
    with lock:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
def _leave():
    with lock:
        state["now"] -= 1
""" + "".join(
        f"def t{i}():\n    _enter()\n    barrier.wait()\n    _leave()\n" for i in range(6)
    )
    wf, ns = define("par", src, max_parallel=3)
    run = wf.run()  # the barrier breaks (and tasks fail) unless 3 run at once
    assert run.status == "succeeded"
    assert ns["state"]["peak"] == 3


def test_a_task_starts_as_soon_as_its_own_dependencies_are_done():
    # `slow` waits until `d` has run: level-by-level scheduling would deadlock it.
    src = """
d_ran = threading.Event()
def a():
    return 1
def slow(a):
    if not d_ran.wait(10):
        raise RuntimeError("d never ran while slow was running")
def c(a):
    return 2
def d(c):
    d_ran.set()
"""
    wf, _ = define("ready", src, max_parallel=4)
    assert wf.run().status == "succeeded"


def test_failure_skips_dependents_but_independent_branches_finish():
    src = """
def root():
    return 1
def bad(root):
    raise ValueError("no good")
def after_bad(bad):
    return 1
def after_after(after_bad):
    return 1
def fine(root):
    return 2
"""
    wf, _ = define("fails", src)
    with pytest.raises(kf.RunFailedError) as err:
        wf.run()
    run = err.value.run
    assert isinstance(err.value.__cause__, ValueError)
    assert "task 'bad' raised ValueError: no good" in str(err.value)
    statuses = {t: s.status for t, s in run.state.tasks.items()}
    assert statuses == {"root": "succeeded", "bad": "failed", "after_bad": "skipped", "after_after": "skipped", "fine": "succeeded"}
    assert run.state.tasks["after_after"].reason == "upstream task 'bad' failed"
    assert run.state.failed_tasks == ["bad"]
    assert "ValueError: no good" in run.failures["bad"].traceback
    assert 'File "<fails>", line 5, in bad' in run.failures["bad"].traceback  # from the user's frame down
    with pytest.raises(kf.KernelflowError, match="task 'after_bad' .* has no output \\(status skipped"):
        run["after_bad"]
    with pytest.raises(kf.KernelflowError, match="is failed, so it has no output"):
        run.output


def test_raise_on_failure_false_returns_the_failed_run():
    wf, _ = define("quiet", "def a():\n raise KeyError('k')\n")
    run = wf.run(raise_on_failure=False)
    assert run.status == "failed"
    assert run.state.tasks["a"].error["exc_type"] == "KeyError"


def test_retries_with_exponential_backoff_then_success():
    src = """
calls = []
@kf.task(retries=3, backoff="exponential", retry_delay=0.01)
def flaky():
    calls.append(1)
    if len(calls) < 3:
        raise ConnectionError(f"try {len(calls)}")
    return len(calls)
"""
    wf, ns = define("retry", src)
    run = wf.run()
    assert run.output == 3
    retrying = run.events.filter(pl.col("type") == "TaskRetrying")
    assert list(retrying["attempt"]) == [1, 2]
    payloads = [__import__("json").loads(p) for p in retrying["payload"]]
    assert [p["delay_s"] for p in payloads] == [0.01, 0.02]
    assert [p["error"]["message"] for p in payloads] == ["try 1", "try 2"]
    assert run.state.tasks["flaky"].attempt == 3
    attempts = run.store.sql("SELECT attempt, status, will_retry FROM task_attempts WHERE run_id = ? ORDER BY attempt", [run.run_id])
    assert attempts.rows() == [(1, "failed", True), (2, "failed", True), (3, "succeeded", False)]


def test_retries_exhausted_fail_the_task():
    wf, _ = define("nope", "@kf.task(retries=2, retry_delay=0)\ndef a():\n raise OSError('down')\n")
    run = wf.run(raise_on_failure=False)
    assert types_of(run).count("TaskStarted") == 3
    assert types_of(run)[-2:] == ["TaskFailed", "RunFailed"]


def test_timeout_stops_waiting_and_is_retried_then_recorded():
    src = """
release = threading.Event()
@kf.task(timeout="100ms", retries=1, retry_delay=0)
def hangs():
    release.wait(30)
"""
    wf, ns = define("slow", src)
    try:
        run = wf.run(raise_on_failure=False)
    finally:
        ns["release"].set()
    assert run.state.tasks["hangs"].status == "timed_out"
    kinds = types_of(run)
    assert kinds.count("TaskRetrying") == 1 and kinds[-2:] == ["TaskTimedOut", "RunFailed"]
    assert "longer than its timeout of 100ms" in run.state.tasks["hangs"].error["message"]


def test_start_returns_at_once_and_wait_blocks():
    src = "gate = threading.Event()\ndef a():\n    gate.wait(10)\n    return 'done'\n"
    wf, ns = define("bg", src)
    run = wf.start()
    assert run.status in ("running", "pending") and not run.done
    ns["gate"].set()
    assert run.wait(timeout=10).output == "done"


def test_arun_inside_a_running_event_loop_and_async_tasks():
    src = "import asyncio\nasync def a():\n    await asyncio.sleep(0.01)\n    return 2\ndef b(a):\n    return a * 3\n"
    wf, _ = define("asy", src)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        t = asyncio.ensure_future(ticker())
        run = await wf.arun()
        t.cancel()
        return run, ticks

    run, ticks = asyncio.run(main())
    assert run.output == 6
    assert ticks > 0  # the loop kept turning while the run went on


def test_inputs_are_checked_before_anything_is_recorded(tmp_path):
    wf, _ = define("ins", "def a(url, limit=3):\n    return url\n")
    with pytest.raises(kf.InputError, match="needs input 'url'"):
        wf.run()
    with pytest.raises(kf.InputError, match="has no input 'urll'.*Did you mean 'url'"):
        wf.run(url="x", urll="y")
    assert kf.sql("SELECT count(*) AS n FROM events WHERE workflow = 'ins'")["n"][0] == 0
    assert wf.run(url="x").output == "x"


def test_rich_outputs_become_artifacts_and_load_back():
    src = "import polars as pl\ndef table():\n    return pl.DataFrame({'x': [1, 2, 3]})\ndef pair(table):\n    return (1, 2)\n"
    wf, _ = define("rich", src)
    run = wf.run()
    state = fold(run.store.read_run(run.run_id))
    ref = state.tasks["table"].output_ref
    assert ref and state.tasks["table"].output is None
    assert run.store.load_artifact(ref).equals(pl.DataFrame({"x": [1, 2, 3]}))
    assert run.store.load_artifact(state.tasks["pair"].output_ref) == (1, 2)  # a tuple is not JSON: pickled


def test_an_unstorable_output_fails_its_task_with_a_clear_error():
    wf, _ = define("gen", "def a():\n    return (i for i in range(3))\ndef b(a):\n    return sum(a)\n")
    run = wf.run(raise_on_failure=False)
    assert run.status == "failed" and run.state.tasks["b"].status == "skipped"
    error = run.state.tasks["a"].error
    assert error["exc_type"] == "UnstorableOutputError"
    assert error["message"].startswith("task 'a' returned a value that cannot be stored: cannot store a value of type builtins.generator")
    assert "Return plain data" in error["message"]


def test_outputs_stored_as_artifacts_leave_memory_when_the_run_ends():
    wf, _ = define("big", "import polars as pl\ndef table():\n    return pl.DataFrame({'x': list(range(1000))})\ndef n(table):\n    return table.height\n")
    run = wf.run()
    assert "table" not in run._values and run._values["n"] == 1000  # inline values stay
    assert run["table"]["x"].sum() == sum(range(1000))  # loaded from the store


def test_notebook_classes_are_stored_by_value_and_load_again():
    from kernelflow.cell_compiler import compile_cell

    wf = compile_cell("point", "class Point:\n    def __init__(self, x):\n        self.x = x\ndef p():\n    return Point(3)\n", {"__name__": "__main__"})
    run = wf.run()
    ref = fold(run.store.read_run(run.run_id)).tasks["p"].output_ref
    loaded = run.store.load_artifact(ref)
    assert type(loaded).__name__ == "Point" and loaded.x == 3


class _Recorder:
    def __init__(self):
        self.seen, self.finished = [], []

    def on_events(self, run, events):
        self.seen.extend(e.seq for e in events)

    def on_finish(self, run):
        self.finished.append(run.status)


class _Broken:
    def on_events(self, run, events):
        raise RuntimeError("display broke")

    def on_finish(self, run):
        pass


def test_observers_from_a_plugin_see_every_event_and_a_broken_one_is_dropped():
    recorder = _Recorder()

    class Plugin:
        @kf.hookimpl
        def kernelflow_run_observers(self, run):
            return [recorder, _Broken()]

    plugin = Plugin()
    plugin_host.register(plugin, name="test-observers")
    try:
        wf, _ = define("watched", "def a():\n    return 1\ndef b(a):\n    return 2\n")
        with pytest.warns(RuntimeWarning, match="observer _Broken raised RuntimeError: display broke"):
            run = wf.run()
    finally:
        plugin_host.unregister(plugin)
    assert recorder.seen == list(range(run.state.last_seq + 1))
    assert recorder.finished == ["succeeded"]


def test_run_tasks_table():
    wf, _ = define("tbl", "def a():\n    return 1\ndef b(a):\n    raise ValueError('x')\n")
    run = wf.run(raise_on_failure=False)
    df = run.tasks
    assert df.columns == ["task", "status", "attempt", "started_at", "ended_at", "duration_ms", "problem"]
    assert df.rows()[1][:3] == ("b", "failed", 1) and df.rows()[1][6] == "ValueError: x"


def test_a_folder_that_is_not_a_store_is_refused_and_left_untouched(tmp_path, monkeypatch):
    from kernelflow.store_access import close_stores

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8")
    monkeypatch.setenv("KERNELFLOW_HOME", str(folder))
    close_stores()
    wf, _ = define("w", "def a():\n    return 1\n")
    with pytest.raises(kf.NotAStoreError, match=r"photos exists but is not a kernelflow store .*KERNELFLOW_HOME"):
        wf.run()
    assert sorted(p.name for p in folder.iterdir()) == ["cat.jpg"]


def test_a_store_from_a_newer_kernelflow_is_refused(tmp_path, monkeypatch):
    import json

    from kernelflow.store_access import close_stores

    folder = tmp_path / "future"
    folder.mkdir()
    (folder / "store.json").write_text(json.dumps({"kind": "kernelflow-store", "schema_version": 99, "written_by": "9.9"}))
    monkeypatch.setenv("KERNELFLOW_HOME", str(folder))
    close_stores()
    wf, _ = define("w", "def a():\n    return 1\n")
    with pytest.raises(kf.StoreVersionError, match="pip install -U kernelflow"):
        wf.run()
    assert sorted(p.name for p in folder.iterdir()) == ["store.json"]


# --- group commit: events are written together, but always before what depends on them ---


def _stored_types(run_id):
    """What a second reader (another FolderStore on the same folder) finds on disk now."""
    from kernelflow.store.folder import FolderStore

    reader = FolderStore(kf.store_location())
    try:
        return [(e.type, e.task_id) for e in reader.read_run(run_id)]
    finally:
        reader.close()


GROUPED = """
seen = {}

def a():
    seen["a"] = _stored_types(kf.context().run_id)
    return 1

def b(a):
    seen["b"] = _stored_types(kf.context().run_id)
    return a + 1
"""


@pytest.mark.parametrize("timeout", [None, 30])
def test_a_task_runs_only_after_its_scheduled_and_started_events_and_its_inputs_successes_are_stored(timeout):
    ns: dict = {"kf": kf, "_stored_types": _stored_types}
    exec(compile(GROUPED, "<grouped>", "exec"), ns)
    # Without a timeout each attempt runs inline on the driving thread; with
    # one, the thread executor hands it to a worker thread that watches it.
    wf = kf.workflow("grouped", [kf.task(timeout=timeout)(ns["a"]), kf.task(timeout=timeout)(ns["b"])])
    run = wf.run()
    assert run.output == 2
    assert ns["seen"]["a"] == [("RunStarted", None), ("TaskScheduled", "a"), ("TaskStarted", "a")]
    assert ns["seen"]["b"] == [
        ("RunStarted", None), ("TaskScheduled", "a"), ("TaskStarted", "a"), ("TaskSucceeded", "a"),
        ("TaskScheduled", "b"), ("TaskStarted", "b"),
    ]  # fmt: skip
    # Everything the run recorded is stored by the time run() returns.
    assert _stored_types(run.run_id) == [(t, tid) for t, tid in zip(run.events["type"], run.events["task_id"])]


def test_a_side_effect_recorded_by_an_inline_task_is_stored_before_the_task_goes_on():
    ns: dict = {"kf": kf, "_stored_types": _stored_types}
    exec(compile(
        "seen = []\n"
        "def pay():\n"
        "    kf.remember(lambda: 'charged')\n"
        "    seen.extend(_stored_types(kf.context().run_id))\n"
        "    return 'ok'\n",
        "<pay>", "exec",
    ), ns)  # fmt: skip
    run = kf.workflow("pay", [ns["pay"]]).run()
    assert run.output == "ok"
    assert ns["seen"][-1] == ("SideEffectRecorded", "pay")


def test_observers_see_only_events_that_are_already_stored():
    checked = []

    class Checker:
        def on_events(self, run, events):
            on_disk = len(_stored_types(run.run_id))
            checked.append(all(e.seq < on_disk for e in events))

        def on_finish(self, run):
            pass

    class Plugin:
        @kf.hookimpl
        def kernelflow_run_observers(self, run):
            return [Checker()]

    plugin = Plugin()
    plugin_host.get_plugin_manager().register(plugin, name="stored-checker")
    try:
        wf, _ = define("observed", "def x():\n return 1\ndef y(x):\n return x\ndef z(y):\n return y\n")
        assert wf.run().output == 1
    finally:
        plugin_host.get_plugin_manager().unregister(plugin)
    assert checked and all(checked)


def test_a_compensation_runs_after_its_started_event_is_stored():
    seen = []

    def undo(first):  # ``first`` returned its run id
        seen.append(_stored_types(first)[-1])

    @kf.task(compensate=undo)
    def first():
        return kf.context().run_id

    def boom(first):
        raise ValueError("no")

    run = kf.workflow("saga_stored", [first, boom]).run(raise_on_failure=False)
    assert run.status == "failed"
    assert seen == [("CompensationStarted", "first")]


# --- what tasks print and log ---


def test_each_task_s_prints_and_log_records_land_in_its_own_logged_event_and_the_streams_are_given_back():
    import logging
    import sys

    stdout, stderr, handlers = sys.stdout, sys.stderr, list(logging.getLogger().handlers)
    wf, _ = define(
        "chatty",
        "import logging, sys\n"
        "def left():\n"
        "    print('left out'); print('left err', file=sys.stderr); logging.getLogger('etl').warning('left warns')\n"
        "def right():\n"
        "    print('right out')\n"
        "def quiet(left, right):\n"
        "    return 'done'\n"
        "def fails(quiet):\n"
        "    print('about to fail'); raise ValueError('x')\n",
        max_parallel=2,
    )
    run = wf.run(raise_on_failure=False)
    assert run.status == "failed"
    texts = {
        row["task_id"]: json.loads(row["payload"])["text"]
        for row in run.events.filter(pl.col("type") == "TaskLogged").to_dicts()
    }
    assert texts == {
        "left": "left out\nleft err\nWARNING etl: left warns\n",
        "right": "right out\n",
        "fails": "about to fail\n",
    }
    # Nothing of kernelflow's stays in the process's streams or the root logger.
    assert (sys.stdout, sys.stderr) == (stdout, stderr)
    assert list(logging.getLogger().handlers) == handlers
