"""Cancel-all: one request takes every open order of a symbol (or of the account) off the book.

Why: at 10 DELETEs a minute a hundred orders take ten minutes; the exchange's Cancel All, a
budget of its own (10 a minute), sends every open order of a symbol for cancellation in one
call. A batch waits in its account's cancel-all line like any job; on its turn it sends one
POST, and every order the exchange names gets its own cancel record, confirmed like any other
(through the order lists first). Cancel-all runs only when asked for (or when a dead man's
switch armed for it fires): it never cancels an order nobody asked to cancel.

The rule that matters most: an unknown outcome (5xx, timeout, bad JSON) is resolved before
any second call, because a second cancel-all would also cancel orders placed since the first.
The order lists tell, since a cancel-all moves every open order at once:
- an order created well before the send (more than the clocks may differ) is still RAISED:
  it did not take effect, and the batch queues for another cancel-all turn;
- orders it moved (CANCELLATION_RAISED in the open list, or closed since the send in the
  closed list): it did, and those become the batch's orders;
- neither, but orders created just before the send are still open: it did not reach them,
  and exactly those are cancelled one by one (never a second cancel-all, which could take
  orders placed since).
"""

from __future__ import annotations

from typing import Any

import structlog

from worker.cancellation import settled
from worker.confirmation import CLOCK_SKEW_MS, await_many
from worker.errors import AuthError, OutcomeUnknown, RateLimited, Refused
from worker.exchange import LIST_LIMIT, LIST_WINDOW_MS
from worker.models import (
    EXCHANGE_CANCEL_PENDING,
    EXCHANGE_OPEN,
    EXCHANGE_TERMINAL,
    BatchRecord,
    BatchState,
    Bucket,
    CancelRecord,
    ErrorCode,
    OrderState,
    Priority,
)
from worker.owners import owners_of
from worker.records import now_ms
from worker.scoped import sweep_scoped
from worker.services import Services
from worker.turns import Turn

RESOLVE_OPEN = "resolve-open"  # job `resolve-open:<batch_id>[@to_time#page]`
RESOLVE_CLOSED = "resolve-closed"
MAX_RESOLVE_PAGES = 4  # list pages read per phase to find out what a lost cancel-all did

log = structlog.get_logger(__name__)


def _error(code: ErrorCode, message: str) -> dict[str, str]:
    return {"code": code.value, "message": message[:300]}


def queue_batch(services: Services, batch: BatchRecord, *, resolve: bool = False) -> None:
    """Put a batch in line: for a cancel-all turn, or to find out what a lost one did."""
    priority = Priority(batch.priority)
    if resolve:
        job = f"{RESOLVE_OPEN}:{batch.batch_id}"
        services.scheduler.join(batch.account, Bucket.OPEN_ORDERS, [job], priority=priority)
    else:
        services.scheduler.join(
            batch.account,
            Bucket.CANCEL_ALL,
            [batch.batch_id],
            priority=priority,
            since_ms=batch.requested_at,
        )


def cancel_all_turn(services: Services, batch_id: str, turn: Turn, *, owner: str) -> None:
    """Use a cancel-all turn: send the batch's one POST and record what the exchange did."""
    batches = services.batches
    batch = batches.get(batch_id)
    if batch is None or batch.state is not BatchState.QUEUED:
        return
    if batch.in_flight:
        # A cancel-all was sent and its worker died before recording the answer.
        _lost(services, batch, "the worker sending it stopped")
        return
    lease = services.keys.batch_lease(batch_id)
    if not services.leases.acquire(lease, owner, services.lease_ttl_ms):
        return
    try:
        _send(services, batch, turn)
    finally:
        services.leases.release(lease, owner)


