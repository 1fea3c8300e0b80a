"""The sweeper: lost turns go back in line; work a task holds is looked at when its lease ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import API_KEY, SECRET_KEY, unit_url
from worker.batches import first_job
from worker.models import BatchRecord, BatchState, Bucket, Priority, new_batch_id
from worker.records import now_ms
from worker.scoped import send_plan
from worker.services import Services
from worker.settings import Settings
from worker.sweeper import LEASE_SLACK_MS, WAITING_RECHECK_S, sweep


@pytest.fixture
def services(redis_url: str) -> Iterator[Services]:
    """Services on db 15 of the test Redis, with the default account (nothing is sent)."""
    env = {
        "REDIS_URL": unit_url(redis_url),
        "COINSWITCH_API_KEY": API_KEY,
        "COINSWITCH_SECRET_KEY": SECRET_KEY,
        "COINSWITCH_BASE_URL": "http://127.0.0.1:9",
    }
    built = Services(Settings.from_env(env))
    built.redis.flushdb()
    yield built
    built.redis.close()


def lost(services: Services, order_id: str) -> None:
    """A QUEUED order whose turn was lost: in no line, its watch time passed."""
    services.store.create_many([order_id], "EXCHANGE_2", services.scheduler, hand_out=False)
    assert services.scheduler.forget("default", Bucket.CANCEL, [order_id]) == 1
    services.store.schedule_check(order_id, now_ms() - 1)


def test_a_lost_turn_goes_back_in_line(services: Services) -> None:
    """An order in no line and held by no task joins its line again."""
    lost(services, "o1")
    assert sweep(services, services.scheduler, limit=10) == 1
    assert services.scheduler.waiting([("default", Bucket.CANCEL, "o1")]) == [True]


def test_an_order_a_task_holds_is_looked_at_when_its_lease_ends(services: Services) -> None:
    """A lease (a task mid-turn, or one that lost Redis and could not release it) keeps the
    order out of line until the lease ends, and the sweeper looks again just then, not a
    minute later: 3.5 s after the lease was taken (3 s + LEASE_SLACK_MS), checked as over 2 s
    after the sweep began, which leaves 1.5 s of slack for a loaded 2-core machine."""
    lost(services, "o2")
    services.leases.acquire(services.keys.cancel_lease("o2"), "a-task", 3000)
    before = now_ms()
    assert sweep(services, services.scheduler, limit=10) == 0
    again = services.redis.zscore(services.keys.due, "o2")
    assert again is not None
    assert before + 2000 < again <= now_ms() + 3000 + LEASE_SLACK_MS
    assert again < before + WAITING_RECHECK_S * 1000 / 2


def scoped(services: Services, plan: dict[str, list[str]] | None = None) -> BatchRecord:
    """An owner's QUEUED cancel-all whose task was lost: out of line, its watch time passed
    (with `plan`: after it planned, before it sent anything)."""
    batch = BatchRecord.queued(
        new_batch_id(),
        account="default",
        exchange="EXCHANGE_2",
        symbol=None,
        priority=Priority.URGENT,
        at=now_ms(),
        owner="strat-a",
        symbols=["XRPUSDT"],
    )
    services.batches.create(batch, services.scheduler, watch_at_ms=now_ms() - 1)
    _, job = first_job(batch)
    assert services.scheduler.forget("default", Bucket.OPEN_ORDERS, [job]) == 1
    if plan is not None:
        services.batches.transition(batch.batch_id, BatchState.QUEUED, plan=plan)
    return batch


def test_an_owners_lost_read_goes_back_in_line(services: Services) -> None:
    """An owner's cancel-all whose open-orders read was lost joins the Open Orders line
    again, at the read it was on."""
    batch = scoped(services)
    assert sweep(services, services.scheduler, limit=10) == 1
    job = first_job(batch)[1]
    assert services.scheduler.waiting([("default", Bucket.OPEN_ORDERS, job)]) == [True]


def test_an_owners_plan_is_sent_once_whatever_the_retries(services: Services) -> None:
    """A plan stored by a worker that died before sending it is sent by the sweeper: the
    symbol's cancel-all (a child batch) and the order's urgent DELETE record, followed by
    the batch; sending it again makes nothing new."""
    batch = scoped(services, {"whole": ["XRPUSDT"], "orders": ["o3"], "accepted": []})
    assert sweep(services, services.scheduler, limit=10) == 1
    sent = services.batches.get(batch.batch_id)
    assert sent is not None and sent.state is BatchState.ACCEPTED and sent.orders_ids == ["o3"]
    child = services.batches.get(sent.batches[0])
    assert child is not None and child.symbol == "XRPUSDT" and child.parent == batch.batch_id
    record = services.store.get_many(["o3"])[0]
    assert record is not None and record.batch_id == batch.batch_id
    assert record.priority == "urgent" and record.owner == "strat-a"
    send_plan(services, services.batches.get(batch.batch_id) or sent)
    pending = services.redis.smembers(services.keys.batch_pending(batch.batch_id))
    assert pending == {child.batch_id, "o3"}
    stored = services.redis.keys(services.keys.batch("*"))
    assert len([k for k in stored if not k.endswith(":pending")]) == 2  # the batch, one child
