"""Records on a real Redis: atomic transitions, sticky final states, every change an event."""

import redis

from worker.keys import Keys
from worker.models import OrderState
from worker.records import RecordStore

ORDER_ID = "0193688e-5212-7493-be58-4f83644772e8"


def make_store(client: redis.Redis) -> RecordStore:
    return RecordStore(client, Keys("t"), ttl_s=60)


def test_create_is_idempotent(redis_client: redis.Redis) -> None:
    """A second create returns the existing record and reports it was not created."""
    store = make_store(redis_client)
    first, created = store.create(ORDER_ID, "EXCHANGE_2")
    again, created_again = store.create(ORDER_ID, "EXCHANGE_2")
    assert created and not created_again
    assert again == first and first.state is OrderState.QUEUED


def test_final_state_is_sticky(redis_client: redis.Redis) -> None:
    """Once final, a late transition (a duplicate poll) cannot change the state."""
    store = make_store(redis_client)
    store.create(ORDER_ID, "EXCHANGE_2")
    store.transition(ORDER_ID, OrderState.CANCELLATION_RAISED)
    final = store.transition(ORDER_ID, OrderState.EXECUTED, order={"status": "EXECUTED"})
    late = store.transition(ORDER_ID, OrderState.CANCELLED)
    assert final is not None and late is not None
    assert late.state is OrderState.EXECUTED and late.final_at == final.final_at
    assert [h["state"] for h in late.history] == ["QUEUED", "CANCELLATION_RAISED", "EXECUTED"]


def test_events_stream_has_every_transition(redis_client: redis.Redis) -> None:
    """A consumer group on the stream sees each state change once, in order."""
    store = make_store(redis_client)
    redis_client.xgroup_create(Keys("t").events, "strategy", id="0", mkstream=True)
    store.create(ORDER_ID, "EXCHANGE_2")
    store.transition(ORDER_ID, OrderState.CANCELLATION_RAISED)
    store.transition(ORDER_ID, OrderState.CANCELLATION_RAISED, attempts=2)  # no state change
    store.transition(ORDER_ID, OrderState.CANCELLED)
    batches = redis_client.xreadgroup("strategy", "c1", {Keys("t").events: ">"}, count=10)
    states = [fields["state"] for _, entries in batches for _, fields in entries]
    assert states == ["QUEUED", "CANCELLATION_RAISED", "CANCELLED"]


def test_final_write_unschedules_recheck(redis_client: redis.Redis) -> None:
    """A final record leaves the sweeper's due set."""
    store = make_store(redis_client)
    store.create(ORDER_ID, "EXCHANGE_2")
    store.schedule_check(ORDER_ID, 0)
    assert store.due(10**15, 10) == [ORDER_ID]
    store.transition(ORDER_ID, OrderState.CANCELLED)
    assert store.due(10**15, 10) == []


def test_create_many_counts_and_watches_only_new_records(redis_client: redis.Redis) -> None:
    """Only records that did not exist get a QUEUED event, a count and a sweeper watch."""
    store = make_store(redis_client)
    other = "11111111-2222-4333-8444-555555555555"
    store.create(ORDER_ID, "EXCHANGE_2")
    store.transition(ORDER_ID, OrderState.CANCELLED)
    records, created = store.create_many([ORDER_ID, other], "EXCHANGE_2", watch_at_ms=5)
    assert created == [False, True]
    assert records[0].state is OrderState.CANCELLED and records[1].state is OrderState.QUEUED
    assert store.due(10**15, 10) == [other]
    assert store.state_counts() == {"QUEUED": 1, "CANCELLED": 1}
    events = [f["order_id"] for _, f in redis_client.xrange(Keys("t").events)]
    assert events.count(ORDER_ID) == 2 and events.count(other) == 1


def test_discard_queued_undoes_create_but_keeps_records_under_way(
    redis_client: redis.Redis,
) -> None:
    """discard_queued removes QUEUED records with their count and watch; a record a worker
    has moved on stays."""
    store = make_store(redis_client)
    other = "11111111-2222-4333-8444-555555555555"
    store.create_many([ORDER_ID, other], "EXCHANGE_2", watch_at_ms=5)
    store.transition(other, OrderState.CANCELLATION_RAISED)
    assert store.discard_queued([ORDER_ID, other]) == 1
    assert store.get(ORDER_ID) is None
    assert store.get(other) is not None
    assert store.due(10**15, 10) == [other]
    assert store.state_counts() == {"QUEUED": 0, "CANCELLATION_RAISED": 1}
