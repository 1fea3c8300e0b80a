"""Thin Celery tasks: check the message, bind log context, call cancellation, follow its Step.

Retries are driven by the Step a plain function returns (never by matching strings). Any
unexpected error still leaves a record: the order goes UNCONFIRMED and the sweeper re-checks.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import redis
import structlog
from celery.exceptions import Reject, Retry
from kombu.exceptions import OperationalError

from worker.cancellation import (
    Next,
    Step,
    execute_cancel,
    execute_poll,
    give_to_sweeper,
    sweep,
)
from worker.celery_app import CANCEL_TASK, POLL_TASK, SWEEP_TASK, app, fleet_rates, settings
from worker.errors import InvalidRequest
from worker.keys import KOMBU_UNACKED_INDEX
from worker.models import (
    DEFAULT_EXCHANGE,
    ErrorCode,
    validate_exchange,
    validate_order_id,
)
from worker.records import now_ms
from worker.services import Services

REDIS_RETRY_PAUSE_S = 1.0  # pause before handing a message back after a Redis failure

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


@dataclass(frozen=True)
class Message:
    """The validated arguments of a cancel or poll message."""

    order_id: str
    exchange: str = DEFAULT_EXCHANGE
    seq: int = 0
    recheck: bool = False


def parse_message(args: tuple[Any, ...], kwargs: dict[str, Any], *, poll: bool) -> Message:
    """Validate a task message's arguments (they may come from any producer, in any shape)."""
    names = ("order_id", "exchange", "seq", "recheck") if poll else ("order_id", "exchange")
    if len(args) > len(names):
        raise InvalidRequest("args", list(args), f"takes at most {len(names)} arguments")
    values: dict[str, Any] = dict(zip(names, args, strict=False))
    for name, value in kwargs.items():
        if name not in names or name in values:
            raise InvalidRequest(name, value, "is not an argument of this task (or repeated)")
        values[name] = value
    if "order_id" not in values:
        raise InvalidRequest("order_id", None, "is required")
    seq = values.get("seq", 0)
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise InvalidRequest("seq", seq, "must be a non-negative integer")
    recheck = values.get("recheck", False)
    if not isinstance(recheck, bool):
        raise InvalidRequest("recheck", recheck, "must be a boolean")
    return Message(
        order_id=validate_order_id(values["order_id"]),
        exchange=validate_exchange(values.get("exchange", DEFAULT_EXCHANGE)),
        seq=seq,
        recheck=recheck,
    )


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
    services.redis.rpush(services.keys.dead_letters, json.dumps(entry))
    log.error("task.dead_letter", **entry)


def _unexpected(services: Services, order_id: str, exc: Exception) -> None:
    """Record an unexpected failure so the order is never left without a record."""
    log.exception("task.unexpected_error", error=str(exc))
    give_to_sweeper(services, order_id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")


def _follow(task: Any, step: Step, message: Message) -> None:
    """Do what a Step asks: start polling, re-send the cancel, or run this task again."""
    if step.next is Next.POLL:
        record_seq = step.record.poll_seq if step.record is not None else 0
        poll_order_status.apply_async(
            (message.order_id, message.exchange),
            {"seq": record_seq},
            countdown=settings.poll_initial_delay_s,
        )
    elif step.next is Next.RESEND:
        cancel_order.apply_async((message.order_id, message.exchange))
    elif step.next is Next.RETRY:
        kwargs = {"seq": message.seq + 1} if task.name == POLL_TASK else {}
        raise task.retry(
            args=(message.order_id, message.exchange),
            kwargs=kwargs,
            countdown=step.delay_s,
            max_retries=None,
        )


def _redis_down(exc: Exception) -> NoReturn:
    """Redis failed mid-task: put the message back rather than lose it.

    If Redis is still down, the reject cannot reach it either and the message stays in the
    unacked set, which Redis hands out again after the visibility timeout.
    """
    log.warning("task.redis_unavailable", error=str(exc))
    time.sleep(REDIS_RETRY_PAUSE_S)
    raise Reject(exc, requeue=True)


def _run(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, poll: bool) -> str:
    """Parse the message, run one cancel or poll step, and follow it; never lose the order."""
    try:
        message = parse_message(args, kwargs, poll=poll)
    except InvalidRequest as exc:
        _dead_letter(task, exc)
        return "dead_letter"
    services = get_services()
    context = {"order_id": message.order_id, "task_id": task.request.id}
    with structlog.contextvars.bound_contextvars(**context, attempt=task.request.retries):
        beat = _heartbeat(task, services)
        try:
            if poll:
                step = execute_poll(
                    services,
                    message.order_id,
                    message.seq,
                    owner=_owner(task),
                    heartbeat=beat,
                    recheck=message.recheck,
                )
            else:
                step = execute_cancel(
                    services, message.order_id, message.exchange, owner=_owner(task), heartbeat=beat
                )
            _follow(task, step, message)
        except Retry:
            raise
        except (redis.RedisError, OperationalError) as exc:
            _redis_down(exc)
        except Exception as exc:  # recorded as UNCONFIRMED for the sweeper, never lost
            try:
                _unexpected(services, message.order_id, exc)
            except (redis.RedisError, OperationalError) as redis_exc:
                _redis_down(redis_exc)
            return "unexpected_error"
        return step.next.value


@app.task(name=CANCEL_TASK, bind=True, max_retries=None)
def cancel_order(self: Any, *args: Any, **kwargs: Any) -> str:
    """Cancel one order: send the signed DELETE within the fleet budget, then start polling.

    Arguments (JSON): `order_id` (UUID string), `exchange` (optional, default EXCHANGE_2).
    """
    return _run(self, args, kwargs, poll=False)


@app.task(name=POLL_TASK, bind=True, max_retries=None)
def poll_order_status(self: Any, *args: Any, **kwargs: Any) -> str:
    """Read the order's status once; retry with a growing countdown until it is final.

    Arguments (JSON): `order_id`, `exchange`, and keyword `seq` (poll number, from 0).
    """
    return _run(self, args, kwargs, poll=True)


@app.task(name=SWEEP_TASK)
def sweep_due() -> int:
    """Enqueue slow re-checks of UNCONFIRMED orders and of polls that went quiet."""
    services = get_services()
    items = sweep(services, limit=settings.status_rate.count)
    for item in items:
        if item.action is Next.RESEND:
            cancel_order.apply_async((item.order_id, item.exchange))
        else:
            poll_order_status.apply_async(
                (item.order_id, item.exchange), {"seq": item.seq, "recheck": True}
            )
    if items:
        log.info("sweep.enqueued", count=len(items))
    return len(items)
