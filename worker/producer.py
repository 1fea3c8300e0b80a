"""What strategy services call: validate, de-duplicate, record QUEUED and get in line.

`request_cancel(s)` cancels orders one by one; `request_cancel_all` cancels every open order
of a symbol (or of the account) with one exchange call (worker.mass_cancel).

Validation happens before anything is written. One Lua call then creates each new record
with its event and sweeper watch and puts it in its account's line for a DELETE turn, with
its priority. The turns free right now are handed out at once (the cancel task published
for each); the rest wait in line, and a worker's dispatcher publishes each when its turn
comes, so the broker never holds a backlog and an urgent cancel is not stuck behind one.

A repeat request for an order in flight returns its record and sends nothing (an urgent
repeat of a cancel still waiting in line moves it up); one for a final order returns the
final record. If Redis cannot be reached, BrokerUnavailable is raised: never a silent drop.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis
import structlog
from kombu.exceptions import KombuError

from worker.dispatcher import publish_turn
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
    validate_priority,
    validate_symbol,
)
from worker.records import now_ms
from worker.services import Services, get_services
from worker.settings import redact_url

log = structlog.get_logger(__name__)


def request_cancel(
    order_id: str,
    exchange: str = DEFAULT_EXCHANGE,
    *,
    account: str = DEFAULT_ACCOUNT,
    priority: Priority | str = Priority.NORMAL,
) -> CancelRecord:
    """Ask for one order to be cancelled; return its record (QUEUED, or as far as it got)."""
    return request_cancels([order_id], exchange, account=account, priority=priority)[0]


def request_cancels(
    order_ids: Iterable[str],
    exchange: str = DEFAULT_EXCHANGE,
    *,
    account: str = DEFAULT_ACCOUNT,
    priority: Priority | str = Priority.NORMAL,
) -> list[CancelRecord]:
    """Ask for several orders to be cancelled; all input is validated before anything is written.

    `account` names the API key the orders belong to (`default`, or one of the workers'
    COINSWITCH_ACCOUNTS); `priority` `urgent` takes the next free DELETE slot ahead of every
    normal cancel not already being sent.
    """
    ids = [validate_order_id(order_id) for order_id in order_ids]
    return enqueue(
        get_services(),
        ids,
        validate_exchange(exchange),
        validate_account(account),
        validate_priority(priority),
    )


def enqueue(
    services: Services, ids: list[str], exchange: str, account: str, priority: Priority
) -> list[CancelRecord]:
    """Record validated ids and put the new ones in line (also what a task sent by name does)."""
    unique = list(dict.fromkeys(ids))
    store = services.store
    try:
        services.require_account(account)
        records, created = store.create_many(
            unique,
            exchange,
            account=account,
            priority=priority,
            watch_at_ms=now_ms() + services.watch_grace_ms,
        )
        fresh = [r.order_id for r, made in zip(records, created, strict=True) if made]
        if fresh and not services.replication.confirmed():
            removed = store.discard_queued(fresh, account)
            taken = len(fresh) - removed  # a dispatcher handed them out already
            raise BrokerUnavailable(
                f"no replica of Redis at {redact_url(services.settings.redis_url)} confirmed "
                f"the request within {services.settings.replica_wait_ms} ms, so a failover "
                f"could lose it: its {removed} new record(s) were removed"
                + (
                    f" ({taken} already taken by a worker, sent only once a replica confirms)"
                    if taken
                    else ""
                )
                + "; request it again (requesting again is safe)"
            )
        waiting = [
            r.order_id
            for r, made in zip(records, created, strict=True)
            if not made and r.state is OrderState.QUEUED and r.priority != priority.value
        ]
        if waiting and priority is Priority.URGENT:
            _upgrade(services, waiting, priority)
            records = [r or old for r, old in zip(store.get_many(unique), records, strict=True)]
        if any(created) or waiting:
            _hand_out(services, account)
    except redis.TimeoutError as exc:
        raise BrokerUnavailable(
            f"Redis at {redact_url(services.settings.redis_url)} did not answer in time; the "
            f"request may or may not be recorded (requesting again is safe): {exc}"
        ) from exc
    except redis.RedisError as exc:
        where = redact_url(services.settings.redis_url)
        raise BrokerUnavailable(f"Redis unavailable at {where}, nothing enqueued: {exc}") from exc
    by_id = {record.order_id: record for record in records}
    return [by_id[order_id] for order_id in ids]


def _hand_out(services: Services, account: str) -> None:
    """Publish the account's turns that are free right now, without waiting for a worker's
    dispatcher to wake (it would, a few ms later). Best effort: the request is recorded."""
    try:
        scheduler = services.known_accounts()
        if account not in scheduler.accounts:
            return
        turns, _ = scheduler.release(only=account)
        for turn in turns:
            publish_turn(turn)
    except (redis.RedisError, KombuError) as exc:
        log.warning("producer.hand_out_failed", account=account, error=str(exc))


def _upgrade(services: Services, order_ids: list[str], priority: Priority) -> None:
    """Make waiting cancels urgent: their records first, then their places in line."""

    def raise_priority(record: CancelRecord) -> CancelRecord | None:
        if record.state is not OrderState.QUEUED or record.priority == priority.value:
            return None
        record.priority = priority.value
        return record

    for order_id in order_ids:
        services.store.update(order_id, raise_priority)
    account_of = {r.order_id: r.account for r in services.store.get_many(order_ids) if r}
    for account in set(account_of.values()):
        jobs = [order_id for order_id, name in account_of.items() if name == account]
        services.scheduler.upgrade(account, Bucket.CANCEL, jobs, priority)


def request_cancel_all(
    exchange: str = DEFAULT_EXCHANGE,
    symbol: str | None = None,
    *,
    account: str = DEFAULT_ACCOUNT,
    priority: Priority | str = Priority.NORMAL,
) -> BatchRecord:
    """Ask for every open order of `symbol` (or of the whole account) to be cancelled.

    One cancel-all call within the account's cancel-all budget; every order the exchange
    names gets its own record and is confirmed to its final state. Returns the batch record
    (QUEUED); `get_batch(batch.batch_id)` follows it.
    """
    return create_batch(
        get_services(),
        validate_exchange(exchange),
        validate_symbol(symbol),
        validate_account(account),
        validate_priority(priority),
    )


def create_batch(
    services: Services,
    exchange: str,
    symbol: str | None,
    account: str,
    priority: Priority,
    *,
    batch_id: str | None = None,
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
    )
    where = redact_url(services.settings.redis_url)
    try:
        services.require_account(account)
        if not services.batches.create(batch, watch_at_ms=at + services.watch_grace_ms):
            return services.batches.get(batch.batch_id) or batch
        if not services.replication.confirmed():
            services.batches.discard_queued(batch)
            raise BrokerUnavailable(
                f"no replica of Redis at {where} confirmed the cancel-all within "
                f"{services.settings.replica_wait_ms} ms, so a failover could lose it: it was "
                "removed; request it again"
            )
        _hand_out(services, account)
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
