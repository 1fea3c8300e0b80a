"""Benchmark 6: the budget scheduler under a varying network, urgent work and three accounts.

Each section runs against the sandbox (cancels 10/2s, status 20/2s per API key, strictly
sliding, confirm delay 200 ms) with a fleet like tests/test_scheduling.py: 3 `celery -A
worker worker -Q cancels` processes and 1 for polls, accounts `default`, `alpha` and `beta`
(COINSWITCH_ACCOUNTS, one key each), every other setting at its default. Each figure has
an anchor measured in the same run:

a. Jitter: every request reaches the sandbox's limiter after a seeded 0..150 ms delay. A
   backlog drained with the learned margin (the defaults, floor 50 ms, ceiling 2 s) beside
   the old fixed 50 ms margin (CANCEL_WORKER_RATE_MARGIN_MS = _MAX_MS = 50). Each variant
   gets a fresh Redis, a fresh sandbox (so the same delays) and its own fleet.
b. Urgent behind a backlog: normal cancels queued; once the first burst is out, one urgent
   and one normal cancel (the FIFO anchor) are requested together. Wait = request → its
   accepted DELETE reaching the sandbox.
c. Three accounts: backlogs on default, alpha and beta at once; beta's time to its last
   final record beside the same two cancels for beta alone (nothing else waiting).

b and c share one fleet (no jitter, fresh Redis and sandbox); each run starts once every
budget's window is empty again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
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
    key_arrivals,
    key_tag,
    place_orders,
    say,
    service_env,
    strict_window_max,
    wait_budgets_idle,
    wait_until,
    wait_workers_ready,
)
from tests.redis_server import redis_server
from worker.sandbox import SandboxConfig, SandboxHandle, generate_keypair, run_sandbox

LIMIT, PERIOD_MS = 10, 2000
CANCEL_RATE = "10/2s"
STATUS_RATE = "20/2s"
SLOT_INTERVAL_MS = PERIOD_MS / LIMIT  # period ÷ limit: the scheduler's pacing unit
CONFIRM_DELAY_MS = 200
JITTER_MS = 150  # one-way delay before the sandbox's limiter: uniform 0..150 ms, seeded
FIXED_MARGIN_MS = 50  # the anchor: the old limiter's fixed margin, floor = ceiling
CANCEL_WORKERS = 3
CONCURRENCY = 4
ACCOUNTS = ("default", "alpha", "beta")
IDLE_TIMEOUT_S = 30.0  # for every budget's window to empty between runs
FINAL_SLACK_S = 60.0  # added to a drain's expected length before giving up on it


@dataclass(frozen=True)
class Sizes:
    """How many cancels each section requests."""

    jitter_backlog: int
    urgent_backlog: int
    account_backlogs: Mapping[str, int]


FULL = Sizes(60, 40, {"default": 30, "alpha": 30, "beta": 2})
SMOKE = Sizes(20, 20, {"default": 12, "alpha": 12, "beta": 2})


@dataclass(frozen=True)
class MarginVariant:
    """One margin configuration of the jitter section."""

    key: str
    label: str
    env: Mapping[str, str]


MARGIN_VARIANTS = (
    MarginVariant(
        "fixed",
        f"fixed {FIXED_MARGIN_MS} ms margin (anchor)",
        {
            "CANCEL_WORKER_RATE_MARGIN_MS": str(FIXED_MARGIN_MS),
            "CANCEL_WORKER_RATE_MARGIN_MAX_MS": str(FIXED_MARGIN_MS),
        },
    ),
    MarginVariant("learned", "learned margin (defaults)", {}),
)


class Bench:
    """What every section shares: keys, the environment, Redis and the process list."""

    def __init__(self, redis_url: str, work_dir: Path) -> None:
        self.keys = {name: generate_keypair() for name in ACCOUNTS}
        api_key, secret_key = self.keys["default"]
        self.env = service_env(
            redis_url=redis_url,
            sandbox_url="http://127.0.0.1:1",  # each fleet gets its sandbox's URL
            api_key=api_key,
            secret_key=secret_key,
            cancel_rate=CANCEL_RATE,
            status_rate=STATUS_RATE,
            COINSWITCH_ACCOUNTS=",".join(ACCOUNTS[1:]),
            **{
                f"COINSWITCH_{name.upper()}_{part}_KEY": key
                for name in ACCOUNTS[1:]
                for part, key in zip(("API", "SECRET"), self.keys[name], strict=True)
            },
        )
        self.redis_url = redis_url
        self.procs = Processes(work_dir)

    def api_key(self, account: str) -> str:
        """The public key of one account."""
        return self.keys[account][0]

    def sandbox_config(self, jitter_ms: int = 0) -> SandboxConfig:
        """The sandbox every section uses, with or without network jitter."""
        return SandboxConfig(
            cancel_limit=CANCEL_RATE,
            status_limit=STATUS_RATE,
            confirm_delay_ms=CONFIRM_DELAY_MS,
            latency_jitter_ms=jitter_ms,
        )

    @contextmanager
    def fleet(
        self, name: str, sandbox: SandboxHandle, extra_env: Mapping[str, str]
    ) -> Iterator[None]:
        """Run 3 cancel workers and 1 poll worker against `sandbox`; stop them afterwards."""
        from worker.celery_app import app
        from worker.keys import CANCEL_QUEUE, POLL_QUEUE

        env = {**os.environ, **self.env, "COINSWITCH_BASE_URL": sandbox.url, **extra_env}
        names = [f"{name}-cancels{i}" for i in range(CANCEL_WORKERS)]
        try:
            for worker in names:
                args = celery_worker_args("worker", CANCEL_QUEUE, worker, CONCURRENCY)
                self.procs.start(worker, args, env)
            names.append(f"{name}-polls")
            self.procs.start(names[-1], celery_worker_args("worker", POLL_QUEUE, names[-1]), env)
            wait_workers_ready(app, names, self.procs)
            yield
        finally:
            self.procs.stop_all()


def run(*, smoke: bool, work_dir: Path) -> dict[str, Any]:
    """Run the three sections; return their figures."""
    sizes = SMOKE if smoke else FULL
    with redis_server() as redis_url:
        bench = Bench(redis_url, work_dir)
        apply_env(bench.env)
        jitter = _jitter_section(bench, sizes.jitter_backlog)
        redis.Redis.from_url(redis_url).flushall()  # no worker runs between fleets
        with ExitStack() as stack:
            config = bench.sandbox_config()
            sandbox = stack.enter_context(run_sandbox(config, api_keys=_all_keys(bench)))
            stack.enter_context(bench.fleet("sched", sandbox, {}))
            urgent = _urgent_section(bench, sandbox, sizes.urgent_backlog)
            accounts = _accounts_section(bench, sandbox, sizes.account_backlogs)
    return {
        "limit": LIMIT,
        "period_ms": PERIOD_MS,
        "slot_interval_ms": SLOT_INTERVAL_MS,
        "cancel_workers": CANCEL_WORKERS,
        "concurrency": CONCURRENCY,
        "confirm_delay_ms": CONFIRM_DELAY_MS,
        "jitter": jitter,
        "urgent": urgent,
        "accounts": accounts,
    }


def _all_keys(bench: Bench) -> list[str]:
    return [bench.api_key(name) for name in ACCOUNTS]


def _drain_timeout_s(count: int) -> float:
    """Generous: twice the drain at the nominal rate, plus slack for 429 pauses and polls."""
    return 2 * count * SLOT_INTERVAL_MS / 1000 + FINAL_SLACK_S


def _final_at(order_ids: list[str], timeout_s: float, what: str) -> list[int]:
    """Wait until every order has a final record; return their `final_at` (Unix ms)."""
    from worker.models import OrderState
    from worker.producer import get_records

    def finals() -> list[int] | None:
        records = get_records(order_ids)
        if not all(r is not None and r.is_final for r in records):
            return None
        if any(r is not None and r.state is not OrderState.CANCELLED for r in records):
            raise BenchError(f"{what}: an order ended other than CANCELLED")
        return [int(r.final_at) for r in records if r is not None and r.final_at is not None]

    found: list[int] = wait_until(finals, timeout_s, f"{what}: {len(order_ids)} final records")
    return found


def _wait_idle() -> None:
    """Block until no budget of any account has a send in its window or a job in line."""
    wait_budgets_idle(ACCOUNTS, IDLE_TIMEOUT_S)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---- a. jitter ---------------------------------------------------------------------------


def _jitter_section(bench: Bench, backlog: int) -> dict[str, Any]:
    """The same backlog under 0..150 ms of jitter, per margin variant, fresh each time."""
    variants = []
    for variant in MARGIN_VARIANTS:
        redis.Redis.from_url(bench.redis_url).flushall()
        say(f"scheduling: jitter {JITTER_MS} ms, {variant.label}, backlog {backlog}")
        config = bench.sandbox_config(JITTER_MS)
        with run_sandbox(config, api_keys=_all_keys(bench)) as sandbox:
            order_ids = place_orders(sandbox, backlog, api_key=bench.api_key("default"))
            with bench.fleet(f"jitter-{variant.key}", sandbox, variant.env):
                variants.append(_jitter_drain(bench, sandbox, variant, order_ids))
    return {"jitter_ms": JITTER_MS, "backlog": backlog, "variants": variants}


def _jitter_drain(
    bench: Bench, sandbox: SandboxHandle, variant: MarginVariant, order_ids: list[str]
) -> dict[str, Any]:
    from worker.keys import Keys
    from worker.producer import request_cancels

    api_key = bench.api_key("default")
    started_ms = _now_ms()
    request_cancels(order_ids)
    finals = _final_at(order_ids, _drain_timeout_s(len(order_ids)), variant.label)
    endpoints = sandbox.admin.stats()["endpoints"]
    sent = key_arrivals(sandbox, "cancel", api_key, started_ms)
    accepted = sorted(t for t in (accepted_at(sandbox, i) for i in order_ids) if t)
    client = redis.Redis.from_url(bench.redis_url, decode_responses=True)
    keys = Keys()
    raw_margin = client.get(keys.margin)
    spans = [int(span) for span in client.lrange(keys.spans, 0, -1)]
    client.close()
    tag = key_tag(api_key)
    return {
        "key": variant.key,
        "label": variant.label,
        "sends": len(sent),
        "accepted": len(accepted),
        "rate_limited": endpoints["cancel"]["by_key"][tag]["rate_limited"],
        "status_rate_limited": endpoints["status"]["by_key"].get(tag, {}).get("rate_limited", 0),
        "strict_window_max": strict_window_max(sent, PERIOD_MS),
        "sent_average_ratio": average_rate_ratio(sent, LIMIT, PERIOD_MS),
        "accepted_average_ratio": average_rate_ratio(accepted, LIMIT, PERIOD_MS),
        "drain_s": (max(finals) - started_ms) / 1000,
        "margin_ms": int(raw_margin) if raw_margin is not None else None,
        "largest_span_ms": max(spans, default=0),
        "arrivals_ms": [at - started_ms for at in sent],
    }


# ---- b. urgent behind a backlog ----------------------------------------------------------


def _urgent_section(bench: Bench, sandbox: SandboxHandle, backlog: int) -> dict[str, Any]:
    """An urgent and a normal cancel requested together behind a queued normal backlog."""
    from worker.producer import get_records, request_cancel, request_cancels

    say(f"scheduling: urgent behind a backlog of {backlog}")
    _wait_idle()
    api_key = bench.api_key("default")
    backlog_ids = place_orders(sandbox, backlog, api_key=api_key)
    urgent_id, normal_id = place_orders(sandbox, 2, api_key=api_key)
    started_ms = _now_ms()
    request_cancels(backlog_ids)
    first_burst = LIMIT - 1  # the scheduler keeps the window's last slot for urgent work
    wait_until(
        lambda: sum(bool(r and r.attempts) for r in get_records(backlog_ids)) >= first_burst,
        _drain_timeout_s(first_burst),
        "the backlog's first burst",
    )
    urgent_requested = _now_ms()
    request_cancel(urgent_id, priority="urgent")
    normal_requested = _now_ms()
    request_cancel(normal_id)
    everything = [*backlog_ids, urgent_id, normal_id]
    _final_at(everything, _drain_timeout_s(len(everything)), "urgent section")

    sent_at = {order_id: accepted_at(sandbox, order_id) for order_id in everything}
    urgent_sent, normal_sent = sent_at[urgent_id], sent_at[normal_id]
    if urgent_sent is None or normal_sent is None:
        raise BenchError("the urgent or the anchor cancel has no accepted DELETE")
    urgent_ms, normal_ms = urgent_sent - urgent_requested, normal_sent - normal_requested
    sent = key_arrivals(sandbox, "cancel", api_key, started_ms)
    own = sandbox.admin.stats()["endpoints"]["cancel"]["by_key"][key_tag(api_key)]
    return {
        "backlog": backlog,
        "sent_before_request": sum(1 for t in sent if t < urgent_requested),
        "urgent_wait_ms": urgent_ms,
        "normal_wait_ms": normal_ms,
        "urgent_over_normal": urgent_ms / normal_ms if normal_ms > 0 else float("nan"),
        "urgent_wait_intervals": urgent_ms / SLOT_INTERVAL_MS,
        "overtook": sum(1 for i in backlog_ids if (sent_at[i] or 0) > urgent_sent),
        "rate_limited": own["rate_limited"],
        "strict_window_max": strict_window_max(sent, PERIOD_MS),
    }


# ---- c. three accounts -------------------------------------------------------------------


def _accounts_section(
    bench: Bench, sandbox: SandboxHandle, backlogs: Mapping[str, int]
) -> dict[str, Any]:
    """Beta alone (the anchor), then default, alpha and beta at once."""
    from worker.producer import request_cancels

    say("scheduling: beta alone (anchor)")
    _wait_idle()
    alone_ids = place_orders(sandbox, backlogs["beta"], api_key=bench.api_key("beta"))
    requested = _now_ms()
    request_cancels(alone_ids, account="beta")
    alone_s = (max(_final_at(alone_ids, FINAL_SLACK_S, "beta alone")) - requested) / 1000

    say(f"scheduling: three accounts at once, backlogs {dict(backlogs)}")
    _wait_idle()
    orders = {
        name: place_orders(sandbox, backlogs[name], api_key=bench.api_key(name))
        for name in ACCOUNTS
    }
    before = sandbox.admin.stats()["endpoints"]["cancel"]["by_key"]
    started_ms = _now_ms()
    requested_at: dict[str, int] = {}
    for name in ACCOUNTS:  # beta last: every other backlog is already in line
        requested_at[name] = _now_ms()
        request_cancels(orders[name], account=name)
    finals = {
        name: _final_at(orders[name], _drain_timeout_s(len(orders[name])), f"account {name}")
        for name in ACCOUNTS
    }
    after = sandbox.admin.stats()["endpoints"]["cancel"]["by_key"]
    per_account: dict[str, dict[str, Any]] = {}
    for name in ACCOUNTS:
        tag = key_tag(bench.api_key(name))
        sent = key_arrivals(sandbox, "cancel", bench.api_key(name), started_ms)
        per_account[name] = {
            "backlog": backlogs[name],
            "sends": len(sent),
            "rate_limited": after[tag]["rate_limited"] - before.get(tag, {}).get("rate_limited", 0),
            "strict_window_max": strict_window_max(sent, PERIOD_MS),
            "to_last_final_s": (max(finals[name]) - requested_at[name]) / 1000,
            "arrivals_ms": [at - started_ms for at in sent],
        }
    beta_s = per_account["beta"]["to_last_final_s"]
    return {
        "backlogs": dict(backlogs),
        "per_account": per_account,
        "beta_alone_s": alone_s,
        "beta_contended_s": beta_s,
        "beta_ratio": beta_s / alone_s,
    }
