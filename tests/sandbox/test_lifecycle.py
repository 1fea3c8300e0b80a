"""The order lifecycle: two-phase cancel, fills racing it, refusals, spontaneous fills."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.coinswitch_client import CoinSwitchClient
from tests.sandbox.conftest import MakeSandbox, client_for, final_status, wait_for
from worker.sandbox import SandboxHandle


def test_place_cancel_poll_reaches_cancelled(client: CoinSwitchClient) -> None:
    """Place -> cancel (CANCELLATION_RAISED) -> poll -> CANCELLED after the confirm delay."""
    placed = client.place(
        symbol="DOGEUSDT", side="BUY", order_type="LIMIT", quantity=22, price=0.28
    )
    order_id = placed.json()["data"]["order_id"]
    cancel = client.cancel(order_id)
    assert cancel.json()["data"]["status"] == "CANCELLATION_RAISED"
    accepted_at = cancel.json()["data"]["updated_at"]
    assert client.status(order_id).json()["data"]["order"]["status"] == "CANCELLATION_RAISED"
    order = final_status(client, order_id)
    assert order["status"] == "CANCELLED"
    assert order["exec_quantity"] == "0"
    assert order["updated_at"] == accepted_at + 100  # confirm_delay_ms in FAST


@pytest.mark.parametrize(
    ("on_cancel", "status", "exec_quantity"),
    [
        ("fill", "EXECUTED", "22"),
        ("partial_fill", "PARTIALLY_EXECUTED", "11"),
        ("confirm", "CANCELLED", "0"),
    ],
)
def test_forced_on_cancel_outcome(
    sandbox: SandboxHandle,
    client: CoinSwitchClient,
    on_cancel: str,
    status: str,
    exec_quantity: str,
) -> None:
    """An order created with on_cancel ends as forced after an accepted cancel."""
    order_id = sandbox.admin.create_order(on_cancel=on_cancel)["order_id"]
    assert client.cancel(order_id).json()["data"]["status"] == "CANCELLATION_RAISED"
    order = final_status(client, order_id)
    assert (order["status"], order["exec_quantity"]) == (status, exec_quantity)
    if status != "CANCELLED":
        assert order["avg_execution_price"] == "0.28"
        assert Decimal(order["execution_fee"]) > 0
    history = [h["status"] for h in sandbox.admin.order(order_id)["history"]]
    assert history == ["RAISED", "CANCELLATION_RAISED", status]


def test_stick_stays_cancellation_raised(sandbox: SandboxHandle, client: CoinSwitchClient) -> None:
    """on_cancel=stick leaves the order in CANCELLATION_RAISED however long one polls."""
    order_id = sandbox.admin.create_order(on_cancel="stick")["order_id"]
    client.cancel(order_id)
    wait_for(lambda: sandbox.admin.stats()["endpoints"]["cancel"]["requests"] == 1)
    for _ in range(3):
        assert client.status(order_id).json()["data"]["order"]["status"] == "CANCELLATION_RAISED"


def test_fill_race_rate_one_fills_every_cancel(make_sandbox: MakeSandbox) -> None:
    """With fill_race_rate=1.0 every cancelled order ends EXECUTED or PARTIALLY_EXECUTED."""
    handle = make_sandbox(fill_race_rate=1.0, partial_fill_share=0.5, seed=3)
    client = client_for(handle)
    ids = [handle.admin.create_order()["order_id"] for _ in range(8)]
    for order_id in ids:
        assert client.cancel(order_id).status_code == 200
    finals = [final_status(client, order_id) for order_id in ids]
    statuses = {o["status"] for o in finals}
    assert statuses == {"EXECUTED", "PARTIALLY_EXECUTED"}
    for order in finals:
        executed = Decimal(order["exec_quantity"])
        if order["status"] == "EXECUTED":
            assert executed == 22
        else:
            assert 0 < executed < 22


def test_partial_share_one_always_partial(make_sandbox: MakeSandbox) -> None:
    """partial_fill_share=1.0 makes every raced fill PARTIALLY_EXECUTED."""
    handle = make_sandbox(fill_race_rate=1.0, partial_fill_share=1.0)
    client = client_for(handle)
    ids = [handle.admin.create_order()["order_id"] for _ in range(4)]
    for order_id in ids:
        client.cancel(order_id)
    assert {final_status(client, i)["status"] for i in ids} == {"PARTIALLY_EXECUTED"}


def test_partly_filled_then_cancelled_ends_partially_executed(
    sandbox: SandboxHandle, client: CoinSwitchClient
) -> None:
    """A RAISED order with a partial fill stays RAISED; its cancel then ends PARTIALLY_EXECUTED."""
    order_id = sandbox.admin.create_order()["order_id"]
    filled = sandbox.admin.fill(order_id, quantity="5")
    assert (filled["status"], filled["exec_quantity"]) == ("RAISED", "5")
    client.cancel(order_id)
    order = final_status(client, order_id)
    assert (order["status"], order["exec_quantity"]) == ("PARTIALLY_EXECUTED", "5")


def test_partial_cancel_status_can_be_cancelled(make_sandbox: MakeSandbox) -> None:
    """partial_cancel_status=CANCELLED makes a partly filled cancelled order end CANCELLED."""
    handle = make_sandbox(partial_cancel_status="CANCELLED")
    client = client_for(handle)
    order_id = handle.admin.create_order(exec_quantity="2")["order_id"]
    client.cancel(order_id)
    order = final_status(client, order_id)
    assert (order["status"], order["exec_quantity"]) == ("CANCELLED", "2")


def test_admin_fill_during_cancel_wins_the_race(
    sandbox: SandboxHandle, client: CoinSwitchClient
) -> None:
    """A full admin fill while CANCELLATION_RAISED ends EXECUTED, not CANCELLED."""
    order_id = sandbox.admin.create_order(on_cancel="stick")["order_id"]
    client.cancel(order_id)
    sandbox.admin.fill(order_id)
    assert client.status(order_id).json()["data"]["order"]["status"] == "EXECUTED"


@pytest.mark.parametrize("code", [400, 409, 422])
def test_refused_cancels_use_refuse_status(make_sandbox: MakeSandbox, code: int) -> None:
    """Cancelling a final or mid-cancel order is refused with refuse_status and a message."""
    handle = make_sandbox(refuse_status=code, confirm_delay_ms=60_000)
    client = client_for(handle)
    final_id = handle.admin.create_order(status="EXECUTED")["order_id"]
    mid_id = handle.admin.create_order()["order_id"]
    assert client.cancel(mid_id).status_code == 200
    for order_id in (final_id, mid_id):
        response = client.cancel(order_id)
        assert response.status_code == code
        assert set(response.json()) == {"message"}
    counters = handle.admin.order(mid_id)
    assert (counters["cancel_requests"], counters["cancel_accepted"]) == (2, 1)


def test_just_placed_cancel_is_refused(make_sandbox: MakeSandbox) -> None:
    """With just_placed_ms set, a cancel right after placement is refused, later accepted."""
    handle = make_sandbox(just_placed_ms=300)
    client = client_for(handle)
    order_id = handle.admin.create_order()["order_id"]
    assert client.cancel(order_id).status_code == 400
    wait_for(lambda: client.cancel(order_id).status_code == 200, timeout_s=3, interval_s=0.1)


def test_auto_fill_fills_resting_orders(make_sandbox: MakeSandbox) -> None:
    """auto_fill_rate=1.0 fills a placed GTC LIMIT order after auto_fill_delay_ms."""
    handle = make_sandbox(auto_fill_rate=1.0, auto_fill_delay_ms=50)
    client = client_for(handle)
    placed = client.place(symbol="ETHUSDT", side="SELL", order_type="LIMIT", quantity=1, price=3000)
    order = final_status(client, placed.json()["data"]["order_id"])
    assert (order["status"], order["avg_execution_price"]) == ("EXECUTED", "3000")


@pytest.mark.parametrize(("tif", "status"), [("IOC", "CANCELLED"), ("fok", "CANCELLED")])
def test_ioc_fok_resolve_at_once(client: CoinSwitchClient, tif: str, status: str) -> None:
    """An IOC/FOK LIMIT order without a fill is RAISED on placement, then CANCELLED at once."""
    placed = client.place(
        symbol="DOGEUSDT", side="BUY", order_type="LIMIT", quantity=1, price=0.1, time_in_force=tif
    )
    assert placed.json()["data"]["status"] == "RAISED"
    assert final_status(client, placed.json()["data"]["order_id"], 1)["status"] == status


def test_counters_count_every_request(sandbox: SandboxHandle, client: CoinSwitchClient) -> None:
    """cancel_requests/status_requests count every DELETE/GET naming the order, even 401s."""
    order_id = sandbox.admin.create_order(on_cancel="stick")["order_id"]
    client.status(order_id)
    client.request("GET", "/trade/api/v2/futures/order", params={"order_id": order_id}, epoch=1)
    client.cancel(order_id)
    client.cancel(order_id)
    view: dict[str, Any] = sandbox.admin.order(order_id)
    assert (view["status_requests"], view["cancel_requests"], view["cancel_accepted"]) == (2, 2, 1)
