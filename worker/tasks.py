"""Thin Celery tasks: check the message, bind log context, call cancellation, follow its Step.

A task either takes a request (sent by name, with no `turn`): it records the order and puts
it in line; or uses a turn the dispatcher handed out (`turn` set): one exchange call, then
the order joins the line its Step names. Nothing retries inside Celery, so no task holds a
thread or a message while it waits for budget. Any unexpected error still leaves a record:
the order goes UNCONFIRMED and is re-checked slowly.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, NoReturn

import redis
import structlog
from celery import bootsteps
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from worker.cancellation import Move, Step, cancel_turn, check_turn, give_to_sweeper
from worker.celery_app import (
    CANCEL_ALL_TASK,
    CANCEL_TASK,
    DEADMAN_ARM_TASK,
    DEADMAN_DISARM_TASK,
    DEADMAN_HEARTBEAT_TASK,
    LIST_TASK,
    POLL_TASK,
    SWEEP_TASK,
    app,
)
from worker.confirmation import CONFIRM_JOB, confirm_turn
from worker.dispatcher import SWEEP_BATCH, Dispatcher, publish_turn
from worker.errors import InvalidRequest
from worker.mass_cancel import RESOLVE_CLOSED, RESOLVE_OPEN, cancel_all_turn, resolve_turn
from worker.models import (
    DEFAULT_ACCOUNT,
    DEFAULT_EXCHANGE,
    Bucket,
    ErrorCode,
    Priority,
    is_batch_id,
    validate_account,
    validate_exchange,
    validate_order_id,
    validate_priority,
    validate_symbol,
)
from worker.producer import create_batch, enqueue
from worker.records import now_ms
from worker.routing import follow
from worker.services import Services, get_services
from worker.sweeper import put_back, sweep

REDIS_RETRY_PAUSE_S = 1.0  # pause before handing a message back after a Redis failure
REDIS_RECOVER_S = 15.0  # a task that lost Redis mid-turn waits this long for it (a failover)
REDIS_PING_PAUSE_S = 0.25  # between its pings meanwhile

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Message:
    """The validated arguments of a cancel or poll message."""

    order_id: str
    exchange: str = DEFAULT_EXCHANGE
    account: str = DEFAULT_ACCOUNT
    priority: Priority = Priority.NORMAL
    turn: str | None = None  # set by the dispatcher: the budget slot this delivery may use


#: Keywords every message may carry; a poll also accepts the old `seq` and `recheck`.
_KEYWORDS = ("account", "priority", "turn")
_POLL_COMPAT = ("seq", "recheck")


def parse_message(args: tuple[Any, ...], kwargs: dict[str, Any], *, poll: bool) -> Message:
    """Validate a task message's arguments (they may come from any producer, in any shape)."""
    names = ("order_id", "exchange")
    if len(args) > len(names) + (2 if poll else 0):
        raise InvalidRequest("args", list(args), f"takes at most {len(names)} arguments")
    values: dict[str, Any] = dict(zip(names, args, strict=False))
    extra = dict(zip(_POLL_COMPAT, args[len(names) :], strict=False)) if poll else {}
    for name, value in kwargs.items():
        known = name in _KEYWORDS or (poll and name in _POLL_COMPAT)
        if not known or name in values or name in extra:
            raise InvalidRequest(name, value, "is not an argument of this task (or repeated)")
        (extra if name in _POLL_COMPAT else values)[name] = value
    if "order_id" not in values:
        raise InvalidRequest("order_id", None, "is required")
    seq = extra.get("seq", 0)
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise InvalidRequest("seq", seq, "must be a non-negative integer")
    if not isinstance(extra.get("recheck", False), bool):
        raise InvalidRequest("recheck", extra["recheck"], "must be a boolean")
    turn = values.get("turn")
    if turn is not None and not isinstance(turn, str):
        raise InvalidRequest("turn", turn, "must be a string")
    return Message(
        order_id=validate_order_id(values["order_id"]),
        exchange=validate_exchange(values.get("exchange", DEFAULT_EXCHANGE)),
        account=validate_account(values.get("account", DEFAULT_ACCOUNT)),
        priority=validate_priority(values.get("priority", Priority.NORMAL.value)),
        turn=turn,
    )


