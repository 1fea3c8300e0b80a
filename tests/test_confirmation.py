"""The list pass's query: the narrowest window and symbol that can hold every order sought."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import API_KEY, SECRET_KEY, unit_url
from worker.confirmation import (
    CLOCK_SKEW_MS,
    CONFIRM_JOB,
    Scope,
    await_many,
    behind_ms,
    confirm_turn,
    parse_page,
    scope_of,
)
from worker.exchange import LIST_WINDOW_MS
from worker.models import Bucket, CancelRecord, OrderState
from worker.records import now_ms
from worker.services import Services
from worker.settings import Settings
from worker.turns import Turn


@pytest.fixture
def services(redis_url: str) -> Iterator[Services]:
    """Services on db 15 of the test Redis (nothing else reads or writes there)."""
    built = Services(Settings(redis_url=unit_url(redis_url)))
    built.redis.flushdb()
    yield built
    built.redis.close()


def record(order_id: str, **order: object) -> CancelRecord:
    return CancelRecord(
        order_id, "EXCHANGE_2", OrderState.CANCELLATION_RAISED, 9_000, 9_000, order=dict(order)
    )


def test_page_jobs_carry_where_to_continue() -> None:
    """`confirm@<to_time>#<page>` continues a pass; a bare `confirm` starts one."""
    assert parse_page("confirm") is None
    assert parse_page("confirm@1796300553447#3") == (1796300553447, 3)
    assert parse_page("confirm@17") == (17, 2)


def test_scope_narrows_to_one_symbol_and_the_orders_creation_times(services: Services) -> None:
    """Orders of one symbol with known creation times are sought in just that window."""
    records = [
        record("a", symbol="BTCUSDT", created_at=1_000),
        record("b", symbol="BTCUSDT", created_at=5_000),
    ]
    assert scope_of(services, records) == Scope(
        "BTCUSDT", 1_000 - CLOCK_SKEW_MS, 5_000 + CLOCK_SKEW_MS
    )


def test_scope_widens_for_several_symbols_and_unknown_creation_times(
    services: Services,
) -> None:
    """Several symbols drop the symbol filter; an order with no creation time known yet
    (named by a cancel-all) opens the window to the lists' full 7 days before its record."""
    records = [record("a", symbol="BTCUSDT", created_at=1_000), record("b", symbol="ETHUSDT")]
    records.append(CancelRecord("c", "EXCHANGE_2", OrderState.CANCELLATION_RAISED, 9_000, 9_000))
    scope = scope_of(services, records)
    assert scope.symbol is None
    assert scope.to_time == 9_000 + CLOCK_SKEW_MS
    assert scope.to_time - scope.from_time == LIST_WINDOW_MS - 1


def test_a_second_pass_within_an_interval_sends_nothing_and_waits_out_the_rest(
    redis_url: str,
) -> None:
    """Two passes queued before either began: the second finds the first's claim, makes no
    list request (its turn is not taken), and joins the line for when the interval ends:
    2 s or more after the check, of the claim's 2.5 s. The 0.5 s is slack for a loaded 2-core
    machine: between the claim and the check are a few Redis calls and no request."""
    env = {
        "COINSWITCH_API_KEY": API_KEY,
        "COINSWITCH_SECRET_KEY": SECRET_KEY,
        "COINSWITCH_BASE_URL": "http://127.0.0.1:9",  # nothing must be sent; nothing answers
    }
    built = Services(Settings.from_env({**env, "REDIS_URL": unit_url(redis_url)}))
    built.redis.flushdb()
    try:
        built.store.create_many(["o1"], "EXCHANGE_2", built.scheduler, hand_out=False)
        built.redis.zadd(built.keys.confirm("default"), {"o1": 0})
        built.redis.set(built.keys.confirm_pass("default"), 1, px=2500)
        turn = Turn(built.scheduler, "default", Bucket.CLOSED_ORDERS, "m1")
        confirm_turn(built, "default", CONFIRM_JOB, turn)
        assert not turn.taken
        later = built.keys.line_later("default", Bucket.CLOSED_ORDERS)
        ready_at = built.redis.zscore(later, CONFIRM_JOB)
        assert ready_at is not None and ready_at >= now_ms() + 2000
    finally:
        built.redis.close()


@pytest.mark.parametrize("spent", [False, True], ids=["lists free", "lists spent"])
def test_a_status_read_waits_behind_a_pass_only_while_the_lists_have_budget(
    redis_url: str, spent: bool
) -> None:
    """Orders awaiting confirmation are offered to a list pass, and their status reads wait
    behind it; but while the closed-orders budget is spent (the pass cannot come soon), each
    status read goes when due: waiting behind a pass that cannot run cost the 1,000-order
    soak about 20 s. Each read is due 1 s after the call (+ 30 s behind the pass while the
    lists have budget), within 0.5 s: await_many is one script call, so that is slack for a
    loaded 2-core machine."""
    env = {
        "COINSWITCH_API_KEY": API_KEY,
        "COINSWITCH_SECRET_KEY": SECRET_KEY,
        "COINSWITCH_BASE_URL": "http://127.0.0.1:9",
        "COINSWITCH_CLOSED_ORDERS_RATE_LIMIT": "2/60s",
    }
    built = Services(Settings.from_env({**env, "REDIS_URL": unit_url(redis_url)}))
    built.redis.flushdb()
    try:
        scheduler = built.scheduler
        if spent:
            for member in ("a", "b"):
                assert scheduler.commit("default", Bucket.CLOSED_ORDERS, member)[0]
        records = [record(f"o{i}") for i in range(3)]
        before = now_ms()
        await_many(built, scheduler, records, 1.0)
        later = built.redis.zrange(
            built.keys.line_later("default", Bucket.STATUS), 0, -1, withscores=True
        )
        status_at = {job: at - before for job, at in later}
        assert set(status_at) == {"o0", "o1", "o2"}
        behind = behind_ms(scheduler, "default")  # 2 slot intervals of 2/60s: 30 s (its ceiling)
        for waited in status_at.values():
            if spent:
                assert 1000 <= waited < 1000 + 500
            else:
                assert 1000 + behind <= waited < 1000 + behind + 500
        assert built.scheduler.waiting([("default", Bucket.CLOSED_ORDERS, CONFIRM_JOB)]) == [True]
    finally:
        built.redis.close()
