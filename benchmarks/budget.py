"""Benchmark 1: budget use draining a backlog with 4 worker processes, beside plain Celery.

Each variant gets a fresh sandbox (cancels limited to 10/2s, strictly sliding) and an
emptied Redis, then the whole backlog is enqueued at once:

- cancel-worker: 4 `celery -A worker worker -Q cancels` processes (+1 polls worker), the
  budget declared once (COINSWITCH_CANCEL_RATE_LIMIT=10/2s); the orders wait in Redis and
  the workers' dispatchers hand out each slot of the budget (worker.scheduler);
- plain Celery: 4 processes of `benchmarks.plain_app`, whose task carries Celery's own
  per-worker `rate_limit`: `5/s` (the budget per second, the best a user could declare),
  and `1.25/s` (the budget split by hand over the 4 workers).

Budget use is reported by two metrics (benchmarks.common): the first-burst one the earlier
limiter was judged on, (sends - limit) / span, and the average-rate one the tests use,
(sends - 1) / span; both ÷ limit / period. The scheduler keeps each window's last slot for
urgent work, so its drain starts with limit - 1 sends, which the first-burst metric reads
as a lower rate.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import (
    BenchError,
    Processes,
    accepted_at,
    apply_env,
    average_rate_ratio,
    celery_worker_args,
    place_orders,
    rate_ratio,
    say,
    service_env,
    strict_window_max,
    wait_until,
    wait_workers_ready,
)
from tests.redis_server import redis_server
from worker.sandbox import SandboxConfig, generate_keypair, run_sandbox

LIMIT, PERIOD_MS = 10, 2000
CANCEL_RATE = "10/2s"
STATUS_RATE = "20/2s"
FLEET_SIZE = 4
CONCURRENCY = 4
CONFIRM_DELAY_MS = 200
BACKLOG_FULL, BACKLOG_SMOKE = 120, 30


@dataclass(frozen=True)
class Variant:
    """One way of running the same backlog."""

    key: str
    label: str
    plain_rate: str | None = None  # None: cancel-worker itself


VARIANTS = (
    Variant("service", "cancel-worker (budget scheduler in Redis)"),
    Variant("plain_5", "Celery rate_limit='5/s' per worker", "5/s"),
    Variant("plain_1.25", "Celery rate_limit='1.25/s' per worker (budget / 4)", "1.25/s"),
)


def run(*, smoke: bool, work_dir: Path) -> dict[str, Any]:
    """Run every variant on the same backlog size; return their figures."""
    backlog = BACKLOG_SMOKE if smoke else BACKLOG_FULL
    api_key, secret_key = generate_keypair()
    with redis_server() as redis_url:
        env = service_env(
            redis_url=redis_url,
            sandbox_url="http://127.0.0.1:1",  # each variant's workers get their sandbox's URL
            api_key=api_key,
            secret_key=secret_key,
            cancel_rate=CANCEL_RATE,
            status_rate=STATUS_RATE,
        )
        apply_env(env)
        variants = []
        for variant in VARIANTS:
            redis.Redis.from_url(redis_url).flushall()
            say(f"budget: {variant.label}, backlog {backlog}")
            variants.append(_run_variant(variant, backlog, env, work_dir))
    return {
        "limit": LIMIT,
        "period_ms": PERIOD_MS,
        "backlog": backlog,
        "workers": FLEET_SIZE,
        "concurrency": CONCURRENCY,
        "variants": variants,
    }


def _run_variant(
    variant: Variant, backlog: int, env: dict[str, str], work_dir: Path
) -> dict[str, Any]:
    config = SandboxConfig(
        cancel_limit=CANCEL_RATE, status_limit=STATUS_RATE, confirm_delay_ms=CONFIRM_DELAY_MS
    )
    api_key = env["COINSWITCH_API_KEY"]
    procs = Processes(work_dir)
    with run_sandbox(config, api_keys=[api_key]) as sandbox:
        worker_env = {**os.environ, **env, "COINSWITCH_BASE_URL": sandbox.url}
        try:
            order_ids = place_orders(sandbox, backlog)
            if variant.plain_rate is None:
                outcome = _drain_with_service(backlog, order_ids, worker_env, procs)
            else:
                worker_env["PLAIN_RATE_LIMIT"] = variant.plain_rate
                outcome = _drain_with_plain(variant, backlog, order_ids, worker_env, procs)
        finally:
            procs.stop_all()
        cancel = sandbox.admin.stats()["endpoints"]["cancel"]
        per_order = [sandbox.admin.order(i)["cancel_requests"] for i in order_ids]
        accepted_ms = sorted(t for t in (accepted_at(sandbox, i) for i in order_ids) if t)
    arrivals = sorted(cancel["arrivals_ms"])
    if len(arrivals) != cancel["requests"]:
        raise BenchError("sandbox kept fewer arrival times than requests")
    accepted = outcome["accepted"]
    if len(accepted_ms) != accepted:
        raise BenchError(f"{accepted} orders cancelled but {len(accepted_ms)} DELETEs accepted")
    span_ms = arrivals[-1] - arrivals[0] if arrivals else 0
    return {
        "key": variant.key,
        "label": variant.label,
        "sends": len(arrivals),
        "accepted": accepted,
        "rate_limited": cancel["rate_limited"],
        "strict_window_max": strict_window_max(arrivals, PERIOD_MS),
        "sent_ratio": rate_ratio(arrivals, LIMIT, PERIOD_MS),
        "sent_average_ratio": average_rate_ratio(arrivals, LIMIT, PERIOD_MS),
        "accepted_average_ratio": average_rate_ratio(accepted_ms, LIMIT, PERIOD_MS),
        "not_cancelled": backlog - accepted,
        "max_deletes_per_order": max(per_order, default=0),
        "span_s": span_ms / 1000,
        "arrivals_ms": [at - arrivals[0] for at in arrivals],
        **{k: v for k, v in outcome.items() if k != "accepted"},
    }


def _drain_timeout_s(backlog: int) -> float:
    return 1.5 * backlog * PERIOD_MS / LIMIT / 1000 + 30


def _drain_with_service(
    backlog: int, order_ids: list[str], env: dict[str, str], procs: Processes
) -> dict[str, Any]:
    from worker.celery_app import app
    from worker.keys import CANCEL_QUEUE, POLL_QUEUE
    from worker.models import OrderState
    from worker.producer import get_records, request_cancels

    names = [f"bench-cancels{i}" for i in range(FLEET_SIZE)]
    for name in names:
        procs.start(name, celery_worker_args("worker", CANCEL_QUEUE, name, CONCURRENCY), env)
    procs.start("bench-polls", celery_worker_args("worker", POLL_QUEUE, "bench-polls"), env)
    wait_workers_ready(app, [*names, "bench-polls"], procs)
    started = time.monotonic()
    request_cancels(order_ids)

    def all_final() -> bool:
        return all(r is not None and r.is_final for r in get_records(order_ids))

    wait_until(all_final, _drain_timeout_s(backlog), f"{backlog} final records")
    wall_s = time.monotonic() - started
    states = [r.state for r in get_records(order_ids) if r is not None]
    cancelled = sum(state is OrderState.CANCELLED for state in states)
    return {"accepted": cancelled, "wall_s": wall_s}


def _drain_with_plain(
    variant: Variant,
    backlog: int,
    order_ids: list[str],
    env: dict[str, str],
    procs: Processes,
) -> dict[str, Any]:
    from benchmarks import plain_app

    names = [f"plain{i}-{variant.key}" for i in range(FLEET_SIZE)]
    for name in names:
        args = celery_worker_args("benchmarks.plain_app", plain_app.QUEUE, name, CONCURRENCY)
        procs.start(name, args, env)
    wait_workers_ready(plain_app.app, names, procs)
    client = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
    started = time.monotonic()
    with plain_app.app.producer_or_acquire() as producer:
        for order_id in order_ids:
            plain_app.cancel_order.apply_async((order_id,), producer=producer)
    wait_until(
        lambda: client.llen(plain_app.RESULTS_KEY) >= backlog,
        _drain_timeout_s(backlog),
        f"{backlog} plain task results",
    )
    wall_s = time.monotonic() - started
    outcomes = [line.split()[1] for line in client.lrange(plain_app.RESULTS_KEY, 0, -1)]
    return {"accepted": outcomes.count("accepted"), "wall_s": wall_s}
