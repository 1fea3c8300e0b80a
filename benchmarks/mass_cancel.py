"""Benchmark 7 (issue 12): cancel-all, and confirmation through the order lists.

Every run uses the exchange's real limits (cancel 10/60s, status 20/60s, cancel-all 10/60s,
each order list 20/60s) on a sandbox that confirms a cancel 300 ms after accepting it and
lets 20 % of cancels lose the race to a fill (seeded). Each figure has an anchor measured
in the same benchmark run:

a. Cancel-all: 100 open orders on 5 symbols (20 each), one `request_cancel_all` for the
   account. Anchor: the per-order path (`request_cancels`). At 10 DELETEs a minute 100
   orders take about 10 minutes, so the anchor cancels 20 orders (about 2 minutes), and
   the report gives its measured DELETE rate and, labelled as such, 100 ÷ that rate.
b. 30 per-order cancels with the DELETE limit raised to 100/2s on both sides (DELETEs are
   not the bottleneck), confirmed the way the worker does it: Closed Orders list passes
   first, a status read behind each order. Anchor: the same 30 with the order lists out of
   reach. worker/ has no switch for "status reads only", so the anchor's sandbox allows one
   list call per hour per key and the benchmark spends that call before the run: every list
   pass the workers try is refused (429, which pauses their list budget for a window) and
   the status reads behind the passes do the work. The workers keep the real 20/60s list
   budgets: a worker list budget of 1/1h would also move every status read behind a pass
   to two hours after its DELETE (`backstop_s`), and the anchor would not end.

Why one process per run (`python -m benchmarks.mass_cancel RUN`): the service reads its
settings once, at import, so a fresh Redis, a fresh sandbox, a fresh API key and an account
name of its own per run means a fresh process per run, which sets its environment before it
imports `worker`. Workers serve that one account only (`COINSWITCH_API_KEY` empty): one
`celery -A worker worker -Q cancels` and one `-Q polls`, as tests/test_mass_cancel.py
starts them, every other setting at its default.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import fmt
from benchmarks.common import (
    BenchError,
    Processes,
    apply_env,
    celery_worker_args,
    exit_on_sigterm,
    key_tag,
    quiet_logging,
    say,
    strict_window_max,
    wait_until,
    wait_workers_ready,
)
from benchmarks.report import DETAIL_HEADERS, Axes, Figures, Goal, Report, Results, Table
from tests.redis_server import redis_server
from tests.support import place_orders
from worker.confirmation import LIST_FIRST_S
from worker.rates import parse_rate
from worker.sandbox import SandboxConfig, SandboxHandle, generate_keypair, run_sandbox

# The exchange's documented limits, per API key (docs/exchange.md, Rate limits).
REAL_CANCEL_RATE = "10/60s"
REAL_STATUS_RATE = "20/60s"
REAL_CANCEL_ALL_RATE = "10/60s"
REAL_LIST_RATE = "20/60s"  # Open Orders and Closed Orders, each
CANCEL_LIMIT = parse_rate(REAL_CANCEL_RATE).count
CANCEL_PERIOD_MS = parse_rate(REAL_CANCEL_RATE).period_ms
STATUS_LIMIT = parse_rate(REAL_STATUS_RATE).count
STATUS_PERIOD_MS = parse_rate(REAL_STATUS_RATE).period_ms
FAST_CANCEL_RATE = "100/2s"  # (b): DELETEs out of the way, on the sandbox and the workers
NO_LIST_RATE = "1/1h"  # (b)'s anchor: the sandbox's list limit, its one call spent first
CONFIRM_DELAY_MS = 300  # the sandbox: CANCELLATION_RAISED -> final
FILL_RACE_RATE = 0.2  # share of accepted cancels that lose the race to a fill
SEED = 12  # the sandbox's fills; every run gets the same sequence
SYMBOLS = ("BTCUSDT", "ETHUSDT", "DOGEUSDT", "SOLUSDT", "XRPUSDT")
LIST_SYMBOL = "DOGEUSDT"  # (b): one symbol, as tests/test_mass_cancel.py places them
EXCHANGE = "EXCHANGE_2"
#: worker/confirmation.py: a status read waits max(LIST_FIRST_S, twice the closed-orders
#: slot interval) behind the pass it backs up: 6 s at 20/60s, two hours at 1/1h.
STATUS_BACKSTOP_MIN_S = LIST_FIRST_S
STATUS_BACKSTOP_INTERVALS = 2
CANCEL_WORKER_CONCURRENCY = 4
POLL_WORKER_CONCURRENCY = 4
FINAL_SLACK_S = 90.0  # added to a run's expected length before giving up on it
PROCESS_SLACK_S = 120.0  # a run's process: worker start-up and shutdown, Redis, imports
RUN_STOP_TIMEOUT_S = 35.0  # a run told to stop stops its two workers (15 s each) first
MS_PER_MIN = 60_000


@dataclass(frozen=True)
class Sizes:
    """How many orders each run cancels."""

    per_symbol: int  # (a) cancel-all: open orders on each of SYMBOLS
    per_order_anchor: int  # (a) anchor: per-order cancels, spread over SYMBOLS
    list_confirm: int  # (b) and its anchor


FULL = Sizes(per_symbol=20, per_order_anchor=20, list_confirm=30)
SMOKE = Sizes(per_symbol=2, per_order_anchor=3, list_confirm=6)


@dataclass(frozen=True)
class Run:
    """One measured run: its own process, Redis, sandbox, key, account and workers."""

    key: str
    label: str
    cancel_rate: str  # on the sandbox and the workers
    sandbox_list_limit: str
    spend_lists: bool  # use the sandbox's list calls up before the run (the anchor of b)
    worker_list_rate: str = REAL_LIST_RATE  # the workers' Open and Closed Orders budgets


RUNS: dict[str, Run] = {
    run.key: run
    for run in (
        Run("cancel_all", "cancel-all", REAL_CANCEL_RATE, REAL_LIST_RATE, False),
        Run("per_order", "per-order cancels (anchor)", REAL_CANCEL_RATE, REAL_LIST_RATE, False),
        Run("lists", "confirmed through the lists", FAST_CANCEL_RATE, REAL_LIST_RATE, False),
        Run(
            "status_only",
            "status reads only (anchor: lists refused)",
            FAST_CANCEL_RATE,
            NO_LIST_RATE,
            True,
        ),
    )
}


def run(*, smoke: bool, work_dir: Path) -> dict[str, Any]:
    """Run (a), its anchor, (b) and its anchor, each in a process of its own; the figures."""
    sizes = SMOKE if smoke else FULL
    procs = Processes(work_dir)
    runs: dict[str, dict[str, Any]] = {}
    try:
        for key in RUNS:
            runs[key] = _run_process(procs, key, sizes, smoke=smoke, work_dir=work_dir)
    finally:
        procs.stop_all()
    return summarise(runs, sizes)


def _expected_s(key: str, sizes: Sizes) -> float:
    """A run's length at its budgets, generously: every DELETE and status read window used."""
    if key == "per_order":
        return (sizes.per_order_anchor / CANCEL_LIMIT + 1) * CANCEL_PERIOD_MS / 1000
    if key == "status_only":
        return (sizes.list_confirm / STATUS_LIMIT + 1) * STATUS_PERIOD_MS / 1000
    return 0.0


