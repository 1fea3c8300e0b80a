"""Injected and seeded random faults: 5xx, timeouts, bad JSON, latency; applied or not."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests

from tests.coinswitch_client import CoinSwitchClient
from tests.sandbox.conftest import MakeSandbox, client_for, final_status
from worker.sandbox import SandboxHandle

TIMEOUT_MS = 200


def cancel_outcome(handle: SandboxHandle, client: CoinSwitchClient) -> tuple[Any, str]:
    """Cancel a fresh order; return (HTTP status or 'dropped', the order's status after)."""
    order_id = handle.admin.create_order(on_cancel="stick")["order_id"]
    try:
        code: Any = client.cancel(order_id).status_code
    except requests.ConnectionError:
        code = "dropped"
    return code, handle.admin.order(order_id)["order"]["status"]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("error_applied", (503, "CANCELLATION_RAISED")),
        ("error_not_applied", (503, "RAISED")),
        ("timeout_applied", ("dropped", "CANCELLATION_RAISED")),
        ("timeout_not_applied", ("dropped", "RAISED")),
        ("rate_limited", (429, "RAISED")),
        ("unauthorized", (401, "RAISED")),
        ("latency", (200, "CANCELLATION_RAISED")),
    ],
)
def test_injected_fault_on_cancel(
    make_sandbox: MakeSandbox, kind: str, expected: tuple[Any, str]
) -> None:
    """Each one-shot fault kind answers as named; "applied" ones changed the order anyway.
    A timeout takes >= 200 ms and latency >= 150 ms: lower bounds, which load cannot break."""
    handle = make_sandbox(timeout_ms=TIMEOUT_MS)
    client = client_for(handle)
    handle.admin.inject("cancel", kind, latency_ms=150)
    started = time.monotonic()
    assert cancel_outcome(handle, client) == expected
    if kind.startswith("timeout"):
        assert time.monotonic() - started >= TIMEOUT_MS / 1000
    if kind == "latency":
        assert time.monotonic() - started >= 0.15
    assert cancel_outcome(handle, client) == (200, "CANCELLATION_RAISED")  # one-shot
    assert handle.admin.stats()["endpoints"]["cancel"]["faulted"] == 1


def test_injected_error_status_and_body(sandbox: SandboxHandle, client: CoinSwitchClient) -> None:
    """An injected error uses the given 5xx status and an Internal server error message."""
    sandbox.admin.inject("status", "error_not_applied", status=502)
    response = client.status("x")
    assert (response.status_code, response.json()) == (502, {"message": "Internal server error"})


def test_malformed_applies_and_truncates(sandbox: SandboxHandle, client: CoinSwitchClient) -> None:
    """A malformed fault places the order but answers 200 with invalid JSON."""
    sandbox.admin.inject("place", "malformed")
    response = client.place(
        symbol="DOGEUSDT", side="BUY", order_type="LIMIT", quantity=1, price=1, client_order_id="m1"
    )
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)
    found = client.request("GET", "/trade/api/v2/futures/order", params={"client_order_id": "m1"})
    assert found.json()["data"]["order"]["status"] == "RAISED"


def test_error_applied_place_is_found_by_client_order_id(
    sandbox: SandboxHandle, client: CoinSwitchClient
) -> None:
    """After a 5xx where the order was created, resending the client id returns that order."""
    sandbox.admin.inject("place", "error_applied")
    body = {"symbol": "DOGEUSDT", "side": "BUY", "order_type": "LIMIT", "quantity": 2, "price": 1}
    assert client.place(**body, client_order_id="c-9").status_code == 503
    again = client.place(**body, client_order_id="c-9")
    assert again.status_code == 200
    assert sandbox.admin.stats()["orders"]["RAISED"] == 1


def test_faults_are_fifo_and_per_endpoint(sandbox: SandboxHandle, client: CoinSwitchClient) -> None:
    """Queued faults are consumed in order, only by their own endpoint."""
    sandbox.admin.inject("status", "error_not_applied", count=2, status=500)
    sandbox.admin.inject("status", "rate_limited")
    assert client.cancel("x").status_code == 404
    codes = [client.status("x").status_code for _ in range(4)]
    assert codes == [500, 500, 429, 404]


def test_body_fault_answers_the_given_text_after_applying(
    sandbox: SandboxHandle, client: CoinSwitchClient
) -> None:
    """A body fault runs the operation, then answers its own status and text verbatim."""
    order_id = sandbox.admin.create_order(on_cancel="stick")["order_id"]
    odd = '{"data": {"status": 7}}'
    sandbox.admin.inject("cancel", "body", status=200, body=odd, order_id=order_id)
    response = client.cancel(order_id)
    assert (response.status_code, response.text) == (200, odd)
    assert sandbox.admin.order(order_id)["order"]["status"] == "CANCELLATION_RAISED"


def test_body_fault_needs_a_body(sandbox: SandboxHandle) -> None:
    """A body fault without its text is refused by the admin API."""
    with pytest.raises(requests.HTTPError):
        sandbox.admin.inject("cancel", "body", status=200)


