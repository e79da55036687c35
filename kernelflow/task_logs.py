"""What a task printed: stdout, stderr and log records, captured per attempt.

Tasks run on threads that share ``sys.stdout`` with the notebook, so the
capture is routed by thread: while an attempt runs, writes from its thread go
to that attempt's buffer *and* on to the real stream (the user still sees them
in the cell). The router is installed only while some attempt captures (or
an executor holds it for a run, :func:`hold`) and steps aside afterwards, so
nothing of ours stays in ``sys.stdout`` between runs. Output of threads a task starts itself is not captured (it is still
printed).

Only the tail is kept (:data:`KEEP_CHARS`): a log is for reading in the DAG's
details panel and in SQL, not an archive.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

KEEP_CHARS = 8_000
"""Characters kept per attempt (the end of the output; the start is dropped)."""

_local = threading.local()
_lock = threading.Lock()
_active = 0
_saved: tuple[TextIO, TextIO] | None = None


class _Buffer:
    __slots__ = ("parts", "size", "dropped")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.dropped = False

    def write(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        if self.size > 4 * KEEP_CHARS:  # compact now and then, keeping the tail
            joined = "".join(self.parts)[-KEEP_CHARS:]
            self.parts, self.size, self.dropped = [joined], len(joined), True

    def text(self) -> tuple[str, bool]:
        joined = "".join(self.parts)
        return joined[-KEEP_CHARS:], self.dropped or len(joined) > KEEP_CHARS


class _Router:
    """Stands in for ``sys.stdout``/``sys.stderr`` while attempts capture."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        buffer = getattr(_local, "buffer", None)
        if buffer is not None and isinstance(text, str):
            buffer.write(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, ...
        return getattr(self._stream, name)


class _RecordHandler(logging.Handler):
    """Log records emitted on a capturing thread, formatted into its buffer."""

    def emit(self, record: logging.LogRecord) -> None:
        buffer = getattr(_local, "buffer", None)
        if buffer is not None:
            try:
                buffer.write(self.format(record) + "\n")
            except Exception:  # noqa: BLE001 - a bad record must not fail the task
                self.handleError(record)


_handler = _RecordHandler(logging.INFO)
_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))


def hold() -> None:
    """Install the router (if it is not) and keep it until :func:`let_go`.

    An executor that runs many attempts holds it for its lifetime, so each
    attempt's capture costs a thread-local swap instead of replacing
    ``sys.stdout``, ``sys.stderr`` and the root logger's handlers.
    """
    global _active, _saved
    with _lock:
        _active += 1
        if _active == 1:
            _saved = (sys.stdout, sys.stderr)
            sys.stdout, sys.stderr = _Router(sys.stdout), _Router(sys.stderr)  # type: ignore[assignment]
            logging.getLogger().addHandler(_handler)


def let_go() -> None:
    """Undo one :func:`hold`; the last one puts the streams back."""
    global _active, _saved
    with _lock:
        _active -= 1
        if _active == 0 and _saved is not None:
            # Someone else may have swapped the streams meanwhile (%%capture): leave theirs.
            if isinstance(sys.stdout, _Router):
                sys.stdout = _saved[0]
            if isinstance(sys.stderr, _Router):
                sys.stderr = _saved[1]
            _saved = None
            logging.getLogger().removeHandler(_handler)


class Captured:
    """The output of one attempt, available when the ``with`` block ends."""

    text: str = ""
    truncated: bool = False


class capture:  # noqa: N801 - used like the function it replaces: ``with capture() as out``
    """Capture what the current thread prints and logs until the block ends."""

    __slots__ = ("_result", "_outer", "_buffer")

    def __enter__(self) -> Captured:
        self._result = Captured()
        self._outer = getattr(_local, "buffer", None)  # a sub-workflow inline inside a task: nest
        self._buffer = _local.buffer = _Buffer()
        hold()
        return self._result

    def __exit__(self, *exc_info: object) -> None:
        _local.buffer = outer = self._outer
        let_go()
        result = self._result
        result.text, result.truncated = self._buffer.text()
        if outer is not None and result.text:
            outer.write(result.text)
