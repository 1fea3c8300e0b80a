"""Signing: the exact message CoinSwitch documents, verifiable with the public key."""

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from worker.signing import Signer, signing_message

SEED = "9f" * 32


def test_message_matches_documented_example() -> None:
    """GET /trade/api/v2/time at 1719905777483 signs 'GET/trade/api/v2/time1719905777483'."""
    assert signing_message("get", "/trade/api/v2/time", "1719905777483") == (
        b"GET/trade/api/v2/time1719905777483"
    )


def test_query_is_url_decoded_and_keeps_its_order() -> None:
    """The query is unquote_plus-decoded and signed in the order sent, not sorted."""
    message = signing_message("GET", "/p?b=x%2Cy&a=1+2", "5")
    assert message == b"GET/p?b=x,y&a=1 25"


def test_signature_verifies_with_the_api_key() -> None:
    """Headers carry the key, the epoch and a signature the public key verifies."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(SEED)).public_key()
    api_key = public.public_bytes_raw().hex()
    headers = Signer(api_key, SEED).headers(
        "DELETE", "/trade/api/v2/futures/order", "1700000000000"
    )
    assert headers["X-AUTH-APIKEY"] == api_key
    assert headers["X-AUTH-EPOCH"] == "1700000000000"
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(api_key)).verify(
        bytes.fromhex(headers["X-AUTH-SIGNATURE"]),
        b"DELETE/trade/api/v2/futures/order1700000000000",
    )


def test_signer_repr_hides_secret() -> None:
    """The signer never shows its private key."""
    assert SEED not in repr(Signer("ab" * 32, SEED))