def test_inject_rejects_unknown_kind(sandbox: SandboxHandle) -> None:
    """An unknown fault kind or endpoint is a 422 from the admin API."""
    with pytest.raises(requests.HTTPError):
        sandbox.admin.inject("status", "gremlins")
    with pytest.raises(requests.HTTPError):
        sandbox.admin.inject("teleport", "malformed")


def random_run(make_sandbox: MakeSandbox, seed: int) -> list[Any]:
    """Outcomes of a fixed script against a sandbox with random faults and races."""
    handle = make_sandbox(
        seed=seed,
        error_rate=0.3,
        timeout_rate=0.1,
        malformed_rate=0.1,
        timeout_ms=50,
        fill_race_rate=0.5,
        confirm_delay_ms=20,
    )
    client = client_for(handle)
    outcomes: list[Any] = []
    ids = [handle.admin.create_order()["order_id"] for _ in range(12)]
    for order_id in ids:
        try:
            outcomes.append(client.cancel(order_id).status_code)
        except requests.ConnectionError:
            outcomes.append("dropped")
    handle.admin.configure(error_rate=0.0, timeout_rate=0.0, malformed_rate=0.0)
    for order_id in ids:
        view = handle.admin.order(order_id)["order"]
        if view["status"] != "RAISED":
            view = final_status(client, order_id)
        outcomes.append((order_id, view["status"], view["exec_quantity"]))
    return outcomes


def test_same_seed_same_outcomes(make_sandbox: MakeSandbox) -> None:
    """Two sandboxes with the same seed give identical ids, fault codes and race results."""
    first = random_run(make_sandbox, seed=11)
    second = random_run(make_sandbox, seed=11)
    assert first == second
    codes = set(first[:12])
    assert 200 in codes and codes - {200}  # the mix really contains faults
    other = random_run(make_sandbox, seed=12)
    assert other != first


def test_reset_replays_the_seeded_sequence(sandbox: SandboxHandle) -> None:
    """After reset the order ids repeat, because every random stream is re-seeded."""
    before = [sandbox.admin.create_order()["order_id"] for _ in range(3)]
    sandbox.admin.reset()
    assert [sandbox.admin.create_order()["order_id"] for _ in range(3)] == before


def test_latency_knob_delays_every_response(make_sandbox: MakeSandbox) -> None:
    """latency_ms is added to every exchange response, but not to admin calls: an exchange
    call takes >= 150 ms (a lower bound, which load cannot break) and an admin call < 150 ms,
    slack for one loopback request on a loaded 2-core machine."""
    handle = make_sandbox(latency_ms=150)
    client = client_for(handle)
    started = time.monotonic()
    handle.admin.stats()
    assert time.monotonic() - started < 0.15
    started = time.monotonic()
    client.status("x")
    assert time.monotonic() - started >= 0.15


def test_latency_jitter_delays_arrivals_by_a_seeded_0_to_j(make_sandbox: MakeSandbox) -> None:
    """latency_jitter_ms delays each request 0..J ms before the rate limiter stamps it,
    varying from request to request; the same seed draws the same delays. Each is stamped
    -2 to 120 + 15 ms after its send: 15 ms for signing and one loopback hop, thin slack on
    a loaded 2-core machine."""
    handle = make_sandbox(latency_jitter_ms=120, seed=5)
    client = client_for(handle)
    lateness = []
    for _ in range(12):
        sent = time.time() * 1000
        client.status("x")
        arrived = handle.admin.stats()["endpoints"]["status"]["arrivals_ms"][-1]
        lateness.append(arrived - sent)
    assert all(-2 <= late <= 120 + 15 for late in lateness), lateness
    assert max(lateness) - min(lateness) > 40  # it varies, like a network
    twin = make_sandbox(latency_jitter_ms=120, seed=5).app
    first = make_sandbox(latency_jitter_ms=120, seed=5).app
    draws = [first.network_delay_ms(first.config) for _ in range(5)]
    assert draws == [twin.network_delay_ms(twin.config) for _ in range(5)]
    assert all(0 <= d <= 120 for d in draws)


def test_fault_targeted_at_an_order_skips_other_orders(
    sandbox: SandboxHandle, client: CoinSwitchClient
) -> None:
    """A fault injected with order_id is consumed only by a request naming that order."""
    target = sandbox.admin.create_order()["order_id"]
    other = sandbox.admin.create_order()["order_id"]
    sandbox.admin.inject("cancel", "error_not_applied", order_id=target)
    assert client.cancel(other).status_code == 200
    assert client.cancel(target).status_code == 503
    assert client.cancel(target).status_code == 200


def test_fault_targeted_at_a_client_order_id(
    sandbox: SandboxHandle, client: CoinSwitchClient
) -> None:
    """A place fault injected with client_order_id hits only the placement with that id."""
    sandbox.admin.inject("place", "error_applied", client_order_id="mine")
    body = {"symbol": "DOGEUSDT", "side": "BUY", "order_type": "LIMIT", "quantity": 1, "price": 1}
    assert client.place(**body, client_order_id="theirs").status_code == 200
    assert client.place(**body, client_order_id="mine").status_code == 503
    assert sandbox.admin.stats()["orders"]["RAISED"] == 2
