"""A workflow whose steps leave traces in files, for the crash-and-resume tests.

``python crashy_flow.py DIR`` runs it (printing the run id to DIR/run_id) and
hangs in ``slow`` while DIR/hang exists, so the test can SIGKILL it there.
Importing the module gives the same workflow to the resuming process.
"""

import os
import sys
import time
from pathlib import Path

import kernelflow as kf


def build(folder: str) -> kf.Workflow:
    trace = Path(folder)

    def note(name: str, text: str = "x") -> None:
        with open(trace / name, "a") as f:
            f.write(text + "\n")

    def extract():
        note("extract")
        return [3, 1, 2]

    def slow(extract):
        ctx = kf.context()
        note("slow", f"{ctx.idempotency_key} attempt={ctx.attempt}")
        paid = kf.remember(lambda: note("payment") or "receipt-1")
        (trace / "slow.started").touch()
        while (trace / "hang").exists():
            time.sleep(0.05)
        return {"total": sum(extract), "receipt": paid}

    def report(slow):
        note("report")
        return f"total {slow['total']} ({slow['receipt']})"

    return kf.workflow("crashy", [extract, slow, report])


if __name__ == "__main__":
    folder = sys.argv[1]
    wf = build(folder)
    run_id = "r-crash" + os.urandom(3).hex()
    Path(folder, "run_id").write_text(run_id)
    wf.run(run_id=run_id)
