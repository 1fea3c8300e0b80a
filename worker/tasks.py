"""Thin Celery tasks: check the message, bind log context, call cancellation, follow its Step.

Retries are driven by the Step a plain function returns (never by matching strings). Any
unexpected error still leaves a record: the order goes UNCONFIRMED and the sweeper re-checks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from worker.cancellation import Next, Step, execute_cancel, execute_poll, sweep
from worker.celery_app import CANCEL_TASK, POLL_TASK, SWEEP_TASK, app, fleet_rates, settings
from worker.errors import InvalidRequest
from worker.keys import KOMBU_UNACKED_INDEX
from worker.models import (
    DEFAULT_EXCHANGE,
    ErrorCode,
    OrderState,
    validate_exchange,
    validate_order_id,
)
from worker.records import now_ms
from worker.services import Services

log = structlog.get_logger(__name__)

_services: Services | None = None
_services_lock = threading.Lock()


def get_services() -> Services:
    """This process's Services, built on first use (after any fork)."""
    global _services
    with _services_lock:
        if _services is None:
            _services = Services(settings, rates=fleet_rates(app))
        return _services


def _owner(task: Any) -> str:
    return f"{task.request.id}:{task.request.retries}"


def _heartbeat(task: Any, services: Services) -> Callable[[], None]:
    """Keep this delivery from being handed out again while it is still being worked on."""
    tag = (task.request.properties or {}).get("delivery_tag")

    def beat() -> None:
        if tag:
            services.redis.zadd(KOMBU_UNACKED_INDEX, {tag: time.time()}, xx=True)

    return beat


def _dead_letter(task: Any, exc: InvalidRequest) -> None:
    """Keep an unusable message for an operator instead of retrying it forever."""
    services = get_services()
    entry = {
        "task": task.name,
        "task_id": task.request.id,
        "args": repr(task.request.args)[:500],
        "kwargs": repr(task.request.kwargs)[:500],
        "error": str(exc),
        "at": now_ms(),
    }
    services.redis.rpush(
        services.keys.dead_letters, structlog.processors.JSONRenderer()(None, "", entry)
    )
    log.error("task.dead_letter", **entry)


def _unexpected(services: Services, order_id: str, exc: Exception) -> None:
    """Record an unexpected failure so the order is never left without a record."""
    log.exception("task.unexpected_error", error=str(exc))
    services.store.transition(
        order_id,
        OrderState.UNCONFIRMED,
        error={"code": ErrorCode.INTERNAL.value, "message": f"{type(exc).__name__}: {exc}"[:300]},
    )
    services.store.schedule_check(order_id, now_ms() + int(settings.recheck_interval_s * 1000))


def _enqueue_poll(order_id: str, exchange: str, seq: int, delay_s: float) -> None:
    poll_order_status.apply_async((order_id, exchange), {"seq": seq}, countdown=delay_s)


def _follow(task: Any, step: Step, order_id: str, exchange: str, seq: int) -> None:
    """Do what a Step asks: start polling, re-send the cancel, or run this task again."""
    if step.next is Next.POLL:
        record_seq = step.record.poll_seq if step.record is not None else 0
        _enqueue_poll(order_id, exchange, record_seq, settings.poll_initial_delay_s)
    elif step.next is Next.RESEND:
        cancel_order.apply_async((order_id, exchange))
    elif step.next is Next.RETRY:
        kwargs = dict(task.request.kwargs or {})
        if task.name == POLL_TASK:
            kwargs["seq"] = seq + 1
        raise task.retry(
            args=(order_id, exchange), kwargs=kwargs, countdown=step.delay_s, max_retries=None
        )


@app.task(name=CANCEL_TASK, bind=True, max_retries=None)
def cancel_order(self: Any, order_id: Any, exchange: Any = DEFAULT_EXCHANGE) -> str:
    """Cancel one order: send the signed DELETE within the fleet budget, then start polling."""
    try:
        order_id, exchange = validate_order_id(order_id), validate_exchange(exchange)
    except InvalidRequest as exc:
        _dead_letter(self, exc)
        return "dead_letter"
    services = get_services()
    with structlog.contextvars.bound_contextvars(
        order_id=order_id, task_id=self.request.id, attempt=self.request.retries
    ):
        try:
            step = execute_cancel(
                services,
                order_id,
                exchange,
                owner=_owner(self),
                heartbeat=_heartbeat(self, services),
            )
        except Exception as exc:  # recorded as UNCONFIRMED for the sweeper, never lost
            _unexpected(services, order_id, exc)
            return "unexpected_error"
        _follow(self, step, order_id, exchange, seq=0)
        return step.next.value


@app.task(name=POLL_TASK, bind=True, max_retries=None)
def poll_order_status(
    self: Any, order_id: Any, exchange: Any = DEFAULT_EXCHANGE, seq: Any = 0, recheck: Any = False
) -> str:
    """Read the order's status once; retry with a growing countdown until it is final."""
    try:
        order_id, exchange = validate_order_id(order_id), validate_exchange(exchange)
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise InvalidRequest("seq", seq, "must be a non-negative integer")
    except InvalidRequest as exc:
        _dead_letter(self, exc)
        return "dead_letter"
    services = get_services()
    with structlog.contextvars.bound_contextvars(
        order_id=order_id, task_id=self.request.id, attempt=self.request.retries, seq=seq
    ):
        try:
            step = execute_poll(
                services,
                order_id,
                seq,
                owner=_owner(self),
                heartbeat=_heartbeat(self, services),
                recheck=bool(recheck),
            )
        except Exception as exc:  # recorded as UNCONFIRMED for the sweeper, never lost
            _unexpected(services, order_id, exc)
            return "unexpected_error"
        _follow(self, step, order_id, exchange, seq)
        return step.next.value


@app.task(name=SWEEP_TASK)
def sweep_due() -> int:
    """Enqueue slow re-checks of UNCONFIRMED orders and of polls that went quiet."""
    services = get_services()
    items = sweep(services, limit=settings.status_rate.count)
    for item in items:
        poll_order_status.apply_async(
            (item.order_id, item.exchange), {"seq": item.seq, "recheck": True}
        )
    if items:
        log.info("sweep.enqueued", count=len(items))
    return len(items)
