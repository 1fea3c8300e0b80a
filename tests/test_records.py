"""Records on a real Redis: atomic changes, sticky final states, every change an event."""

from __future__ import annotations

import json

import pytest
import redis

from tests.support import scheduler_for
from worker.keys import Keys
from worker.models import Bucket, CancelRecord, OrderState
from worker.records import RecordStore
from worker.scheduler import Scheduler

ORDER_ID = "0193688e-5212-7493-be58-4f83644772e8"
OTHER = "11111111-2222-4333-8444-555555555555"
KEYS = Keys("t")


@pytest.fixture
def store(redis_client: redis.Redis) -> RecordStore:
    return RecordStore(redis_client, KEYS, ttl_s=60)


@pytest.fixture
def scheduler(redis_client: redis.Redis) -> Scheduler:
    return scheduler_for(redis_client, KEYS)


def test_create_is_idempotent(store: RecordStore, scheduler: Scheduler) -> None:
    """A second create returns the existing record and reports it was not created."""
    first = store.create_many([ORDER_ID], "EXCHANGE_2", scheduler, hand_out=False)
    again = store.create_many([ORDER_ID], "EXCHANGE_2", scheduler, hand_out=False)
    assert first.created == [True] and again.created == [False]
    assert again.records == first.records and first.records[0].state is OrderState.QUEUED


def test_final_state_is_sticky(store: RecordStore, scheduler: Scheduler) -> None:
    """Once final, a late transition (a duplicate poll) cannot change the state."""
    store.create_many([ORDER_ID], "EXCHANGE_2", scheduler, hand_out=False)
    store.transition(ORDER_ID, OrderState.CANCELLATION_RAISED, scheduler)
    final = store.transition(ORDER_ID, OrderState.EXECUTED, scheduler, order={"status": "EXECUTED"})
    late = store.transition(ORDER_ID, OrderState.CANCELLED, scheduler)
    assert final is not None and late is not None
    assert late.state is OrderState.EXECUTED and late.final_at == final.final_at
    assert [h["state"] for h in late.history] == ["QUEUED", "CANCELLATION_RAISED", "EXECUTED"]


def test_events_stream_has_every_transition(
    redis_client: redis.Redis, store: RecordStore, scheduler: Scheduler
) -> None:
    """A consumer group on the stream sees each state change once, in order."""
    redis_client.xgroup_create(KEYS.events, "strategy", id="0", mkstream=True)
    store.create_many([ORDER_ID], "EXCHANGE_2", scheduler, hand_out=False)
    store.transition(ORDER_ID, OrderState.CANCELLATION_RAISED, scheduler)
    store.transition(ORDER_ID, OrderState.CANCELLATION_RAISED, scheduler, attempts=2)  # no move
    store.transition(ORDER_ID, OrderState.CANCELLED, scheduler)
    batches = redis_client.xreadgroup("strategy", "c1", {KEYS.events: ">"}, count=10)
    states = [fields["state"] for _, entries in batches for _, fields in entries]
    assert states == ["QUEUED", "CANCELLATION_RAISED", "CANCELLED"]


def test_a_final_write_ends_every_watch_and_place_in_line(
    redis_client: redis.Redis, store: RecordStore, scheduler: Scheduler
) -> None:
    """A final record leaves the sweeper's due set and every line it waited in, and its
    time to final is counted."""
    store.create_many([ORDER_ID], "EXCHANGE_2", scheduler, hand_out=False)
    scheduler.join("default", Bucket.STATUS, [ORDER_ID], delay_s=60)
    store.schedule_check(ORDER_ID, 0)
    assert store.due(10**15, 10) == [ORDER_ID]
    assert scheduler.waiting([("default", Bucket.CANCEL, ORDER_ID)]) == [True]
    store.transition(ORDER_ID, OrderState.CANCELLED, scheduler)
    assert store.due(10**15, 10) == []
    lines = [("default", bucket, ORDER_ID) for bucket in (Bucket.CANCEL, Bucket.STATUS)]
    assert scheduler.waiting(lines) == [False, False]
    assert store.time_to_final()[1] == 1


