"""Where things live in a store folder, the ``store.json`` marker, and schema migrations.

A store is a plain folder::

    .kernelflow/
      store.json                  marker: kind, schema_version, created_at, migrations
      store.lock                  flock'ed while migrating, merging or rewriting events files
      segments/<stem>.jsonl       one open or not-yet-compacted event log per writer process
      events/<stem>.parquet       compacted segments, sorted by run_id, seq
      events/merged+<id>.parquet  small compacted files merged (+ <id>.sources: what it replaces)
      quarantine/<name>           damaged files put aside, each with a <name>.txt note
      workflows/<name>/<version>.json
      artifacts/<run_id>/<task_id>.<attempt>.<ext>
      schedules/<name>.json       schedule registrations (store/schedules.py)
      triggers/<stem>.jsonl       trigger history, one file per scheduler session
      scheduler/                  the running scheduler's status.json and manual requests/

Nothing here is created until the first write (:func:`ensure_created`), so a
store opened on a mistyped path, or by a command that fails validation, leaves
no trace on disk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson

from kernelflow.exceptions import NotAStoreError, StoreError, StoreVersionError

KIND = "kernelflow-store"
MARKER = "store.json"
LOCK = "store.lock"
SCHEMA_VERSION = 2
"""The schema this code reads and writes. Bump it together with a migration.

