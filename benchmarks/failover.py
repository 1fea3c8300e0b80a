"""Benchmark 9: losing the Redis primary, with Sentinel.

Each failover gets a fresh layout (worker.stack.SentinelLayout: a primary, a replica and
three Sentinels on loopback, AOF on both servers, down-after 1 s, as `cancel-worker run
--sentinel` starts them), a fresh sandbox and a fleet of two hosts: two `cancel-worker
worker` processes, each the supervisor of a cancels (-c 4) and a polls (-c 8) Celery worker
that it restarts when one dies, as production runs them. (tests/test_failover.py starts bare
Celery workers instead; in a failover kombu can kill a Celery worker, and with nothing to
restart them a failover that kills both never finishes.) 40 cancels are requested at once
at 10/2s (the workers' budget and the sandbox's limit), so the backlog is still draining
when, as soon as the first burst of DELETEs (9: the window's last slot is kept for urgent
work) has reached the sandbox, the primary is SIGKILLed. Measured from the kill (one wall
clock: the bench process, the in-process sandbox's arrival stamps):

a. Sentinel's own promotion: kill → the first `SENTINEL get-master-addr-by-name` (any of
   the three, polled every 5 ms) naming the replica. The anchor: nothing the fleet does can
   resume before it.
b. kill → the first request of any kind the sandbox receives after the kill.
c. kill → the first DELETE after the kill (it also waits for the first burst's window).

(b) - (a) is the fleet's own resumption time, (b) ÷ (a) the ratio. Checked at the end:
every order final and equal to the sandbox's truth, one DELETE per order (the sandbox's
per-order counters), no 429 on any endpoint; and, from the logs, which Celery workers died
and were restarted.

Why a process per failover (`python -m benchmarks.failover INDEX`): the service reads
REDIS_URL once, at import, and every layout has ports of its own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from benchmarks import fmt
from benchmarks.common import (
    WORKER_READY_TIMEOUT_S,
    ArrivalProbe,
    BenchError,
    Processes,
    apply_env,
    child_pids,
    exit_on_sigterm,
    percentile,
    quiet_logging,
    say,
    service_env,
    wait_until,
)
from benchmarks.report import DETAIL_HEADERS, Axes, Figures, Goal, Report, Results, Table
from tests.redis_server import free_ports
from tests.support import place_orders
from worker.sandbox import SandboxConfig, SandboxHandle, generate_keypair, run_sandbox
from worker.stack import SentinelLayout

CANCEL_RATE = "10/2s"  # workers and sandbox: a window short enough not to dominate
CANCEL_LIMIT, CANCEL_PERIOD_MS = 10, 2000
STATUS_RATE = "20/2s"
LIST_RATE = "20/2s"  # Open and Closed Orders, each
CANCEL_ALL_RATE = "10/2s"
CONFIRM_DELAY_MS = 200
FIRST_BURST = CANCEL_LIMIT - 1  # the scheduler keeps a window's last slot for urgent work
HOSTS = 2  # `cancel-worker worker` processes, each a supervisor of two Celery workers
WORKER_COMMAND = (sys.executable, "-m", "worker.cli", "worker")  # cancels -c 4, polls -c 8
CELERY_WORKERS = 2 * HOSTS
HOST_STOP_TIMEOUT_S = 25.0  # a supervisor stops its Celery workers (15 s grace) first
SENTINEL_POLL_S = 0.005
READY_TIMEOUT_S = 40.0  # the replica linked, each Sentinel seeing the others and the replica
BURST_TIMEOUT_S = 30.0
PROMOTION_TIMEOUT_S = 30.0
FINAL_TIMEOUT_S = 90.0
PROCESS_TIMEOUT_S = 240.0  # one failover's process, start to finish
RUN_STOP_TIMEOUT_S = 40.0  # a failover told to stop stops its workers (15 s each) first
#: Sentinel log lines: "<pid>:X 03 Dec 2026 13:26:13.123 # +odown master mymaster ..."
SENTINEL_EVENT_RE = re.compile(
    r"^\d+:X (\d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2}\.\d{3}) . "
    r"(?:(\+sdown|\+odown) master|(\+switch-master)) "
)
SENTINEL_EVENTS = ("+sdown", "+odown", "+switch-master")


@dataclass(frozen=True)
class Sizes:
    """How many failovers, and how many cancels each requests."""

    failovers: int
    orders: int


FULL = Sizes(failovers=5, orders=40)
SMOKE = Sizes(failovers=1, orders=20)


def run(*, smoke: bool, work_dir: Path) -> dict[str, Any]:
    """Run each failover in a process of its own; the figures."""
    sizes = SMOKE if smoke else FULL
    procs = Processes(work_dir)
    runs: list[dict[str, Any]] = []
    try:
        for index in range(sizes.failovers):
            runs.append(_run_process(procs, index, smoke=smoke, work_dir=work_dir))
    finally:
        procs.stop_all()
    return summarise(runs, sizes)


def _run_process(procs: Processes, index: int, *, smoke: bool, work_dir: Path) -> dict[str, Any]:
    out = work_dir / f"failover{index}.json"
    run_dir = work_dir / f"failover{index}"
    run_dir.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable, "-m", "benchmarks.failover", str(index),
        "--out", str(out), "--log-dir", str(run_dir),
    ]  # fmt: skip
    if smoke:
        args.append("--smoke")
    say(f"failover: {index + 1}, a fresh layout")
    name = f"failover{index}"
    proc = procs.start(name, args, os.environ, stop_timeout_s=RUN_STOP_TIMEOUT_S)
    wait_until(lambda: proc.poll() is not None, PROCESS_TIMEOUT_S, f"failover {index} to end")
    if proc.returncode != 0:
        raise BenchError(f"failover {index} exited with {proc.returncode}:\n{procs.log_tail(name)}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


# ---- one failover, in its own process ----------------------------------------------------


def run_main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmarks.failover INDEX --out FILE --log-dir DIR [--smoke]`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.failover")
    parser.add_argument("index", type=int)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--log-dir", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    quiet_logging()
    exit_on_sigterm()
    result = measure(SMOKE if args.smoke else FULL, args.log_dir)
    args.out.write_text(json.dumps(result))
    return 0


class PromotionWatch:
    """Asks each Sentinel for the primary every few ms; notes when each first names the
    replica (wall clock, s)."""

    def __init__(self, layout: SentinelLayout) -> None:
        self.layout = layout
        self.named: list[float | None] = [None] * len(layout.sentinel_ports)
        self._clients = [
            redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
            for port in layout.sentinel_ports
        ]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="sentinel-watch", daemon=True)

    def start(self) -> None:
        """Start polling (before the kill: until then each names the primary)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling; close the clients."""
        self._stop.set()
        self._thread.join(5)
        for client in self._clients:
            client.close()

    def first(self) -> float | None:
        """When the first Sentinel named the replica, if one has."""
        return min((t for t in self.named if t is not None), default=None)

    def _poll(self) -> None:
        master, replica = self.layout.master_name, self.layout.replica_port
        while not self._stop.is_set() and None in self.named:
            for i, client in enumerate(self._clients):
                if self.named[i] is not None:
                    continue
                try:
                    addr = client.execute_command("SENTINEL", "get-master-addr-by-name", master)
                except redis.RedisError:
                    continue
                if addr and int(addr[1]) == replica:
                    self.named[i] = time.time()
            self._stop.wait(SENTINEL_POLL_S)


def _sentinel(layout: SentinelLayout, index: int, *args: str) -> Any:
    client = redis.Redis(port=layout.sentinel_ports[index], decode_responses=True)
    try:
        return client.execute_command("SENTINEL", *args)
    finally:
        client.close()


def _layout_ready(layout: SentinelLayout) -> bool:
    """The replica's link is up and each Sentinel sees the two others and the replica."""
    try:
        link = redis.Redis(port=layout.replica_port, decode_responses=True).info("replication")
        watched = [_sentinel(layout, i, "master", layout.master_name) for i in range(3)]
    except redis.RedisError:
        return False
    views = [dict(zip(w[::2], w[1::2], strict=True)) for w in watched]
    return link.get("master_link_status") == "up" and all(
        int(v["num-other-sentinels"]) >= 2 and int(v["num-slaves"]) >= 1 for v in views
    )