def _run_process(
    procs: Processes, key: str, sizes: Sizes, *, smoke: bool, work_dir: Path
) -> dict[str, Any]:
    """Run one measurement in its own process; BenchError if it fails or overruns."""
    out = work_dir / f"{key}.json"
    run_dir = work_dir / key
    run_dir.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable, "-m", "benchmarks.mass_cancel", key,
        "--out", str(out), "--log-dir", str(run_dir),
    ]  # fmt: skip
    if smoke:
        args.append("--smoke")
    say(f"mass_cancel: {RUNS[key].label}")
    proc = procs.start(key, args, os.environ, stop_timeout_s=RUN_STOP_TIMEOUT_S)
    timeout_s = _expected_s(key, sizes) + FINAL_SLACK_S + PROCESS_SLACK_S
    wait_until(lambda: proc.poll() is not None, timeout_s, f"the {key} run to finish")
    if proc.returncode != 0:
        raise BenchError(f"{key} exited with {proc.returncode}:\n{procs.log_tail(key)}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


# ---- one run, in its own process ---------------------------------------------------------


@dataclass
class Desk:
    """A run's sandbox, and the account (with its one key) its workers serve."""

    sandbox: SandboxHandle
    account: str
    api_key: str

    def place(self, count: int, symbol: str) -> list[str]:
        """Open `count` resting LIMIT orders of `symbol` on this account."""
        return place_orders(self.sandbox.admin, count, api_key=self.api_key, symbol=symbol)

    def calls(self, since_ms: int) -> dict[str, list[int]]:
        """Arrival times (ms since `since_ms`) of this key's requests, by endpoint."""
        endpoints = self.sandbox.admin.stats()["endpoints"]
        tag = key_tag(self.api_key)
        return {
            name: sorted(
                at - since_ms
                for at in endpoints[name]["by_key"].get(tag, {}).get("arrivals_ms", [])
                if at >= since_ms
            )
            for name in ENDPOINTS
        }

    def rate_limited(self) -> dict[str, int]:
        """429s this key has drawn so far, by endpoint."""
        endpoints = self.sandbox.admin.stats()["endpoints"]
        tag = key_tag(self.api_key)
        return {
            name: int(endpoints[name]["by_key"].get(tag, {}).get("rate_limited", 0))
            for name in ENDPOINTS
        }


ENDPOINTS = ("cancel_all", "cancel", "closed", "open", "status")  # the sandbox's names


def run_main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmarks.mass_cancel RUN --out FILE --log-dir DIR [--smoke]`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mass_cancel")
    parser.add_argument("run", choices=sorted(RUNS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--log-dir", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    quiet_logging()
    exit_on_sigterm()
    result = measure(RUNS[args.run], SMOKE if args.smoke else FULL, args.log_dir)
    args.out.write_text(json.dumps(result))
    return 0


def measure(spec: Run, sizes: Sizes, log_dir: Path) -> dict[str, Any]:
    """Start Redis, the sandbox and the account's workers; measure one run."""
    account = f"bench_{spec.key}_{uuid.uuid4().hex[:8]}"  # never one another run has seen
    api_key, secret_key = generate_keypair()
    config = SandboxConfig(
        cancel_limit=spec.cancel_rate,
        status_limit=REAL_STATUS_RATE,
        cancel_all_limit=REAL_CANCEL_ALL_RATE,
        list_limit=spec.sandbox_list_limit,
        confirm_delay_ms=CONFIRM_DELAY_MS,
        fill_race_rate=FILL_RACE_RATE,
        seed=SEED,
    )
    procs = Processes(log_dir)
    with ExitStack() as stack:
        redis_url = stack.enter_context(redis_server())
        sandbox = stack.enter_context(run_sandbox(config, api_keys=[api_key]))
        env = {
            "REDIS_URL": redis_url,
            "COINSWITCH_BASE_URL": sandbox.url,
            "COINSWITCH_API_KEY": "",  # no default account: the workers serve ours only
            "COINSWITCH_SECRET_KEY": "",
            "COINSWITCH_ACCOUNTS": account,
            f"COINSWITCH_{account.upper()}_API_KEY": api_key,
            f"COINSWITCH_{account.upper()}_SECRET_KEY": secret_key,
            "COINSWITCH_CANCEL_RATE_LIMIT": spec.cancel_rate,
            "COINSWITCH_STATUS_RATE_LIMIT": REAL_STATUS_RATE,
            "COINSWITCH_CANCEL_ALL_RATE_LIMIT": REAL_CANCEL_ALL_RATE,
            "COINSWITCH_OPEN_ORDERS_RATE_LIMIT": spec.worker_list_rate,
            "COINSWITCH_CLOSED_ORDERS_RATE_LIMIT": spec.worker_list_rate,
            "CANCEL_WORKER_LOG_FORMAT": "json",
        }
        apply_env(env)
        from worker.celery_app import app
        from worker.keys import CANCEL_QUEUE, POLL_QUEUE

        stack.callback(procs.stop_all)  # before the sandbox and Redis stop
        worker_env = {**os.environ, **env}
        for name, queue, threads in (
            ("cancels", CANCEL_QUEUE, CANCEL_WORKER_CONCURRENCY),
            ("polls", POLL_QUEUE, POLL_WORKER_CONCURRENCY),
        ):
            procs.start(name, celery_worker_args("worker", queue, name, threads), worker_env)
        wait_workers_ready(app, ["cancels", "polls"], procs)
        desk = Desk(sandbox, account, api_key)
        if spec.spend_lists:
            _spend_lists(desk)
        if spec.key == "cancel_all":
            return _cancel_all(desk, sizes.per_symbol)
        if spec.key == "per_order":
            ids = [i for n, s in _spread(sizes.per_order_anchor) for i in desk.place(n, s)]
        else:
            ids = desk.place(sizes.list_confirm, LIST_SYMBOL)
        return _per_order(desk, ids, _expected_s(spec.key, sizes) + FINAL_SLACK_S)


def _spread(count: int) -> list[tuple[int, str]]:
    """`count` orders over SYMBOLS as evenly as they go: (how many, symbol)."""
    share, extra = divmod(count, len(SYMBOLS))
    spread = [(share + (i < extra), symbol) for i, symbol in enumerate(SYMBOLS)]
    return [(n, symbol) for n, symbol in spread if n]


def _spend_lists(desk: Desk) -> None:
    """Use up the sandbox's list calls for this key (NO_LIST_RATE allows one an hour)."""
    from worker.services import get_services

    client = get_services().exchange(desk.account)
    for closed in (True, False):
        client.list_orders(closed=closed, exchange=EXCHANGE)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _cancel_all(desk: Desk, per_symbol: int) -> dict[str, Any]:
    """(a): one cancel-all for the account's open orders on every symbol."""
    from worker.models import BatchState
    from worker.producer import get_batch, request_cancel_all

    ids = [i for symbol in SYMBOLS for i in desk.place(per_symbol, symbol)]
    before = desk.rate_limited()
    requested = _now_ms()
    batch_id = request_cancel_all(EXCHANGE, account=desk.account).batch_id
    batch = wait_until(
        lambda: (b := get_batch(batch_id)) is not None and b.is_final and b,
        FINAL_SLACK_S,
        "the cancel-all batch to end",
    )
    if batch.state is not BatchState.DONE:
        raise BenchError(f"the cancel-all ended {batch.state.value}: {batch.error}")
    if sorted(batch.orders_ids) != sorted(ids):
        raise BenchError(
            f"the cancel-all named {len(batch.orders_ids)} orders, {len(ids)} were open"
        )
    figures = _outcome(desk, ids, requested, before, FINAL_SLACK_S)
    return {**figures, "symbols": len(SYMBOLS), "reconstructed": batch.reconstructed}


def _per_order(desk: Desk, ids: list[str], timeout_s: float) -> dict[str, Any]:
    """(a)'s anchor, (b) and (b)'s anchor: `request_cancels` for every order at once."""
    from worker.producer import request_cancels

    before = desk.rate_limited()
    requested = _now_ms()
    request_cancels(ids, EXCHANGE, account=desk.account)
    return _outcome(desk, ids, requested, before, timeout_s)


def _outcome(
    desk: Desk, ids: list[str], requested: int, before: Mapping[str, int], timeout_s: float
) -> dict[str, Any]:
    """Wait for every final record; what it took, and whether each equals the exchange."""
    from worker.models import CancelRecord
    from worker.producer import get_records

    def all_final() -> list[CancelRecord] | None:
        got = get_records(ids)
        return [r for r in got if r is not None and r.is_final] if all(got) else None

    records: list[CancelRecord] = wait_until(
        lambda: (done := all_final()) is not None and len(done) == len(ids) and done,
        timeout_s,
        f"{len(ids)} final records",
    )
    finals = [int(r.final_at) for r in records if r.final_at is not None]
    truth = {i: desk.sandbox.admin.order(i)["order"]["status"] for i in ids}
    states = {r.order_id: r.state.value for r in records}
    calls = desk.calls(requested)
    after = desk.rate_limited()
    sends = calls["cancel"]
    return {
        "orders": len(ids),
        "to_last_final_s": (max(finals) - requested) / 1000,
        "finals_ms": sorted(at - requested for at in finals),
        "calls": {name: len(at) for name, at in calls.items()},
        "rate_limited": {name: after[name] - before[name] for name in ENDPOINTS},
        "arrivals_ms": calls,
        "match_truth": sum(states.get(i) == status for i, status in truth.items()),
        "final_states": dict(Counter(states.values())),
        "cancel_window_max": strict_window_max(sends, CANCEL_PERIOD_MS),
        "status_window_max": strict_window_max(calls["status"], STATUS_PERIOD_MS),
    }


# ---- the figures -------------------------------------------------------------------------


def backstop_s(list_rate: str) -> float:
    """How long the worker keeps a status read behind the list pass it backs up."""
    return max(STATUS_BACKSTOP_MIN_S, STATUS_BACKSTOP_INTERVALS * parse_rate(list_rate).interval_s)


def status_floor_s(orders: int) -> float:
    """The least time status reads alone can take for `orders`, one read each, from the
    limit: one status window for every STATUS_LIMIT orders beyond the first."""
    windows = math.ceil(orders / STATUS_LIMIT)
    return (windows - 1) * STATUS_PERIOD_MS / 1000


def delete_rate_per_min(sends_ms: Sequence[int]) -> float:
    """DELETEs a minute over a drain: (sends - 1) ÷ (last - first send).

    NaN when the sends span less than one window: a burst inside one window has no
    long-run rate to extrapolate from (the smoke run's anchor).
    """
    times = sorted(sends_ms)
    if len(times) < 2 or times[-1] - times[0] < CANCEL_PERIOD_MS:
        return math.nan
    return (len(times) - 1) / (times[-1] - times[0]) * MS_PER_MIN


def summarise(runs: Mapping[str, dict[str, Any]], sizes: Sizes) -> dict[str, Any]:
    """Each run's figures, the anchors' derived figures and every ratio to an anchor."""
    cancel_all, per_order = runs["cancel_all"], runs["per_order"]
    lists, status_only = runs["lists"], runs["status_only"]
    orders = cancel_all["orders"]
    rate = delete_rate_per_min(per_order["arrivals_ms"]["cancel"])
    extrapolated_s = orders / rate * 60 if rate > 0 else math.nan
    analytic_s = orders / CANCEL_LIMIT * CANCEL_PERIOD_MS / 1000
    first_status = status_only["arrivals_ms"]["status"][:1]
    return {
        "limits": {
            "cancel": REAL_CANCEL_RATE,
            "status": REAL_STATUS_RATE,
            "cancel_all": REAL_CANCEL_ALL_RATE,
            "list": REAL_LIST_RATE,
            "fast_cancel": FAST_CANCEL_RATE,
            "no_list": NO_LIST_RATE,
        },
        "status_period_ms": STATUS_PERIOD_MS,
        "confirm_delay_ms": CONFIRM_DELAY_MS,
        "fill_race_rate": FILL_RACE_RATE,
        "seed": SEED,
        "sizes": {
            "per_symbol": sizes.per_symbol,
            "per_order_anchor": sizes.per_order_anchor,
            "list_confirm": sizes.list_confirm,
        },
        "runs": dict(runs),
        "cancel_all": {
            "orders": orders,
            "to_last_final_s": cancel_all["to_last_final_s"],
            "anchor_orders": per_order["orders"],
            "anchor_measured_s": per_order["to_last_final_s"],
            "anchor_rate_per_min": rate,
            "anchor_extrapolated_s": extrapolated_s,
            "anchor_analytic_s": analytic_s,
            "over_extrapolated": cancel_all["to_last_final_s"] / extrapolated_s,
            "over_analytic": cancel_all["to_last_final_s"] / analytic_s,
        },
        "lists": {
            "orders": lists["orders"],
            "to_last_final_s": lists["to_last_final_s"],
            "anchor_s": status_only["to_last_final_s"],
            "over_anchor": lists["to_last_final_s"] / status_only["to_last_final_s"],
            "anchor_first_status_s": first_status[0] / 1000 if first_status else math.nan,
            "status_floor_s": status_floor_s(status_only["orders"]),
            "backstop_s": backstop_s(REAL_LIST_RATE),
            "no_list_backstop_s": backstop_s(NO_LIST_RATE),
            "status_calls": lists["calls"]["status"],
            "anchor_status_calls": status_only["calls"]["status"],
            "list_calls": lists["calls"]["closed"] + lists["calls"]["open"],
            "anchor_list_calls": status_only["calls"]["closed"] + status_only["calls"]["open"],
        },
    }


# ---- its part of the report: goals (7a)-(7b), the (7) section and its plot -----------------

# Issue 12's bounds, as tests/test_mass_cancel.py asserts them (request → last final record):
CANCEL_ALL_BOUND_S = 5.0  # 100 open orders on 5 symbols, one cancel-all
LIST_CONFIRM_BOUND_S = 10.0  # 30 per-order cancels confirmed through the lists
METHOD = (
    "- Cancel-all and the lists (7): every run at the exchange's real limits, in a process "
    "of its own (`python -m benchmarks.mass_cancel RUN`) with its own redis-server, "
    "sandbox, API key and account name, because the service reads its settings once, at "
    "import. Its workers serve that account only (`COINSWITCH_API_KEY` empty). Calls and "
    "429s per endpoint come from the sandbox's `stats()['endpoints'][name]['by_key']`, "
    "counted from the request on; each order's truth from `/_sandbox/orders/<id>`. A "
    "figure computed rather than measured (the per-order time for all of (7a)'s orders) "
    "says so where it appears.",
)


def _total_429s(run: Figures) -> int:
    """429s on every endpoint of a run's key."""
    return sum(run["rate_limited"].values())


def _matches(run: Figures) -> str:
    """`100/100`: final records equal to the exchange, of the run's orders."""
    return f"{run['match_truth']}/{run['orders']}"


def _cancel_all_anchor(mc: Figures) -> tuple[str, float]:
    """(7a)'s anchor in words, and the ratio to it: the extrapolated per-order time when the
    anchor run lasted long enough to measure a rate, else the time computed from the limit."""
    ca = mc["cancel_all"]
    rate = ca["anchor_rate_per_min"]
    if not math.isnan(rate):
        return (
            f"per order ≈ {fmt.minutes(ca['anchor_extrapolated_s'])}, extrapolated: "
            f"{ca['orders']} ÷ {rate:.2f} DELETE/min measured on {ca['anchor_orders']}",
            ca["over_extrapolated"],
        )
    return (
        f"per order {fmt.minutes(ca['anchor_analytic_s'])}, computed: {ca['orders']} orders at "
        f"{mc['limits']['cancel']} (the {ca['anchor_orders']} measured spanned no window)",
        ca["over_analytic"],
    )


def _goals(mc: Figures, results: Results) -> list[Goal]:
    """Issue 12's figures, on the bounds tests/test_mass_cancel.py asserts."""
    runs = mc["runs"]
    ca, lists, anchor = runs["cancel_all"], runs["lists"], runs["status_only"]
    calls = ca["calls"]
    anchor_words, ratio = _cancel_all_anchor(mc)
    return [
        Goal(
            f"(7a) cancel-all, {ca['orders']} orders on {ca['symbols']} symbols",
            f"{fmt.seconds(ca['to_last_final_s'])} request → last final; {calls['cancel_all']} "
            f"cancel-all, {calls['closed'] + calls['open']} list, {calls['status']} status, "
            f"{calls['cancel']} DELETE calls; {_total_429s(ca)} 429s; {_matches(ca)} records "
            "= exchange",
            anchor_words,
            ratio,
            f"≤ {CANCEL_ALL_BOUND_S:g} s, 0 429s, every record = exchange",
            ca["to_last_final_s"] <= CANCEL_ALL_BOUND_S
            and _total_429s(ca) == 0
            and ca["match_truth"] == ca["orders"],
        ),
        Goal(
            f"(7b) {lists['orders']} cancels confirmed through the lists",
            f"{fmt.seconds(lists['to_last_final_s'])} request → last final; "
            f"{lists['calls']['status']} status, "
            f"{lists['calls']['closed'] + lists['calls']['open']} list calls; "
            f"{_total_429s(lists)} 429s; {_matches(lists)} records = exchange",
            f"status reads only (lists refused) {fmt.seconds(anchor['to_last_final_s'])}, "
            f"{anchor['calls']['status']} status calls",
            mc["lists"]["over_anchor"],
            f"≤ {LIST_CONFIRM_BOUND_S:g} s, 0 429s, every record = exchange",
            lists["to_last_final_s"] <= LIST_CONFIRM_BOUND_S
            and _total_429s(lists) == 0
            and lists["match_truth"] == lists["orders"],
        ),
    ]


MASS_RUN_HEADERS = [
    "run (measured)",
    "orders",
    "request → last final",
    "cancel-all calls",
    "DELETEs",
    "status reads",
    "list calls (closed / open)",
    "429s",
    "records = exchange",
    "final states",
]


def _run_row(label: str, run: Figures) -> list[str]:
    """One run of (7a)'s table."""
    calls = run["calls"]
    states = ", ".join(f"{n} {state}" for state, n in sorted(run["final_states"].items()))
    limited = run["rate_limited"]
    where = ", ".join(f"{n} {name}" for name, n in limited.items() if n)
    return [
        label,
        str(run["orders"]),
        fmt.seconds(run["to_last_final_s"]),
        str(calls["cancel_all"]),
        str(calls["cancel"]),
        str(calls["status"]),
        f"{calls['closed']} / {calls['open']}",
        f"{_total_429s(run)}" + (f" ({where})" if where else ""),
        _matches(run),
        states,
    ]


def _mass_run_rows(mc: Figures) -> list[list[str]]:
    """(7a): the cancel-all run and the per-order run it is compared with."""
    runs = mc["runs"]
    return [
        _run_row("cancel-all for the account", runs["cancel_all"]),
        _run_row("per-order cancels (anchor)", runs["per_order"]),
    ]


ANCHOR_HEADERS = ["measure", "value", "measured or computed"]


def _cancel_all_anchor_rows(mc: Figures) -> list[list[str]]:
    """(7a): the per-order anchor for the cancel-all's order count, and the ratios to it."""
    ca = mc["cancel_all"]
    n, limit = ca["orders"], mc["limits"]["cancel"]
    rate = ca["anchor_rate_per_min"]
    no_rate = f"{fmt.NOT_MEASURED} (the DELETEs spanned less than one window)"
    return [
        [f"per order, {ca['anchor_orders']} orders: request → last final",
         fmt.seconds(ca["anchor_measured_s"]), "measured"],
        [f"per order: DELETE rate, first → last DELETE at the sandbox ({ca['anchor_orders']} "
         "orders)", no_rate if math.isnan(rate) else f"{rate:.2f} DELETE/min", "measured"],
        [f"per order, {n} orders: {n} ÷ the measured DELETE rate",
         fmt.NOT_MEASURED if math.isnan(rate) else f"≈ {fmt.minutes(ca['anchor_extrapolated_s'])}",
         "computed: extrapolated from the measured rate"],
        [f"per order, {n} orders: {n} orders at the limit, {limit}",
         fmt.minutes(ca["anchor_analytic_s"]), "computed from the limit"],
        [f"cancel-all ({fmt.seconds(ca['to_last_final_s'])}) ÷ per order extrapolated",
         fmt.fine_ratio(ca["over_extrapolated"]), "ratio"],
        [f"cancel-all ({fmt.seconds(ca['to_last_final_s'])}) ÷ per order from the limit",
         fmt.fine_ratio(ca["over_analytic"]), "ratio"],
    ]  # fmt: skip


LIST_HEADERS = [
    "confirmation (measured)",
    "orders",
    "request → last final",
    "÷ anchor",
    "status reads",
    "÷ anchor",
    "list calls (closed + open)",
    "429s",
    "records = exchange",
]


def _list_rows(mc: Figures) -> list[list[str]]:
    """(7b): confirmation through the lists beside status reads only (the anchor)."""
    runs = mc["runs"]
    anchor = runs["status_only"]
    rows = []
    for label, run in (
        ("list passes first, a status read behind (the worker)", runs["lists"]),
        ("status reads only: lists refused (anchor)", anchor),
    ):
        limited = run["rate_limited"]
        where = ", ".join(f"{n} {name}" for name, n in limited.items() if n)
        status = run["calls"]["status"]
        rows.append(
            [
                label,
                str(run["orders"]),
                fmt.seconds(run["to_last_final_s"]),
                fmt.fine_ratio(run["to_last_final_s"] / anchor["to_last_final_s"]),
                str(status),
                fmt.fine_ratio(status / anchor["calls"]["status"]),
                str(run["calls"]["closed"] + run["calls"]["open"]),
                f"{_total_429s(run)}" + (f" ({where})" if where else ""),
                _matches(run),
            ]
        )
    return rows


def _detail_rows(mc: Figures) -> list[list[str]]:
    """Benchmark 7 as (section, measure, value) rows, for the terminal."""
    rows: list[list[str]] = []
    for row in _mass_run_rows(mc):
        rows.append(
            ["(7a) cancel-all", row[0], f"{row[1]} orders, {row[2]} to last final, calls: "
             f"{row[3]} cancel-all, {row[4]} DELETE, {row[5]} status, {row[6]} lists; "
             f"{row[7]} 429s; {row[8]} = exchange"]
        )  # fmt: skip
    rows += [["(7a) cancel-all", f"{m} ({how})", v] for m, v, how in _cancel_all_anchor_rows(mc)]
    for row in _list_rows(mc):
        rows.append(
            ["(7b) lists", row[0], f"{row[1]} orders, {row[2]} to last final (÷ anchor "
             f"{row[3]}), {row[4]} status reads (÷ anchor {row[5]}), {row[6]} list calls, "
             f"{row[7]} 429s, {row[8]} = exchange"]
        )  # fmt: skip
    return rows


def _section(mc: Figures, results: Results) -> list[str]:
    """(7a)-(7b): cancel-all vs per-order cancels; list confirmation vs status reads."""
    limits = mc["limits"]
    runs = mc["runs"]
    ca, per_order = runs["cancel_all"], runs["per_order"]
    lists, anchor = runs["lists"], runs["status_only"]
    return [
        "## (7) Cancel-all and confirmation through the order lists (issue 12)",
        "",
        f"Every run at the exchange's real limits per key (cancel {limits['cancel']}, status "
        f"{limits['status']}, cancel-all {limits['cancel_all']}, Open and Closed Orders "
        f"{limits['list']} each) on a sandbox that confirms a cancel "
        f"{mc['confirm_delay_ms']} ms after accepting it and lets "
        f"{mc['fill_race_rate']:.0%} of cancels lose the race to a fill (seed {mc['seed']}). "
        "Each run has a process, a redis-server, a sandbox, an API key and an account of its "
        "own, and two Celery workers that serve only that account (`-Q cancels` and `-Q "
        "polls`, -c 4 each, every other setting at its default), so no run sees another's "
        "budgets or lines. Time = the request → the last order's final record (`final_at`). "
        "Calls = requests of the run's key reaching the sandbox after the request, 429s "
        "included. Records = exchange: each order's final record has the state the sandbox "
        "shows for it.",
        "",
        f"### (7a) Cancel-all vs per-order cancels, {ca['orders']} open orders on "
        f"{ca['symbols']} symbols",
        "",
        f"One `request_cancel_all` for the account (no symbol). The anchor is the per-order "
        f"path, `request_cancels`, at {limits['cancel']}: all {ca['orders']} per order would "
        f"take about {fmt.minutes(mc['cancel_all']['anchor_analytic_s'])} of the run, so "
        f"{per_order['orders']} orders (spread over the same symbols) are cancelled and "
        "measured, and the figure for all of them is computed from that run's DELETE rate "
        "(and, beside it, from the limit alone). The table says which figure is which.",
        "",
        fmt.md_table(MASS_RUN_HEADERS, _mass_run_rows(mc)),
        "",
        fmt.md_table(ANCHOR_HEADERS, _cancel_all_anchor_rows(mc)),
        "",
        f"### (7b) {lists['orders']} per-order cancels confirmed through the lists vs status "
        "reads only",
        "",
        f"The DELETE limit raised to {limits['fast_cancel']} on the sandbox and the workers, "
        f"so DELETEs are not the bottleneck; status at {limits['status']}, each list at "
        f"{limits['list']}. {lists['orders']} orders of one symbol, requested at once. The "
        "worker confirms three or more awaiting orders of an account through Closed Orders "
        "passes (50 orders a call), with a status read behind each order for what the lists "
        "do not settle.",
        "",
        fmt.md_table(LIST_HEADERS, _list_rows(mc)),
        "",
        _status_anchor_note(mc, anchor),
        "",
    ]


