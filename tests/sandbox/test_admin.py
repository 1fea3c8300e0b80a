"""The unsigned admin API, and robustness against junk requests."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import requests

from tests.coinswitch_client import FUTURES, ORDER_PATH, CoinSwitchClient
from worker.sandbox import SandboxHandle


def test_health(sandbox: SandboxHandle) -> None:
    """GET /_sandbox/health answers {"status": "ok"}."""
    assert sandbox.admin.health() == {"status": "ok"}


def test_create_order_in_any_state(sandbox: SandboxHandle, client: CoinSwitchClient) -> None:
    """Admin-created orders can start in any status and are visible to their owner's client."""
    for status, executed in (("EXECUTED", "22"), ("PARTIALLY_EXECUTED", "11"), ("CANCELLED", "0")):
        order = sandbox.admin.create_order(status=status, quantity="22")
        seen = client.status(order["order_id"]).json()["data"]["order"]
        assert (seen["status"], seen["exec_quantity"]) == (status, executed)


def test_create_order_validates(sandbox: SandboxHandle) -> None:
    """Bad admin fields (status, on_cancel, owner) are 422s, not crashes."""
    for bad in ({"status": "LOST"}, {"on_cancel": "explode"}, {"api_key": "00" * 32}):
        with pytest.raises(requests.HTTPError) as info:
            sandbox.admin.create_order(**bad)
        assert info.value.response.status_code == 422


def test_order_view_has_counters_and_history(
    sandbox: SandboxHandle, client: CoinSwitchClient
) -> None:
    """GET /_sandbox/orders/<id> shows the order, request counters and timed history."""
    order_id = sandbox.admin.create_order()["order_id"]
    client.status(order_id)
    view = sandbox.admin.order(order_id)
    assert view["order"]["order_id"] == order_id
    assert (view["cancel_requests"], view["cancel_accepted"], view["status_requests"]) == (0, 0, 1)
    assert [h["status"] for h in view["history"]] == ["RAISED"]
    assert isinstance(view["history"][0]["at"], int)
    with pytest.raises(requests.HTTPError) as info:
        sandbox.admin.order("missing")
    assert info.value.response.status_code == 404


def test_fill_rules(sandbox: SandboxHandle) -> None:
    """Admin fill: partial keeps RAISED, full makes EXECUTED, a final order is 409."""
    order_id = sandbox.admin.create_order(quantity="10")["order_id"]
    assert sandbox.admin.fill(order_id, "4")["status"] == "RAISED"
    with pytest.raises(requests.HTTPError):
        sandbox.admin.fill(order_id, "7")  # more than the 6 remaining
    done = sandbox.admin.fill(order_id)
    assert (done["status"], done["exec_quantity"]) == ("EXECUTED", "10")
    with pytest.raises(requests.HTTPError) as info:
        sandbox.admin.fill(order_id)
    assert info.value.response.status_code == 409


def test_configure_changes_runtime_knobs(sandbox: SandboxHandle, client: CoinSwitchClient) -> None:
    """POST /_sandbox/config swaps knobs live (limits as strings) and rejects bad ones."""
    config = sandbox.admin.configure(status_limit="1/10s", refuse_status=409)
    assert (config["status_limit"], config["refuse_status"]) == ("1/10s", 409)
    assert client.status("x").status_code == 404
    assert client.status("x").status_code == 429
    assert sandbox.admin.stats()["endpoints"]["status"]["limit"] == 1
    for bad in ({"status_limit": "often"}, {"seed": 3}, {"fill_race_rate": 2}, {"nope": 1}):
        with pytest.raises(requests.HTTPError) as info:
            sandbox.admin.configure(**bad)
        assert info.value.response.status_code == 422
    assert sandbox.admin.config()["refuse_status"] == 409


def test_stats_shape(sandbox: SandboxHandle, client: CoinSwitchClient) -> None:
    """Stats list every endpoint with method, path, limit and counters, plus order counts."""
    sandbox.admin.create_order()
    client.open_orders()
    stats = sandbox.admin.stats()
    assert set(stats["endpoints"]) == {"place", "cancel", "status", "cancel_all", "open", "closed"}
    opened = stats["endpoints"]["open"]
    assert (opened["method"], opened["path"], opened["requests"]) == (
        "POST",
        f"{FUTURES}/orders/open",
        1,
    )
    assert set(opened) >= {"limit", "period_ms", "rate_limited", "unauthorized", "faulted"}
    assert stats["orders"]["RAISED"] == 1 and stats["orders"]["CANCELLED"] == 0


def test_reset_clears_orders_counters_faults_and_windows(
    sandbox: SandboxHandle, client: CoinSwitchClient
) -> None:
    """Reset forgets orders, counters, queued faults and windows but keeps keys and config."""
    sandbox.admin.configure(status_limit="1/60s")
    order_id = sandbox.admin.create_order()["order_id"]
    client.status(order_id)
    assert client.status(order_id).status_code == 429
    sandbox.admin.inject("cancel", "error_not_applied")
    sandbox.admin.reset()
    stats = sandbox.admin.stats()
    assert stats["endpoints"]["status"]["requests"] == 0
    assert sum(stats["orders"].values()) == 0
    assert stats["faults_queued"]["cancel"] == 0
    assert client.status(order_id).status_code == 404  # key still valid, window empty
    assert sandbox.admin.config()["status_limit"] == "1/60s"


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/nowhere", 404),
        ("GET", f"{FUTURES}/positions", 404),
        ("PUT", ORDER_PATH, 405),
        ("GET", f"{FUTURES}/orders/open", 405),
        ("GET", "/_sandbox/nothing", 404),
        ("DELETE", "/_sandbox/stats", 405),
        ("POST", "/trade/api/v2/time", 405),
    ],
)
def test_unknown_routes_and_methods(
    sandbox: SandboxHandle, method: str, path: str, code: int
) -> None:
    """Unknown paths are 404 {"message": "Not found"}, wrong methods 405, both JSON."""
    response = requests.request(method, sandbox.url + path, timeout=5)
    assert response.status_code == code
    assert "message" in response.json()


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe", b'"text"'])
def test_junk_body_is_400_json(client: CoinSwitchClient, raw: bytes) -> None:
    """A body that is not a JSON object is a 400 JSON answer, never a crash."""
    request = requests.Request("DELETE", client.base_url + ORDER_PATH, data=raw)
    prepared = client.session.prepare_request(request)
    signed = client.request("DELETE", ORDER_PATH)  # borrow fresh auth headers
    prepared.headers.update({k: v for k, v in signed.request.headers.items() if "AUTH" in k})
    response = client.session.send(prepared, timeout=5)
    assert response.status_code == 400
    assert response.json() == {"message": "Request body must be a JSON object"}


def test_garbage_on_the_socket_does_not_kill_the_server(sandbox: SandboxHandle) -> None:
    """A non-HTTP line or an oversized Content-Length leaves the server serving."""
    host, port = sandbox.url.removeprefix("http://").split(":")
    for junk in (b"HELLO\r\n\r\n", b"POST /x HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(junk)
            sock.recv(1024)
    assert sandbox.admin.health() == {"status": "ok"}


def test_admin_create_honours_owner(sandbox: SandboxHandle) -> None:
    """api_key on create must be a configured key; default owner is the first key."""
    order: dict[str, Any] = sandbox.admin.create_order(api_key=sandbox.api_key)
    assert sandbox.admin.order(order["order_id"])["owner"] == sandbox.api_key