1. The first schema: segments compacted one-to-one into Parquet files.
2. Events files carry ``kernelflow_events = "2"`` metadata, are sorted by
   ``run_id, seq`` with pinned row groups, and small ones are merged
   (``store/eventfiles.py``), so a one-run lookup costs a few files, not one
   per session the store has ever seen."""

DEFAULT_FOLDER = ".kernelflow"
HOME_ENV = "KERNELFLOW_HOME"

Migration = Callable[[Path], None]


def _sort_events_by_run(root: Path) -> None:
    from .eventfiles import migrate_sort_events_by_run

    migrate_sort_events_by_run(Layout(root))


MIGRATIONS: list[tuple[int, str, Migration]] = [(2, "sort-events-by-run", _sort_events_by_run)]
"""Ordered ``(to_version, name, fn)``: ``fn(root)`` upgrades a store from
``to_version - 1`` to ``to_version`` in place, while :func:`migrate` holds
``store.lock``. A migration must be safe to run again if it was interrupted
(the marker is only bumped after it returns)."""


def default_location() -> Path:
    """``$KERNELFLOW_HOME`` if set, else ``.kernelflow`` in the working directory."""
    home = os.environ.get(HOME_ENV)
    return Path(home).expanduser() if home else Path(DEFAULT_FOLDER)


def kernelflow_version() -> str:
    try:
        from importlib.metadata import version

        return version("kernelflow")
    except Exception:  # running from a source tree that was never installed
        return "unknown"


def utc_iso_now() -> str:
    # Always UTC with an explicit 'Z': DuckDB's cast to TIMESTAMP ignores offsets.
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Layout:
    """Paths inside one store folder."""

    root: Path

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def segments(self) -> Path:
        return self.root / "segments"

    @property
    def events(self) -> Path:
        return self.root / "events"

    @property
    def workflows(self) -> Path:
        return self.root / "workflows"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def triggers(self) -> Path:
        return self.root / "triggers"


# --- small file-system helpers ---------------------------------------------------


def fsync_dir(path: Path) -> None:
    """Make a rename/creation inside ``path`` durable (POSIX needs the directory fsynced)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(target: Path) -> Path:
    """A hidden sibling of ``target``: never matched by the listings readers make."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def write_atomic(target: Path, data: bytes, *, fsync: bool, no_clobber: bool = False) -> bool:
    """Write ``data`` to ``target`` through a temporary file and a rename, so a
    reader never sees a half-written file.

    With ``no_clobber`` an existing ``target`` wins (returns False): the file is
    linked into place, which fails if the name is taken, instead of renamed.
    """
    tmp = tmp_name(target)
    renamed = False  # once renamed, tmp names the target: not ours to delete
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if no_clobber:
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                # File systems without hard links: a racing writer may win the
                # rename instead, which only changes who wrote the same content.
                if target.exists():
                    return False
                os.rename(tmp, target)
                renamed = True
        else:
            os.rename(tmp, target)
            renamed = True
        if fsync:
            fsync_dir(target.parent)
        return True
    finally:
        if not renamed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold ``flock(LOCK_EX)`` on ``path`` (created if needed) for a short critical section."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


# --- the marker -------------------------------------------------------------------

_FIX_NEW_FOLDER = f"Point {HOME_ENV} at a new or empty folder, or move the folder away."
_FIX_OTHERWISE = f"otherwise point {HOME_ENV} at a new or empty folder, or move the folder away."


def _is_our_temp(name: str) -> bool:
    return name.startswith(f".{MARKER}.tmp-")


def read_marker(layout: Layout) -> dict[str, Any] | None:
    """Validate what is at ``layout.root`` without creating anything.

    Returns the marker, or ``None`` when there is no store yet (the folder is
    missing or empty) and one may be created there on the first write.
    """
    root = layout.root
    try:
        st = root.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot access the store folder {root}: {exc.strerror}; check its permissions") from exc
    if not _stat_is_dir(st):
        raise NotAStoreError(
            f"{root} is a file, not a kernelflow store folder. "
            f"Point {HOME_ENV} at a folder (new or existing store), or move the file away."
        )
    try:
        raw = layout.marker.read_bytes()
    except FileNotFoundError:
        try:
            entries = [n for n in os.listdir(root) if not _is_our_temp(n)]
        except OSError as exc:
            raise StoreError(f"cannot list the store folder {root}: {exc.strerror}; check its permissions") from exc
        if MARKER in entries:
            # Created by a racing writer between our read and our listing
            # (it may have added more files since): read what it wrote.
            return read_marker(layout)
        if entries:
            raise NotAStoreError(
                f"{root} exists but is not a kernelflow store (no {MARKER}). {_FIX_NEW_FOLDER}"
            )
        return None
    except OSError as exc:
        raise StoreError(
            f"cannot read {layout.marker}: {exc.strerror}; check the file's permissions"
        ) from exc
    return _parse_marker(layout.marker, raw)


def _stat_is_dir(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode)


def _parse_marker(path: Path, raw: bytes) -> dict[str, Any]:
    restore = orjson.dumps({"kind": KIND, "schema_version": SCHEMA_VERSION}).decode()
    try:
        marker = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise NotAStoreError(
            f"{path} is not valid JSON ({exc}), so this folder cannot be opened as a kernelflow store. "
            f"If it is a kernelflow store whose marker was damaged, write {restore} into it; "
            + _FIX_OTHERWISE
        ) from exc
    if not isinstance(marker, dict) or marker.get("kind") != KIND:
        kind = marker.get("kind") if isinstance(marker, dict) else type(marker).__name__
        raise NotAStoreError(
            f"{path} does not describe a kernelflow store (kind {kind!r}, expected {KIND!r}); "
            f"the folder belongs to something else. {_FIX_NEW_FOLDER}"
        )
    version = marker.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise NotAStoreError(
            f"{path} has no valid schema_version (found {version!r}). "
            f"If it is a kernelflow store whose marker was damaged, set \"schema_version\": {SCHEMA_VERSION}; "
            + _FIX_OTHERWISE
        )
    if version > SCHEMA_VERSION:
        written_by = marker.get("written_by") or "a newer kernelflow"
        raise StoreVersionError(
            f"{path} has schema version {version} (written by kernelflow {written_by}); "
            f"this kernelflow ({kernelflow_version()}) supports schema version {SCHEMA_VERSION} at most. "
            f"Upgrade kernelflow (`pip install -U kernelflow`) or point {HOME_ENV} at another folder."
        )
    return marker


def ensure_created(layout: Layout, *, fsync: bool) -> dict[str, Any]:
    """Create the store folder and its marker if they do not exist yet; return the marker.

    The marker is created before anything else in the folder, so a racing
    process never sees a non-empty folder without one.
    """
    marker = read_marker(layout)
    if marker is not None:
        return marker
    try:
        layout.root.mkdir(parents=True, exist_ok=True)
        new = {
            "kind": KIND,
            "schema_version": SCHEMA_VERSION,
            "created_at": utc_iso_now(),
            "written_by": kernelflow_version(),
            "migrations": [],
        }
        write_atomic(layout.marker, orjson.dumps(new, option=orjson.OPT_INDENT_2), fsync=fsync, no_clobber=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the kernelflow store at {layout.root}: {exc.strerror}. "
            f"Check permissions and free space, or point {HOME_ENV} at a writable folder."
        ) from exc
    # Whoever won a creation race, the marker now on disk is the one to honour.
    marker = read_marker(layout)
    assert marker is not None
    return marker


def migrate(layout: Layout, marker: dict[str, Any]) -> dict[str, Any]:
    """Bring an older store up to :data:`SCHEMA_VERSION`; return the new marker.

    Runs under ``store.lock`` so two processes opening an old store at once
    migrate it once; the marker is re-read under the lock because the other
    process may have finished first.
    """
    if marker["schema_version"] >= SCHEMA_VERSION:
        return marker
    with exclusive_lock(layout.lock):
        marker = read_marker(layout) or marker
        for to_version, name, fn in MIGRATIONS:
            if to_version <= marker["schema_version"] or to_version > SCHEMA_VERSION:
                continue
            try:
                fn(layout.root)
            except Exception as exc:
                raise StoreError(
                    f"migrating the store {layout.root} to schema version {to_version} "
                    f"(migration {name!r}) failed: {type(exc).__name__}: {exc}. The store was left at "
                    f"schema version {marker['schema_version']}; fix the cause and open it again, "
                    "or report it at the kernelflow issue tracker with this message."
                ) from exc
            marker = dict(marker)
            marker["schema_version"] = to_version
            marker["written_by"] = kernelflow_version()
            marker["migrations"] = [
                *marker.get("migrations", []),
                {"to_version": to_version, "name": name, "at": utc_iso_now()},
            ]
            # Bump after each step, so an interruption resumes at the next one.
            write_atomic(layout.marker, orjson.dumps(marker, option=orjson.OPT_INDENT_2), fsync=True)
        if marker["schema_version"] < SCHEMA_VERSION:
            raise StoreError(
                f"{layout.marker} has schema version {marker['schema_version']} and no migration "
                f"leads to version {SCHEMA_VERSION}; this is a kernelflow bug, please report it."
            )
    return marker
