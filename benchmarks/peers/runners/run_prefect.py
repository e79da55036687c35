"""Prefect 3: one ``@flow`` per workload, its no-op ``@task`` called per step; the default local setup.

No API URL is set, so Prefect starts its ephemeral server (a subprocess with a
SQLite database under ``$PREFECT_HOME``, which run.py makes once per
invocation and shares between Prefect's processes) and reports task and flow
runs to it; results are not persisted (Prefect's default). The fan-out
submits the children to the flow's default task runner (a thread pool) and
passes their futures to a join task, which Prefect resolves before it runs.

A sample is the flow call, until it returns. The server records task runs
from events the client sends in the background; when flows run back to back
it is still working through the previous flow's events when the next flow
call asks it to create a flow run, so that call waits (measured here: tens of
seconds after a 1,000-task flow on a busy machine). To time each flow on its
own, after every run (cold or warm, not timed) the runner polls the server
until it shows every task run of that flow completed, and reports how long
that took (``settle_s``).
"""

from __future__ import annotations

import time

import common


def main() -> None:
    spec = common.parse_args()
    workload, n = spec["workload"], int(spec["n"])
    started = time.perf_counter()
    from prefect import flow, task

    import_s = time.perf_counter() - started

    started = time.perf_counter()

    @task
    def noop(x):
        return None

    @task
    def nap(x):
        time.sleep(common.SLEEP_S)
        return 0

    @task
    def join(values):
        return len(values)

    @flow
    def chain(n: int):
        value = None
        for _ in range(n):
            value = noop(value)
        return value

    @flow
    def sleeps(n: int):
        value = None
        for _ in range(n):
            value = nap(value)
        return value

    @flow
    def fanout(n: int):
        value = noop(None)
        futures = [noop.submit(value) for _ in range(n)]
        return join(futures)

    define_s = time.perf_counter() - started
    workflow = {"chain": chain, "sleep": sleeps, "fanout": fanout}[workload]

    steps = common.steps_of(workload, n)

    def run_once():
        state = workflow(n, return_state=True)
        return state.state_details.flow_run_id, state.result()

    def check(result):
        expected = n if workload == "fanout" else (0 if workload == "sleep" else None)
        assert result[1] == expected, result

    def settle(result) -> float:
        from prefect.client.orchestration import get_client

        started = time.perf_counter()
        body = {
            "task_runs": {
                "flow_run_id": {"any_": [str(result[0])]},
                "state": {"type": {"any_": ["COMPLETED"]}},
            }
        }
        with get_client(sync_client=True) as client:
            while time.perf_counter() - started < 600:
                done = client.request("POST", "/task_runs/count", json=body).json()
                if done >= steps:
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError(f"the server shows {done} of {steps} task runs completed after 600 s")
        return time.perf_counter() - started

    common.measure(spec, run_once, check, import_s=import_s, define_s=define_s, settle=settle)


if __name__ == "__main__":
    main()
