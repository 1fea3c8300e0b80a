"""What strategy services call: validate, de-duplicate, record QUEUED and get in line.

Validation happens before anything is written. One Lua call then creates each new record
with its event and sweeper watch and puts it in its account's line for a DELETE turn, with
its priority; the dispatchers are woken at once. No Celery message is sent here: a worker
publishes the cancel task when the order's turn comes, so the broker never holds a backlog
and an urgent cancel is not stuck behind one.

A repeat request for an order in flight returns its record and sends nothing (an urgent
repeat of a cancel still waiting in line moves it up); one for a final order returns the
final record. If Redis cannot be reached, BrokerUnavailable is raised: never a silent drop.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from worker.accounts import is_registered
from worker.errors import BrokerUnavailable, InvalidRequest
from worker.models import (
    DEFAULT_ACCOUNT,
    DEFAULT_EXCHANGE,
    Bucket,
    CancelRecord,
    OrderState,
    Priority,
    validate_account,
    validate_exchange,
    validate_order_id,
    validate_priority,
)
from worker.records import now_ms
from worker.services import Services, get_services
from worker.settings import redact_url


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
        _require_account(services, account)
        records, created = store.create_many(
            unique,
            exchange,
            account=account,
            priority=priority,
            watch_at_ms=now_ms() + services.watch_grace_ms,
        )
        waiting = [
            r.order_id
            for r, made in zip(records, created, strict=True)
            if not made and r.state is OrderState.QUEUED and r.priority != priority.value
        ]
        if waiting and priority is Priority.URGENT:
            _upgrade(services, waiting, priority)
            records = [r or old for r, old in zip(store.get_many(unique), records, strict=True)]
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


def _require_account(services: Services, account: str) -> None:
    """An account is known if this process or some worker (the registry) configured it."""
    if account in services.settings.accounts:
        return
    if not is_registered(services.redis, services.keys, account):
        raise InvalidRequest(
            "account",
            account,
            "is not configured (COINSWITCH_ACCOUNTS and its keys, on the workers)",
        )


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


def get_record(order_id: str) -> CancelRecord | None:
    """The current record of an order, or None if no cancel was requested for it."""
    return get_services().store.get(validate_order_id(order_id))


def get_records(order_ids: Iterable[str]) -> list[CancelRecord | None]:
    """Current records of several orders, in one round trip."""
    ids = [validate_order_id(order_id) for order_id in order_ids]
    return get_services().store.get_many(ids)
