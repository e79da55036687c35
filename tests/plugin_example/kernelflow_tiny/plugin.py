"""An executor named "tiny": runs each attempt synchronously and counts them."""

from kernelflow import hookimpl
from kernelflow.executor_api import ExecutorSpec
from kernelflow.plugins.thread_executor import run_attempt

ATTEMPTS: list[str] = []


class TinyExecutor:
    name = "tiny"

    def __init__(self, max_parallel: int) -> None:
        self.max_parallel = max_parallel

    def submit(self, call, report):
        ATTEMPTS.append(call.task_id)
        report(run_attempt(call))
        return self

    def cancel(self) -> bool:
        return False

    def shutdown(self, wait: bool = False) -> None:
        pass


@hookimpl
def kernelflow_register_executors():
    return [ExecutorSpec("tiny", TinyExecutor, "runs tasks synchronously (test plugin)")]
