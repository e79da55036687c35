"""Who drives a run right now: one lease file per run, held with ``flock``.

Exactly one process may append to a run at a time, because that process
numbers the run's events (``seq``). It proves it by holding an exclusive
``flock`` on ``leases/<run_id>.lock`` for as long as it drives the run. The
operating system drops the lock when the process dies, however it dies, so
"the run says *running* but nobody holds its lease" is exactly what an
interrupted run looks like — no heartbeat, no timeout to tune.

The file holds who took the lease (pid, host, user, since), for messages
such as "run r-1 is being driven by pid 4242 on host a since ...". It is
unlinked on release; the usual lock-file race (a waiter locking a file that
was just unlinked) is closed by checking, after locking, that the path still
names the locked file.
"""

from __future__ import annotations

import errno
import fcntl
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import orjson

from .artifacts import safe_component


class Lease:
    """An exclusive right to append to one run; :meth:`release` gives it up."""

    def __init__(self, path: Path, fd: int, run_id: str) -> None:
        self.path = path
        self.run_id = run_id
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the lease up (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lease must not outlive its holder object
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class Leases:
    """The ``leases/`` folder of one store."""

    def __init__(self, folder: Path, before_write: Callable[[], None]) -> None:
        self.folder = folder
        self._before_write = before_write

    def path(self, run_id: str) -> Path:
        return self.folder / f"{safe_component(run_id)}.lock"

    def acquire(self, run_id: str) -> Lease | None:
        """The lease of ``run_id``, or None if another process (or another
        driver in this one) holds it. Never blocks."""
        self._before_write()
        self.folder.mkdir(exist_ok=True)
        path = self.path(run_id)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    return None
                raise
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder released (unlinked) between our open and lock
                os.close(fd)
                continue
            holder = {
                "run_id": run_id,
                "pid": os.getpid(),
                "host": os.uname().nodename,
                "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, orjson.dumps(holder), 0)
            return Lease(path, fd, run_id)

    def holder(self, run_id: str) -> dict[str, Any] | None:
        """Who holds the lease of ``run_id`` (pid, host, since), or None if nobody does."""
        path = self.path(run_id)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                pass  # locked exclusively: somebody holds it
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None  # a file nobody locks: left by a release in progress
            raw = os.pread(fd, 4096, 0)
        finally:
            os.close(fd)
        try:
            return dict(orjson.loads(raw))
        except orjson.JSONDecodeError:  # written an instant ago
            return {"run_id": run_id}
