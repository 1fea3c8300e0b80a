"""request_cancels publishes a request's messages in pipelined batches and loses none.

Each test runs the producer in a child process against a redis-server of its own, with no
worker, so the broker queue and the task events can be read exactly as the producer left them.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.conftest import SERVICE_ENV
from tests.redis_server import redis_server
from tests.support import ROOT
from worker.celery_app import CANCEL_TASK, app
from worker.keys import CANCEL_QUEUE, Keys
from worker.producer import PUBLISH_BATCH_COMMANDS

pytestmark = pytest.mark.integration

SEED = 20261203
EVENT_WAIT_S = 10.0
CANCELS_PER_FLUSH = PUBLISH_BATCH_COMMANDS // 2  # each cancel: its message and its event
#: Two full pipeline flushes and part of a third.
MANY = 2 * CANCELS_PER_FLUSH + 200

PRODUCE = """
import json, sys
from worker import BrokerUnavailable, request_cancels
try:
    records = request_cancels(sys.argv[1:])
except BrokerUnavailable as exc:
    print(json.dumps({"raised": str(exc)}))
else:
    print(json.dumps({"states": [r.state.value for r in records]}))
"""


def order_ids(count: int, seed: int = SEED) -> list[str]:
    """Deterministic order ids (UUID v4 from a seeded generator)."""
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


def produce(redis_url: str, ids: list[str]) -> dict[str, Any]:
    """Run request_cancels(ids) in a fresh process against `redis_url`; return what it printed."""
    result = subprocess.run(
        [sys.executable, "-c", PRODUCE, *ids],
        cwd=ROOT,
        env={**os.environ, **SERVICE_ENV, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])  # after any log lines
    return out


def queued_cancels(client: redis.Redis) -> list[tuple[str, list[Any]]]:
    """(task name, args) of every message waiting in the cancels queue."""
    messages = []
    for raw in client.lrange(CANCEL_QUEUE, 0, -1):
        envelope = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        messages.append((envelope["headers"]["task"], args))
    return messages


def reads_processed(client: redis.Redis) -> int:
    """How many socket reads the server has processed (a round trip needs at least one)."""
    return int(client.info("stats")["total_reads_processed"])


@pytest.fixture
def own_redis_url() -> Iterator[str]:
    """A redis-server of this test's own: nothing else reads or writes its keys."""
    with redis_server() as url:
        yield url


def test_batch_enqueues_every_message_with_its_sent_event(own_redis_url: str) -> None:
    """A request larger than one pipeline flush enqueues each cancel once, with its task-sent
    event (what Flower shows), and records each QUEUED."""
    ids = order_ids(MANY)
    client = redis.Redis.from_url(own_redis_url, decode_responses=True)
    events = client.pubsub()
    events.psubscribe("*celeryev*")
    assert events.get_message(timeout=EVENT_WAIT_S)["type"] == "psubscribe"

    reads_before = reads_processed(client)
    assert produce(own_redis_url, ids) == {"states": ["QUEUED"] * MANY}
    # Pipelined: fewer socket reads than messages (a publish per message needs 2 reads each).
    assert reads_processed(client) - reads_before < MANY

    messages = queued_cancels(client)
    assert sorted(args[0] for _, args in messages) == sorted(ids)
    assert {task for task, _ in messages} == {CANCEL_TASK}
    sent: list[str] = []
    deadline = time.monotonic() + EVENT_WAIT_S
    while len(sent) < MANY and time.monotonic() < deadline:
        message = events.get_message(timeout=0.5)
        if message and message["type"] == "pmessage":
            event = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
            if event["type"] == "task-sent":
                sent.append(event["name"])
    assert sent == [CANCEL_TASK] * MANY
    assert client.zcard(Keys().due) == MANY  # every new order is watched by the sweeper
    events.close()
    client.close()


def test_a_batch_redis_refuses_is_forgotten_and_can_be_requested_again(
    own_redis_url: str,
) -> None:
    """When Redis refuses the publish, request_cancels raises BrokerUnavailable naming the
    count, leaves no record or message behind, and the same request later goes through."""
    ids = order_ids(5)
    client = redis.Redis.from_url(own_redis_url, decode_responses=True)
    client.acl_setuser("default", enabled=True, commands=["-lpush"])

    refused = produce(own_redis_url, ids)
    assert refused["raised"].startswith("could not enqueue 5 cancels"), refused
    assert "permissions to run the 'lpush' command" in refused["raised"]  # the cause
    assert client.mget([Keys().record(i) for i in ids]) == [None] * 5
    assert client.llen(CANCEL_QUEUE) == 0

    client.acl_setuser("default", enabled=True, commands=["+lpush"])
    assert produce(own_redis_url, ids) == {"states": ["QUEUED"] * 5}
    assert sorted(args[0] for _, args in queued_cancels(client)) == sorted(ids)
    client.close()


def test_app_producer_can_batch(redis_url: str) -> None:
    """The app's broker settings let kombu pipeline publishes (a Redis retry option would
    silently turn every batch back into one round trip per message)."""
    with app.producer_or_acquire() as producer:
        assert producer.supports_batch_publish