def _send(services: Services, batch: BatchRecord, turn: Turn) -> None:
    batches, batch_id = services.batches, batch.batch_id
    batches.transition(batch_id, BatchState.QUEUED, attempts=batch.attempts + 1, in_flight=True)
    if not turn.take():  # paused (a 429, no replica): queue again, keeping the place
        batches.transition(batch_id, BatchState.QUEUED, attempts=batch.attempts, in_flight=False)
        queue_batch(services, batch)
        return
    batches.transition(batch_id, BatchState.QUEUED, sent_at=turn.sent_at_ms)
    client = services.exchange(batch.account)
    try:
        ids = turn.request(lambda: client.cancel_all(batch.exchange, batch.symbol))
    except OutcomeUnknown as exc:
        sent = batches.get(batch_id) or batch
        _lost(services, sent, str(exc))
        return
    except RateLimited:
        batches.transition(batch_id, BatchState.QUEUED, in_flight=False)
        queue_batch(services, batch)
        return
    except AuthError as exc:
        _fail(services, batch, ErrorCode.AUTH, str(exc))
        return
    except Refused as exc:
        _fail(services, batch, ErrorCode.REJECTED, str(exc))
        return
    log.info("cancel_all.accepted", batch_id=batch_id, orders=len(ids))
    accept(services, batch, {order_id: None for order_id in ids}, reconstructed=False)


def _fail(services: Services, batch: BatchRecord, code: ErrorCode, message: str) -> None:
    services.batches.transition(
        batch.batch_id, BatchState.FAILED, error=_error(code, message), in_flight=False
    )
    log_call = log.error if code is ErrorCode.AUTH else log.warning
    log_call("cancel_all.failed", batch_id=batch.batch_id, code=code.value, error=message)


def _lost(services: Services, batch: BatchRecord, why: str) -> None:
    """The answer was lost: find out from the order lists before anything else is sent."""
    log.warning("cancel_all.outcome_unknown", batch_id=batch.batch_id, error=why)
    services.batches.transition(
        batch.batch_id,
        BatchState.UNCONFIRMED,
        in_flight=True,
        error=_error(ErrorCode.EXCHANGE_UNAVAILABLE, f"outcome unknown: {why}"),
    )
    queue_batch(services, batch, resolve=True)


def accept(
    services: Services,
    batch: BatchRecord,
    orders: dict[str, dict[str, Any] | None],
    *,
    reconstructed: bool,
) -> None:
    """Give every order the exchange sent for cancellation its record, and confirm each.

    `orders` maps ids to a snapshot when a list showed one (a final one is recorded as is).
    An order already being cancelled on its own is marked accepted: no DELETE will follow.
    """
    store, batch_id, scheduler = services.store, batch.batch_id, services.scheduler
    ids = list(orders)
    made = store.create_many(
        ids,
        batch.exchange,
        scheduler,
        account=batch.account,
        priority=Priority(batch.priority),
        watch_at_ms=now_ms() + services.watch_grace_ms,
        batch_id=batch_id,
        accepted=True,
    )
    records, created = made.records, made.created
    joined: list[CancelRecord] = []
    for record, new in zip(records, created, strict=True):
        if new:
            joined.append(record)
        elif not record.is_final:
            claimed = _claim(services, record.order_id, batch_id)
            if claimed is not None and not claimed.is_final and claimed.batch_id == batch_id:
                joined.append(claimed)
    services.batches.track(batch_id, [r.order_id for r in joined])
    if batch.owner is not None:
        _name_foreign(services, batch, ids)
    services.batches.transition(
        batch_id,
        BatchState.ACCEPTED,
        orders_ids=ids,
        reconstructed=reconstructed,
        in_flight=False,
        error=None,
    )
    pending = []
    for record in joined:
        snapshot = orders.get(record.order_id)
        if snapshot is not None and snapshot["status"] in EXCHANGE_TERMINAL:
            store.update(record.order_id, lambda r, o=snapshot: settled(r, o).record, scheduler)
        else:
            pending.append(record)
    initial_s = services.settings.poll_initial_delay_s
    await_many(services, scheduler, pending, initial_s)
    services.batches.finish_if_done(batch_id)


def _name_foreign(services: Services, batch: BatchRecord, ids: list[str]) -> None:
    """An owner's cancel-all moved orders that are not its owner's (placed, or tracked to
    someone else, after the open orders were read): name them, so their owners can act."""
    foreign = [
        {"order_id": order_id, "owner": owner}
        for order_id, owner in owners_of(services, ids).items()
        if owner != batch.owner
    ]
    if foreign:
        log.warning("cancel_all.moved_foreign", batch_id=batch.batch_id, orders=len(foreign))
        services.batches.name_foreign(batch, foreign)


