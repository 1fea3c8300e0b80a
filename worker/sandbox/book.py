"""The order book: every order's lifecycle, advanced lazily from timestamps.

No timer threads: a transition (cancel confirmation, raced fill, auto fill) is scheduled
with a due time on a heap and applied by whichever call first looks at the book after it
is due, stamped with its due time. With an injected clock this is fully deterministic.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
import threading
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Final

from worker.sandbox.config import SandboxConfig
from worker.sandbox.orders import (
    CANCELLATION_RAISED,
    CANCELLED,
    EXECUTED,
    FEE_RATE,
    OPEN_STATUSES,
    PARTIALLY_EXECUTED,
    RAISED,
    STATUSES,
    TERMINAL_STATUSES,
    TRIGGER_TYPES,
    ZERO,
    Order,
    Pending,
    computed,
)
from worker.sandbox.validation import ListQuery, PlaceRequest, invalid

Clock = Callable[[], int]  # wall-clock Unix time in ms
DEFAULT_MARK_PRICE: Final = Decimal(1)  # MARKET fill price when the symbol has no LIMIT yet
HALF_PERCENT: Final = 50  # on_cancel="partial_fill" fills half the remainder
MSG_FINAL: Final = "Order is already closed and cannot be cancelled"
MSG_CANCELLING: Final = "Order cancellation is already in progress"
MSG_JUST_PLACED: Final = "Order is being processed, please retry shortly"


def system_clock_ms() -> int:
    """Wall-clock Unix time in ms."""
    return time.time_ns() // 1_000_000


class UnknownOrderError(Exception):
    """Raised when an order id is unknown (or belongs to another API key)."""


class CancelRefusedError(Exception):
    """Raised when a cancel is refused: order final, mid-cancel or just placed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class OrderNotOpenError(Exception):
    """Raised when an admin fill targets an order that is already final."""


