"""The baseline: a plain Celery app whose only limit is Celery's own per-worker `rate_limit`.

This is what a user gets without a fleet-wide limiter: each worker node keeps its own token
bucket, so N workers may send N times the declared rate. The task sends one signed DELETE
with the service's own exchange client and records the answer; a 429 is not retried.

Environment: REDIS_URL, COINSWITCH_BASE_URL, COINSWITCH_API_KEY, COINSWITCH_SECRET_KEY,
PLAIN_RATE_LIMIT (Celery syntax, default `5/s`: 10/2s expressed per second; empty: none), and
PLAIN_AS_SERVICE=1 for Celery configured as cancel-worker's app is (late acks, prefetch 1, task
events for Flower): the latency benchmark's anchor, "what Celery alone costs".
Run: `celery -A benchmarks.plain_app worker -Q plain_cancels -P threads -c 4`.
"""

from __future__ import annotations

import os
import threading

import redis
import requests
from celery import Celery

from worker.errors import ExchangeError, RateLimited
from worker.exchange import ExchangeClient
from worker.signing import Signer

TASK_NAME = "plain.cancel_order"
QUEUE = "plain_cancels"
RESULTS_KEY = "plain:results"  # list of "<order_id> <outcome>", one per task run
DEFAULT_RATE_LIMIT = "5/s"
TIMEOUT_S = (3.05, 10.0)

#: PLAIN_REDIS_URL (the same Redis by another URL, e.g. the primary behind Sentinels) wins.
REDIS_URL = os.environ.get("PLAIN_REDIS_URL") or os.environ.get(
    "REDIS_URL", "redis://localhost:6379/0"
)

app = Celery("plain_cancel", broker=REDIS_URL)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
)
if os.environ.get("PLAIN_AS_SERVICE") == "1":
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )

_local = threading.local()
_results = redis.Redis.from_url(REDIS_URL)  # thread-safe; connects on first use


def _client() -> ExchangeClient:
    """One exchange client per worker thread (requests sessions are not shared)."""
    client: ExchangeClient | None = getattr(_local, "client", None)
    if client is None:
        signer = Signer(os.environ["COINSWITCH_API_KEY"], os.environ["COINSWITCH_SECRET_KEY"])
        base_url = os.environ["COINSWITCH_BASE_URL"]
        client = ExchangeClient(requests.Session(), base_url, signer, timeout_s=TIMEOUT_S)
        _local.client = client
    return client


@app.task(  # type: ignore[untyped-decorator]  # Celery ships no type information
    name=TASK_NAME, rate_limit=os.environ.get("PLAIN_RATE_LIMIT", DEFAULT_RATE_LIMIT)
)
def cancel_order(order_id: str, exchange: str = "EXCHANGE_2") -> str:
    """Send one signed DELETE for `order_id`; record and return the outcome."""
    try:
        _client().cancel_order(order_id, exchange)
        outcome = "accepted"
    except RateLimited:
        outcome = "rate_limited"
    except ExchangeError as exc:
        outcome = f"error:{type(exc).__name__}"
    _results.rpush(RESULTS_KEY, f"{order_id} {outcome}")
    return outcome
