"""An owner's cancel-all: its open orders and no one else's, with the fewest calls.

A cancel-all or a dead man's switch scoped to an owner (a strategy sharing the account,
worker.owners) cannot call the exchange's cancel-all as is: that takes every open order of a
symbol, the neighbours' too. So it reads before it sends:
1. the open orders of the symbols it guards (all of them when none is named: `*`), page by
   page, on turns of the Open Orders budget;
2. a plan, from what it read and whom each order is tracked to: a symbol where every open
   order is the owner's gets one cancel-all (a child batch, `parent` = this one); where
   anyone else's is open too (another owner's, or an order nobody tracked), the owner's go
   one by one, urgent, by DELETE; its orders already being cancelled are confirmed only.
   Never a cancel-all of the whole account, nor of a symbol the read did not name.
3. the plan is stored before anything is sent, so a worker that dies midway is replaced (by
   the sweeper) with one that sends the same plan: child ids are derived, records made once.
The batch is ACCEPTED once its plan is sent and DONE when every child batch and order it
sent is final (FAILED if a child's cancel-all was refused). An order of someone else that a
child's cancel-all moved anyway (placed after the read) is named in both batches and in an
event (worker.mass_cancel.accept).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from worker.batches import ALL_SYMBOLS, SCOPE_JOB, first_job
from worker.confirmation import await_many
from worker.errors import AuthError, OutcomeUnknown, RateLimited, Refused
from worker.exchange import LIST_LIMIT, LIST_WINDOW_MS
from worker.models import (
    EXCHANGE_CANCEL_PENDING,
    BatchRecord,
    BatchState,
    Bucket,
    CancelRecord,
    ErrorCode,
    OrderState,
    Priority,
    derived_batch_id,
)
from worker.owners import owners_of
from worker.records import Created, now_ms
from worker.services import Services
from worker.turns import Turn

MAX_SCOPE_PAGES = 10  # list pages read per symbol (500 orders); older ones are not seen

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Plan:
    """What an owner's cancel-all sends, decided from one read of the open orders."""

    whole: list[str]  # symbols holding only the owner's open orders: one cancel-all each
    orders: list[str]  # the owner's open orders where others' are open too: one DELETE each
    accepted: list[str]  # the owner's orders already being cancelled: confirmed only

    def to_dict(self) -> dict[str, list[str]]:
        """The form stored in the batch record."""
        return {"whole": self.whole, "orders": self.orders, "accepted": self.accepted}

    @classmethod
    def from_dict(cls, data: Mapping[str, list[str]]) -> Plan:
        """Rebuild a stored plan."""
        return cls(list(data["whole"]), list(data["orders"]), list(data["accepted"]))


def plan_scope(
    seen: Mapping[str, Mapping[str, Any]], owners: Mapping[str, str | None], owner: str
) -> Plan:
    """Decide the fewest calls that cancel the owner's open orders and no one else's.

    `seen` maps each open order read to its `symbol` and `status`; `owners` says whom each
    is tracked to. A symbol gets a cancel-all only if every open order seen in it is the
    owner's and one of them is not being cancelled already; an order without a symbol is
    never covered by a cancel-all.
    """
    by_symbol: dict[str, list[str]] = {}
    for order_id, order in seen.items():
        by_symbol.setdefault(str(order.get("symbol") or ""), []).append(order_id)
    whole: list[str] = []
    orders: list[str] = []
    accepted: list[str] = []
    for symbol, ids in by_symbol.items():
        mine = [i for i in ids if owners.get(i) == owner]
        pending = [i for i in mine if seen[i].get("status") == EXCHANGE_CANCEL_PENDING]
        still_open = [i for i in mine if i not in pending]
        accepted += pending
        if still_open and symbol and len(mine) == len(ids):
            whole.append(symbol)
        else:
            orders += still_open
    return Plan(sorted(whole), orders, accepted)


def scope_job(batch_id: str, target: str, cursor: int | None = None, page: int = 1) -> str:
    """The list-read job of one target (a symbol or `*`), at one page."""
    paging = "" if cursor is None else f"@{cursor}#{page}"
    return f"{SCOPE_JOB}:{batch_id}:{target}{paging}"


def parse_scope_job(job: str) -> tuple[str, str, int | None, int]:
    """(batch id, target, to_time or None, page number) of a list-read job."""
    _, batch_id, rest = job.split(":", 2)
    target, _, paging = rest.partition("@")
    if not paging:
        return batch_id, target, None, 1
    cursor, _, page = paging.partition("#")
    return batch_id, target, int(cursor), int(page)


