"""Benchmark 10: strategies sharing one account (owners), each beside its anchor.

One fleet like benchmark 6 (3 `celery -A worker worker -Q cancels` processes, -c 4, and 1
for polls), one account, the sandbox at the scaled limits of tests/conftest.py (cancels and
cancel-alls 10/2s, status reads and order lists 20/2s, confirm delay 200 ms):

a. Fair share. Strategy A asks 60 cancels; once the first burst (limit - 1) is out,
   strategy B asks 1. B's wait = its request → the sandbox accepting its DELETE. With
   owners (A's cancels `owner=strat-a`, B's `owner=strat-b`: turns alternate between them)
   beside the same requests with no owner (first come, first served: the anchor), in the
   same run, each after every budget's window emptied.
b. A dead man's switch on a symbol shared with another strategy. BTCUSDT holds 12 orders of
   A and 8 of B, ETHUSDT 10 of A, SOLUSDT 6 of B, all tracked; a 3 s switch is armed and
   never beaten. Owner-scoped (owner A, every symbol) beside the whole-symbol switch a
   strategy would arm without owners (BTCUSDT and ETHUSDT: the anchor, which also takes
   B's 8). Time = the deadline → the last final record of the orders it cancelled; calls by
   endpoint; B's orders touched. The book is reset between the two.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import fmt
from benchmarks.common import (
    BenchError,
    Processes,
    accepted_at,
    apply_env,
    celery_worker_args,
    key_tag,
    say,
    service_env,
    wait_budgets_idle,
    wait_until,
    wait_workers_ready,
)
from benchmarks.report import DETAIL_HEADERS, Figures, Goal, Report, Results, Table
from tests.redis_server import redis_server
from tests.support import place_orders
from worker.sandbox import SandboxConfig, SandboxHandle, generate_keypair, run_sandbox

LIMIT, PERIOD_MS = 10, 2000
RATES = {  # workers' variables and the sandbox's knobs, the same figures
    "COINSWITCH_CANCEL_ALL_RATE_LIMIT": "10/2s",
    "COINSWITCH_OPEN_ORDERS_RATE_LIMIT": "20/2s",
    "COINSWITCH_CLOSED_ORDERS_RATE_LIMIT": "20/2s",
}
CONFIRM_DELAY_MS = 200
CANCEL_WORKERS = 3
CONCURRENCY = 4
SWITCH_TIMEOUT_S = 3.0
IDLE_TIMEOUT_S = 30.0
FINAL_TIMEOUT_S = 90.0
BOOK = (  # (symbol, owner, orders): the shared book of (b)
    ("BTCUSDT", "strat-a", 12),
    ("BTCUSDT", "strat-b", 8),
    ("ETHUSDT", "strat-a", 10),
    ("SOLUSDT", "strat-b", 6),
)
ENDPOINTS = ("open", "cancel_all", "cancel", "status", "closed")
KEYS = generate_keypair()  # the one account's API key and secret


@dataclass(frozen=True)
class Sizes:
    """How many cancels A asks in (a)."""

    backlog: int


FULL, SMOKE = Sizes(60), Sizes(30)


class Bench:
    """One account, its sandbox and its fleet."""

    def __init__(self, redis_url: str, work_dir: Path, sandbox: SandboxHandle) -> None:
        self.api_key, secret_key = KEYS
        self.sandbox = sandbox
        self.env = service_env(
            redis_url=redis_url,
            sandbox_url=sandbox.url,
            api_key=self.api_key,
            secret_key=secret_key,
            cancel_rate="10/2s",
            status_rate="20/2s",
            **RATES,
        )
        self.procs = Processes(work_dir)
        self.left: list[str] = []  # orders the last switch left open

    @contextmanager
    def fleet(self) -> Iterator[None]:
        """3 cancel workers and 1 poll worker; stopped afterwards."""
        from worker.celery_app import app
        from worker.keys import CANCEL_QUEUE, POLL_QUEUE

        env = {**os.environ, **self.env}
        names = [f"owners-cancels{i}" for i in range(CANCEL_WORKERS)]
        try:
            for name in names:
                self.procs.start(name, celery_worker_args("worker", CANCEL_QUEUE, name), env)
            names.append("owners-polls")
            self.procs.start(names[-1], celery_worker_args("worker", POLL_QUEUE, names[-1]), env)
            wait_workers_ready(app, names, self.procs)
            yield
        finally:
            self.procs.stop_all()

    def place(self, count: int, symbol: str = "DOGEUSDT") -> list[str]:
        return place_orders(self.sandbox.admin, count, api_key=self.api_key, symbol=symbol)

    def calls(self, since_ms: int) -> dict[str, int]:
        """Requests per endpoint of this key since `since_ms`, and the 429s among them."""
        stats = self.sandbox.admin.stats()["endpoints"]
        tag = key_tag(self.api_key)
        own = {name: stats[name]["by_key"].get(tag, {}) for name in stats}
        counts = {
            e: sum(1 for at in own[e].get("arrivals_ms", []) if at >= since_ms) for e in ENDPOINTS
        }
        counts["rate_limited"] = sum(o.get("rate_limited", 0) for o in own.values())
        return counts


def run(*, smoke: bool, work_dir: Path) -> dict[str, Any]:
    """Run (a) and (b); return their figures."""
    sizes = SMOKE if smoke else FULL
    config = SandboxConfig(
        cancel_limit="10/2s",
        status_limit="20/2s",
        cancel_all_limit="10/2s",
        list_limit="20/2s",
        confirm_delay_ms=CONFIRM_DELAY_MS,
    )
    with redis_server() as redis_url, run_sandbox(config, api_keys=[KEYS[0]]) as sandbox:
        bench = Bench(redis_url, work_dir, sandbox)
        apply_env(bench.env)
        with bench.fleet():
            fair = [_fair_run(bench, sizes.backlog, owners=o) for o in (False, True)]
            switch = [_switch_run(bench, scoped=s) for s in (False, True)]
    return {
        "limit": LIMIT,
        "period_ms": PERIOD_MS,
        "confirm_delay_ms": CONFIRM_DELAY_MS,
        "cancel_workers": CANCEL_WORKERS,
        "concurrency": CONCURRENCY,
        "fair": fair,
        "switch": switch,
    }


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _wait_final(order_ids: list[str], what: str) -> list[int]:
    """Every order's final record; their `final_at` (Unix ms)."""
    from worker.producer import get_records

    def finals() -> list[int] | None:
        records = get_records(order_ids)
        if not all(r is not None and r.is_final for r in records):
            return None
        return [int(r.final_at or 0) for r in records if r is not None]

    found: list[int] = wait_until(finals, FINAL_TIMEOUT_S, f"{what}: final records")
    return found