def _owner(task: Any) -> str:
    return f"{task.request.id}:{task.request.retries}"


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


def _redis_down(exc: Exception) -> NoReturn:
    """Redis failed mid-task: put the message back rather than lose it.

    If Redis is still down, the reject cannot reach it either and the message stays in the
    unacked set, which Redis hands out again after the visibility timeout.
    """
    log.warning("task.redis_unavailable", error=str(exc))
    time.sleep(REDIS_RETRY_PAUSE_S)
    raise Reject(exc, requeue=True)


def _turn_lost_to_redis(services: Services, task: Any, message: Message, exc: Exception) -> str:
    """Redis failed mid-turn (its primary lost, say). Wait for it to answer again (a new
    primary), then free this task's lease and put the order back in line at once: left
    held, the order would wait out its lease and the sweeper. Still down: `_redis_down`."""
    log.warning("task.redis_unavailable", error=str(exc))
    deadline = time.monotonic() + REDIS_RECOVER_S
    while time.monotonic() < deadline:
        try:
            services.redis.ping()
        except redis.RedisError:
            time.sleep(REDIS_PING_PAUSE_S)
            continue
        try:
            keys, owner = services.keys, _owner(task)
            for lease in (keys.cancel_lease(message.order_id), keys.poll_lease(message.order_id)):
                services.leases.release(lease, owner)
            record = services.store.get(message.order_id)
            if record is not None and not record.is_final:
                put_back(services, services.scheduler, record)
        except (redis.RedisError, OperationalError):
            break
        log.info("task.redis_back", put_back=record is not None and not record.is_final)
        return "redis_back"
    _redis_down(exc)


def _take_request(services: Services, message: Message, *, poll: bool) -> str:
    """A message sent by name: record the order (a cancel) or queue a status read (a poll)."""
    if not poll:
        enqueue(services, [message.order_id], message.exchange, message.account, message.priority)
        return "queued"
    record = services.store.get(message.order_id)
    if record is None or record.is_final:
        return "no_record" if record is None else "final"
    follow(services, services.scheduler, record.order_id, Step(Move.CHECK, record=record))
    return "queued"


def _use_turn(services: Services, task: Any, message: Message, *, poll: bool) -> str:
    """Make the one exchange call this turn allows, then put the order in its next line."""
    scheduler = services.scheduler
    if message.account not in scheduler.accounts:
        # Handed out by a dispatcher that serves this account; this worker cannot sign for it.
        log.error("task.account_not_served", account=message.account)
        follow(services, scheduler, message.order_id, Step(Move.CHECK if poll else Move.CANCEL))
        return "not_served"
    bucket = Bucket.STATUS if poll else Bucket.CANCEL
    turn = scheduler.turn(message.account, bucket, message.turn or "")
    try:
        run = check_turn if poll else cancel_turn
        step = run(services, message.order_id, turn, owner=_owner(task))
    finally:
        turn.give_back()
    follow(services, scheduler, message.order_id, step)
    return step.move.value


def _run(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, poll: bool) -> str:
    """Parse the message, take the request or use the turn; never lose the order."""
    try:
        message = parse_message(args, kwargs, poll=poll)
    except InvalidRequest as exc:
        _dead_letter(task, exc)
        return "dead_letter"
    services = get_services()
    context = {"order_id": message.order_id, "task_id": task.request.id, "account": message.account}
    with structlog.contextvars.bound_contextvars(**context):
        try:
            if message.turn is None:
                return _take_request(services, message, poll=poll)
            return _use_turn(services, task, message, poll=poll)
        except InvalidRequest as exc:  # e.g. an account no worker serves
            _dead_letter(task, exc)
            return "dead_letter"
        except (redis.RedisError, OperationalError) as exc:
            if message.turn is None:
                _redis_down(exc)
            return _turn_lost_to_redis(services, task, message, exc)
        except Exception as exc:  # recorded as UNCONFIRMED and re-checked, never lost
            log.exception("task.unexpected_error", error=str(exc))
            try:
                step = give_to_sweeper(
                    services, message.order_id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"
                )
                follow(services, services.scheduler, message.order_id, step)
            except (redis.RedisError, OperationalError) as redis_exc:
                _redis_down(redis_exc)
            return "unexpected_error"


