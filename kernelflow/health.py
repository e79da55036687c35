"""Health checks: what ``kernelflow doctor`` reports for each part.

Executors (``ExecutorSpec.health``), stores (``EventStore.health()``) and
the doctor's own probes of optional tools all answer with a :class:`Health`:
what was found and, when something is wrong, what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "warning", "error"]


@dataclass(frozen=True)
class Health:
    """One component's health.

    ``component`` names it (``store``, ``executor dask``, ``tool dot``);
    ``detail`` says what was found; ``fix`` says what to do when ``status``
    is not ``"ok"``.
    """

    component: str
    status: Status
    detail: str
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"
