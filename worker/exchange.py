"""The exchange calls the worker makes, with every answer mapped to a result or an error.

Mapping (docs/exchange.md, "What each answer means here"): 200 → a normalised order (or
ids, or a page of orders); 401/403 → AuthError; 429 → RateLimited; another 4xx →
OrderNotFound (status, or a 404 on cancel) or Refused; 5xx, timeout, connection loss or a
malformed body → OutcomeUnknown, since the operation may have happened.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import requests
import structlog

from worker.errors import (
    AuthError,
    ExchangeError,
    OrderNotFound,
    OutcomeUnknown,
    RateLimited,
    Refused,
)
from worker.models import normalise_order
from worker.settings import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_READ_TIMEOUT_S
from worker.signing import Signer

ORDER_PATH = "/trade/api/v2/futures/order"
CANCEL_ALL_PATH = "/trade/api/v2/futures/cancel_all"
OPEN_ORDERS_PATH = "/trade/api/v2/futures/orders/open"
CLOSED_ORDERS_PATH = "/trade/api/v2/futures/orders/closed"
#: Most orders one list call returns (docs/exchange.md, Endpoints and envelopes).
LIST_LIMIT = 50
LIST_WINDOW_MS = 7 * 24 * 3600 * 1000  # widest from_time..to_time a list call accepts
DEFAULT_TIMEOUT_S = (DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_READ_TIMEOUT_S)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class OrderPage:
    """One page of the open or closed order list: newest first, and where the next begins."""

    orders: list[dict[str, Any]]
    cursor: int | None  # created_at of the oldest order on the page: the next page's to_time


class ExchangeClient:
    """CoinSwitch PRO futures: cancel an order and read its status over one pooled session."""

    def __init__(
        self,
        session: requests.Session,
        base_url: str,
        signer: Signer,
        *,
        timeout_s: tuple[float, float] = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.signer = signer
        self.timeout_s = timeout_s

    def cancel_order(self, order_id: str, exchange: str) -> dict[str, Any]:
        """Send `DELETE /futures/order`; return the order (usually CANCELLATION_RAISED)."""
        body = {"exchange": exchange, "order_id": order_id}
        body_in = self._request("DELETE", ORDER_PATH, "cancel", order_id, body=body)
        return _order_at(body_in, "data", order_id=order_id, endpoint="cancel")

    def get_order(self, order_id: str) -> dict[str, Any]:
        """Send `GET /futures/order?order_id=`; return the normalised order."""
        path = f"{ORDER_PATH}?{urlencode({'order_id': order_id})}"
        body_in = self._request("GET", path, "status", order_id)
        return _order_at(body_in, "data", "order", order_id=order_id, endpoint="status")

    def cancel_all(self, exchange: str, symbol: str | None) -> list[str]:
        """Send `POST /futures/cancel_all` (one symbol, or the whole account); return the ids
        of the orders the exchange sent for cancellation."""
        body = {"exchange": exchange, **({"symbol": symbol} if symbol else {})}
        body_in = self._request("POST", CANCEL_ALL_PATH, "cancel_all", None, body=body)
        ids = (
            body_in.get("data", {}).get("orders_ids")
            if isinstance(body_in.get("data"), dict)
            else None
        )
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise OutcomeUnknown(
                "cancel_all: unexpected response shape (no list at data.orders_ids)",
                endpoint="cancel_all",
                status_code=200,
            )
        return [order_id.lower() for order_id in ids]

    def list_orders(
        self,
        *,
        closed: bool,
        exchange: str,
        symbol: str | None = None,
        from_time: int | None = None,
        to_time: int | None = None,
        limit: int = LIST_LIMIT,
    ) -> OrderPage:
        """Send `POST /futures/orders/open` or `/closed`: newest first, created in the window."""
        endpoint = "closed_orders" if closed else "open_orders"
        body: dict[str, Any] = {"exchange": exchange, "limit": limit}
        for name, value in (("symbol", symbol), ("from_time", from_time), ("to_time", to_time)):
            if value is not None:
                body[name] = value
        path = CLOSED_ORDERS_PATH if closed else OPEN_ORDERS_PATH
        body_in = self._request("POST", path, endpoint, None, body=body)
        data = body_in.get("data")
        orders = data.get("orders") if isinstance(data, dict) else None
        cursor = data.get("cursor") if isinstance(data, dict) else None
        valid = isinstance(orders, list) and all(
            isinstance(o, dict)
            and isinstance(o.get("order_id"), str)
            and isinstance(o.get("status"), str)
            for o in orders
        )
        if not valid or not (cursor is None or isinstance(cursor, int)):
            raise OutcomeUnknown(
                f"{endpoint}: unexpected response shape (no orders list at data.orders)",
                endpoint=endpoint,
                status_code=200,
            )
        assert isinstance(orders, list)
        return OrderPage([normalise_order(o) for o in orders], cursor)

    def _request(
        self,
        method: str,
        path: str,
        endpoint: str,
        order_id: str | None,
        *,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        context: dict[str, Any] = {"endpoint": endpoint}
        if order_id is not None:
            context["order_id"] = order_id
        try:
            response = self.session.request(
                method,
                self.base_url + path,
                headers=self.signer.headers(method, path),
                data=json.dumps(body) if body is not None else None,
                timeout=self.timeout_s,
            )
        except requests.RequestException as exc:
            latency_ms = round((time.perf_counter() - started) * 1000, 1)
            log.warning(
                "exchange.no_response", error=type(exc).__name__, latency_ms=latency_ms, **context
            )
            raise OutcomeUnknown(
                f"{endpoint}: no response ({type(exc).__name__})", **context
            ) from None
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        status = response.status_code
        log.info("exchange.response", http_status=status, latency_ms=latency_ms, **context)
        if status == 200:
            try:
                parsed = response.json()
            except ValueError:
                raise OutcomeUnknown(
                    f"{endpoint}: malformed JSON body", status_code=status, **context
                ) from None
            if not isinstance(parsed, dict):
                raise OutcomeUnknown(
                    f"{endpoint}: body is not an object", status_code=status, **context
                )
            return parsed
        message = _message(response)
        if status in (401, 403):
            raise AuthError(f"{endpoint}: {status} {message}", status_code=status, **context)
        if status == 429:
            raise RateLimited(f"{endpoint}: 429 {message}", status_code=status, **context)
        if 400 <= status < 500:
            kind: type[ExchangeError] = Refused
            if endpoint == "status" or (endpoint == "cancel" and status == 404):
                kind = OrderNotFound
            raise kind(f"{endpoint}: {status} {message}", status_code=status, **context)
        raise OutcomeUnknown(f"{endpoint}: {status} {message}", status_code=status, **context)


def _message(response: requests.Response) -> str:
    """The exchange's `message` field when there is one, else a short slice of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])[:200]
    return ""


def _order_at(body: dict[str, Any], *path: str, order_id: str, endpoint: str) -> dict[str, Any]:
    """The order object at `path` in the body; an unexpected shape is an unknown outcome."""
    value: Any = body
    for name in path:
        value = value.get(name) if isinstance(value, dict) else None
    if not isinstance(value, dict) or not isinstance(value.get("status"), str):
        where = ".".join(path)
        raise OutcomeUnknown(
            f"{endpoint}: unexpected response shape (no order with a status at {where})",
            order_id=order_id,
            endpoint=endpoint,
            status_code=200,
        )
    return normalise_order(value)
