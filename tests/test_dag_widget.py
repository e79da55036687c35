"""The DAG widget's Python side: traits from workflows, runs and the store; details; batching; fallbacks.

The browser side is tested in tests/browser/test_dag_browser.py; executed notebooks
(the live widget in a real kernel, saved notebook size) at the end of this file.
"""

from __future__ import annotations

import html
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import papermill
import polars as pl
import pytest
from nbclient import NotebookClient

import kernelflow as kf
from kernelflow.store import FolderStore
from kernelflow.reducer import RunState
from kernelflow.widgets import dag as dag_module
from kernelflow.widgets.dag import DagWidget, layout_of
from kernelflow.widgets.fallback import embedded_svgs


def _bundle(widget: DagWidget) -> dict:
    bundle = widget._repr_mimebundle_()
    return bundle[0] if isinstance(bundle, tuple) else bundle


def _picture(page: str) -> str:
    """The SVG inside a static fallback (an <img> with a data URI)."""
    return "".join(html.unescape(svg) for svg in embedded_svgs(page))


def _etl() -> kf.Workflow:
    def extract():
        print("extracting 3 rows")
        return pl.DataFrame({"city": ["Oslo", "Lima", "Pune"], "temp": [3.5, 19.0, 31.2]})

    def clean(extract):
        return extract.filter(pl.col("temp") > 10)

    @kf.task(after=["extract"])
    def audit():
        return "ok"

    def report(clean, audit):
        return f"{clean.height} warm cities"

    return kf.workflow("etl_widget", [extract, clean, audit, report])


def test_a_workflow_widget_carries_its_graph_and_a_graphviz_layout() -> None:
    widget = kf.dag(_etl())
    assert widget.workflow == "etl_widget" and widget.run_id == "" and widget.status == {}
    assert [n[0] for n in widget.graph["nodes"]] == ["extract", "clean", "audit", "report"]
    assert sorted(map(tuple, widget.graph["edges"])) == [
        ("audit", "report", "dep"), ("clean", "report", "dep"), ("extract", "audit", "after"), ("extract", "clean", "dep"),
    ]  # fmt: skip
    layout = widget.graph_layout
    assert set(layout["nodes"]) == {"extract", "clean", "audit", "report"}
    # Left to right: each task sits to the right of what it needs.
    assert layout["nodes"]["extract"][0] < layout["nodes"]["clean"][0] < layout["nodes"]["report"][0]
    assert {(a, b) for a, b, _ in layout["edges"]} == {(a, b) for a, b, _ in widget.graph["edges"]}
    assert all(path.startswith("M") and "C" in path for _, _, path in layout["edges"])
    assert 0 < max(x + w / 2 for x, _, w, _ in layout["nodes"].values()) <= layout["width"] + 0.5


def test_without_dot_the_layout_is_left_to_the_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kernelflow.widgets.dag_static.has_dot", lambda: False)
    assert layout_of({"nodes": [["a", "python"]], "edges": []}) == {}
    assert kf.dag(_etl()).graph_layout == {}


def test_a_run_widget_shows_statuses_attempts_and_times() -> None:
    @kf.task(retries=1, retry_delay=0)
    def flaky():
        flaky.calls = getattr(flaky, "calls", 0) + 1
        if flaky.calls == 1:
            raise RuntimeError("first call fails")
        return 1

    def after(flaky):
        return flaky + 1

    @kf.task(when="{{tasks.after.output}} > 100")
    def never(after):
        return 0

    run = kf.workflow("statuses", [flaky, after, never]).run()
    widget = kf.dag(run)
    assert widget.run_id == run.run_id and widget.run_status == "succeeded"
    assert widget.status == {"flaky": "succeeded", "after": "succeeded", "never": "skipped"}
    assert widget.tasks["flaky"][0] == 2 and widget.tasks["after"][0] == 1
    assert widget.tasks["never"][2]  # the skip reason
    assert widget.ended_at >= widget.started_at > 0


def test_details_of_a_clicked_task_come_from_the_store() -> None:
    run = _etl().run()
    widget = kf.dag(run.run_id)
    widget.selected = "extract"
    d = widget.details
    assert d["task"] == "extract" and d["status"] == "succeeded"
    assert "<table" in d["output"] and "Oslo" in d["output"] and "3 rows × 2 columns" in d["output"]
    assert d["logs"] == [[1, "extracting 3 rows\n"]]
    assert [row[:2] for row in d["attempts"]] == [[1, "succeeded"]]
    widget.selected = "report"
    d = widget.details
    assert "2 warm cities" in d["output"]
    assert set(d["inputs"]) == {"clean", "audit"} and "Lima" in d["inputs"]["clean"]


