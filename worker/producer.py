"""What strategy services call: validate, de-duplicate, record QUEUED, enqueue the cancel.

Validation happens before anything is written. A repeat request for an order already in
flight returns its record and enqueues nothing; one for a final order returns the final
record. If Redis cannot be reached, BrokerUnavailable is raised: never a silent drop.

The cancel messages of one request (each with its task-sent event for Flower) go out in one
pipelined round trip through kombu's `Producer.batch()`, not one publish per message.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

import redis
import structlog
from kombu.exceptions import KombuError

from worker.cancellation import expected_turn_s, watch_ms
from worker.errors import BrokerUnavailable
from worker.keys import CANCEL_QUEUE
from worker.models import DEFAULT_EXCHANGE, CancelRecord, validate_exchange, validate_order_id
from worker.tasks import cancel_order, get_services

#: Redis commands buffered before kombu flushes the pipeline (2 per cancel: the message
#: and its task-sent event), so a large request is sent in round trips of this size.
PUBLISH_BATCH_COMMANDS = 1000
#: Attempts at publishing a request's messages; a failed flush may have delivered some,
#: so the whole batch is sent again (the worker's per-order guard makes a repeat harmless).
PUBLISH_ATTEMPTS = 3
PUBLISH_RETRY_PAUSE_S = 0.1  # before the 2nd attempt; doubled before each later one

log = structlog.get_logger(__name__)


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
    if fresh:
        _publish(fresh, exchange)
    by_id = {record.order_id: record for record in records}
    return [by_id[order_id] for order_id in ids]


def _publish(order_ids: list[str], exchange: str) -> None:
    """Enqueue one cancel message per order, pipelined; on failure forget them and raise.

    A flush that fails leaves delivery uncertain, so the whole batch is sent again. If every
    attempt fails, the records still QUEUED are dropped (a later request enqueues afresh; a
    message that did land creates its record again in the worker) and BrokerUnavailable is
    raised.
    """
    pause_s = PUBLISH_RETRY_PAUSE_S
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        try:
            with (
                cancel_order.app.producer_or_acquire() as producer,
                producer.batch(max_size=PUBLISH_BATCH_COMMANDS),
            ):
                for order_id in order_ids:
                    cancel_order.apply_async((order_id, exchange), producer=producer)
            return
        except (KombuError, redis.RedisError) as exc:
            # kombu's BatchPublishError says only "uncertain"; the Redis error is its cause.
            error = f"{exc} ({exc.__cause__})" if exc.__cause__ else str(exc)
            if attempt == PUBLISH_ATTEMPTS:
                _forget(order_ids)
                raise BrokerUnavailable(
                    f"could not enqueue {len(order_ids)} cancels (records removed, "
                    f"safe to request again): {error}"
                ) from exc
            log.warning("producer.publish_retry", attempt=attempt, error=error)
            time.sleep(pause_s)
            pause_s *= 2


def get_record(order_id: str) -> CancelRecord | None:
    """The current record of an order, or None if no cancel was requested for it."""
    return get_services().store.get(validate_order_id(order_id))


def get_records(order_ids: Iterable[str]) -> list[CancelRecord | None]:
    """Current records of several orders, in one round trip."""
    ids = [validate_order_id(order_id) for order_id in order_ids]
    return get_services().store.get_many(ids)


def _forget(order_ids: list[str]) -> None:
    """Best effort: drop records whose cancels were not enqueued, so a retry enqueues them."""
    with contextlib.suppress(redis.RedisError):
        get_services().store.discard_queued(order_ids)
