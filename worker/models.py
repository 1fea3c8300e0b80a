"""States, exchange order snapshots and the cancellation record."""

from __future__ import annotations

import dataclasses
import enum
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from worker.errors import InvalidRequest


class OrderState(enum.StrEnum):
    """The state of one cancellation, as recorded and published (README, Records and events)."""

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

#: Exchange statuses that are final on futures, PARTIALLY_EXECUTED included
#: (docs/exchange.md, Statuses).
EXCHANGE_TERMINAL = frozenset({"CANCELLED", "EXECUTED", "PARTIALLY_EXECUTED"})

#: Exchange status of an open order that no cancel has touched yet.
EXCHANGE_OPEN = "RAISED"
EXCHANGE_CANCEL_PENDING = "CANCELLATION_RAISED"

#: The only futures exchange (docs/exchange.md, Endpoints and envelopes); any case in.
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
    """One of the exchange's per-key budgets (docs/exchange.md, Rate limits), each scheduled
    on its own."""

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
    DROPPED = "dropped"  # left by an earlier run, dropped at start (`run --drop-leftovers`)


#: Cancel-response field names mapped to the names every other response uses
#: (docs/exchange.md, Order fields).
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
    owner: str | None = None  # the strategy the order is tracked to, if any
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
    batch_id: str | None = None  # the cancel-all that cancelled it, if one did
    unknown_sends: int = 0  # DELETEs in a row whose outcome was unknown
    refused: bool = False  # the last DELETE was refused (the order may be just placed)

    @property
    def is_final(self) -> bool:
        """Whether the state can no longer change."""
        return self.state in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form, public fields first (it shares the nested values: serialise
        it, do not change it; dataclasses.asdict's deep copy is a hot path's largest cost)."""
        return {name: getattr(self, name) for name in _RECORD_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CancelRecord:
        """Rebuild a record from `to_dict` output, ignoring fields this version does not know."""
        values = {k: v for k, v in data.items() if k in _RECORD_NAMES}
        values["state"] = OrderState(values["state"])
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """The documented record (README, Records and events) without internal bookkeeping."""
        data = self.to_dict()
        for name in _INTERNAL_FIELDS:
            data.pop(name)
        return data


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(CancelRecord))
_RECORD_NAMES = frozenset(_RECORD_FIELDS)
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


_OWNER_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}")


def validate_owner(value: object) -> str:
    """Return an owner (a strategy's name), or raise InvalidRequest naming the value."""
    if not isinstance(value, str) or not _OWNER_RE.fullmatch(value):
        raise InvalidRequest(
            "owner",
            value,
            "must be a strategy name like strat-a (a lowercase letter, then up to 63 "
            "lowercase letters, digits, _ or -)",
        )
    return value


def validate_priority(value: object) -> Priority:
    """Return the Priority, or raise InvalidRequest naming the value."""
    if isinstance(value, Priority):
        return value
    if isinstance(value, str) and value.lower() in {p.value for p in Priority}:
        return Priority(value.lower())
    raise InvalidRequest("priority", value, "must be urgent or normal")


_SYMBOL_RE = re.compile(r"[A-Z0-9]{1,20}USDT")
BATCH_PREFIX = "batch-"


def validate_symbol(value: object) -> str | None:
    """Return the futures symbol upper-cased (None for none), or raise InvalidRequest."""
    if value is None:
        return None
    if not isinstance(value, str) or not _SYMBOL_RE.fullmatch(value.upper()):
        raise InvalidRequest(
            "symbol", value, "must be a futures symbol like BTCUSDT (base asset + USDT)"
        )
    return value.upper()


BATCH_NAMESPACE = uuid.UUID("5c4b1c3e-3f7e-4b0a-9d1e-6a2f0c9b8d21")  # for derived batch ids


def new_batch_id() -> str:
    """A fresh batch id: `batch-` and a UUID, so it never reads as an order id."""
    return f"{BATCH_PREFIX}{uuid.uuid4()}"


def derived_batch_id(*parts: str) -> str:
    """A batch id that the same parts always give: a retried step creates the same batch."""
    return f"{BATCH_PREFIX}{uuid.uuid5(BATCH_NAMESPACE, ':'.join(parts))}"


def is_batch_id(value: str) -> bool:
    """Whether an id names a cancel-all batch rather than an order."""
    return value.startswith(BATCH_PREFIX) and bool(_UUID_RE.fullmatch(value[len(BATCH_PREFIX) :]))


class BatchState(enum.StrEnum):
    """The state of one cancel-all request."""

    QUEUED = "QUEUED"  # waiting for a cancel-all turn
    UNCONFIRMED = "UNCONFIRMED"  # its answer was lost: finding out whether it took effect
    ACCEPTED = "ACCEPTED"  # the exchange named the orders it sent for cancellation
    DONE = "DONE"  # every order it cancelled has a final record
    FAILED = "FAILED"  # refused (auth, rejected): it cancelled nothing


FINAL_BATCH_STATES = frozenset({BatchState.DONE, BatchState.FAILED})


@dataclass
class BatchRecord:
    """One cancel-all request and the orders the exchange sent for cancellation."""

    batch_id: str
    account: str
    exchange: str
    symbol: str | None  # None: every symbol of the account
    priority: str
    state: BatchState
    requested_at: int
    updated_at: int
    final_at: int | None = None
    orders_ids: list[str] = field(default_factory=list)
    #: True when the answer was lost and orders_ids were found by listing the orders.
    reconstructed: bool = False
    attempts: int = 0
    error: dict[str, str] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    #: Scoped to one owner's orders (a strategy's): `symbols` those it covers (empty: every
    #: symbol it has open orders in), `batches` the cancel-alls it sent (one per symbol
    #: holding only its orders), `parent` the scoped batch of such a cancel-all.
    owner: str | None = None
    symbols: list[str] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)
    parent: str | None = None
    #: Orders of others a cancel-all moved anyway (placed between the list read and the
    #: call): [{"order_id", "owner"}], so their owners can act.
    foreign: list[dict[str, Any]] = field(default_factory=list)
    # Bookkeeping, not part of the public record.
    sent_at: int | None = None  # Redis ms of the last cancel-all sent
    in_flight: bool = False  # a cancel-all was sent and its outcome is not known yet
    found: dict[str, Any] = field(default_factory=dict)  # orders a lost one sent, so far
    seen: dict[str, Any] = field(default_factory=dict)  # a scoped batch's open orders read
    reading: str | None = None  # a scoped batch's list read in line (its job)
    plan: dict[str, list[str]] | None = None  # what a scoped batch decided to send

    @property
    def is_final(self) -> bool:
        """Whether the state can no longer change."""
        return self.state in FINAL_BATCH_STATES

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchRecord:
        """Rebuild a batch from `to_dict` output, ignoring fields this version does not know."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["state"] = BatchState(values["state"])
        return cls(**values)

    @classmethod
    def queued(
        cls,
        batch_id: str,
        *,
        account: str,
        exchange: str,
        symbol: str | None,
        priority: Priority,
        at: int,
        owner: str | None = None,
        symbols: list[str] | None = None,
        parent: str | None = None,
    ) -> BatchRecord:
        """A new batch, waiting for its cancel-all turn (or, scoped, its list reads)."""
        return cls(
            batch_id=batch_id,
            account=account,
            exchange=exchange,
            symbol=symbol,
            priority=priority.value,
            state=BatchState.QUEUED,
            requested_at=at,
            updated_at=at,
            history=[{"state": BatchState.QUEUED.value, "at": at}],
            owner=owner,
            symbols=list(symbols or []),
            parent=parent,
        )

    @property
    def scoped(self) -> bool:
        """Scoped to an owner, and not one of its cancel-alls: it reads the lists first."""
        return self.owner is not None and self.parent is None

    def public(self) -> dict[str, Any]:
        """The documented batch record, without internal bookkeeping."""
        data = self.to_dict()
        for name in ("sent_at", "in_flight", "found", "seen", "reading", "plan"):
            data.pop(name)
        return data