def measure(sizes: Sizes, log_dir: Path) -> dict[str, Any]:
    """Start the layout, the sandbox and the fleet; kill the primary mid-work; the figures."""
    ports = free_ports(5)
    layout = SentinelLayout(ports[0], ports[1], (ports[2], ports[3], ports[4]))
    api_key, secret_key = generate_keypair()
    config = SandboxConfig(
        cancel_limit=CANCEL_RATE,
        status_limit=STATUS_RATE,
        list_limit=LIST_RATE,
        cancel_all_limit=CANCEL_ALL_RATE,
        confirm_delay_ms=CONFIRM_DELAY_MS,
    )
    procs = Processes(log_dir)
    with ExitStack() as stack:
        stack.callback(procs.stop_all)  # workers (started last) first, then the servers
        for name, command in layout.commands(log_dir / "ha").items():
            procs.start(name, command, os.environ)
        started = time.monotonic()
        wait_until(lambda: _layout_ready(layout), READY_TIMEOUT_S, "the replica and Sentinels")
        ready_s = time.monotonic() - started
        sandbox = stack.enter_context(run_sandbox(config, api_keys=[api_key]))
        env = service_env(
            redis_url=layout.redis_url,
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
        from worker.services import get_services

        names = [f"host{i}" for i in range(HOSTS)]
        worker_env = {**os.environ, **env}
        for name in names:
            procs.start(name, WORKER_COMMAND, worker_env, stop_timeout_s=HOST_STOP_TIMEOUT_S)
        _wait_answering(app, procs, CELERY_WORKERS)
        services = get_services()
        wait_until(
            lambda: services.redis.hexists(services.keys.accounts, "default"),
            READY_TIMEOUT_S,
            "the workers' dispatchers to register the account",
        )
        watch = PromotionWatch(layout)
        stack.callback(watch.stop)
        figures = _kill_mid_work(procs, sandbox, layout, watch, sizes.orders)
        alive = sum(procs.procs[name].poll() is None for name in names)
        running = sum(len(child_pids(procs.procs[name].pid)) for name in names)
    return {
        **figures,
        "ready_s": ready_s,
        "hosts": HOSTS,
        "hosts_alive": alive,
        "workers": CELERY_WORKERS,
        "workers_running": running,
        "sentinel": _sentinel_events(log_dir, figures["killed_at"]),
        "fleet": _worker_events(log_dir, names, figures["killed_at"]),
    }


def _answering(app: Any) -> int:
    """How many Celery workers answer a ping now."""
    try:
        return len(app.control.ping(timeout=1.0) or [])
    except Exception:  # the broker unreachable: nobody answers
        return 0


def _wait_answering(app: Any, procs: Processes, count: int) -> None:
    """Until `count` Celery workers answer a ping; BenchError if a host exits or it takes long."""
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    while _answering(app) < count:
        for name, proc in procs.procs.items():
            if proc.poll() is not None:
                raise BenchError(f"{name} exited with {proc.returncode}:\n{procs.log_tail(name)}")
        if time.monotonic() > deadline:
            raise BenchError(
                f"{count} Celery workers not answering after {WORKER_READY_TIMEOUT_S}s"
            )


def _kill_mid_work(
    procs: Processes,
    sandbox: SandboxHandle,
    layout: SentinelLayout,
    watch: PromotionWatch,
    orders: int,
) -> dict[str, Any]:
    """Request the cancels, kill the primary after the first burst, wait for every final."""
    from worker.producer import request_cancels

    probe = ArrivalProbe(sandbox, clock=time.time)
    order_ids = place_orders(sandbox.admin, orders)
    requested = time.time()
    request_cancels(order_ids)  # acknowledged only once a replica has it
    probe.wait_for("cancel", FIRST_BURST, BURST_TIMEOUT_S)
    watch.start()
    killed = time.time()
    primary = procs.procs["primary"]
    primary.send_signal(signal.SIGKILL)
    primary.wait(timeout=10)
    wait_until(watch.first, PROMOTION_TIMEOUT_S, "a Sentinel to name the replica")
    promoted = watch.first()
    assert promoted is not None
    records = wait_until(lambda: _all_final(order_ids), FINAL_TIMEOUT_S, "every order final")
    watch.stop()

    arrivals = {name: sorted(times) for name, times in probe.times.items()}
    before = {name: sum(at <= killed for at in times) for name, times in arrivals.items()}
    after = sorted((at, name) for name, times in arrivals.items() for at in times if at > killed)
    deletes = [at for at in arrivals.get("cancel", []) if at > killed]
    if not after or not deletes:
        raise BenchError("no request reached the sandbox after the kill")
    first_delete = min(arrivals["cancel"])
    truth = {i: sandbox.admin.order(i) for i in order_ids}
    states = {r.order_id: r.state.value for r in records}
    endpoints = sandbox.admin.stats()["endpoints"]

    def ms(at: float) -> float:
        return (at - killed) * 1000

    return {
        "orders": orders,
        "killed_at": killed,
        "requested_ms": ms(requested),
        "deletes_before_kill": before.get("cancel", 0),
        "requests_before_kill": sum(before.values()),
        "promotion_ms": ms(promoted),
        "promotion_each_ms": [None if t is None else ms(t) for t in watch.named],
        "first_request_ms": ms(after[0][0]),
        "first_request_endpoint": after[0][1],
        "first_delete_ms": ms(deletes[0]),
        "last_delete_ms": ms(deletes[-1]),
        "window_frees_ms": ms(first_delete) + CANCEL_PERIOD_MS,
        "after_kill": [[round(ms(at), 1), name] for at, name in after[:12]],
        "arrivals_ms": {n: [round(ms(at), 1) for at in times] for n, times in arrivals.items()},
        "last_final_ms": max(ms(int(r.final_at) / 1000) for r in records if r.final_at),
        "match_truth": sum(states.get(i) == t["order"]["status"] for i, t in truth.items()),
        "final_states": dict(Counter(states.values())),
        "deletes_per_order": dict(Counter(str(t["cancel_requests"]) for t in truth.values())),
        "accepted_per_order": dict(Counter(str(t["cancel_accepted"]) for t in truth.values())),
        "calls": {name: int(e["requests"]) for name, e in endpoints.items()},
        "rate_limited": {name: int(e["rate_limited"]) for name, e in endpoints.items()},
    }


def _all_final(order_ids: list[str]) -> list[Any] | None:
    """Every record, once each is final; None before (or while Redis is unreachable)."""
    from worker.producer import get_records

    try:
        records = get_records(order_ids)
    except redis.RedisError:
        return None  # between the primary's loss and the promotion
    return records if all(r is not None and r.is_final for r in records) else None


def _sentinel_events(log_dir: Path, killed_at: float) -> dict[str, float | None]:
    """The first +sdown, +odown and +switch-master any Sentinel logged, in ms after the kill
    (its log stamps are local time, whole ms)."""
    first: dict[str, float | None] = dict.fromkeys(SENTINEL_EVENTS)
    for path in sorted(log_dir.glob("sentinel*.log")):
        for line in path.read_text(errors="replace").splitlines():
            found = SENTINEL_EVENT_RE.match(line)
            if not found:
                continue
            at = datetime.strptime(found[1], "%d %b %Y %H:%M:%S.%f").timestamp()
            delay = (at - killed_at) * 1000
            if delay < 0:
                continue
            event = found[2] or found[3]
            seen = first[event]
            first[event] = delay if seen is None else min(seen, delay)
    return first


def _worker_events(log_dir: Path, names: Sequence[str], killed_at: float) -> dict[str, Any]:
    """From the hosts' JSON logs (a supervisor's and its Celery workers'): when a dispatcher
    first noted the new primary (ms after the kill), how many turns were held for want of a
    replica, which Celery workers died and when the supervisors restarted them."""
    noted: list[float] = []
    holds = 0
    deaths: list[str] = []
    restarts: list[float] = []
    exited: list[str] = []  # which Celery worker of its host each was: cancels or polls
    for name in names:
        path = log_dir / f"{name}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if not isinstance(entry, dict) or "timestamp" not in entry:
                continue
            at = datetime.fromisoformat(str(entry["timestamp"])).timestamp()
            if at < killed_at:
                continue
            event = str(entry.get("event", ""))
            if event == "dispatcher.new_primary":
                noted.append((at - killed_at) * 1000)
            elif event == "budget.replica_unconfirmed":
                holds += 1
            elif event.startswith("Unrecoverable error"):
                deaths.append(f"{name}: {event}")
            elif event == "stack.restarted":
                restarts.append((at - killed_at) * 1000)
            elif event == "stack.child_exited":
                exited.append(str(entry.get("child", "?")))
    return {
        "new_primary_ms": min(noted, default=None),
        "replica_holds": holds,
        "deaths": deaths,
        "restarts_ms": sorted(restarts),
        "exited": sorted(exited),
    }


# ---- the figures -------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def summarise(runs: list[dict[str, Any]], sizes: Sizes) -> dict[str, Any]:
    """Each failover's figures; medians and maxima over them; the checks, all together."""
    promotion = [r["promotion_ms"] for r in runs]
    first = [r["first_request_ms"] for r in runs]
    resumption = [b - a for a, b in zip(promotion, first, strict=True)]
    ratio = [b / a for a, b in zip(promotion, first, strict=True)]
    delete = [r["first_delete_ms"] for r in runs]
    noticed = [r["fleet"]["new_primary_ms"] for r in runs if r["fleet"]["new_primary_ms"]]
    orders = sum(r["orders"] for r in runs)
    once = sum(int(r["deletes_per_order"].get("1", 0)) for r in runs)  # exactly one DELETE
    accepted_once = sum(int(r["accepted_per_order"].get("1", 0)) for r in runs)

    def stat(values: list[float]) -> dict[str, float]:
        return {
            "median": _median(values),
            "max": max(values, default=math.nan),
            "min": min(values, default=math.nan),
        }

    return {
        "failovers": sizes.failovers,
        "orders_each": sizes.orders,
        "limits": {
            "cancel": CANCEL_RATE,
            "status": STATUS_RATE,
            "list": LIST_RATE,
            "cancel_all": CANCEL_ALL_RATE,
        },
        "confirm_delay_ms": CONFIRM_DELAY_MS,
        "first_burst": FIRST_BURST,
        "hosts": HOSTS,
        "workers_each": CELERY_WORKERS,
        "down_after_ms": SentinelLayout(0, 0, (0, 0, 0)).down_after_ms,
        "failover_timeout_ms": SentinelLayout(0, 0, (0, 0, 0)).failover_timeout_ms,
        "sentinel_poll_ms": SENTINEL_POLL_S * 1000,
        "runs": runs,
        "promotion_ms": stat(promotion),
        "first_request_ms": stat(first),
        "resumption_ms": stat(resumption),
        "ratio": stat(ratio),
        "first_delete_ms": stat(delete),
        "last_delete_ms": stat([r["last_delete_ms"] for r in runs]),
        "last_final_ms": stat([r["last_final_ms"] for r in runs]),
        "new_primary_ms": stat(noticed),
        "replica_holds": sum(r["fleet"]["replica_holds"] for r in runs),
        "worker_deaths": sum(len(r["fleet"]["deaths"]) for r in runs),
        "orders": orders,
        "match_truth": sum(r["match_truth"] for r in runs),
        "one_delete": once,
        "one_accepted": accepted_once,
        "rate_limited": sum(sum(r["rate_limited"].values()) for r in runs),
        "workers_running": sum(r["workers_running"] for r in runs),
        "workers_started": CELERY_WORKERS * len(runs),
        "restarts": sum(len(r["fleet"]["restarts_ms"]) for r in runs),
    }


# ---- its part of the report: goal (9), the (9) section and its plot ------------------------

METHOD = (
    "- Failover (9): each failover in a process of its own (`python -m benchmarks.failover "
    "INDEX`: the service reads REDIS_URL once, and every layout has ports of its own) with "
    "five redis-servers (`SentinelLayout.commands`), started and waited for as "
    "tests/test_failover.py does (the replica's link up, each Sentinel seeing 2 others and "
    "a replica), and two `cancel-worker worker` processes, ready once 4 Celery workers "
    "answer a ping and the account is registered. The fleet runs under the product's own "
    "supervisor, as in production (tests/test_failover.py starts bare Celery workers); any "
    "Celery worker that exits is counted and shown under (9). "
    "The kill is SIGKILL on the primary's process, stamped just before the "
    "signal; Sentinels are polled from a thread started just before it. Arrival stamps as "
    "in (8). The Sentinel events (`+sdown`, `+odown`, `+switch-master`) are read from the "
    "Sentinels' logs (local time, whole ms); `dispatcher.new_primary`, "
    "`budget.replica_unconfirmed`, `Unrecoverable error` and `stack.restarted` from the "
    "hosts' JSON logs. "
    "Medians over the failovers; a ratio (b) ÷ (a) is taken per failover, then its median.",
)


def _failover_ok(fo: Figures) -> bool:
    """Every cancel carried out once and recorded as the exchange has it, with no 429."""
    orders = int(fo["orders"])
    return (
        int(fo["match_truth"]) == orders
        and int(fo["one_delete"]) == orders
        and int(fo["one_accepted"]) == orders
        and int(fo["rate_limited"]) == 0
    )


def _goals(fo: Figures, results: Results) -> list[Goal]:
    """(9): the failovers' outcome; their median time beside Sentinel's own promotion."""
    a, b = fo["promotion_ms"]["median"], fo["first_request_ms"]["median"]
    n = fo["failovers"]
    return [
        Goal(
            f"(9) losing the Redis primary ({n} failover{'s' if n != 1 else ''}, median)",
            f"kill → first request {fmt.ms_as_seconds(b)}, the fleet's own "
            f"{fmt.ms_as_seconds(fo['resumption_ms']['median'])} after the promotion; "
            f"{fo['match_truth']}/{fo['orders']} records = exchange, "
            f"{fo['one_delete']}/{fo['orders']} with one DELETE, {fo['rate_limited']} 429s; "
            f"Celery workers died {fo['worker_deaths']} of {fo['workers_started']} (restarted "
            "by `cancel-worker worker`)",
            f"Sentinel's promotion (kill → replica named) {fmt.ms_as_seconds(a)}",
            fo["ratio"]["median"],
            "every record = exchange, one DELETE each, 0 429s (no time bound set)",
            _failover_ok(fo),
        )
    ]


FAILOVER_HEADERS = [
    "failover",
    "(a) Sentinel names the replica",
    "(b) first request (kind)",
    "(b) - (a): the fleet's own",
    "(b) ÷ (a)",
    "a dispatcher notes the new primary",
    "(c) first DELETE",
    "first burst's window frees",
    "last DELETE",
    "last final record",
    "records = exchange",
    "orders with 1 DELETE",
    "429s",
    "Celery workers died / restarted / running at the end",
]


def _failover_rows(fo: Figures) -> list[list[str]]:
    """(9): each failover, times from the kill; then the medians."""
    rows = []
    for i, r in enumerate(fo["runs"], 1):
        a, b = r["promotion_ms"], r["first_request_ms"]
        rows.append(
            [
                str(i),
                fmt.ms_as_seconds(a),
                f"{fmt.ms_as_seconds(b)} ({r['first_request_endpoint']})",
                fmt.ms_as_seconds(b - a),
                fmt.ratio(b / a),
                fmt.ms_as_seconds(r["fleet"]["new_primary_ms"]),
                fmt.ms_as_seconds(r["first_delete_ms"]),
                fmt.ms_as_seconds(r["window_frees_ms"]),
                fmt.ms_as_seconds(r["last_delete_ms"]),
                fmt.ms_as_seconds(r["last_final_ms"]),
                f"{r['match_truth']}/{r['orders']}",
                f"{int(r['deletes_per_order'].get('1', 0))}/{r['orders']}",
                str(sum(r["rate_limited"].values())),
                f"{len(r['fleet']['deaths'])} / {len(r['fleet']['restarts_ms'])} / "
                f"{r['workers_running']} of {r['workers']}",
            ]
        )
    rows.append(
        [
            "median",
            fmt.ms_as_seconds(fo["promotion_ms"]["median"]),
            fmt.ms_as_seconds(fo["first_request_ms"]["median"]),
            fmt.ms_as_seconds(fo["resumption_ms"]["median"]),
            fmt.ratio(fo["ratio"]["median"]),
            fmt.ms_as_seconds(fo["new_primary_ms"]["median"]),
            fmt.ms_as_seconds(fo["first_delete_ms"]["median"]),
            "",
            fmt.ms_as_seconds(fo["last_delete_ms"]["median"]),
            fmt.ms_as_seconds(fo["last_final_ms"]["median"]),
            f"{fo['match_truth']}/{fo['orders']} (all)",
            f"{fo['one_delete']}/{fo['orders']} (all)",
            f"{fo['rate_limited']} (all)",
            f"{fo['worker_deaths']} / {fo['restarts']} / {fo['workers_running']} of "
            f"{fo['workers_started']} (all)",
        ]
    )
    return rows


def _detail_rows(fo: Figures) -> list[list[str]]:
    """Benchmark 9 as (section, measure, value) rows, for the terminal."""
    names = FAILOVER_HEADERS[1:]
    return [
        ["(9) failover", f"#{row[0]}",
         "; ".join(f"{h} {v}" for h, v in zip(names, row[1:], strict=True))]
        for row in _failover_rows(fo)
    ]  # fmt: skip


def _section(fo: Figures, results: Results) -> list[str]:
    """(9): Sentinel's promotion, the fleet's resumption, and what the kill cost."""
    limits = fo["limits"]
    return [
        "## (9) Losing the Redis primary (Sentinel)",
        "",
        f"Each failover ({fo['failovers']} here): a fresh "
        "`worker.stack.SentinelLayout` (a primary, a replica and three Sentinels on "
        f"loopback, AOF, quorum 2, `down-after-milliseconds` {fo['down_after_ms']}, "
        f"`failover-timeout` {fo['failover_timeout_ms']}), a fresh sandbox and a fleet "
        f"of {fo['hosts']} hosts, i.e. {fo['hosts']} `cancel-worker worker` processes (each "
        "the supervisor of a cancels -c 4 and a polls -c 8 Celery worker, restarting one "
        "that dies, as in production), "
        f"with REDIS_URL naming the Sentinels; budgets {limits['cancel']} DELETE and "
        f"{limits['status']} status and lists, on the workers and the sandbox, so the DELETE "
        f"window does not dominate. {fo['orders_each']} cancels requested at once "
        "(`request_cancels`, acknowledged once a replica has them); as soon as the first "
        f"{fo['first_burst']} DELETEs (the first burst) reached the sandbox, the primary was "
        "SIGKILLed. Times from the kill, on one wall clock: (a) Sentinel's own promotion, "
        "the first `SENTINEL get-master-addr-by-name` (each Sentinel asked every "
        f"{fo['sentinel_poll_ms']:g} ms) that names the replica: the anchor; (b) the first "
        "request of any kind the sandbox receives; (c) the first DELETE, which also waits "
        "for the first burst's window (its first DELETE + 2 s, shown beside it). (b) - (a) "
        "is the fleet's own resumption time. Records = exchange and DELETEs per order are "
        "checked once every order is final (the sandbox's per-order counters).",
        "",
        fmt.md_table(FAILOVER_HEADERS, _failover_rows(fo)),
        "",
        *_notes(fo),
        "",
    ]


def _notes(fo: Figures) -> list[str]:
    """What the logs say about where the time went, in words that follow this run."""
    runs = fo["runs"]
    notes = []
    events = {
        name: [r["sentinel"][name] for r in runs if r["sentinel"].get(name) is not None]
        for name in ("+sdown", "+odown", "+switch-master")
    }
    if all(events.values()):
        switched = percentile(events["+switch-master"], 50)
        early = fo["promotion_ms"]["median"] < switched
        notes.append(
            "- Sentinel (the first of the three to log each, median over the failovers): "
            + ", ".join(
                f"`{name}` {fmt.ms_as_seconds(percentile(v, 50))}" for name, v in events.items()
            )
            + f" after the kill, with `down-after-milliseconds` {fo['down_after_ms']}"
            + (
                "; (a) comes before `+switch-master`: while its failover is under way, the "
                "leading Sentinel already names the replica it promoted."
                if early
                else "."
            )
        )
    noticed = fo["new_primary_ms"]["median"]
    if not math.isnan(noticed):
        notes.append(
            "- The fleet: a dispatcher logged `dispatcher.new_primary` "
            f"{fmt.ms_as_seconds(noticed)} after the kill, "
            f"{fmt.ms_as_seconds(noticed - fo['promotion_ms']['median'])} after the promotion "
            "(medians); a dispatcher whose Redis call failed tries again after 1 s "
            "(worker/dispatcher.py `ERROR_PAUSE_S`)."
        )
    if fo["replica_holds"]:
        notes.append(
            f"- {fo['replica_holds']} turns (over all failovers) logged "
            "`budget.replica_unconfirmed`: after the promotion no replica is left (the old "
            "primary is dead), yet a turn's send time waited for `WAIT 1` "
            "(`CANCEL_WORKER_REPLICA_WAIT_MS`, 500 ms) and, unconfirmed, held its budget for "
            "`REPLICA_HOLD_MS` (1 s) with the slot spent and nothing sent; the replica count "
            "the check relies on is cached (worker/connection.py `REPLICAS_CACHE_S`), so it "
            "still counted the old primary's replica."
        )
    deaths = [d for r in runs for d in r["fleet"]["deaths"]]
    if deaths:
        kinds = sorted({d.split(": ", 1)[1] for d in deaths})
        restarts = [at for r in runs for at in r["fleet"]["restarts_ms"]]
        exited = Counter(name for r in runs for name in r["fleet"].get("exited", []))
        which = ", ".join(f"{n} {name}" for name, n in sorted(exited.items()))
        notes.append(
            f"- {len(deaths)} of the {fo['workers_started']} Celery workers exited during the "
            "failovers"
            + (f" ({which}, by their supervisors' logs)" if which else "")
            + f" with {'; '.join(f'`{k}`' for k in kinds)}, raised in kombu's Redis "
            "transport while closing the lost broker connection. Their `cancel-worker "
            f"worker` supervisors restarted {len(restarts)}"
            + (f", the first {fmt.ms_as_seconds(min(restarts))} after the kill" if restarts else "")
            + ". A message a dead worker held comes back only after the visibility timeout "
            "(`CANCEL_WORKER_VISIBILITY_TIMEOUT_S`, 30 s): an order whose DELETE was under way "
            "on it at the kill is confirmed only then, hence a last final record about 30 s "
            "after the kill in the failovers where that happened."
        )
    return notes


def _plot(ax: Axes, fo: Figures) -> None:
    """Each failover's requests at the sandbox on a time line from the kill."""
    for i, r in enumerate(fo["runs"], 1):
        arrivals = r["arrivals_ms"]
        deletes = [at / 1000 for at in arrivals.get("cancel", [])]
        others = [at / 1000 for name, ats in arrivals.items() if name != "cancel" for at in ats]
        first = i == 1
        ax.plot(deletes, [i] * len(deletes), "|", color="tab:blue", markersize=10,
                label="DELETE at the sandbox" if first else None)  # fmt: skip
        ax.plot(others, [i - 0.2] * len(others), ".", color="tab:gray",
                label="status / list request" if first else None)  # fmt: skip
        ax.plot([r["promotion_ms"] / 1000], [i], "v", color="tab:red", markersize=9,
                label="(a) Sentinel names the replica" if first else None)  # fmt: skip
        ax.plot([r["first_request_ms"] / 1000], [i + 0.2], "^", color="tab:green", markersize=9,
                label="(b) first request after the kill" if first else None)  # fmt: skip
        noticed = r["fleet"]["new_primary_ms"]
        if noticed is not None:
            ax.plot([noticed / 1000], [i + 0.2], "x", color="tab:purple", markersize=9,
                    label="a dispatcher notes the new primary" if first else None)  # fmt: skip
    ax.axvline(0, color="black", linestyle="--", label="the primary SIGKILLed")
    ax.set_xlim(-1, max(10.0, max(r["last_delete_ms"] for r in fo["runs"]) / 1000 + 1))
    ax.set_yticks(range(1, len(fo["runs"]) + 1))
    ax.set_ylim(0.3, len(fo["runs"]) + 0.7)
    ax.set_ylabel("failover")
    ax.set_xlabel("seconds since the kill (later status reads off the right edge)")
    ax.set_title(f"(9) requests at the sandbox around the loss of the Redis primary, "
                 f"{fo['orders_each']} cancels at {fo['limits']['cancel']}")  # fmt: skip


def _tables(fo: Figures, results: Results) -> list[Table]:
    return [(DETAIL_HEADERS, _detail_rows(fo))]


REPORT = Report(
    goals=_goals,
    section=_section,
    tables=_tables,
    panels=(_plot,),  # its y axis is the failover's number, not a count: no set_ylim(0)
    goals_note="(9) is what tests/test_failover.py asserts of a lost primary (every cancel "
    "carried out once, no 429), with its times beside Sentinel's own",
    method=METHOD,
)


if __name__ == "__main__":
    raise SystemExit(run_main())
