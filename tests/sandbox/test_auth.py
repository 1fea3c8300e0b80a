"""Ed25519 verification: exactly METHOD + unquote_plus(path?query as sent) + epoch."""

from __future__ import annotations

import time

import pytest
import requests

from tests.coinswitch_client import OMIT, ORDER_PATH, CoinSwitchClient
from tests.sandbox.conftest import MakeSandbox, client_for
from worker.sandbox import SandboxHandle, generate_keypair

INVALID = {"message": "Invalid Access"}
TWO_MINUTES_MS = 120_000


def now_ms() -> int:
    """Unix time in ms."""
    return time.time_ns() // 1_000_000


def test_valid_signature_is_accepted(client: CoinSwitchClient) -> None:
    """A correctly signed request passes auth (here: 422 from validation, not 401)."""
    assert client.request("GET", ORDER_PATH).status_code == 422


def test_wrong_signature_is_401(client: CoinSwitchClient) -> None:
    """A signature made with another secret is 401 Invalid Access."""
    _, other_secret = generate_keypair()
    response = client.request("GET", ORDER_PATH, params={"order_id": "x"}, secret=other_secret)
    assert (response.status_code, response.json()) == (401, INVALID)


def test_unknown_api_key_is_401(client: CoinSwitchClient) -> None:
    """A key pair the sandbox was not configured with is 401, even if self-consistent."""
    public, secret = generate_keypair()
    response = client.request("GET", ORDER_PATH, api_key=public, secret=secret)
    assert (response.status_code, response.json()) == (401, INVALID)


@pytest.mark.parametrize("offset_ms", [-TWO_MINUTES_MS, TWO_MINUTES_MS])
def test_epoch_two_minutes_off_is_401(client: CoinSwitchClient, offset_ms: int) -> None:
    """An epoch two minutes in the past or the future is 401 (drift limit 60 s)."""
    response = client.request("GET", ORDER_PATH, epoch=now_ms() + offset_ms)
    assert (response.status_code, response.json()) == (401, INVALID)


def test_epoch_within_drift_is_accepted(client: CoinSwitchClient) -> None:
    """An epoch 50 s old is still inside the 60 s window."""
    assert client.request("GET", ORDER_PATH, epoch=now_ms() - 50_000).status_code == 422


@pytest.mark.parametrize("bad", ["abc", "-5", "1.5e12"])
def test_non_integer_epoch_is_401(client: CoinSwitchClient, bad: str) -> None:
    """An epoch that is not a decimal integer string is 401."""
    assert client.request("GET", ORDER_PATH, epoch=bad).status_code == 401


def test_non_hex_signature_is_401(sandbox: SandboxHandle) -> None:
    """A signature header that is not hex is 401, not a crash."""
    headers = {
        "X-AUTH-APIKEY": sandbox.api_key,
        "X-AUTH-SIGNATURE": "zz-not-hex",
        "X-AUTH-EPOCH": str(now_ms()),
    }
    response = requests.get(f"{sandbox.url}{ORDER_PATH}?order_id=x", headers=headers, timeout=5)
    assert (response.status_code, response.json()) == (401, INVALID)


def test_missing_headers_are_401(sandbox: SandboxHandle) -> None:
    """No auth headers at all is 401."""
    response = requests.get(f"{sandbox.url}{ORDER_PATH}?order_id=x", timeout=5)
    assert (response.status_code, response.json()) == (401, INVALID)


@pytest.mark.parametrize("code", [401, 400])
def test_missing_epoch_status_is_configurable(make_sandbox: MakeSandbox, code: int) -> None:
    """A request without X-AUTH-EPOCH gets missing_epoch_status (default 401)."""
    handle = make_sandbox(missing_epoch_status=code)
    response = client_for(handle).request("GET", ORDER_PATH, epoch=OMIT)
    assert response.status_code == code
    assert "message" in response.json()


def test_query_signed_in_sent_order_verifies_sorted_or_not(client: CoinSwitchClient) -> None:
    """Both Go-style sorted and Python-style unsorted queries verify when signed as sent."""
    unsorted = [("order_id", "x1"), ("exchange", "EXCHANGE_2")]
    sorted_params = sorted(unsorted)
    assert client.request("GET", ORDER_PATH, params=unsorted).status_code == 404
    assert client.request("GET", ORDER_PATH, params=sorted_params).status_code == 404


def test_signature_over_other_query_order_is_401(client: CoinSwitchClient) -> None:
    """Signing the params sorted but sending them unsorted is 401: no canonicalisation."""
    sent = [("order_id", "x1"), ("exchange", "EXCHANGE_2")]
    signed = f"{ORDER_PATH}?exchange=EXCHANGE_2&order_id=x1"
    response = client.request("GET", ORDER_PATH, params=sent, sign_path=signed)
    assert (response.status_code, response.json()) == (401, INVALID)


def test_query_is_verified_url_decoded(client: CoinSwitchClient) -> None:
    """The signed string is the URL-decoded query: '+' as space and %2C as a comma."""
    params = [("order_id", "a b,c")]  # urlencode sends order_id=a+b%2Cc
    response = client.request("GET", ORDER_PATH, params=params)
    assert response.status_code == 404  # verified; the id just does not exist
    raw = client.request(
        "GET", ORDER_PATH, params=params, sign_path=f"{ORDER_PATH}?order_id=a+b%2Cc"
    )
    assert raw.status_code == 404  # client decodes sign_path too: identical message


def test_body_is_not_signed(client: CoinSwitchClient) -> None:
    """The body is outside the signature: any body verifies with the bare-path signature."""
    response = client.request(
        "DELETE", ORDER_PATH, body={"exchange": "EXCHANGE_2", "order_id": "whatever"}
    )
    assert response.status_code == 404


def test_signature_for_other_method_is_401(client: CoinSwitchClient) -> None:
    """A signature made for GET does not verify a DELETE to the same path."""
    epoch = now_ms()
    get_sig = CoinSwitchClient(client.base_url, client.api_key, client.secret_key)
    good = get_sig.request("GET", ORDER_PATH, epoch=epoch)
    assert good.status_code == 422
    headers = dict(good.request.headers)
    response = requests.delete(
        f"{client.base_url}{ORDER_PATH}",
        json={"exchange": "EXCHANGE_2", "order_id": "x"},
        headers={k: v for k, v in headers.items() if k.startswith("X-AUTH")},
        timeout=5,
    )
    assert response.status_code == 401
