"""Benchmarks 3 and 5 on one `cancel-worker worker` (its two Celery workers, defaults).

3. Time to final, enqueue → final record, sandbox confirm delay 200 ms, status budget
   20/2s: one order alone (repeated, after a few unmeasured ones the fleet learns from),
   with the status reads each took; and 30 orders at once sharing the status budget.
5. Worker footprint: VmRSS of each of the two Celery workers, idle and after 3.

(2), the hot path, is benchmarks.hotpath. Its part of the report (`REPORT`, at the end) has
goal (3) and the (3)-(5) section, whose table also holds the producer benchmark's rows
(benchmarks.throughput).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis

from benchmarks import fmt, throughput
from benchmarks.common import (
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
from worker.sandbox import SandboxConfig, SandboxHandle, generate_keypair, run_sandbox

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
            say(f"pipeline: time to final, {n_single} alone and {BURST} at once")
            learned = _single_to_final(sandbox, LEARN_ORDERS)[0]  # what the fleet learns from
            wait_budgets_idle([DEFAULT_ACCOUNT], IDLE_TIMEOUT_S)
            single_ms, single_reads = _single_to_final(sandbox, n_single)
            wait_budgets_idle([DEFAULT_ACCOUNT], IDLE_TIMEOUT_S)
            burst = _burst_to_final(sandbox, redis_url)
            time.sleep(LOADED_SETTLE_S)  # a settle, not a condition: let RSS reflect the load
            rss_loaded = _footprint(supervisor.pid)
        finally:
            procs.stop_all()
            _kill_leftovers(children)
    return {
        "to_final": {
            "learn_count": LEARN_ORDERS,
            "learn_ms": learned,
            "single_reads": single_reads,
            "single_reads_mean": sum(single_reads) / len(single_reads),
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


def _single_to_final(sandbox: SandboxHandle, count: int) -> tuple[list[float], list[int]]:
    """request_cancel → final record (ms) for one order at a time, and the status reads
    (GETs at the sandbox) each took."""
    from worker.models import CancelRecord, OrderState
    from worker.producer import get_record, request_cancel

    times: list[float] = []
    reads: list[int] = []
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
        reads.append(int(sandbox.admin.order(order_id)["status_requests"]))
    return times, reads


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

FINAL_SLACK_MS = 150.0  # p50 to final ≤ confirm delay + this, one order alone
READS_BEFORE = 1.0  # status reads per order with the fixed 0.5 s first read (confirm 200 ms)
LEARN_ORDERS = 5  # orders the fleet learns the confirm time from before the measured ones
WORKER_THREADS = (("cancels", 4), ("polls", 8))  # `cancel-worker worker`'s -c per queue
KIB_PER_MIB = 1024
METHOD = (
    "- Time to final: `request_cancel` → the record's `final_at`. The sandbox confirms a "
    "cancel 200 ms after accepting it; the first status read goes when the fleet has "
    "learned the exchange usually confirms (the 90th percentile of recent confirm times "
    "x 1.2; before any history, `CANCEL_WORKER_POLL_INITIAL_DELAY_S`, 0.5 s): 5 orders "
    "first, unmeasured, then one at a time; status reads are the sandbox's count per order. "
    "The 30-order burst shares the 20/2s status budget. Each run starts once the previous "
    "one's sends have left every budget's window.",
    "- Footprint: VmRSS from /proc of the two Celery workers `cancel-worker worker` "
    "starts, idle after start-up and again after benchmark 3.",
)


def _goals(pipeline: Figures, results: Results) -> list[Goal]:
    """(3) time to final, one order alone: p50 against the confirm delay + 150 ms, and the
    status reads it took against one (what the fixed 0.5 s first read took)."""
    final = pipeline["to_final"]
    anchor = final["confirm_delay_ms"] + FINAL_SLACK_MS
    single_p50 = final["single_p50_ms"]
    reads = final["single_reads_mean"]
    return [
        Goal(
            "(3) time to final p50, one order",
            f"{single_p50:.0f} ms",
            f"confirm {final['confirm_delay_ms']} ms + {FINAL_SLACK_MS:g} ms",
            single_p50 / anchor,
            "≤ 1",
            single_p50 <= anchor,
        ),
        Goal(
            "(3) status reads per order, mean",
            f"{reads:.2f}",
            f"{READS_BEFORE:g} (a fixed 0.5 s first read)",
            reads / READS_BEFORE,
            "≤ 1",
            reads <= READS_BEFORE,
        ),
    ]


def _detail_rows(pipeline: Figures, results: Results) -> list[list[str]]:
    """(3)-(5) as (benchmark, measure, value), with the producer's rows (4) in goal order."""
    fin = pipeline["to_final"]
    learn = fin["learn_ms"]
    rows = [
        ["(3) to final", "sandbox confirm delay / first read with no history",
         f"{fin['confirm_delay_ms']} ms / {fin['poll_initial_delay_s'] * 1000:.0f} ms"],
        ["(3) to final", f"the first {fin['learn_count']} orders (learning), each",
         " / ".join(fmt.ms(v) for v in learn)],
        ["(3) to final", f"status reads per order, mean (n={fin['single_count']})",
         f"{fin['single_reads_mean']:.2f}"],
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
    """(3)-(5): one table of issue 7's smaller figures, the producer's (benchmark 4) among them."""
    return [
        "## (3)-(5) Time to final, producer, footprint",
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
