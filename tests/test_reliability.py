"""Crashes, Redis restarts, fault storms, bad input and odd answers lose nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SERVICE_ENV
from tests.redis_server import RedisServer, free_port
from tests.soak import run_soak
from tests.support import ROOT, wait_for
from worker.celery_app import CANCEL_TASK, POLL_TASK, SWEEP_TASK, app
from worker.cli import main as cli_main
from worker.errors import InvalidRequest
from worker.keys import CANCEL_QUEUE, POLL_QUEUE, Keys
from worker.models import FINAL_STATES, CancelRecord, OrderState
from worker.producer import get_record, get_records, request_cancel, request_cancels
from worker.sandbox import SandboxHandle

pytestmark = pytest.mark.integration

VISIBILITY_TIMEOUT_S = 10  # CANCEL_WORKER_VISIBILITY_TIMEOUT_S in tests/conftest.py
StartWorker = Callable[..., subprocess.Popen[bytes]]


def place_many(exchange: SandboxHandle, count: int, **fields: Any) -> list[str]:
    order = {"symbol": "DOGEUSDT", "side": "BUY", "order_type": "LIMIT", "quantity": "5"}
    return [
        str(exchange.admin.create_order(**order, price="0.1", **fields)["order_id"])
        for _ in range(count)
    ]


def final_events(client: redis.Redis, order_ids: set[str]) -> dict[str, int]:
    """How many final-state events the stream holds for each of these orders."""
    counts = dict.fromkeys(order_ids, 0)
    for _, fields in client.xrange(Keys().events):
        # Batch and switch events share the stream and carry no order_id.
        if fields.get("order_id") in counts and fields["state"] in FINAL_STATES:
            counts[fields["order_id"]] += 1
    return counts


# --- crashes ----------------------------------------------------------------------------


def test_killed_poll_worker_loses_nothing(
    own_workers: StartWorker, exchange: SandboxHandle
) -> None:
    """SIGKILL a worker holding polls: every order ends final once, with one DELETE."""
    exchange.admin.configure(confirm_delay_ms=2500)
    try:
        own_workers("rcancels", queues=CANCEL_QUEUE, wait=False)
        victim = own_workers("rpolls0", queues=POLL_QUEUE, wait=False)
        own_workers("rpolls1", queues=POLL_QUEUE)
        order_ids = place_many(exchange, 16)
        request_cancels(order_ids)
        host = f"rpolls0@{os.uname().nodename}"

        def victim_holds_polls() -> bool:
            inspect = app.control.inspect([host], timeout=0.5)
            held = (inspect.active() or {}).get(host, []) + (inspect.scheduled() or {}).get(
                host, []
            )
            return bool(held)

        wait_for(victim_holds_polls, 20, "the victim to hold polls")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        # Redelivery after the visibility timeout, or the sweeper for a message lost
        # between BRPOP and the unacked bookkeeping (celery/celery#7950).
        wait_for(
            lambda: all(r is not None and r.is_final for r in get_records(order_ids)),
            VISIBILITY_TIMEOUT_S + 40,
            "every order final",
        )
    finally:
        exchange.admin.configure(confirm_delay_ms=200)
    client = redis.Redis.from_url(SERVICE_ENV["REDIS_URL"], decode_responses=True)
    assert set(final_events(client, set(order_ids)).values()) == {1}
    for record in get_records(order_ids):
        assert record is not None and record.state is OrderState.CANCELLED
        assert [h["state"] for h in record.history].count("CANCELLED") == 1
    for order_id in order_ids:
        facts = exchange.admin.order(order_id)
        assert (facts["cancel_requests"], facts["cancel_accepted"]) == (1, 1)


# --- Redis restarts -----------------------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server with AOF on, of this test's own, that the test may restart."""
    with tempfile.TemporaryDirectory(prefix="cw-aof-") as data_dir:
        server = RedisServer(Path(data_dir), appendonly=True)
        server.start()
        try:
            yield server
        finally:
            server.stop()


def cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=ROOT,
        env={**os.environ, **SERVICE_ENV, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )


