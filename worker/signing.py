"""Ed25519 request signing as CoinSwitch PRO documents it (docs/exchange.md, Signing).

The signed message is METHOD + URL-decoded path?query + epoch, with no body: the query is
signed in exactly the order it is sent.
"""

from __future__ import annotations

import time
from urllib.parse import unquote_plus

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def signing_message(method: str, path_with_query: str, epoch_ms: str) -> bytes:
    """The bytes the exchange verifies: METHOD + unquote_plus(path?query) + epoch."""
    return (method.upper() + unquote_plus(path_with_query) + epoch_ms).encode()


class Signer:
    """Holds the private key and produces the auth headers; never shows the key."""

    def __init__(self, api_key: str, secret_key_hex: str) -> None:
        self.api_key = api_key
        self._key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret_key_hex))

    def __repr__(self) -> str:
        return f"Signer(api_key={self.api_key[:8]}...)"

    def sign(self, method: str, path_with_query: str, epoch_ms: str) -> str:
        """Hex signature of one request."""
        return self._key.sign(signing_message(method, path_with_query, epoch_ms)).hex()

    def headers(
        self, method: str, path_with_query: str, epoch_ms: str | None = None
    ) -> dict[str, str]:
        """The headers of one authenticated request, epoch from this host's clock."""
        epoch = epoch_ms if epoch_ms is not None else str(time.time_ns() // 1_000_000)
        return {
            "Content-Type": "application/json",
            "X-AUTH-APIKEY": self.api_key,
            "X-AUTH-SIGNATURE": self.sign(method, path_with_query, epoch),
            "X-AUTH-EPOCH": epoch,
        }
