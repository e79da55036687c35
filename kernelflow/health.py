"""Health checks: what ``kernelflow doctor`` reports for each part.

Executors (``ExecutorSpec.health``), stores (``EventStore.health()``) and
the doctor's own probes of optional tools all answer with a :class:`Health`:
what was found and, when something is wrong, what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

Status = Literal["ok", "warning", "error"]


@dataclass(frozen=True)
class Health:
    """One component's health.

    ``component`` names it (``store``, ``executor dask``, ``tool dot``);
    ``detail`` says what was found; ``fix`` says what to do when ``status``
    is not ``"ok"``; ``info`` holds what was measured as JSON-safe values
    (a store's ``path``, ``schema_version``, ``bytes``, ``writable``), for
    ``kernelflow doctor --json``.
    """

    component: str
    status: Status
    detail: str
    fix: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {"component": self.component, "status": self.status, "detail": self.detail, "fix": self.fix,
                "info": dict(self.info)}  # fmt: skip
