"""Soak: many cancels over several worker processes with exchange faults on; nothing lost.

Self-contained (its own redis-server, sandbox and workers), so it runs the same from a test
or the command line:  python -m tests.soak --orders 1000 --workers 4
Exit code 0 when every order ended final, equal to the sandbox's truth, with no 429.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from tests.redis_server import redis_server
from tests.support import ROOT, start_worker, stop_processes
from worker.keys import Keys
from worker.log import configure_logging
from worker.models import FINAL_STATES, CancelRecord
from worker.sandbox import AdminClient, SandboxConfig, generate_keypair, run_sandbox

DEFAULT_CANCEL_LIMIT = "50/1s"
DEFAULT_STATUS_LIMIT = "100/1s"
CANCEL_ALL_LIMIT = "10/60s"  # the soak sends none; stated so the workers and sandbox agree
LIST_LIMIT = "20/60s"
WORKER_CONCURRENCY = 4
FINAL_TIMEOUT_S = 300.0


@dataclass
class SoakReport:
    """What a soak run found; `ok` is the verdict."""

    orders: int
    workers: int
    seconds: float
    final: int = 0
    lost: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)  # record state != sandbox's status
    double_cancels: list[str] = field(default_factory=list)  # > 1 DELETE accepted
    rate_limited: int = 0
    rate_limited_by_endpoint: dict[str, int] = field(default_factory=dict)
    faults: int = 0
    states: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every order final and true, none cancelled twice, no 429."""
        clean = not (self.lost or self.wrong or self.double_cancels)
        return clean and self.rate_limited == 0 and self.final == self.orders


def run_soak(
    orders: int,
    workers: int,
    *,
    error_rate: float = 0.2,
    timeout_rate: float = 0.05,
    malformed_rate: float = 0.05,
    fill_race_rate: float = 0.1,
    seed: int = 7,
    log_dir: Path | None = None,
) -> SoakReport:
    """Run one soak and report; every process it starts is stopped before it returns."""
    api_key, secret_key = generate_keypair()
    config = SandboxConfig(
        cancel_limit=DEFAULT_CANCEL_LIMIT,
        status_limit=DEFAULT_STATUS_LIMIT,
        cancel_all_limit=CANCEL_ALL_LIMIT,
        list_limit=LIST_LIMIT,
        place_limit="100000/1s",
        confirm_delay_ms=300,
        fill_race_rate=fill_race_rate,
        error_rate=error_rate,
        error_applied_share=0.5,
        timeout_rate=timeout_rate,
        timeout_ms=1500,
        malformed_rate=malformed_rate,
        seed=seed,
    )
    with (
        redis_server() as redis_url,
        run_sandbox(config, api_keys=[api_key]) as sandbox,
        tempfile.TemporaryDirectory(prefix="cw-soak-") as tmp,
    ):
        logs = log_dir or Path(tmp)
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "COINSWITCH_BASE_URL": sandbox.url,
            "COINSWITCH_API_KEY": api_key,
            "COINSWITCH_SECRET_KEY": secret_key,
            "COINSWITCH_ACCOUNTS": "",  # only the default account, whatever the caller's env
            "COINSWITCH_CANCEL_RATE_LIMIT": DEFAULT_CANCEL_LIMIT,
            "COINSWITCH_STATUS_RATE_LIMIT": DEFAULT_STATUS_LIMIT,
            "COINSWITCH_CANCEL_ALL_RATE_LIMIT": CANCEL_ALL_LIMIT,
            "COINSWITCH_OPEN_ORDERS_RATE_LIMIT": LIST_LIMIT,
            "COINSWITCH_CLOSED_ORDERS_RATE_LIMIT": LIST_LIMIT,
            "CANCEL_WORKER_READ_TIMEOUT_S": "1",
            "CANCEL_WORKER_POLL_INITIAL_DELAY_S": "0.2",
            "CANCEL_WORKER_POLL_MAX_DELAY_S": "1",
            "CANCEL_WORKER_RECHECK_INTERVAL_S": "2",
            "CANCEL_WORKER_SWEEP_INTERVAL_S": "1",
            "CANCEL_WORKER_LOG_FORMAT": "json",
        }
        # Orders are placed fault-free; the faults are for the worker's calls.
        sandbox.admin.configure(error_rate=0.0, timeout_rate=0.0, malformed_rate=0.0)
        order_ids = [
            str(
                sandbox.admin.create_order(
                    symbol="DOGEUSDT", side="BUY", order_type="LIMIT", quantity="10", price="0.1"
                )["order_id"]
            )
            for _ in range(orders)
        ]
        sandbox.admin.configure(
            error_rate=error_rate, timeout_rate=timeout_rate, malformed_rate=malformed_rate
        )
        procs = [
            start_worker(f"soak{i}", logs, env, concurrency=WORKER_CONCURRENCY)
            for i in range(workers)
        ]
        started = time.monotonic()
        try:
            enqueue = subprocess.run(
                [sys.executable, "-m", "worker.cli", "cancel", *order_ids],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            if enqueue.returncode != 0:
                raise RuntimeError(f"enqueue failed: {enqueue.stderr[-2000:]}")
            client = redis.Redis.from_url(redis_url, decode_responses=True)
            records = _wait_final(client, order_ids, FINAL_TIMEOUT_S)
            seconds = time.monotonic() - started
        finally:
            stop_processes(procs)
        sandbox.admin.configure(error_rate=0.0, timeout_rate=0.0, malformed_rate=0.0)
        return _report(sandbox.admin, order_ids, records, workers, seconds)


def _wait_final(
    client: redis.Redis, order_ids: list[str], timeout_s: float
) -> dict[str, CancelRecord | None]:
    """Wait on the cheap state counts, then read every record once.

    Parsing every record on each turn held this process's GIL long enough to stamp the
    in-process sandbox's arrivals 100 ms late, which showed as a 429 the workers never caused.
    """
    keys = Keys()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counts = client.hgetall(keys.state_counts)
        if sum(int(n) for state, n in counts.items() if state in FINAL_STATES) >= len(order_ids):
            break
        time.sleep(0.25)
    raws = client.mget([keys.record(i) for i in order_ids])
    return {
        i: None if raw is None else CancelRecord.from_dict(json.loads(raw))
        for i, raw in zip(order_ids, raws, strict=True)
    }


def _report(
    admin: AdminClient,
    order_ids: list[str],
    records: dict[str, CancelRecord | None],
    workers: int,
    seconds: float,
) -> SoakReport:
    report = SoakReport(orders=len(order_ids), workers=workers, seconds=round(seconds, 1))
    for order_id in order_ids:
        record = records[order_id]
        if record is None or not record.is_final:
            report.lost.append(order_id)
            continue
        report.final += 1
        report.states[record.state.value] = report.states.get(record.state.value, 0) + 1
        truth = admin.order(order_id)
        if truth["order"]["status"] != record.state.value:
            report.wrong.append(order_id)
        if truth["cancel_accepted"] > 1:
            report.double_cancels.append(order_id)
    endpoints = admin.stats()["endpoints"]
    report.rate_limited = sum(int(e["rate_limited"]) for e in endpoints.values())
    report.rate_limited_by_endpoint = {
        name: int(e["rate_limited"]) for name, e in endpoints.items() if e["rate_limited"]
    }
    report.faults = sum(int(e["faulted"]) for e in endpoints.values())
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: run a soak, print its report as JSON, exit 0 only if it is clean."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    configure_logging("WARNING")  # the report on stdout; the sandbox's request lines off
    report = run_soak(args.orders, args.workers, seed=args.seed)
    print(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
