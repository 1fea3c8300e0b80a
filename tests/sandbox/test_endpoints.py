"""Every exchange endpoint's happy path, envelope, field names and input validation."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import requests

from tests.coinswitch_client import ORDER_PATH, CoinSwitchClient
from tests.sandbox.conftest import final_status
from worker.sandbox import SandboxHandle

STATUS_FIELDS = {
    "order_id",
    "exchange",
    "symbol",
    "side",
    "status",
    "order_type",
    "quantity",
    "exec_quantity",
    "price",
    "avg_execution_price",
    "execution_fee",
    "realised_pnl",
    "reduce_only",
    "created_at",
    "updated_at",
}
CANCEL_FIELDS = (STATUS_FIELDS - {"avg_execution_price", "execution_fee", "realised_pnl"}) | {
    "avg_exec_price",
    "exec_fee",
}
DECIMALS = ("quantity", "exec_quantity", "price")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
LIMIT_ORDER: dict[str, Any] = {
    "symbol": "DOGEUSDT",
    "side": "BUY",
    "order_type": "LIMIT",
    "quantity": 22,
    "price": 0.28,
}


def place(client: CoinSwitchClient, **fields: Any) -> dict[str, Any]:
    """Place an order and return `data`, asserting 200."""
    response = client.place(**{**LIMIT_ORDER, **fields})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def test_place_returns_order_directly_under_data_in_status_shape(client: CoinSwitchClient) -> None:
    """Place answers {"data": order} with the status-shape fields, decimals as strings."""
    before = time.time_ns() // 1_000_000
    order = place(client)
    assert set(order) == STATUS_FIELDS
    assert UUID_RE.match(order["order_id"])
    assert order["status"] == "RAISED"
    assert (order["quantity"], order["price"], order["exec_quantity"]) == ("22", "0.28", "0")
    assert all(isinstance(order[f], str) for f in DECIMALS)
    assert order["avg_execution_price"] == "0" and order["realised_pnl"] == "0"
    assert order["reduce_only"] is False
    assert isinstance(order["created_at"], int) and order["created_at"] >= before
    assert order["updated_at"] == order["created_at"]


def test_place_normalises_lowercase_input_to_uppercase(client: CoinSwitchClient) -> None:
    """Lower-case exchange, symbol, side and order_type are accepted and returned upper-case."""
    order = place(client, exchange="exchange_2", symbol="dogeusdt", side="sell", order_type="limit")
    assert (order["exchange"], order["symbol"], order["side"], order["order_type"]) == (
        "EXCHANGE_2",
        "DOGEUSDT",
        "SELL",
        "LIMIT",
    )


def test_place_keeps_decimal_scale_as_sent(client: CoinSwitchClient) -> None:
    """Decimals come back as strings with the scale the client sent, numeric strings allowed."""
    order = place(client, quantity="6.160", price=0.2800)
    assert order["quantity"] == "6.160"
    assert order["price"] == "0.28"  # json.dumps(0.28) sends 0.28


@pytest.mark.parametrize(
    ("drop", "field"),
    [
        ("exchange", "exchange"),
        ("symbol", "symbol"),
        ("side", "side"),
        ("order_type", "order_type"),
        ("quantity", "quantity"),
        ("price", "price"),
    ],
)
def test_place_missing_field_is_422_naming_it(
    client: CoinSwitchClient, drop: str, field: str
) -> None:
    """A missing required Place field gives 422 "Input <field> is missing"."""
    body = {"exchange": "EXCHANGE_2", **LIMIT_ORDER}
    del body[drop]
    response = client.request("POST", ORDER_PATH, body=body)
    assert response.status_code == 422
    assert response.json() == {"message": f"Input {field} is missing"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("exchange", "EXCHANGE_1"),
        ("symbol", "DOGE-INR"),
        ("side", "HOLD"),
        ("order_type", "TRAILING"),
        ("quantity", -1),
        ("quantity", "lots"),
        ("price", 0),
        ("reduce_only", "yes"),
        ("time_in_force", "GTD"),
        ("quantity", True),
    ],
)
def test_place_invalid_field_is_422_naming_it(
    client: CoinSwitchClient, field: str, value: Any
) -> None:
    """An unusable Place field value gives 422 naming that field."""
    response = client.place(**{**LIMIT_ORDER, field: value})
    assert response.status_code == 422
    assert response.json() == {
        "message": f"The value you provided for the field {field} is not valid"
    }


def test_place_is_idempotent_on_client_order_id(client: CoinSwitchClient) -> None:
    """Resending a client_order_id returns the same order (200) instead of a second one."""
    first = place(client, client_order_id="cid-1")
    again = place(client, client_order_id="cid-1", quantity=99)
    assert again["order_id"] == first["order_id"]
    assert again["client_order_id"] == "cid-1" and again["quantity"] == "22"
    listed = client.open_orders().json()["data"]["orders"]
    assert [o["order_id"] for o in listed] == [first["order_id"]]


def test_market_order_is_raised_then_executed(client: CoinSwitchClient) -> None:
    """A MARKET order may be answered RAISED but its status is EXECUTED straight away."""
    placed = place(client, order_type="MARKET", price=None, quantity=3)
    assert placed["status"] == "RAISED"
    order = final_status(client, placed["order_id"])
    assert order["status"] == "EXECUTED"
    assert order["exec_quantity"] == "3"
    assert order["avg_execution_price"] != "0"


def test_tpsl_order_needs_trigger_price_and_reduce_only(client: CoinSwitchClient) -> None:
    """TP/SL orders need quantity 0, trigger_price and reduce_only true (422 naming each)."""
    base = {"symbol": "BTCUSDT", "side": "SELL", "order_type": "STOP_MARKET", "quantity": 0}
    no_trigger = client.place(**base, reduce_only=True)
    assert no_trigger.json() == {"message": "Input trigger_price is missing"}
    no_reduce = client.place(**base, trigger_price=50000)
    assert no_reduce.json() == {"message": "Input reduce_only is missing"}
    false_reduce = client.place(**base, trigger_price=50000, reduce_only=False)
    assert false_reduce.status_code == 422 and "reduce_only" in false_reduce.json()["message"]
    nonzero = client.place(**{**base, "quantity": 1}, trigger_price=50000, reduce_only=True)
    assert nonzero.status_code == 422 and "quantity" in nonzero.json()["message"]
    ok = client.place(**base, trigger_price=50000, reduce_only=True)
    assert ok.status_code == 200
    assert ok.json()["data"]["status"] == "RAISED" and ok.json()["data"]["reduce_only"] is True


def test_status_wraps_order_in_data_order(client: CoinSwitchClient) -> None:
    """Get Order Status answers {"data": {"order": ...}} in the status shape, order_id alone."""
    placed = place(client)
    response = client.request("GET", ORDER_PATH, params={"order_id": placed["order_id"]})
    assert response.status_code == 200
    order = response.json()["data"]["order"]
    assert set(order) == STATUS_FIELDS
    assert order["order_id"] == placed["order_id"]


def test_status_accepts_exchange_param_and_client_order_id(client: CoinSwitchClient) -> None:
    """An extra exchange param is ignored and client_order_id works as a lookup key."""
    placed = place(client, client_order_id="abc")
    with_exchange = client.request(
        "GET", ORDER_PATH, params={"order_id": placed["order_id"], "exchange": "EXCHANGE_2"}
    )
    assert with_exchange.json()["data"]["order"]["order_id"] == placed["order_id"]
    by_cid = client.request("GET", ORDER_PATH, params={"client_order_id": "abc"})
    assert by_cid.json()["data"]["order"]["order_id"] == placed["order_id"]


def test_status_without_order_id_is_422(client: CoinSwitchClient) -> None:
    """Get Order Status with no order_id is 422 naming order_id."""
    response = client.request("GET", ORDER_PATH)
    assert response.status_code == 422
    assert response.json() == {"message": "Input order_id is missing"}


def test_unknown_order_id_is_configurable_4xx(make_sandbox: Any) -> None:
    """Unknown ids on status and cancel give the unknown-order code with "Order not found"."""
    for code in (404, 400):
        handle = make_sandbox(unknown_order_status=code)
        client = CoinSwitchClient(handle.url, handle.api_key, handle.secret_key)
        for response in (client.status("nope"), client.cancel("nope")):
            assert response.status_code == code
            assert response.json() == {"message": "Order not found"}


def test_cancel_returns_cancel_shape(client: CoinSwitchClient) -> None:
    """Cancel answers CANCELLATION_RAISED at data with avg_exec_price/exec_fee, no realised_pnl."""
    placed = place(client)
    response = client.cancel(placed["order_id"], exchange="exchange_2")
    assert response.status_code == 200
    order = response.json()["data"]
    assert set(order) == CANCEL_FIELDS
    assert "realised_pnl" not in order
    assert order["status"] == "CANCELLATION_RAISED"
    assert order["avg_exec_price"] == "0" and order["exec_fee"] == "0"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"order_id": "x"}, "Input exchange is missing"),
        ({"exchange": "EXCHANGE_2"}, "Input order_id is missing"),
        (
            {"exchange": "BINANCE", "order_id": "x"},
            "The value you provided for the field exchange is not valid",
        ),
    ],
)
def test_cancel_body_validation_is_422(
    client: CoinSwitchClient, body: dict[str, Any], message: str
) -> None:
    """Cancel needs exchange (EXCHANGE_2, any case) and order_id in its JSON body."""
    response = client.request("DELETE", ORDER_PATH, body=body)
    assert response.status_code == 422
    assert response.json() == {"message": message}


def test_cancel_all_returns_orders_ids_for_symbol(client: CoinSwitchClient) -> None:
    """Cancel All with a symbol sends only that symbol's open orders, TP/SL included."""
    doge = [place(client)["order_id"] for _ in range(2)]
    btc = place(client, symbol="BTCUSDT", price=60000)["order_id"]
    stop = place(
        client,
        symbol="DOGEUSDT",
        order_type="STOP_MARKET",
        quantity=0,
        price=None,
        trigger_price=0.2,
        reduce_only=True,
    )["order_id"]
    response = client.cancel_all(symbol="dogeusdt")
    assert response.status_code == 200
    ids = response.json()["data"]["orders_ids"]
    assert set(ids) == {*doge, stop}
    assert client.status(btc).json()["data"]["order"]["status"] == "RAISED"
    for order_id in ids:
        assert final_status(client, order_id)["status"] == "CANCELLED"


