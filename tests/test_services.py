"""Services: which accounts and budgets a process's scheduler knows."""

from __future__ import annotations

from tests.conftest import unit_url
from worker.accounts import register
from worker.models import Bucket
from worker.rates import parse_rate
from worker.services import Services
from worker.settings import Settings

API_KEY = "cd" * 32
SECRET_KEY = "ab" * 32


def test_a_producer_hands_out_turns_by_the_workers_budgets(redis_url: str) -> None:
    """A producer configured with other rates for an account the workers registered uses the
    workers' rates: they enforce them, so turns handed out by its own would overrun."""
    db = unit_url(redis_url)
    keys = {"COINSWITCH_API_KEY": API_KEY, "COINSWITCH_SECRET_KEY": SECRET_KEY}
    worker = Settings.from_env({**keys, "REDIS_URL": db, "COINSWITCH_CANCEL_RATE_LIMIT": "1/1s"})
    producer = Services(
        Settings.from_env({**keys, "REDIS_URL": db, "COINSWITCH_CANCEL_RATE_LIMIT": "50/1s"})
    )
    producer.redis.flushdb()
    try:
        assert producer.observer().accounts["default"].rates[Bucket.CANCEL] == parse_rate("50/1s")
        register(producer.redis, producer.keys, worker.accounts, now_ms=1)
        assert producer.observer().accounts["default"].rates[Bucket.CANCEL] == parse_rate("1/1s")
    finally:
        producer.redis.close()
