"""The project's one rate grammar: `COUNT/PERIOD`, for the worker's settings and the sandbox."""

from __future__ import annotations

import re
from dataclasses import dataclass

_RATE_RE = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|m|h)?\s*")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Rate:
    """At most `count` requests in any window of `period_s` seconds."""

    count: int
    period_s: float

    @property
    def period_ms(self) -> int:
        """The window in whole milliseconds."""
        return round(self.period_s * 1000)

    @property
    def interval_s(self) -> float:
        """The average time between two requests at this rate (period ÷ count)."""
        return self.period_s / self.count

    def __str__(self) -> str:
        return f"{self.count}/{self.period_s:g}s"


def parse_rate(text: str) -> Rate:
    """Parse `COUNT/PERIOD` (`10/60s`, `10/2s`, `5/500ms`, Celery's `10/m`; bare = seconds)."""
    match = _RATE_RE.fullmatch(text) if isinstance(text, str) else None
    if not match or (match[2] is None and match[3] is None):
        raise ValueError(f"{text!r} is not a rate like 10/60s, 10/2s, 5/500ms or 10/m")
    count, amount, unit = int(match[1]), float(match[2] or 1), match[3] or "s"
    period_s = amount * _UNIT_SECONDS[unit]
    if count < 1 or period_s <= 0:
        raise ValueError(f"{text!r} must allow at least 1 request in a positive period")
    return Rate(count, period_s)
