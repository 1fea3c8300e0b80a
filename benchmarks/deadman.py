"""Benchmark 8: the dead man's switch, how late after its deadline the exchange hears it.

A strategy arms a switch guarding one symbol with open orders (timeout 2 s, the least
worker.deadman accepts), beats it every timeout ÷ 4 a few times (`heartbeat`), then goes
silent. The trigger delay of a firing is the arrival at the sandbox of the cancel-all it
sends minus its deadline (the last beat + the timeout). Goal: p99 ≤ 1 s.

Anchor, measured in the same run and alternating with the firings: a cancel-all requested
directly (`worker.producer.request_cancel_all`, urgent like the switch's) on another symbol,
request → arrival at the sandbox. The firing's delay minus the anchor is what the switch
adds over a strategy asking for the cancel-all itself at the deadline.

Budgets: the cancel-all budget is 10/60s per key at the real limits; 20 firings and 20
direct requests in about two minutes would go over it, so the workers
(COINSWITCH_CANCEL_ALL_RATE_LIMIT) and the sandbox (cancel_all_limit) both run at 10/2s,
and the status reads and order lists that confirm the cancelled orders at 20/2s. Each
request is seconds after the one before, so no budget ever holds one back: the figures are
the path's, not a limit's.

One process: a redis-server, the sandbox in this process (so each arrival is stamped on the
wall clock, sub-millisecond, beside the beats and Redis's own stamps), and `cancel-worker
worker`'s two Celery workers (cancels -c 4, polls -c 8); each runs a dispatcher that watches
the switches, and either may fire one.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import fmt
from benchmarks.common import (
    ArrivalProbe,
    BenchError,
    Processes,
    apply_env,
    celery_worker_args,
    percentile,
    say,
    service_env,
    wait_until,
    wait_workers_ready,
)
from benchmarks.report import DETAIL_HEADERS, Axes, Figures, Goal, Report, Results, Table
from tests.redis_server import redis_server
from tests.support import place_orders
from worker.sandbox import SandboxConfig, generate_keypair, run_sandbox

TIMEOUT_S = 2.0  # worker.deadman.MIN_TIMEOUT_S: the shortest a switch may be armed for
BEATS = 3  # heartbeats before the strategy goes silent
BEAT_EVERY_S = TIMEOUT_S / 4  # as the README advises
CANCEL_ALL_RATE = "10/2s"  # workers and sandbox: 40 cancel-alls in ~2 min fit, never wait
CANCEL_RATE = "10/2s"
STATUS_RATE = "20/2s"
LIST_RATE = "20/2s"  # Open and Closed Orders, each
CONFIRM_DELAY_MS = 200
ORDERS_PER_REQUEST = 3  # open on the symbol each cancel-all covers
SWITCH_SYMBOL = "BTCUSDT"
DIRECT_SYMBOL = "ETHUSDT"  # the anchor's: its cancel-alls never touch the switch's orders
CANCEL_CONCURRENCY = 4  # `cancel-worker worker`'s defaults
POLL_CONCURRENCY = 8
ARRIVAL_TIMEOUT_S = 10.0  # a cancel-all not at the sandbox this long after it was due
FINAL_TIMEOUT_S = 60.0  # every order's final record, after the last round
GOAL_P99_MS = 1000.0


@dataclass(frozen=True)
class Sizes:
    """How many measured rounds (one direct cancel-all, one firing) and warm-ups."""

    rounds: int
    warmups: int


FULL = Sizes(rounds=20, warmups=1)
SMOKE = Sizes(rounds=3, warmups=1)


def run(*, smoke: bool, work_dir: Path) -> dict[str, Any]:
    """Warm-ups, then rounds of (a direct cancel-all, a firing); the figures."""
    sizes = SMOKE if smoke else FULL
    api_key, secret_key = generate_keypair()
    config = SandboxConfig(
        cancel_limit=CANCEL_RATE,
        status_limit=STATUS_RATE,
        list_limit=LIST_RATE,
        cancel_all_limit=CANCEL_ALL_RATE,
        confirm_delay_ms=CONFIRM_DELAY_MS,
    )
    procs = Processes(work_dir)
    with ExitStack() as stack:
        redis_url = stack.enter_context(redis_server())
        sandbox = stack.enter_context(run_sandbox(config, api_keys=[api_key]))
        env = service_env(
            redis_url=redis_url,
            sandbox_url=sandbox.url,
            api_key=api_key,
            secret_key=secret_key,
            cancel_rate=CANCEL_RATE,
            status_rate=STATUS_RATE,
            COINSWITCH_ACCOUNTS="",
            COINSWITCH_CANCEL_ALL_RATE_LIMIT=CANCEL_ALL_RATE,
            COINSWITCH_OPEN_ORDERS_RATE_LIMIT=LIST_RATE,
            COINSWITCH_CLOSED_ORDERS_RATE_LIMIT=LIST_RATE,
        )
        apply_env(env)
        from worker.celery_app import app
        from worker.keys import CANCEL_QUEUE, POLL_QUEUE

        stack.callback(procs.stop_all)  # before the sandbox and Redis stop
        worker_env = {**os.environ, **env}
        for name, queue, threads in (
            ("cancels", CANCEL_QUEUE, CANCEL_CONCURRENCY),
            ("polls", POLL_QUEUE, POLL_CONCURRENCY),
        ):
            procs.start(name, celery_worker_args("worker", queue, name, threads), worker_env)
        wait_workers_ready(app, ["cancels", "polls"], procs)
        bench = _Bench(sandbox.admin, ArrivalProbe(sandbox, clock=time.time))
        for i in range(sizes.warmups + sizes.rounds):
            measured = i >= sizes.warmups
            say(f"deadman: round {i + 1} of {sizes.warmups + sizes.rounds}"
                + ("" if measured else " (warm-up)"))  # fmt: skip
            direct = bench.direct(i)
            firing = bench.firing(i)
            if measured:
                bench.direct_ms.append(direct)
                bench.firings.append(firing)
        outcome = bench.outcome()
        alive = sum(procs.procs[name].poll() is None for name in ("cancels", "polls"))
    return summarise(bench.firings, bench.direct_ms, outcome, sizes, workers_alive=alive)


class _Bench:
    """The run's sandbox, its arrival probe, and what was requested and measured so far."""

    def __init__(self, admin: Any, probe: ArrivalProbe) -> None:
        self.admin = admin
        self.probe = probe
        self.direct_ms: list[float] = []
        self.firings: list[dict[str, float]] = []
        self.orders: list[str] = []
        self.batches: dict[str, list[str]] = {}  # batch id → the orders open when it was sent

    def _place(self, symbol: str) -> list[str]:
        ids = place_orders(self.admin, ORDERS_PER_REQUEST, symbol=symbol)
        self.orders += ids
        return ids

    def _next_arrival(self, seen: int, timeout_s: float) -> float:
        """The wall time (s) the next cancel-all after the `seen` so far reached the sandbox."""
        return self.probe.wait_for("cancel_all", seen + 1, timeout_s)

    def direct(self, index: int) -> float:
        """The anchor: request → arrival of a cancel-all asked for directly (ms)."""
        from worker.producer import request_cancel_all

        ids = self._place(DIRECT_SYMBOL)
        seen = self.probe.count("cancel_all")
        requested = time.time()
        batch = request_cancel_all(symbol=DIRECT_SYMBOL, priority="urgent")
        arrived = self._next_arrival(seen, ARRIVAL_TIMEOUT_S)
        self.batches[batch.batch_id] = ids
        _wait_answered(batch.batch_id, f"direct cancel-all {index}")
        return (arrived - requested) * 1000

    def firing(self, index: int) -> dict[str, float]:
        """Arm, beat, fall silent; the trigger delay and where it went (ms)."""
        from worker.deadman import arm_deadman, heartbeat

        ids = self._place(SWITCH_SYMBOL)
        name = f"bench-{index}"
        seen = self.probe.count("cancel_all")
        arm_deadman(name, TIMEOUT_S, [SWITCH_SYMBOL])
        beat_at = beat_rtt = math.nan
        for _ in range(BEATS):
            time.sleep(BEAT_EVERY_S)
            beat_at = time.time()
            heartbeat(name)  # SwitchTripped here would be a switch that fired early
            beat_rtt = time.time() - beat_at
        deadline = beat_at + TIMEOUT_S
        arrived = self._next_arrival(seen, TIMEOUT_S + ARRIVAL_TIMEOUT_S)
        switch = _wait_tripped(name)
        if len(switch["batches"]) != 1:
            raise BenchError(f"switch {name} sent {switch['batches']}, not one cancel-all")
        self.batches[switch["batches"][0]] = ids
        _wait_answered(switch["batches"][0], f"firing {index}")
        deadline_ms = deadline * 1000
        return {
            "delay_ms": (arrived - deadline) * 1000,
            # Redis's stamps (whole ms, the same wall clock): when a dispatcher claimed the
            # expired switch (`fired_at`), when its cancel-all was in line (`tripped_at`).
            "claim_ms": switch["fired_at"] - deadline_ms,
            "trip_ms": switch["tripped_at"] - switch["fired_at"],
            "send_ms": arrived * 1000 - switch["tripped_at"],
            "beat_rtt_ms": beat_rtt * 1000,
        }

    def outcome(self) -> dict[str, Any]:
        """After the last round: every order final and as the exchange says, the batches
        named the orders that were open, calls and 429s per endpoint."""
        from worker.producer import get_batch, get_records

        def finals() -> list[Any] | None:
            records = get_records(self.orders)
            return records if all(r is not None and r.is_final for r in records) else None

        records = wait_until(finals, FINAL_TIMEOUT_S, f"{len(self.orders)} final records")
        truth = {i: self.admin.order(i)["order"]["status"] for i in self.orders}
        states = {r.order_id: r.state.value for r in records}
        batches_match = 0
        for batch_id, ids in self.batches.items():
            batch = get_batch(batch_id)
            batches_match += batch is not None and sorted(batch.orders_ids) == sorted(ids)
        endpoints = self.admin.stats()["endpoints"]
        return {
            "orders": len(self.orders),
            "match_truth": sum(states.get(i) == status for i, status in truth.items()),
            "final_states": dict(Counter(states.values())),
            "batches": len(self.batches),
            "batches_match": batches_match,
            "calls": {name: int(e["requests"]) for name, e in endpoints.items()},
            "rate_limited": {name: int(e["rate_limited"]) for name, e in endpoints.items()},
        }


