"""Thin Celery tasks: check the message, bind log context, call a plain function.

Two kinds of task:
- **Requests by name** (the public names, any producer, plain JSON): a cancel records the
  order and gets in line like `request_cancel`; when the budget is free its turn is handed
  out at once and used right here, so a cancel sent by name costs one broker hop too.
- **Turns** (internal names, published only by the scheduler's hand-outs): one exchange
  call on a budget slot, then the order joins the line its decision names. A message sent
  by name that carries a `turn` is refused to the dead letters: a turn is not a door.

Nothing retries inside Celery, so no task holds a thread or a message while it waits for
budget. Any unexpected error still leaves a record: the order goes UNCONFIRMED and is
re-checked slowly.
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

from worker.batches import SCOPE_JOB
from worker.cancellation import Decision, Move, unconfirmed
from worker.celery_app import (
    CANCEL_ALL_TASK,
    CANCEL_ALL_TURN_TASK,
    CANCEL_TASK,
    CANCEL_TURN_TASK,
    DEADMAN_ARM_TASK,
    DEADMAN_DISARM_TASK,
    DEADMAN_HEARTBEAT_TASK,
    LIST_TASK,
    POLL_TASK,
    STATUS_TURN_TASK,
    SWEEP_TASK,
    TRACK_TASK,
    app,
)
from worker.confirmation import CONFIRM_JOB, confirm_turn
from worker.dispatcher import Dispatcher
from worker.duties import SWEEP_BATCH, Duties
from worker.errors import BrokerUnavailable, InvalidRequest
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
    validate_owner,
    validate_priority,
    validate_symbol,
)
from worker.producer import create_batch, enqueue, publish
from worker.records import now_ms
from worker.routing import follow
from worker.scoped import scope_turn
from worker.services import Services, get_services
from worker.sweeper import put_back, sweep
from worker.turns import OrderTurn, Turn

REDIS_RETRY_PAUSE_S = 1.0  # pause before handing a message back after a Redis failure
REDIS_RECOVER_S = 15.0  # a task that lost Redis mid-turn waits this long for it (a failover)
REDIS_PING_PAUSE_S = 0.25  # between its pings meanwhile

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Message:
    """The validated arguments of a cancel or poll request sent by name."""

    order_id: str
    exchange: str = DEFAULT_EXCHANGE
    account: str = DEFAULT_ACCOUNT
    priority: Priority = Priority.NORMAL
    owner: str | None = None


#: Keywords a request may carry; a poll also accepts the old `seq` and `recheck`.
_KEYWORDS = ("account", "priority", "owner")
_POLL_COMPAT = ("seq", "recheck")


def parse_message(args: tuple[Any, ...], kwargs: dict[str, Any], *, poll: bool) -> Message:
    """Validate a request's arguments (they may come from any producer, in any shape)."""
    names = ("order_id", "exchange")
    if "turn" in kwargs:
        raise InvalidRequest(
            "turn", kwargs["turn"], "is not an argument: turns come only from the scheduler"
        )
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
    owner = values.get("owner")
    return Message(
        order_id=validate_order_id(values["order_id"]),
        exchange=validate_exchange(values.get("exchange", DEFAULT_EXCHANGE)),
        account=validate_account(values.get("account", DEFAULT_ACCOUNT)),
        priority=validate_priority(values.get("priority", Priority.NORMAL.value)),
        owner=validate_owner(owner) if owner is not None else None,
    )


def _owner(task: Any) -> str:
    """This delivery's token for leases (a redelivery gets another)."""
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


def _turn_lost_to_redis(services: Services, task: Any, order_id: str, exc: Exception) -> str:
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
            for lease in (keys.cancel_lease(order_id), keys.poll_lease(order_id)):
                services.leases.release(lease, owner)
            record = services.store.get(order_id)
            if record is not None and not record.is_final:
                put_back(services, services.scheduler, record)
        except (redis.RedisError, OperationalError):
            break
        log.info("task.redis_back", put_back=record is not None and not record.is_final)
        return "redis_back"
    _redis_down(exc)


