"""Benchmarks 2, 3 and 5 on one `cancel-worker worker` (its two Celery workers, defaults).

2. Added latency, enqueue → DELETE arriving at the sandbox, budget free (cancels 1000/1s),
   sequential; beside a direct signed `requests` DELETE to the same sandbox.
3. Time to final, enqueue → final record, sandbox confirm delay 200 ms, status budget
   20/2s: one order alone (repeated), and 30 orders at once sharing the status budget.
5. Worker footprint: VmRSS of each of the two Celery workers, idle and after 2 and 3.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis
import requests

from benchmarks.common import (
    ArrivalProbe,
    BenchError,
    Processes,
    apply_env,
    child_pids,
    cmdline,
    percentile,
    place_orders,
    rss_kb,
    say,
    service_env,
    strict_window_max,
    wait_budgets_idle,
    wait_until,
    wait_workers_ready,
)
from tests.redis_server import redis_server
from worker.exchange import ORDER_PATH
from worker.sandbox import SandboxConfig, SandboxHandle, generate_keypair, run_sandbox
from worker.signing import Signer

CANCEL_RATE = "1000/1s"  # budget free: no cancel ever waits for a slot
STATUS_LIMIT, STATUS_PERIOD_MS = 20, 2000
STATUS_RATE = "20/2s"
IDLE_TIMEOUT_S = 15.0  # for the earlier polls' sends to leave the status window
LOADED_SETTLE_S = 1.0  # after the last run, before the loaded footprint is read
CONFIRM_DELAY_MS = 200
WARMUP = 5  # cancels sent first and not measured (connections, imports, first Lua load)
ARRIVAL_TIMEOUT_S = 10.0
FINAL_TIMEOUT_S = 30.0
BURST = 30
SUPERVISOR_STOP_TIMEOUT_S = 30.0  # `cancel-worker worker` gives its children 15 s


def run(*, smoke: bool, work_dir: Path) -> dict[str, Any]:
    """Start Redis, the sandbox and `cancel-worker worker`; measure 2, 3 and 5."""
    n_latency = 20 if smoke else 200
    n_single = 5 if smoke else 20
    idle_settle_s = 2.0 if smoke else 5.0
    api_key, secret_key = generate_keypair()
    config = SandboxConfig(
        cancel_limit=CANCEL_RATE, status_limit=STATUS_RATE, confirm_delay_ms=CONFIRM_DELAY_MS
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
        )
        apply_env(env)
        from worker.celery_app import app, settings
        from worker.models import DEFAULT_ACCOUNT

        probe = ArrivalProbe(sandbox)
        supervisor = procs.start(
            "cancel-worker-worker",
            [sys.executable, "-m", "worker.cli", "worker"],
            os.environ,
            stop_timeout_s=SUPERVISOR_STOP_TIMEOUT_S,
        )
        children: list[int] = []
        try:
            names = [f"cancels-{supervisor.pid}", f"polls-{supervisor.pid}"]
            wait_workers_ready(app, names, procs)
            children = child_pids(supervisor.pid)
            time.sleep(idle_settle_s)  # a settle, not a condition: start-up allocations end
            rss_idle = _footprint(supervisor.pid)
            say(f"pipeline: latency, {n_latency} sequential cancels")
            service_ms = _service_latency(sandbox, probe, n_latency)
            direct_ms = _direct_latency(sandbox, probe, n_latency, api_key, secret_key)
            say(f"pipeline: time to final, {n_single} alone and {BURST} at once")
            wait_budgets_idle([DEFAULT_ACCOUNT], IDLE_TIMEOUT_S)
            single_ms = _single_to_final(sandbox, n_single)
            wait_budgets_idle([DEFAULT_ACCOUNT], IDLE_TIMEOUT_S)
            burst = _burst_to_final(sandbox, redis_url)
            time.sleep(LOADED_SETTLE_S)  # a settle, not a condition: let RSS reflect the load
            rss_loaded = _footprint(supervisor.pid)
        finally:
            procs.stop_all()
            _kill_leftovers(children)
    return {
        "latency": {
            "count": n_latency,
            "service_ms": service_ms,
            "direct_ms": direct_ms,
            "service_p50_ms": percentile(service_ms, 50),
            "service_p99_ms": percentile(service_ms, 99),
            "direct_p50_ms": percentile(direct_ms, 50),
            "direct_p99_ms": percentile(direct_ms, 99),
        },
        "to_final": {
            "confirm_delay_ms": CONFIRM_DELAY_MS,
            "poll_initial_delay_s": settings.poll_initial_delay_s,
            "single_count": n_single,
            "single_ms": single_ms,
            "single_p50_ms": percentile(single_ms, 50),
            "single_max_ms": max(single_ms),
            **burst,
        },
        "footprint": {"idle_kb": rss_idle, "loaded_kb": rss_loaded},
    }


def _footprint(supervisor_pid: int) -> dict[str, int]:
    """VmRSS (KiB) of each Celery worker `cancel-worker worker` started, by queue."""
    out: dict[str, int] = {}
    for pid in child_pids(supervisor_pid):
        line = cmdline(pid)
        queue = "cancels" if "-Q cancels" in line else "polls" if "-Q polls" in line else None
        if queue is not None:
            out[queue] = rss_kb(pid)
    if set(out) != {"cancels", "polls"}:
        raise BenchError(f"expected a cancels and a polls worker, found {sorted(out)}")
    return out


def _kill_leftovers(pids: list[int]) -> None:
    """If the supervisor was killed before its children, end those children by pid."""
    for pid in pids:
        with contextlib.suppress(OSError):  # gone already: nothing to do
            if "celery" in cmdline(pid):
                say(f"pipeline: worker {pid} outlived its supervisor; killing it")
                os.kill(pid, signal.SIGKILL)


def _service_latency(sandbox: SandboxHandle, probe: ArrivalProbe, count: int) -> list[float]:
    """request_cancel → DELETE arrival (ms) for `count` sequential cancels, after a warm-up."""
    from worker.producer import get_records, request_cancel

    order_ids = place_orders(sandbox, WARMUP + count)
    latencies: list[float] = []
    for i, order_id in enumerate(order_ids):
        seen = probe.count("cancel")
        started = time.perf_counter()
        request_cancel(order_id)
        arrived = probe.wait_for("cancel", seen + 1, ARRIVAL_TIMEOUT_S)
        if i >= WARMUP:
            latencies.append((arrived - started) * 1000)
    # Let their polls finish, so the status budget is free for the time-to-final runs.
    wait_until(
        lambda: all(r is not None and r.is_final for r in get_records(order_ids)),
        FINAL_TIMEOUT_S + len(order_ids) * STATUS_PERIOD_MS / STATUS_LIMIT / 1000,
        "the latency orders to be final",
    )
    return latencies


def _direct_latency(
    sandbox: SandboxHandle, probe: ArrivalProbe, count: int, api_key: str, secret_key: str
) -> list[float]:
    """A signed DELETE with `requests` from this process → its arrival (ms), sequentially."""
    order_ids = place_orders(sandbox, WARMUP + count)
    signer = Signer(api_key, secret_key)
    session = requests.Session()
    latencies: list[float] = []
    try:
        for i, order_id in enumerate(order_ids):
            seen = probe.count("cancel")
            started = time.perf_counter()
            response = session.delete(
                sandbox.url + ORDER_PATH,
                data=json.dumps({"exchange": "EXCHANGE_2", "order_id": order_id}),
                headers=signer.headers("DELETE", ORDER_PATH),
                timeout=ARRIVAL_TIMEOUT_S,
            )
            arrived = probe.wait_for("cancel", seen + 1, ARRIVAL_TIMEOUT_S)
            if response.status_code != 200:
                raise BenchError(f"direct DELETE answered {response.status_code}")
            if i >= WARMUP:
                latencies.append((arrived - started) * 1000)
    finally:
        session.close()
    return latencies


def _single_to_final(sandbox: SandboxHandle, count: int) -> list[float]:
    """request_cancel → final record (ms) for one order at a time."""
    from worker.models import CancelRecord, OrderState
    from worker.producer import get_record, request_cancel

    times: list[float] = []
    for order_id in place_orders(sandbox, count):
        started_ms = time.time() * 1000
        request_cancel(order_id)

        def final_record(oid: str = order_id) -> CancelRecord | None:
            record = get_record(oid)
            return record if record is not None and record.is_final else None

        record = wait_until(final_record, FINAL_TIMEOUT_S, "a final record")
        if record.state is not OrderState.CANCELLED or record.final_at is None:
            raise BenchError(f"order ended {record.state}, not CANCELLED")
        times.append(record.final_at - started_ms)
    return times


def _burst_to_final(sandbox: SandboxHandle, redis_url: str) -> dict[str, Any]:
    """30 orders at once: request_cancels → each final record; status polls and 429s."""
    from worker.keys import Keys
    from worker.models import CancelRecord, OrderState
    from worker.producer import get_records, request_cancels

    order_ids = place_orders(sandbox, BURST)
    status_before = sandbox.admin.stats()["endpoints"]["status"]
    started_ms = time.time() * 1000
    request_cancels(order_ids)

    def final_records() -> list[CancelRecord] | None:
        records = get_records(order_ids)
        done = [r for r in records if r is not None and r.is_final]
        return done if len(done) == len(records) else None

    records = wait_until(final_records, FINAL_TIMEOUT_S, f"{BURST} final records")
    status = sandbox.admin.stats()["endpoints"]["status"]
    polls = sorted(at for at in status["arrivals_ms"] if at >= started_ms)
    times = [r.final_at - started_ms for r in records]
    if any(r.state is not OrderState.CANCELLED for r in records):
        raise BenchError("a burst order did not end CANCELLED")
    client = redis.Redis.from_url(redis_url)
    keys = Keys(os.environ.get("CANCEL_WORKER_NAMESPACE", "cw"))
    sizes = [int(client.memory_usage(keys.record(i), samples=0) or 0) for i in order_ids]
    client.close()
    return {
        "burst_count": BURST,
        "burst_ms": times,
        "burst_p50_ms": percentile(times, 50),
        "burst_p99_ms": percentile(times, 99),
        "burst_max_ms": max(times),
        "status_limit": STATUS_LIMIT,
        "status_period_ms": STATUS_PERIOD_MS,
        "status_polls": len(polls),
        "status_rate_limited": status["rate_limited"] - status_before["rate_limited"],
        "status_strict_window_max": strict_window_max(polls, STATUS_PERIOD_MS),
        "status_arrivals_ms": [int(at - started_ms) for at in polls],
        "final_record_bytes": sum(sizes) / len(sizes),
    }