def records_in(redis_url: str, order_ids: list[str]) -> list[CancelRecord | None]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    raws = client.mget([Keys().record(i) for i in order_ids])
    return [None if raw is None else CancelRecord.from_dict(json.loads(raw)) for raw in raws]


def all_final_in(redis_url: str, order_ids: list[str]) -> bool:
    try:
        return all(r is not None and r.is_final for r in records_in(redis_url, order_ids))
    except redis.ConnectionError:
        return False


@contextmanager
def production_workers(redis_url: str, log_dir: Path, name: str) -> Iterator[None]:
    """`cancel-worker worker` (which restarts a Celery worker that dies), as the Procfile
    runs it, against this Redis; stopped afterwards."""
    env = {**os.environ, **SERVICE_ENV, "REDIS_URL": redis_url}
    commands = {"worker": [sys.executable, "-m", "worker.cli", "worker"]}
    procs = []
    for kind, command in commands.items():
        log = open(log_dir / f"{name}-{kind}.log", "ab")  # noqa: SIM115 - closed with the process
        procs.append(
            subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )  # fmt: skip
    try:
        yield
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def test_queued_cancels_survive_a_redis_restart(
    own_redis: RedisServer, exchange: SandboxHandle, log_dir: Path
) -> None:
    """Cancels enqueued before a Redis restart (AOF on) are all carried out after it."""
    order_ids = place_many(exchange, 8)
    assert cli(own_redis.url, "cancel", *order_ids).returncode == 0
    own_redis.stop()
    own_redis.start()
    with production_workers(own_redis.url, log_dir, "aof"):
        wait_for(lambda: all_final_in(own_redis.url, order_ids), 40, "every order final")
    for order_id, record in zip(order_ids, records_in(own_redis.url, order_ids), strict=True):
        assert record is not None and record.state is OrderState.CANCELLED
        assert exchange.admin.order(order_id)["cancel_requests"] == 1


def test_workers_ride_out_a_redis_blip(
    own_redis: RedisServer, exchange: SandboxHandle, log_dir: Path
) -> None:
    """Redis restarting while cancels are under way: workers reconnect (or are restarted)
    and every order still ends right, cancelled once."""
    order_ids = place_many(exchange, 24)
    with production_workers(own_redis.url, log_dir, "blip"):
        assert cli(own_redis.url, "cancel", *order_ids).returncode == 0

        def some_final() -> bool:
            return sum(bool(r and r.is_final) for r in records_in(own_redis.url, order_ids)) >= 4

        wait_for(some_final, 30, "the first cancels")
        own_redis.stop()
        time.sleep(1.0)  # the blip itself: Redis stays down for a second
        own_redis.start()
        wait_for(lambda: all_final_in(own_redis.url, order_ids), 90, "every order final")
    for order_id, record in zip(order_ids, records_in(own_redis.url, order_ids), strict=True):
        assert record is not None and record.state is OrderState.CANCELLED, order_id
        assert exchange.admin.order(order_id)["cancel_accepted"] == 1


def test_unreachable_redis_raises_not_drops() -> None:
    """request_cancel with Redis down raises BrokerUnavailable, naming the cause."""
    from tests.redis_server import free_port

    code = (
        "from worker import request_cancel, BrokerUnavailable\n"
        "try:\n    request_cancel('0193688e-5212-7493-be58-4f83644772e8')\n"
        "except BrokerUnavailable as exc:\n    print('raised:', exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.startswith("raised: Redis unavailable at redis://"), result.stderr
    assert "nothing enqueued" in result.stdout


# --- fault storm ----------------------------------------------------------------------------


def test_fault_storm_loses_nothing() -> None:
    """200 cancels over 3 workers with 20 % 5xx (half applied), 5 % timeouts and 5 % bad JSON:
    every order final and equal to the exchange's truth, none cancelled twice, no 429."""
    report = run_soak(200, 3)
    assert report.final == 200 and not report.lost
    assert not report.wrong, report.wrong
    assert not report.double_cancels
    assert report.rate_limited == 0
    assert report.faults > 50  # the storm really happened


# --- bad input ------------------------------------------------------------------------------

bad_ids = st.one_of(
    st.text(max_size=80).filter(lambda s: len(s) != 36),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=36, max_size=36),
    st.sampled_from(
        [
            "",
            " " * 36,
            "'; DROP TABLE orders; --",
            "0193688e-5212-7493-be58-4f83644772e8\n",
            "0193688e-5212-7493-be58-4f83644772e8 OR 1=1",
            "{{7*7}}",
            "../../etc/passwd",
            "0193688e-5212-7493-be58-4f83644772e\u0000",
            "x" * 100_000,
        ]
    ),
    st.integers(),
    st.none(),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.floats(allow_nan=True),
)
bad_exchanges = st.one_of(
    st.text(max_size=30).filter(lambda s: s.upper() != "EXCHANGE_2"),
    st.integers(),
    st.none(),
    st.sampled_from(["EXCHANGE_1", "exchange-2", "EXCHANGE_2 ", "\uff25XCHANGE_2"]),
)


