"""Several processes on one store: nothing lost, no lock errors, seq gapless."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernelflow.store import FolderStore

PROCS = Path(__file__).parent / "procs"
pytestmark = pytest.mark.slow


def test_four_writers_and_a_reader_on_one_store(tmp_path):
    store_dir = tmp_path / "store"
    env = {**os.environ, "KERNELFLOW_HOME": str(store_dir)}
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, str(PROCS / "query_loop.py"), str(stop), str(tmp_path / "reader.json")], env=env
    )
    writers = [
        subprocess.Popen([sys.executable, str(PROCS / "run_many.py"), "250", str(tmp_path / f"w{i}.json")], env=env)
        for i in range(4)
    ]
    codes = [w.wait(timeout=600) for w in writers]
    stop.touch()
    assert reader.wait(timeout=120) == 0
    assert codes == [0, 0, 0, 0]

    written: dict[str, int] = {}
    for i in range(4):
        written.update(json.loads((tmp_path / f"w{i}.json").read_text()))
    assert len(written) == 1000  # 4 processes x 250 runs, distinct run ids

    reader_result = json.loads((tmp_path / "reader.json").read_text())
    assert reader_result["errors"] == []  # no lock error, no error of any kind
    assert len(reader_result["counts"]) > 0
    assert reader_result["counts"] == sorted(reader_result["counts"])  # the past never shrinks

    store = FolderStore(store_dir)
    per_run = store.sql(
        "SELECT run_id, count(*) AS n, count(DISTINCT seq) AS distinct_seq, min(seq) AS lo, max(seq) AS hi, "
        "count(DISTINCT event_id) AS ids FROM events GROUP BY run_id"
    )
    assert len(per_run) == 1000
    for run_id, n, distinct_seq, lo, hi, ids in per_run.rows():
        assert n == written[run_id], run_id  # every event the writer recorded, exactly once
        assert (distinct_seq, lo, hi, ids) == (n, 0, n - 1, n), run_id  # seq gapless from 0
    statuses = store.sql("SELECT status, count(*) AS n FROM runs GROUP BY status").rows()
    assert statuses == [("succeeded", 1000)]
