"""The built-in ``processes`` executor: Python tasks run in worker processes on this machine.

For CPU-bound Python, which threads cannot run in parallel. Each worker is
its own ``python -m kernelflow.process_worker`` process, started when a task
first needs it and reused by the run's later tasks; there are at most
``min(max_parallel, CPUs)`` of them, and they stop when the run ends. An
attempt travels to a worker as cloudpickle (:mod:`kernelflow.remote_attempt`),
so functions and classes defined in a notebook cell or a script's
``__main__`` go by value: nothing re-runs the user's script in the worker,
which is what ``multiprocessing``'s spawn start method would do.

Own workers rather than ``concurrent.futures.ProcessPoolExecutor``: a timeout
or a cancel kills the one worker (its process group: the task and anything it
started) that runs the attempt, and a new worker replaces it at once; a
killed worker would break a pool as a whole. A worker that dies mid-task (killed, out of
memory, a segfault, ``os._exit``) becomes a failed attempt,
:class:`WorkerDiedError`, retried per the task's policy.

On this side, one thread per worker starts it (and waits until its imports
are done, so an attempt goes to whichever worker is free first, never to one
still starting), sends it attempts and waits for the answers; the engine's
thread only queues them. Frames go over a pipe pair of their own, never over
the worker's stdout (see :mod:`kernelflow.process_worker`).
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from kernelflow.executor_api import ExecutorSpec, TaskCall, TaskOutcome
from kernelflow.health import Health
from kernelflow.plugins.hookspecs import hookimpl
from kernelflow.process_worker import read_frame, write_frames
from kernelflow.remote_attempt import UnpicklableTaskError, outcome, pack
from kernelflow.step_errors import StepError, WorkerDiedError

_STOP = object()
WHERE = "a worker process"


def cpu_count() -> int:
    """CPUs this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class _Job:
    """One attempt; also the engine's handle for it."""

    __slots__ = ("_executor", "call", "report", "state", "worker")

    def __init__(self, executor: ProcessExecutor, call: TaskCall, report: Callable[[TaskOutcome], None]) -> None:
        self._executor = executor
        self.call = call
        self.report = report
        self.state = "queued"  # -> running -> done | cancelled
        self.worker: _Worker | None = None

    def cancel(self) -> bool:
        with self._executor._lock:
            if self.state == "done":
                return False
            was, self.state = self.state, "cancelled"
            worker = self.worker if was == "running" else None
        if worker is not None:
            worker.kill(self)
        return True


class _Worker:
    """One worker process and the thread here that feeds it."""

    def __init__(self, executor: ProcessExecutor, index: int) -> None:
        self.executor = executor
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.send: BinaryIO | None = None
        self.receive: BinaryIO | None = None
        self.job: _Job | None = None  # the attempt the process is running
        self.thread = threading.Thread(
            target=self.work, name=f"kernelflow-processes-{index}", daemon=True
        )

    # --- the process -------------------------------------------------------------------------

    def start(self) -> subprocess.Popen[bytes]:
        if self.proc is not None and self.proc.poll() is not None:
            self.stop()  # died while idle (the OOM killer, a kill from outside)
        if self.proc is not None:
            return self.proc
        to_worker, from_us = os.pipe()
        to_us, from_worker = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kernelflow.process_worker", str(to_worker), str(from_worker)],
                pass_fds=(to_worker, from_worker),
                stdin=subprocess.DEVNULL,
                cwd=os.getcwd(),
                start_new_session=True,  # its own process group: a kill takes what the task started too
            )
        except BaseException:
            for fd in (to_worker, from_us, to_us, from_worker):
                os.close(fd)
            raise
        os.close(to_worker)
        os.close(from_worker)
        self.proc = proc
        self.send = os.fdopen(from_us, "wb")
        self.receive = os.fdopen(to_us, "rb")
        try:
            write_frames(self.send, pickle.dumps({"sys_path": list(sys.path)}))
            ready = read_frame(self.receive)  # the worker's imports take about half a second
        except OSError:
            ready = None
        if ready != b"ready":
            code = proc.wait()
            self.stop()
            raise OSError(f"the worker process exited with code {code} while starting; its stderr says why")
        return proc

    def kill(self, job: _Job | None = None) -> None:
        """Kill the process (and its group) if it runs ``job`` (or anything, when None)."""
        with self.executor._lock:
            proc = self.proc if job is None or self.job is job else None
        if proc is not None and proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self) -> None:
        """Let the process end (end of input) and reap it."""
        proc, self.proc = self.proc, None
        for stream in (self.send, self.receive):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self.send = self.receive = None
        if proc is None:
            return
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()

    # --- the thread --------------------------------------------------------------------------

    def work(self) -> None:
        executor = self.executor
        get = executor._queue.get
        try:
            while True:
                if self.proc is None and not executor._closed:
                    # Ready before taking an attempt: one that is waiting goes to whichever
                    # worker is free first, not to one still starting (about half a second).
                    try:
                        self.start()
                    except OSError:
                        pass  # run() tries again and reports it with the attempt
                job = get()
                if job is _STOP:
                    return
                with executor._lock:
                    if job.state != "queued" or executor._closed:  # cancelled while it waited
                        executor._idle += 1
                        continue
                    job.state, job.worker = "running", self
                result = self.run(job)
                with executor._lock:
                    self.job = None
                    finished = job.state == "running"
                    if finished:
                        job.state = "done"
                    executor._idle += 1
                if not finished:
                    self.stop()  # killed by cancel(): a replacement starts at once (a retry is likely)
                elif result is not None:
                    job.report(result)
        finally:
            self.stop()

    def run(self, job: _Job) -> TaskOutcome | None:
        call = job.call
        try:
            payload = pack(call, WHERE)
        except UnpicklableTaskError as exc:
            return TaskOutcome(call, error=exc)
        try:
            proc = self.start()
        except OSError as exc:
            return TaskOutcome(call, error=StepError(
                f"task {call.task_id!r}: could not start a worker process ({type(exc).__name__}: {exc})",
                task_id=call.task_id,
            ))  # fmt: skip
        with self.executor._lock:
            if job.state != "running":
                return None
            self.job = job
        assert self.send is not None and self.receive is not None
        try:
            write_frames(self.send, call.task_id.encode(), payload)
            del payload
            answer = read_frame(self.receive)
        except OSError:  # BrokenPipeError: it died before reading the attempt
            answer = None
        if answer is None:
            code = proc.wait()
            self.stop()
            return TaskOutcome(call, error=_died(call, proc.pid, code))
        try:
            return outcome(call, answer)
        except Exception as exc:  # noqa: BLE001 - e.g. a result whose class does not import here
            return TaskOutcome(call, error=UnpicklableTaskError(
                f"task {call.task_id!r}: its result could not be loaded back from the worker process "
                f"({type(exc).__name__}: {exc}); return plain data (or write it to a file and return the path)",
                task_id=call.task_id,
            ))  # fmt: skip