def _switch_fields(name: str) -> dict[str, str]:
    from worker.services import get_services

    services = get_services()
    fields: dict[str, str] = services.redis.hgetall(services.keys.deadman(name))
    return fields


def _wait_tripped(name: str) -> dict[str, Any]:
    """The fired switch's Redis stamps and batches, once it is TRIPPED."""
    fields = wait_until(
        lambda: (f := _switch_fields(name)).get("state") == "TRIPPED" and f,
        ARRIVAL_TIMEOUT_S,
        f"switch {name} to be TRIPPED",
    )
    return {
        "fired_at": int(fields["fired_at"]),
        "tripped_at": int(fields["tripped_at"]),
        "batches": [b for b in fields.get("batches", "").split(",") if b],
    }


def _wait_answered(batch_id: str, what: str) -> None:
    """Until the cancel-all's answer is recorded (ACCEPTED or later), so the next round's
    orders are placed after it and it cannot cover them."""
    from worker.models import BatchState
    from worker.producer import get_batch

    def answered() -> bool:
        batch = get_batch(batch_id)
        return batch is not None and batch.state not in (BatchState.QUEUED, BatchState.UNCONFIRMED)

    wait_until(answered, ARRIVAL_TIMEOUT_S, f"{what}: the cancel-all's answer")


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values, 50),
        "p99_ms": percentile(values, 99),
        "max_ms": max(values, default=math.nan),
        "min_ms": min(values, default=math.nan),
    }


