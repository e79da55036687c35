"""Errors raised by the built-in step actions (shell, http, sub-workflow).

They derive from :class:`~kernelflow.exceptions.KernelflowError`, so a failed
step renders in a notebook as its message alone. Every message names the
step's task id and says what went wrong; texts that could carry secrets
(command lines, stderr, URLs, response bodies) are masked before they reach a
message or an attribute.

The errors pickle with their attributes intact: an executor may run a step in
another process and send the exception back.
"""

from __future__ import annotations

from typing import Any

from .exceptions import KernelflowError

__all__ = [
    "HttpStepError",
    "ShellStepError",
    "StepCancelledError",
    "StepError",
    "StepTimeoutError",
    "WorkerDiedError",
]


class StepError(KernelflowError):
    """A built-in step (shell, http, sub-workflow) failed; the message says why.

    ``task_id`` names the step when it is known.
    """

    def __init__(self, message: str, *, task_id: str | None = None):
        super().__init__(message)
        self.message = message
        self.task_id = task_id

    def _state(self) -> dict[str, Any]:
        # Keyword arguments that rebuild this error; subclasses add theirs.
        return {"task_id": self.task_id}

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's default reduce passes only ``args`` back to __init__,
        # which would lose (or fail on) the keyword-only attributes.
        return (_rebuild, (type(self), self.message, self._state()))


def _rebuild(cls: type[StepError], message: str, state: dict[str, Any]) -> StepError:
    return cls(message, **state)


class StepTimeoutError(StepError, TimeoutError):
    """A step ran past its timeout and was stopped (process group killed / request aborted).

    ``timeout`` is the limit in seconds.
    """

    def __init__(self, message: str, *, timeout: float, task_id: str | None = None):
        super().__init__(message, task_id=task_id)
        self.timeout = timeout

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "timeout": self.timeout}


class StepCancelledError(StepError):
    """A running step was stopped from outside (the run was interrupted or cancelled)."""


class ShellStepError(StepError):
    """A shell step's command ended unsuccessfully.

    ``exit_code`` is the process's return code (negative: killed by that
    signal number); ``stderr_tail`` the (masked) end of its stderr.
    """

    def __init__(self, message: str, *, exit_code: int, stderr_tail: str, task_id: str | None = None):
        super().__init__(message, task_id=task_id)
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "exit_code": self.exit_code, "stderr_tail": self.stderr_tail}


class HttpStepError(StepError):
    """An HTTP step got a non-2xx response or could not reach the server.

    ``status`` is the response status, or None when there was no response
    (connection refused, DNS failure, broken connection); ``body_excerpt`` the
    (masked) start of the response body, empty without one.
    """

    def __init__(self, message: str, *, status: int | None, body_excerpt: str = "", task_id: str | None = None):
        super().__init__(message, task_id=task_id)
        self.status = status
        self.body_excerpt = body_excerpt

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "status": self.status, "body_excerpt": self.body_excerpt}


class WorkerDiedError(StepError):
    """The process running an attempt died before answering (a worker process
    of the ``processes`` executor, a Dask worker): killed, out of memory or
    crashed. Retried per the task's policy (``retry_on=["WorkerDiedError"]``
    to retry only these).

    ``exit_code``: the process's return code when known (negative: killed by
    that signal); ``worker``: the worker's address when known.
    """

    def __init__(self, message: str, *, task_id: str | None = None, exit_code: int | None = None,
                 worker: str | None = None):  # fmt: skip
        super().__init__(message, task_id=task_id)
        self.exit_code = exit_code
        self.worker = worker

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "exit_code": self.exit_code, "worker": self.worker}
