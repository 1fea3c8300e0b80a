"""Following the primary: Sentinel URLs, replication confirmations, noticing a new primary."""

from __future__ import annotations

import os
from typing import Any

import pytest
import redis

from worker.accounts import AccountInfo
from worker.connection import (
    PrimaryChange,
    Replication,
    broker_transport_options,
    is_sentinel_url,
    parse_sentinel_url,
)
from worker.duties import Duties
from worker.errors import ConfigError
from worker.keys import Keys
from worker.models import Bucket
from worker.rates import Rate
from worker.scheduler import Scheduler
from worker.services import Services
from worker.settings import Settings, redact_url
from worker.turns import Turn

KEYS = Keys("conn")
SENTINELS = "sentinel://:pw@10.0.0.1:26379;sentinel://10.0.0.2:26380;sentinel://10.0.0.3/2"


def test_sentinel_url_names_every_sentinel_the_database_and_the_password() -> None:
    """Celery's `sentinel://...;sentinel://.../db` form: hosts, ports (26379 default), db."""
    target = parse_sentinel_url(SENTINELS)
    assert target.sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)]
    assert (target.db, target.password) == (2, "pw")
    assert is_sentinel_url(SENTINELS) and not is_sentinel_url("redis://localhost:6379/0")


def test_sentinel_urls_are_checked_when_settings_are_built() -> None:
    """A mix of schemes, a missing host or a bad database is a ConfigError naming REDIS_URL."""
    for bad in (
        "redis://a:6379;sentinel://b:26379",
        "sentinel://:26379",
        "sentinel://a:26379/zero",
        "sentinel://a:port",
    ):
        with pytest.raises(ConfigError, match="REDIS_URL"):
            Settings.from_env({"REDIS_URL": bad})
    settings = Settings.from_env({"REDIS_URL": SENTINELS, "REDIS_SENTINEL_PASSWORD": "s3"})
    assert settings.redis_sentinel_master == "mymaster"


def test_passwords_stay_out_of_messages_and_reprs() -> None:
    """redact_url hides each Sentinel URL's password; the Sentinel password is not in repr."""
    assert "pw" not in redact_url(SENTINELS) and redact_url(SENTINELS).count(";") == 2
    settings = Settings.from_env({"REDIS_URL": SENTINELS, "REDIS_SENTINEL_PASSWORD": "s3cr3t"})
    assert "s3cr3t" not in repr(settings)


def test_the_broker_gets_the_master_name_and_sentinel_password() -> None:
    """kombu's transport options carry master_name (and the Sentinels' own password)."""
    env = {"REDIS_URL": SENTINELS, "REDIS_SENTINEL_MASTER": "desk", "REDIS_SENTINEL_PASSWORD": "x"}
    options = broker_transport_options(Settings.from_env(env))
    assert options == {"master_name": "desk", "sentinel_kwargs": {"password": "x"}}
    assert broker_transport_options(Settings.from_env({})) == {}


def test_without_replicas_nothing_is_waited_for(redis_client: redis.Redis) -> None:
    """A lone Redis (no replica) confirms at once: there is nothing a failover could lose."""
    replication = Replication(redis_client, KEYS, wait_ms=100)
    assert replication.confirmed() and replication.healthy


def test_a_new_primary_is_reported_once_and_says_whether_it_was_replicated(
    redis_client: redis.Redis,
) -> None:
    """The first look records the primary; a different run id is a change, reported once:
    PROMOTED when the last primary had replicas, RESTARTED when it had none."""
    replication = Replication(redis_client, KEYS, wait_ms=100)
    assert replication.primary_changed() is PrimaryChange.SAME
    assert replication.primary_changed() is PrimaryChange.SAME
    redis_client.hset(KEYS.primary, mapping={"run_id": "old", "replicated": "1"})
    assert replication.primary_changed() is PrimaryChange.PROMOTED
    assert replication.primary_changed() is PrimaryChange.SAME
    redis_client.hset(KEYS.primary, mapping={"run_id": "old", "replicated": "0"})
    assert replication.primary_changed() is PrimaryChange.RESTARTED


class Unconfirmed:
    """A replication whose replica never answers (as when it is paused or cut off)."""

    healthy = True

    def __init__(self) -> None:
        self.calls = 0

    def confirmed(self) -> bool:
        self.calls += 1
        self.healthy = False
        return False


def test_a_send_time_no_replica_confirms_is_spent_but_not_sent(redis_client: redis.Redis) -> None:
    """take() commits, then finds no replica confirmed it: False (nothing is sent), the slot
    stays booked, and the budget waits before the next turn; the next take() spends nothing
    while the replica stays silent."""
    replication: Any = Unconfirmed()
    infos = {"default": AccountInfo("default", "fp", {b: Rate(5, 10) for b in Bucket})}
    scheduler = Scheduler(
        redis_client, KEYS, infos, margin_floor_ms=20, margin_ceiling_ms=500, watch_ms=1000,
        replication=replication,
    )  # fmt: skip
    schedule, pause, _ = scheduler.budget_keys("default", Bucket.CANCEL)
    assert not Turn(scheduler, "default", Bucket.CANCEL, "m1").take()
    assert redis_client.zcard(schedule) == 1
    assert redis_client.get(pause) == "replica" and redis_client.pttl(pause) > 0
    assert not Turn(scheduler, "default", Bucket.CANCEL, "m2").take()
    assert redis_client.zcard(schedule) == 1 and replication.calls == 2


@pytest.mark.parametrize(("replicated", "held"), [("1", False), ("0", True)])
def test_a_dispatcher_holds_budgets_only_after_a_primary_without_replicas(
    redis_client: redis.Redis, replicated: str, held: bool
) -> None:
    """A promoted replica holds every confirmed send time, so budgets go on; a Redis that
    had no replica (restarted) may have lost its last send times: every budget waits a window
    (a worker's duties look for a new primary every second)."""
    url = redis_client.connection_pool.connection_kwargs
    settings = Settings.from_env(
        {**os.environ, "REDIS_URL": f"redis://{url['host']}:{url['port']}/{url['db']}"}
    )
    services = Services(settings)
    duties = Duties(services, services.scheduler)
    redis_client.hset(services.keys.primary, mapping={"run_id": "gone", "replicated": replicated})
    duties.check_primary()
    pauses = [
        redis_client.get(services.scheduler.budget_keys(account, bucket)[1])
        for account in services.scheduler.accounts
        for bucket in Bucket
    ]
    assert pauses == (["failover"] * len(pauses) if held else [None] * len(pauses))
    services.redis.close()
