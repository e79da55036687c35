"""A clock the test moves by hand, for the scheduler and schedule tests (no waiting)."""

from __future__ import annotations

from datetime import datetime, timedelta


class FakeClock:
    """Called like ``datetime.now``: gives ``now``, which only ``advance`` moves."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now
