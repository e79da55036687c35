"""Durable execution with real kernels: a kernel SIGKILLed mid-task, and a
papermill batch run suspended at a gate, approved and resumed from the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client import KernelManager
from nbclient import NotebookClient

from kernelflow.reducer import fold
from kernelflow.store import FolderStore

pytestmark = pytest.mark.slow

DEFINE = """
%load_ext kernelflow
import kernelflow as kf, pathlib, time
TRACE = pathlib.Path({trace!r})
def note(name):
    with open(TRACE / name, "a") as f:
        f.write("x\\n")
"""
WORKFLOW = """%%workflow crashy
def extract():
    note("extract")
    return [1, 2, 3]

def slow(extract):
    note("slow")
    (TRACE / "slow.started").touch()
    while (TRACE / "hang").exists():
        time.sleep(0.05)
    return sum(extract)
"""


def _wait(predicate, timeout=60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_kernel_killed_mid_task_is_listed_on_load_and_resumed(tmp_path: Path, kernel_env: Path) -> None:
    (tmp_path / "hang").touch()
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(tmp_path))
    client = km.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        for code in (DEFINE.format(trace=str(tmp_path)), WORKFLOW):
            reply = client.execute_interactive(code, timeout=60)
            assert reply["content"]["status"] == "ok", reply
        client.execute("import os; open(TRACE / 'pid', 'w').write(str(os.getpid())); run = crashy.run(run_id='r-kernelkill')")
        _wait(lambda: (tmp_path / "slow.started").exists())
        os.kill(int((tmp_path / "pid").read_text()), signal.SIGKILL)
        _wait(lambda: not km.is_alive())
    finally:
        client.stop_channels()
        km.cleanup_resources()
    store = FolderStore(kernel_env)
    assert fold(store.read_run("r-kernelkill")).status == "running"
    (tmp_path / "hang").unlink()

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(DEFINE.format(trace=str(tmp_path))),
        nbformat.v4.new_code_cell(WORKFLOW),
        nbformat.v4.new_code_cell("run = kf.resume('r-kernelkill')\nprint(run.status, run['slow'])"),
    ]
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    notice = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert "r-kernelkill (crashy) was interrupted: resume it with kf.resume('r-kernelkill')" in notice
    assert "".join(o.get("text", "") for o in nb.cells[2].outputs).strip() == "succeeded 6"
    assert _count(tmp_path / "extract") == 1 and _count(tmp_path / "slow") == 2
    assert fold(FolderStore(kernel_env).read_run("r-kernelkill")).status == "succeeded"


GATED_NOTEBOOK = [
    "%load_ext kernelflow\nimport kernelflow as kf, pathlib\nTRACE = pathlib.Path({trace!r})",
    "%%workflow shipit\n"
    "def rows():\n"
    "    with open(TRACE / 'rows', 'a') as f:\n"
    "        f.write('x\\n')\n"
    "    return [1, 2, 3]\n\n"
    "@kf.approval('Ship {{n}} rows?', input={{'note': str}})\n"
    "def ship(rows, note):\n"
    "    return f'shipped {{len(rows)}}: {{note}}'\n",
    "run = shipit.run()\nprint(run.summary())",
    "print('shipped:', run['ship'])",
]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kernelflow", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_batch_run_suspends_at_a_gate_and_is_approved_and_resumed_from_the_cli(tmp_path: Path, kernel_env: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c.format(trace=str(tmp_path))) for c in GATED_NOTEBOOK]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "ship.ipynb"
    nbformat.write(nb, path)

    first = _cli("run", str(path), "--no-progress", cwd=tmp_path)
    assert first.returncode == 3, first.stderr
    assert "kernelflow approve" in first.stderr and "kernelflow resume" in first.stderr
    store = FolderStore(kernel_env)
    run_id = store.sql("SELECT run_id FROM runs WHERE workflow = 'shipit'")["run_id"][0]
    assert fold(store.read_run(run_id)).status == "waiting"

    approved = _cli("approve", run_id, "ship", "-i", "note", "looks good", "--by", "dana", cwd=tmp_path)
    assert approved.returncode == 0, approved.stderr
    resumed = _cli("resume", run_id, "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert f"run {run_id}: succeeded" in resumed.stdout
    state = fold(FolderStore(kernel_env).read_run(run_id))
    assert state.status == "succeeded" and state.tasks["ship"].output == "shipped 3: looks good"
    assert _count(tmp_path / "rows") == 1  # the notebook ran again; its completed task did not
    out = nbformat.read(tmp_path / "out" / "ship.resumed.ipynb", as_version=4)
    assert "shipped: shipped 3: looks good" in "".join(o.get("text", "") for o in out.cells[3].outputs)
