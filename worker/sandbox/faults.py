"""Faults the exchange may produce: seeded random ones and one-shot injected ones.

"Applied" faults run the operation before answering badly, so a client sees the worst
case the docs warn about (5xx / timeout / bad JSON with the cancel done anyway).
"""

from __future__ import annotations

import random
import threading
from collections import deque
from dataclasses import dataclass
from typing import Final

from worker.sandbox.config import ENDPOINTS, SandboxConfig

FAULT_KINDS: Final = (
    "error_applied",
    "error_not_applied",
    "timeout_applied",
    "timeout_not_applied",
    "malformed",
    "rate_limited",
    "unauthorized",
    "latency",
    "body",
)
APPLIED_KINDS: Final = frozenset(
    {"error_applied", "timeout_applied", "malformed", "latency", "body"}
)
DEFAULT_FAULT_STATUS: Final = 503  # injected error faults without an explicit status
RANDOM_ERROR_STATUSES: Final = (500, 502, 503, 504)
MAX_INJECT_COUNT: Final = 10_000


@dataclass(frozen=True)
class Fault:
    """One fault to play on one request."""

    kind: str
    status: int = DEFAULT_FAULT_STATUS  # for error kinds
    latency_ms: int = 0  # for the latency kind
    order_id: str | None = None  # only a request naming this order consumes it
    client_order_id: str | None = None  # likewise, by client id (place body, status query)
    body: str | None = None  # for the body kind: sent as-is with `status` (odd shapes, types)

    def matches(self, order_id: str | None, client_order_id: str | None) -> bool:
        """Whether a request for these ids may consume this fault."""
        return self.order_id in (None, order_id) and self.client_order_id in (
            None,
            client_order_id,
        )

    @property
    def applied(self) -> bool:
        """Whether the operation takes effect before the faulty answer."""
        return self.kind in APPLIED_KINDS

    def __post_init__(self) -> None:
        """Reject unknown kinds and impossible statuses, naming the field."""
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"invalid kind: {self.kind!r}")
        if self.kind == "body":
            if self.body is None or not 100 <= self.status <= 599:
                raise ValueError("invalid body fault: needs `body` text and a valid `status`")
        elif not 500 <= self.status <= 599:
            raise ValueError(f"invalid status: {self.status!r} (must be 5xx)")
        if self.latency_ms < 0:
            raise ValueError(f"invalid latency_ms: {self.latency_ms!r}")


class FaultPlan:
    """FIFO one-shot faults per endpoint, then a seeded random draw per request."""

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self.reset(seed)

    def reset(self, seed: int) -> None:
        """Drop queued faults and re-seed the random stream."""
        with self._lock:
            self._queued: dict[str, deque[Fault]] = {name: deque() for name in ENDPOINTS}
            self._rng = random.Random(f"{seed}:faults")

    def inject(self, endpoint: str, fault: Fault, count: int = 1) -> int:
        """Queue `count` copies of a fault; returns how many are queued for the endpoint."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"invalid endpoint: {endpoint!r}")
        if not 1 <= count <= MAX_INJECT_COUNT:
            raise ValueError(f"invalid count: {count!r}")
        with self._lock:
            self._queued[endpoint].extend([fault] * count)
            return len(self._queued[endpoint])

    def queued(self) -> dict[str, int]:
        """How many one-shot faults wait per endpoint."""
        with self._lock:
            return {name: len(q) for name, q in self._queued.items()}

    def next(
        self,
        endpoint: str,
        config: SandboxConfig,
        order_id: str | None = None,
        client_order_id: str | None = None,
    ) -> Fault | None:
        """The fault for this request, if any: the first matching one-shot, else a random draw."""
        with self._lock:
            queue = self._queued[endpoint]
            for index, fault in enumerate(queue):
                if fault.matches(order_id, client_order_id):
                    del queue[index]
                    return fault
            if config.error_rate + config.timeout_rate + config.malformed_rate <= 0:
                return None  # draw nothing, so enabling faults later starts a fresh stream
            roll = self._rng.random()
            if roll < config.error_rate:
                applied = self._rng.random() < config.error_applied_share
                status = self._rng.choice(RANDOM_ERROR_STATUSES)
                return Fault("error_applied" if applied else "error_not_applied", status)
            roll -= config.error_rate
            if roll < config.timeout_rate:
                applied = self._rng.random() < config.error_applied_share
                return Fault("timeout_applied" if applied else "timeout_not_applied")
            roll -= config.timeout_rate
            if roll < config.malformed_rate:
                return Fault("malformed")
            return None
