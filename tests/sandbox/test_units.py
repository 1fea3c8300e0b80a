"""Plain unit tests: rate parsing, config validation, and the lazy lifecycle on a fake clock."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.sandbox import SandboxConfig, parse_rate
from worker.sandbox.book import CancelRefusedError, OrderBook
from worker.sandbox.orders import CANCELLED, EXECUTED, PARTIALLY_EXECUTED
from worker.sandbox.ratelimit import SlidingWindowLimiter
from worker.sandbox.validation import PlaceRequest


def test_sandbox_rates_use_the_project_grammar() -> None:
    """The sandbox's flags parse rates exactly as the worker's settings do."""
    assert parse_rate("10/2s") == (10, 2.0)
    with pytest.raises(ValueError, match="'10/2x'"):
        parse_rate("10/2x")


@pytest.mark.parametrize(
    "bad",
    [
        {"cancel_limit": "lots"},
        {"fill_race_rate": 1.5},
        {"refuse_status": 500},
        {"unknown_order_status": 200},
        {"confirm_delay_ms": -1},
        {"rate_scope": "account"},
        {"error_rate": 0.6, "timeout_rate": 0.6},
        {"partial_cancel_status": "EXPIRED"},
    ],
)
def test_config_rejects_bad_values(bad: dict[str, object]) -> None:
    """SandboxConfig refuses impossible values at construction."""
    with pytest.raises(ValueError):
        SandboxConfig(**bad)  # type: ignore[arg-type]


def test_config_binds_loopback_unless_remote_is_allowed() -> None:
    """A non-loopback host is refused unless allow_remote says it is a private network."""
    with pytest.raises(ValueError, match="loopback only"):
        SandboxConfig(host="0.0.0.0")
    assert SandboxConfig(host="0.0.0.0", allow_remote=True).host == "0.0.0.0"
    with pytest.raises(ValueError, match="host"):
        SandboxConfig(host="not an address", allow_remote=True)


def test_config_defaults_match_the_documented_limits() -> None:
    """Defaults are the exchange's documented limits."""
    config = SandboxConfig()
    assert config.limit_for("cancel") == (10, 60.0)
    assert config.limit_for("status") == (20, 60.0)
    assert config.limit_for("closed") == (20, 60.0)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.now_ms = start_ms

    def __call__(self) -> int:
        return self.now_ms


ORDER = PlaceRequest(
    "DOGEUSDT", "BUY", "LIMIT", Decimal(22), Decimal("0.28"), None, False, "GTC", None
)


def test_lazy_cancel_confirms_exactly_at_due_time() -> None:
    """The cancel resolves at accepted_at + confirm delay, stamped with that time."""
    clock = FakeClock()
    book = OrderBook(seed=1, clock=clock)
    config = SandboxConfig(confirm_delay_ms=500)
    order, _ = book.place("k", ORDER, config)
    clock.now_ms += 10
    book.cancel("k", order.order_id, config)
    clock.now_ms += 499
    assert book.get("k", order.order_id).status == "CANCELLATION_RAISED"
    clock.now_ms += 1
    final = book.get("k", order.order_id)
    assert final.status == CANCELLED
    assert final.updated_at == order.created_at + 510
    with pytest.raises(CancelRefusedError):
        book.cancel("k", order.order_id, config)


def test_seeded_race_outcomes_repeat() -> None:
    """Same seed, same config: the same sequence of raced outcomes and quantities."""

    def outcomes(seed: int) -> list[tuple[str, Decimal]]:
        clock = FakeClock()
        book = OrderBook(seed=seed, clock=clock)
        config = SandboxConfig(fill_race_rate=0.5, confirm_delay_ms=0)
        ids = [book.place("k", ORDER, config)[0].order_id for _ in range(30)]
        for order_id in ids:
            book.cancel("k", order_id, config)
        got = [book.get("k", i) for i in ids]
        return [(o.status, o.exec_quantity) for o in got]

    first = outcomes(5)
    assert first == outcomes(5)
    assert {s for s, _ in first} == {CANCELLED, EXECUTED, PARTIALLY_EXECUTED}


def test_limiter_is_strict_sliding_window() -> None:
    """At most `limit` admitted in any window of `period` ms; 429s do not use budget."""
    limiter = SlidingWindowLimiter()
    admitted = [t for t in range(0, 4000, 100) if limiter.admit("k", "cancel", t, 10, 2000)]
    assert admitted == list(range(0, 1000, 100)) + list(range(2000, 3000, 100))


@given(st.lists(st.integers(min_value=0, max_value=5000), min_size=1, max_size=200))
def test_limiter_never_admits_more_than_limit_in_any_window(times: list[int]) -> None:
    """Property: for any arrival times, no window of 1000 ms holds more than 5 admitted."""
    limiter = SlidingWindowLimiter()
    admitted = [t for t in sorted(times) if limiter.admit("k", "status", t, 5, 1000)]
    for start in admitted:
        assert sum(1 for t in admitted if start <= t < start + 1000) <= 5