def summarise(
    firings: list[dict[str, float]],
    direct_ms: list[float],
    outcome: dict[str, Any],
    sizes: Sizes,
    *,
    workers_alive: int,
) -> dict[str, Any]:
    """Percentiles of the trigger delay, of its parts, of the anchor; ratios to the anchor."""
    delays = [f["delay_ms"] for f in firings]
    delay, direct = _stats(delays), _stats(direct_ms)
    return {
        "timeout_s": TIMEOUT_S,
        "beats": BEATS,
        "beat_every_s": BEAT_EVERY_S,
        "rounds": sizes.rounds,
        "warmups": sizes.warmups,
        "orders_per_request": ORDERS_PER_REQUEST,
        "limits": {
            "cancel_all": CANCEL_ALL_RATE,
            "cancel": CANCEL_RATE,
            "status": STATUS_RATE,
            "list": LIST_RATE,
        },
        "confirm_delay_ms": CONFIRM_DELAY_MS,
        "workers": 2,
        "workers_alive": workers_alive,
        "goal_p99_ms": GOAL_P99_MS,
        "firings": firings,
        "direct_ms": direct_ms,
        "delay": delay,
        "direct": direct,
        "parts_p50_ms": {
            part: percentile([f[part] for f in firings], 50)
            for part in ("claim_ms", "trip_ms", "send_ms", "beat_rtt_ms")
        },
        "early": sum(d < 0 for d in delays),
        "added_p50_ms": delay["p50_ms"] - direct["p50_ms"],
        "p99_over_direct_p99": delay["p99_ms"] / direct["p99_ms"],
        "p50_over_direct_p50": delay["p50_ms"] / direct["p50_ms"],
        **outcome,
    }