def _unexpected(services: Services, order_id: str, exc: Exception) -> str:
    """Record an unexpected error as UNCONFIRMED, re-checked slowly: never lost."""
    log.exception("task.unexpected_error", error=str(exc))
    try:
        settings = services.settings

        def give_up(record: Any) -> Decision:
            return unconfirmed(record, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}", settings)

        record = services.store.get(order_id)
        if record is not None and not record.is_final:
            follow(services, services.scheduler, order_id, give_up(record))
    except (redis.RedisError, OperationalError) as redis_exc:
        _redis_down(redis_exc)
    return "unexpected_error"


def _request(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, poll: bool) -> str:
    """A request sent by name: a cancel gets in line (and, with a free budget, its DELETE
    goes now, from here); a poll queues a status read of an order that has a record."""
    try:
        message = parse_message(args, kwargs, poll=poll)
    except InvalidRequest as exc:
        _dead_letter(task, exc)
        return "dead_letter"
    services = get_services()
    context = {"order_id": message.order_id, "task_id": task.request.id, "account": message.account}
    with structlog.contextvars.bound_contextvars(**context):
        try:
            if poll:
                record = services.store.get(message.order_id)
                if record is None or record.is_final:
                    return "no_record" if record is None else "final"
                follow(services, services.scheduler, record.order_id, Decision(None, Move.CHECK))
                return "queued"
            queued = enqueue(
                services,
                [message.order_id],
                message.exchange,
                message.account,
                message.priority,
                message.owner,
            )
            own = [t for t in queued.turns if t.job == message.order_id]
            publish(services, queued.scheduler, [t for t in queued.turns if t not in own])
            if not own:
                return "queued"
            if message.account not in services.scheduler.accounts:
                publish(services, queued.scheduler, own)  # another worker signs for it
                return "queued"
            turn = own[0]
            return OrderTurn(services, turn.account, turn.job, turn.member, _owner(task)).cancel()
        except InvalidRequest as exc:  # e.g. an account no worker serves
            _dead_letter(task, exc)
            return "dead_letter"
        except (redis.RedisError, OperationalError) as exc:
            _redis_down(exc)
        except Exception as exc:  # recorded as UNCONFIRMED and re-checked, never lost
            return _unexpected(services, message.order_id, exc)


def _use_turn(task: Any, order_id: str, account: str, turn: str, bucket: Bucket) -> str:
    """Make the one exchange call this turn allows, then the order joins its next line."""
    services = get_services()
    context = {"order_id": order_id, "task_id": task.request.id, "account": account}
    with structlog.contextvars.bound_contextvars(**context):
        try:
            if account not in services.scheduler.accounts:
                # Handed out by a fleet that serves this account; this worker cannot sign.
                log.error("task.account_not_served", account=account)
                move = Move.CANCEL if bucket is Bucket.CANCEL else Move.CHECK
                follow(services, services.scheduler, order_id, Decision(None, move))
                return "not_served"
            used = OrderTurn(services, account, order_id, turn, _owner(task))
            return used.cancel() if bucket is Bucket.CANCEL else used.check()
        except (redis.RedisError, OperationalError) as exc:
            return _turn_lost_to_redis(services, task, order_id, exc)
        except Exception as exc:
            return _unexpected(services, order_id, exc)


@app.task(name=CANCEL_TASK, bind=True)
def cancel_order(self: Any, *args: Any, **kwargs: Any) -> str:
    """Cancel one order (sent by name): it is recorded and gets in line like
    `request_cancel`; with the budget free its DELETE is sent from this task.

    Arguments (JSON): `order_id` (UUID string), `exchange` (optional, default EXCHANGE_2);
    keywords `account` (default `default`), `priority` (`urgent` or `normal`) and `owner`
    (the strategy's name, for its share of the budget).
    """
    return _request(self, args, kwargs, poll=False)


@app.task(name=POLL_TASK, bind=True)
def poll_order_status(self: Any, *args: Any, **kwargs: Any) -> str:
    """Queue a status read of an order that has a record (sent by name).

    Arguments (JSON): `order_id`, `exchange` (optional). The service queues its own.
    """
    return _request(self, args, kwargs, poll=True)