def _claim(services: Services, order_id: str, batch_id: str) -> CancelRecord | None:
    """Mark an order already being cancelled on its own as sent by this cancel-all (unless
    another batch follows it already)."""

    def change(record: CancelRecord) -> CancelRecord | None:
        if record.is_final or record.batch_id not in (None, batch_id):
            return None
        record.cancel_accepted = True
        record.batch_id = batch_id
        if record.state is OrderState.QUEUED:
            record.state = OrderState.CANCELLATION_RAISED
        return record

    return services.store.update(order_id, change, services.scheduler)


def resolve_turn(services: Services, job: str, turn: Turn) -> None:
    """Use an order-list turn to find out what a lost cancel-all did (one page per turn)."""
    phase, rest = job.split(":", 1)
    batch_id, _, paging = rest.partition("@")
    batch = services.batches.get(batch_id)
    if batch is None or batch.state is not BatchState.UNCONFIRMED or batch.sent_at is None:
        return
    closed = phase == RESOLVE_CLOSED
    sent_at = batch.sent_at
    to_time = int(paging.split("#")[0]) if paging else sent_at + CLOCK_SKEW_MS
    page_no = int(paging.split("#")[1]) if paging else 1
    if not turn.take():
        _resolve_next(services, batch, phase, None, page_no)
        return
    client = services.exchange(batch.account)
    try:
        page = turn.request(
            lambda: client.list_orders(
                closed=closed,
                exchange=batch.exchange,
                symbol=batch.symbol,
                from_time=max(0, to_time - LIST_WINDOW_MS + 1),
                to_time=to_time,
            )
        )
    except (OutcomeUnknown, RateLimited) as exc:
        log.warning("cancel_all.resolve_failed", batch_id=batch_id, phase=phase, error=str(exc))
        _resolve_next(services, batch, phase, None, page_no, retry=True)
        return
    except (Refused, AuthError) as exc:  # will not pass on a retry soon: look again slowly
        log.error("cancel_all.resolve_refused", batch_id=batch_id, phase=phase, error=str(exc))
        _resolve_next(services, batch, phase, None, page_no, retry=True, slow=True)
        return
    before = sent_at - CLOCK_SKEW_MS
    if not closed and any(
        o["status"] == EXCHANGE_OPEN and int(o.get("created_at", sent_at)) <= before
        for o in page.orders
    ):
        # An order open well before the send is still open: the cancel-all did not happen.
        log.info("cancel_all.not_applied", batch_id=batch_id)
        services.batches.transition(
            batch_id, BatchState.QUEUED, in_flight=False, found={}, error=None
        )
        queue_batch(services, batch)
        return
    found = dict(batch.found)
    for order in page.orders:
        order_id, status = str(order["order_id"]).lower(), order["status"]
        created = int(order.get("created_at", 0))
        if closed:
            moved = status in EXCHANGE_TERMINAL and int(order.get("updated_at", 0)) >= before
            if moved and created <= sent_at + CLOCK_SKEW_MS:
                found[order_id] = order
        elif status == EXCHANGE_CANCEL_PENDING and created <= sent_at + CLOCK_SKEW_MS:
            found[order_id] = order
        elif status == EXCHANGE_OPEN and created <= sent_at:
            found[order_id] = order  # open just before the send: kept apart below
    services.batches.transition(batch_id, BatchState.UNCONFIRMED, found=found)
    more = len(page.orders) >= LIST_LIMIT and page.cursor is not None
    _resolve_next(services, batch, phase, page.cursor if more else None, page_no, found=found)


