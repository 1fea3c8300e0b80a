"""Strict sliding-window rate limiting per (bucket, endpoint), like a careful exchange.

A request is refused when the requests already admitted in the last `period` number at
least `limit`. Refused requests do not use up budget. The docs do not say whether the real
window is fixed or sliding; sliding is the strictest reading, so the worker is held to it.
"""

from __future__ import annotations

import threading
from collections import deque


class SlidingWindowLimiter:
    """Admitted-request timestamps per (bucket, endpoint); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._admitted: dict[tuple[str, str], deque[int]] = {}

    def admit(self, bucket: str, endpoint: str, now_ms: int, limit: int, period_ms: int) -> bool:
        """Record and allow the request, or return False if the window is full."""
        with self._lock:
            window = self._admitted.setdefault((bucket, endpoint), deque())
            while window and window[0] <= now_ms - period_ms:
                window.popleft()
            if len(window) >= limit:
                return False
            window.append(now_ms)
            return True

    def reset(self) -> None:
        """Empty every window."""
        with self._lock:
            self._admitted.clear()