# ---- a. fair share -------------------------------------------------------------------------


def _fair_run(bench: Bench, backlog: int, *, owners: bool) -> dict[str, Any]:
    """A's backlog, then B's single cancel once A's first burst is out."""
    from worker.producer import get_records, request_cancel, request_cancels

    label = "owners: turns between A and B" if owners else "no owners: first come first served"
    say(f"owners: (a) {label}, backlog {backlog}")
    wait_budgets_idle(("default",), IDLE_TIMEOUT_S)
    a_ids, b_id = bench.place(backlog), bench.place(1)[0]
    since = _now_ms()
    request_cancels(a_ids, owner="strat-a" if owners else None)
    wait_until(
        lambda: sum(bool(r and r.attempts) for r in get_records(a_ids)) >= LIMIT - 1,
        FINAL_TIMEOUT_S,
        "A's first burst",
    )
    requested = _now_ms()
    request_cancel(b_id, owner="strat-b" if owners else None)
    _wait_final([*a_ids, b_id], label)
    b_sent = accepted_at(bench.sandbox, b_id)
    if b_sent is None:
        raise BenchError(f"{label}: B's DELETE was not accepted")
    between = sum(1 for i in a_ids if requested <= (accepted_at(bench.sandbox, i) or 0) < b_sent)
    return {
        "owners": owners,
        "label": label,
        "backlog": backlog,
        "b_wait_ms": b_sent - requested,
        "a_between": between,
        "rate_limited": bench.calls(since)["rate_limited"],
    }


# ---- b. a switch on a shared symbol ----------------------------------------------------------


def _clear(bench: Bench) -> None:
    """Cancel what the last book left open, so each switch meets the same book (a sandbox
    reset would hand out the same order ids again, which records of the last run hold)."""
    from worker.producer import request_cancels

    if bench.left:
        request_cancels(bench.left)
        _wait_final(bench.left, "the last book's leftovers")
        bench.left = []
    wait_budgets_idle(("default",), IDLE_TIMEOUT_S)


