"""A clock a test moves by hand: monotonic seconds and UTC wall time advance together."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["FakeClock"]


@dataclass
class FakeClock:
    wall: datetime
    mono: float = 1000.0

    def monotonic(self) -> float:
        return self.mono

    def now(self) -> datetime:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)