@app.task(name=CANCEL_TURN_TASK, bind=True)
def cancel_turn(self: Any, order_id: str, *, account: str, turn: str) -> str:
    """Use a DELETE turn (internal: published only by the scheduler's hand-outs)."""
    return _use_turn(self, order_id, account, turn, Bucket.CANCEL)


@app.task(name=STATUS_TURN_TASK, bind=True)
def status_turn(self: Any, order_id: str, *, account: str, turn: str) -> str:
    """Use a status turn (internal: published only by the scheduler's hand-outs)."""
    return _use_turn(self, order_id, account, turn, Bucket.STATUS)


@app.task(name=SWEEP_TASK)
def sweep_due() -> int:
    """Put lost work back in line now (every worker also does this on its own)."""
    services = get_services()
    return sweep(services, services.scheduler, limit=SWEEP_BATCH)


@dataclass(frozen=True)
class BatchMessage:
    """The validated arguments of a cancel-all request."""

    exchange: str = DEFAULT_EXCHANGE
    symbol: str | None = None
    account: str = DEFAULT_ACCOUNT
    priority: Priority = Priority.NORMAL
    batch: str | None = None
    owner: str | None = None
    symbols: tuple[str, ...] = ()


def parse_batch_message(args: tuple[Any, ...], kwargs: dict[str, Any]) -> BatchMessage:
    """Validate a cancel-all message: `[exchange]`, keywords symbol, account, priority, batch."""
    if "turn" in kwargs:
        raise InvalidRequest(
            "turn", kwargs["turn"], "is not an argument: turns come only from the scheduler"
        )
    if len(args) > 1:
        raise InvalidRequest("args", list(args), "takes at most 1 argument (exchange)")
    known = ("exchange", "symbol", "account", "priority", "batch", "owner", "symbols")
    values: dict[str, Any] = dict(zip(("exchange",), args, strict=False))
    for name, value in kwargs.items():
        if name not in known or name in values:
            raise InvalidRequest(name, value, "is not an argument of this task (or repeated)")
        values[name] = value
    batch = values.get("batch")
    if batch is not None and not (isinstance(batch, str) and is_batch_id(batch)):
        raise InvalidRequest("batch", batch, "must be a batch id like batch-<uuid>")
    owner, symbols = values.get("owner"), values.get("symbols", [])
    if not isinstance(symbols, list) or (symbols and owner is None):
        raise InvalidRequest("symbols", symbols, "is a list, taken only with an owner")
    return BatchMessage(
        exchange=validate_exchange(values.get("exchange", DEFAULT_EXCHANGE)),
        symbol=validate_symbol(values.get("symbol")),
        account=validate_account(values.get("account", DEFAULT_ACCOUNT)),
        priority=validate_priority(values.get("priority", Priority.NORMAL.value)),
        batch=batch,
        owner=validate_owner(owner) if owner is not None else None,
        symbols=tuple(s for s in (validate_symbol(v) for v in symbols) if s is not None),
    )


