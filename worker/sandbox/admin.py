"""A small HTTP client for the unsigned `/_sandbox/` admin endpoints.

Tests and benchmarks drive the sandbox over HTTP like any other client would, so the same
calls work against a sandbox in another process. Methods return the `data` part.
"""

from __future__ import annotations

from typing import Any, Final

import requests

ADMIN_TIMEOUT_S: Final = 10.0


class AdminClient:
    """Calls `/_sandbox/...`; raises requests.HTTPError on any non-2xx answer."""

    def __init__(self, base_url: str, session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session or requests.Session()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._session.request(
            method, f"{self.base_url}/_sandbox/{path}", json=body, timeout=ADMIN_TIMEOUT_S
        )
        response.raise_for_status()
        payload = response.json()
        return payload["data"] if isinstance(payload, dict) and "data" in payload else payload

    def close(self) -> None:
        """Release pooled connections."""
        self._session.close()

    def health(self) -> dict[str, Any]:
        """`{"status": "ok"}` when the server answers."""
        result: dict[str, Any] = self._call("GET", "health")
        return result

    def create_order(self, **fields: Any) -> dict[str, Any]:
        """Create an order in any state (see POST /_sandbox/orders); returns the order."""
        result: dict[str, Any] = self._call("POST", "orders", fields)
        return result

    def order(self, order_id: str) -> dict[str, Any]:
        """The order plus counters: cancel_requests, cancel_accepted, status_requests, history."""
        result: dict[str, Any] = self._call("GET", f"orders/{order_id}")
        return result

    def fill(self, order_id: str, quantity: str | None = None) -> dict[str, Any]:
        """Fill an open order now, fully or by `quantity`; returns the order."""
        body = {} if quantity is None else {"quantity": quantity}
        result: dict[str, Any] = self._call("POST", f"orders/{order_id}/fill", body)
        return result

    def inject(self, endpoint: str, kind: str, count: int = 1, **extra: Any) -> dict[str, Any]:
        """Queue one-shot faults for the next matching signed requests.

        `extra` may hold `status` (error kinds), `latency_ms` (latency), and `order_id` or
        `client_order_id` so that only a request naming that order consumes the fault.
        """
        body = {"endpoint": endpoint, "kind": kind, "count": count, **extra}
        result: dict[str, Any] = self._call("POST", "faults", body)
        return result

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change runtime knobs; returns the new effective config."""
        result: dict[str, Any] = self._call("POST", "config", knobs)
        return result

    def config(self) -> dict[str, Any]:
        """The current effective config."""
        result: dict[str, Any] = self._call("GET", "config")
        return result

    def stats(self) -> dict[str, Any]:
        """Per-endpoint counters and order counts per status."""
        result: dict[str, Any] = self._call("GET", "stats")
        return result

    def reset(self) -> dict[str, Any]:
        """Clear orders, counters, faults and rate windows (keys and config stay)."""
        result: dict[str, Any] = self._call("POST", "reset")
        return result
