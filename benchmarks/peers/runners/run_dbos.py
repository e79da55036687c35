"""DBOS Transact: one ``@DBOS.workflow`` per workload, its no-op ``@DBOS.step`` called per step.

The system database is SQLite (DBOS's default), in the file named by
``$KF_PEERS_STATE`` (run.py makes one per invocation, shared by DBOS's
processes). Every step call is checkpointed: one row with its pickled output,
one transaction. The fan-out enqueues one child workflow per child step on a
queue registered with the defaults (DBOS runs steps concurrently through
queued workflows) and joins on their handles in a final step.
"""

from __future__ import annotations

import os
import time

import common


def main() -> None:
    spec = common.parse_args()
    workload, n = spec["workload"], int(spec["n"])
    started = time.perf_counter()
    from dbos import DBOS

    import_s = time.perf_counter() - started

    started = time.perf_counter()
    DBOS(config={"name": "kfpeers", "system_database_url": f"sqlite:///{os.environ['KF_PEERS_STATE']}"})

    @DBOS.step()
    def noop(x):
        return None

    @DBOS.step()
    def nap(x):
        time.sleep(common.SLEEP_S)
        return 0

    @DBOS.step()
    def join(values):
        return len(values)

    @DBOS.workflow()
    def chain(n):
        value = None
        for _ in range(n):
            value = noop(value)
        return value

    @DBOS.workflow()
    def sleeps(n):
        value = None
        for _ in range(n):
            value = nap(value)
        return value

    @DBOS.workflow()
    def child(value):
        return noop(value)

    @DBOS.workflow()
    def fanout(n):
        value = noop(None)
        handles = [queue.enqueue(child, value) for _ in range(n)]
        return join([h.get_result() for h in handles])

    DBOS.launch()
    queue = DBOS.register_queue("kfpeers_fanout")
    define_s = time.perf_counter() - started

    workflow = {"chain": chain, "sleep": sleeps, "fanout": fanout}[workload]

    def run_once():
        return workflow(n)

    def check(result):
        expected = n if workload == "fanout" else (0 if workload == "sleep" else None)
        assert result == expected, result

    common.measure(spec, run_once, check, import_s=import_s, define_s=define_s)
    DBOS.destroy()


if __name__ == "__main__":
    main()
