"""The client API strategy services call: validate, record, get in line, hand out a turn.

`request_cancel(s)` cancels orders one by one; `request_cancel_all` cancels every open order
of a symbol (or of the account) with one exchange call (worker.mass_cancel).

Validation happens before anything is written. One Lua call then creates each new record
with its event and sweeper watch, puts it in its account's line for a DELETE turn with its
priority, and hands out at once the turns the budget has free: a cancel that meets a free
budget is published right away as its DELETE task (one broker hop, no dispatcher). The rest
wait in line, and a worker's dispatcher publishes each when its turn comes, so the broker
never holds a backlog and an urgent cancel is not stuck behind one.

A repeat request for an order in flight returns its record and sends nothing (an urgent
repeat of a cancel still waiting in line moves it up); one for a final order returns the
final record. If Redis cannot be reached, BrokerUnavailable is raised: never a silent drop.

This module loads only what a request needs (records, lines, a publisher); Celery is loaded
on the first publish and the worker's parts (dispatcher, sweeper, rules) never.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import redis
import structlog

from worker.errors import BrokerUnavailable, InvalidRequest
from worker.models import (
    DEFAULT_ACCOUNT,
    DEFAULT_EXCHANGE,
    BatchRecord,
    Bucket,
    CancelRecord,
    OrderState,
    Priority,
    is_batch_id,
    new_batch_id,
    validate_account,
    validate_exchange,
    validate_order_id,
    validate_owner,
    validate_priority,
    validate_symbol,
)
from worker.publisher import Prepared
from worker.records import now_ms
from worker.scheduler import Released, Scheduler
from worker.services import Services, get_services
from worker.settings import redact_url

#: Turns of a request built ahead, at most (how many a free budget could hand out at once).
PREPARED_TURNS = 10

log = structlog.get_logger(__name__)


def request_cancel(
    order_id: str,
    exchange: str = DEFAULT_EXCHANGE,
    *,
    account: str = DEFAULT_ACCOUNT,
    priority: Priority | str = Priority.NORMAL,
    owner: str | None = None,
) -> CancelRecord:
    """Ask for one order to be cancelled; return its record (QUEUED, or as far as it got)."""
    return request_cancels([order_id], exchange, account=account, priority=priority, owner=owner)[0]


def request_cancels(
    order_ids: Iterable[str],
    exchange: str = DEFAULT_EXCHANGE,
    *,
    account: str = DEFAULT_ACCOUNT,
    priority: Priority | str = Priority.NORMAL,
    owner: str | None = None,
) -> list[CancelRecord]:
    """Ask for several orders to be cancelled; all input is validated before anything is written.

    `account` names the API key the orders belong to (`default`, or one of the workers'
    COINSWITCH_ACCOUNTS); `priority` `urgent` takes the next free DELETE slot ahead of every
    normal cancel not already being sent; `owner` (a strategy's name) gives the cancels its
    share of the account's budget.
    """
    ids = [validate_order_id(order_id) for order_id in order_ids]
    services = get_services()
    queued = enqueue(
        services,
        ids,
        validate_exchange(exchange),
        validate_account(account),
        validate_priority(priority),
        validate_owner(owner) if owner is not None else None,
        prepare=True,
    )
    publish(services, queued.scheduler, queued.turns)
    return queued.records


@dataclass(frozen=True)
class Enqueued:
    """A request as recorded: its records (in request order) and the turns handed out."""

    records: list[CancelRecord]
    turns: list[Released]
    scheduler: Scheduler


def enqueue(
    services: Services,
    ids: list[str],
    exchange: str,
    account: str,
    priority: Priority,
    owner: str | None = None,
    *,
    prepare: bool = False,
) -> Enqueued:
    """Record validated ids, put the new ones in line and hand out the free turns (also what
    a task sent by name does); the caller publishes the turns.

    With `prepare`, the turns of the first ids are built ahead (worker.publisher), so the
    request's own call publishes those it hands out: one round trip, when the budget is free
    and no replica has to confirm the request first (else the turns wait for that).
    """
    unique = list(dict.fromkeys(ids))
    store = services.store
    where = redact_url(services.settings.redis_url)
    try:
        scheduler = services.known_accounts(account)
        if account not in scheduler.accounts:
            raise InvalidRequest(
                "account",
                account,
                "is not configured (COINSWITCH_ACCOUNTS and its keys, on the workers)",
            )
        ready = _prepared(services, account, unique) if prepare else []
        made = store.create_many(
            unique,
            exchange,
            scheduler,
            account=account,
            priority=priority,
            owner=owner,
            watch_at_ms=now_ms() + services.watch_grace_ms,
            replication=services.replication,
            prepared=ready,
        )
        records, turns = made.records, made.turns
        fresh = [r.order_id for r, new in zip(records, made.created, strict=True) if new]
        if fresh and not made.confirmed:
            removed = store.discard_queued(fresh, scheduler, account, turns)
            taken = len(fresh) - removed  # a dispatcher handed them out already
            raise BrokerUnavailable(
                f"no replica of Redis at {where} confirmed the request within "
                f"{services.settings.replica_wait_ms} ms, so a failover could lose it: its "
                f"{removed} new record(s) were removed"
                + (
                    f" ({taken} already taken by a worker, sent only once a replica confirms)"
                    if taken
                    else ""
                )
                + "; request it again (requesting again is safe)"
            )
        waiting = [
            r.order_id
            for r, new in zip(records, made.created, strict=True)
            if not new and r.state is OrderState.QUEUED and r.priority != priority.value
        ]
        if waiting and priority is Priority.URGENT:
            _upgrade(services, scheduler, waiting, priority)
            records = [r or old for r, old in zip(store.get_many(unique), records, strict=True)]
    except redis.TimeoutError as exc:
        raise BrokerUnavailable(
            f"Redis at {where} did not answer in time; the request may or may not be recorded "
            f"(requesting again is safe): {exc}"
        ) from exc
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"Redis unavailable at {where}, nothing enqueued: {exc}") from exc
    by_id = {record.order_id: record for record in records}
    return Enqueued([by_id[order_id] for order_id in ids], turns, scheduler)


def _prepared(services: Services, account: str, ids: list[str]) -> list[Prepared]:
    """The first ids' turns built ahead, when no replica must confirm the request before its
    turns go out (none seen); [] if kombu cannot say how it would send them."""
    if not services.replication.none_seen:
        return []
    from kombu.exceptions import KombuError  # loaded with Celery, on the first publish

    turns = [
        Released(account, Bucket.CANCEL, job, f"{job}@p{uuid.uuid4().hex}", 0)
        for job in ids[:PREPARED_TURNS]
    ]
    try:
        return services.publisher.prepare(turns)
    except (redis.RedisError, KombuError) as exc:  # published the usual way instead
        log.warning("producer.prepare_failed", error=str(exc))
        return []


def publish(services: Services, scheduler: Scheduler, turns: list[Released]) -> None:
    """Publish turns handed out to a request. If the broker fails, the turns are given back
    and their jobs rejoin the line, for a dispatcher to hand out (the request is recorded)."""
    if not turns:
        return
    from kombu.exceptions import KombuError  # loaded with Celery, on the first publish

    try:
        services.publisher.publish(turns)
    except (redis.RedisError, KombuError) as exc:
        log.warning("producer.publish_failed", turns=len(turns), error=str(exc))
        try:
            for turn in turns:
                scheduler.give_back(turn.account, turn.bucket, turn.member)
                scheduler.join(turn.account, turn.bucket, [turn.job])
        except redis.RedisError as again:  # the sweeper puts them back in line later
            log.warning("producer.give_back_failed", error=str(again))


def _upgrade(
    services: Services, scheduler: Scheduler, order_ids: list[str], priority: Priority
) -> None:
    """Make waiting cancels urgent: their records first, then their places in line."""

    def raise_priority(record: CancelRecord) -> CancelRecord | None:
        if record.state is not OrderState.QUEUED or record.priority == priority.value:
            return None
        record.priority = priority.value
        return record

    for order_id in order_ids:
        services.store.update(order_id, raise_priority, scheduler)
    account_of = {r.order_id: r.account for r in services.store.get_many(order_ids) if r}
    for account in set(account_of.values()):
        jobs = [order_id for order_id, name in account_of.items() if name == account]
        scheduler.upgrade(account, Bucket.CANCEL, jobs, priority)


def request_cancel_all(
    exchange: str = DEFAULT_EXCHANGE,
    symbol: str | None = None,
    *,
    account: str = DEFAULT_ACCOUNT,
    priority: Priority | str = Priority.NORMAL,
    owner: str | None = None,
    symbols: Iterable[str] | None = None,
) -> BatchRecord:
    """Ask for every open order of `symbol` (or of the whole account) to be cancelled.

    One cancel-all call within the account's cancel-all budget; every order the exchange
    names gets its own record and is confirmed to its final state. Returns the batch record
    (QUEUED); `get_batch(batch.batch_id)` follows it.

    With `owner` (a strategy's name), only the open orders tracked to it are cancelled, of
    `symbols` (or `symbol`; every symbol it has open orders in when none): the open orders
    are read first, then one cancel-all per symbol holding only its orders and its orders
    one by one (urgent) where others' are open too; never a whole-account cancel-all.
    """
    chosen = [validate_symbol(s) for s in ([symbol] if symbol else []) + list(symbols or [])]
    guarded = list(dict.fromkeys(s for s in chosen if s is not None))
    if owner is None and len(guarded) > 1:
        raise InvalidRequest("symbols", guarded, "more than one is taken only with an owner")
    return create_batch(
        get_services(),
        validate_exchange(exchange),
        guarded[0] if guarded and owner is None else None,
        validate_account(account),
        validate_priority(priority),
        owner=validate_owner(owner) if owner is not None else None,
        symbols=guarded if owner is not None else None,
    )


def create_batch(
    services: Services,
    exchange: str,
    symbol: str | None,
    account: str,
    priority: Priority,
    *,
    batch_id: str | None = None,
    owner: str | None = None,
    symbols: list[str] | None = None,
) -> BatchRecord:
    """Record a validated cancel-all and put it in line (also what a task sent by name does).

    With a `batch_id` that exists already, that batch is returned and nothing is added.
    """
    at = now_ms()
    batch = BatchRecord.queued(
        batch_id or new_batch_id(),
        account=account,
        exchange=exchange,
        symbol=symbol,
        priority=priority,
        at=at,
        owner=owner,
        symbols=symbols,
    )
    where = redact_url(services.settings.redis_url)
    try:
        services.require_account(account)
        scheduler = services.known_accounts(account)
        if not services.batches.create(batch, scheduler, watch_at_ms=at + services.watch_grace_ms):
            return services.batches.get(batch.batch_id) or batch
        if not services.replication.confirmed():
            services.batches.discard_queued(batch, scheduler)
            raise BrokerUnavailable(
                f"no replica of Redis at {where} confirmed the cancel-all within "
                f"{services.settings.replica_wait_ms} ms, so a failover could lose it: it was "
                "removed; request it again"
            )
    except redis.TimeoutError as exc:
        raise BrokerUnavailable(
            f"Redis at {where} did not answer in time; the cancel-all may or may not be "
            f"recorded (look for it with `cancel-worker status {batch.batch_id}`): {exc}"
        ) from exc
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"Redis unavailable at {where}, nothing enqueued: {exc}") from exc
    return batch


def get_batch(batch_id: str) -> BatchRecord | None:
    """The current record of a cancel-all, or None if unknown (or expired)."""
    if not isinstance(batch_id, str) or not is_batch_id(batch_id):
        raise InvalidRequest("batch_id", batch_id, "must be a batch id like batch-<uuid>")
    return get_services().batches.get(batch_id)


def get_record(order_id: str) -> CancelRecord | None:
    """The current record of an order, or None if no cancel was requested for it."""
    return get_services().store.get(validate_order_id(order_id))


def get_records(order_ids: Iterable[str]) -> list[CancelRecord | None]:
    """Current records of several orders, in one round trip."""
    ids = [validate_order_id(order_id) for order_id in order_ids]
    return get_services().store.get_many(ids)
