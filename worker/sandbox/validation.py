"""Request-body validation with the exchange's 422 texts, which name the field
(docs/exchange.md, Errors).

Bodies are parsed with `parse_float=Decimal`, so numbers keep the scale the client sent.
Numeric strings are accepted too (the docs say "number"; strings are not documented).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from worker.sandbox.orders import (
    EXCHANGE,
    ORDER_TYPES,
    SIDES,
    TERMINAL_STATUSES,
    TIME_IN_FORCE,
    TRIGGER_TYPES,
)

MAX_LIST_LIMIT: Final = 50
MAX_LIST_WINDOW_MS: Final = 7 * 24 * 3600 * 1000  # 7 days
_SYMBOL_RE: Final = re.compile(r"^[A-Z0-9]{1,20}USDT$")
MAX_ID_CHARS: Final = 128


class ValidationError(Exception):
    """Raised when a body field is missing or invalid; answered 422 with `message`."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def missing(name: str) -> ValidationError:
    """The exchange's text for an absent required field."""
    return ValidationError(f"Input {name} is missing")


def invalid(name: str) -> ValidationError:
    """The exchange's text for a present but unusable field."""
    return ValidationError(f"The value you provided for the field {name} is not valid")


def _present(body: dict[str, Any], name: str) -> bool:
    return body.get(name) is not None


def exchange_field(body: dict[str, Any]) -> str:
    """The required `exchange`, case-insensitive, which must be EXCHANGE_2."""
    if not _present(body, "exchange"):
        raise missing("exchange")
    value = body["exchange"]
    if not isinstance(value, str) or value.upper() != EXCHANGE:
        raise invalid("exchange")
    return EXCHANGE


def symbol_field(body: dict[str, Any], *, required: bool) -> str | None:
    """`symbol` upper-cased; quote is always USDT."""
    if not _present(body, "symbol"):
        if required:
            raise missing("symbol")
        return None
    value = body["symbol"]
    if not isinstance(value, str) or not _SYMBOL_RE.match(value.upper()):
        raise invalid("symbol")
    return value.upper()


def choice_field(body: dict[str, Any], name: str, choices: tuple[str, ...]) -> str | None:
    """A case-insensitive enum field, upper-cased; None when absent."""
    if not _present(body, name):
        return None
    value = body[name]
    if not isinstance(value, str) or value.upper() not in choices:
        raise invalid(name)
    return value.upper()


def decimal_field(body: dict[str, Any], name: str, *, positive: bool = False) -> Decimal | None:
    """A non-negative finite decimal (JSON number or numeric string); None when absent."""
    if not _present(body, name):
        return None
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise invalid(name)
    try:
        number = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        raise invalid(name) from None
    if not number.is_finite() or number < 0 or (positive and number == 0):
        raise invalid(name)
    return number


def int_field(body: dict[str, Any], name: str, *, minimum: int = 0) -> int | None:
    """A JSON integer >= minimum; None when absent."""
    if not _present(body, name):
        return None
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise invalid(name)
    return value


def id_field(body: dict[str, Any], name: str) -> str | None:
    """A non-empty id string; None when absent."""
    if not _present(body, name):
        return None
    value = body[name]
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID_CHARS:
        raise invalid(name)
    return value


@dataclass(frozen=True)
class PlaceRequest:
    """A validated Place Order body."""

    symbol: str
    side: str
    order_type: str
    quantity: Decimal
    price: Decimal
    trigger_price: Decimal | None
    reduce_only: bool
    time_in_force: str
    client_order_id: str | None


def parse_place(body: dict[str, Any]) -> PlaceRequest:
    """Validate a Place Order body (docs/exchange.md, Endpoints and envelopes), in field order."""
    exchange_field(body)
    symbol = symbol_field(body, required=True)
    side = choice_field(body, "side", SIDES)
    if side is None:
        raise missing("side")
    order_type = choice_field(body, "order_type", ORDER_TYPES)
    if order_type is None:
        raise missing("order_type")
    is_trigger = order_type in TRIGGER_TYPES
    price = decimal_field(body, "price", positive=True)
    if order_type == "LIMIT" and price is None:
        raise missing("price")
    quantity = decimal_field(body, "quantity")
    if quantity is None:
        raise missing("quantity")
    if (is_trigger and quantity != 0) or (not is_trigger and quantity == 0):
        raise invalid("quantity")
    trigger_price = decimal_field(body, "trigger_price", positive=True)
    if is_trigger and trigger_price is None:
        raise missing("trigger_price")
    reduce_only = body.get("reduce_only")
    if reduce_only is None:
        if is_trigger:
            raise missing("reduce_only")
        reduce_only = False
    if not isinstance(reduce_only, bool) or (is_trigger and not reduce_only):
        raise invalid("reduce_only")
    time_in_force = choice_field(body, "time_in_force", TIME_IN_FORCE) or "GTC"
    client_order_id = id_field(body, "client_order_id")
    assert symbol is not None  # required=True
    return PlaceRequest(
        symbol=symbol,
        side=side,
        order_type=order_type,
        quantity=quantity,
        price=price if price is not None else Decimal(0),
        trigger_price=trigger_price if is_trigger else None,
        reduce_only=reduce_only,
        time_in_force=time_in_force,
        client_order_id=client_order_id,
    )


def parse_cancel(body: dict[str, Any]) -> str:
    """Validate a Cancel Order body; returns the order id."""
    exchange_field(body)
    order_id = id_field(body, "order_id")
    if order_id is None:
        raise missing("order_id")
    return order_id


@dataclass(frozen=True)
class ListQuery:
    """A validated Open/Closed Orders body, with the time window resolved."""

    symbol: str | None
    limit: int
    from_time: int
    to_time: int
    status: str | None


def parse_list(body: dict[str, Any], *, closed: bool, now_ms: int) -> ListQuery:
    """Validate Open/Closed Orders; no bounds means the last 7 days (docs/exchange.md,
    Endpoints and envelopes)."""
    exchange_field(body)
    symbol = symbol_field(body, required=False)
    limit = int_field(body, "limit", minimum=1)
    if limit is not None and limit > MAX_LIST_LIMIT:
        raise invalid("limit")
    from_time = int_field(body, "from_time")
    to_time = int_field(body, "to_time")
    if from_time is None and to_time is None:
        to_time = now_ms
        from_time = now_ms - MAX_LIST_WINDOW_MS
    elif from_time is None:
        assert to_time is not None
        from_time = to_time - MAX_LIST_WINDOW_MS
    elif to_time is None:
        to_time = from_time + MAX_LIST_WINDOW_MS
    if to_time < from_time or to_time - from_time > MAX_LIST_WINDOW_MS:
        raise invalid("to_time")
    status = None
    if closed:
        status = choice_field(body, "status", tuple(sorted(TERMINAL_STATUSES)))
    return ListQuery(symbol, limit or MAX_LIST_LIMIT, from_time, to_time, status)
