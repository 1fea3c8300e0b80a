"""The sweeper: lost turns go back in line; work a task holds is looked at when its lease ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import API_KEY, SECRET_KEY, unit_url
from worker.models import Bucket
from worker.records import now_ms
from worker.services import Services
from worker.settings import Settings
from worker.sweeper import LEASE_SLACK_MS, WAITING_RECHECK_S, sweep


@pytest.fixture
def services(redis_url: str) -> Iterator[Services]:
    """Services on db 15 of the test Redis, with the default account (nothing is sent)."""
    env = {
        "REDIS_URL": unit_url(redis_url),
        "COINSWITCH_API_KEY": API_KEY,
        "COINSWITCH_SECRET_KEY": SECRET_KEY,
        "COINSWITCH_BASE_URL": "http://127.0.0.1:9",
    }
    built = Services(Settings.from_env(env))
    built.redis.flushdb()
    yield built
    built.redis.close()


def lost(services: Services, order_id: str) -> None:
    """A QUEUED order whose turn was lost: in no line, its watch time passed."""
    services.store.create_many([order_id], "EXCHANGE_2", services.scheduler, hand_out=False)
    assert services.scheduler.forget("default", Bucket.CANCEL, [order_id]) == 1
    services.store.schedule_check(order_id, now_ms() - 1)


def test_a_lost_turn_goes_back_in_line(services: Services) -> None:
    """An order in no line and held by no task joins its line again."""
    lost(services, "o1")
    assert sweep(services, services.scheduler, limit=10) == 1
    assert services.scheduler.waiting([("default", Bucket.CANCEL, "o1")]) == [True]


def test_an_order_a_task_holds_is_looked_at_when_its_lease_ends(services: Services) -> None:
    """A lease (a task mid-turn, or one that lost Redis and could not release it) keeps the
    order out of line until the lease ends, and the sweeper looks again just then, not a
    minute later."""
    lost(services, "o2")
    services.leases.acquire(services.keys.cancel_lease("o2"), "a-task", 3000)
    before = now_ms()
    assert sweep(services, services.scheduler, limit=10) == 0
    again = services.redis.zscore(services.keys.due, "o2")
    assert again is not None
    assert before + 2000 < again <= now_ms() + 3000 + LEASE_SLACK_MS
    assert again < before + WAITING_RECHECK_S * 1000 / 2
