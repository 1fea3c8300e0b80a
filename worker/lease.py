"""Short leases in Redis: which delivery of a task may act on an order right now.

A lease has an owner token and a TTL; the owner renews it while it works, so a killed
worker's lease lapses and a redelivered copy can take over, while a duplicate delivery
that arrives while the first copy still works sees the lease taken and stands down.
"""

from __future__ import annotations

import redis

from worker.scripts import script


class Leases:
    """Acquire, renew and release owner-tokened leases with atomic scripts."""

    def __init__(self, client: redis.Redis) -> None:
        self._acquire = script(client, "lease_acquire")
        self._release = script(client, "lease_release")

    def acquire(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take the lease, or renew it if `owner` holds it; False if someone else does."""
        return bool(self._acquire(keys=[key], args=[owner, ttl_ms]))

    def release(self, key: str, owner: str) -> None:
        """Give the lease up if `owner` still holds it."""
        self._release(keys=[key], args=[owner])
