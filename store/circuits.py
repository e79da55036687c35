"""Circuit-breaker state, shared by every run and process using the store.

``circuits/<file name>.json`` holds one circuit::

    {"name": "payments", "state": {...}}

where ``state`` is the dict :mod:`kernelflow.circuit_breaker` reads and
writes, and the name is kept inside because file names are an encoding of it
(percent-encoded; very long names are cut and get a hash). ``<file
name>.lock`` beside it is ``flock``'ed for the few microseconds of each
read-modify-write; lock files are never deleted, since deleting a lock file
that another process has open would let two processes "hold" it at once.

A state file is replaced through a hidden temporary file and a rename, so a
reader sees the old state or the new one, never half of one. A file damaged
anyway (a machine crash without fsync, a hand edit) reads as no state, with a
warning, and is rewritten by the next call: a breaker that forgets its
failures is better than a workflow that cannot run.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import orjson

from kernelflow.exceptions import StoreError

from .layout import write_atomic

T = TypeVar("T")

STATE_SUFFIX = ".json"
LOCK_SUFFIX = ".lock"
_MAX_STEM = 180  # file names are limited to 255 bytes; leave room for suffixes and temporaries
_STALE_TMP_AGE_S = 3600.0


def file_stem(name: str) -> str:
    """The file name (without suffix) of circuit ``name``.

    Percent-encoded with nothing kept "safe", so ``/`` and ``..`` cannot
    leave the folder; a leading ``.`` is encoded too, because hidden files are
    temporaries in a store. Over-long names keep a prefix plus ``%%`` and a
    hash of the name: ``quote`` never writes ``%%``, so such stems cannot
    collide with a short name's.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a circuit name must be a non-empty string, got {name!r}")
    stem = quote(name, safe="")
    if stem.startswith("."):
        stem = "%2E" + stem[1:]
    if len(stem) > _MAX_STEM:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:24]
        stem = f"{stem[: _MAX_STEM - 26]}%%{digest}"
    return stem