def test_cancel_all_with_nothing_open_is_empty_list(client: CoinSwitchClient) -> None:
    """Cancel All with nothing open answers an empty orders_ids list."""
    response = client.cancel_all()
    assert response.status_code == 200
    assert response.json() == {"data": {"orders_ids": []}}


def test_open_and_closed_lists_newest_first_with_cursor(
    client: CoinSwitchClient, sandbox: SandboxHandle
) -> None:
    """Open/Closed list data.orders newest first with cursor = oldest created_at returned."""
    now = time.time_ns() // 1_000_000
    made = [
        sandbox.admin.create_order(created_at=now - 3000 + i * 1000)["order_id"] for i in range(3)
    ]
    done = sandbox.admin.create_order(status="EXECUTED", created_at=now - 500)
    opened = client.open_orders().json()["data"]
    assert [o["order_id"] for o in opened["orders"]] == made[::-1]
    assert opened["cursor"] == now - 3000
    assert set(opened["orders"][0]) == STATUS_FIELDS
    page = client.open_orders(limit=2).json()["data"]
    assert [o["order_id"] for o in page["orders"]] == made[:0:-1]
    older = client.open_orders(to_time=page["cursor"]).json()["data"]["orders"]
    assert [o["order_id"] for o in older] == [made[1], made[0]]  # inclusive boundary repeats
    closed = client.closed_orders(status="executed").json()["data"]
    assert [o["order_id"] for o in closed["orders"]] == [done["order_id"]]
    none = client.closed_orders(status="CANCELLED").json()["data"]
    assert none == {"orders": [], "cursor": None}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"limit": 51}, "limit"),
        ({"limit": 0}, "limit"),
        ({"from_time": 0, "to_time": 7 * 24 * 3600 * 1000 + 1}, "to_time"),
        ({"from_time": "yesterday"}, "from_time"),
    ],
)
def test_list_validation_is_422(client: CoinSwitchClient, body: dict[str, Any], field: str) -> None:
    """Open Orders rejects limit > 50 and windows over 7 days with 422 naming the field."""
    response = client.open_orders(**body)
    assert response.status_code == 422
    assert field in response.json()["message"]


def test_server_time_needs_no_auth(sandbox: SandboxHandle) -> None:
    """GET /trade/api/v2/time answers {"serverTime": ms} without signing, within 5 s of the
    test's clock: the sandbox shares it, so 5 s is slack for one loopback request."""
    response = requests.get(f"{sandbox.url}/trade/api/v2/time", timeout=5)
    assert response.status_code == 200
    assert abs(response.json()["serverTime"] - time.time_ns() // 1_000_000) < 5000


def test_other_keys_orders_are_unknown(make_sandbox: Any) -> None:
    """An order owned by another API key is "not found" for status and cancel."""
    from worker.sandbox import generate_keypair

    (pub_a, sec_a), (pub_b, sec_b) = generate_keypair(), generate_keypair()
    handle = make_sandbox(api_keys=[pub_a, pub_b])
    alice = CoinSwitchClient(handle.url, pub_a, sec_a)
    bob = CoinSwitchClient(handle.url, pub_b, sec_b)
    order_id = place(alice)["order_id"]
    assert bob.status(order_id).status_code == 404
    assert bob.cancel(order_id).status_code == 404
    assert alice.status(order_id).status_code == 200
