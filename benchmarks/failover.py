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


if __name__ == "__main__":
    raise SystemExit(run_main())
