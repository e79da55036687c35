"""The ``jsonl`` alert channel type: each alert appended to a file as one JSON line.

    kf.alert_channel("audit", "jsonl", path="/var/log/kernelflow/alerts.jsonl")

A channel type is a factory that checks its settings when the channel is
configured, raising ``ChannelConfigError`` that names the setting and the fix,
and returns an object whose ``send(alert, *, timeout)`` raises on failure.
kernelflow's delivery calls ``send`` on a background thread, retries it with
backoff, rate-limits it and records each outcome as an ``AlertDelivery`` event.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from kernelflow.alert_channels_api import ChannelConfigError, ChannelSendError, check_timeout

TYPE = "jsonl"


class JsonLinesChannel:
    """Appends ``Alert.to_dict()`` plus ``text`` and ``suppressed`` as one line of JSON.

    Settings: ``path`` (the file; its folder must exist, the file is created
    on the first alert) and ``timeout_s`` (seconds a send may take, default 5).
    """

    def __init__(self, *, path: str | os.PathLike[str], timeout_s: float = 5.0) -> None:
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path).strip():
            raise ChannelConfigError(
                f"alert channel type {TYPE!r}: path must be a non-empty file path, got {path!r:.80}",
                hint="for example path='alerts.jsonl'",
            )
        file = Path(path).expanduser().absolute()
        if file.is_dir():
            raise ChannelConfigError(
                f"alert channel type {TYPE!r}: path {str(file)!r} is a folder, not a file",
                hint=f"name a file in it, for example path={str(file / 'alerts.jsonl')!r}",
            )
        if not file.parent.is_dir():
            raise ChannelConfigError(
                f"alert channel type {TYPE!r}: the folder of path {str(file)!r} does not exist",
                hint=f"create {str(file.parent)!r} first, or pick a file in an existing folder",
            )
        self.path = file
        self.timeout_s = check_timeout(TYPE, "timeout_s", timeout_s)
        self._lock = threading.Lock()

    def send(self, alert: Any, *, timeout: float, suppressed: int = 0) -> None:
        record = {**alert.to_dict(), "text": f"{alert.subject}: {alert.figure()}", "suppressed": suppressed}
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        try:
            with self._lock, open(self.path, "a", encoding="utf-8") as out:
                out.write(line)  # append mode, one write: processes sharing the file add whole lines
        except FileNotFoundError as exc:
            raise ChannelSendError(f"cannot append to {self.path}: its folder is gone ({exc})", retry=False) from exc
        except OSError as exc:
            raise ChannelSendError(f"cannot append to {self.path}: {exc}") from exc

    def __repr__(self) -> str:
        return f"JsonLinesChannel(path={str(self.path)!r})"
