"""Notebooks run by real kernels: nbclient, papermill and the `kernelflow run` CLI."""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from kernelflow.store import FolderStore
from kernelflow.widgets.fallback import embedded_svgs

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "notebooks" / "01-quickstart.ipynb"
pytestmark = pytest.mark.slow


def errors_in(nb) -> list[str]:
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]


def test_quickstart_executes_under_nbclient(tmp_path, kernel_env):
    nb = nbformat.read(QUICKSTART, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert errors_in(nb) == []
    # The %%workflow cell shows the DAG: an SVG inside HTML (dot is installed) and text.
    definition = next(c for c in nb.cells if c.source.startswith("%%workflow etl"))
    data = definition.outputs[0]["data"]
    assert "<img class='kf-dag-picture'" in data["text/html"]  # the SVG as a data URI (see widgets/fallback.py)
    page = html.unescape("".join(embedded_svgs(data["text/html"])))  # dot writes '-' in ids as &#45;
    assert "<svg" in page and 'id="task-clean"' in page and "kf-task kf-pending" in page
    assert "clean ← extract" in data["text/plain"]
    runs = FolderStore(kernel_env).sql("SELECT workflow, status FROM runs ORDER BY started_at")
    assert runs.rows() == [("etl", "succeeded"), ("etl", "succeeded"), ("fragile", "failed")]


def test_quickstart_under_papermill_with_a_parameter(tmp_path, kernel_env):
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(QUICKSTART), str(out), parameters={"n": 7}, cwd=str(tmp_path), progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    assert nb.metadata.papermill.parameters == {"n": 7}
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    store = FolderStore(kernel_env)
    first = store.sql("SELECT inputs FROM runs WHERE workflow = 'etl' ORDER BY started_at LIMIT 1")
    assert json.loads(first["inputs"][0]) == {"n": 7}
    summary = store.sql("SELECT tasks_succeeded FROM runs WHERE workflow = 'etl' ORDER BY started_at LIMIT 1")
    assert summary["tasks_succeeded"][0] == 5


FAILING = [
    "%load_ext kernelflow",
    "%%workflow broken\ndef load():\n    return 0\n\ndef divide(load):\n    return 1 / load",
    "run = broken.run()",
    "print('never reached')",
]


def _notebook(sources: list[str]):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def test_a_failed_run_fails_the_notebook(tmp_path, kernel_env):
    nb = _notebook(FAILING)
    with pytest.raises(CellExecutionError) as err:
        NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    assert "RunFailedError" in str(err.value) and "task 'divide' raised ZeroDivisionError" in str(err.value)
    path = tmp_path / "failing.ipynb"
    nbformat.write(_notebook(FAILING), path)
    with pytest.raises(papermill.PapermillExecutionError) as perr:
        papermill.execute_notebook(str(path), str(tmp_path / "out.ipynb"), progress_bar=False)
    assert perr.value.ename == "RunFailedError"


def test_a_bad_cell_fails_the_notebook_with_the_cell_line(tmp_path, kernel_env):
    nb = _notebook(["%load_ext kernelflow", "%%workflow w\ndef a():\n    return 1\n\ndef b(a):\n    return a +\n"])
    with pytest.raises(CellExecutionError) as err:
        NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    assert "DefinitionError" in str(err.value) and "cell line 6: syntax error" in str(err.value)
    assert not kernel_env.exists()  # a definition error writes nothing to the store


def _cli(*args, cwd, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "kernelflow.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_cli_run_executes_a_notebook_and_prints_the_summary(tmp_path, kernel_env):
    copy = tmp_path / "nb" / "quick.ipynb"
    copy.parent.mkdir()
    shutil.copy(QUICKSTART, copy)
    res = _cli("run", str(copy), "-p", "n", "9", "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "runs recorded by this notebook (3" in res.stdout
    out_line = next(line for line in res.stdout.splitlines() if line.startswith("executed notebook: "))
    executed = Path(out_line.split(": ", 1)[1])
    assert executed.exists() and executed == tmp_path / "out" / "quick.ipynb"
    assert nbformat.read(executed, as_version=4).metadata.papermill.parameters == {"n": 9}
    # the runs carry the notebook path and came through papermill
    store = FolderStore(kernel_env)
    rows = store.sql("SELECT notebook, actor->>'via' AS via FROM runs")
    assert set(rows.rows()) == {(str(copy.resolve()), "papermill")}


def test_cli_run_exits_non_zero_when_the_notebook_fails(tmp_path, kernel_env):
    path = tmp_path / "failing.ipynb"
    nbformat.write(_notebook(FAILING), path)
    res = _cli("run", str(path), "--no-progress", cwd=tmp_path)
    assert res.returncode == 1
    assert "notebook failed at cell" in res.stderr and "RunFailedError" in res.stderr
    assert "broken" in res.stdout and "failed" in res.stdout  # the summary still lists the run
