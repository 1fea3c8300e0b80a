"""The one exception tree of cancel-worker, split by what the caller must do.

CancelWorkerError
├── ConfigError            a setting is missing or malformed; fix the environment
├── InvalidRequest         bad input to request_cancel / the CLI; nothing was enqueued
├── BrokerUnavailable      Redis did not answer; the request was not recorded: send it again
└── ExchangeError          the exchange answered (or failed to) in a way the caller must handle
    ├── OutcomeUnknown     5xx, timeout, malformed body: the operation may have happened
    ├── RateLimited        429: the budget is spent; pause the bucket and retry later
    ├── AuthError          401/403: bad key, signature or clock; retrying will not help
    ├── OrderNotFound      the exchange does not know the order id
    └── Refused            any other 4xx: the exchange refused the operation
"""

from __future__ import annotations


class CancelWorkerError(Exception):
    """Raised for every failure cancel-worker reports; catch this to catch them all."""


class ConfigError(CancelWorkerError):
    """Raised when an environment variable is missing or malformed."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


class InvalidRequest(CancelWorkerError, ValueError):
    """Raised when a cancel request has a bad field; nothing is written or enqueued."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"invalid {field} {shown}: {reason}")
        self.field = field
        self.value = value


class BrokerUnavailable(CancelWorkerError):
    """Raised when Redis cannot be reached to store or enqueue a request.

    Its records are removed, so requesting it again enqueues it; a message that did reach
    Redis before the failure is de-duplicated by the worker.
    """


class ExchangeError(CancelWorkerError):
    """Raised when an exchange call did not return a usable order."""

    def __init__(
        self,
        message: str,
        *,
        order_id: str | None = None,
        status_code: int | None = None,
        endpoint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.order_id = order_id
        self.status_code = status_code
        self.endpoint = endpoint


class OutcomeUnknown(ExchangeError):
    """Raised on 5xx, timeout, connection loss or a malformed body: it may have taken effect."""


class RateLimited(ExchangeError):
    """Raised on 429: the exchange's budget for this endpoint is spent."""


class AuthError(ExchangeError):
    """Raised on 401/403: the key, signature or clock is wrong; retrying cannot help."""


class OrderNotFound(ExchangeError):
    """Raised when the exchange does not know the order id."""


class Refused(ExchangeError):
    """Raised on any other 4xx: the exchange refused (already final, mid-cancel, ...)."""
