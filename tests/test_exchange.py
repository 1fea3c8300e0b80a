"""ExchangeClient over real HTTP to the sandbox: every answer mapped to a result or an error."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import requests

from worker.errors import AuthError, OrderNotFound, OutcomeUnknown, RateLimited, Refused
from worker.exchange import ExchangeClient
from worker.sandbox import SandboxConfig, SandboxHandle, run_sandbox
from worker.signing import Signer


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxHandle]:
    """A private sandbox with a short timeout fault, for this module only."""
    config = SandboxConfig(
        timeout_ms=800, confirm_delay_ms=50, cancel_limit="1000/1s", status_limit="1000/1s"
    )
    with run_sandbox(config) as handle:
        yield handle


@pytest.fixture
def client(sandbox: SandboxHandle) -> ExchangeClient:
    """A client with a read timeout shorter than the sandbox's timeout fault."""
    assert sandbox.secret_key is not None
    signer = Signer(sandbox.api_key, sandbox.secret_key)
    return ExchangeClient(requests.Session(), sandbox.url, signer, timeout_s=(1.0, 0.4))


def open_order(sandbox: SandboxHandle, **fields: str) -> str:
    order = {"symbol": "dogeusdt", "side": "buy", "order_type": "limit", "quantity": "22"}
    return str(sandbox.admin.create_order(**order, price="0.28", **fields)["order_id"])


def test_cancel_returns_normalised_order(sandbox: SandboxHandle, client: ExchangeClient) -> None:
    """A cancel's avg_exec_price/exec_fee come back as avg_execution_price/execution_fee."""
    order = client.cancel_order(open_order(sandbox), "EXCHANGE_2")
    assert order["status"] == "CANCELLATION_RAISED"
    assert "avg_execution_price" in order and "execution_fee" in order
    assert "avg_exec_price" not in order and "exec_fee" not in order


def test_status_unwraps_data_order(sandbox: SandboxHandle, client: ExchangeClient) -> None:
    """Get Order Status returns the order from data.order."""
    order_id = open_order(sandbox)
    assert client.get_order(order_id)["order_id"] == order_id


@pytest.mark.parametrize(
    ("endpoint", "kind", "error"),
    [
        ("cancel", "unauthorized", AuthError),
        ("cancel", "rate_limited", RateLimited),
        ("cancel", "error_applied", OutcomeUnknown),
        ("cancel", "error_not_applied", OutcomeUnknown),
        ("cancel", "malformed", OutcomeUnknown),
        ("cancel", "timeout_applied", OutcomeUnknown),
        ("status", "unauthorized", AuthError),
        ("status", "error_not_applied", OutcomeUnknown),
    ],
)
def test_faults_map_to_errors(
    sandbox: SandboxHandle, client: ExchangeClient, endpoint: str, kind: str, error: type
) -> None:
    """401, 429, 5xx, bad JSON and timeouts raise the error the caller must act on."""
    order_id = open_order(sandbox)
    sandbox.admin.inject(endpoint, kind, order_id=order_id)
    with pytest.raises(error) as info:
        if endpoint == "cancel":
            client.cancel_order(order_id, "EXCHANGE_2")
        else:
            client.get_order(order_id)
    assert info.value.order_id == order_id


def test_refused_cancel_and_unknown_order(sandbox: SandboxHandle, client: ExchangeClient) -> None:
    """A cancel of a filled order is Refused; an unknown id is OrderNotFound on both calls."""
    with pytest.raises(Refused) as refused:
        client.cancel_order(open_order(sandbox, status="EXECUTED"), "EXCHANGE_2")
    assert refused.value.status_code == 400
    unknown = str(uuid.uuid4())
    with pytest.raises(OrderNotFound):
        client.get_order(unknown)
    with pytest.raises(OrderNotFound):
        client.cancel_order(unknown, "EXCHANGE_2")


@pytest.mark.parametrize("body", ['{"data": {"status": 7}}', '{"data": []}', "[1, 2]"])
def test_odd_shapes_are_unknown_outcomes(
    sandbox: SandboxHandle, client: ExchangeClient, body: str
) -> None:
    """A 200 without an order carrying a status string is an unknown outcome, not a crash."""
    order_id = open_order(sandbox)
    sandbox.admin.inject("cancel", "body", status=200, body=body, order_id=order_id)
    with pytest.raises(OutcomeUnknown):
        client.cancel_order(order_id, "EXCHANGE_2")
