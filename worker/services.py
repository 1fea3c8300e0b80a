"""The composition root: every client built once from Settings and passed down from here.

What only workers need (the exchange client and its HTTP session, Celery) is built on first
use, so a strategy that imports the client API loads neither.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import redis

from worker.accounts import AccountInfo, is_registered, registered
from worker.batches import BatchStore
from worker.connection import Replication, connect_redis
from worker.errors import InvalidRequest
from worker.keys import Keys
from worker.lease import Leases
from worker.publisher import Publisher
from worker.records import RecordStore
from worker.scheduler import Scheduler
from worker.settings import Settings

if TYPE_CHECKING:
    import requests

    from worker.exchange import ExchangeClient

HTTP_POOL_SIZE = 16  # connections kept open to the exchange, per worker process
SWEEP_SLACK_S = 5.0  # the sweeper steps in this long after redelivery would have
REGISTRY_CACHE_S = 10.0  # a producer re-reads which accounts workers serve this often


@dataclass
class Services:
    """Redis, records, leases, the scheduler and (per account, with its keys) exchange clients."""

    settings: Settings
    redis: redis.Redis = field(init=False)
    keys: Keys = field(init=False)
    store: RecordStore = field(init=False)
    batches: BatchStore = field(init=False)
    replication: Replication = field(init=False)
    leases: Leases = field(init=False)
    _clients: dict[str, ExchangeClient] = field(init=False, default_factory=dict)
    _known: tuple[float, Scheduler] | None = field(init=False, default=None)
    _clients_lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.redis = connect_redis(self.settings)
        self.keys = Keys(self.settings.namespace)
        self.replication = Replication(self.redis, self.keys, wait_ms=self.settings.replica_wait_ms)
        ttl_s = self.settings.record_ttl_s
        self.batches = BatchStore(self.redis, self.keys, ttl_s=ttl_s)
        self.store = RecordStore(
            self.redis, self.keys, ttl_s=ttl_s, on_batch_order_final=self.batches.finish_if_done
        )
        self.leases = Leases(self.redis)

    @property
    def watch_grace_ms(self) -> int:
        """How long work under way may stay silent before the sweeper looks at it."""
        return int((self.settings.visibility_timeout_s + SWEEP_SLACK_S) * 1000)

    @property
    def lease_ttl_ms(self) -> int:
        """A task's hold on an order: its longest wait for a turn plus its longest request."""
        settings = self.settings
        return int((settings.connect_timeout_s + settings.read_timeout_s + 10.0) * 1000)

    def require_account(self, account: str) -> None:
        """InvalidRequest unless this process or some worker (the registry) configured it."""
        if account in self.settings.accounts or is_registered(self.redis, self.keys, account):
            return
        raise InvalidRequest(
            "account",
            account,
            "is not configured (COINSWITCH_ACCOUNTS and its keys, on the workers)",
        )

    def local_accounts(self) -> dict[str, AccountInfo]:
        """The accounts of this process's own configuration that have an API key."""
        return {
            name: account.info()
            for name, account in self.settings.accounts.items()
            if account.api_key is not None
        }

    def _scheduler(self, accounts: dict[str, AccountInfo]) -> Scheduler:
        return Scheduler(
            self.redis,
            self.keys,
            accounts,
            margin_floor_ms=self.settings.rate_margin_ms,
            margin_ceiling_ms=self.settings.rate_margin_max_ms,
            watch_ms=self.watch_grace_ms,
            replication=self.replication,
        )

    @cached_property
    def scheduler(self) -> Scheduler:
        """The scheduler of the accounts this process serves (its own configuration)."""
        return self._scheduler(self.local_accounts())

    def observer(self) -> Scheduler:
        """A read-only view of every account workers registered, plus this process's own.

        Where both know an account, the workers' entry wins: they enforce its budgets, so a
        producer configured with other rates (or another key) must not hand out turns by them.
        """
        return self._scheduler({**self.local_accounts(), **registered(self.redis, self.keys)})

    def known_accounts(self, account: str | None = None) -> Scheduler:
        """`observer()`, re-read at most every REGISTRY_CACHE_S (for producers), or at once
        when it does not know `account` yet (a worker may have registered it since)."""
        now, known = time.monotonic(), self._known
        if (
            known is None
            or now - known[0] > REGISTRY_CACHE_S
            or (account is not None and account not in known[1].accounts)
        ):
            known = self._known = (now, self.observer())
        return known[1]

    @cached_property
    def publisher(self) -> Publisher:
        """Publishes turns as Celery tasks (Celery is loaded on the first publish)."""
        return Publisher(self.settings)

    def exchange(self, account: str) -> ExchangeClient:
        """The signed exchange client of one account (needs its keys), over one shared pool."""
        from worker.exchange import ExchangeClient
        from worker.signing import Signer

        with self._clients_lock:
            client = self._clients.get(account)
            if client is None:
                api_key, secret = self.settings.account(account).require_keys()
                client = ExchangeClient(
                    self._session,
                    self.settings.base_url,
                    Signer(api_key, secret),
                    timeout_s=(self.settings.connect_timeout_s, self.settings.read_timeout_s),
                )
                self._clients[account] = client
            return client

    @cached_property
    def _session(self) -> requests.Session:
        import requests
        from requests.adapters import HTTPAdapter

        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=HTTP_POOL_SIZE, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # What requests reads from the environment for every request (proxies, CA bundle),
        # read once: a scan of os.environ per request is a DELETE's largest Python cost.
        found = session.merge_environment_settings(self.settings.base_url, {}, None, None, None)
        session.proxies.update(found["proxies"])
        session.verify, session.cert = found["verify"], found["cert"]
        session.trust_env = False
        return session


_services: Services | None = None
_services_lock = threading.Lock()


def get_services() -> Services:
    """This process's Services, built on first use from the environment."""
    global _services
    with _services_lock:
        if _services is None:
            _services = Services(Settings.from_env())
        return _services