def _status_anchor_note(mc: Figures, anchor: Figures) -> str:
    """How (7b)'s anchor was made, and where its time went, from this run's arrivals."""
    limits, ls = mc["limits"], mc["lists"]
    status = anchor["arrivals_ms"]["status"]
    period_ms = mc["status_period_ms"]
    backstop_ms = ls["backstop_s"] * 1000
    at_once = sum(1 for at in status if at < backstop_ms)
    late = sum(1 for at in status if at >= period_ms)
    where = ""
    if status:
        where = (
            f" In this anchor, {at_once} of its {len(status)} status reads reached the sandbox "
            f"before the {backstop_ms / 1000:g} s wait was up (an order that finds fewer than "
            f"3 awaiting gets its read at once), {late} only after the first status window "
            f"({limits['status']}) had passed, and the last at {status[-1] / 1000:.1f} s."
        )
    if ls["status_floor_s"] > 0:
        where += (
            f" Status reads alone need at least {ls['status_floor_s']:g} s for "
            f"{anchor['orders']} orders at {limits['status']} (computed from the limit)."
        )
    return (
        "**How the anchor was made.** worker/ has no switch for status reads only, so the "
        "anchor's sandbox allows one list call per hour per key "
        f"(`list_limit={limits['no_list']}`) and the benchmark spends that call (and the Open "
        "Orders one) before the request: every list pass the workers try is refused with a "
        "429, which pauses their list budget for a window, and the status read behind each "
        "order does the work. The workers keep the measured run's list budgets "
        f"({limits['list']}): with a worker list budget of {limits['no_list']} as well, the "
        "worker would put every status read behind a pass "
        f"{ls['no_list_backstop_s'] / 3600:g} h after its DELETE (worker/confirmation.py: "
        "max(3 s, twice the closed-orders slot interval)) and the anchor would not end. So "
        f"the anchor pays the worker's {ls['backstop_s']:g} s wait behind a refused pass, which "
        "a design with no lists would not." + where
    )


