"""The list pass's query: the narrowest window and symbol that can hold every order sought."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from worker.confirmation import CLOCK_SKEW_MS, Scope, parse_page, scope_of
from worker.exchange import LIST_WINDOW_MS
from worker.models import CancelRecord, OrderState
from worker.services import Services
from worker.settings import Settings


@pytest.fixture
def services(redis_url: str) -> Iterator[Services]:
    """Services on db 15 of the test Redis (nothing else reads or writes there)."""
    built = Services(Settings(redis_url=redis_url.rsplit("/", 1)[0] + "/15"))
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
