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

from benchmarks import fmt
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
from benchmarks.report import (
    DETAIL_HEADERS,
    Axes,
    Figures,
    Goal,
    Report,
    Results,
    Table,
    window_steps,
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


# ---- its part of the report: goals (6a)-(6c), the (6) section and two plots ----------------

# The scheduler's bounds, as tests/test_scheduling.py asserts them:
JITTER_BUDGET_GOAL = 0.85  # of the allowed rate under 0..150 ms jitter, with 0 429s
URGENT_GOAL_INTERVALS = 1.0  # an urgent cancel waits at most one slot interval
BETA_SLACK_INTERVALS = 2  # beta beside two backlogs: at most its time alone + 2 intervals
METHOD = (
    "- Scheduler (6): arrival stamps and 429s per API key come from the sandbox's "
    "`stats()['endpoints']['cancel']['by_key']`; the accepted DELETE time of an order from "
    "its history. The bench process and the sandbox share one wall clock.",
)


def _goals(sched: Figures, results: Results) -> list[Goal]:
    """The scheduler's bounds (tests/test_scheduling.py), on benchmark 6's figures."""
    allowed = sched["limit"] / sched["period_ms"] * 1000
    interval = sched["slot_interval_ms"]
    jitter = sched["jitter"]
    learned = next(v for v in jitter["variants"] if v["key"] == "learned")
    use = learned["sent_average_ratio"]
    urgent = sched["urgent"]
    accounts = sched["accounts"]
    per_account = accounts["per_account"].values()
    alone_s = accounts["beta_alone_s"]
    bound_s = alone_s + BETA_SLACK_INTERVALS * interval / 1000
    return [
        Goal(
            f"(6a) budget use, {jitter['jitter_ms']} ms jitter",
            f"{use * allowed:.2f} DELETE/s average, {learned['rate_limited']} 429s, "
            f"window max {learned['strict_window_max']}",
            f"allowed {allowed:g}/s ({sched['limit']}/{sched['period_ms'] / 1000:g}s)",
            use,
            f"≥ {JITTER_BUDGET_GOAL} with 0 429s",
            use >= JITTER_BUDGET_GOAL
            and learned["rate_limited"] == 0
            and learned["strict_window_max"] <= sched["limit"],
        ),
        Goal(
            "(6b) urgent cancel behind a backlog",
            f"{urgent['urgent_wait_ms']} ms request → DELETE",
            f"slot interval {interval:g} ms",
            urgent["urgent_wait_intervals"],
            f"≤ {URGENT_GOAL_INTERVALS:g}",
            urgent["urgent_wait_intervals"] <= URGENT_GOAL_INTERVALS,
        ),
        Goal(
            "(6c) account beside two backlogs",
            f"beta {accounts['beta_contended_s']:.2f} s to final, "
            f"{sum(a['rate_limited'] for a in per_account)} 429s on any key",
            f"beta alone {alone_s:.2f} s",
            accounts["beta_ratio"],
            f"≤ {bound_s / alone_s:.2f} (alone + {BETA_SLACK_INTERVALS} slot intervals), 0 429s",
            accounts["beta_contended_s"] <= bound_s
            and all(a["rate_limited"] == 0 for a in per_account),
        ),
    ]


JITTER_HEADERS = [
    "margin",
    "DELETEs sent",
    "429s (cancel / status)",
    "strict-window max",
    "budget use (average rate)",
    "÷ anchor",
    "request → last final",
    "÷ anchor",
    "margin at the end",
    "largest span seen",
]


def _jitter_variants(sched: Figures) -> tuple[Figures, Figures]:
    """(anchor, learned) variants of the jitter section."""
    variants = {v["key"]: v for v in sched["jitter"]["variants"]}
    return variants["fixed"], variants["learned"]


def _jitter_rows(sched: Figures) -> list[list[str]]:
    """(6a): each margin variant, with ratios to the fixed-margin anchor."""
    anchor, _ = _jitter_variants(sched)
    rows = []
    for v in sched["jitter"]["variants"]:
        margin = fmt.NOT_MEASURED if v["margin_ms"] is None else f"{v['margin_ms']} ms"
        rows.append(
            [
                v["label"],
                str(v["sends"]),
                f"{v['rate_limited']} / {v['status_rate_limited']}",
                f"{v['strict_window_max']} (limit {sched['limit']})",
                fmt.ratio(v["sent_average_ratio"]),
                fmt.ratio(v["sent_average_ratio"] / anchor["sent_average_ratio"]),
                f"{v['drain_s']:.2f} s",
                fmt.ratio(v["drain_s"] / anchor["drain_s"]),
                margin,
                f"{v['largest_span_ms']} ms",
            ]
        )
    return rows


URGENT_HEADERS = ["measure", "value"]


def _urgent_rows(sched: Figures) -> list[list[str]]:
    """(6b): the urgent cancel's wait beside the normal one requested with it."""
    u = sched["urgent"]
    interval = sched["slot_interval_ms"]
    return [
        ["normal backlog; of it at the sandbox when the two were requested",
         f"{u['backlog']}; {u['sent_before_request']}"],
        ["urgent cancel: request → DELETE at the sandbox", f"{u['urgent_wait_ms']} ms"],
        ["normal cancel requested with it (FIFO anchor): request → DELETE",
         f"{u['normal_wait_ms']} ms"],
        ["urgent ÷ normal", fmt.ratio(u["urgent_over_normal"])],
        [f"urgent ÷ slot interval ({interval:g} ms = period ÷ limit)",
         fmt.ratio(u["urgent_wait_intervals"])],
        ["backlog cancels the urgent one went ahead of", str(u["overtook"])],
        ["429s; strict-window max of the whole drain",
         f"{u['rate_limited']}; {u['strict_window_max']} (limit {sched['limit']})"],
    ]  # fmt: skip


ACCOUNT_HEADERS = [
    "account",
    "backlog",
    "DELETEs sent",
    "429s",
    "strict-window max (own key)",
    "request → last final",
]


def _account_rows(sched: Figures) -> list[list[str]]:
    """(6c): each account's drain beside the others, then beta alone (the anchor)."""
    acc = sched["accounts"]
    rows = [
        [
            name,
            str(a["backlog"]),
            str(a["sends"]),
            str(a["rate_limited"]),
            f"{a['strict_window_max']} (limit {sched['limit']})",
            f"{a['to_last_final_s']:.2f} s",
        ]
        for name, a in acc["per_account"].items()
    ]
    beta = acc["backlogs"]["beta"]
    rows.append(
        ["beta alone (anchor)", str(beta), str(beta), "", "", f"{acc['beta_alone_s']:.2f} s"]
    )
    rows.append(
        ["beta beside the others ÷ beta alone", "", "", "", "", fmt.ratio(acc["beta_ratio"])]
    )
    return rows


def _detail_rows(sched: Figures) -> list[list[str]]:
    """Benchmark 6 as (section, measure, value) rows, for the terminal."""
    anchor, learned = _jitter_variants(sched)
    rows: list[list[str]] = []
    for v in (anchor, learned):
        rows.append(
            [
                "(6a) jitter",
                v["label"],
                f"{v['rate_limited']} 429s, window max {v['strict_window_max']}, "
                f"use {fmt.ratio(v['sent_average_ratio'])}, {v['drain_s']:.2f} s, "
                f"margin {v['margin_ms']} ms",
            ]
        )
    rows.append(
        [
            "(6a) jitter",
            "learned ÷ fixed: budget use / drain time",
            f"{fmt.ratio(learned['sent_average_ratio'] / anchor['sent_average_ratio'])} / "
            f"{fmt.ratio(learned['drain_s'] / anchor['drain_s'])}",
        ]
    )
    rows += [["(6b) urgent", measure, value] for measure, value in _urgent_rows(sched)]
    acc = sched["accounts"]
    for name, a in acc["per_account"].items():
        rows.append(
            [
                "(6c) accounts",
                f"{name}: backlog {a['backlog']}, all three at once",
                f"{a['sends']} sent, {a['rate_limited']} 429s, window max "
                f"{a['strict_window_max']}, {a['to_last_final_s']:.2f} s to last final",
            ]
        )
    rows.append(
        [
            "(6c) accounts",
            "beta beside the others ÷ beta alone (anchor)",
            f"{acc['beta_contended_s']:.2f} s ÷ {acc['beta_alone_s']:.2f} s = "
            f"{fmt.ratio(acc['beta_ratio'])}",
        ]
    )
    return rows


def _section(sched: Figures, results: Results) -> list[str]:
    """(6a)-(6c): the scheduler under jitter, with urgent work, and with three accounts."""
    anchor, learned = _jitter_variants(sched)
    jitter = sched["jitter"]
    acc = sched["accounts"]
    limit, period_s = sched["limit"], sched["period_ms"] / 1000
    return [
        "## (6) The budget scheduler: jitter, urgent work, accounts",
        "",
        f"Each section: {sched['cancel_workers']} `celery -A worker worker -Q cancels` "
        f"processes (-c {sched['concurrency']}) and 1 for polls, accounts default, alpha "
        f"and beta (one API key each), sandbox limits {limit}/{period_s:g}s cancels and "
        f"20/{period_s:g}s status per key, confirm delay {sched['confirm_delay_ms']} ms, "
        "every other setting at its default. Each figure is beside an anchor measured "
        "in the same run.",
        "",
        f"### (6a) A network that varies: 0..{jitter['jitter_ms']} ms before the exchange",
        "",
        f"Every request reaches the sandbox's limiter after a seeded random 0.."
        f"{jitter['jitter_ms']} ms delay (`latency_jitter_ms`; arrival stamps include "
        f"it). A backlog of {jitter['backlog']} cancels, drained with the margin the "
        "scheduler learns from response spans (defaults: floor 50 ms, ceiling 2 s) beside "
        "the anchor, the old fixed 50 ms margin (`CANCEL_WORKER_RATE_MARGIN_MS=50`, "
        "`CANCEL_WORKER_RATE_MARGIN_MAX_MS=50`). Each variant: fresh Redis, a fresh sandbox "
        "with the same seed (the same sequence of delays), its own fleet. Drain = request → "
        "the last final record. The margin is Redis `cw:net:margin` after the drain (what "
        "`cancel-worker limits` shows); the span is a request's time from taking its turn "
        "to the answer.",
        "",
        fmt.md_table(JITTER_HEADERS, _jitter_rows(sched)),
        "",
        _jitter_verdict(sched, anchor, learned),
        "",
        "### (6b) An urgent cancel behind a backlog",
        "",
        f"{sched['urgent']['backlog']} normal cancels requested at once; as soon as "
        f"{limit - 1} of them (limit - 1, the first burst) were under way, one urgent "
        "cancel and, right after it, one "
        "normal cancel (the first-come-first-served anchor) were requested. Wait = "
        "request → the sandbox accepting its DELETE (the order history's "
        "`CANCELLATION_RAISED` time, same clock).",
        "",
        fmt.md_table(URGENT_HEADERS, _urgent_rows(sched)),
        "",
        "### (6c) Three accounts at once",
        "",
        "Backlogs on default, alpha and beta requested together (beta last, so both other "
        "backlogs are already in line), each account with its own key and budgets. The "
        f"anchor: beta's same {acc['backlogs']['beta']} cancels requested with nothing "
        "else waiting, earlier in the same run. Time = beta's request → its last final "
        "record; it includes the confirm delay and the first poll "
        "(`CANCEL_WORKER_POLL_INITIAL_DELAY_S`, 0.5 s).",
        "",
        fmt.md_table(ACCOUNT_HEADERS, _account_rows(sched)),
        "",
        _beta_note(sched),
        "",
    ]


def _beta_note(sched: Figures) -> str:
    """Where beta's extra time beside the other backlogs went, from this run's arrivals."""
    per_account = sched["accounts"]["per_account"]
    first_ms = min(per_account["beta"]["arrivals_ms"], default=0)
    ahead = sum(
        1
        for name, a in per_account.items()
        if name != "beta"
        for at in a["arrivals_ms"]
        if at < first_ms
    )
    threads = sched["cancel_workers"] * sched["concurrency"]
    return (
        f"Beta's own budget was free throughout; its first DELETE reached the sandbox "
        f"{first_ms} ms after the requests, behind {fmt.count(ahead, 'DELETE')} of default "
        "and alpha whose turns were handed out a moment earlier. Turns of every account go "
        f"through the one `cancels` queue to the fleet's {threads} worker threads, first "
        "in, first out, so an account's first turn waits for the turns released just "
        "before it (up to a window's worth per other account), and its status reads "
        "likewise share the `polls` worker."
    )


def _jitter_verdict(sched: Figures, anchor: Figures, learned: Figures) -> str:
    """What (6a) shows, in words that follow this run's figures."""
    period_ms, limit = sched["period_ms"], sched["limit"]
    margin = learned["margin_ms"] or 0
    text = (
        f"The learned margin ({margin} ms) is the largest span seen "
        f"({learned['largest_span_ms']} ms) times 1.2, so a window counts "
        f"{period_ms + margin} ms instead of {period_ms + (anchor['margin_ms'] or 0)} ms: "
        "a send's arrival may drift by up to the network's delay and still not put "
        f"{limit + 1} arrivals in one {period_ms / 1000:g} s window at the exchange. "
    )
    if anchor["rate_limited"] or anchor["strict_window_max"] > limit:
        return text + (
            f"With the fixed margin the exchange saw up to {anchor['strict_window_max']} "
            f"in one window and answered 429 to {fmt.count(anchor['rate_limited'], 'DELETE')} "
            "(a refused DELETE spends an arrival, pauses the budget for a window and goes "
            f"again); with the learned one, {fmt.count(learned['rate_limited'], '429')} and a "
            f"window max of {learned['strict_window_max']}."
        )
    return text + (
        "In this run the fixed margin drew no 429 either: the delays never pushed "
        f"{limit + 1} arrivals into one window. The learned margin's "
        "cost is the longer window (budget use and drain time ÷ anchor above); its gain "
        "is the bound, which holds whatever the delays do."
    )


def _plot_jitter(ax: Axes, sched: Figures) -> None:
    """(6a): each margin's DELETEs per window at the sandbox against the limit."""
    period = sched["period_ms"]
    jitter = sched["jitter"]
    for v in jitter["variants"]:
        window_steps(
            ax, v["arrivals_ms"], period,
            label=f"{v['label']}: max {v['strict_window_max']}, {v['rate_limited']} 429s",
            linewidth=2.0 if v["key"] == "learned" else 1.2,
        )  # fmt: skip
    ax.axhline(sched["limit"], color="black", linestyle="--", label="exchange limit")
    ax.set_title(
        f"(6a) DELETEs in the last {period / 1000:g} s at the sandbox, 0..{jitter['jitter_ms']} "
        f"ms network jitter, backlog of {jitter['backlog']}"
    )
    ax.set_xlabel("seconds since the request")
    ax.set_ylim(bottom=0)


def _plot_accounts(ax: Axes, sched: Figures) -> None:
    """(6c): each account's DELETEs per window against its own key's limit."""
    period = sched["period_ms"]
    for name, a in sched["accounts"]["per_account"].items():
        window_steps(
            ax, a["arrivals_ms"], period,
            label=f"{name} (backlog {a['backlog']}): max {a['strict_window_max']}, "
            f"{a['rate_limited']} 429s",
        )  # fmt: skip
    ax.axhline(sched["limit"], color="black", linestyle="--", label="exchange limit, per key")
    ax.set_title(f"(6c) DELETEs per API key in the last {period / 1000:g} s, three accounts")
    ax.set_xlabel("seconds since the requests")
    ax.set_ylim(bottom=0)


def _tables(sched: Figures, results: Results) -> list[Table]:
    return [(DETAIL_HEADERS, _detail_rows(sched))]


REPORT = Report(
    goals=_goals,
    section=_section,
    tables=_tables,
    panels=(_plot_jitter, _plot_accounts),
    goals_note="(6a)-(6c) are the budget scheduler's bounds as tests/test_scheduling.py "
    "asserts them",
    method=METHOD,
)
