"""Where an order goes after a turn: the line its decision names, joined in the same write.

A decision says CANCEL (a DELETE turn), CHECK (a look at its status) or DONE. An accepted
order's check goes to the order lists first (worker.confirmation), with a status read behind
it; any other check is a status read. A cancel keeps its place in line, ordered by request
time. Every line is joined as the order's owner's, so owners keep their shares.
"""

from __future__ import annotations

from worker.cancellation import Decision, Move
from worker.confirmation import confirm_step
from worker.models import CancelRecord, Priority
from worker.records import Next
from worker.scheduler import Scheduler
from worker.services import Services
from worker.settings import Settings


def next_of(
    record: CancelRecord, decision: Decision, settings: Settings, scheduler: Scheduler
) -> Next | None:
    """The line a decision sends the order to (None: done, or final)."""
    if decision.move is Move.DONE or record.is_final:
        return None
    priority, owner = Priority(record.priority), record.owner or ""
    delay_ms = round((decision.delay_s or 0.0) * 1000)
    if decision.move is Move.CANCEL:
        return Next("cancel", priority, owner, delay_ms, since_ms=record.requested_at)
    if record.cancel_accepted:
        # Accepted: the order lists may settle it with many others; a status read backs up.
        learned = decision.delay_s is None
        return confirm_step(record, -1 if learned else delay_ms, scheduler, settings)
    return Next("status", priority, owner, delay_ms)


def follow(services: Services, scheduler: Scheduler, order_id: str, decision: Decision) -> None:
    """Queue an order for the turn a decision asks for, storing nothing else (a lost turn
    put back, a turn this worker cannot use)."""
    settings = services.settings

    def step(record: CancelRecord) -> tuple[CancelRecord | None, Next | None]:
        return decision.record, next_of(decision.record or record, decision, settings, scheduler)

    services.store.update(order_id, step, scheduler)
