"""Where an order goes after a turn: the line its Step names.

A Step says CANCEL (a DELETE turn), CHECK (a look at its status) or DONE. An accepted order's
check goes to the order lists first (worker.confirmation), with a status read behind it; any
other check is a status read. A cancel keeps its place in line, ordered by request time.
"""

from __future__ import annotations

from worker.cancellation import Move, Step
from worker.confirmation import await_confirmation
from worker.models import Bucket, Priority
from worker.scheduler import Scheduler
from worker.services import Services


def follow(services: Services, scheduler: Scheduler, order_id: str, step: Step) -> None:
    """Queue the order for the turn a Step asks for (DONE queues nothing)."""
    if step.move is Move.DONE:
        return
    record = step.record or services.store.get(order_id)
    if record is None or record.is_final:
        return
    priority = Priority(record.priority)
    if step.move is Move.CHECK and record.cancel_accepted:
        # Accepted: the order lists may settle it with many others; a status read backs up.
        await_confirmation(services, scheduler, record, step.delay_s)
        return
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
