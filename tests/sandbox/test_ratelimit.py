"""Strict sliding-window limits per (API key, method, path), and the stats that prove them."""

from __future__ import annotations

import time

from tests.coinswitch_client import CoinSwitchClient
from tests.sandbox.conftest import MakeSandbox, client_for
from worker.sandbox import generate_keypair


def test_eleventh_delete_in_window_is_429(make_sandbox: MakeSandbox) -> None:
    """Of 11 DELETEs inside a 10/2s window exactly one (the last) is 429, with a message.
    They must go within 2 s: 11 loopback requests need a small part of it, the rest is slack
    for a loaded 2-core machine."""
    handle = make_sandbox(cancel_limit="10/2s")
    client = client_for(handle)
    ids = [handle.admin.create_order()["order_id"] for _ in range(11)]
    started = time.monotonic()
    codes = [client.cancel(order_id).status_code for order_id in ids]
    assert time.monotonic() - started < 2.0
    assert codes == [200] * 10 + [429]
    last = client.cancel(ids[-1])
    assert last.status_code == 429
    assert last.json() == {"message": "Too many requests"}
    assert "Retry-After" not in last.headers
    stats = handle.admin.stats()["endpoints"]["cancel"]
    assert (stats["requests"], stats["rate_limited"], stats["max_in_window"]) == (12, 2, 12)
    assert (stats["limit"], stats["period_ms"], stats["method"]) == (10, 2000, "DELETE")
    assert len(stats["arrivals_ms"]) == 12


def test_window_slides(make_sandbox: MakeSandbox) -> None:
    """After the oldest admitted request leaves the window, one more is admitted. The first
    three must go within the 300 ms window: three loopback requests need a small part of it,
    the rest is slack for a loaded 2-core machine (the sleep only has to outlast it)."""
    handle = make_sandbox(status_limit="2/300ms")
    client = client_for(handle)
    codes = [client.status("x").status_code for _ in range(3)]
    assert codes == [404, 404, 429]
    time.sleep(0.35)  # the window itself is the condition
    assert client.status("x").status_code == 404


def test_limits_are_per_method(make_sandbox: MakeSandbox) -> None:
    """DELETE and GET on the same path have separate buckets."""
    handle = make_sandbox(cancel_limit="1/10s", status_limit="1/10s")
    client = client_for(handle)
    assert client.cancel("x").status_code == 404
    assert client.cancel("x").status_code == 429
    assert client.status("x").status_code == 404
    assert client.status("x").status_code == 429


def test_limits_are_per_key_or_per_ip(make_sandbox: MakeSandbox) -> None:
    """rate_scope=key gives each key its own bucket; rate_scope=ip shares one per client IP."""
    pairs = [generate_keypair(), generate_keypair()]
    for scope, second_code in (("key", 404), ("ip", 429)):
        handle = make_sandbox(
            api_keys=[p for p, _ in pairs], status_limit="1/10s", rate_scope=scope
        )
        a, b = (CoinSwitchClient(handle.url, p, s) for p, s in pairs)
        assert a.status("x").status_code == 404
        assert b.status("x").status_code == second_code


def test_unauthorized_requests_do_not_spend_budget(make_sandbox: MakeSandbox) -> None:
    """401s are counted as arrivals but do not use up the rate limit."""
    handle = make_sandbox(status_limit="1/10s")
    client = client_for(handle)
    for _ in range(3):
        assert client.request("GET", "/trade/api/v2/futures/order", epoch=1).status_code == 401
    assert client.status("x").status_code == 404
    stats = handle.admin.stats()["endpoints"]["status"]
    assert (stats["requests"], stats["unauthorized"], stats["max_in_window"]) == (4, 3, 4)


def test_stats_count_each_key_on_its_own(make_sandbox: MakeSandbox) -> None:
    """by_key gives each API key its own arrivals, busiest window and 429s."""
    pairs = [generate_keypair(), generate_keypair()]
    handle = make_sandbox(api_keys=[p for p, _ in pairs], status_limit="2/10s")
    a, b = (CoinSwitchClient(handle.url, p, s) for p, s in pairs)
    for _ in range(3):
        a.status("x")
    b.status("x")
    by_key = handle.admin.stats()["endpoints"]["status"]["by_key"]
    mine, theirs = by_key[pairs[0][0][:8]], by_key[pairs[1][0][:8]]
    assert (len(mine["arrivals_ms"]), mine["max_in_window"], mine["rate_limited"]) == (3, 3, 1)
    assert (len(theirs["arrivals_ms"]), theirs["max_in_window"], theirs["rate_limited"]) == (
        1,
        1,
        0,
    )