@app.task(name=CANCEL_TASK, bind=True)
def cancel_order(self: Any, *args: Any, **kwargs: Any) -> str:
    """Cancel one order: sent by name it queues the order; on its turn it sends the DELETE.

    Arguments (JSON): `order_id` (UUID string), `exchange` (optional, default EXCHANGE_2);
    keywords `account` (default `default`) and `priority` (`urgent` or `normal`).
    """
    return _run(self, args, kwargs, poll=False)


@app.task(name=POLL_TASK, bind=True)
def poll_order_status(self: Any, *args: Any, **kwargs: Any) -> str:
    """Read one order's status on its turn; sent by name it queues a status read.

    Arguments (JSON): `order_id`, `exchange` (optional). The cancel queues these itself.
    """
    return _run(self, args, kwargs, poll=True)


@app.task(name=SWEEP_TASK)
def sweep_due() -> int:
    """Put lost work back in line now (every worker's dispatcher also does this on its own)."""
    services = get_services()
    return sweep(services, services.scheduler, limit=SWEEP_BATCH)


@dataclass(frozen=True)
class BatchMessage:
    """The validated arguments of a cancel-all message."""

    exchange: str = DEFAULT_EXCHANGE
    symbol: str | None = None
    account: str = DEFAULT_ACCOUNT
    priority: Priority = Priority.NORMAL
    batch: str | None = None  # set with `turn` by the dispatcher
    turn: str | None = None


def parse_batch_message(args: tuple[Any, ...], kwargs: dict[str, Any]) -> BatchMessage:
    """Validate a cancel-all message: `[exchange]`, keywords symbol, account, priority."""
    if len(args) > 1:
        raise InvalidRequest("args", list(args), "takes at most 1 argument (exchange)")
    known = ("exchange", "symbol", "account", "priority", "batch", "turn")
    values: dict[str, Any] = dict(zip(("exchange",), args, strict=False))
    for name, value in kwargs.items():
        if name not in known or name in values:
            raise InvalidRequest(name, value, "is not an argument of this task (or repeated)")
        values[name] = value
    batch, turn = values.get("batch"), values.get("turn")
    if batch is not None and not (isinstance(batch, str) and is_batch_id(batch)):
        raise InvalidRequest("batch", batch, "must be a batch id like batch-<uuid>")
    if turn is not None and not isinstance(turn, str):
        raise InvalidRequest("turn", turn, "must be a string")
    return BatchMessage(
        exchange=validate_exchange(values.get("exchange", DEFAULT_EXCHANGE)),
        symbol=validate_symbol(values.get("symbol")),
        account=validate_account(values.get("account", DEFAULT_ACCOUNT)),
        priority=validate_priority(values.get("priority", Priority.NORMAL.value)),
        batch=batch,
        turn=turn,
    )


@app.task(name=CANCEL_ALL_TASK, bind=True)
def cancel_all(self: Any, *args: Any, **kwargs: Any) -> str:
    """Cancel every open order of a symbol (or of the account) with one exchange call.

    Arguments (JSON): `exchange` (optional, default EXCHANGE_2); keywords `symbol` (e.g.
    BTCUSDT; none = every symbol), `account`, `priority`, and `batch` (optional: the id to
    record it under, `batch-<uuid>`; the same id twice is one batch). Sent by name it records
    the batch and queues it; on its turn it sends the cancel-all.
    """
    try:
        message = parse_batch_message(args, kwargs)
    except InvalidRequest as exc:
        _dead_letter(self, exc)
        return "dead_letter"
    services = get_services()
    context = {"batch_id": message.batch, "task_id": self.request.id, "account": message.account}
    with structlog.contextvars.bound_contextvars(**context):
        try:
            if message.turn is None or message.batch is None:
                batch = create_batch(
                    services,
                    message.exchange,
                    message.symbol,
                    message.account,
                    message.priority,
                    batch_id=message.batch,
                )
                return batch.batch_id
            turn = services.scheduler.turn(message.account, Bucket.CANCEL_ALL, message.turn)
            try:
                cancel_all_turn(services, message.batch, turn, owner=_owner(self))
            finally:
                turn.give_back()
            return "done"
        except InvalidRequest as exc:
            _dead_letter(self, exc)
            return "dead_letter"
        except (redis.RedisError, OperationalError) as exc:
            _redis_down(exc)


