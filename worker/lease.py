"""Short leases in Redis: which delivery of a task may act on an order right now.

A lease has an owner token and a TTL; the owner renews it while it works, so a killed
worker's lease lapses and a redelivered copy can take over, while a duplicate delivery
that arrives while the first copy still works sees the lease taken and stands down.
"""

from __future__ import annotations

import redis

#: Take or renew a lease.
#: KEYS: [1] lease key   ARGV: [1] owner token, [2] TTL ms
#: Returns: 1 if the caller now holds the lease, 0 if another owner does.
ACQUIRE_LUA = """
local owner = redis.call('GET', KEYS[1])
if owner == false or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
return 0
"""

#: Give a lease up, only if the caller still holds it.
#: KEYS: [1] lease key   ARGV: [1] owner token
#: Returns: 1 if released, 0 otherwise.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Leases:
    """Acquire, renew and release owner-tokened leases with atomic scripts."""

    def __init__(self, client: redis.Redis) -> None:
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._release = client.register_script(RELEASE_LUA)

    def acquire(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take the lease, or renew it if `owner` holds it; False if someone else does."""
        return bool(self._acquire(keys=[key], args=[owner, ttl_ms]))

    def release(self, key: str, owner: str) -> None:
        """Give the lease up if `owner` still holds it."""
        self._release(keys=[key], args=[owner])
