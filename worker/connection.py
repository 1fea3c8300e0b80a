"""Redis connections that follow the primary, and what keeps a promise across a failover.

`REDIS_URL` is a plain `redis://`, `rediss://` or `unix://` URL, or Celery's Sentinel form
`sentinel://[:password@]host:port;sentinel://host:port/db` with `REDIS_SENTINEL_MASTER`: the
client then asks the Sentinels for the current primary and follows it when they promote a
replica (the broker does the same through kombu's transport options).

Redis replicates asynchronously, so a failover can drop the last writes before it. Two
things keep cancel-worker's promises anyway:
- **Replicated before acknowledged.** A write whose loss would lose a cancel is followed by
  a sync point: one tiny write and `WAIT 1` on the same connection. The replication stream is
  ordered, so once a replica has that write it has every write made before it, on any
  connection. Without replicas there is nothing to wait for.
- **Send times replicated before sending.** A request's send time (its turn) is on a
  replica before the request leaves, so a promoted replica knows every request in the window
  and its budgets stay exact. A Redis that had no replica (restarted from its AOF, which may
  lack its last second) cannot promise that: the first dispatcher to see it pauses every
  budget for one window, so no burst the exchange would refuse.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.sentinel

from worker.keys import Keys
from worker.scripts import script
from worker.settings import Settings

REDIS_SOCKET_TIMEOUT_S = 5.0
REDIS_HEALTH_CHECK_INTERVAL_S = 15
REPLICAS_CACHE_S = 1.0  # how often the number of online replicas is re-read


@dataclass(frozen=True)
class SentinelTarget:
    """Where the Sentinels are, and which database and credentials the primary takes."""

    sentinels: list[tuple[str, int]]
    db: int
    username: str | None
    password: str | None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse `sentinel://[user:password@]host:port;sentinel://host:port/db` (Celery's form)."""
    sentinels: list[tuple[str, int]] = []
    db, username, password = 0, None, None
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        if parts.scheme != "sentinel" or not parts.hostname:
            raise ValueError(f"{part!r} is not a sentinel://host:port URL")
        sentinels.append((parts.hostname, parts.port or 26379))
        if parts.path.strip("/"):
            db = int(parts.path.strip("/"))
        if parts.password is not None:
            password = unquote(parts.password)
            username = unquote(parts.username) if parts.username else None
    return SentinelTarget(sentinels, db, username, password)


def is_sentinel_url(url: str) -> bool:
    """Whether REDIS_URL names Sentinels rather than one server."""
    return url.strip().startswith("sentinel://")


