"""Notebook steps (run: notebook / kf.notebook) and kf.record: real papermill runs in real kernels."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import polars as pl
import pytest

import kernelflow as kf
from kernelflow.exceptions import DefinitionError, RunFailedError
from kernelflow.records import MIME, recorded
from kernelflow.widgets.dag import DagWidget

pytestmark = pytest.mark.slow


def child_notebook(path: Path, parameters: str, body: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(parameters)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, *(nbformat.v4.new_code_cell(src) for src in body)]
    nbformat.write(nb, path)
    return path


def flow(path: Path, step: str, inputs: str = "") -> Path:
    path.write_text(f"name: parent\n{inputs}tasks:\n{step}")
    return path


@pytest.fixture
def child(tmp_path: Path) -> Path:
    return child_notebook(
        tmp_path / "child.ipynb",
        "n = 3\nlabel = 'x'\nratio: float = 0.5",
        [
            "import kernelflow as kf\nimport polars as pl",
            "kf.record('total', sum(range(n)))\nkf.record('label', label * 2)\nkf.record('ratio', ratio)",
            "kf.record('table', pl.DataFrame({'i': list(range(n))}))",
        ],
    )


def test_a_notebook_step_returns_what_the_child_records_and_keeps_its_notebook(tmp_path, child, kernelflow_home):
    wf = kf.load(flow(tmp_path / "f.yaml", "  - id: report\n    run: notebook\n    notebook: child.ipynb\n"
                      "    parameters: {n: '{{inputs.n}}', label: hi, ratio: 2}\n",
                      "inputs:\n  n: {type: int, default: 4}\n"))  # fmt: skip
    run = wf.run(n=5)
    out = run["report"]
    assert {k: out[k] for k in ("total", "label", "ratio")} == {"total": 10, "label": "hihi", "ratio": 2}
    assert out["table"].equals(pl.DataFrame({"i": [0, 1, 2, 3, 4]}))  # not JSON: kept as an artifact
    artifact = kf.sql("SELECT attempt, payload FROM events WHERE type = 'TaskArtifact' AND run_id = ?", [run.run_id])
    assert artifact.height == 1 and artifact["attempt"][0] == 1
    payload = json.loads(artifact["payload"][0])
    assert payload["kind"] == "notebook" and payload["parameters"] == {"n": 5, "label": "hi", "ratio": 2}
    executed = Path(payload["path"])
    assert executed.is_file() and executed.is_relative_to(kernelflow_home)
    nb = nbformat.read(executed, as_version=4)
    assert nb.metadata.papermill.parameters == {"n": 5, "label": "hi", "ratio": 2}
    assert kf.records(executed)["total"] == 10
    # The child's outputs carry the records in their own MIME type, readable without kernelflow.
    docs = [o["data"][MIME] for c in nb.cells for o in c.get("outputs", []) if MIME in o.get("data", {})]
    assert [d["name"] for d in docs] == ["total", "label", "ratio", "table"] and "value_ref" in docs[-1]
    # The DAG widget's details link the executed notebook.
    details = DagWidget.for_run(run).details_of("report")
    assert details["files"] == [[1, "notebook", str(executed)]]


def test_a_failing_child_fails_the_step_naming_the_cell_and_the_executed_notebook(tmp_path):
    child_notebook(tmp_path / "bad.ipynb", "n = 1", ["x = 1 / (n - 1)"])
    wf = kf.load(flow(tmp_path / "f.yaml", "  - id: crunch\n    run: notebook\n    notebook: bad.ipynb\n"))
    with pytest.raises(RunFailedError) as info:
        wf.run()
    message = str(info.value)
    assert "notebook step 'crunch': bad.ipynb failed at cell 2: ZeroDivisionError" in message
    assert "executed notebook: " in message and "crunch.1.ipynb" in message


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ("{n: abc}", "parameter 'n' expects int (parameters cell line 1: n = 3), got str 'abc'"),
        ("{labels: 1}", "has no parameter 'labels' (did you mean 'label'?)\n  fix: its parameters cell defines: n, label, ratio"),
        ("{ratio: 'x'}", "parameter 'ratio' expects float (parameters cell line 3: ratio: float = 0.5)"),
    ],
)
def test_parameters_are_checked_before_a_kernel_starts(tmp_path, child, parameters, message):
    wf = kf.load(flow(tmp_path / "f.yaml", f"  - id: report\n    run: notebook\n    notebook: child.ipynb\n    parameters: {parameters}\n"))
    run = wf.run(raise_on_failure=False)
    assert run.status == "failed"
    error = run.state.tasks["report"].error
    assert message in error["message"]
    assert kf.sql("SELECT count(*) AS n FROM events WHERE type = 'TaskArtifact'")["n"][0] == 0  # nothing executed


def test_a_text_parameter_gets_text(tmp_path, child):
    wf = kf.load(flow(tmp_path / "f.yaml", "  - id: report\n    run: notebook\n    notebook: child.ipynb\n    parameters: {label: 12}\n"))
    assert wf.run()["report"]["label"] == "1212"  # '12' * 2, not 24


def test_missing_notebook_and_bad_definitions_are_clear(tmp_path):
    wf = kf.load(flow(tmp_path / "f.yaml", "  - id: report\n    run: notebook\n    notebook: nowhere.ipynb\n"))
    run = wf.run(raise_on_failure=False)
    assert f"notebook step 'report': notebook 'nowhere.ipynb' not found (looked for {tmp_path / 'nowhere.ipynb'})" in run.state.tasks["report"].error["message"]
    with pytest.raises(DefinitionError, match="f.yaml line 4.*runs a notebook but names none"):
        kf.load(flow(tmp_path / "f.yaml", "  - id: report\n    run: notebook\n    parameters: {a: 1}\n"))
    with pytest.raises(DefinitionError, match="notebook 'report.py' is not a .ipynb file"):
        kf.load(flow(tmp_path / "f.yaml", "  - id: report\n    run: notebook\n    notebook: report.py\n"))
    with pytest.raises(DefinitionError, match="parameters must map parameter names to values"):
        kf.load(flow(tmp_path / "f.yaml", "  - id: report\n    run: notebook\n    notebook: a.ipynb\n    parameters: [1, 2]\n"))
    with pytest.raises(DefinitionError, match="'argv' applies to shell steps"):
        kf.load(flow(tmp_path / "f.yaml", "  - id: report\n    run: notebook\n    notebook: a.ipynb\n    argv: [ls]\n"))


def test_a_timeout_stops_the_childs_kernel(tmp_path):
    child_notebook(tmp_path / "slow.ipynb", "n = 1", ["import time\ntime.sleep(600)"])
    wf = kf.load(flow(tmp_path / "f.yaml", "  - id: slow\n    run: notebook\n    notebook: slow.ipynb\n    timeout: 8s\n"))
    run = wf.run(raise_on_failure=False)
    assert run.status == "failed" and run.state.tasks["slow"].status == "timed_out"
    assert "ran past its timeout of 8s and its kernel was stopped" in run.state.tasks["slow"].error["message"]


def test_record_outside_a_kernel_keeps_the_value_and_refuses_bad_names():
    assert kf.record("answer", 42) == 42 and recorded()["answer"] == 42
    with pytest.raises(kf.KernelflowError, match="the name must be non-empty text"):
        kf.record("", 1)


@pytest.mark.parametrize("name", ["s3cret-report.ipynb", "s3cret-report.txt"])
def test_run_notebook_masks_a_secret_in_a_notebook_path_it_cannot_use(tmp_path, name):
    # called outside a run (no engine to mask its errors), the step masks its own messages
    from kernelflow.notebook_step import run_notebook
    from kernelflow.step_errors import StepError

    with pytest.raises(StepError) as failed:
        run_notebook(name, base_dir=tmp_path, task_id="report", mask=lambda text: text.replace("s3cret", "***"))
    assert "s3cret" not in str(failed.value)
    assert "***-report" in str(failed.value)