# ---- its part of the report: goal (8), the (8) section and its plot ------------------------

METHOD = (
    "- Dead man's switch (8): one process (`benchmarks/deadman.py`) with its own "
    "redis-server, the sandbox in that process and two Celery workers. The sandbox's "
    "per-request arrival hook is wrapped to stamp `time.time()` (sub-millisecond), the "
    "clock the beats are timed on and Redis's `TIME` reads; the switch's `fired_at` and "
    "`tripped_at` come from its hash (`cw:deadman:switch:<name>`). Scaled limits on both "
    "sides, not one account per firing: the cancel-all budget at 10/2s on the workers "
    "(`COINSWITCH_CANCEL_ALL_RATE_LIMIT`) and the sandbox (`cancel_all_limit`), with rounds "
    "seconds apart, so no firing or direct request ever waits for the budget and every "
    "firing uses the same key, account and fleet. Timeout 2 s because worker.deadman "
    "refuses less (`MIN_TIMEOUT_S`). A round's next orders are placed only once its "
    "cancel-alls are answered (batch `ACCEPTED`), so no cancel-all covers another's orders; "
    "at the end every order's final record is compared with the sandbox and each batch's "
    "`orders_ids` with the orders that were open.",
)


DELAY_PARTS = (
    ("claim_ms", "of it: deadline → a dispatcher claims the expired switch (Redis `fired_at`)"),
    ("trip_ms", "of it: claimed → its urgent cancel-all in line (Redis `tripped_at`)"),
    ("send_ms", "of it: in line → the cancel-all at the sandbox"),
)


def _pcts(values: list[float]) -> list[str]:
    """p50 / p99 / max of a sample, in ms."""
    if not values:
        return [fmt.NOT_MEASURED] * 3
    return [
        fmt.ms(percentile(values, 50)),
        fmt.ms(percentile(values, 99)),
        fmt.ms(max(values)),
    ]


