"""Per-endpoint counters for the admin stats endpoint: what a test needs to prove limits.

`max_in_window` counts ARRIVALS (whatever the answer) in any window of the limit's length,
per rate bucket: the number the exchange would hold a client to. `by_key` gives the same
per API key (or client IP), named by its first KEY_PREFIX_CHARS characters.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from worker.sandbox.config import ENDPOINTS, SandboxConfig

MAX_ARRIVALS_KEPT: Final = 10_000
KEY_PREFIX_CHARS: Final = 8
COUNTERS: Final = ("requests", "rate_limited", "unauthorized", "faulted")


@dataclass
class EndpointStats:
    """Counters of one endpoint."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    max_in_window: int = 0
    arrivals: deque[int] = field(default_factory=lambda: deque(maxlen=MAX_ARRIVALS_KEPT))
    windows: dict[str, deque[int]] = field(default_factory=dict)
    by_key: dict[str, BucketStats] = field(default_factory=dict)


@dataclass
class BucketStats:
    """Arrivals and 429s of one rate bucket (an API key or client IP) at one endpoint."""

    max_in_window: int = 0
    rate_limited: int = 0
    arrivals: deque[int] = field(default_factory=lambda: deque(maxlen=MAX_ARRIVALS_KEPT))


class Stats:
    """Thread-safe counters for every endpoint."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Zero everything."""
        with self._lock:
            self._endpoints = {name: EndpointStats() for name in ENDPOINTS}

    def arrival(self, endpoint: str, bucket: str, now_ms: int, period_ms: int) -> None:
        """Count one request as it arrives and update the busiest-window figure."""
        with self._lock:
            stats = self._endpoints[endpoint]
            stats.counts["requests"] += 1
            stats.arrivals.append(now_ms)
            window = stats.windows.setdefault(bucket, deque())
            window.append(now_ms)
            while window and window[0] <= now_ms - period_ms:
                window.popleft()
            stats.max_in_window = max(stats.max_in_window, len(window))
            own = stats.by_key.setdefault(bucket[:KEY_PREFIX_CHARS], BucketStats())
            own.arrivals.append(now_ms)
            own.max_in_window = max(own.max_in_window, len(window))

    def count(self, endpoint: str, counter: str, bucket: str | None = None) -> None:
        """Bump one of COUNTERS (a 429 also for its bucket)."""
        with self._lock:
            stats = self._endpoints[endpoint]
            stats.counts[counter] += 1
            if bucket is not None and counter == "rate_limited":
                own = stats.by_key.setdefault(bucket[:KEY_PREFIX_CHARS], BucketStats())
                own.rate_limited += 1

    def snapshot(self, config: SandboxConfig) -> dict[str, Any]:
        """The `endpoints` part of `GET /_sandbox/stats`."""
        with self._lock:
            out: dict[str, Any] = {}
            for name, (method, path) in ENDPOINTS.items():
                stats = self._endpoints[name]
                limit, period_s = config.limit_for(name)
                out[name] = {
                    "method": method,
                    "path": path,
                    "limit": limit,
                    "period_ms": round(period_s * 1000),
                    **stats.counts,
                    "max_in_window": stats.max_in_window,
                    "arrivals_ms": list(stats.arrivals),
                    "by_key": {
                        key: {
                            "max_in_window": own.max_in_window,
                            "rate_limited": own.rate_limited,
                            "arrivals_ms": list(own.arrivals),
                        }
                        for key, own in stats.by_key.items()
                    },
                }
            return out


def strict_window_max(arrivals_ms: Sequence[int], period_ms: int) -> int:
    """The most arrivals in any window [t, t + period): how a strict exchange counts.

    For offline checks of an arrival list (tests, benchmarks); `max_in_window` is the same
    figure kept live per bucket.
    """
    times = sorted(arrivals_ms)
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= period_ms:
            start += 1
        best = max(best, end - start + 1)
    return best
