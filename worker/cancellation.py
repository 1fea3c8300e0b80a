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
    ExchangeError,
    OrderNotFound,
    OutcomeUnknown,
    RateLimited,
    Refused,
)
from worker.models import (
    EXCHANGE_CANCEL_PENDING,
    EXCHANGE_OPEN,
    EXCHANGE_TERMINAL,
    Bucket,
    CancelRecord,
    ErrorCode,
    OrderState,
    Priority,
)
from worker.records import now_ms
from worker.scheduler import Scheduler, Turn
from worker.services import Services

MAX_UNKNOWN_SENDS = 5  # DELETEs in a row with unknown outcome before slow re-checks
NOT_FOUND_CHECKS = 2  # an unknown id is final only after this many "not found" answers
REFUSED_OPEN_RETRY_S = 0.5  # a refused cancel of a still-open order (just placed) waits this
WAITING_RECHECK_S = 60.0  # the sweeper looks again this often at an order waiting in line

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


def _call(turn: Turn, request: Any, *args: Any) -> dict[str, Any]:
    """Make one exchange request on a taken turn; teach the margin if the exchange answered."""
    try:
        result: dict[str, Any] = request(*args)
    except RateLimited:
        turn.answered()
        turn.rate_limited()
        raise
    except ExchangeError as exc:
        if exc.status_code is not None:  # a timeout or a dropped connection says nothing
            turn.answered()
        raise
    turn.answered()
    return result


def _record_truth(services: Services, order_id: str, order: dict[str, Any]) -> Step | None:
    """Record what a status or cancel answer says; None if the order is still open (RAISED)."""
    status = order["status"]
    store = services.store
    if status in EXCHANGE_TERMINAL:
        record = store.transition(order_id, OrderState(status), order=order, delete_in_flight=False)
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
    if not turn.take():  # the budget is paused (a 429): queue again, keeping the place
        store.transition(order_id, record.state, attempts=record.attempts, delete_in_flight=False)
        return Step(Move.CANCEL, record=record)
    client = services.exchange(record.account)
    try:
        order = _call(turn, client.cancel_order, order_id, record.exchange)
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
        order = _call(turn, services.exchange(record.account).get_order, order_id)
    except RateLimited:
        return _check_again(services, record)
    except OutcomeUnknown as exc:
        log.warning("poll.outcome_unknown", error=str(exc))
        return _check_again(services, record)
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
    return _check_again(services, record, order=order)


def _check_again(
    services: Services, record: CancelRecord, *, order: dict[str, Any] | None = None
) -> Step:
    """Record a pending answer and queue the next read, or go UNCONFIRMED when spent."""
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


def follow(services: Services, scheduler: Scheduler, order_id: str, step: Step) -> None:
    """Queue the order for the turn a Step asks for (DONE queues nothing)."""
    if step.move is Move.DONE:
        return
    record = step.record or services.store.get(order_id)
    if record is None or record.is_final:
        return
    priority = Priority(record.priority)
    if step.move is Move.CANCEL:
        # A cancel keeps its place in line: ordered by when it was requested.
        scheduler.join(
            record.account,
            Bucket.CANCEL,
            [order_id],
            priority=priority,
            delay_s=step.delay_s,
            since_ms=record.requested_at,
        )
    else:
        scheduler.join(
            record.account, Bucket.STATUS, [order_id], priority=priority, delay_s=step.delay_s
        )


def sweep(services: Services, scheduler: Scheduler, *, limit: int) -> int:
    """Put lost work back in line; return how many orders were re-queued.

    Every unfinished order is watched. When its watch time passes, the order is left alone
    if it is final, waits in a line, or a task holds it (a lease); otherwise its turn was
    lost (a message dropped between BRPOP and kombu's bookkeeping when a worker was killed,
    celery/celery#7950, or a dispatcher died between handing a turn out and publishing it)
    and it joins the line for its next step. Duplicates are harmless: every turn checks the
    record and its lease first.
    """
    store, keys = services.store, services.keys
    ids = store.due(now_ms(), limit)
    records = store.get_many(ids)
    pipe = services.redis.pipeline(transaction=False)
    for order_id, record in zip(ids, records, strict=True):
        account = record.account if record is not None else ""
        for bucket in (Bucket.CANCEL, Bucket.STATUS):
            pipe.zscore(keys.room_ready(account, bucket), order_id)
            pipe.zscore(keys.room_later(account, bucket), order_id)
        pipe.exists(keys.cancel_lease(order_id), keys.poll_lease(order_id))
    found = pipe.execute()
    requeued = 0
    waiting_until = now_ms() + int(WAITING_RECHECK_S * 1000)
    for i, (order_id, record) in enumerate(zip(ids, records, strict=True)):
        if record is None or record.is_final:
            store.unschedule(order_id)
            continue
        if any(value is not None for value in found[i * 5 : i * 5 + 4]) or found[i * 5 + 4]:
            store.schedule_check(order_id, waiting_until)
            continue
        fresh = record.state is OrderState.QUEUED
        resend = fresh and not record.delete_in_flight and not record.cancel_accepted
        follow(services, scheduler, order_id, Step(Move.CANCEL if resend else Move.CHECK))
        store.schedule_check(order_id, now_ms() + services.watch_grace_ms)
        log.warning("sweep.requeued", order_id=order_id, state=record.state.value)
        requeued += 1
    return requeued