DELAY_HEADERS = ["measure", "n", "p50", "p99", "max"]


def _delay_rows(dm: Figures) -> list[list[str]]:
    """(8): the trigger delay, its parts, and the direct cancel-all it is compared with."""
    firings = dm["firings"]
    delays = [f["delay_ms"] for f in firings]
    n = str(len(firings))
    rows = [
        ["trigger delay: deadline (last beat + timeout) → its cancel-all at the sandbox", n,
         *_pcts(delays)],
        ["direct cancel-all (anchor): `request_cancel_all` → at the sandbox",
         str(len(dm["direct_ms"])), *_pcts(dm["direct_ms"])],
    ]  # fmt: skip
    rows += [[label, n, *_pcts([f[key] for f in firings])] for key, label in DELAY_PARTS]
    rows.append(
        ["the last beat's round trip (the deadline's uncertainty)", n,
         *_pcts([f["beat_rtt_ms"] for f in firings])]
    )  # fmt: skip
    return rows


def _outcome_text(dm: Figures) -> str:
    """What the firings left behind: records against the exchange, 429s, early firings."""
    limited = sum(dm["rate_limited"].values())
    states = ", ".join(f"{n} {state}" for state, n in sorted(dm["final_states"].items()))
    return (
        f"{dm['match_truth']}/{dm['orders']} final records = exchange ({states}); "
        f"{dm['batches_match']}/{dm['batches']} cancel-alls named exactly the orders open on "
        f"their symbol; {dm['calls']['cancel_all']} cancel-all calls, {limited} 429s; fired "
        f"before the deadline: {dm['early']} of {len(dm['firings'])}; workers running at the "
        f"end: {dm['workers_alive']}/{dm['workers']}"
    )


def _detail_rows(dm: Figures) -> list[list[str]]:
    """Benchmark 8 as (section, measure, value) rows, for the terminal."""
    rows = [["(8) deadman", r[0], f"n={r[1]}: p50 {r[2]}, p99 {r[3]}, max {r[4]}"]
            for r in _delay_rows(dm)]  # fmt: skip
    rows += [
        ["(8) deadman", "switch minus direct, p50", fmt.ms(dm["added_p50_ms"])],
        ["(8) deadman", "switch p99 ÷ direct p99", fmt.ratio(dm["p99_over_direct_p99"])],
        ["(8) deadman", "outcome", _outcome_text(dm)],
    ]
    return rows


def _goals(dm: Figures, results: Results) -> list[Goal]:
    """(8): the trigger delay's p99 against the switch's goal, beside a direct cancel-all."""
    delay, direct = dm["delay"], dm["direct"]
    limited = sum(dm["rate_limited"].values())
    goal_ms = dm["goal_p99_ms"]
    return [
        Goal(
            "(8) dead man's switch, trigger delay p99",
            f"{fmt.ms(delay['p99_ms'])} deadline → cancel-all at the sandbox (p50 "
            f"{fmt.ms(delay['p50_ms'])}, max {fmt.ms(delay['max_ms'])}, n={len(dm['firings'])}); "
            f"{dm['early']} early; {limited} 429s; {dm['match_truth']}/{dm['orders']} records "
            "= exchange",
            f"direct cancel-all, request → sandbox: p99 {fmt.ms(direct['p99_ms'])} (p50 "
            f"{fmt.ms(direct['p50_ms'])})",
            dm["p99_over_direct_p99"],
            f"p99 ≤ {goal_ms / 1000:g} s, none early",
            delay["p99_ms"] <= goal_ms
            and dm["early"] == 0
            and limited == 0
            and dm["match_truth"] == dm["orders"],
        )
    ]