def test_details_of_a_failed_task_show_its_traceback_and_each_attempt() -> None:
    @kf.task(retries=1, retry_delay=0)
    def divide():
        return 1 / 0

    run = kf.workflow("failing_widget", [divide]).run(raise_on_failure=False)
    widget = kf.dag(run)
    widget.selected = "divide"
    d = widget.details
    assert d["status"] == "failed" and "ZeroDivisionError" in d["error"] and "return 1 / 0" in d["error"]
    assert [(a, s) for a, s, *_ in d["attempts"]] == [(1, "failed"), (2, "failed")]
    assert d["attempts"][0][4].startswith("ZeroDivisionError")
    assert "output" not in d


def test_an_unknown_task_or_run_says_so() -> None:
    with pytest.raises(KeyError, match="no run 'r-nope'"):
        kf.dag("r-nope")
    with pytest.raises(TypeError, match="takes a Run, a run id or a Workflow"):
        kf.dag(42)
    run = _etl().run()
    widget = kf.dag(run)
    widget.selected = "nope"
    assert widget.details == {"task": "nope", "status": "pending"}


def test_the_static_fallback_is_svg_inside_html_coloured_by_status() -> None:
    run = _etl().run()
    bundle = _bundle(kf.dag(run))
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "kernelflow-dag" in bundle["text/html"]
    page = _picture(bundle["text/html"])
    assert page.count("kf-task kf-succeeded") == 4 and "kf-pending" not in page

    @kf.task
    def boom():
        raise ValueError("no")

    failed = kf.workflow("boom_widget", [boom]).run(raise_on_failure=False)
    assert "kf-task kf-failed" in _picture(_bundle(kf.dag(failed))["text/html"])


