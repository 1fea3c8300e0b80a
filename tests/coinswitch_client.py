"""A minimal CoinSwitch PRO futures client, written only from docs/exchange.md, to test the
sandbox.

Deliberately independent of `worker/`: if the sandbox and the worker shared a signing bug,
tests through this client would still catch it. Every knob that a test may want to get
wrong on purpose (epoch, signed path, secret, key) can be overridden per request.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import unquote_plus, urlencode

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

FUTURES: Final = "/trade/api/v2/futures"
ORDER_PATH: Final = f"{FUTURES}/order"
DEFAULT_TIMEOUT_S: Final = 10.0
OMIT: Final = "<omit>"  # pass as epoch to send no X-AUTH-EPOCH header


class CoinSwitchClient:
    """Signs METHOD + unquote_plus(path?query) + epoch with Ed25519; the body is not signed."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        secret_key: str | None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.secret_key = secret_key
        self.timeout = timeout
        self.session = requests.Session()

    def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        body: Any = None,
        epoch: str | int | None = None,
        sign_path: str | None = None,
        secret: str | None = None,
        api_key: str | None = None,
    ) -> requests.Response:
        """Send one signed request; params are encoded in the order given."""
        sent_path = path
        if params:
            sent_path += ("&" if "?" in path else "?") + urlencode(params)
        epoch_text = str(time.time_ns() // 1_000_000) if epoch is None else str(epoch)
        message = method.upper() + unquote_plus(sign_path or sent_path) + epoch_text
        seed = secret or self.secret_key
        assert seed is not None, "no secret key to sign with"
        signature = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed)).sign(message.encode())
        headers = {
            "Content-Type": "application/json",
            "X-AUTH-APIKEY": api_key or self.api_key,
            "X-AUTH-SIGNATURE": signature.hex(),
        }
        if epoch_text != OMIT:
            headers["X-AUTH-EPOCH"] = epoch_text
        return self.session.request(
            method.upper(),
            self.base_url + sent_path,
            json=body,
            headers=headers,
            timeout=self.timeout,
        )

    def place(self, **fields: Any) -> requests.Response:
        """POST /futures/order with exchange EXCHANGE_2 unless given."""
        return self.request("POST", ORDER_PATH, body={"exchange": "EXCHANGE_2", **fields})

    def cancel(self, order_id: str, exchange: str = "EXCHANGE_2") -> requests.Response:
        """DELETE /futures/order with a JSON body."""
        return self.request("DELETE", ORDER_PATH, body={"exchange": exchange, "order_id": order_id})

    def status(self, order_id: str) -> requests.Response:
        """GET /futures/order?order_id=..."""
        return self.request("GET", ORDER_PATH, params={"order_id": order_id})

    def cancel_all(self, **fields: Any) -> requests.Response:
        """POST /futures/cancel_all."""
        return self.request(
            "POST", f"{FUTURES}/cancel_all", body={"exchange": "EXCHANGE_2", **fields}
        )

    def open_orders(self, **fields: Any) -> requests.Response:
        """POST /futures/orders/open."""
        return self.request(
            "POST", f"{FUTURES}/orders/open", body={"exchange": "EXCHANGE_2", **fields}
        )

    def closed_orders(self, **fields: Any) -> requests.Response:
        """POST /futures/orders/closed."""
        return self.request(
            "POST", f"{FUTURES}/orders/closed", body={"exchange": "EXCHANGE_2", **fields}
        )
