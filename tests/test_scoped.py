"""An owner's cancel-all: the plan read from the open orders (pure), and the jobs that carry
its reads."""

from __future__ import annotations

from typing import Any

from worker.scoped import Plan, parse_scope_job, plan_scope, scope_job


def seen(*orders: tuple[str, str, str]) -> dict[str, dict[str, Any]]:
    """Open orders read: (id, symbol, status)."""
    return {i: {"symbol": symbol, "status": status} for i, symbol, status in orders}


def test_a_symbol_holding_only_the_owners_orders_gets_one_cancel_all() -> None:
    """Every open order of ETHUSDT is A's: one cancel-all of ETHUSDT, no DELETE."""
    read = seen(("e1", "ETHUSDT", "RAISED"), ("e2", "ETHUSDT", "RAISED"))
    assert plan_scope(read, {"e1": "a", "e2": "a"}, "a") == Plan(["ETHUSDT"], [], [])


def test_a_shared_symbol_gets_the_owners_orders_one_by_one() -> None:
    """BTCUSDT also holds B's order and an untracked one: A's orders one by one, and no
    cancel-all of BTCUSDT; a symbol with none of A's orders is left alone."""
    read = seen(
        ("b1", "BTCUSDT", "RAISED"),
        ("b2", "BTCUSDT", "RAISED"),
        ("b3", "BTCUSDT", "RAISED"),
        ("b4", "BTCUSDT", "RAISED"),
        ("s1", "SOLUSDT", "RAISED"),
    )
    owners = {"b1": "a", "b2": "b", "b3": None, "b4": "a", "s1": "b"}
    assert plan_scope(read, owners, "a") == Plan([], ["b1", "b4"], [])


def test_orders_being_cancelled_are_confirmed_not_cancelled_again() -> None:
    """A's order already CANCELLATION_RAISED is only confirmed; a symbol where that is A's
    only order gets no cancel-all, and one where A also has an open order still does."""
    read = seen(
        ("x1", "XRPUSDT", "CANCELLATION_RAISED"),
        ("e1", "ETHUSDT", "CANCELLATION_RAISED"),
        ("e2", "ETHUSDT", "RAISED"),
    )
    owners = {"x1": "a", "e1": "a", "e2": "a"}
    assert plan_scope(read, owners, "a") == Plan(["ETHUSDT"], [], ["x1", "e1"])


def test_an_order_without_a_symbol_is_never_covered_by_a_cancel_all() -> None:
    """An order the list showed without a symbol is cancelled by DELETE: a cancel-all with
    no symbol would take the whole account."""
    read = {"o1": {"status": "RAISED"}}
    assert plan_scope(read, {"o1": "a"}, "a") == Plan([], ["o1"], [])


def test_nothing_of_the_owner_open_plans_nothing() -> None:
    """No open order of the owner: an empty plan (the batch ends DONE with no call)."""
    read = seen(("b1", "BTCUSDT", "RAISED"))
    assert plan_scope(read, {"b1": "b"}, "a") == Plan([], [], [])
    assert plan_scope({}, {}, "a") == Plan([], [], [])


def test_a_read_job_round_trips() -> None:
    """A read's job names its batch, target and page, and parses back to them."""
    batch = "batch-5c4b1c3e-3f7e-4b0a-9d1e-6a2f0c9b8d21"
    assert parse_scope_job(scope_job(batch, "*")) == (batch, "*", None, 1)
    assert parse_scope_job(scope_job(batch, "BTCUSDT", 1765000000000, 3)) == (
        batch,
        "BTCUSDT",
        1765000000000,
        3,
    )
    assert Plan.from_dict(Plan(["A"], ["o"], []).to_dict()) == Plan(["A"], ["o"], [])
