"""Fixtures for sandbox tests: a fresh in-process sandbox per test, and a signing client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any, TypeVar

import pytest

from tests.coinswitch_client import CoinSwitchClient
from tests.support import wait_for
from worker.sandbox import SandboxConfig, SandboxHandle, run_sandbox

T = TypeVar("T")

# Generous limits so tests that are not about rate limiting never meet them.
FAST: dict[str, Any] = {
    "confirm_delay_ms": 100,
    "cancel_limit": "1000/1s",
    "status_limit": "1000/1s",
    "place_limit": "1000/1s",
    "cancel_all_limit": "1000/1s",
    "list_limit": "1000/1s",
}

MakeSandbox = Callable[..., SandboxHandle]


@pytest.fixture
def make_sandbox() -> Iterator[MakeSandbox]:
    """Start sandboxes with FAST defaults overridden by keyword; all stop after the test."""
    with ExitStack() as stack:

        def make(api_keys: list[str] | None = None, **overrides: Any) -> SandboxHandle:
            config = SandboxConfig(**{**FAST, **overrides})
            return stack.enter_context(run_sandbox(config, api_keys=api_keys))

        yield make


@pytest.fixture
def sandbox(make_sandbox: MakeSandbox) -> SandboxHandle:
    """A sandbox with a generated key pair and fast, generous settings."""
    return make_sandbox()


@pytest.fixture
def client(sandbox: SandboxHandle) -> CoinSwitchClient:
    """The independent client, holding the sandbox's generated keys."""
    return CoinSwitchClient(sandbox.url, sandbox.api_key, sandbox.secret_key)


def client_for(handle: SandboxHandle) -> CoinSwitchClient:
    """A client for a sandbox made with make_sandbox()."""
    return CoinSwitchClient(handle.url, handle.api_key, handle.secret_key)


def final_status(client: CoinSwitchClient, order_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """Poll Get Order Status until a terminal status; return the order."""

    def check() -> dict[str, Any] | None:
        response = client.status(order_id)
        assert response.status_code == 200, response.text
        order: dict[str, Any] = response.json()["data"]["order"]
        done = order["status"] in ("CANCELLED", "EXECUTED", "PARTIALLY_EXECUTED")
        return order if done else None

    return wait_for(check, timeout_s)
