"""The scheduler's files in a store folder.

::

    schedules/<name>.json           one registration per schedule (kf.schedule, `kernelflow scheduler add`)
    triggers/<host>-<pid>-<time_ns>-<rand>.jsonl
                                    trigger history: one file per scheduler session, JSON lines
    scheduler/status.json           the running scheduler's heartbeat (pid, host, children, next fire times)
    scheduler/requests/<id>.json    manual firings asked for by `kernelflow scheduler trigger`
    outputs/<schedule>/<time>-<trigger>.log (.ipynb)   what each scheduled run printed (its executed notebook)

Registrations and the status file are replaced through a hidden temporary file
and a rename (:func:`~kernelflow.store.layout.write_atomic`), so a reader sees
the old content or the new one. Trigger files are written like event segments:
opened ``O_APPEND``, one ``os.write`` per record, so a killed scheduler loses
nothing it recorded and a reader at worst meets a torn last line, which it
skips. A trigger's record is appended again each time its outcome changes
(``started`` then ``succeeded``); the ``triggers`` SQL view keeps the latest.

Nothing is created before the first write, like everything else in a store.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from kernelflow.exceptions import StoreError

from .layout import utc_iso_now, write_atomic

SCHEDULES = "schedules"
TRIGGERS = "triggers"
SCHEDULER = "scheduler"

TRIGGER_KINDS = ("cron", "interval", "webhook", "manual", "catch_up")
TRIGGER_OUTCOMES = (
    "started",
    "skipped_overlap",
    "queued",
    "missed",
    "failed_to_start",
    "interrupted",
    "succeeded",
    "failed",
    "suspended",
)
"""``suspended``: the run stopped at an approval gate or breakpoint (exit code 3)."""
FINAL_OUTCOMES = frozenset({"skipped_overlap", "missed", "failed_to_start", "interrupted", "succeeded", "failed", "suspended"})

TRIGGER_COLUMNS: dict[str, str] = {
    "trigger_id": "VARCHAR",
    "schedule": "VARCHAR",
    "kind": "VARCHAR",
    "scheduled_for": "VARCHAR",
    "fired_at": "VARCHAR",
    "outcome": "VARCHAR",
    "run_id": "VARCHAR",
    "run_ids": "VARCHAR[]",
    "pid": "BIGINT",
    "exit_code": "BIGINT",
    "detail": "VARCHAR",
    "at": "VARCHAR",
    "n": "BIGINT",
    "scheduler_pid": "BIGINT",
    "host": "VARCHAR",
}
"""Fields of a trigger record as written (times are UTC ISO text ending in ``Z``)."""


def _stem(name: str) -> str:
    # Schedule names are checked by kernelflow.schedules.check_name (letters, digits, _ . -),
    # so they are file names already; refuse anything else rather than encode it.
    if not name or name.startswith(".") or "/" in name or "\0" in name:
        raise ValueError(f"not a schedule name: {name!r}")
    return name


class SchedulerFiles:
    """Registrations, trigger history, status and manual requests of one store."""

    def __init__(self, root: Path, *, before_write: Callable[[], None] = lambda: None, fsync: bool = False) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self._before_write = before_write
        self._log_fd: int | None = None
        self._log_path: Path | None = None
        self._log_pid = 0
        self._log_n = 0
        self._lock = threading.Lock()

    @property
    def schedules_dir(self) -> Path:
        return self.root / SCHEDULES

    @property
    def triggers_dir(self) -> Path:
        return self.root / TRIGGERS

    @property
    def status_path(self) -> Path:
        return self.root / SCHEDULER / "status.json"

    @property
    def requests_dir(self) -> Path:
        return self.root / SCHEDULER / "requests"

    def _mkdir(self, folder: Path) -> None:
        self._before_write()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {folder}: {exc.strerror or exc}. Free disk space or fix permissions.") from exc

    def _write_json(self, path: Path, data: Any) -> None:
        self._mkdir(path.parent)
        try:
            write_atomic(path, orjson.dumps(data, option=orjson.OPT_INDENT_2), fsync=self.fsync)
        except OSError as exc:
            raise StoreError(f"could not write {path}: {exc.strerror or exc}. Free disk space or fix permissions.") from exc

    @staticmethod
    def _read_json(path: Path) -> Any:
        try:
            return orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError:
            return None  # hand-edited or damaged: treated as absent (reported by the caller)

    # -- registrations ----------------------------------------------------------------

    def register(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Store ``spec`` as schedule ``name`` (replacing a previous one, keeping its
        ``registered_at``); returns the record written."""
        path = self.schedules_dir / f"{_stem(name)}.json"
        old = self._read_json(path)
        # Registering again (a notebook cell run each day) changes the spec, not the schedule's age.
        registered_at = old.get("registered_at") if isinstance(old, dict) else None
        record = {"name": name, "spec": spec, "registered_at": registered_at or utc_iso_now(), "updated_at": utc_iso_now()}
        self._write_json(path, record)
        return record

    def unregister(self, name: str) -> bool:
        """Remove schedule ``name``; False if it was not registered."""
        try:
            os.unlink(self.schedules_dir / f"{_stem(name)}.json")
        except FileNotFoundError:
            return False
        return True

    def registrations(self) -> dict[str, dict[str, Any]]:
        """``{name: {"name", "spec", "registered_at", "updated_at"}}``; unreadable files are
        listed with ``{"error": ...}`` instead of a spec."""
        try:
            names = sorted(os.listdir(self.schedules_dir))
        except FileNotFoundError:
            return {}
        out: dict[str, dict[str, Any]] = {}
        for entry in names:
            if entry.startswith(".") or not entry.endswith(".json"):
                continue
            path = self.schedules_dir / entry
            record = self._read_json(path)
            name = entry[: -len(".json")]
            if not isinstance(record, dict) or not isinstance(record.get("spec"), dict):
                out[name] = {"name": name, "error": f"{path} is not a schedule registration (damaged or edited by hand)"}
                continue
            out[name] = record
        return out

    # -- trigger history ---------------------------------------------------------------

    def record_trigger(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append one trigger record (``at``, ``n``, ``scheduler_pid`` and ``host`` are added)."""
        with self._lock:
            if self._log_fd is None or self._log_pid != os.getpid():
                self._open_log()
            self._log_n += 1
            full = {key: record.get(key) for key in TRIGGER_COLUMNS}
            full.update(at=utc_iso_now(), n=self._log_n, scheduler_pid=os.getpid(), host=os.uname().nodename)
            line = orjson.dumps(full) + b"\n"
            assert self._log_fd is not None
            try:
                written = os.write(self._log_fd, line)  # O_APPEND: one write is one whole line
                if written != len(line):
                    raise OSError(28, "short write")
                if self.fsync:
                    os.fsync(self._log_fd)
            except OSError as exc:
                self._close_log()  # the file may end in a fragment now: continue in a new one
                raise StoreError(
                    f"could not record trigger {record.get('trigger_id')} in {self._log_path}: "
                    f"{exc.strerror or exc}. Free disk space."
                ) from exc
            return full

    def _open_log(self) -> None:
        self._mkdir(self.triggers_dir)
        stem = f"{os.uname().nodename}-{os.getpid()}-{time.time_ns()}-{secrets.token_hex(3)}"
        path = self.triggers_dir / f"{stem}.jsonl"
        self._log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._log_path = path
        self._log_pid = os.getpid()

    def _close_log(self) -> None:
        fd, self._log_fd = self._log_fd, None
        if fd is not None and self._log_pid == os.getpid():
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        """Close this process's trigger file (a new one is opened by the next record)."""
        with self._lock:
            self._close_log()

    def trigger_records(self) -> list[dict[str, Any]]:
        """Every trigger record in every file, in file then line order (torn or damaged lines skipped)."""
        try:
            names = sorted(os.listdir(self.triggers_dir))
        except FileNotFoundError:
            return []
        out: list[dict[str, Any]] = []
        for entry in names:
            if entry.startswith(".") or not entry.endswith(".jsonl"):
                continue
            try:
                data = (self.triggers_dir / entry).read_bytes()
            except FileNotFoundError:
                continue
            for line in data.split(b"\n"):
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(record, dict) and record.get("trigger_id"):
                    out.append(record)
        return out

    def output_dir(self, schedule: str) -> Path:
        """``outputs/<schedule>/`` (created): executed notebooks and logs of scheduled runs."""
        folder = self.root / "outputs" / _stem(schedule)
        self._mkdir(folder)
        return folder

    # -- status and requests ---------------------------------------------------------------

    def write_status(self, status: dict[str, Any]) -> None:
        self._write_json(self.status_path, status)

    def read_status(self) -> dict[str, Any] | None:
        status = self._read_json(self.status_path)
        return status if isinstance(status, dict) else None

    def request(self, request: dict[str, Any]) -> Path:
        """Leave a manual firing request (``trigger_id``, ``schedule``, ``inputs``, ``kind``)
        for the running scheduler's next tick."""
        path = self.requests_dir / f"{_stem(str(request['trigger_id']))}.json"
        self._write_json(path, request)
        return path

    def take_requests(self) -> list[dict[str, Any]]:
        """The waiting requests, oldest first, each removed as it is taken (so it is taken once)."""
        try:
            names = os.listdir(self.requests_dir)
        except FileNotFoundError:
            return []
        found: list[tuple[float, dict[str, Any]]] = []
        for entry in names:
            if entry.startswith(".") or not entry.endswith(".json"):
                continue
            path = self.requests_dir / entry
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                continue
            data = self._read_json(path)
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue  # taken by someone else
            if isinstance(data, dict) and data.get("schedule") and data.get("trigger_id"):
                found.append((mtime, data))
        return [data for _, data in sorted(found, key=lambda item: item[0])]
