"""request_cancels records a request and puts it in line in one round trip, losing nothing.

Each test runs the producer in a child process against a redis-server of its own, with no
worker, so the records and the line can be read exactly as the producer left them.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.conftest import SERVICE_ENV
from tests.redis_server import redis_server
from tests.support import ROOT
from worker.keys import CANCEL_QUEUE, Keys
from worker.models import Bucket

pytestmark = pytest.mark.integration

SEED = 20261203
MANY = 1200

PRODUCE = """
import json, sys
from worker import BrokerUnavailable, request_cancels
try:
    records = request_cancels(sys.argv[2:], priority=sys.argv[1])
except BrokerUnavailable as exc:
    print(json.dumps({"raised": str(exc)}))
else:
    print(json.dumps({"states": [r.state.value for r in records]}))
"""


def order_ids(count: int, seed: int = SEED) -> list[str]:
    """Deterministic order ids (UUID v4 from a seeded generator)."""
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


#: A budget of one DELETE a minute: the first request takes the only free turn, the rest wait.
ONE_A_MINUTE = {"COINSWITCH_CANCEL_RATE_LIMIT": "1/60s"}


def produce(redis_url: str, ids: list[str], priority: str = "normal") -> dict[str, Any]:
    """Run request_cancels(ids) in a fresh process against `redis_url`; return what it printed."""
    result = subprocess.run(
        [sys.executable, "-c", PRODUCE, priority, *ids],
        cwd=ROOT,
        env={**os.environ, **SERVICE_ENV, "REDIS_URL": redis_url, **ONE_A_MINUTE},
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


def in_line(client: redis.Redis, account: str = "default") -> list[str]:
    """Order ids waiting for a DELETE turn, first to go first."""
    return list(client.zrange(Keys().line_queue(account, Bucket.CANCEL, ""), 0, -1))


@pytest.fixture
def own_redis_url() -> Iterator[str]:
    """A redis-server of this test's own: nothing else reads or writes its keys."""
    with redis_server() as url:
        yield url


def test_a_large_request_is_recorded_in_line_in_request_order(own_redis_url: str) -> None:
    """1,200 cancels are recorded QUEUED, watched and put in line in request order by one
    script call, which also hands out the turn free right now (its cancel turn task is the
    only broker message); the rest wait in line, and one wake token tells the dispatchers."""
    ids = order_ids(MANY)
    client = redis.Redis.from_url(own_redis_url, decode_responses=True)
    client.config_resetstat()
    assert produce(own_redis_url, ids) == {"states": ["QUEUED"] * MANY}
    calls = client.info("commandstats")
    scripts = sum(calls.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))
    assert scripts <= 2  # one call (redis-py retries it once after loading the script)
    assert calls["cmdstat_set"]["calls"] == MANY  # the records, written inside one call

    assert in_line(client) == ids[1:]
    assert client.zcard(Keys().due) == MANY  # every new order is watched by the sweeper
    assert queued_cancels(client) == [("cancel_worker.cancel_turn", [ids[0]])]
    assert client.lrange(Keys().wake, 0, -1) == ["1"]
    records = [json.loads(raw) for raw in client.mget([Keys().record(i) for i in ids])]
    assert {(r["state"], r["account"], r["priority"]) for r in records} == {
        ("QUEUED", "default", "normal")
    }
    client.close()


def test_urgent_requests_go_ahead_and_an_urgent_repeat_moves_up(own_redis_url: str) -> None:
    """Urgent cancels are in line before every normal one; an urgent repeat of a normal
    cancel still waiting moves it up (keeping its request time), and its record says urgent."""
    normal, urgent = order_ids(5), order_ids(2, seed=SEED + 1)
    client = redis.Redis.from_url(own_redis_url, decode_responses=True)
    produce(own_redis_url, normal)  # the first takes the minute's only turn
    produce(own_redis_url, urgent, "urgent")
    assert in_line(client) == urgent + normal[1:]
    produce(own_redis_url, [normal[3]], "urgent")
    assert in_line(client) == [normal[3], *urgent, normal[1], normal[2], normal[4]]
    record = json.loads(client.get(Keys().record(normal[3])))
    assert record["priority"] == "urgent"
    client.close()


def test_a_request_redis_refuses_leaves_nothing_and_can_be_sent_again(
    own_redis_url: str,
) -> None:
    """When Redis refuses the request's script, request_cancels raises BrokerUnavailable
    naming the cause, leaves no record and nothing in line, and the same request later goes
    through."""
    ids = order_ids(5)
    client = redis.Redis.from_url(own_redis_url, decode_responses=True)
    client.acl_setuser("default", enabled=True, commands=["-evalsha", "-eval"])

    refused = produce(own_redis_url, ids)
    assert refused["raised"].startswith("Redis unavailable at redis://"), refused
    assert "nothing enqueued" in refused["raised"]
    assert "permissions" in refused["raised"]  # the cause
    assert client.mget([Keys().record(i) for i in ids]) == [None] * 5
    assert in_line(client) == []

    client.acl_setuser("default", enabled=True, commands=["+evalsha", "+eval"])
    assert produce(own_redis_url, ids) == {"states": ["QUEUED"] * 5}
    assert in_line(client) == ids[1:]
    client.close()


def test_an_account_no_worker_serves_is_refused(own_redis_url: str) -> None:
    """A request for an account neither this process nor any worker configured raises
    InvalidRequest naming it, and writes nothing."""
    code = (
        "from worker import request_cancel, InvalidRequest\n"
        "try:\n    request_cancel('0193688e-5212-7493-be58-4f83644772e8', account='gamma')\n"
        "except InvalidRequest as exc:\n    print('raised:', exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **SERVICE_ENV, "REDIS_URL": own_redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.startswith("raised: invalid account 'gamma'"), result.stderr
    client = redis.Redis.from_url(own_redis_url, decode_responses=True)
    assert client.dbsize() == 0
    client.close()


def test_the_client_api_loads_none_of_the_worker() -> None:
    """Importing the client API loads what a request needs and none of the worker's parts
    (dispatcher, duties, sweeper, dead man's switch, per-order rules, turns), nor Celery or
    requests (loaded on the first publish, or never), and reads no configuration."""
    code = (
        "import sys\n"
        "from worker import request_cancel, request_cancels, get_record\n"
        "heavy = ('worker.dispatcher', 'worker.duties', 'worker.sweeper', 'worker.deadman',\n"
        "         'worker.cancellation', 'worker.turns', 'worker.tasks', 'worker.celery_app',\n"
        "         'celery', 'requests')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": "redis://localhost:notaport/0"},  # never read here
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
