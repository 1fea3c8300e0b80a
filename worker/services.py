"""The composition root: every client built once from Settings and passed down from here."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import redis
import requests
from requests.adapters import HTTPAdapter

from worker.exchange import ExchangeClient
from worker.keys import Keys
from worker.lease import Leases
from worker.ratelimit import Limiter
from worker.records import RecordStore
from worker.settings import Rate, Settings
from worker.signing import Signer

HTTP_POOL_SIZE = 16  # connections kept open to the exchange, per worker process
REDIS_SOCKET_TIMEOUT_S = 5.0
REDIS_HEALTH_CHECK_INTERVAL_S = 15

#: Endpoint names of the limiter buckets.
CANCEL = "cancel"
STATUS = "status"
CANCEL_ALL = "cancel_all"


def connect_redis(url: str) -> redis.Redis:
    """A Redis client for our own keys: decoded strings, bounded waits, retried connects."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
        health_check_interval=REDIS_HEALTH_CHECK_INTERVAL_S,
    )


@dataclass
class Services:
    """Redis, records, leases and (when credentials are set) the limiter and exchange client."""

    settings: Settings
    #: Budgets by bucket; from the Celery task annotations in a worker, else from settings.
    rates: dict[str, Rate] | None = None
    redis: redis.Redis = field(init=False)
    keys: Keys = field(init=False)
    store: RecordStore = field(init=False)
    leases: Leases = field(init=False)

    def __post_init__(self) -> None:
        self.redis = connect_redis(self.settings.redis_url)
        self.keys = Keys(self.settings.namespace)
        self.store = RecordStore(self.redis, self.keys, ttl_s=self.settings.record_ttl_s)
        self.leases = Leases(self.redis)

    @cached_property
    def limiter(self) -> Limiter:
        """The fleet-wide limiter of this API key (needs COINSWITCH_API_KEY)."""
        api_key, _ = self.settings.require_credentials()
        rates = {
            CANCEL: self.settings.cancel_rate,
            STATUS: self.settings.status_rate,
            CANCEL_ALL: self.settings.cancel_all_rate,
            **(self.rates or {}),
        }
        return Limiter(
            self.redis, self.keys, api_key, rates, margin_ms=self.settings.rate_margin_ms
        )

    @cached_property
    def exchange(self) -> ExchangeClient:
        """The signed exchange client over one pooled session (needs both keys)."""
        api_key, secret = self.settings.require_credentials()
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=HTTP_POOL_SIZE, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return ExchangeClient(
            session,
            self.settings.base_url,
            Signer(api_key, secret),
            timeout_s=(self.settings.connect_timeout_s, self.settings.read_timeout_s),
        )
