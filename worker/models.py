"""States, exchange order snapshots and the cancellation record."""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field
from typing import Any

from worker.errors import InvalidRequest


class OrderState(enum.StrEnum):
    """The state of one cancellation, as recorded and published (DESIGN.md §2)."""

    QUEUED = "QUEUED"
    CANCELLATION_RAISED = "CANCELLATION_RAISED"
    UNCONFIRMED = "UNCONFIRMED"
    CANCELLED = "CANCELLED"
    EXECUTED = "EXECUTED"
    PARTIALLY_EXECUTED = "PARTIALLY_EXECUTED"
    FAILED = "FAILED"


#: States that never change again: the final write is idempotent against these.
FINAL_STATES = frozenset(
    {
        OrderState.CANCELLED,
        OrderState.EXECUTED,
        OrderState.PARTIALLY_EXECUTED,
        OrderState.FAILED,
    }
)

#: Exchange statuses that are terminal on futures (PARTIALLY_EXECUTED included, API.md §5).
EXCHANGE_TERMINAL = frozenset({"CANCELLED", "EXECUTED", "PARTIALLY_EXECUTED"})

#: Exchange status of an open order that no cancel has touched yet.
EXCHANGE_OPEN = "RAISED"
EXCHANGE_CANCEL_PENDING = "CANCELLATION_RAISED"

#: The only futures exchange (API.md §2); input is case-insensitive.
KNOWN_EXCHANGES = frozenset({"EXCHANGE_2"})
DEFAULT_EXCHANGE = "EXCHANGE_2"

#: The account of COINSWITCH_API_KEY / COINSWITCH_SECRET_KEY; others are named in
#: COINSWITCH_ACCOUNTS.
DEFAULT_ACCOUNT = "default"
_ACCOUNT_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")


class Priority(enum.StrEnum):
    """How soon a request's exchange calls go: urgent ones take the next free slot first."""

    URGENT = "urgent"
    NORMAL = "normal"

    @property
    def rank(self) -> int:
        """Sort key in a waiting room: lower goes first."""
        return 0 if self is Priority.URGENT else 1


class Bucket(enum.StrEnum):
    """One of the exchange's per-key budgets (API.md §7), each scheduled on its own."""

    CANCEL = "cancel"  # DELETE /futures/order
    STATUS = "status"  # GET /futures/order
    CANCEL_ALL = "cancel_all"  # POST /futures/cancel_all
    OPEN_ORDERS = "open_orders"  # POST /futures/orders/open
    CLOSED_ORDERS = "closed_orders"  # POST /futures/orders/closed


class ErrorCode(enum.StrEnum):
    """Machine-readable `error.code` values of a record."""

    ORDER_NOT_FOUND = "order_not_found"
    AUTH = "auth"
    REJECTED = "rejected"
    INVALID_MESSAGE = "invalid_message"
    EXCHANGE_UNAVAILABLE = "exchange_unavailable"
    INTERNAL = "internal"


#: Cancel-response field names mapped to the names every other response uses (API.md §3).
_RENAMED_FIELDS = {"avg_exec_price": "avg_execution_price", "exec_fee": "execution_fee"}


def normalise_order(raw: dict[str, Any]) -> dict[str, Any]:
    """Return an exchange order with the cancel-only field names renamed to the common ones."""
    order = {_RENAMED_FIELDS.get(name, name): value for name, value in raw.items()}
    if isinstance(order.get("status"), str):
        order["status"] = order["status"].upper()
    return order


@dataclass
class CancelRecord:
    """Everything known about one cancellation; what `status --json` prints."""

    order_id: str
    exchange: str
    state: OrderState
    requested_at: int
    updated_at: int
    account: str = DEFAULT_ACCOUNT
    priority: str = Priority.NORMAL.value
    attempts: int = 0
    final_at: int | None = None
    order: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    # Bookkeeping the pipeline needs to stay idempotent; not part of the public contract.
    cancel_accepted: bool = False
    delete_in_flight: bool = False
    polls: int = 0
    not_found: int = 0
    unknown_sends: int = 0  # DELETEs in a row whose outcome was unknown
    refused: bool = False  # the last DELETE was refused (the order may be just placed)

    @property
    def is_final(self) -> bool:
        """Whether the state can no longer change."""
        return self.state in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form, public fields first."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CancelRecord:
        """Rebuild a record from `to_dict` output, ignoring fields this version does not know."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["state"] = OrderState(values["state"])
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """The documented record (DESIGN.md §2) without internal bookkeeping."""
        data = self.to_dict()
        for name in _INTERNAL_FIELDS:
            data.pop(name)
        return data


_INTERNAL_FIELDS = (
    "cancel_accepted",
    "delete_in_flight",
    "polls",
    "not_found",
    "unknown_sends",
    "refused",
)


_UUID_RE = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE
)


def validate_order_id(value: object) -> str:
    """Return the canonical (lowercase) order id, or raise InvalidRequest naming the value."""
    if not isinstance(value, str):
        raise InvalidRequest("order_id", value, f"must be a string, not {type(value).__name__}")
    if not _UUID_RE.fullmatch(value):
        raise InvalidRequest("order_id", value, "must be a UUID like 0193688e-5212-7493-...")
    return value.lower()


def validate_exchange(value: object) -> str:
    """Return the exchange in upper case, or raise InvalidRequest naming the value."""
    if not isinstance(value, str):
        raise InvalidRequest("exchange", value, f"must be a string, not {type(value).__name__}")
    if value.upper() not in KNOWN_EXCHANGES:
        known = ", ".join(sorted(KNOWN_EXCHANGES))
        raise InvalidRequest("exchange", value, f"must be one of {known} (any case)")
    return value.upper()


def validate_account(value: object) -> str:
    """Return the account name in lower case, or raise InvalidRequest naming the value.

    Whether the account is configured is the producer's question; this checks the form.
    """
    if not isinstance(value, str):
        raise InvalidRequest("account", value, f"must be a string, not {type(value).__name__}")
    name = value.lower()
    if not _ACCOUNT_RE.fullmatch(name):
        raise InvalidRequest(
            "account", value, "must be a name like alpha (a letter, then letters, digits or _)"
        )
    return name


def validate_priority(value: object) -> Priority:
    """Return the Priority, or raise InvalidRequest naming the value."""
    if isinstance(value, Priority):
        return value
    if isinstance(value, str) and value.lower() in {p.value for p in Priority}:
        return Priority(value.lower())
    raise InvalidRequest("priority", value, "must be urgent or normal")
