"""The order record and the exchange's JSON shapes for it (docs/exchange.md, Order fields).

Two shapes exist on purpose: the cancel response renames two fields and drops
`realised_pnl`; every other response uses the status shape. Decimals are strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

RAISED: Final = "RAISED"
CANCELLATION_RAISED: Final = "CANCELLATION_RAISED"
CANCELLED: Final = "CANCELLED"
EXECUTED: Final = "EXECUTED"
PARTIALLY_EXECUTED: Final = "PARTIALLY_EXECUTED"

STATUSES: Final = (RAISED, CANCELLATION_RAISED, CANCELLED, EXECUTED, PARTIALLY_EXECUTED)
OPEN_STATUSES: Final = frozenset({RAISED, CANCELLATION_RAISED})
TERMINAL_STATUSES: Final = frozenset({CANCELLED, EXECUTED, PARTIALLY_EXECUTED})

EXCHANGE: Final = "EXCHANGE_2"
ORDER_TYPES: Final = ("MARKET", "LIMIT", "TAKE_PROFIT_MARKET", "STOP_MARKET")
TRIGGER_TYPES: Final = frozenset({"TAKE_PROFIT_MARKET", "STOP_MARKET"})
SIDES: Final = ("BUY", "SELL")
TIME_IN_FORCE: Final = ("GTC", "IOC", "FOK")
ON_CANCEL: Final = ("confirm", "fill", "partial_fill", "stick")

FEE_RATE: Final = Decimal("0.0005")  # taker-like fee charged on filled notional
ZERO: Final = Decimal(0)


def fmt(value: Decimal) -> str:
    """A decimal as the exchange prints it: plain notation, scale as given."""
    return format(value, "f")


def computed(value: Decimal) -> Decimal:
    """Strip trailing zeros from a derived value (given values keep their scale)."""
    return value.normalize() if value != 0 else ZERO


@dataclass(frozen=True)
class Pending:
    """A transition due at `due_ms`; `token` invalidates stale heap entries."""

    due_ms: int
    status: str
    exec_quantity: Decimal
    token: int


@dataclass
class Order:
    """One order's full state, including sandbox-only bookkeeping."""

    order_id: str
    owner: str
    symbol: str
    side: str
    order_type: str
    quantity: Decimal
    price: Decimal
    trigger_price: Decimal | None
    reduce_only: bool
    time_in_force: str
    client_order_id: str | None
    status: str
    created_at: int
    updated_at: int
    seq: int
    exchange: str = EXCHANGE
    exec_quantity: Decimal = ZERO
    avg_execution_price: Decimal = ZERO
    execution_fee: Decimal = ZERO
    realised_pnl: Decimal = ZERO
    on_cancel: str | None = None
    pending: Pending | None = None
    history: list[tuple[str, int]] = field(default_factory=list)
    cancel_requests: int = 0
    cancel_accepted: int = 0
    status_requests: int = 0

    @property
    def is_open(self) -> bool:
        """RAISED or CANCELLATION_RAISED: not final yet."""
        return self.status in OPEN_STATUSES

    def _common(self) -> dict[str, Any]:
        out: dict[str, Any] = {"order_id": self.order_id}
        if self.client_order_id is not None:
            out["client_order_id"] = self.client_order_id
        out.update(
            exchange=self.exchange,
            symbol=self.symbol,
            side=self.side,
            status=self.status,
            order_type=self.order_type,
            quantity=fmt(self.quantity),
            exec_quantity=fmt(self.exec_quantity),
            price=fmt(self.price),
        )
        return out

    def status_shape(self) -> dict[str, Any]:
        """Place / status / list shape (`avg_execution_price`, `execution_fee`, pnl)."""
        out = self._common()
        out.update(
            avg_execution_price=fmt(self.avg_execution_price),
            execution_fee=fmt(self.execution_fee),
            realised_pnl=fmt(self.realised_pnl),
            reduce_only=self.reduce_only,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )
        return out

    def cancel_shape(self) -> dict[str, Any]:
        """Cancel response shape: `avg_exec_price`, `exec_fee`, and no `realised_pnl`."""
        out = self._common()
        out.update(
            avg_exec_price=fmt(self.avg_execution_price),
            exec_fee=fmt(self.execution_fee),
            reduce_only=self.reduce_only,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )
        return out

    def admin_view(self) -> dict[str, Any]:
        """What `GET /_sandbox/orders/<id>` returns: the order plus its counters."""
        return {
            "order": self.status_shape(),
            "owner": self.owner,
            "on_cancel": self.on_cancel,
            "cancel_requests": self.cancel_requests,
            "cancel_accepted": self.cancel_accepted,
            "status_requests": self.status_requests,
            "history": [{"status": status, "at": at} for status, at in self.history],
        }
