"""Benchmark 4: producer throughput and Redis memory per waiting order.

No worker runs: this measures what `request_cancel` / `request_cancels` cost the caller
and Redis. A request is one Lua call that writes each order's record (with its QUEUED
event and state count), its sweeper watch and its entry in the account's line for a DELETE
turn, then one more that hands out the turns free right now (publishing their tasks). The
warm-up request spends the budget (10/60s), so every measured request finds no free turn:
no broker message is sent and every order waits in the line, as in a backlog. Memory per
waiting order is the INFO `used_memory` delta over N requested orders on a dedicated, fresh
redis-server; of it, the line and the sweeper's watch set are their
keys' `MEMORY USAGE` ÷ N, and the rest is the record (with its QUEUED event and counters).

Its part of the report (`REPORT`, at the end) has goals (4); its rows go in the pipeline
benchmark's (2)-(5) table, or in a section of their own when that benchmark has no figures.
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from benchmarks import fmt
from benchmarks.common import BenchError, apply_env, say, service_env
from benchmarks.report import DETAIL_HEADERS, Figures, Goal, Report, Results, Table
from tests.redis_server import redis_server
from worker.sandbox import generate_keypair

SEED = 7
BATCH = 500
WARMUP = 10
MEMORY_SETTLE_S = 1.0  # lets Redis finish rehashing grown tables before INFO is read


def run(*, smoke: bool, work_dir: Path) -> dict[str, Any]:
    """Measure request rates (single and batch) and bytes per waiting order, by part."""
    del work_dir  # nothing to log: no process is started besides redis-server
    memory_items = 1000 if smoke else 5000
    singles = 300 if smoke else 3000
    batches = 2 if smoke else 20
    rng = random.Random(SEED)

    def fresh_ids(count: int) -> list[str]:
        return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]

    api_key, secret_key = generate_keypair()
    with redis_server() as redis_url:
        apply_env(
            service_env(
                redis_url=redis_url,
                sandbox_url="http://127.0.0.1:1",  # never called: no worker runs
                api_key=api_key,
                secret_key=secret_key,
                cancel_rate="10/60s",
                status_rate="20/60s",
            )
        )
        from worker.keys import CANCEL_QUEUE, Keys
        from worker.models import DEFAULT_ACCOUNT, Bucket
        from worker.producer import request_cancel, request_cancels

        keys = Keys()
        line = keys.line_queue(DEFAULT_ACCOUNT, Bucket.CANCEL, "")  # jobs with no owner
        jobs = keys.line_jobs(DEFAULT_ACCOUNT, Bucket.CANCEL)
        owners = keys.line_owners(DEFAULT_ACCOUNT, Bucket.CANCEL)
        client = redis.Redis.from_url(redis_url)
        request_cancels(fresh_ids(WARMUP))  # connections, scripts, counters; spends the budget
        client.delete(line, jobs, owners, keys.due, CANCEL_QUEUE)  # only the measured orders

        say(f"producer: memory over {memory_items} waiting orders")
        before = _used_memory(client)
        ids = fresh_ids(memory_items)
        for start in range(0, memory_items, BATCH):
            request_cancels(ids[start : start + BATCH])
        loaded = _used_memory(client)
        in_line, watched = int(client.zcard(line)), int(client.zcard(keys.due))
        broker_messages = int(client.llen(CANCEL_QUEUE))
        line_bytes = sum(int(client.memory_usage(k, samples=0) or 0) for k in (line, jobs))
        watch_bytes = int(client.memory_usage(keys.due, samples=0) or 0)
        record_key_bytes = int(client.memory_usage(keys.record(ids[0]), samples=0) or 0)

        say(f"producer: {singles} single calls, {batches} batches of {BATCH}")
        single_ids = fresh_ids(singles)
        started = time.perf_counter()
        for order_id in single_ids:
            request_cancel(order_id)
        single_s = time.perf_counter() - started

        batch_ids = [fresh_ids(BATCH) for _ in range(batches)]
        started = time.perf_counter()
        for batch in batch_ids:
            request_cancels(batch)
        batch_s = time.perf_counter() - started
        requested = int(client.zcard(line))
        broker_messages += int(client.llen(CANCEL_QUEUE))
        client.close()
    if in_line != memory_items or watched != memory_items:
        raise BenchError(f"{in_line} in line and {watched} watched, not {memory_items} each")
    expected = memory_items + singles + batches * BATCH
    if requested != expected:
        raise BenchError(f"{requested} orders in line after the rate runs, not {expected}")
    if broker_messages:
        raise BenchError(f"{broker_messages} broker messages: with the budget spent, none")
    return {
        "single_count": singles,
        "single_per_s": singles / single_s,
        "batch_size": BATCH,
        "batch_count": batches,
        "batch_per_s": batches * BATCH / batch_s,
        "memory_items": memory_items,
        "waiting_order_bytes": (loaded - before) / memory_items,
        "line_entry_bytes": line_bytes / memory_items,
        "watch_entry_bytes": watch_bytes / memory_items,
        "record_bytes": (loaded - before - line_bytes - watch_bytes) / memory_items,
        "record_key_bytes": record_key_bytes,
    }


def _used_memory(client: redis.Redis) -> int:
    """INFO used_memory, after a pause that lets Redis finish rehashing grown tables."""
    time.sleep(MEMORY_SETTLE_S)
    return int(client.info("memory")["used_memory"])


# ---- its part of the report: goals (4); its rows join the pipeline benchmark's table -------

BATCH_GOAL_PER_S = 2000.0
RECORD_GOAL_BYTES = 2048  # 2 KiB per waiting order, and per final record
METHOD = (
    "- Producer: one process, no worker running, fresh Redis. A request is one Redis "
    "round trip: one Lua call that writes each order's record with its QUEUED event and "
    "state count, its sweeper watch (`cw:due`) and its entry in the account's line "
    "(`cw:room:<account>:cancel:ready`); no broker message is sent, so the `cancels` "
    "queue stays empty (checked). Memory per waiting order: INFO `used_memory` before "
    "and after requesting N orders in batches of 500, ÷ N; of it, the line and the watch "
    "set are their keys' `MEMORY USAGE` ÷ N, and the rest is the record. A final record "
    "grows with its order snapshot and history: `MEMORY USAGE` of the 30 burst records.",
)


def _goals(producer: Figures, results: Results) -> list[Goal]:
    """(4): batch throughput, and Redis memory per order (the pipeline's final records too)."""
    rate = producer["batch_per_s"]
    per_record = producer["waiting_order_bytes"]
    final_bytes = results.get("pipeline", {}).get("to_final", {}).get("final_record_bytes")
    measured = f"{per_record:.0f} B per waiting order"
    if final_bytes is not None:
        per_record = max(per_record, final_bytes)
        measured += f", {final_bytes:.0f} B per final record"
    return [
        Goal(
            "(4) producer batch throughput",
            f"{rate:,.0f} req/s",
            f"{BATCH_GOAL_PER_S:,.0f} req/s",
            rate / BATCH_GOAL_PER_S,
            "≥ 1",
            rate >= BATCH_GOAL_PER_S,
        ),
        Goal(
            "(4) Redis memory per order",
            measured,
            f"{RECORD_GOAL_BYTES} B",
            per_record / RECORD_GOAL_BYTES,
            "≤ 1",
            per_record <= RECORD_GOAL_BYTES,
        ),
    ]


def detail_rows(p: Figures) -> list[list[str]]:
    """(4) as (benchmark, measure, value): in the pipeline benchmark's table when it ran."""
    return [
        ["(4) producer", f"request_cancel, single calls (n={p['single_count']})",
         f"{p['single_per_s']:,.0f} req/s"],
        ["(4) producer", f"request_cancels, {p['batch_count']} batches of {p['batch_size']}",
         f"{p['batch_per_s']:,.0f} req/s"],
        ["(4) producer", f"Redis per waiting order, all of it (n={p['memory_items']})",
         f"{p['waiting_order_bytes']:.0f} B"],
        ["(4) producer", "  of which its entry in the line (MEMORY USAGE of the line ÷ n)",
         f"{p['line_entry_bytes']:.0f} B"],
        ["(4) producer", "  of which the sweeper's watch (MEMORY USAGE of cw:due ÷ n)",
         f"{p['watch_entry_bytes']:.0f} B"],
        ["(4) producer", "  of which the QUEUED record (key + event + counters)",
         f"{p['record_bytes']:.0f} B"],
        ["(4) producer", "MEMORY USAGE of one QUEUED record key",
         f"{p['record_key_bytes']} B"],
    ]  # fmt: skip


def _tables(producer: Figures, results: Results) -> list[Table]:
    if "pipeline" in results:
        return []  # the pipeline benchmark's table has these rows
    return [(DETAIL_HEADERS, detail_rows(producer))]


def _section(producer: Figures, results: Results) -> list[str]:
    """(4) on its own, only when the pipeline benchmark (whose section has it) has no figures."""
    if "pipeline" in results:
        return []
    return [
        "## (4) Producer throughput and memory",
        "",
        fmt.md_table(DETAIL_HEADERS, detail_rows(producer)),
        "",
    ]


REPORT = Report(goals=_goals, section=_section, tables=_tables, method=METHOD)