@app.task(name=LIST_TASK, bind=True)
def list_orders(self: Any, *, job: str, account: str, bucket: str, turn: str) -> str:
    """Use a turn of an order-list budget: a confirmation pass, or finding out what a lost
    cancel-all did. Internal: only the dispatcher sends it."""
    services = get_services()
    budget = Bucket(bucket)
    with structlog.contextvars.bound_contextvars(job=job, task_id=self.request.id, account=account):
        held = services.scheduler.turn(account, budget, turn)
        try:
            if job.startswith(CONFIRM_JOB):
                confirm_turn(services, account, job, held)
            elif job.startswith((RESOLVE_OPEN, RESOLVE_CLOSED)):
                resolve_turn(services, job, held)
            else:
                log.error("task.unknown_list_job", job=job)
        except (redis.RedisError, OperationalError) as exc:
            _redis_down(exc)
        finally:
            held.give_back()
    return "done"


@app.task(name=DEADMAN_ARM_TASK, bind=True)
def deadman_arm_task(self: Any, *args: Any, **kwargs: Any) -> str:
    """Arm a dead man's switch (for producers without Python).

    Keywords (JSON): `name`, `timeout_s` (2 to 3600), `symbols` (list; none: every symbol of
    the account), `account`, `exchange`. Beat it with the Redis command in the README, or
    with `cancel_worker.deadman_heartbeat`.
    """
    from worker.deadman import arm_deadman

    try:
        if args:
            raise InvalidRequest("args", list(args), "takes keywords only")
        switch = arm_deadman(
            **_deadman_kwargs(kwargs, ("name", "timeout_s", "symbols", "account", "exchange"))
        )
    except (InvalidRequest, TypeError) as exc:
        _dead_letter(
            self,
            exc if isinstance(exc, InvalidRequest) else InvalidRequest("kwargs", kwargs, str(exc)),
        )
        return "dead_letter"
    return switch.state.value


@app.task(name=DEADMAN_HEARTBEAT_TASK, bind=True)
def deadman_heartbeat_task(self: Any, name: str) -> str:
    """Beat a switch. A Redis command is faster (README); this is for Celery-only producers."""
    from worker.deadman import SwitchTripped, heartbeat

    try:
        heartbeat(name)
    except SwitchTripped:
        return "tripped"
    except InvalidRequest as exc:
        _dead_letter(self, exc)
        return "dead_letter"
    return "beaten"


@app.task(name=DEADMAN_DISARM_TASK, bind=True)
def deadman_disarm_task(self: Any, name: str) -> str:
    """Disarm a switch (before a planned stop)."""
    from worker.deadman import disarm

    try:
        return disarm(name).state.value
    except InvalidRequest as exc:
        _dead_letter(self, exc)
        return "dead_letter"


def _deadman_kwargs(kwargs: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise InvalidRequest(unknown[0], kwargs[unknown[0]], "is not an argument of this task")
    return kwargs


class DispatcherStep(bootsteps.StartStopStep):
    """Runs a Dispatcher in every worker process, for as long as the worker runs."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.dispatcher: Dispatcher | None = None

    def start(self, parent: Any) -> None:
        services = get_services()
        services.settings.signing_accounts()  # fail at start-up, naming what is missing
        queues = parent.app.amqp.queues.consume_from
        self.dispatcher = Dispatcher(
            services, services.scheduler, publish_turn, node=parent.hostname, queues=list(queues)
        )
        self.dispatcher.start()

    def stop(self, parent: Any) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()


app.steps["worker"].add(DispatcherStep)
