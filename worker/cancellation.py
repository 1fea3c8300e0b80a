"""What a cancel or a poll does, as plain functions over Services (no Celery in here).

The rules are DESIGN.md §3. The two that matter most:
- An unknown outcome (5xx, timeout, malformed body) is never answered by a blind re-send:
  the status is read first, and the DELETE is sent again only if the order is still open.
- Once the exchange has accepted a DELETE for an order, no second DELETE is ever sent.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from worker.errors import AuthError, OrderNotFound, OutcomeUnknown, RateLimited, Refused
from worker.keys import CANCEL_QUEUE
from worker.models import (
    EXCHANGE_CANCEL_PENDING,
    EXCHANGE_OPEN,
    EXCHANGE_TERMINAL,
    CancelRecord,
    ErrorCode,
    OrderState,
)
from worker.records import now_ms
from worker.services import CANCEL, STATUS, Services

LEASE_TTL_MS = 20_000  # renewed by every heartbeat (at most every 5 s) while a task works
MAX_SENDS_PER_TASK = 5  # DELETE attempts in one delivery before giving the order to the sweeper
NOT_FOUND_CHECKS = 2  # an unknown id is final only after this many "not found" answers
REFUSED_OPEN_RETRY_S = 0.5  # a refused cancel on a still-open order (just placed) is retried
SWEEP_SLACK_S = 5.0  # the sweeper steps in this long after redelivery would have
BACKLOG_SLACK = 1.5  # a QUEUED order is re-sent if it waits 1.5x its expected turn

log = structlog.get_logger(__name__)

Heartbeat = Callable[[], None]


class Next(enum.Enum):
    """What the task wrapper must do after a step."""

    DONE = "done"  # nothing more for this delivery
    POLL = "poll"  # the DELETE was accepted: start polling
    RETRY = "retry"  # run this task again after `delay_s`
    RESEND = "resend"  # the order is still open and no DELETE was accepted: cancel again


@dataclass(frozen=True)
class Step:
    """The result of one cancel or poll step."""

    next: Next
    delay_s: float = 0.0
    record: CancelRecord | None = None


def watch_ms(services: Services, expected_s: float) -> int:
    """When the sweeper must look again at an order whose next step is `expected_s` away.

    Redis's own redelivery (after the visibility timeout) comes first; the sweeper only
    catches what it cannot: a message lost between BRPOP and the unacked bookkeeping when
    a worker is killed (celery/celery#7950), or a step whose follow-up was never published.
    """
    grace_s = services.settings.visibility_timeout_s + SWEEP_SLACK_S
    return now_ms() + int((expected_s + grace_s) * 1000)


def expected_turn_s(services: Services, backlog: int) -> float:
    """How long a cancel behind `backlog` others may wait for its DELETE slot."""
    rate = services.settings.cancel_rate
    return backlog * rate.period_s / rate.count * BACKLOG_SLACK


def _error(code: ErrorCode, message: str) -> dict[str, str]:
    return {"code": code.value, "message": message[:300]}


def _record_truth(services: Services, order_id: str, order: dict[str, Any]) -> Step | None:
    """Record what a status or cancel answer says; return a Step if it settles this delivery."""
    status = order["status"]
    store = services.store
    if status in EXCHANGE_TERMINAL:
        record = store.transition(order_id, OrderState(status), order=order, delete_in_flight=False)
        log.info("order.final", state=status)
        return Step(Next.DONE, record=record)
    if status == EXCHANGE_OPEN:
        return None
    if status != EXCHANGE_CANCEL_PENDING:
        # A status this version does not know: keep the snapshot, keep polling, never guess.
        log.warning("order.unknown_status", status=status)
    accepted: dict[str, Any] = (
        {"cancel_accepted": True} if status == EXCHANGE_CANCEL_PENDING else {}
    )
    record = store.transition(
        order_id, OrderState.CANCELLATION_RAISED, order=order, delete_in_flight=False, **accepted
    )
    store.schedule_check(order_id, watch_ms(services, services.settings.poll_initial_delay_s))
    return Step(Next.POLL, record=record)


def _fail(services: Services, order_id: str, code: ErrorCode, exc: Exception) -> Step:
    record = services.store.transition(
        order_id, OrderState.FAILED, error=_error(code, str(exc)), delete_in_flight=False
    )
    if code is ErrorCode.AUTH:
        log.error("order.failed_auth", error=str(exc))
    else:
        log.warning("order.failed", code=code.value, error=str(exc))
    return Step(Next.DONE, record=record)


def _not_found(services: Services, order_id: str, exc: OrderNotFound) -> Step | None:
    """Count a 'not found'; final only on the NOT_FOUND_CHECKS-th (a fresh order can lag)."""

    def bump(record: CancelRecord) -> CancelRecord:
        record.not_found += 1
        return record

    record = services.store.update(order_id, bump)
    if record is not None and record.not_found >= NOT_FOUND_CHECKS:
        return _fail(services, order_id, ErrorCode.ORDER_NOT_FOUND, exc)
    return None


def _read_status(services: Services, order_id: str, heartbeat: Heartbeat) -> dict[str, Any]:
    services.limiter.acquire(STATUS, heartbeat=heartbeat)
    try:
        return services.exchange.get_order(order_id)
    except RateLimited:
        services.limiter.pause(STATUS)
        raise


def execute_cancel(
    services: Services, order_id: str, exchange: str, *, owner: str, heartbeat: Heartbeat
) -> Step:
    """Send the DELETE for one order (at most once after it is accepted) and record the answer."""
    store = services.store
    record = store.get(order_id)
    if record is None:
        # Enqueued by name, not by request_cancel: record it, watched like any other.
        watch_at = watch_ms(services, expected_turn_s(services, 0))
        record, _ = store.create(order_id, exchange, watch_at_ms=watch_at)
    if record.is_final:
        return Step(Next.DONE, record=record)
    if record.cancel_accepted:
        return Step(Next.POLL, record=record)
    lease = services.keys.cancel_lease(order_id)
    if not services.leases.acquire(lease, owner, LEASE_TTL_MS):
        log.info("cancel.duplicate_delivery")
        return Step(Next.DONE, record=record)

    def beat() -> None:
        services.leases.acquire(lease, owner, LEASE_TTL_MS)
        heartbeat()

    try:
        return _cancel_loop(services, order_id, exchange, record, beat)
    finally:
        services.leases.release(lease, owner)


def _cancel_loop(
    services: Services,
    order_id: str,
    exchange: str,
    record: CancelRecord,
    beat: Heartbeat,
) -> Step:
    store = services.store
    for _ in range(MAX_SENDS_PER_TASK):
        if record.delete_in_flight:
            # An earlier DELETE's outcome is unknown: the status decides whether to re-send.
            try:
                settled = _record_truth(services, order_id, _read_status(services, order_id, beat))
            except (OutcomeUnknown, RateLimited):
                return Step(Next.RETRY, delay_s=services.settings.poll_max_delay_s)
            except AuthError as exc:
                return _fail(services, order_id, ErrorCode.AUTH, exc)
            except OrderNotFound as exc:
                settled = _not_found(services, order_id, exc) or Step(
                    Next.RETRY, delay_s=services.settings.poll_initial_delay_s
                )
            if settled is not None:
                return settled
        # Marked in flight before the wait, so only signing stands between the booked slot
        # and the send: a send that lands late crowds the sends booked one window later.
        updated = store.transition(
            order_id, record.state, attempts=record.attempts + 1, delete_in_flight=True
        )
        if updated is None or updated.is_final:
            return Step(Next.DONE, record=updated)
        record = updated
        services.limiter.acquire(CANCEL, heartbeat=beat)
        try:
            order = services.exchange.cancel_order(order_id, exchange)
        except OutcomeUnknown as exc:
            log.warning("cancel.outcome_unknown", error=str(exc), attempt=record.attempts)
            continue  # delete_in_flight stays set: the next turn reads the status first
        except RateLimited:
            services.limiter.pause(CANCEL)
            record = store.transition(order_id, record.state, delete_in_flight=False) or record
            continue
        except AuthError as exc:
            return _fail(services, order_id, ErrorCode.AUTH, exc)
        except (Refused, OrderNotFound) as exc:
            # Refused: already final, mid-cancel, or just placed. The status says which.
            log.info("cancel.refused", http_status=exc.status_code, error=str(exc))
            record = store.transition(order_id, record.state, delete_in_flight=False) or record
            try:
                truth = _read_status(services, order_id, beat)
            except (OutcomeUnknown, RateLimited):
                return Step(Next.RETRY, delay_s=services.settings.poll_max_delay_s)
            except AuthError as auth:
                return _fail(services, order_id, ErrorCode.AUTH, auth)
            except OrderNotFound as missing:
                return _not_found(services, order_id, missing) or Step(
                    Next.RETRY, delay_s=services.settings.poll_initial_delay_s
                )
            settled = _record_truth(services, order_id, truth)
            if settled is not None:
                return settled
            return Step(Next.RETRY, delay_s=REFUSED_OPEN_RETRY_S)
        settled = _record_truth(services, order_id, order)
        if settled is not None:
            return settled
        # 200 yet still RAISED: the exchange took the request; confirm by polling.
        store.transition(
            order_id,
            OrderState.CANCELLATION_RAISED,
            order=order,
            cancel_accepted=True,
            delete_in_flight=False,
        )
        return Step(Next.POLL)
    log.warning("cancel.attempts_exhausted", attempts=record.attempts)
    return give_to_sweeper(
        services,
        order_id,
        ErrorCode.EXCHANGE_UNAVAILABLE,
        "active attempts exhausted; re-checking slowly",
    )


def give_to_sweeper(services: Services, order_id: str, code: ErrorCode, message: str) -> Step:
    """Mark UNCONFIRMED and let the sweeper re-check slowly; never invent a final state."""
    record = services.store.transition(
        order_id, OrderState.UNCONFIRMED, error=_error(code, message)
    )
    services.store.schedule_check(
        order_id, now_ms() + int(services.settings.recheck_interval_s * 1000)
    )
    return Step(Next.DONE, record=record)


def poll_delay_s(services: Services, polls: int) -> float:
    """Growing, capped delay before the next status poll."""
    settings = services.settings
    return float(min(settings.poll_max_delay_s, settings.poll_initial_delay_s * 2**polls))


def execute_poll(
    services: Services,
    order_id: str,
    seq: int,
    *,
    owner: str,
    heartbeat: Heartbeat,
    recheck: bool = False,
) -> Step:
    """Read the order's status once and record it; say whether and when to poll again.

    `seq` numbers the polls of one order: a delivery whose `seq` is behind the record's is a
    stale duplicate and does nothing. `recheck` marks a slow re-check by the sweeper.
    """
    store = services.store
    record = store.get(order_id)
    if record is None or record.is_final or seq < record.poll_seq:
        return Step(Next.DONE, record=record)
    lease = services.keys.poll_lease(order_id)
    if not services.leases.acquire(lease, owner, LEASE_TTL_MS):
        return Step(Next.DONE, record=record)

    def beat() -> None:
        services.leases.acquire(lease, owner, LEASE_TTL_MS)
        heartbeat()

    try:
        record = store.get(order_id)  # re-read under the lease
        if record is None or record.is_final or seq < record.poll_seq:
            return Step(Next.DONE, record=record)
        return _poll_once(services, record, seq, beat, recheck)
    finally:
        services.leases.release(lease, owner)


def _poll_once(
    services: Services, record: CancelRecord, seq: int, beat: Heartbeat, recheck: bool
) -> Step:
    order_id = record.order_id
    try:
        order = _read_status(services, order_id, beat)
    except RateLimited:
        return _poll_again(services, record, seq, recheck)
    except OutcomeUnknown as exc:
        log.warning("poll.outcome_unknown", error=str(exc))
        return _poll_again(services, record, seq, recheck)
    except AuthError as exc:
        return _fail(services, order_id, ErrorCode.AUTH, exc)
    except OrderNotFound as exc:
        return _not_found(services, order_id, exc) or _poll_again(services, record, seq, recheck)
    status = order["status"]
    if status in EXCHANGE_TERMINAL:
        return _record_truth(services, order_id, order) or Step(Next.DONE)
    if status == EXCHANGE_OPEN and not record.cancel_accepted:
        # No DELETE ever took effect (refused, lost, or never sent): cancel again.
        services.store.transition(order_id, record.state, order=order)
        return Step(Next.RESEND, record=record)
    if status not in (EXCHANGE_OPEN, EXCHANGE_CANCEL_PENDING):
        log.warning("order.unknown_status", status=status)  # keep polling, never guess
    return _poll_again(services, record, seq, recheck, order=order)


def _poll_again(
    services: Services,
    record: CancelRecord,
    seq: int,
    recheck: bool,
    *,
    order: dict[str, Any] | None = None,
) -> Step:
    """Record a pending answer and schedule the next poll, or go UNCONFIRMED when spent."""
    settings = services.settings
    order_id = record.order_id
    accepted = record.cancel_accepted or (order or {}).get("status") == EXCHANGE_CANCEL_PENDING
    raised_at = next(
        (h["at"] for h in reversed(record.history) if h["state"] == "CANCELLATION_RAISED"),
        record.updated_at,
    )
    spent = record.polls + 1 >= settings.poll_max_attempts
    late = now_ms() - raised_at > settings.poll_deadline_s * 1000
    if recheck or spent or late or record.state is OrderState.UNCONFIRMED:
        if record.state is not OrderState.UNCONFIRMED:
            log.warning("poll.unconfirmed", polls=record.polls + 1)
        state, delay_s = OrderState.UNCONFIRMED, settings.recheck_interval_s
    else:
        state, delay_s = OrderState.CANCELLATION_RAISED, poll_delay_s(services, record.polls)
    services.store.transition(
        order_id,
        state,
        order=order,
        cancel_accepted=accepted,
        polls=record.polls + 1,
        poll_seq=seq + 1,
    )
    if state is OrderState.UNCONFIRMED:
        services.store.schedule_check(order_id, now_ms() + int(delay_s * 1000))
        return Step(Next.DONE)
    services.store.schedule_check(order_id, watch_ms(services, delay_s))
    return Step(Next.RETRY, delay_s=delay_s)


@dataclass(frozen=True)
class SweepItem:
    """One order the sweeper hands back to the workers: cancel it again, or poll it."""

    order_id: str
    exchange: str
    action: Next  # RESEND (still QUEUED: its cancel message may be lost) or POLL
    seq: int


def sweep(services: Services, *, limit: int) -> list[SweepItem]:
    """Find orders whose re-check is due; return what to enqueue for each (at most `limit`).

    Due orders are QUEUED ones long past their expected turn, UNCONFIRMED ones (slow
    re-check) and ones whose poll chain went quiet. Each is pushed back so the next sweep
    does not enqueue it again while the new message waits. Duplicates are harmless: every
    step checks the record and its lease first.
    """
    store = services.store
    ids = store.due(now_ms(), limit)
    backlog = int(services.redis.llen(CANCEL_QUEUE))
    items: list[SweepItem] = []
    for order_id, record in zip(ids, store.get_many(ids), strict=True):
        if record is None or record.is_final:
            store.unschedule(order_id)
            continue
        if record.state is OrderState.QUEUED:
            store.schedule_check(order_id, watch_ms(services, expected_turn_s(services, backlog)))
            items.append(SweepItem(order_id, record.exchange, Next.RESEND, record.poll_seq))
        else:
            later = now_ms() + int(services.settings.recheck_interval_s * 1000)
            store.schedule_check(order_id, later)
            items.append(SweepItem(order_id, record.exchange, Next.POLL, record.poll_seq))
    return items