def _section(dm: Figures, results: Results) -> list[str]:
    """(8): how late after its deadline the exchange hears a switch's cancel-all."""
    limits = dm["limits"]
    return [
        "## (8) The dead man's switch: how late the exchange hears it",
        "",
        f"A switch guarding BTCUSDT with {dm['orders_per_request']} orders open on it, armed "
        f"(`arm_deadman`) with a timeout of {dm['timeout_s']:g} s (the least worker.deadman "
        f"accepts), beaten {dm['beats']} times every {dm['beat_every_s']:g} s (timeout ÷ 4) "
        f"by `heartbeat`, then left silent. {dm['rounds']} firings, each a switch of its own, "
        f"after {dm['warmups']} unmeasured warm-up. Trigger delay = the arrival of the "
        "switch's cancel-all at the sandbox - (the last beat + the timeout). The anchor, "
        "measured alternately with the firings: an urgent cancel-all requested directly "
        f"(`request_cancel_all`) for {dm['orders_per_request']} orders on ETHUSDT, request → "
        "arrival at the sandbox, i.e. what a strategy asking for the cancel-all itself at the "
        f"deadline would wait. Budgets: cancel-all {limits['cancel_all']} on the workers "
        "(`COINSWITCH_CANCEL_ALL_RATE_LIMIT`) and the sandbox (`cancel_all_limit`), because "
        f"the real 10/60s does not hold {2 * (dm['rounds'] + dm['warmups'])} cancel-alls in "
        "a couple of minutes (each request comes seconds after the last, so no budget ever "
        f"held one back); status reads and order lists {limits['list']}; confirm delay "
        f"{dm['confirm_delay_ms']} ms. The fleet: two Celery workers as `cancel-worker "
        "worker` starts them (cancels -c 4, polls -c 8), each with a dispatcher that watches "
        "the switches.",
        "",
        fmt.md_table(DELAY_HEADERS, _delay_rows(dm)),
        "",
        f"The switch minus the direct request, p50: {fmt.ms(dm['added_p50_ms'])}; switch p99 ÷ "
        f"direct p99: {fmt.ratio(dm['p99_over_direct_p99'])}. Outcome: {_outcome_text(dm)}.",
        "",
        "The deadline is the wall time just before the last `heartbeat` call plus the "
        "timeout; Redis sets the new expiry during that call, so the delay is overstated by "
        "at most its round trip (last row). The parts use Redis's own stamps (whole ms, the "
        "same clock), so they add up to the delay only to within a millisecond or two.",
        "",
    ]


def _plot(ax: Axes, dm: Figures) -> None:
    """Each firing's trigger delay beside each direct cancel-all, in order."""
    delays = [f["delay_ms"] for f in dm["firings"]]
    rounds = range(1, len(delays) + 1)
    ax.plot(rounds, delays, "o-", label=f"switch: deadline → cancel-all at the sandbox (p99 "
            f"{fmt.ms(dm['delay']['p99_ms'])})")  # fmt: skip
    direct_p99 = fmt.ms(dm["direct"]["p99_ms"])
    ax.plot(range(1, len(dm["direct_ms"]) + 1), dm["direct_ms"], "s--",
            label=f"direct cancel-all: request → sandbox (p99 {direct_p99})")  # fmt: skip
    ax.set_ylabel("ms")
    ax.set_xlabel("round (one direct cancel-all, then one firing)")
    ax.set_xticks(list(rounds))
    ax.set_title(
        f"(8) dead man's switch, timeout {dm['timeout_s']:g} s: how late the exchange hears "
        f"it (goal p99 ≤ {dm['goal_p99_ms'] / 1000:g} s)"
    )
    ax.set_ylim(bottom=0)


def _tables(dm: Figures, results: Results) -> list[Table]:
    return [(DETAIL_HEADERS, _detail_rows(dm))]


REPORT = Report(
    goals=_goals,
    section=_section,
    tables=_tables,
    panels=(_plot,),
    goals_note="(8) is the dead man's switch's (p99 trigger delay ≤ 1 s)",
    method=METHOD,
)