@app.task(name=CANCEL_ALL_TASK, bind=True)
def cancel_all(self: Any, *args: Any, **kwargs: Any) -> str:
    """Cancel every open order of a symbol (or of the account) with one exchange call.

    Arguments (JSON): `exchange` (optional, default EXCHANGE_2); keywords `symbol` (e.g.
    BTCUSDT; none = every symbol), `account`, `priority`, `batch` (optional: the id to
    record it under, `batch-<uuid>`; the same id twice is one batch), and `owner` with
    `symbols` (a list): only that strategy's orders. It records the batch and queues it.
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
            scoped = message.owner is not None
            guarded = [*([message.symbol] if message.symbol else []), *message.symbols]
            batch = create_batch(
                services,
                message.exchange,
                None if scoped else message.symbol,
                message.account,
                message.priority,
                batch_id=message.batch,
                owner=message.owner,
                symbols=list(dict.fromkeys(guarded)) if scoped else None,
            )
            return batch.batch_id
        except InvalidRequest as exc:
            _dead_letter(self, exc)
            return "dead_letter"
        except (redis.RedisError, OperationalError) as exc:
            _redis_down(exc)


@app.task(name=CANCEL_ALL_TURN_TASK, bind=True)
def cancel_all_turn_task(self: Any, *, batch: str, account: str, turn: str) -> str:
    """Use a cancel-all turn (internal: published only by the scheduler's hand-outs)."""
    services = get_services()
    context = {"batch_id": batch, "task_id": self.request.id, "account": account}
    with structlog.contextvars.bound_contextvars(**context):
        held = Turn(services.scheduler, account, Bucket.CANCEL_ALL, turn)
        try:
            cancel_all_turn(services, batch, held, owner=_owner(self))
        except (redis.RedisError, OperationalError) as exc:
            _redis_down(exc)
        finally:
            held.give_back()
    return "done"


@app.task(name=LIST_TASK, bind=True)
def list_orders(self: Any, *, job: str, account: str, bucket: str, turn: str) -> str:
    """Use a turn of an order-list budget: a confirmation pass, finding out what a lost
    cancel-all did, or an owner's cancel-all reading the open orders (internal: published
    only by the scheduler's hand-outs)."""
    services = get_services()
    budget = Bucket(bucket)
    with structlog.contextvars.bound_contextvars(job=job, task_id=self.request.id, account=account):
        held = Turn(services.scheduler, account, budget, turn)
        try:
            if job.startswith(CONFIRM_JOB):
                confirm_turn(services, account, job, held)
            elif job.startswith((RESOLVE_OPEN, RESOLVE_CLOSED)):
                resolve_turn(services, job, held)
            elif job.startswith(f"{SCOPE_JOB}:"):
                scope_turn(services, job, held, worker=_owner(self))
            else:
                log.error("task.unknown_list_job", job=job)
        except (redis.RedisError, OperationalError) as exc:
            _redis_down(exc)
        finally:
            held.give_back()
    return "done"


@app.task(name=TRACK_TASK, bind=True)
def track_orders_task(self: Any, *args: Any, **kwargs: Any) -> str:
    """Track orders to an owner (a strategy), for producers without Python.

    Keywords (JSON): `order_ids` (a list), `owner`, `account` (optional). Returns how many
    were new; an order tracked to another owner dead-letters the message (nothing tracked).
    """
    from worker.owners import track_orders

    try:
        if args:
            raise InvalidRequest("args", list(args), "takes keywords only")
        known = _deadman_kwargs(kwargs, ("order_ids", "owner", "account"))
        ids = known.get("order_ids")
        if not isinstance(ids, list):
            raise InvalidRequest("order_ids", ids, "must be a list of order ids")
        tracked = track_orders(ids, known.get("owner", ""), known.get("account", DEFAULT_ACCOUNT))
    except InvalidRequest as exc:
        _dead_letter(self, exc)
        return "dead_letter"
    except BrokerUnavailable as exc:
        _redis_down(exc)
    return str(tracked)


@app.task(name=DEADMAN_ARM_TASK, bind=True)
def deadman_arm_task(self: Any, *args: Any, **kwargs: Any) -> str:
    """Arm a dead man's switch (for producers without Python).

    Keywords (JSON): `name`, `timeout_s` (2 to 3600), `symbols` (list; none: every symbol of
    the account), `account`, `exchange`, `owner` (only that strategy's orders). Beat it with
    the Redis command in the README, or with `cancel_worker.deadman_heartbeat`.
    """
    from worker.deadman import arm_deadman

    try:
        if args:
            raise InvalidRequest("args", list(args), "takes keywords only")
        switch = arm_deadman(
            **_deadman_kwargs(
                kwargs, ("name", "timeout_s", "symbols", "account", "exchange", "owner")
            )
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
    """Runs a Dispatcher and the fleet's duties in every worker process, while it runs."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.dispatcher: Dispatcher | None = None
        self.duties: Duties | None = None

    def start(self, parent: Any) -> None:
        services = get_services()
        services.settings.signing_accounts()  # fail at start-up, naming what is missing
        queues = parent.app.amqp.queues.consume_from
        self.duties = Duties(
            services, services.scheduler, node=parent.hostname, queues=list(queues)
        )
        self.duties.start()
        self.dispatcher = Dispatcher(services.redis, services.scheduler, services.publisher)
        self.dispatcher.start()

    def stop(self, parent: Any) -> None:
        for part in (self.dispatcher, self.duties):
            if part is not None:
                part.stop()


app.steps["worker"].add(DispatcherStep)
