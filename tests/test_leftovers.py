"""Leftovers of an earlier run: said at `run`'s start, or dropped as FAILED(dropped). Each test
has a redis-server of its own and no worker, so nothing moves the leftovers meanwhile."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import SERVICE_ENV
from tests.redis_server import redis_server
from tests.test_cli import cli
from worker import leftovers
from worker.models import BatchRecord, BatchState, Bucket, OrderState, Priority, new_batch_id
from worker.rates import Rate
from worker.records import now_ms
from worker.services import Services
from worker.settings import Settings
from worker.stack import leftover_lines

pytestmark = pytest.mark.integration

REAL = {"COINSWITCH_CANCEL_RATE_LIMIT": "10/60s", "COINSWITCH_STATUS_RATE_LIMIT": "20/60s"}


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    """The service's environment on a redis-server of this test's own, at the real limits."""
    with redis_server() as url:
        yield {**SERVICE_ENV, "REDIS_URL": url, **REAL}


def leave_work(services: Services) -> tuple[list[str], list[str], str]:
    """What a stopped run leaves: 12 cancels in line, 3 accepted awaiting confirmation, a
    cancel-all in line, and one final record; returns (queued, accepted, batch id)."""
    queued = [f"00000000-0000-4000-8000-{i:012d}" for i in range(12)]
    accepted = [f"00000000-0000-4000-9000-{i:012d}" for i in range(3)]
    store, scheduler = services.store, services.scheduler
    watch = now_ms() + 60_000
    store.create_many(queued, "EXCHANGE_2", scheduler, watch_at_ms=watch, hand_out=False)
    store.create_many(accepted, "EXCHANGE_2", scheduler, watch_at_ms=watch, accepted=True)
    batch = BatchRecord.queued(
        new_batch_id(),
        account="default",
        exchange="EXCHANGE_2",
        symbol="BTCUSDT",
        priority=Priority.NORMAL,
        at=now_ms(),
    )
    services.batches.create(batch, scheduler, watch_at_ms=watch)
    return queued, accepted, batch.batch_id


def test_leftovers_are_said_with_their_account_and_how_long_they_hold_it(
    env: dict[str, str],
) -> None:
    """An earlier run's 12 cancels in line, 3 orders awaiting confirmation and a cancel-all
    are counted on their account, with the time they hold its budgets at 10/60s (two
    windows for 12 DELETEs), and the banner names the flag that drops them."""
    services = Services(Settings.from_env(env))
    leave_work(services)
    [found] = leftovers.find(services)
    assert (found.account, found.to_cancel, found.to_confirm, found.batches) == (
        "default",
        12,
        3,
        1,
    )
    assert found.hold_s == 120.0
    lines = leftover_lines(env, drop=False, sandbox=True)
    text = "\n".join(lines)
    assert "account default: 12 to cancel, 3 to confirm, 1 cancel-all(s)" in text
    assert "~2m00s" in text and "FAILED(order_not_found)" in text and "--drop-leftovers" in text
    assert (
        leftover_lines({**env, "CANCEL_WORKER_NAMESPACE": "other"}, drop=False, sandbox=True) == []
    )


def test_dropped_leftovers_end_failed_dropped_and_leave_every_line(env: dict[str, str]) -> None:
    """`run --drop-leftovers`: every unfinished record ends FAILED with error code `dropped`
    (never a state the exchange showed), leaves its line and the sweeper's watch; the
    cancel-all ends FAILED(dropped); a final record is left as it was."""
    services = Services(Settings.from_env(env))
    queued, accepted, batch_id = leave_work(services)
    lines = leftover_lines(env, drop=True, sandbox=True)
    assert lines == [
        "Leftovers   dropped 15 order(s) and 1 cancel-all(s) an earlier run left: FAILED(dropped)"
    ]
    records = services.store.get_many(queued + accepted)
    assert {(r.state, r.error["code"]) for r in records if r and r.error} == {
        (OrderState.FAILED, "dropped")
    } and all(records)
    places = [("default", Bucket.CANCEL, i) for i in queued]
    assert not any(services.scheduler.waiting(places))
    assert not any(services.scheduler.waiting([("default", Bucket.CANCEL_ALL, batch_id)]))
    batch = services.batches.get(batch_id)
    assert batch is not None and batch.state is BatchState.FAILED
    assert services.store.count_due() == 0
    assert leftovers.find(services) == []


def test_hold_time_counts_whole_windows_of_each_budget() -> None:
    """The hold time is whole windows of the busier budget: DELETEs at the cancel rate, one
    status read per order awaiting confirmation at the status rate."""
    rates = {Bucket.CANCEL: Rate(10, 60.0), Bucket.STATUS: Rate(20, 60.0)}
    assert leftovers.hold_s(0, 0, rates) == 0.0
    assert leftovers.hold_s(1, 0, rates) == 60.0
    assert leftovers.hold_s(10, 45, rates) == 180.0
    assert leftovers.hold_s(21, 3, rates) == 180.0


def test_run_documents_the_flag() -> None:
    """`run --help` explains --drop-leftovers and what the dropped records become."""
    result = cli("run", "--help")
    assert result.returncode == 0 and "--drop-leftovers" in result.stdout
    assert "dropped" in result.stdout