def test_create_many_counts_and_watches_only_new_records(
    redis_client: redis.Redis, store: RecordStore, scheduler: Scheduler
) -> None:
    """Only records that did not exist get a QUEUED event, a count and a sweeper watch."""
    store.create_many([ORDER_ID], "EXCHANGE_2", scheduler, hand_out=False)
    store.transition(ORDER_ID, OrderState.CANCELLED, scheduler)
    made = store.create_many(
        [ORDER_ID, OTHER], "EXCHANGE_2", scheduler, watch_at_ms=5, hand_out=False
    )
    assert made.created == [False, True]
    assert made.records[0].state is OrderState.CANCELLED
    assert made.records[1].state is OrderState.QUEUED
    assert store.due(10**15, 10) == [OTHER]
    assert store.state_counts() == {"QUEUED": 1, "CANCELLED": 1}
    events = [f["order_id"] for _, f in redis_client.xrange(KEYS.events)]
    assert events.count(ORDER_ID) == 2 and events.count(OTHER) == 1


def test_a_request_meeting_a_free_budget_hands_its_turns_out_in_the_same_call(
    store: RecordStore, scheduler: Scheduler
) -> None:
    """Creating records hands out the free turns of the cancel budget at once (3 per window
    here): those leave the line, booked and watched; the rest wait in line."""
    ids = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(5)]
    made = store.create_many(ids, "EXCHANGE_2", scheduler, watch_at_ms=5)
    assert [t.job for t in made.turns] == ids[:2]  # normal jobs leave the last slot free
    lines = [("default", Bucket.CANCEL, i) for i in ids]
    assert scheduler.waiting(lines) == [False, False, True, True, True]
    assert made.confirmed  # no replica to wait for


def test_discard_queued_undoes_create_but_keeps_records_under_way(
    redis_client: redis.Redis, store: RecordStore, scheduler: Scheduler
) -> None:
    """discard_queued removes QUEUED records with their count, watch and place (or the turn
    handed out to the request: its slot is free again); a record a worker moved on stays."""
    ids = [ORDER_ID, OTHER, "22222222-2222-4333-8444-555555555555"]
    made = store.create_many(ids, "EXCHANGE_2", scheduler, watch_at_ms=5)
    assert [t.job for t in made.turns] == ids[:2]
    store.transition(OTHER, OrderState.CANCELLATION_RAISED, scheduler)
    assert store.discard_queued(ids, scheduler, "default", made.turns) == 2
    assert store.get(ORDER_ID) is None and store.get(ids[2]) is None
    assert store.get(OTHER) is not None
    assert store.due(10**15, 10) == [OTHER]
    assert store.state_counts() == {"QUEUED": 0, "CANCELLATION_RAISED": 1}
    schedule = scheduler.budget_keys("default", Bucket.CANCEL)[0]
    assert [m.split("@")[0] for m in redis_client.zrange(schedule, 0, -1)] == [OTHER]


def test_a_change_decided_from_an_old_record_is_decided_again(
    redis_client: redis.Redis, store: RecordStore, scheduler: Scheduler
) -> None:
    """A change is stored only if the record is still the one it was decided from: else it
    is decided again from the record as it is now (nothing another writer did is lost)."""
    store.create_many([ORDER_ID], "EXCHANGE_2", scheduler, hand_out=False)
    stale = redis_client.get(KEYS.record(ORDER_ID))
    store.transition(ORDER_ID, OrderState.CANCELLATION_RAISED, scheduler, attempts=3)
    seen: list[int] = []

    def bump(record: CancelRecord) -> CancelRecord:
        seen.append(record.attempts)
        record.polls += 1
        return record

    stored = store.update(ORDER_ID, bump, scheduler, raw=stale)
    assert seen == [0, 3]
    assert stored is not None and (stored.attempts, stored.polls) == (3, 1)
    assert json.loads(redis_client.get(KEYS.record(ORDER_ID)))["polls"] == 1
