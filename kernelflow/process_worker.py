"""A worker process of the ``processes`` executor: runs task attempts sent over a pipe.

Started by :mod:`kernelflow.plugins.process_executor` as
``python -m kernelflow.process_worker READ_FD WRITE_FD``. It talks to the
process running the workflow over a dedicated pipe pair, never over its
stdout or stderr (user code and C extensions print there), in frames: an
8-byte big-endian length, then that many bytes.

The first frame is the orchestrator's ``sys.path`` (pickled), so functions
imported from the user's modules import here too; the worker answers
``ready`` once its imports are done. Then, per attempt, a frame
with the task id (UTF-8) and a frame with :func:`kernelflow.remote_attempt.pack`'s
payload; the answer is one frame with :func:`~kernelflow.remote_attempt.run_packed`'s
pickled result. End of input means stop. A worker whose parent dies kills its
own process group (itself and anything the task started).
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import signal
import struct
import sys
import threading
import time
from typing import BinaryIO

_HEADER = struct.Struct(">Q")
WHERE = "the process that runs the workflow"


def write_frames(out: BinaryIO, *frames: bytes) -> None:
    """Write length-prefixed frames and flush once (one hand-off, not one per frame)."""
    for data in frames:
        out.write(_HEADER.pack(len(data)))
        out.write(data)
    out.flush()


def read_frame(inp: BinaryIO) -> bytes | None:
    """Read one frame; None at end of input (the other side closed or died)."""
    head = inp.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(head)
    data = inp.read(size)
    if len(data) < size:
        return None
    return data


def _watch_parent(parent: int) -> None:
    # Reading the pipe notices a dead parent only between tasks; a long task
    # (and whatever it started) must not outlive the process it works for.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os.killpg(os.getpgrp(), signal.SIGKILL)


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """Answer attempts until the input ends."""
    import cloudpickle

    from kernelflow.remote_attempt import RemoteResult, UnpicklableTaskError, run_packed

    init = read_frame(inp)
    if init is None:
        return
    for entry in reversed(pickle.loads(init)["sys_path"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    write_frames(out, b"ready")  # imports done: attempts now start at once
    while True:
        head = read_frame(inp)
        payload = read_frame(inp) if head is not None else None
        if head is None or payload is None:
            return
        try:
            result = run_packed(payload, where=WHERE)
        except Exception as exc:  # noqa: BLE001 - the attempt did not even load here
            task_id = head.decode()
            error = UnpicklableTaskError(
                f"task {task_id!r} could not be loaded in a worker process ({type(exc).__name__}: {exc}). "
                "A function or class from a module is sent by reference and imported again in the worker: "
                "make that module importable there (the worker has the workflow process's sys.path and "
                "working directory), or define it in the notebook or script, or run this task on executor 'threads'",
                task_id=task_id,
            )
            result = cloudpickle.dumps(RemoteResult(error=error))
        write_frames(out, result)


def main(argv: list[str]) -> int:
    read_fd, write_fd = int(argv[0]), int(argv[1])
    faulthandler.enable()  # a segfault in a C extension leaves a Python traceback on stderr
    threading.Thread(target=_watch_parent, args=(os.getppid(),), name="kernelflow-parent-watch", daemon=True).start()
    try:
        with os.fdopen(read_fd, "rb") as inp, os.fdopen(write_fd, "wb") as out:
            serve(inp, out)
    except BrokenPipeError:  # the orchestrator went away while we answered
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
