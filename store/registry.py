"""The workflow registry: one immutable JSON file per workflow version.

``workflows/<name>/<version>.json`` is the definition as the engine gave it,
plus ``registered_at``. A version is a hash of the definition, so the first
file written for it is as good as any later one; it is never overwritten.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Mapping

import orjson

from kernelflow.exceptions import StoreError

from .artifacts import safe_component
from .layout import Layout, utc_iso_now, write_atomic


class WorkflowRegistry:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._written: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def register(
        self, definition: Mapping[str, Any], *, fsync: bool, before_write: Callable[[], None] = lambda: None
    ) -> bool:
        """Write the definition unless that version is on disk already; True if written now."""
        try:
            key = (str(definition["name"]), str(definition["version"]))
        except KeyError as exc:
            raise StoreError(
                f"a workflow definition needs {exc.args[0]!r} to be registered "
                f"(got keys {sorted(definition)}); this is a kernelflow bug, please report it"
            ) from None
        if key in self._written:  # the common case: every run of a known version
            return False
        with self._lock:
            if key in self._written:
                return False
            target = self.layout.workflows / safe_component(key[0]) / f"{safe_component(key[1])}.json"
            written = False
            if not target.exists():
                record = {**definition, "registered_at": utc_iso_now()}
                try:
                    data = orjson.dumps(record, option=orjson.OPT_INDENT_2)
                except TypeError as exc:
                    raise StoreError(
                        f"workflow {key[0]!r} version {key[1]!r} cannot be registered: its definition "
                        f"is not JSON-serialisable ({exc}); this is a kernelflow bug, please report it"
                    ) from exc
                before_write()
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    written = write_atomic(target, data, fsync=fsync, no_clobber=True)
                except OSError as exc:
                    raise StoreError(
                        f"could not register workflow {key[0]!r} in {target}: {exc.strerror or exc}. "
                        "Free disk space or fix permissions, then retry."
                    ) from exc
            self._written.add(key)
            return written
