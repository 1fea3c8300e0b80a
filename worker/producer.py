"""What strategy services call: validate, de-duplicate, record QUEUED, enqueue the cancel.

Validation happens before anything is written. A repeat request for an order already in
flight returns its record and enqueues nothing; one for a final order returns the final
record. If Redis cannot be reached, BrokerUnavailable is raised: never a silent drop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import redis
from kombu.exceptions import OperationalError

from worker.cancellation import expected_turn_s, watch_ms
from worker.errors import BrokerUnavailable
from worker.keys import CANCEL_QUEUE
from worker.models import DEFAULT_EXCHANGE, CancelRecord, validate_exchange, validate_order_id
from worker.tasks import cancel_order, get_services

PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2}


def request_cancel(order_id: str, exchange: str = DEFAULT_EXCHANGE) -> CancelRecord:
    """Ask for one order to be cancelled; return its record (QUEUED, or as far as it got)."""
    return request_cancels([order_id], exchange)[0]


def request_cancels(
    order_ids: Iterable[str], exchange: str = DEFAULT_EXCHANGE
) -> list[CancelRecord]:
    """Ask for several orders to be cancelled; all ids are validated before any is enqueued."""
    ids = [validate_order_id(order_id) for order_id in order_ids]
    exchange = validate_exchange(exchange)
    unique = list(dict.fromkeys(ids))
    services = get_services()
    store = services.store
    try:
        # Each new order is watched: if its message is ever lost, the sweeper sends it again.
        backlog = int(services.redis.llen(CANCEL_QUEUE)) + len(unique)
        due_ms = watch_ms(services, expected_turn_s(services, backlog))
        records, created = store.create_many(unique, exchange, watch_at_ms=due_ms)
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"Redis unavailable, nothing enqueued: {exc}") from exc
    fresh = [r.order_id for r, made in zip(records, created, strict=True) if made]
    sent = 0
    try:
        with cancel_order.app.producer_or_acquire() as producer:
            for order_id in fresh:
                cancel_order.apply_async(
                    (order_id, exchange),
                    producer=producer,
                    retry=True,
                    retry_policy=PUBLISH_RETRY_POLICY,
                )
                sent += 1
    except (OperationalError, redis.RedisError) as exc:
        for order_id in fresh[sent:]:
            _forget(order_id)
        raise BrokerUnavailable(
            f"could not enqueue {len(fresh) - sent} of {len(fresh)} cancels: {exc}"
        ) from exc
    by_id = {record.order_id: record for record in records}
    return [by_id[order_id] for order_id in ids]


def get_record(order_id: str) -> CancelRecord | None:
    """The current record of an order, or None if no cancel was requested for it."""
    return get_services().store.get(validate_order_id(order_id))


def get_records(order_ids: Iterable[str]) -> list[CancelRecord | None]:
    """Current records of several orders, in one round trip."""
    ids = [validate_order_id(order_id) for order_id in order_ids]
    return get_services().store.get_many(ids)


def _forget(order_id: str) -> None:
    """Best effort: drop a record whose cancel was not enqueued, so a retry can enqueue it."""
    with contextlib.suppress(redis.RedisError):
        get_services().store.delete(order_id)
