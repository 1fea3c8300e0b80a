"""The cancellation pipeline end to end: real Redis, a real Celery worker, the sandbox over HTTP."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import SERVICE_ENV
from tests.support import wait_for
from worker.celery_app import CANCEL_TASK, app
from worker.errors import InvalidRequest
from worker.keys import CANCEL_QUEUE, Keys
from worker.models import CancelRecord, OrderState
from worker.producer import get_record, request_cancel, request_cancels
from worker.sandbox import SandboxHandle

pytestmark = pytest.mark.integration

FINAL_TIMEOUT_S = 20.0


@pytest.fixture(autouse=True)
def _stack(workers: Path, exchange: SandboxHandle) -> None:
    """Every test here runs against the session's worker and a clean sandbox."""


def place(exchange: SandboxHandle, **fields: Any) -> str:
    """Create an open order on the sandbox and return its id."""
    defaults = {"symbol": "DOGEUSDT", "side": "BUY", "order_type": "LIMIT", "quantity": "22"}
    order = exchange.admin.create_order(**{"price": "0.28", **defaults, **fields})
    return str(order["order_id"])


def wait_final(order_id: str, timeout_s: float = FINAL_TIMEOUT_S) -> CancelRecord:
    """Wait until the order's record is final and return it."""

    def final() -> CancelRecord | None:
        record = get_record(order_id)
        return record if record is not None and record.is_final else None

    record: CancelRecord = wait_for(final, timeout_s, f"a final record for {order_id}")
    return record


def truth(exchange: SandboxHandle, order_id: str) -> dict[str, Any]:
    """What the sandbox knows about an order (its state and request counters)."""
    data: dict[str, Any] = exchange.admin.order(order_id)
    return data


def test_plain_cancel_ends_cancelled(exchange: SandboxHandle) -> None:
    """An open order is cancelled with one DELETE and its record walks QUEUED → CANCELLED."""
    order_id = place(exchange)
    record = request_cancel(order_id)
    assert record.state is OrderState.QUEUED
    final = wait_final(order_id)
    assert final.state is OrderState.CANCELLED
    assert final.attempts == 1 and final.error is None and final.final_at is not None
    assert [h["state"] for h in final.history] == ["QUEUED", "CANCELLATION_RAISED", "CANCELLED"]
    assert final.order is not None and final.order["status"] == "CANCELLED"
    assert "avg_execution_price" in final.order and "avg_exec_price" not in final.order
    assert truth(exchange, order_id)["cancel_requests"] == 1


def test_the_first_status_read_goes_when_the_exchange_usually_confirms(
    exchange: SandboxHandle,
) -> None:
    """The fleet learns how long the exchange takes to confirm an accepted cancel (200 ms
    here, from the exchange's own timestamps) and sends an order's first status read then,
    with headroom (~240 ms), not after a fixed delay: each order is final after one read,
    within the learned delay + 1 s of the exchange raising its cancel. The read's hop (a
    turn, a Celery task, one GET) needs little of that 1 s: slack for a loaded 2-core machine."""
    client = redis.Redis.from_url(SERVICE_ENV["REDIS_URL"], decode_responses=True)
    for _ in range(3):
        wait_final(request_cancel(place(exchange)).order_id)
    learned = int(client.get(Keys().confirm_delay) or 0)
    assert 200 * 1.2 <= learned <= 200 * 1.2 + 5
    for _ in range(3):
        order_id = place(exchange)
        final = wait_final(request_cancel(order_id).order_id)
        raised = next(h["at"] for h in final.history if h["state"] == "CANCELLATION_RAISED")
        assert final.state is OrderState.CANCELLED
        assert truth(exchange, order_id)["status_requests"] == 1
        # Found final by the first read: learned delay + a turn's hop, never a second read.
        assert learned <= (final.final_at or 0) - raised < learned + 1000
    client.close()


@pytest.mark.parametrize(
    ("on_cancel", "state"),
    [("fill", OrderState.EXECUTED), ("partial_fill", OrderState.PARTIALLY_EXECUTED)],
)
def test_fill_winning_the_race_is_recorded(
    exchange: SandboxHandle, on_cancel: str, state: OrderState
) -> None:
    """When a fill beats the cancel, the record says so instead of inventing CANCELLED."""
    order_id = place(exchange, on_cancel=on_cancel)
    request_cancel(order_id)
    final = wait_final(order_id)
    assert final.state is state
    assert "CANCELLATION_RAISED" in [h["state"] for h in final.history]
    assert final.order is not None and final.order["status"] == state.value