def _switch_run(bench: Bench, *, scoped: bool) -> dict[str, Any]:
    """Arm a switch over the shared book, never beat it; follow what it cancels."""
    from worker.deadman import arm_deadman, deadman_status
    from worker.owners import track_orders
    from worker.producer import get_batch

    label = "owner-scoped (strat-a, every symbol)" if scoped else "whole symbols BTCUSDT, ETHUSDT"
    say(f"owners: (b) switch {label}")
    _clear(bench)
    book: dict[tuple[str, str], list[str]] = {}
    for symbol, owner, count in BOOK:
        book[(symbol, owner)] = ids = bench.place(count, symbol)
        track_orders(ids, owner)
    a_ids = [i for (_, owner), ids in book.items() if owner == "strat-a" for i in ids]
    b_ids = [i for (_, owner), ids in book.items() if owner == "strat-b" for i in ids]
    name = f"bench-{'scoped' if scoped else 'symbols'}"
    switch = arm_deadman(
        name,
        SWITCH_TIMEOUT_S,
        None if scoped else ["BTCUSDT", "ETHUSDT"],
        owner="strat-a" if scoped else None,
    )
    deadline = switch.armed_at + int(SWITCH_TIMEOUT_S * 1000)
    fired = wait_until(
        lambda: (s := deadman_status(name)[0]).batches and s, FINAL_TIMEOUT_S, "the firing"
    )

    def batches_final() -> list[Any] | None:
        found = [get_batch(b) for b in fired.batches]
        children = [get_batch(c) for b in found if b is not None for c in b.batches]
        every = [*found, *children]
        return every if all(b is not None and b.is_final for b in every) else None

    batches = wait_until(batches_final, FINAL_TIMEOUT_S, f"{label}: its batches final")
    cancelled = sorted({i for b in batches for i in b.orders_ids})
    finals = _wait_final(cancelled, label)
    statuses = {i: bench.sandbox.admin.order(i)["order"]["status"] for i in a_ids + b_ids}
    bench.left = [i for i, status in statuses.items() if status == "RAISED"]
    calls = bench.calls(deadline - PERIOD_MS)
    return {
        "scoped": scoped,
        "label": label,
        "a_orders": len(a_ids),
        "a_cancelled": sum(1 for i in a_ids if statuses[i] == "CANCELLED"),
        "b_touched": sum(1 for i in b_ids if statuses[i] != "RAISED"),
        "cancelled": len(cancelled),
        "to_last_final_ms": max(finals) - deadline,
        "calls": calls,
        "batches": [{"symbol": b.symbol, "orders": len(b.orders_ids)} for b in batches],
    }


# ---- its part of the report: goals (10a)-(10b) and the (10) section --------------------------

FAIR_BETWEEN_GOAL = 4  # A's DELETEs between B's request and B's DELETE, at most
A_FINAL_GOAL_S = 15.0  # every A order final after the deadline (tests/test_deadman.py)
METHOD = (
    "- Owners (10): B's wait from its request to the sandbox's history of the order "
    "(`CANCELLATION_RAISED`, same wall clock); calls per endpoint from the sandbox's "
    "`stats()` per API key; the switch's deadline is its arming time (Redis clock) + 3 s.",
)


def _runs(own: Figures, part: str, key: str) -> tuple[Figures, Figures]:
    """(anchor, feature) runs of one part."""
    runs = {bool(r[key]): r for r in own[part]}
    return runs[False], runs[True]


def _goals(own: Figures, results: Results) -> list[Goal]:
    fcfs, fair = _runs(own, "fair", "owners")
    symbols, scoped = _runs(own, "switch", "scoped")
    window_ms = own["period_ms"] + 1000
    return [
        Goal(
            "(10a) one cancel behind another strategy's backlog",
            f"{fair['b_wait_ms']} ms, {fair['a_between']} of A's DELETEs between, "
            f"{fair['rate_limited']} 429s",
            f"first come first served {fcfs['b_wait_ms']} ms",
            fair["b_wait_ms"] / fcfs["b_wait_ms"],
            f"≤ one window + 1 s ({window_ms} ms), ≤ {FAIR_BETWEEN_GOAL} between, 0 429s",
            fair["b_wait_ms"] <= window_ms
            and fair["a_between"] <= FAIR_BETWEEN_GOAL
            and fair["rate_limited"] == 0,
        ),
        Goal(
            "(10b) owner-scoped switch on a shared symbol",
            f"{scoped['to_last_final_ms'] / 1000:.2f} s to A's last final, "
            f"{scoped['b_touched']} of B's touched, {scoped['calls']['rate_limited']} 429s",
            f"whole-symbol switch {symbols['to_last_final_ms'] / 1000:.2f} s "
            f"({symbols['b_touched']} of B's touched)",
            scoped["to_last_final_ms"] / symbols["to_last_final_ms"],
            f"0 of B's touched, all of A's final ≤ {A_FINAL_GOAL_S:g} s, 0 429s",
            scoped["b_touched"] == 0
            and scoped["a_cancelled"] == scoped["a_orders"]
            and scoped["to_last_final_ms"] <= A_FINAL_GOAL_S * 1000
            and scoped["calls"]["rate_limited"] == 0,
        ),
    ]