def _resolve_next(
    services: Services,
    batch: BatchRecord,
    phase: str,
    cursor: int | None,
    page_no: int,
    *,
    retry: bool = False,
    slow: bool = False,
    found: dict[str, Any] | None = None,
) -> None:
    """Read the next page, the next phase, or conclude what the cancel-all did."""
    bucket = Bucket.CLOSED_ORDERS if phase == RESOLVE_CLOSED else Bucket.OPEN_ORDERS
    priority = Priority(batch.priority)
    if retry or (cursor is not None and page_no < MAX_RESOLVE_PAGES):
        paging = "" if cursor is None else f"@{cursor}#{page_no + 1}"
        settings = services.settings
        delay_s = 0.0
        if retry:
            delay_s = settings.recheck_interval_s if slow else settings.poll_initial_delay_s
        job = f"{phase}:{batch.batch_id}{paging}"
        services.scheduler.join(batch.account, bucket, [job], priority=priority, delay_s=delay_s)
        return
    if phase == RESOLVE_OPEN:
        job = f"{RESOLVE_CLOSED}:{batch.batch_id}"
        services.scheduler.join(batch.account, Bucket.CLOSED_ORDERS, [job], priority=priority)
        return
    found = dict(found or {})
    moved = {i: o for i, o in found.items() if o["status"] != EXCHANGE_OPEN}
    if moved or not found:
        log.info("cancel_all.applied", batch_id=batch.batch_id, orders=len(moved))
        accept(services, batch, moved, reconstructed=True)
    else:
        log.info("cancel_all.not_applied_recent", batch_id=batch.batch_id, orders=len(found))
        cancel_each(services, batch, list(found))


def cancel_each(services: Services, batch: BatchRecord, order_ids: list[str]) -> None:
    """The cancel-all did not reach these orders: cancel each with its own DELETE."""
    services.store.create_many(
        order_ids,
        batch.exchange,
        services.scheduler,
        account=batch.account,
        priority=Priority(batch.priority),
        watch_at_ms=now_ms() + services.watch_grace_ms,
        batch_id=batch.batch_id,
        hand_out=False,  # a dispatcher hands their turns out
    )
    services.batches.track(batch.batch_id, [])
    services.batches.transition(
        batch.batch_id,
        BatchState.ACCEPTED,
        orders_ids=order_ids,
        reconstructed=True,
        in_flight=False,
        error=None,
    )
    services.batches.finish_if_done(batch.batch_id)


def sweep_batch(services: Services, batch_id: str, waiting_until_ms: int) -> bool:
    """Put a batch whose turn was lost back in line; return True if it was re-queued.

    Left alone: a final batch (unwatched), an accepted one (its orders are watched; it ends
    when they do), and one waiting in a line or held by a task.
    """
    store, keys = services.batches, services.keys
    batch = store.get(batch_id)
    if batch is None or batch.is_final:
        services.store.unschedule([batch_id])
        return False
    if batch.scoped and batch.state is BatchState.QUEUED:
        return sweep_scoped(services, batch, waiting_until_ms)
    if batch.state is BatchState.ACCEPTED:
        if store.finish_if_done(batch_id) is None:
            services.store.schedule_check(batch_id, waiting_until_ms)
        return False
    account = batch.account
    places = services.scheduler.waiting(
        [
            (account, Bucket.CANCEL_ALL, batch_id),
            (account, Bucket.OPEN_ORDERS, f"{RESOLVE_OPEN}:{batch_id}"),
            (account, Bucket.CLOSED_ORDERS, f"{RESOLVE_CLOSED}:{batch_id}"),
        ]
    )
    leased = services.redis.exists(keys.batch_lease(batch_id))
    if leased or any(places):
        services.store.schedule_check(batch_id, waiting_until_ms)
        return False
    services.store.schedule_check(batch_id, now_ms() + services.watch_grace_ms)
    if batch.state is BatchState.QUEUED and not batch.in_flight:
        queue_batch(services, batch)
    elif batch.state is BatchState.QUEUED:
        _lost(services, batch, "the worker sending it stopped")
    else:  # UNCONFIRMED: find out again, from the first page
        store.transition(batch_id, BatchState.UNCONFIRMED, found={})
        queue_batch(services, batch, resolve=True)
    log.warning("sweep.requeued_batch", batch_id=batch_id, state=batch.state.value)
    return True
