"""Batch runs of notebooks: the real papermill CLI and `kernelflow run`, what each run records, resuming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from kernelflow.store import FolderStore

pytestmark = pytest.mark.slow

# A workflow whose `load` task counts its executions in a file and whose
# `check` task fails until the file `fixed` exists beside the notebook.
BODY = [
    "import kernelflow as kf\nfrom pathlib import Path",
    "def load(n):\n    with open('loads.txt', 'a') as f:\n        f.write('x')\n    return list(range(n))\n\n"
    "def check(load, title):\n    if not Path('fixed').exists():\n        raise ValueError('not fixed yet')\n    return f'{title}: {sum(load)}'\n\n"
    "wf = kf.workflow('batchy', [load, check])",
    "run = wf.run(n=n, title=title)\nprint(run.output)",
]


def notebook(folder: Path, parameters: str = "n = 3\ntitle = 'sum'") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    cell = nbformat.v4.new_code_cell(parameters)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, *(nbformat.v4.new_code_cell(s) for s in BODY)]
    path = folder / "batch.ipynb"
    nbformat.write(nb, path)
    return path


def papermill_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "papermill", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def kernelflow_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kernelflow", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_plain_papermill_records_notebook_parameters_and_output(tmp_path, kernel_env):
    nb = notebook(tmp_path)
    (tmp_path / "fixed").touch()
    (tmp_path / "out").mkdir()
    res = papermill_cli("batch.ipynb", "out/executed.ipynb", "-p", "n", "5", "-p", "title", "total", "--no-progress-bar", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    row = FolderStore(kernel_env).sql("SELECT status, notebook, parameters, output_notebook, batch_id, inputs FROM runs").to_dicts()
    assert len(row) == 1
    assert row[0]["status"] == "succeeded"
    assert row[0]["notebook"] == str(nb)
    assert json.loads(row[0]["parameters"]) == {"n": 5, "title": "total"}
    assert row[0]["output_notebook"] == str(tmp_path / "out" / "executed.ipynb")
    assert row[0]["batch_id"].startswith("pm-")
    assert json.loads(row[0]["inputs"]) == {"n": 5, "title": "total"}


def test_a_failed_workflow_fails_papermill_and_kernelflow_resume_finishes_it(tmp_path, kernel_env):
    notebook(tmp_path)
    res = papermill_cli("batch.ipynb", "out.ipynb", "-p", "n", "4", "--no-progress-bar", cwd=tmp_path)
    assert res.returncode != 0 and "RunFailedError" in res.stderr
    store = FolderStore(kernel_env)
    run_id, status = store.sql("SELECT run_id, status FROM runs").row(0)
    assert status == "failed" and (tmp_path / "loads.txt").read_text() == "x"

    (tmp_path / "fixed").touch()  # the cause is fixed: resume without re-running `load` (papermill issue 824)
    res = kernelflow_cli("resume", run_id, "-o", "out/resumed.ipynb", "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"run {run_id}: succeeded" in res.stdout
    assert (tmp_path / "loads.txt").read_text() == "x"  # load ran once, in the first execution
    store = FolderStore(kernel_env)
    assert store.sql("SELECT count(*) AS n FROM runs")["n"][0] == 1
    # The notebook ran again with the parameters of the first execution.
    resumed = nbformat.read(tmp_path / "out" / "resumed.ipynb", as_version=4)
    assert resumed.metadata.papermill.parameters == {"n": 4}
    assert "sum: 6" in "".join(o.get("text", "") for c in resumed.cells for o in c.get("outputs", []))


def test_kernelflow_run_records_parameters_output_and_checks_types(tmp_path, kernel_env):
    notebook(tmp_path)
    (tmp_path / "fixed").touch()
    res = kernelflow_cli("run", "batch.ipynb", "-p", "n", "6", "-p", "title", "2024", "-o", "out/b.ipynb", "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"executed notebook: {tmp_path / 'out' / 'b.ipynb'}" in res.stdout
    row = FolderStore(kernel_env).sql("SELECT parameters, output_notebook, notebook, actor->>'via' AS via FROM runs").row(0, named=True)
    assert json.loads(row["parameters"]) == {"n": 6, "title": "2024"}  # title is text in the notebook: stays text
    assert row["output_notebook"] == str(tmp_path / "out" / "b.ipynb") and row["via"] == "papermill"

    bad = kernelflow_cli("run", "batch.ipynb", "-p", "n", "six", "--no-progress", cwd=tmp_path)
    assert bad.returncode == 2
    assert "parameter 'n' expects int (parameters cell line 1: n = 3), got str 'six'" in bad.stderr
    unknown = kernelflow_cli("run", "batch.ipynb", "-p", "titel", "x", "--no-progress", cwd=tmp_path)
    assert unknown.returncode == 2 and "has no parameter 'titel' (did you mean 'title'?)" in unknown.stderr
    missing = kernelflow_cli("run", "nowhere.ipynb", cwd=tmp_path)
    assert missing.returncode == 2 and "notebook nowhere.ipynb not found" in missing.stderr
    assert FolderStore(kernel_env).sql("SELECT count(*) AS n FROM runs")["n"][0] == 1  # nothing ran for the bad ones
    assert not os.path.exists(tmp_path / "out" / "batch.ipynb")