def is_invalid_id(value: object) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return True
    return not isinstance(value, str) or len(value) != 36


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad=bad_ids)
def test_fuzzed_ids_are_refused_and_nothing_is_enqueued(bad: object) -> None:
    """Any id that is not a UUID string is refused by request_cancel, naming the field."""
    if not is_invalid_id(bad):
        return
    client = redis.Redis.from_url(SERVICE_ENV["REDIS_URL"], decode_responses=True)
    before = client.llen(CANCEL_QUEUE)
    good = str(uuid.uuid4())
    with pytest.raises(InvalidRequest) as info:
        request_cancels([good, bad])  # type: ignore[list-item]
    assert info.value.field == "order_id"
    assert client.llen(CANCEL_QUEUE) == before and get_record(good) is None


@settings(max_examples=60, deadline=None)
@given(bad=bad_exchanges)
def test_fuzzed_exchanges_are_refused(bad: object) -> None:
    """Any exchange but EXCHANGE_2 (any case) is refused before anything is written."""
    good = str(uuid.uuid4())
    with pytest.raises(InvalidRequest) as info:
        request_cancel(good, bad)  # type: ignore[arg-type]
    assert info.value.field == "exchange" and get_record(good) is None


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(bad=st.text(min_size=1, max_size=60).filter(lambda s: "\x00" not in s))
def test_fuzzed_cli_ids_exit_2_with_the_value(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI refuses a bad id with exit code 2 and a message quoting it."""
    if not is_invalid_id(bad) or bad.startswith("-"):
        return
    assert cli_main(["cancel", bad]) == 2
    err = capsys.readouterr().err
    assert "invalid order_id" in err and "nothing was enqueued" in err


@pytest.mark.parametrize(
    ("task", "args", "kwargs"),
    [
        (CANCEL_TASK, [], {}),
        (CANCEL_TASK, ["x", "EXCHANGE_2", 1, 2, 3], {}),
        (CANCEL_TASK, [{"order_id": "x"}], {}),
        (CANCEL_TASK, ["0193688e-5212-7493-be58-4f83644772e8"], {"colour": "red"}),
        (POLL_TASK, ["0193688e-5212-7493-be58-4f83644772e8"], {"seq": "one"}),
        (POLL_TASK, [None, None], {}),
    ],
)
def test_malformed_messages_become_dead_letters(
    workers: Path, task: str, args: list[Any], kwargs: dict[str, Any]
) -> None:
    """A message of the wrong shape put straight on the queue ends as a dead letter, once."""
    client = redis.Redis.from_url(SERVICE_ENV["REDIS_URL"], decode_responses=True)
    task_id = f"bad-{uuid.uuid4()}"
    app.send_task(task, args=args, kwargs=kwargs, task_id=task_id)

    def letters() -> list[dict[str, Any]]:
        entries = [json.loads(raw) for raw in client.lrange(Keys().dead_letters, 0, -1)]
        return [e for e in entries if e["task_id"] == task_id]

    found = wait_for(letters, 20, "the dead letter")
    assert len(found) == 1 and found[0]["task"] == task


# --- unexpected answers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "status", "body"),
    [
        ("cancel", 200, '{"data": {"status": 7}}'),
        ("cancel", 200, '{"data": []}'),
        ("cancel", 200, "null"),
        ("cancel", 418, "<html>teapot</html>"),
        ("cancel", 302, ""),
        ("status", 200, '{"data": {"order": {"status": "EXPIRED_MAYBE"}}}'),
        ("status", 200, '{"data": {"order": "CANCELLED"}}'),
        ("status", 200, '{"order": {"status": "CANCELLED"}}'),
        ("status", 500, "not json at all"),
    ],
)
def test_unexpected_answers_never_lose_the_order(
    workers: Path, exchange: SandboxHandle, endpoint: str, status: int, body: str
) -> None:
    """Odd shapes, types, statuses and codes from the exchange still end in the true state."""
    order_id = place_many(exchange, 1)[0]
    exchange.admin.inject(endpoint, "body", status=status, body=body, order_id=order_id)
    request_cancel(order_id)
    final = wait_for(
        lambda: (r := get_record(order_id)) is not None and r.is_final and r, 30, "final"
    )
    assert final.state is OrderState.CANCELLED
    assert exchange.admin.order(order_id)["cancel_accepted"] == 1


def _status(url: str) -> int:
    try:
        return requests.get(url, timeout=2).status_code
    except requests.RequestException:
        return 0


# --- secrets --------------------------------------------------------------------------------


def test_secret_never_leaves_the_process(
    workers: Path, exchange: SandboxHandle, log_dir: Path
) -> None:
    """The secret key and the full API key appear in no log, message, record, event, dead
    letter, error text or Flower answer, after a cancel that went through faults."""
    secret, api_key = SERVICE_ENV["COINSWITCH_SECRET_KEY"], SERVICE_ENV["COINSWITCH_API_KEY"]
    flower_port = free_port()
    flower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker",
            "flower",
            f"--port={flower_port}",
            "--address=127.0.0.1",
        ],
        cwd=ROOT,
        env={**os.environ, **SERVICE_ENV, "FLOWER_UNAUTHENTICATED_API": "true"},
        stdout=open(log_dir / "flower.log", "ab"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
    )
    try:
        flower_url = f"http://127.0.0.1:{flower_port}"
        wait_for(lambda: _status(f"{flower_url}/healthcheck") == 200, 30, "Flower")

        def flower_sees_events() -> bool:
            app.send_task(SWEEP_TASK)  # harmless; proves Flower's event stream is live
            return requests.get(f"{flower_url}/api/tasks", timeout=5).json() != {}

        wait_for(flower_sees_events, 30, "Flower to receive task events")
        order_id = place_many(exchange, 1)[0]
        exchange.admin.inject("cancel", "error_applied", order_id=order_id)
        exchange.admin.inject("status", "unauthorized", order_id=order_id)
        request_cancel(order_id)
        wait_for(lambda: (r := get_record(order_id)) is not None and r.is_final, 30, "final")
        tasks = wait_for(
            lambda: (
                (t := requests.get(f"{flower_url}/api/tasks", timeout=5).text)
                and order_id in t
                and t
            ),
            20,
            "Flower to see the task",
        )
        flower_texts = [tasks, requests.get(f"{flower_url}/api/workers", timeout=5).text]
    finally:
        flower.terminate()
        flower.wait(timeout=20)

    client = redis.Redis.from_url(SERVICE_ENV["REDIS_URL"], decode_responses=True)
    haystacks: list[str] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "string":
            haystacks.append(str(client.get(key)))
        elif kind == "list":
            haystacks.extend(client.lrange(key, 0, -1))
        elif kind == "hash":
            haystacks.append(json.dumps(client.hgetall(key)))
        elif kind == "stream":
            haystacks.append(json.dumps(client.xrange(key)))
        elif kind == "zset":
            haystacks.append(json.dumps(client.zrange(key, 0, -1)))
        haystacks.append(key)
    for path in log_dir.glob("*.log"):
        haystacks.append(path.read_text(errors="replace"))
    haystacks.append(json.dumps(app.control.inspect(timeout=1).stats() or {}))
    haystacks.append(json.dumps(app.control.inspect(timeout=1).conf() or {}, default=str))
    haystacks.extend(flower_texts)
    assert len(haystacks) > 10
    for text in haystacks:
        assert secret not in text
        assert api_key not in text
