"""The fleet-wide limiter: a moving-window schedule of send times in Redis.

Why not Celery's `rate_limit` (a token bucket per worker node) or the `limits` library
(caller clocks, whole-second windows): neither guarantees "at most N in any window" for a
fleet on several hosts (DESIGN.md §5). Here every acquisition is one Lua call that reads
Redis `TIME` (one clock for all hosts) and books the earliest send time t such that no
window of `period + margin` holds more than N booked times. Times are booked in order, so
waiting callers are served first come, first served, and a booked time is spent even if
the request later times out (the exchange counted it too).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis
import structlog

from worker.keys import Keys
from worker.settings import Rate

HEARTBEAT_INTERVAL_S = 5.0  # while waiting for a slot, tell the broker we are alive this often
#: A caller that wakes later than this share of the margin after its slot books a new one:
#: sent that late, it would land too close to the sends booked a window after its slot.
LATE_WAKE_MARGIN_SHARE = 0.5
#: New slots booked for late wake-ups in one acquire; then it sends late rather than spend
#: more of the budget on slots nobody uses (a machine this overloaded needs a larger margin).
MAX_LATE_REBOOKS = 2
STATS_TTL_S = 7 * 24 * 3600

log = structlog.get_logger(__name__)

#: Book the next send time of one bucket.
#: KEYS: [1] schedule zset (member → booked ms), [2] pause key, [3] stats hash
#: ARGV: [1] limit N, [2] window ms (period + margin), [3] unique member, [4] stats TTL s
#: Returns: {booked_ms, now_ms} from Redis's clock.
RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local slot = now
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then slot = now + pause end
local count = redis.call('ZCARD', KEYS[1])
if count > 0 then
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if tonumber(last[2]) > slot then slot = tonumber(last[2]) end
end
if count >= limit then
  local nth = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
  local earliest = tonumber(nth[2]) + window
  if earliest > slot then slot = earliest end
end
redis.call('ZADD', KEYS[1], slot, ARGV[3])
redis.call('PEXPIRE', KEYS[1], slot - now + window + 1000)
redis.call('HINCRBY', KEYS[3], 'granted', 1)
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4]))
return {slot, now}
"""


@dataclass(frozen=True)
class BucketUsage:
    """A snapshot of one bucket, for `cancel-worker limits` and metrics."""

    endpoint: str
    limit: int
    period_s: float
    used_in_window: int
    booked_ahead: int
    paused_ms: int
    granted: int
    rate_limited: int


class Limiter:
    """Books send slots for (API key, endpoint) buckets shared by every worker."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        api_key: str,
        rates: dict[str, Rate],
        *,
        margin_ms: int,
    ) -> None:
        self.client = client
        self.keys = keys
        self.api_key = api_key
        self.rates = rates
        self.margin_ms = margin_ms
        self._reserve = client.register_script(RESERVE_LUA)

    def window_ms(self, endpoint: str) -> int:
        """The window slots are spaced over: the declared period plus the safety margin."""
        return self.rates[endpoint].period_ms + self.margin_ms

    def reserve(self, endpoint: str) -> float:
        """Book the next slot; return how many seconds to wait before sending."""
        rate = self.rates[endpoint]
        booked, now = self._reserve(
            keys=[
                self.keys.bucket(self.api_key, endpoint),
                self.keys.bucket_pause(self.api_key, endpoint),
                self.keys.bucket_stats(self.api_key, endpoint),
            ],
            args=[rate.count, self.window_ms(endpoint), uuid.uuid4().hex, STATS_TTL_S],
        )
        return max(0, int(booked) - int(now)) / 1000

    def acquire(
        self,
        endpoint: str,
        *,
        heartbeat: Callable[[], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> float:
        """Book a slot and wait for it (calling `heartbeat` while waiting); return seconds waited.

        If a 429 paused the bucket while we waited, or this process woke too late (a busy
        CPU), the booked slot is given up (it still counts, so the window stays safe) and a
        new one is booked.
        """
        started = time.monotonic()
        late_s = self.margin_ms / 1000 * LATE_WAKE_MARGIN_SHARE
        rebooks = 0
        while True:
            wait_s = self.reserve(endpoint)
            if wait_s <= 0:
                return time.monotonic() - started  # booked now: any pause was already counted
            slot = time.monotonic() + wait_s
            while wait_s > 0:  # beat before each sleep, so no round trip follows the last one
                if heartbeat is not None:
                    heartbeat()
                step = min(wait_s, HEARTBEAT_INTERVAL_S)
                sleep(step)
                wait_s -= step
            woke_late_s = time.monotonic() - slot
            if woke_late_s > late_s and rebooks < MAX_LATE_REBOOKS:
                rebooks += 1
                log.warning("limiter.late_wake", endpoint=endpoint, late_ms=woke_late_s * 1000)
            elif self.paused_ms(endpoint) <= 0:
                return time.monotonic() - started

    def paused_ms(self, endpoint: str) -> int:
        """Milliseconds left of a 429 pause on this bucket (0 when not paused)."""
        left = int(self.client.pttl(self.keys.bucket_pause(self.api_key, endpoint)))
        return max(0, left)

    def pause(self, endpoint: str) -> None:
        """After a 429: hand out no slot of this bucket, to any worker, for one window."""
        self.client.set(
            self.keys.bucket_pause(self.api_key, endpoint), "429", px=self.window_ms(endpoint)
        )
        stats = self.keys.bucket_stats(self.api_key, endpoint)
        self.client.hincrby(stats, "rate_limited", 1)
        self.client.expire(stats, STATS_TTL_S)

    def usage(self, endpoint: str) -> BucketUsage:
        """How much of the current window is spent and how many sends are booked ahead."""
        rate = self.rates[endpoint]
        seconds, micros = self.client.time()
        now_ms = seconds * 1000 + micros // 1000
        bucket = self.keys.bucket(self.api_key, endpoint)
        used = self.client.zcount(bucket, now_ms - self.window_ms(endpoint), now_ms)
        ahead = self.client.zcount(bucket, f"({now_ms}", "+inf")
        stats = self.client.hgetall(self.keys.bucket_stats(self.api_key, endpoint))
        return BucketUsage(
            endpoint=endpoint,
            limit=rate.count,
            period_s=rate.period_s,
            used_in_window=int(used),
            booked_ahead=int(ahead),
            paused_ms=self.paused_ms(endpoint),
            granted=int(stats.get("granted", 0)),
            rate_limited=int(stats.get("rate_limited", 0)),
        )
