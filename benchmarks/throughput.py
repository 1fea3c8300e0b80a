"""Benchmark 4: producer throughput and Redis memory per queued cancel and per record.

No worker runs: this measures what `request_cancel` / `request_cancels` cost the caller
and Redis. Memory is INFO `used_memory` deltas on a dedicated, fresh redis-server: after N
cancels are enqueued, deleting the broker queue frees the queued messages; what stays is
the records (with their QUEUED event in the stream and the state counters).
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import BenchError, apply_env, say, service_env
from tests.redis_server import redis_server
from worker.sandbox import generate_keypair

SEED = 7
BATCH = 500
WARMUP = 10
MEMORY_SETTLE_S = 1.0


def run(*, smoke: bool, work_dir: Path) -> dict[str, Any]:
    """Measure enqueue rates (single and batch) and bytes per queued cancel and record."""
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
        from worker.producer import request_cancel, request_cancels

        client = redis.Redis.from_url(redis_url)
        request_cancels(fresh_ids(WARMUP))  # connections, queue bindings, counters, stream
        client.delete(CANCEL_QUEUE)

        say(f"producer: memory over {memory_items} cancels")
        before = _used_memory(client)
        ids = fresh_ids(memory_items)
        for start in range(0, memory_items, BATCH):
            request_cancels(ids[start : start + BATCH])
        loaded = _used_memory(client)
        queued = int(client.llen(CANCEL_QUEUE))
        client.delete(CANCEL_QUEUE)
        records_only = _used_memory(client)
        record_key_bytes = int(client.memory_usage(Keys().record(ids[0]), samples=0) or 0)

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
        enqueued = int(client.llen(CANCEL_QUEUE))
        client.close()
    if queued != memory_items or enqueued != singles + batches * BATCH:
        raise BenchError(f"queue lengths {queued}, {enqueued} do not match what was enqueued")
    return {
        "single_count": singles,
        "single_per_s": singles / single_s,
        "batch_size": BATCH,
        "batch_count": batches,
        "batch_per_s": batches * BATCH / batch_s,
        "memory_items": memory_items,
        "queued_message_bytes": (loaded - records_only) / memory_items,
        "record_bytes": (records_only - before) / memory_items,
        "record_key_bytes": record_key_bytes,
    }


def _used_memory(client: redis.Redis) -> int:
    """INFO used_memory, after a pause that lets Redis finish rehashing grown tables."""
    time.sleep(MEMORY_SETTLE_S)
    return int(client.info("memory")["used_memory"])
