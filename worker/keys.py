"""Every Redis key and queue name cancel-worker uses, in one place.

Our keys live under one namespace prefix (`cw:` by default). Kombu's own keys (broker
queues, the unacked hash and index) are named here too, because the worker touches the
unacked index to keep a message it is still working on from being redelivered.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

#: Celery queues: cancels and polls apart, so a poll never delays a cancel.
CANCEL_QUEUE = "cancels"
POLL_QUEUE = "polls"

#: Kombu's Redis transport keys (set explicitly in celery_app's transport options).
KOMBU_UNACKED = "unacked"
KOMBU_UNACKED_INDEX = "unacked_index"
KOMBU_UNACKED_MUTEX = "unacked_mutex"


def key_fingerprint(api_key: str) -> str:
    """A short, stable id for an API key, so key names never carry the key itself."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Keys:
    """Key names under one namespace; build once from settings and pass around."""

    namespace: str = "cw"

    def record(self, order_id: str) -> str:
        """String: the JSON record of one cancellation."""
        return f"{self.namespace}:record:{order_id}"

    @property
    def events(self) -> str:
        """Stream: every record transition, for strategy services' consumer groups."""
        return f"{self.namespace}:events"

    @property
    def due(self) -> str:
        """Sorted set: order ids by the time (ms) the sweeper must look at them again."""
        return f"{self.namespace}:due"

    @property
    def dead_letters(self) -> str:
        """List: task messages that could not be understood, kept for an operator."""
        return f"{self.namespace}:dead"

    @property
    def state_counts(self) -> str:
        """Hash: how many records are in each state (kept in step with every transition)."""
        return f"{self.namespace}:stats:states"

    @property
    def time_to_final(self) -> str:
        """Hash: histogram of request → final times (fields `le:<s>`, `sum_ms`, `count`)."""
        return f"{self.namespace}:stats:time_to_final"

    def cancel_lease(self, order_id: str) -> str:
        """String: which delivery may send the DELETE for this order right now."""
        return f"{self.namespace}:lease:cancel:{order_id}"

    def poll_lease(self, order_id: str) -> str:
        """String: which delivery may poll this order right now."""
        return f"{self.namespace}:lease:poll:{order_id}"

    def bucket(self, api_key: str, endpoint: str) -> str:
        """Sorted set: reserved send times (ms) of one (API key, endpoint) budget."""
        return f"{self.namespace}:rl:{key_fingerprint(api_key)}:{endpoint}"

    def bucket_pause(self, api_key: str, endpoint: str) -> str:
        """String with a TTL: set after a 429; no slot is handed out before it expires."""
        return f"{self.bucket(api_key, endpoint)}:pause"

    def bucket_stats(self, api_key: str, endpoint: str) -> str:
        """Hash: counters of one bucket (granted slots, 429s seen)."""
        return f"{self.bucket(api_key, endpoint)}:stats"