def scope_turn(services: Services, job: str, turn: Turn, *, worker: str) -> None:
    """Use an Open Orders turn for an owner's cancel-all: read one page, then plan and send."""
    batch_id = parse_scope_job(job)[0]
    batch = services.batches.get(batch_id)
    if batch is None or batch.state is not BatchState.QUEUED or not batch.scoped:
        return
    lease = services.keys.batch_lease(batch_id)
    if not services.leases.acquire(lease, worker, services.lease_ttl_ms):
        return
    try:
        if batch.plan is not None:
            send_plan(services, batch)
        else:
            _read(services, batch, job, turn)
    finally:
        services.leases.release(lease, worker)


def _read(services: Services, batch: BatchRecord, job: str, turn: Turn) -> None:
    batch_id, target, to_time, page_no = parse_scope_job(job)
    if job != (batch.reading or first_job(batch)[1]):
        return  # a read put back twice: the batch has moved on
    if not turn.take():  # paused (a 429, no replica): read later, keeping the place
        _queue_read(services, batch, job)
        return
    client = services.exchange(batch.account)
    window = {}
    if to_time is not None:
        window = {"from_time": max(0, to_time - LIST_WINDOW_MS + 1), "to_time": to_time}
    try:
        page = turn.request(
            lambda: client.list_orders(
                closed=False,
                exchange=batch.exchange,
                symbol=None if target == ALL_SYMBOLS else target,
                **window,
            )
        )
    except (OutcomeUnknown, RateLimited) as exc:
        log.warning("scope.read_failed", batch_id=batch_id, target=target, error=str(exc))
        _queue_read(services, batch, job, delay_s=services.settings.poll_initial_delay_s)
        return
    except (AuthError, Refused) as exc:
        code = ErrorCode.AUTH if isinstance(exc, AuthError) else ErrorCode.REJECTED
        services.batches.transition(
            batch_id,
            BatchState.FAILED,
            reading=None,
            error={"code": code.value, "message": f"open orders of {target}: {exc}"[:300]},
        )
        log.warning("scope.failed", batch_id=batch_id, code=code.value, error=str(exc))
        return
    seen = dict(batch.seen)
    for order in page.orders:
        seen[str(order["order_id"]).lower()] = {
            "symbol": order.get("symbol"),
            "status": order["status"],
        }
    following = _following(batch, target, page.cursor, page_no, full=len(page.orders) >= LIST_LIMIT)
    if following is not None:
        services.batches.transition(batch_id, BatchState.QUEUED, seen=seen, reading=following)
        _queue_read(services, batch, following)
        return
    assert batch.owner is not None
    plan = plan_scope(seen, owners_of(services, list(seen)), batch.owner)
    log.info(
        "scope.planned",
        batch_id=batch_id,
        read=len(seen),
        cancel_alls=plan.whole,
        deletes=len(plan.orders),
        accepted=len(plan.accepted),
    )
    planned = services.batches.transition(
        batch_id, BatchState.QUEUED, seen=seen, reading=None, plan=plan.to_dict()
    )
    if planned is not None and planned.plan is not None:
        send_plan(services, planned)


def _following(
    batch: BatchRecord, target: str, cursor: int | None, page_no: int, *, full: bool
) -> str | None:
    """The next read: this target's next page, else the next target; None when all read."""
    if full and cursor is not None:
        if page_no < MAX_SCOPE_PAGES:
            return scope_job(batch.batch_id, target, cursor, page_no + 1)
        log.warning("scope.truncated", batch_id=batch.batch_id, target=target, pages=page_no)
    targets = batch.symbols or [ALL_SYMBOLS]
    at = targets.index(target) + 1 if target in targets else len(targets)
    return scope_job(batch.batch_id, targets[at]) if at < len(targets) else None


def _queue_read(services: Services, batch: BatchRecord, job: str, *, delay_s: float = 0.0) -> None:
    services.scheduler.join(
        batch.account,
        Bucket.OPEN_ORDERS,
        [job],
        priority=Priority(batch.priority),
        delay_s=delay_s,
    )