def _plot(ax: Axes, mc: Figures) -> None:
    """Share of each run's orders with a final record, against log time since the request."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    runs = mc["runs"]
    for key, label, style, color in (
        ("cancel_all", "(7a) cancel-all", "-", "tab:blue"),
        ("per_order", "(7a) per-order cancels (anchor)", "--", "tab:blue"),
        ("lists", "(7b) confirmed through the lists", "-", "tab:green"),
        ("status_only", "(7b) status reads only (anchor)", "--", "tab:green"),
    ):
        run = runs[key]
        finals = [max(at, 1) / 1000 for at in run["finals_ms"]]
        shares = [100 * n / run["orders"] for n in range(len(finals) + 1)]
        ax.step(
            [finals[0], *finals],
            shares,
            where="post",
            linestyle=style,
            color=color,
            label=f"{label}: {run['orders']} orders, last at {run['to_last_final_s']:.1f} s",
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("% of the orders final")
    ax.set_title("(7) orders with a final record after the request, real limits (log time)")
    ax.set_xlabel("seconds since the request")
    ax.set_ylim(bottom=0)


def _tables(mc: Figures, results: Results) -> list[Table]:
    return [(DETAIL_HEADERS, _detail_rows(mc))]


REPORT = Report(
    goals=_goals,
    section=_section,
    tables=_tables,
    panels=(_plot,),
    goals_note="(7a)-(7b) are issue 12's, judged on the bounds tests/test_mass_cancel.py asserts",
    method=METHOD,
)


if __name__ == "__main__":
    raise SystemExit(run_main())