def test_a_run_from_another_process_is_drawn_from_its_stored_definition(kernelflow_home: Path) -> None:
    code = textwrap.dedent("""
        import kernelflow as kf
        def a():
            return 1
        def b(a):
            return a + 1
        def c(a):
            return a * 2
        print(kf.workflow("elsewhere", [a, b, c]).run().run_id)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    widget = kf.dag(done.stdout.strip())
    assert widget.status == {"a": "succeeded", "b": "succeeded", "c": "succeeded"}
    assert sorted(map(tuple, widget.graph["edges"])) == [("a", "b", "dep"), ("a", "c", "dep")]
    assert "kf-succeeded" in _bundle(widget)["text/html"]


def test_live_pushes_are_batched_and_the_last_state_always_lands(monkeypatch: pytest.MonkeyPatch) -> None:
    widget = kf.dag(_etl())
    applied: list[object] = []
    monkeypatch.setattr(widget, "apply", lambda state: applied.append(state))
    states = [RunState(f"r-{i}") for i in range(1_000)]
    for state in states:
        widget.push(state)
    deadline = time.monotonic() + 5
    while (not applied or applied[-1] is not states[-1]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert applied[-1] is states[-1]
    assert len(applied) <= 3  # one at once, then one per interval: not a thousand messages


def test_big_graphs_push_less_often() -> None:
    small, big = RunState("r-small"), RunState("r-big")
    big.tasks.update({f"t{i}": None for i in range(5_000)})  # type: ignore[misc]
    widget = kf.dag(_etl())
    applied: list[float] = []
    widget.apply = lambda state: applied.append(time.monotonic())  # type: ignore[method-assign]
    widget.push(small, now=True)
    widget.push(small)
    time.sleep(dag_module.UPDATE_INTERVAL + 0.3)
    assert len(applied) == 2  # the second waited one interval
    widget.push(big)
    time.sleep(dag_module.UPDATE_INTERVAL + 0.3)
    assert len(applied) == 2  # 5,000 tasks: the next push waits about 2 s
    deadline = time.monotonic() + 5
    while len(applied) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(applied) == 3 and applied[2] - applied[1] >= 5_000 * dag_module.INTERVAL_PER_TASK - 0.1


def test_a_live_run_lays_its_graph_out_off_the_run_and_reuses_the_layout() -> None:
    wf = _etl()
    first = DagWidget.for_run(wf.run(), layout_now=False)
    deadline = time.monotonic() + 10
    while not first.graph_layout and time.monotonic() < deadline:
        time.sleep(0.02)
    assert set(first.graph_layout["nodes"]) == {"extract", "clean", "audit", "report"}
    calls: list[object] = []
    real = dag_module._dot_layout
    dag_module._dot_layout = lambda graph: calls.append(graph) or real(graph)  # type: ignore[assignment]
    try:
        second = DagWidget.for_run(wf.run(), layout_now=False)
    finally:
        dag_module._dot_layout = real  # type: ignore[assignment]
    assert second.graph_layout == first.graph_layout and calls == []  # the same graph: no second dot run


def test_a_widget_follows_a_run_answered_and_finished_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELFLOW_NO_WATCH", "1")

    @kf.approval("Ship it?")
    def ship():
        return "shipped"

    run = kf.workflow("followed", [ship]).run()
    widget = kf.dag(run.run_id)
    assert widget.status == {"ship": "waiting"} and widget.run_status == "waiting"
    assert dag_module.poller.watching(widget)
    kf.approve(run.run_id, "ship", resume=False)
    kf.resume(run.run_id)
    deadline = time.monotonic() + 10
    while widget.run_status != "succeeded" and time.monotonic() < deadline:
        time.sleep(0.1)  # the shared poller thread re-reads the store
    assert widget.status == {"ship": "succeeded"} and widget.run_status == "succeeded"
    deadline = time.monotonic() + 5
    while dag_module.poller.watching(widget) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not dag_module.poller.watching(widget)  # a finished run is not polled any more


def test_a_re_rendered_view_gets_the_stores_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELFLOW_NO_WATCH", "1")

    @kf.approval("Go?")
    def go():
        return 1

    run = kf.workflow("rerendered", [go]).run()
    widget = kf.dag(run.run_id)
    dag_module.poller.unwatch(widget)  # only the browser's refresh can update it now
    kf.approve(run.run_id, "go", resume=False)
    kf.resume(run.run_id)
    assert widget.run_status == "waiting"
    widget._on_message(widget, {"type": "refresh"}, [])
    assert widget.run_status == "succeeded" and widget.status == {"go": "succeeded"}


# --- in real kernels -----------------------------------------------------------------------

LIVE = [
    "import kernelflow as kf\n%load_ext kernelflow",
    "%%workflow first\ndef a():\n    return 1\n\ndef b(a):\n    return a + 1",
    "run = first.run()",
    "def x():\n    return 2\n\ndef y(x):\n    return 1 / 0\n\nsecond = kf.workflow('second', [x, y]).run(raise_on_failure=False)",
    "kf.dag(run)",
]


def _widget_outputs(nb) -> list[dict]:
    return [o for c in nb.cells for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]


def test_runs_in_a_kernel_show_live_dag_widgets_whose_saved_html_has_the_final_colours(tmp_path: Path, kernel_env: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in LIVE])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert [o for c in nb.cells for o in c.outputs if o.output_type == "error"] == []
    shown = _widget_outputs(nb)
    assert len(shown) == 4  # the definition, two live runs, kf.dag
    definition, first, second, again = (_picture(o["data"]["text/html"]) for o in shown)
    assert "kf-task kf-pending" in definition
    assert first.count("kf-task kf-succeeded") == 2  # re-sent when the run ended
    assert "kf-task kf-succeeded" in second and "kf-task kf-failed" in second
    assert again.count("kf-task kf-succeeded") == 2
    states = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    dags = [s["state"] for s in states.values() if s["state"].get("workflow") in ("first", "second")]
    assert {(d["workflow"], d["run_status"]) for d in dags if d["run_id"]} == {("first", "succeeded"), ("second", "failed")}


SIZE = [
    "import kernelflow as kf\n%load_ext kernelflow",
    *[
        f"def load{i}():\n    return list(range(100))\n\ndef total{i}(load{i}):\n    return sum(load{i})\n\n"
        f"r{i} = kf.workflow('size{i}', [load{i}, total{i}]).run()"
        for i in range(3)
    ],
]


def test_three_dag_widgets_grow_an_executed_notebook_by_under_200_kb(tmp_path: Path, kernel_env: Path) -> None:
    source = tmp_path / "three.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in SIZE]), source)
    out = tmp_path / "three.out.ipynb"
    papermill.execute_notebook(str(source), str(out), cwd=str(tmp_path), progress_bar=False, kernel_name="python3")
    nb = nbformat.read(out, as_version=4)
    assert len(_widget_outputs(nb)) == 3
    growth = out.stat().st_size - source.stat().st_size
    assert growth < 200_000, f"the executed notebook grew by {growth:,} bytes"
    runs = FolderStore(kernel_env).sql("SELECT count(*) FROM runs WHERE status = 'succeeded'").item()
    assert runs == 3
    assert json.loads(out.read_text())["metadata"]["widgets"]  # the widget state is saved, and counted
