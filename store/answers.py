"""Answers to approval gates, claimed with an exclusive link.

Anyone may answer a gate — the notebook that waits, another notebook, a
script, the CLI — but only the first answer counts. Each answer is first
*claimed* by linking ``answers/<run_id>/<task>.<request seq>.json`` into
place (``link()`` refuses an existing name): the file system picks exactly one winner among any number of
processes. The claim holds the answer (who, when, what); whoever drives the
run turns it into the run's ``Approval*`` event, so ``seq`` stays the driver's
to number. Expiry claims the same file, so a late approval loses to it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import orjson

from .artifacts import safe_component


class Answers:
    """The ``answers/`` folder of one store."""

    def __init__(self, folder: Path, before_write: Callable[[], None], fsync: bool = False) -> None:
        self.folder = folder
        self._before_write = before_write
        self._fsync = fsync

    def path(self, run_id: str, task_id: str, request: int) -> Path:
        return self.folder / safe_component(run_id) / f"{safe_component(task_id)}.{int(request)}.json"

    def claim(self, run_id: str, task_id: str, request: int, answer: Mapping[str, Any]) -> dict[str, Any] | None:
        """Record ``answer`` unless the gate has one; returns None on success,
        else the answer that was there first."""
        self._before_write()
        path = self.path(run_id, task_id, request)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = orjson.dumps(dict(answer))
        # Written whole under a private name, then linked into place: link()
        # fails if the name exists, so exactly one claim wins and nobody ever
        # reads half of one.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
        with open(tmp, "wb") as f:
            f.write(data)
            if self._fsync:
                f.flush()
                os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return self.read(run_id, task_id, request) or {}
        finally:
            os.unlink(tmp)
        return None

    def read(self, run_id: str, task_id: str, request: int) -> dict[str, Any] | None:
        """The claimed answer, or None. A claim being written an instant ago
        reads as None until it is complete."""
        try:
            raw = self.path(run_id, task_id, request).read_bytes()
        except FileNotFoundError:
            return None
        try:
            return dict(orjson.loads(raw))
        except orjson.JSONDecodeError:
            return None

    def names(self, run_id: str) -> list[str]:
        """File names of the claims for one run (a cheap poll: one directory listing)."""
        try:
            return [n for n in os.listdir(self.folder / safe_component(run_id)) if not n.startswith(".")]
        except FileNotFoundError:
            return []