def test_already_final_order_records_the_truth(exchange: SandboxHandle) -> None:
    """A refused cancel of a filled order asks the status and records EXECUTED."""
    order_id = place(exchange, status="EXECUTED")
    request_cancel(order_id)
    final = wait_final(order_id)
    assert final.state is OrderState.EXECUTED
    assert truth(exchange, order_id)["cancel_accepted"] == 0


def test_unknown_order_fails_not_found(exchange: SandboxHandle) -> None:
    """An id the exchange does not know ends FAILED(order_not_found) after a re-check."""
    order_id = str(uuid.UUID(int=12345, version=4))
    request_cancel(order_id)
    final = wait_final(order_id)
    assert final.state is OrderState.FAILED
    assert final.error is not None and final.error["code"] == "order_not_found"


def test_auth_failure_fails_at_once(exchange: SandboxHandle) -> None:
    """A 401 ends FAILED(auth) with no retry: exactly one DELETE reaches the exchange."""
    order_id = place(exchange)
    exchange.admin.inject("cancel", "unauthorized", order_id=order_id)
    request_cancel(order_id)
    final = wait_final(order_id)
    assert final.state is OrderState.FAILED
    assert final.error is not None and final.error["code"] == "auth"
    assert truth(exchange, order_id)["cancel_requests"] == 1


@pytest.mark.parametrize(
    ("kind", "deletes"),
    [
        ("error_applied", 1),
        ("error_not_applied", 2),
        ("timeout_applied", 1),
        ("timeout_not_applied", 2),
        ("malformed", 1),
        ("rate_limited", 2),
    ],
)
def test_unknown_outcomes_never_double_cancel(
    exchange: SandboxHandle, kind: str, deletes: int
) -> None:
    """After a 5xx, timeout, bad JSON or 429 the order still ends CANCELLED, and a second
    DELETE is sent only when the first did not take effect."""
    order_id = place(exchange)
    exchange.admin.inject("cancel", kind, order_id=order_id)
    request_cancel(order_id)
    final = wait_final(order_id)
    assert final.state is OrderState.CANCELLED
    facts = truth(exchange, order_id)
    assert facts["cancel_requests"] == deletes
    assert facts["cancel_accepted"] == 1


def test_status_faults_do_not_stop_polling(exchange: SandboxHandle) -> None:
    """5xx and malformed answers to status polls are retried until the order is final."""
    order_id = place(exchange)
    exchange.admin.inject("status", "error_not_applied", count=2, order_id=order_id)
    exchange.admin.inject("status", "malformed", order_id=order_id)
    request_cancel(order_id)
    assert wait_final(order_id).state is OrderState.CANCELLED


def test_duplicate_requests_send_one_delete(exchange: SandboxHandle) -> None:
    """Repeated requests, and repeated raw task messages, still send exactly one DELETE."""
    order_id = place(exchange)
    first = request_cancel(order_id)
    second = request_cancel(order_id.upper())
    assert second.order_id == first.order_id and second.requested_at == first.requested_at
    for _ in range(3):
        app.send_task(CANCEL_TASK, args=[order_id, "EXCHANGE_2"])
    assert wait_final(order_id).state is OrderState.CANCELLED
    assert truth(exchange, order_id)["cancel_requests"] == 1


def test_final_order_request_returns_final_record(exchange: SandboxHandle) -> None:
    """Asking again after the order is final returns the final record and sends nothing."""
    order_id = place(exchange)
    request_cancel(order_id)
    final = wait_final(order_id)
    again = request_cancel(order_id)
    assert again.state is OrderState.CANCELLED and again.final_at == final.final_at
    assert truth(exchange, order_id)["cancel_requests"] == 1


def test_send_task_by_name_needs_no_python_producer(exchange: SandboxHandle) -> None:
    """A bare `send_task` by name with JSON args cancels the order and creates its record."""
    order_id = place(exchange)
    app.send_task(CANCEL_TASK, args=[order_id, "exchange_2"])
    final = wait_final(order_id)
    assert final.state is OrderState.CANCELLED and final.exchange == "EXCHANGE_2"