class CircuitTable:
    """Circuit states in ``root`` (``<store>/circuits``), created on first write.

    :meth:`transact` is the one way to change a circuit: a read-modify-write
    that is exclusive across threads (a lock per circuit) and processes
    (``flock`` on the circuit's lock file).

    ``before_write`` is called before anything is created (the store passes
    its "create the store folder and store.json" step); ``fsync`` makes each
    write durable against a machine crash.
    """

    def __init__(self, root: Path, *, before_write: Callable[[], None] = lambda: None, fsync: bool = False) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self._before_write = before_write
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._created = False
        _tables.add(self)

    def __repr__(self) -> str:
        return f"CircuitTable({str(self.root)!r})"

    # -- reading -----------------------------------------------------------------

    def read(self, name: str) -> dict[str, Any] | None:
        """The circuit's state, or ``None`` if it is unknown (or its file is damaged)."""
        return self._read(self._path(file_stem(name)), expect=name)

    def names(self) -> list[str]:
        """Every circuit with a state, sorted."""
        return sorted(self.read_all())

    def read_all(self) -> dict[str, dict[str, Any]]:
        """``{name: state}`` for every circuit with a readable state."""
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return {}
        out: dict[str, dict[str, Any]] = {}
        now = time.time()
        for entry in sorted(entries):
            path = self.root / entry
            if entry.startswith("."):
                self._remove_if_stale(path, now)
                continue
            if not entry.endswith(STATE_SUFFIX):
                continue
            record = self._read_record(path)
            if record is not None:
                out[record["name"]] = record["state"]
        return out

    # -- writing ------------------------------------------------------------------

    def transact(self, name: str, update: Callable[[dict[str, Any] | None], tuple[T, dict[str, Any] | None]]) -> T:
        """Read circuit ``name``, call ``update(state)`` -> ``(result, new_state)``,
        store ``new_state`` (``None`` deletes the circuit) and return ``result``.

        No other thread or process changes the circuit in between. ``update``
        must be a pure function of the state: in the rare race where another
        process creates the store's ``circuits/`` folder at the same moment,
        it is called a second time with the state found under the lock.
        A write that fails (full disk) raises :class:`StoreError` and leaves
        the previous state in place.
        """
        stem = file_stem(name)
        path = self._path(stem)
        first: tuple[T, dict[str, Any] | None] | None = None
        if not self._created and not self.root.is_dir():
            # Nothing exists yet: only create the store if there is something
            # to write (reading or resetting an unknown circuit leaves no trace).
            first = update(None)
            if first[1] is None:
                return first[0]
            self._create()
        with self._thread_lock(stem), self._file_lock(stem):
            old = self._read(path, expect=name)
            if first is not None and old is None:
                result, new = first
            else:
                result, new = update(old)
            if new != old:
                self._write(path, name, new)
        return result

    # -- internals --------------------------------------------------------------------

    def _path(self, stem: str) -> Path:
        return self.root / f"{stem}{STATE_SUFFIX}"

    def _create(self) -> None:
        self._before_write()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create {self.root} for circuit-breaker state: {exc.strerror or exc}. "
                "Free disk space or fix permissions, then retry."
            ) from exc
        self._created = True

    def _thread_lock(self, stem: str) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(stem)
            if lock is None:
                lock = self._locks[stem] = threading.Lock()
            return lock

    def _file_lock(self, stem: str) -> _FileLock:
        if not self._created:
            self._create()  # the folder may have been removed under us, or created by another process
        return _FileLock(self.root / f"{stem}{LOCK_SUFFIX}")

    def _read(self, path: Path, *, expect: str) -> dict[str, Any] | None:
        record = self._read_record(path)
        if record is None:
            return None
        if record["name"] != expect:
            # Only possible for a hand-made file: the stem encodes the name.
            warnings.warn(
                f"{path} holds circuit {record['name']!r}, not {expect!r}; ignoring it "
                f"(it is replaced on the next call of circuit {expect!r})",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        return record["state"]

    def _read_record(self, path: Path) -> dict[str, Any] | None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read circuit state {path}: {exc.strerror or exc}; check its permissions") from exc
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            problem = f"not JSON: {exc}"
        else:
            if isinstance(record, dict) and isinstance(record.get("name"), str) and isinstance(record.get("state"), dict):
                return record
            problem = 'expected {"name": str, "state": {...}}'
        warnings.warn(
            f"circuit state file {path} is damaged ({problem}); that circuit starts again as closed "
            "with no failures and the file is rewritten on its next call",
            RuntimeWarning,
            stacklevel=3,
        )
        return None

    def _write(self, path: Path, name: str, state: dict[str, Any] | None) -> None:
        try:
            if state is None:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                return
            data = orjson.dumps({"name": name, "state": state}, option=orjson.OPT_INDENT_2)
            write_atomic(path, data, fsync=self.fsync)
        except OSError as exc:
            raise StoreError(
                f"could not save the state of circuit {name!r} in {path}: {exc.strerror or exc}. "
                "Free disk space or fix permissions, then retry."
            ) from exc

    @staticmethod
    def _remove_if_stale(path: Path, now: float) -> None:
        # Temporaries of a writer killed between write and rename.
        if ".tmp-" not in path.name:
            return
        try:
            if now - path.stat().st_mtime > _STALE_TMP_AGE_S:
                os.unlink(path)
        except FileNotFoundError:
            pass

    def _after_fork(self) -> None:
        # A lock held by another thread at fork time would never be released
        # in the child.
        self._guard = threading.Lock()
        self._locks = {}


class _FileLock:
    """``flock(LOCK_EX)`` on a file for the length of a ``with`` block."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(
                f"cannot open the circuit lock file {self.path}: {exc.strerror or exc}. "
                "Free disk space or fix permissions, then retry."
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


_tables: weakref.WeakSet[CircuitTable] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for table in list(_tables):
        table._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