FAIR_HEADERS = ["variant", "A's backlog", "B: request → DELETE", "÷ anchor", "A's between", "429s"]
SWITCH_HEADERS = [
    "switch",
    "cancelled (A's / B's)",
    "deadline → last final",
    "÷ anchor",
    "calls: open list / cancel-all / DELETE / status / closed list",
    "429s",
]


def _fair_rows(own: Figures) -> list[list[str]]:
    fcfs, _ = _runs(own, "fair", "owners")
    return [
        [
            r["label"] + ("" if r["owners"] else " (anchor)"),
            str(r["backlog"]),
            f"{r['b_wait_ms']} ms",
            fmt.ratio(r["b_wait_ms"] / fcfs["b_wait_ms"]),
            str(r["a_between"]),
            str(r["rate_limited"]),
        ]
        for r in own["fair"]
    ]


def _switch_rows(own: Figures) -> list[list[str]]:
    symbols, _ = _runs(own, "switch", "scoped")
    return [
        [
            r["label"] + ("" if r["scoped"] else " (anchor)"),
            f"{r['a_cancelled']} / {r['b_touched']}",
            f"{r['to_last_final_ms'] / 1000:.2f} s",
            fmt.ratio(r["to_last_final_ms"] / symbols["to_last_final_ms"]),
            " / ".join(str(r["calls"][e]) for e in ENDPOINTS),
            str(r["calls"]["rate_limited"]),
        ]
        for r in own["switch"]
    ]


def _section(own: Figures, results: Results) -> list[str]:
    _, scoped = _runs(own, "switch", "scoped")
    book = ", ".join(f"{symbol} {count} of {owner}" for symbol, owner, count in BOOK)
    plan = "; ".join(f"{b['symbol'] or 'DELETEs'}: {b['orders']}" for b in scoped["batches"])
    return [
        "## (10) Strategies sharing one account (owners)",
        "",
        f"{own['cancel_workers']} `celery -A worker worker -Q cancels` processes (-c "
        f"{own['concurrency']}) and 1 for polls, one account, sandbox limits "
        f"{own['limit']}/{own['period_ms'] / 1000:g}s for cancels and cancel-alls, 20/2s "
        f"for status reads and order lists, confirm delay {own['confirm_delay_ms']} ms.",
        "",
        "### (10a) One cancel behind another strategy's backlog",
        "",
        "A asks its backlog; once limit - 1 DELETEs are out, B asks one cancel. The anchor "
        "sends the same requests without owners (one queue, first come first served); "
        "with owners, A and B take turns within the line.",
        "",
        fmt.md_table(FAIR_HEADERS, _fair_rows(own)),
        "",
        "### (10b) A dead man's switch on a symbol shared with another strategy",
        "",
        f"The book: {book}, every order tracked to its owner. A switch (3 s, never beaten) "
        "scoped to strat-a reads the open orders once, then sends one cancel-all where "
        "every open order is A's and A's orders one by one (urgent) where B's are open too; "
        "the anchor, a switch over BTCUSDT and ETHUSDT as one would arm it without owners, "
        f"sends a cancel-all per symbol. The scoped switch's batches: {plan}.",
        "",
        fmt.md_table(SWITCH_HEADERS, _switch_rows(own)),
        "",
    ]


def _tables(own: Figures, results: Results) -> list[Table]:
    rows = [["(10a) fair share", *r[:1], ", ".join(r[2:])] for r in _fair_rows(own)]
    rows += [["(10b) switch", *r[:1], ", ".join(r[1:])] for r in _switch_rows(own)]
    return [(DETAIL_HEADERS, rows)]


REPORT = Report(
    goals=_goals,
    section=_section,
    tables=_tables,
    goals_note="(10a)-(10b) are issue 19's bounds, as tests/test_scheduling.py and "
    "tests/test_deadman.py assert them",
    method=METHOD,
)