@pytest.mark.parametrize(
    ("order_id", "exchange_name"),
    [
        ("not-a-uuid", "EXCHANGE_2"),
        ("5c0ffee0-0000-4000-8000-000000000001", "BINANCE"),
        ("", "EXCHANGE_2"),
    ],
)
def test_invalid_input_enqueues_nothing(order_id: str, exchange_name: str) -> None:
    """Bad ids or exchanges raise InvalidRequest and leave no record and no message."""
    client = redis.Redis.from_url(SERVICE_ENV["REDIS_URL"], decode_responses=True)
    before = client.llen(CANCEL_QUEUE)
    good = str(uuid.uuid4())
    with pytest.raises(InvalidRequest):
        request_cancels([good, order_id], exchange_name)
    assert client.llen(CANCEL_QUEUE) == before
    assert get_record(good) is None


def test_malformed_task_message_is_dead_lettered(exchange: SandboxHandle) -> None:
    """A message with bad arguments put straight on the queue ends as a dead letter."""
    client = redis.Redis.from_url(SERVICE_ENV["REDIS_URL"], decode_responses=True)
    marker = f"bogus-{uuid.uuid4()}"
    app.send_task(CANCEL_TASK, args=[marker, 42])

    def dead_letter() -> dict[str, Any] | None:
        for raw in client.lrange(Keys().dead_letters, 0, -1):
            entry: dict[str, Any] = json.loads(raw)
            if marker in entry["args"]:
                return entry
        return None

    entry = wait_for(dead_letter, FINAL_TIMEOUT_S, "the dead letter")
    assert entry["task"] == CANCEL_TASK and "order_id" in entry["error"]


def test_event_stream_consumer_sees_every_transition(exchange: SandboxHandle) -> None:
    """A consumer group on the event stream receives each state of the order in order."""
    client = redis.Redis.from_url(SERVICE_ENV["REDIS_URL"], decode_responses=True)
    group = f"g-{uuid.uuid4().hex[:8]}"
    client.xgroup_create(Keys().events, group, id="$", mkstream=True)
    order_id = place(exchange)
    request_cancel(order_id)
    wait_final(order_id)
    states: list[str] = []

    def read_all() -> bool:
        batches = client.xreadgroup(group, "c1", {Keys().events: ">"}, count=1000, block=100)
        for _, entries in batches or []:
            states.extend(f["state"] for _, f in entries if f["order_id"] == order_id)
        return "CANCELLED" in states

    wait_for(read_all, 5, "the final event")
    assert states == ["QUEUED", "CANCELLATION_RAISED", "CANCELLED"]


def test_unconfirmed_is_rechecked_until_the_truth(exchange: SandboxHandle) -> None:
    """An order stuck in CANCELLATION_RAISED goes UNCONFIRMED, never CANCELLED, until the
    exchange shows a final state; the sweeper's slow re-check then records it."""
    order_id = place(exchange, on_cancel="stick")
    request_cancel(order_id)

    def unconfirmed() -> bool:
        record = get_record(order_id)
        return record is not None and record.state is OrderState.UNCONFIRMED

    wait_for(unconfirmed, FINAL_TIMEOUT_S, "UNCONFIRMED")
    exchange.admin.fill(order_id)
    final = wait_final(order_id)
    assert final.state is OrderState.EXECUTED
    assert "UNCONFIRMED" in [h["state"] for h in final.history]


def test_an_idle_worker_is_quiet(own_workers: Any, log_dir: Path) -> None:
    """A worker with nothing to do writes no log line while its dispatcher sweeps (every
    0.5 s here): the sweep floods neither Flower (it is no task) nor the logs."""
    own_workers("quiet", extra_env={"CANCEL_WORKER_NAMESPACE": f"quiet-{uuid.uuid4().hex[:6]}"})
    log = log_dir / "quiet.log"
    wait_for(lambda: "dispatcher.started" in log.read_text(), 20, "the dispatcher")
    wait_for(lambda: "ready." in log.read_text(), 20, "the worker to be ready")
    before = log.read_text()
    time.sleep(3.0)  # a sample of the idle state: six sweep intervals
    assert log.read_text() == before
