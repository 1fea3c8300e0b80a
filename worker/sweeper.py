"""The sweep: lost work goes back in line, and nothing unfinished is ever forgotten.

Every unfinished order and batch is watched (a time in a sorted set). One worker per
interval (worker.duties) looks at those whose time has passed, in a few round trips
whatever their number.
"""

from __future__ import annotations

import structlog

from worker.cancellation import put_back as put_back_decision
from worker.mass_cancel import sweep_batch
from worker.models import Bucket, CancelRecord, is_batch_id
from worker.records import now_ms
from worker.routing import follow
from worker.scheduler import Scheduler
from worker.services import Services

LEASE_SLACK_MS = 500  # after a task's lease ends, before the sweeper looks at its order
WAITING_RECHECK_S = 60.0  # the sweeper looks again this often at work waiting in line

log = structlog.get_logger(__name__)


def put_back(services: Services, scheduler: Scheduler, record: CancelRecord) -> None:
    """Put an unfinished order whose turn was lost back in line for its next step: its
    DELETE if none may have been sent, else a status read (which decides the rest)."""
    follow(services, scheduler, record.order_id, put_back_decision(record))
    services.store.schedule_check(record.order_id, now_ms() + services.watch_grace_ms)


def sweep(services: Services, scheduler: Scheduler, *, limit: int, ahead_ms: int = 0) -> int:
    """Put lost work back in line; return how many orders were re-queued.

    Every unfinished order is watched. When its watch time passes, the order is left alone
    if it is final, waits in a line, or a task holds it (looked at again when its lease
    ends: a task that lost Redis mid-turn cannot release it); otherwise its turn was
    lost (a message dropped between BRPOP and kombu's bookkeeping when a worker was killed,
    celery/celery#7950, or a dispatcher died between handing a turn out and publishing it)
    and it joins the line for its next step. Duplicates are harmless: every turn checks the
    record and its lease first. `ahead_ms` looks at work due that much later too (after a
    failover, when a turn handed out just before it may have been lost with the old primary).
    """
    store, keys = services.store, services.keys
    due = store.due(now_ms() + ahead_ms, limit)
    waiting_until = now_ms() + int(WAITING_RECHECK_S * 1000)
    requeued = sum(sweep_batch(services, i, waiting_until) for i in due if is_batch_id(i))
    ids = [i for i in due if not is_batch_id(i)]
    records = store.get_many(ids)
    lines = [
        (record.account if record is not None else "", bucket, order_id)
        for order_id, record in zip(ids, records, strict=True)
        for bucket in (Bucket.CANCEL, Bucket.STATUS)
    ]
    places = scheduler.waiting(lines)
    pipe = services.redis.pipeline(transaction=False)
    for order_id in ids:
        pipe.pttl(keys.cancel_lease(order_id))
        pipe.pttl(keys.poll_lease(order_id))
    leases = pipe.execute()
    gone: list[str] = []
    later: dict[str, int] = {}
    lost: list[CancelRecord] = []
    for i, (order_id, record) in enumerate(zip(ids, records, strict=True)):
        if record is None or record.is_final:
            gone.append(order_id)
        elif places[2 * i] or places[2 * i + 1]:
            later[order_id] = waiting_until
        elif leases[2 * i] != -2 or leases[2 * i + 1] != -2:
            # A task holds it: look again when its lease ends.
            held_ms = max(0, int(leases[2 * i]), int(leases[2 * i + 1]))
            later[order_id] = now_ms() + held_ms + LEASE_SLACK_MS
        else:
            lost.append(record)
    store.unschedule(gone)
    store.schedule_checks(later)
    for record in lost:
        put_back(services, scheduler, record)
        log.warning("sweep.requeued", order_id=record.order_id, state=record.state.value)
    return requeued + len(lost)
