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

from benchmarks import fmt
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
from benchmarks.report import Axes, Figures, Goal, Report, Results, Table, window_steps
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


# ---- its part of the report: goal (1), its section, table and plot --------------------------

BUDGET_GOAL = 0.95  # of the allowed rate (average-rate metric), with 0 429s

VARIANT_HEADERS = [
    "variant",
    "DELETEs sent",
    "accepted",
    "429s",
    "strict-window max",
    "sent ÷ allowed (average rate)",
    "sent ÷ allowed (first burst, old)",
    "accepted ÷ allowed (average rate)",
    "orders left open",
    "first → last send",
]


def _goals(budget: Figures, results: Results) -> list[Goal]:
    """(1): cancel-worker's budget use, by the average-rate metric, with no 429."""
    service = next(v for v in budget["variants"] if v["key"] == "service")
    allowed = budget["limit"] / budget["period_ms"] * 1000
    ratio = service["sent_average_ratio"]
    return [
        Goal(
            "(1) budget use, 4 workers",
            f"{ratio * allowed:.2f} DELETE/s average (first-burst metric "
            f"{fmt.ratio(service['sent_ratio'])}), {service['rate_limited']} 429s, "
            f"window max {service['strict_window_max']}",
            f"allowed {allowed:g}/s ({budget['limit']}/{budget['period_ms'] / 1000:g}s)",
            ratio,
            f"≥ {BUDGET_GOAL} with 0 429s",
            ratio >= BUDGET_GOAL
            and service["rate_limited"] == 0
            and service["strict_window_max"] <= budget["limit"],
        )
    ]


def _variant_rows(budget: Figures) -> list[list[str]]:
    """One row per way of draining the backlog."""
    rows = []
    for v in budget["variants"]:
        rows.append(
            [
                v["label"],
                str(v["sends"]),
                str(v["accepted"]),
                str(v["rate_limited"]),
                f"{v['strict_window_max']} (limit {budget['limit']})",
                fmt.ratio(v["sent_average_ratio"]),
                fmt.ratio(v["sent_ratio"]),
                fmt.ratio(v["accepted_average_ratio"]),
                str(v["not_cancelled"]),
                f"{v['span_s']:.1f} s",
            ]
        )
    return rows


def _tables(budget: Figures, results: Results) -> list[Table]:
    return [(VARIANT_HEADERS, _variant_rows(budget))]


def _section(b: Figures, results: Results) -> list[str]:
    """(1): the backlog drained by cancel-worker and by plain Celery, and the two metrics."""
    limit, period_s = b["limit"], b["period_ms"] / 1000
    return [
        "## (1) Budget use with a backlog",
        "",
        f"A backlog of {b['backlog']} cancels requested at once; {b['workers']} worker "
        f"processes (threads pool, -c {b['concurrency']}); sandbox limit {limit} "
        f"DELETEs per {period_s:g} s, strictly sliding; a fresh sandbox "
        "and an emptied Redis per variant. The plain Celery task sends once and does "
        "not retry a 429, so a refused cancel leaves its order open.",
        "",
        fmt.md_table(VARIANT_HEADERS, _variant_rows(b)),
        "",
        "Two metrics of budget use, both ÷ the allowed rate limit / period:",
        "",
        "- **average rate** (the goal's, and `tests.support.budget_use`): (sends - 1) / "
        "(last - first arrival). It is the rate the budget was spent at over the drain, "
        "whatever the shape of its first window.",
        f"- **first burst** (the old one): (sends - {limit}) / (last - first arrival). It "
        f"assumes a limiter that fires a full burst of {limit} at the first instant, then "
        f"{limit} per period, and discounts that burst. The scheduler does not do that: it "
        "keeps the last slot of each window for urgent work and gives it to a normal job "
        "only within one slot interval (period ÷ limit) of the window freeing, so its "
        f"drain starts with {limit - 1} sends, not {limit}, and each window's last slot "
        "goes one interval before the window frees. Same long-run rate, but the "
        "first-burst metric reads it as slower, by more the shorter the backlog. "
        "Both read a drain of a few windows with some bias depending on where the last "
        "send falls in its window; the longer the backlog, the closer they agree.",
        "- accepted ÷ allowed is the average rate of the DELETEs the sandbox accepted "
        "(each order's `CANCELLATION_RAISED` time): what the budget actually bought.",
        "",
    ]


def _plot(ax: Axes, budget: Figures) -> None:
    """Each variant's DELETEs per window against the limit: cancel-worker's line on top."""
    period = budget["period_ms"]
    for v in budget["variants"]:
        ours = v["key"] == "service"
        window_steps(
            ax, v["arrivals_ms"], period,
            label=f"{v['label']}: max {v['strict_window_max']}, {v['rate_limited']} 429s",
            linewidth=2.0 if ours else 1.2, zorder=3 if ours else 2,
        )  # fmt: skip
    ax.axhline(budget["limit"], color="black", linestyle="--", label="exchange limit")
    ax.set_title(
        f"(1) DELETEs in the last {period / 1000:g} s, backlog of {budget['backlog']}, "
        f"{budget['workers']} worker processes"
    )
    ax.set_xlabel("seconds since the first DELETE")
    ax.set_ylim(bottom=0)


REPORT = Report(
    goals=_goals,
    section=_section,
    tables=_tables,
    panels=(_plot,),
    goals_note="(1)-(4) are issue 7's",  # the pipeline and producer benchmarks' too
)
