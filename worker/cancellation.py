"""What one turn does for one order, as plain functions over Services (no Celery in here).

The rules are DESIGN.md §3. The two that matter most:
- An unknown outcome (5xx, timeout, malformed body) is never answered by a blind re-send:
  the order queues for a status read first, and a DELETE goes again only if the order is
  still open.
- Once the exchange has accepted a DELETE for an order, no second DELETE is ever sent.

A turn makes at most one exchange call, on the budget slot the scheduler handed it, and
returns a Step that says which line the order joins next: a DELETE turn (CANCEL), a status
turn (CHECK), or none (DONE: final, or someone else holds the order).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import structlog

from worker.errors import (
    AuthError,
    OrderNotFound,
    OutcomeUnknown,
    RateLimited,
    Refused,
)
from worker.models import (
    EXCHANGE_CANCEL_PENDING,
    EXCHANGE_OPEN,
    EXCHANGE_TERMINAL,
    CancelRecord,
    ErrorCode,
    OrderState,
)
from worker.records import now_ms
from worker.scheduler import Turn
from worker.services import Services

MAX_UNKNOWN_SENDS = 5  # DELETEs in a row with unknown outcome before slow re-checks
NOT_FOUND_CHECKS = 2  # an unknown id is final only after this many "not found" answers
REFUSED_OPEN_RETRY_S = 0.5  # a refused cancel of a still-open order (just placed) waits this

log = structlog.get_logger(__name__)


class Move(enum.Enum):
    """Which line an order joins after a turn."""

    DONE = "done"  # final, or nothing left to do for this turn
    CANCEL = "cancel"  # wait for a DELETE turn
    CHECK = "check"  # wait for a status turn


@dataclass(frozen=True)
class Step:
    """The result of one turn: the next line to join, not before `delay_s`."""

    move: Move
    delay_s: float = 0.0
    record: CancelRecord | None = None


def _error(code: ErrorCode, message: str) -> dict[str, str]:
    return {"code": code.value, "message": message[:300]}


def poll_delay_s(services: Services, polls: int) -> float:
    """Growing, capped delay before the next status read."""
    settings = services.settings
    return float(min(settings.poll_max_delay_s, settings.poll_initial_delay_s * 2**polls))


def _record_truth(services: Services, order_id: str, order: dict[str, Any]) -> Step | None:
    """Record what a status or cancel answer says; None if the order is still open (RAISED)."""
    status = order["status"]
    store = services.store
    if status in EXCHANGE_TERMINAL:
        record = store.settle(order_id, order)
        log.info("order.final", state=status)
        return Step(Move.DONE, record=record)
    if status == EXCHANGE_OPEN:
        return None
    if status != EXCHANGE_CANCEL_PENDING:
        # A status this version does not know: keep the snapshot, keep polling, never guess.
        log.warning("order.unknown_status", status=status)
    accepted: dict[str, Any] = (
        {"cancel_accepted": True} if status == EXCHANGE_CANCEL_PENDING else {}
    )
    record = store.transition(
        order_id,
        OrderState.CANCELLATION_RAISED,
        order=order,
        delete_in_flight=False,
        unknown_sends=0,
        **accepted,
    )
    return Step(Move.CHECK, services.settings.poll_initial_delay_s, record)


def _fail(services: Services, order_id: str, code: ErrorCode, exc: Exception) -> Step:
    record = services.store.transition(
        order_id, OrderState.FAILED, error=_error(code, str(exc)), delete_in_flight=False
    )
    if code is ErrorCode.AUTH:
        log.error("order.failed_auth", error=str(exc))
    else:
        log.warning("order.failed", code=code.value, error=str(exc))
    return Step(Move.DONE, record=record)


def _not_found(services: Services, order_id: str, exc: OrderNotFound) -> Step:
    """Count a 'not found'; final only on the NOT_FOUND_CHECKS-th (a fresh order can lag)."""

    def bump(record: CancelRecord) -> CancelRecord:
        record.not_found += 1
        return record

    record = services.store.update(order_id, bump)
    if record is not None and record.not_found >= NOT_FOUND_CHECKS:
        return _fail(services, order_id, ErrorCode.ORDER_NOT_FOUND, exc)
    return Step(Move.CHECK, services.settings.poll_initial_delay_s, record)


def give_to_sweeper(services: Services, order_id: str, code: ErrorCode, message: str) -> Step:
    """Mark UNCONFIRMED and re-check slowly; never invent a final state."""
    record = services.store.transition(
        order_id, OrderState.UNCONFIRMED, error=_error(code, message)
    )
    return Step(Move.CHECK, services.settings.recheck_interval_s, record)


def cancel_turn(services: Services, order_id: str, turn: Turn, *, owner: str) -> Step:
    """Use a DELETE turn for one order: send the DELETE (at most once after it is accepted)."""
    store = services.store
    record = store.get(order_id)
    if record is None or record.is_final:
        return Step(Move.DONE, record=record)
    if record.cancel_accepted:
        return Step(Move.CHECK, poll_delay_s(services, record.polls), record)
    if record.delete_in_flight:
        # An earlier DELETE's outcome is unknown: the status decides whether to send again.
        return Step(Move.CHECK, 0.0, record)
    lease = services.keys.cancel_lease(order_id)
    if not services.leases.acquire(lease, owner, services.lease_ttl_ms):
        log.info("cancel.duplicate_delivery")
        return Step(Move.DONE, record=record)
    try:
        return _send_cancel(services, record, turn)
    finally:
        services.leases.release(lease, owner)


def _send_cancel(services: Services, record: CancelRecord, turn: Turn) -> Step:
    store, order_id = services.store, record.order_id
    # Marked before the turn is taken, so nothing but signing stands between turn and send.
    marked = store.transition(
        order_id,
        record.state,
        attempts=record.attempts + 1,
        delete_in_flight=True,
        refused=False,
    )
    if marked is None or marked.is_final:
        return Step(Move.DONE, record=marked)
    if not turn.take():  # paused (a 429, no replica): queue again, keeping the place
        store.transition(order_id, record.state, attempts=record.attempts, delete_in_flight=False)
        return Step(Move.CANCEL, record=record)
    client = services.exchange(record.account)
    try:
        order = turn.request(lambda: client.cancel_order(order_id, record.exchange))
    except OutcomeUnknown as exc:
        streak = record.unknown_sends + 1
        log.warning("cancel.outcome_unknown", error=str(exc), attempt=marked.attempts)
        store.transition(order_id, record.state, unknown_sends=streak)  # still in flight
        if streak >= MAX_UNKNOWN_SENDS:
            return give_to_sweeper(
                services, order_id, ErrorCode.EXCHANGE_UNAVAILABLE, "exchange kept failing"
            )
        return Step(Move.CHECK, 0.0, marked)
    except RateLimited:
        store.transition(order_id, record.state, delete_in_flight=False)
        return Step(Move.CANCEL, record=record)
    except AuthError as exc:
        return _fail(services, order_id, ErrorCode.AUTH, exc)
    except (Refused, OrderNotFound) as exc:
        # Refused: already final, mid-cancel, or just placed. The status says which.
        log.info("cancel.refused", http_status=exc.status_code, error=str(exc))
        updated = store.transition(order_id, record.state, delete_in_flight=False, refused=True)
        return Step(Move.CHECK, 0.0, updated)
    settled = _record_truth(services, order_id, order)
    if settled is not None:
        return settled
    # 200 yet still RAISED: the exchange took the request; confirm by polling.
    updated = store.transition(
        order_id,
        OrderState.CANCELLATION_RAISED,
        order=order,
        cancel_accepted=True,
        delete_in_flight=False,
        unknown_sends=0,
    )
    return Step(Move.CHECK, services.settings.poll_initial_delay_s, updated)


def check_turn(services: Services, order_id: str, turn: Turn, *, owner: str) -> Step:
    """Use a status turn for one order: read its status once and decide what comes next."""
    store = services.store
    record = store.get(order_id)
    if record is None or record.is_final:
        return Step(Move.DONE, record=record)
    lease = services.keys.poll_lease(order_id)
    if not services.leases.acquire(lease, owner, services.lease_ttl_ms):
        return Step(Move.DONE, record=record)  # another delivery is reading it right now
    try:
        record = store.get(order_id)  # re-read under the lease
        if record is None or record.is_final:
            return Step(Move.DONE, record=record)
        return _check(services, record, turn)
    finally:
        services.leases.release(lease, owner)


def _check(services: Services, record: CancelRecord, turn: Turn) -> Step:
    order_id = record.order_id
    if not turn.take():
        return Step(Move.CHECK, record=record)
    try:
        client = services.exchange(record.account)
        order = turn.request(lambda: client.get_order(order_id))
    except RateLimited:
        return still_pending(services, record)
    except OutcomeUnknown as exc:
        log.warning("poll.outcome_unknown", error=str(exc))
        return still_pending(services, record)
    except AuthError as exc:
        return _fail(services, order_id, ErrorCode.AUTH, exc)
    except OrderNotFound as exc:
        return _not_found(services, order_id, exc)
    status = order["status"]
    if status in EXCHANGE_TERMINAL:
        return _record_truth(services, order_id, order) or Step(Move.DONE)
    if status == EXCHANGE_OPEN and not record.cancel_accepted:
        # No DELETE took effect (refused, lost, or never sent): cancel again.
        updated = services.store.transition(
            order_id, record.state, order=order, delete_in_flight=False
        )
        return Step(Move.CANCEL, REFUSED_OPEN_RETRY_S if record.refused else 0.0, updated)
    if status not in (EXCHANGE_OPEN, EXCHANGE_CANCEL_PENDING):
        log.warning("order.unknown_status", status=status)  # keep polling, never guess
    return still_pending(services, record, order=order)


def still_pending(
    services: Services, record: CancelRecord, *, order: dict[str, Any] | None = None
) -> Step:
    """Record that the order is not final yet; say when to look again (UNCONFIRMED when
    active confirmation is spent: too many looks, or past the deadline)."""
    settings = services.settings
    accepted = record.cancel_accepted or (order or {}).get("status") == EXCHANGE_CANCEL_PENDING
    raised_at = next(
        (h["at"] for h in reversed(record.history) if h["state"] == "CANCELLATION_RAISED"),
        record.updated_at,
    )
    spent = record.polls + 1 >= settings.poll_max_attempts
    late = now_ms() - raised_at > settings.poll_deadline_s * 1000
    if record.state is OrderState.UNCONFIRMED or spent or late:
        if record.state is not OrderState.UNCONFIRMED:
            log.warning("poll.unconfirmed", polls=record.polls + 1)
        state, delay_s = OrderState.UNCONFIRMED, settings.recheck_interval_s
    elif record.state is OrderState.QUEUED and not accepted:
        state, delay_s = OrderState.QUEUED, poll_delay_s(services, record.polls)
    else:
        state, delay_s = OrderState.CANCELLATION_RAISED, poll_delay_s(services, record.polls)
    updated = services.store.transition(
        record.order_id, state, order=order, cancel_accepted=accepted, polls=record.polls + 1
    )
    return Step(Move.CHECK, delay_s, updated)