def _died(call: TaskCall, pid: int, code: int) -> WorkerDiedError:
    if code < 0:
        try:
            how = f"was killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    return WorkerDiedError(
        f"task {call.task_id!r}: its worker process (pid {pid}) {how} while running attempt {call.attempt}. "
        "It may have run out of memory (the OOM killer sends SIGKILL), crashed in a C extension (SIGSEGV), "
        "called os._exit() or been killed from outside; the worker's stderr has any message it left",
        exit_code=code,
        task_id=call.task_id,
    )


class ProcessExecutor:
    """Runs attempts in worker processes, at most ``min(max_parallel, CPUs)`` at a time.

    Attempts beyond that wait here for a free worker (their timeout is
    already running, as it is from the moment the engine submits them).
    """

    name = "processes"

    def __init__(self, max_parallel: int) -> None:
        self.size = max(1, min(max_parallel, cpu_count()))
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._workers: list[_Worker] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, call: TaskCall, report: Callable[[TaskOutcome], None]) -> _Job:
        job = _Job(self, call, report)
        worker = None
        with self._lock:
            if self._closed:
                raise RuntimeError("this processes executor was shut down; its run has ended")
            if self._idle > 0:
                self._idle -= 1
            elif len(self._workers) < self.size:
                worker = _Worker(self, len(self._workers))
                self._workers.append(worker)
        if worker is not None:
            worker.thread.start()
        self._queue.put(job)
        return job

    def shutdown(self, wait: bool = False) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._workers)
        for worker in workers:
            self._queue.put(_STOP)
            if worker.job is not None:  # the engine has cancelled its attempts by now; to be sure
                worker.kill()
        if wait:
            for worker in workers:
                worker.thread.join()


def health() -> Health:
    """Start one worker and run a trivial attempt in it (what ``kernelflow doctor`` reports)."""
    component = "executor processes"
    executor = ProcessExecutor(1)
    answers: queue.SimpleQueue[TaskOutcome] = queue.SimpleQueue()
    started = time.perf_counter()
    try:
        executor.submit(TaskCall("doctor", "doctor", 1, os.getpid), answers.put)
        answer = answers.get(timeout=30)
    except queue.Empty:
        return Health(component, "error", "a worker process did not answer within 30 s",
                      f"check that `{sys.executable} -m kernelflow.process_worker` starts (is the machine overloaded?)")  # fmt: skip
    finally:
        executor.shutdown(wait=False)
    if not answer.ok:
        return Health(component, "error", f"a worker process failed: {answer.error}",
                      f"check that `{sys.executable} -c 'import kernelflow'` works")  # fmt: skip
    elapsed = time.perf_counter() - started
    return Health(
        component, "ok",
        f"a worker process (pid {answer.value}) started and ran a task in {elapsed:.2f} s; "
        f"up to {cpu_count()} workers per run (one per CPU)",
        info={"executor": "processes", "python": sys.executable, "cpus": cpu_count(), "start_s": round(elapsed, 3)},
    )  # fmt: skip


@hookimpl
def kernelflow_register_executors() -> list[ExecutorSpec]:
    return [
        ExecutorSpec(
            "processes",
            ProcessExecutor,
            "worker processes on this machine, one per CPU: CPU-bound Python; a timeout kills the worker",
            remote=True,
            health=health,
        )
    ]
