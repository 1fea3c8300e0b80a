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
from tests.redis_server import redis_server
from tests.support import place_orders
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
#: worker/confirmation.py: a status read waits max(3 s, twice the closed-orders slot
#: interval) behind the pass it backs up: 6 s at 20/60s, two hours at 1/1h.
STATUS_BACKSTOP_MIN_S = 3.0
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


if __name__ == "__main__":
    raise SystemExit(run_main())