def send_plan(services: Services, batch: BatchRecord) -> None:
    """Send a stored plan (again, after a worker died: what exists already is not re-made)."""
    from worker.producer import publish

    assert batch.plan is not None
    plan, parent, scheduler = Plan.from_dict(batch.plan), batch.batch_id, services.scheduler
    batches, store = services.batches, services.store
    children = {derived_batch_id(parent, symbol): symbol for symbol in plan.whole}
    # Pending first: a child or an order that ends from now on clears its own entry.
    batches.track(parent, [*children, *plan.orders, *plan.accepted])
    at = now_ms()
    watch_at_ms = at + services.watch_grace_ms
    for child_id, symbol in children.items():
        child = BatchRecord.queued(
            child_id,
            account=batch.account,
            exchange=batch.exchange,
            symbol=symbol,
            priority=Priority(batch.priority),
            at=at,
            owner=batch.owner,
            parent=parent,
        )
        batches.create(child, scheduler, watch_at_ms=watch_at_ms)
    if plan.orders:
        fresh, known = _records(services, batch, plan.orders, watch_at_ms, accepted=False)
        publish(services, scheduler, fresh.turns)
        _adopt(services, batch, known)
    if plan.accepted:
        fresh, known = _records(services, batch, plan.accepted, watch_at_ms, accepted=True)
        made = [r for r, new in zip(fresh.records, fresh.created, strict=True) if new]
        await_many(services, scheduler, made, services.settings.poll_initial_delay_s)
        _adopt(services, batch, known)
    # What ended before it was tracked, or is another's to follow, is not pending.
    ids = [*plan.orders, *plan.accepted]
    records = dict(zip(ids, store.get_many(ids), strict=True))
    ended = [
        i
        for i, record in records.items()
        if record is None or record.is_final or record.batch_id != parent
    ]
    ended += [i for i in children if (b := batches.get(i)) is None or b.is_final]
    batches.untrack(parent, ended)
    batches.transition(
        parent,
        BatchState.ACCEPTED,
        batches=list(children),
        orders_ids=ids,
        reading=None,
    )
    batches.finish_if_done(parent)


def _records(
    services: Services, batch: BatchRecord, ids: list[str], watch_at_ms: int, *, accepted: bool
) -> tuple[Created, list[CancelRecord]]:
    """Records for the plan's orders, urgent, followed by the batch; and those that existed."""
    made = services.store.create_many(
        ids,
        batch.exchange,
        services.scheduler,
        account=batch.account,
        priority=Priority.URGENT,
        owner=batch.owner,
        watch_at_ms=watch_at_ms,
        batch_id=batch.batch_id,
        accepted=accepted,
    )
    return made, [r for r, new in zip(made.records, made.created, strict=True) if not new]


def _adopt(services: Services, batch: BatchRecord, records: list[CancelRecord]) -> None:
    """Orders the owner had asked to cancel already: this batch follows them, urgent."""
    raised: list[str] = []

    def change(record: CancelRecord) -> CancelRecord | None:
        if record.is_final or record.batch_id not in (None, batch.batch_id):
            return None
        record.batch_id = batch.batch_id
        if record.state is OrderState.QUEUED and record.priority != Priority.URGENT.value:
            record.priority = Priority.URGENT.value
            raised.append(record.order_id)
        return record

    for record in records:
        services.store.update(record.order_id, change, services.scheduler)
    if raised:
        services.scheduler.upgrade(batch.account, Bucket.CANCEL, raised, Priority.URGENT)


def sweep_scoped(services: Services, batch: BatchRecord, waiting_until_ms: int) -> bool:
    """Put a scoped batch whose read or plan was lost back on its way; True if it was."""
    if batch.plan is None:
        job = batch.reading or first_job(batch)[1]
        leased = services.redis.exists(services.keys.batch_lease(batch.batch_id))
        if leased or any(services.scheduler.waiting([(batch.account, Bucket.OPEN_ORDERS, job)])):
            services.store.schedule_check(batch.batch_id, waiting_until_ms)
            return False
        services.store.schedule_check(batch.batch_id, now_ms() + services.watch_grace_ms)
        _queue_read(services, batch, job)
    else:
        lease = services.keys.batch_lease(batch.batch_id)
        if not services.leases.acquire(lease, "sweeper", services.lease_ttl_ms):
            services.store.schedule_check(batch.batch_id, waiting_until_ms)
            return False
        try:
            send_plan(services, batch)
        finally:
            services.leases.release(lease, "sweeper")
    log.warning("sweep.requeued_batch", batch_id=batch.batch_id, state=batch.state.value)
    return True