def connect_redis(settings: Settings, *, timeout_s: float = REDIS_SOCKET_TIMEOUT_S) -> redis.Redis:
    """A client for our own keys (decoded strings, bounded waits) that follows the primary."""
    common = {
        "decode_responses": True,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "health_check_interval": REDIS_HEALTH_CHECK_INTERVAL_S,
    }
    if not is_sentinel_url(settings.redis_url):
        return redis.Redis.from_url(settings.redis_url, **common)
    target = parse_sentinel_url(settings.redis_url)
    sentinel_kwargs: dict[str, object] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
    }
    if settings.redis_sentinel_password:
        sentinel_kwargs["password"] = str(settings.redis_sentinel_password)
    sentinel = redis.sentinel.Sentinel(target.sentinels, sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(
        settings.redis_sentinel_master,
        db=target.db,
        username=target.username,
        password=target.password,
        **common,
    )


def broker_transport_options(settings: Settings) -> dict[str, object]:
    """What kombu needs, beyond the URL, to find the primary through the Sentinels."""
    if not is_sentinel_url(settings.redis_url):
        return {}
    options: dict[str, object] = {"master_name": settings.redis_sentinel_master}
    if settings.redis_sentinel_password:
        options["sentinel_kwargs"] = {"password": str(settings.redis_sentinel_password)}
    return options


class Replication:
    """Confirms that writes reached a replica before they are acknowledged."""

    def __init__(self, client: redis.Redis, keys: Keys, *, wait_ms: int) -> None:
        self.client = client
        self.keys = keys
        self.wait_ms = wait_ms
        self.healthy = True  # the last confirmation succeeded
        self._replicas = 0
        self._read_at = -REPLICAS_CACHE_S
        self._primary = script(client, "primary")

    def replicas(self) -> int:
        """Replicas online now (re-read every REPLICAS_CACHE_S). One still in its first sync
        is not counted: it acknowledges nothing yet, and Sentinel would not promote it."""
        now = time.monotonic()
        if now - self._read_at >= REPLICAS_CACHE_S:
            info = self.client.info("replication")
            self._replicas = sum(
                1
                for name, value in info.items()
                if name.startswith("slave")
                and isinstance(value, dict)
                and value.get("state") == "online"
            )
            self._read_at = now
        return self._replicas

    def note_replicas(self, count: int) -> None:
        """Replicas online as a script just counted them (saves reading INFO)."""
        self._replicas, self._read_at = count, time.monotonic()

    @property
    def known_replicas(self) -> int:
        """Replicas online when last counted (by a script or INFO), without asking Redis."""
        return self._replicas

    @property
    def none_seen(self) -> bool:
        """True once replicas were counted (by a script or INFO) and there were none."""
        return self._replicas == 0 and self._read_at >= 0

    def confirmed(self) -> bool:
        """True once every write made before this call is on a replica (or none exist).

        False if no replica acknowledged within `wait_ms`: the writes may be lost in a
        failover, so the caller must not acknowledge them (or act on them) yet.
        """
        if self.replicas() == 0:
            self.healthy = True
            return True
        pipe = self.client.pipeline(transaction=False)
        pipe.incr(self.keys.sync_point)
        pipe.execute_command("WAIT", 1, self.wait_ms)
        _, acked = pipe.execute()
        if int(acked) < 1:
            self._read_at = -REPLICAS_CACHE_S  # a replica may have gone (or a failover come)
        self.healthy = int(acked) >= 1 or self.replicas() == 0
        return self.healthy

    def call(
        self, script: Any, keys: list[str], args: list[Any], replicas_of: Callable[[Any], int]
    ) -> tuple[Any, bool]:
        """Run a script whose writes must be on a replica before its caller acts on them.

        When replicas were seen last time, `WAIT` goes in the same round trip as the script;
        otherwise the script says how many replicas are online (`replicas_of(reply)`), and
        only if it found some is a `WAIT` sent after it. Returns (reply, confirmed): False
        means no replica acknowledged within `wait_ms`.
        """
        if self._replicas == 0:
            reply = script(keys=keys, args=args)
            self.note_replicas(replicas_of(reply))
            return reply, self._replicas == 0 or self.confirmed()

        def with_wait() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", 1, self.wait_ms)
            return list(pipe.execute())

        try:
            reply, acked = with_wait()
        except redis.exceptions.NoScriptError:  # a new primary, or a flushed script cache
            self.client.script_load(script.script)
            reply, acked = with_wait()
        self.note_replicas(replicas_of(reply))
        self.healthy = int(acked) >= 1 or self._replicas == 0
        return reply, self.healthy

    def primary_changed(self) -> PrimaryChange:
        """Whether the primary changed since any worker last looked (reported once per change)."""
        run_id = str(self.client.info("server")["run_id"])
        replicated = "1" if self.replicas() > 0 else "0"
        return PrimaryChange(
            int(self._primary(keys=[self.keys.primary], args=[run_id, replicated]))
        )


class PrimaryChange(enum.IntEnum):
    """What a dispatcher found when it looked at the primary."""

    SAME = 0
    PROMOTED = 1  # a replica took over: it holds every send time (each confirmed before sending)
    RESTARTED = 2  # no replica confirmed send times: the last ones may be lost
