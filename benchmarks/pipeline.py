"""Benchmarks 2, 3 and 5 on one `cancel-worker worker` (its two Celery workers, defaults).

2. Added latency, enqueue → DELETE arriving at the sandbox, budget free (cancels 1000/1s),
   sequential; beside a direct signed `requests` DELETE to the same sandbox.
3. Time to final, enqueue → final record, sandbox confirm delay 200 ms, status budget
   20/2s: one order alone (repeated), and 30 orders at once sharing the status budget.
5. Worker footprint: VmRSS of each of the two Celery workers, idle and after 2 and 3.

Its part of the report (`REPORT`, at the end) has goals (2) and (3), and the (2)-(5) section,
whose table also holds the producer benchmark's rows (benchmarks.throughput).
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

from benchmarks import fmt, throughput
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


# ---- its part of the report: goals (2) and (3), the (2)-(5) section, the status plot -------

LATENCY_GOAL_MS = 10.0  # p50 enqueue → DELETE arrival
FINAL_SLACK_MS = 1000.0  # p50 to final ≤ confirm delay + this, one order alone
WORKER_THREADS = (("cancels", 4), ("polls", 8))  # `cancel-worker worker`'s -c per queue
KIB_PER_MIB = 1024
METHOD = (
    "- Latency: `request_cancel` → the sandbox handler receiving the DELETE, timed with "
    "`perf_counter` in the same process, budget free (cancels 1000/1s), one cancel at a "
    "time after 5 unmeasured warm-ups, with `cancel-worker worker` (cancels -c 4, polls "
    "-c 8) at INFO logging. The path: the request joins the line (one Lua call, which "
    "leaves a wake token), a dispatcher takes the token, releases the turn and publishes "
    "the task, a cancels worker runs it and commits its send time just before the "
    "DELETE. The direct call is a signed `requests` DELETE from the bench process to the "
    "same sandbox.",
    "- Time to final: `request_cancel` → the record's `final_at`. The sandbox confirms a "
    "cancel 200 ms after accepting it; the worker's first poll comes "
    "`CANCEL_WORKER_POLL_INITIAL_DELAY_S` (default 0.5 s) after the DELETE, which sets "
    "the floor. The 30-order burst shares the 20/2s status budget. Each run starts once "
    "the previous one's sends have left every budget's window.",
    "- Footprint: VmRSS from /proc of the two Celery workers `cancel-worker worker` "
    "starts, idle after start-up and again after benchmarks 2 and 3.",
)


def _goals(pipeline: Figures, results: Results) -> list[Goal]:
    """(2) added latency and (3) time to final, each a p50 against its bound."""
    latency = pipeline["latency"]
    p50 = latency["service_p50_ms"]
    final = pipeline["to_final"]
    anchor = final["confirm_delay_ms"] + FINAL_SLACK_MS
    single_p50 = final["single_p50_ms"]
    return [
        Goal(
            "(2) added latency p50",
            f"{p50:.1f} ms enqueue → DELETE",
            f"{LATENCY_GOAL_MS:g} ms",
            p50 / LATENCY_GOAL_MS,
            "≤ 1",
            p50 <= LATENCY_GOAL_MS,
        ),
        Goal(
            "(3) time to final p50, one order",
            f"{single_p50:.0f} ms",
            f"confirm {final['confirm_delay_ms']} ms + 1 s",
            single_p50 / anchor,
            "≤ 1",
            single_p50 <= anchor,
        ),
    ]


def _detail_rows(pipeline: Figures, results: Results) -> list[list[str]]:
    """(2)-(5) as (benchmark, measure, value), with the producer's rows (4) in goal order."""
    lat = pipeline["latency"]
    n = lat["count"]
    rows = [
        ["(2) latency", f"cancel-worker enqueue → DELETE p50 / p99 (n={n})",
         f"{fmt.ms(lat['service_p50_ms'])} / {fmt.ms(lat['service_p99_ms'])}"],
        ["(2) latency", f"direct requests DELETE → arrival p50 / p99 (n={n})",
         f"{fmt.ms(lat['direct_p50_ms'])} / {fmt.ms(lat['direct_p99_ms'])}"],
        ["(2) latency", "cancel-worker minus direct, p50",
         fmt.ms(lat["service_p50_ms"] - lat["direct_p50_ms"])],
    ]  # fmt: skip
    fin = pipeline["to_final"]
    rows += [
        ["(3) to final", "sandbox confirm delay / first poll after",
         f"{fin['confirm_delay_ms']} ms / {fin['poll_initial_delay_s'] * 1000:.0f} ms"],
        ["(3) to final", f"one order alone p50 / max (n={fin['single_count']})",
         f"{fmt.ms(fin['single_p50_ms'])} / {fmt.ms(fin['single_max_ms'])}"],
        ["(3) to final", f"{fin['burst_count']} at once p50 / p99 / max",
         f"{fmt.ms(fin['burst_p50_ms'])} / {fmt.ms(fin['burst_p99_ms'])} / "
         f"{fmt.ms(fin['burst_max_ms'])}"],
        ["(3) to final", f"{fin['burst_count']} at once: status polls, 429s, window max",
         f"{fin['status_polls']}, {fin['status_rate_limited']}, "
         f"{fin['status_strict_window_max']} (limit {fin['status_limit']}/"
         f"{fin['status_period_ms'] / 1000:g}s)"],
    ]  # fmt: skip
    if "producer" in results:
        rows += throughput.detail_rows(results["producer"])
    rows.append(
        ["(4) producer", "MEMORY USAGE of a final (CANCELLED) record key, mean",
         f"{fin['final_record_bytes']:.0f} B"]
    )  # fmt: skip
    fp = pipeline["footprint"]
    for queue, threads in WORKER_THREADS:
        idle, loaded = fp["idle_kb"][queue] / KIB_PER_MIB, fp["loaded_kb"][queue] / KIB_PER_MIB
        rows.append(
            ["(5) footprint", f"{queue} worker RSS (-c {threads}), idle / after load",
             f"{idle:.1f} MiB / {loaded:.1f} MiB"]
        )  # fmt: skip
    return rows


def _tables(pipeline: Figures, results: Results) -> list[Table]:
    return [(DETAIL_HEADERS, _detail_rows(pipeline, results))]


def _section(pipeline: Figures, results: Results) -> list[str]:
    """(2)-(5): one table of issue 7's smaller figures, the producer's (benchmark 4) among them."""
    return [
        "## (2)-(5) Latency, time to final, producer, footprint",
        "",
        fmt.md_table(DETAIL_HEADERS, _detail_rows(pipeline, results)),
        "",
    ]


def _plot(ax: Axes, pipeline: Figures) -> None:
    """(3): the burst's status polls per window against the status limit."""
    fin = pipeline["to_final"]
    window_steps(
        ax, fin["status_arrivals_ms"], fin["status_period_ms"],
        label=f"cancel-worker status polls: max {fin['status_strict_window_max']}",
    )  # fmt: skip
    ax.axhline(fin["status_limit"], color="black", linestyle="--", label="exchange limit")
    ax.set_title(
        f"(3) status GETs in the last {fin['status_period_ms'] / 1000:g} s, "
        f"{fin['burst_count']} orders awaiting confirmation at once"
    )
    ax.set_xlabel("seconds since the request")
    ax.set_ylim(bottom=0)


REPORT = Report(goals=_goals, section=_section, tables=_tables, panels=(_plot,), method=METHOD)