class OrderBook:
    """Thread-safe store of orders keyed by id, with idempotent client ids per owner."""

    def __init__(self, seed: int = 0, clock: Clock = system_clock_ms) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self.reset(seed)

    def reset(self, seed: int) -> None:
        """Forget every order and re-seed, so a run after reset repeats the first."""
        with self._lock:
            self._orders: dict[str, Order] = {}
            self._by_client: dict[tuple[str, str], str] = {}
            self._latest_by_client: dict[str, str] = {}  # any owner; for admin lookups
            self._heap: list[tuple[int, int, str, int]] = []
            self._seq = 0
            self._last_price: dict[str, Decimal] = {}
            self._rng = random.Random(f"{seed}:book")
            self._ids = random.Random(f"{seed}:ids")

    def now(self) -> int:
        """The book's clock, in ms."""
        return self._clock()

    # ---- exchange operations ---------------------------------------------------------

    def place(self, owner: str, req: PlaceRequest, cfg: SandboxConfig) -> tuple[Order, bool]:
        """Place an order; returns (order, created). A known client id returns the original."""
        with self._lock:
            now = self._advance()
            if req.client_order_id is not None:
                known = self._by_client.get((owner, req.client_order_id))
                if known is not None:
                    return self._snapshot(self._orders[known]), False
            order = self._new_order(owner, req, RAISED, now)
            roll = self._rng.random()
            fills = roll < cfg.auto_fill_rate
            if req.order_type == "MARKET":
                self._schedule(order, now, EXECUTED, order.quantity)
            elif req.order_type == "LIMIT" and req.time_in_force in ("IOC", "FOK"):
                # Undocumented: an immediate-or-kill order resolves at once.
                self._schedule(order, now, EXECUTED if fills else CANCELLED, order.quantity)
            elif req.order_type == "LIMIT" and fills:
                self._schedule(order, now + cfg.auto_fill_delay_ms, EXECUTED, order.quantity)
            return self._snapshot(order), True

    def get(
        self, owner: str | None, order_id: str | None = None, client_order_id: str | None = None
    ) -> Order:
        """Look an order up by id or client id; owner None means any owner (admin)."""
        with self._lock:
            self._advance()
            return self._snapshot(self._find(owner, order_id, client_order_id))

    def note_request(
        self, kind: str, order_id: str | None = None, client_order_id: str | None = None
    ) -> None:
        """Count a DELETE ("cancel") or GET ("status") aimed at an order, whatever its answer."""
        with self._lock:
            try:
                order = self._find(None, order_id, client_order_id)
            except UnknownOrderError:
                return
            if kind == "cancel":
                order.cancel_requests += 1
            else:
                order.status_requests += 1

    def cancel(self, owner: str, order_id: str, cfg: SandboxConfig) -> Order:
        """Accept a cancel (-> CANCELLATION_RAISED, outcome scheduled) or raise why not."""
        with self._lock:
            now = self._advance()
            order = self._find(owner, order_id, None)
            if order.status in TERMINAL_STATUSES:
                raise CancelRefusedError(MSG_FINAL)
            if order.status == CANCELLATION_RAISED:
                raise CancelRefusedError(MSG_CANCELLING)
            if now - order.created_at < cfg.just_placed_ms:
                raise CancelRefusedError(MSG_JUST_PLACED)
            self._start_cancel(order, now, cfg)
            order.cancel_accepted += 1
            return self._snapshot(order)

    def cancel_all(self, owner: str, symbol: str | None, cfg: SandboxConfig) -> list[str]:
        """Send every RAISED order of the owner (and symbol) for cancellation; ids newest first."""
        with self._lock:
            now = self._advance()
            chosen = [
                o
                for o in self._orders.values()
                if o.owner == owner and o.status == RAISED and symbol in (None, o.symbol)
            ]
            chosen.sort(key=lambda o: (o.created_at, o.seq), reverse=True)
            for order in chosen:
                self._start_cancel(order, now, cfg)
            return [o.order_id for o in chosen]

    def list_orders(self, owner: str, query: ListQuery, *, closed: bool) -> list[Order]:
        """Open or closed orders in the window, newest first, at most query.limit."""
        with self._lock:
            self._advance()
            wanted = TERMINAL_STATUSES if closed else OPEN_STATUSES
            found = [
                o
                for o in self._orders.values()
                if o.owner == owner
                and o.status in wanted
                and query.symbol in (None, o.symbol)
                and query.status in (None, o.status)
                and query.from_time <= o.created_at <= query.to_time
            ]
            found.sort(key=lambda o: (o.created_at, o.seq), reverse=True)
            return [self._snapshot(o) for o in found[: query.limit]]

    # ---- admin operations ------------------------------------------------------------

    def create(
        self,
        owner: str,
        req: PlaceRequest,
        cfg: SandboxConfig,
        *,
        status: str = RAISED,
        on_cancel: str | None = None,
        exec_quantity: Decimal | None = None,
        created_at: int | None = None,
    ) -> Order:
        """Create an order directly in any state (admin); no auto fill is rolled."""
        with self._lock:
            now = self._advance()
            if req.client_order_id is not None and (owner, req.client_order_id) in self._by_client:
                raise invalid("client_order_id")
            start = now if created_at is None else created_at
            order = self._new_order(owner, req, RAISED, start)
            order.on_cancel = on_cancel
            if exec_quantity is not None:
                if exec_quantity > order.quantity:
                    raise invalid("exec_quantity")
                self._set_exec(order, exec_quantity)
            if status == CANCELLATION_RAISED:
                self._start_cancel(order, max(now, start), cfg)
            elif status == EXECUTED:
                self._apply(order, EXECUTED, order.quantity, start)
            elif status == PARTIALLY_EXECUTED:
                half = computed(order.quantity * HALF_PERCENT / 100)
                self._apply(order, PARTIALLY_EXECUTED, exec_quantity or half, start)
            elif status == CANCELLED:
                self._apply(order, CANCELLED, order.exec_quantity, start)
            return self._snapshot(order)

    def fill(self, order_id: str, quantity: Decimal | None = None) -> Order:
        """Fill an open order now (admin).

        Full fill -> EXECUTED. A partial fill of a RAISED order keeps it RAISED with
        exec_quantity > 0 (a later cancel then ends PARTIALLY_EXECUTED); a partial fill
        during CANCELLATION_RAISED wins the race and ends PARTIALLY_EXECUTED at once.
        """
        with self._lock:
            now = self._advance()
            order = self._find(None, order_id, None)
            if not order.is_open:
                raise OrderNotOpenError(order_id)
            remaining = order.quantity - order.exec_quantity
            if quantity is not None and (quantity <= 0 or quantity > remaining):
                raise invalid("quantity")
            total = order.quantity if quantity is None else order.exec_quantity + quantity
            if total == order.quantity:
                self._apply(order, EXECUTED, total, now)
            elif order.status == CANCELLATION_RAISED:
                self._apply(order, PARTIALLY_EXECUTED, total, now)
            else:
                self._set_exec(order, total)
                order.updated_at = now
            return self._snapshot(order)

    def status_counts(self) -> dict[str, int]:
        """How many orders are in each status right now."""
        with self._lock:
            self._advance()
            counts = dict.fromkeys(STATUSES, 0)
            for order in self._orders.values():
                counts[order.status] += 1
            return counts

    # ---- internals -------------------------------------------------------------------

    def _new_order(self, owner: str, req: PlaceRequest, status: str, at: int) -> Order:
        self._seq += 1
        order_id = str(uuid.UUID(int=self._ids.getrandbits(128), version=4))
        if req.order_type == "LIMIT":
            self._last_price[req.symbol] = req.price
        order = Order(
            order_id=order_id,
            owner=owner,
            symbol=req.symbol,
            side=req.side,
            order_type=req.order_type,
            quantity=req.quantity,
            price=req.price,
            trigger_price=req.trigger_price,
            reduce_only=req.reduce_only,
            time_in_force=req.time_in_force,
            client_order_id=req.client_order_id,
            status=status,
            created_at=at,
            updated_at=at,
            seq=self._seq,
            history=[(status, at)],
        )
        self._orders[order_id] = order
        if req.client_order_id is not None:
            self._by_client[(owner, req.client_order_id)] = order_id
            self._latest_by_client[req.client_order_id] = order_id
        return order

    def _find(self, owner: str | None, order_id: str | None, client_order_id: str | None) -> Order:
        order: Order | None = None
        if order_id is not None:
            order = self._orders.get(order_id)
        elif client_order_id is not None:
            known = (
                self._by_client.get((owner, client_order_id))
                if owner is not None
                else self._latest_by_client.get(client_order_id)
            )
            order = self._orders.get(known) if known is not None else None
        if order is None or (owner is not None and order.owner != owner):
            raise UnknownOrderError(order_id or client_order_id or "")
        return order

    def _start_cancel(self, order: Order, now: int, cfg: SandboxConfig) -> None:
        """Move to CANCELLATION_RAISED and schedule how the cancel resolves."""
        order.status = CANCELLATION_RAISED
        order.updated_at = now
        order.history.append((CANCELLATION_RAISED, now))
        order.pending = None
        mode = order.on_cancel
        percent = HALF_PERCENT
        if mode is None:
            raced = self._rng.random() < cfg.fill_race_rate
            mode = "confirm"
            if raced and order.quantity > 0 and order.order_type not in TRIGGER_TYPES:
                partial = self._rng.random() < cfg.partial_fill_share
                mode = "partial_fill" if partial else "fill"
                percent = self._rng.randint(1, 99)
        due = now + cfg.confirm_delay_ms
        if mode == "stick":
            return
        if mode == "fill":
            self._schedule(order, due, EXECUTED, order.quantity)
        elif mode == "partial_fill":
            remaining = order.quantity - order.exec_quantity
            part = computed(order.exec_quantity + remaining * percent / 100)
            self._schedule(order, due, PARTIALLY_EXECUTED, part)
        else:
            final = cfg.partial_cancel_status if order.exec_quantity > 0 else CANCELLED
            self._schedule(order, due, final, order.exec_quantity)

    def _schedule(self, order: Order, due_ms: int, status: str, exec_quantity: Decimal) -> None:
        self._seq += 1
        order.pending = Pending(due_ms, status, exec_quantity, self._seq)
        heapq.heappush(self._heap, (due_ms, self._seq, order.order_id, self._seq))

    def _advance(self) -> int:
        """Apply every transition due by now; returns now."""
        now = self._clock()
        while self._heap and self._heap[0][0] <= now:
            due, _, order_id, token = heapq.heappop(self._heap)
            order = self._orders.get(order_id)
            if order is None or order.pending is None or order.pending.token != token:
                continue  # superseded (cancel replaced an auto fill, admin fill, ...)
            self._apply(order, order.pending.status, order.pending.exec_quantity, due)
        return now

    def _apply(self, order: Order, status: str, exec_quantity: Decimal, at: int) -> None:
        self._set_exec(order, exec_quantity)
        order.status = status
        order.updated_at = at
        order.history.append((status, at))
        order.pending = None

    def _set_exec(self, order: Order, exec_quantity: Decimal) -> None:
        if exec_quantity == order.exec_quantity:
            return
        order.exec_quantity = exec_quantity
        order.avg_execution_price = self._fill_price(order) if exec_quantity > 0 else ZERO
        order.execution_fee = computed(exec_quantity * order.avg_execution_price * FEE_RATE)

    def _fill_price(self, order: Order) -> Decimal:
        if order.price > 0:
            return order.price
        if order.trigger_price is not None:
            return order.trigger_price
        return self._last_price.get(order.symbol, DEFAULT_MARK_PRICE)

    @staticmethod
    def _snapshot(order: Order) -> Order:
        return dataclasses.replace(order, history=list(order.history))
