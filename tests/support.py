"""Helpers shared by the tests, the soak run and the benchmarks (no side effects on import)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WAIT_S = 20.0
STOP_TIMEOUT_S = 20.0

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T | None],
    timeout_s: float = DEFAULT_WAIT_S,
    what: str = "condition",
    *,
    interval_s: float = 0.05,
) -> T:
    """Poll `predicate` until it returns something truthy; TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


def start_worker(
    name: str,
    log_dir: Path,
    env: Mapping[str, str],
    *,
    queues: str = "cancels,polls",
    concurrency: int = 4,
) -> subprocess.Popen[bytes]:
    """Start one real Celery worker process (threads pool), logging to log_dir/NAME.log."""
    args = [
        sys.executable, "-m", "celery", "-A", "worker", "worker",
        "-Q", queues, "-P", "threads", "-c", str(concurrency), "-n", f"{name}@%h",
        "--without-gossip", "--without-mingle", "-l", "INFO",
    ]  # fmt: skip
    log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        args, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
    )


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM (a Celery worker's warm shutdown), then kill after STOP_TIMEOUT_S."""
    stop_processes([proc])


def stop_processes(procs: Iterable[subprocess.Popen[Any]]) -> None:
    """Stop several at once: SIGTERM to all, then wait for each (kill after STOP_TIMEOUT_S)."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        proc.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def scheduler_for(
    client: Any,
    keys: Any,
    *,
    accounts: tuple[str, ...] = ("default",),
    rates: Any = None,
    shares: Mapping[str, int] | None = None,
    floor_ms: int = 20,
    ceiling_ms: int = 500,
) -> Any:
    """A Scheduler of test accounts (fingerprint `fp-<name>`; 3 per 300 ms unless `rates`)."""
    from worker.accounts import AccountInfo
    from worker.models import Bucket
    from worker.rates import Rate
    from worker.scheduler import Scheduler

    budgets = rates or {bucket: Rate(3, 0.3) for bucket in Bucket}
    infos = {
        name: AccountInfo(name, f"fp-{name}", budgets, shares=dict(shares or {}))
        for name in accounts
    }
    return Scheduler(
        client, keys, infos, margin_floor_ms=floor_ms, margin_ceiling_ms=ceiling_ms, watch_ms=1000
    )


def place_orders(admin: Any, count: int, **fields: Any) -> list[str]:
    """Open `count` LIMIT orders on the sandbox (through its admin client); return their ids.

    `fields` override the order (e.g. `api_key=` for another account, `symbol=`).
    """
    order = {
        "symbol": "DOGEUSDT",
        "side": "BUY",
        "order_type": "LIMIT",
        "quantity": "10",
        "price": "0.1",
        **fields,
    }
    return [str(admin.create_order(**order)["order_id"]) for _ in range(count)]


def wait_all_final(order_ids: list[str], timeout_s: float) -> None:
    """Wait until every order has a final record."""
    from worker.producer import get_records

    def all_final() -> bool:
        return all(r is not None and r.is_final for r in get_records(order_ids))

    wait_for(all_final, timeout_s, f"{len(order_ids)} final records")


def arrivals(admin: Any, endpoint: str, since_ms: int, key: str | None = None) -> list[int]:
    """When requests to one endpoint reached the sandbox since `since_ms` (of one API key)."""
    stats = admin.stats()["endpoints"][endpoint]
    if key is not None:
        stats = stats["by_key"].get(key[:8], {"arrivals_ms": []})
    return [at for at in stats["arrivals_ms"] if at >= since_ms]


def budget_use(sent_ms: list[int], limit: int, period_ms: int) -> float:
    """The average send rate while draining a backlog, as a share of the nominal rate.

    The scheduler keeps a slot for urgent work, so a long normal backlog settles into sends
    one slot interval apart; their average rate is what the budget was used at.
    """
    times = sorted(sent_ms)
    return (len(times) - 1) / (times[-1] - times[0]) / (limit / period_ms)
