"""Ed25519 request verification, as the exchange does it (docs/exchange.md, Signing).

The message is METHOD + unquote_plus(path?query as received) + epoch; the body is not signed
and the query is never re-ordered, so a client must sign what it sends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_plus, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

INVALID_ACCESS: Final = "Invalid Access"  # the 401 text the exchange is reported to use
KEY_BYTES: Final = 32


class AuthError(Exception):
    """Raised when a request fails verification; carries the HTTP status to answer."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason  # for logs only, never sent


@dataclass(frozen=True)
class AuthHeaders:
    """The three auth headers as received (None when absent)."""

    api_key: str | None
    signature: str | None
    epoch: str | None


def generate_keypair() -> tuple[str, str]:
    """A fresh Ed25519 pair as (public key hex, secret seed hex), as the exchange issues them."""
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    seed = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return public.hex(), seed.hex()


def public_key_from_hex(text: str) -> Ed25519PublicKey:
    """Load a hex public key; ValueError if it is not 32 bytes of valid hex."""
    raw = bytes.fromhex(text)
    if len(raw) != KEY_BYTES:
        raise ValueError(f"API key must be {KEY_BYTES} bytes of hex, got {len(raw)} bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def signed_message(method: str, request_target: str, epoch: str) -> bytes:
    """The bytes verified for one request: METHOD + unquote_plus(path?query) + epoch."""
    if request_target.startswith(("http://", "https://")):  # absolute-form request target
        parts = urlsplit(request_target)
        request_target = parts.path + (f"?{parts.query}" if parts.query else "")
    return (method.upper() + unquote_plus(request_target) + epoch).encode()


class Verifier:
    """Checks requests against the configured public keys (lower-case hex)."""

    def __init__(self, api_keys: Iterable[str]) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {
            key.lower(): public_key_from_hex(key) for key in api_keys
        }

    @property
    def api_keys(self) -> list[str]:
        """The accepted keys, in configuration order."""
        return list(self._keys)

    def verify(
        self,
        method: str,
        request_target: str,
        headers: AuthHeaders,
        now_ms: int,
        *,
        max_skew_ms: int,
        missing_epoch_status: int,
    ) -> str:
        """Return the verified API key or raise AuthError."""
        if not headers.api_key or not headers.signature:
            raise AuthError(401, INVALID_ACCESS, "missing key or signature header")
        public = self._keys.get(headers.api_key.lower())
        if public is None:
            raise AuthError(401, INVALID_ACCESS, "unknown api key")
        if headers.epoch is None or headers.epoch == "":
            message = INVALID_ACCESS if missing_epoch_status == 401 else "X-AUTH-EPOCH is missing"
            raise AuthError(missing_epoch_status, message, "missing epoch")
        if not headers.epoch.isdigit():
            raise AuthError(401, INVALID_ACCESS, "epoch is not an integer")
        if abs(now_ms - int(headers.epoch)) > max_skew_ms:
            raise AuthError(401, INVALID_ACCESS, "epoch skew too large")
        try:
            signature = bytes.fromhex(headers.signature)
            public.verify(signature, signed_message(method, request_target, headers.epoch))
        except (ValueError, InvalidSignature):
            raise AuthError(401, INVALID_ACCESS, "bad signature") from None
        return headers.api_key.lower()
