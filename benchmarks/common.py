"""Shared pieces: statistics, the service environment, processes, the sandbox probe.

Nothing here imports `worker.celery_app` at module level: a benchmark process sets its
environment first (`apply_env`), then imports the service, exactly as production does.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from tests.support import budget_use, wait_for
from worker.sandbox import SandboxHandle
from worker.sandbox.stats import KEY_PREFIX_CHARS, strict_window_max

__all__ = ["strict_window_max"]  # re-exported for the benchmarks

ROOT = Path(__file__).resolve().parent.parent
WORKER_READY_TIMEOUT_S = 60.0  # 2-core machines start 5 Celery workers slowly
STOP_TIMEOUT_S = 15.0  # warm shutdown before a process is killed
KILL_WAIT_S = 5.0
ORDER_FIELDS = {
    "symbol": "DOGEUSDT",
    "side": "BUY",
    "order_type": "LIMIT",
    "quantity": "10",
    "price": "0.1",
}

_STARTED = time.monotonic()


class BenchError(RuntimeError):
    """Raised when the benchmark itself breaks (a timeout, a process that died, bad data)."""


def say(message: str) -> None:
    """One progress line on stderr, with seconds since this process started."""
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def quiet_logging() -> None:
    """Keep the in-process sandbox's per-request log lines off the terminal."""
    logging.basicConfig(level=logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so every `finally` stops what this process started."""

    def handler(signum: int, _: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


# ---- statistics --------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks; NaN for no values."""
    if not values:
        return math.nan
    data = sorted(values)
    rank = (len(data) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return data[low] + (data[high] - data[low]) * (rank - low)


def window_series(arrivals_ms: Sequence[int], period_ms: int) -> list[tuple[int, int]]:
    """(t, arrivals in (t - period, t]) at each arrival t: requests per window over time."""
    times = sorted(arrivals_ms)
    series: list[tuple[int, int]] = []
    start = 0
    for end, at in enumerate(times):
        while at - times[start] >= period_ms:
            start += 1
        series.append((at, end - start + 1))
    return series


def rate_ratio(arrivals_ms: Sequence[int], limit: int, period_ms: int) -> float:
    """Achieved ÷ allowed rate of a backlog drain, by the first-burst metric (the old one).

    A limiter that sends `limit` at once, then `limit` more every period, scores exactly 1:
    after the first burst, (sends - limit) / span is the allowed rate limit / period. A
    drain that starts with fewer than `limit` (the scheduler keeps a window's last slot for
    urgent work) scores lower at the same long-run rate; see `average_rate_ratio`.
    """
    times = sorted(arrivals_ms)
    if len(times) <= limit or times[-1] == times[0]:
        return math.nan
    achieved_per_ms = (len(times) - limit) / (times[-1] - times[0])
    return achieved_per_ms / (limit / period_ms)


def average_rate_ratio(arrivals_ms: Sequence[int], limit: int, period_ms: int) -> float:
    """Achieved ÷ allowed rate of a backlog drain, by the average-rate metric.

    (sends - 1) / (last - first) ÷ (limit / period): the rate the budget was used at over
    the drain, whatever the shape of its first window (tests.support.budget_use). NaN when
    the sends span less than one period: a burst inside one window has no long-run rate.
    """
    times = sorted(arrivals_ms)
    if len(times) < 2 or times[-1] - times[0] < period_ms:
        return math.nan
    return budget_use(times, limit, period_ms)


# ---- environment and processes -----------------------------------------------------------


def service_env(
    *,
    redis_url: str,
    sandbox_url: str,
    api_key: str,
    secret_key: str,
    cancel_rate: str,
    status_rate: str,
    **extra: str,
) -> dict[str, str]:
    """The environment the bench process and every worker share (README's variables)."""
    return {
        "REDIS_URL": redis_url,
        "COINSWITCH_BASE_URL": sandbox_url,
        "COINSWITCH_API_KEY": api_key,
        "COINSWITCH_SECRET_KEY": secret_key,
        "COINSWITCH_CANCEL_RATE_LIMIT": cancel_rate,
        "COINSWITCH_STATUS_RATE_LIMIT": status_rate,
        "CANCEL_WORKER_LOG_FORMAT": "json",
        **extra,
    }


def apply_env(env: Mapping[str, str]) -> None:
    """Set the service environment in this process (before `worker.celery_app` is imported)."""
    os.environ.update(env)


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll `predicate` until it returns something truthy; BenchError after `timeout_s`."""
    try:
        return wait_for(predicate, timeout_s, what, interval_s=0.01)
    except TimeoutError as exc:
        raise BenchError(str(exc)) from None


def wait_budgets_idle(accounts: Sequence[str], timeout_s: float) -> None:
    """Block until no cancel or status budget of these accounts has a send in its window
    (period + margin), a turn booked ahead, or a job in line; BenchError after `timeout_s`.

    Call after `apply_env`: it reads the budgets through this process's services.
    """
    from worker.estimates import Estimates
    from worker.models import Bucket
    from worker.services import get_services

    estimates = Estimates(get_services().scheduler)

    def idle() -> bool:
        for account in accounts:
            for bucket in (Bucket.CANCEL, Bucket.STATUS):
                use = estimates.usage(account, bucket)
                if use.used_in_window or use.booked_ahead or use.waiting or use.counting_down:
                    return False
        return True

    wait_until(idle, timeout_s, "every budget's window to empty")


class Processes:
    """Processes one benchmark starts; `stop_all` ends each of them, by its own handle."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stop_timeouts: dict[str, float] = {}

    def start(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str],
        *,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> subprocess.Popen[bytes]:
        """Start one process with stdout and stderr in `<log_dir>/<name>.log`."""
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                list(args), cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT
            )
        self.procs[name] = proc
        self.stop_timeouts[name] = stop_timeout_s
        return proc

    def stop(self, name: str) -> None:
        """SIGTERM (warm shutdown), then SIGKILL after a grace; wait for the exit."""
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=self.stop_timeouts.get(name, STOP_TIMEOUT_S))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=KILL_WAIT_S)

    def stop_all(self) -> None:
        """Stop every process still running, last started first."""
        for name in reversed(list(self.procs)):
            self.stop(name)

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last lines of one process's log, for error messages."""
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def celery_worker_args(app: str, queues: str, name: str, concurrency: int = 4) -> list[str]:
    """A Celery worker with the threads pool, as tests/conftest.py and the README start it."""
    return [
        sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queues,
        "-P", "threads", "-c", str(concurrency), "-n", f"{name}@%h",
        "--without-gossip", "--without-mingle", "-l", "INFO",
    ]  # fmt: skip


def node_name(name: str) -> str:
    """The full Celery node name of a worker started with `-n name@%h`."""
    return f"{name}@{os.uname().nodename}"


def wait_workers_ready(
    app: Any, names: Sequence[str], procs: Processes, timeout_s: float = WORKER_READY_TIMEOUT_S
) -> None:
    """Block until every named worker answers a ping (it is consuming), or raise BenchError."""
    waiting = {node_name(name) for name in names}
    deadline = time.monotonic() + timeout_s
    while waiting:
        for reply in app.control.ping(destination=sorted(waiting), timeout=0.5) or []:
            waiting -= set(reply)
        for proc_name, proc in procs.procs.items():
            if proc.poll() is not None:
                tail = procs.log_tail(proc_name)
                raise BenchError(f"{proc_name} exited with {proc.returncode}:\n{tail}")
        if waiting and time.monotonic() > deadline:
            raise BenchError(f"workers not ready after {timeout_s:g}s: {sorted(waiting)}")


def child_pids(pid: int) -> list[int]:
    """Direct children of a process, read from /proc."""
    children: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces) start after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            children.append(int(entry.name))
    return sorted(children)


def rss_kb(pid: int) -> int:
    """Resident set size of a process in KiB (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def cmdline(pid: int) -> str:
    """A process's command line, for telling the cancels worker from the polls worker."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


# ---- the sandbox -------------------------------------------------------------------------


def place_orders(sandbox: SandboxHandle, count: int, *, api_key: str | None = None) -> list[str]:
    """Open `count` resting LIMIT orders on the sandbox (owned by `api_key`); return their ids."""
    fields = ORDER_FIELDS if api_key is None else {**ORDER_FIELDS, "api_key": api_key}
    return [str(sandbox.admin.create_order(**fields)["order_id"]) for _ in range(count)]


def accepted_at(sandbox: SandboxHandle, order_id: str) -> int | None:
    """When the order's accepted DELETE reached the sandbox (Unix ms), None if none was."""
    for entry in sandbox.admin.order(order_id)["history"]:
        if entry["status"] == "CANCELLATION_RAISED":
            return int(entry["at"])
    return None


def key_tag(api_key: str) -> str:
    """How the sandbox's stats name an API key (`by_key`): its first characters."""
    return api_key.lower()[:KEY_PREFIX_CHARS]


def key_arrivals(sandbox: SandboxHandle, endpoint: str, api_key: str, since_ms: int) -> list[int]:
    """Arrival times (Unix ms) of one API key's requests to `endpoint` since `since_ms`."""
    own = sandbox.admin.stats()["endpoints"][endpoint]["by_key"].get(key_tag(api_key), {})
    return sorted(at for at in own.get("arrivals_ms", []) if at >= since_ms)


class ArrivalProbe:
    """Records when each request reaches the in-process sandbox, at sub-millisecond precision.

    The sandbox stamps arrivals in whole milliseconds; for latency we wrap its per-request
    `stats.arrival` hook on this one instance to take `clock()` as well (`time.perf_counter`
    by default; `time.time` to compare with times taken elsewhere, e.g. Redis's clock).
    """

    def __init__(
        self, sandbox: SandboxHandle, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._cond = threading.Condition()
        self.times: dict[str, list[float]] = {}
        stats = sandbox.app.stats
        original = stats.arrival

        def arrival(endpoint: str, *args: Any, **kwargs: Any) -> Any:
            at = clock()
            with self._cond:
                self.times.setdefault(endpoint, []).append(at)
                self._cond.notify_all()
            return original(endpoint, *args, **kwargs)

        stats.arrival = arrival  # type: ignore[method-assign]  # a probe on this instance only

    def count(self, endpoint: str) -> int:
        """How many requests to `endpoint` have arrived so far."""
        with self._cond:
            return len(self.times.get(endpoint, []))

    def wait_for(self, endpoint: str, count: int, timeout_s: float) -> float:
        """Wait until the `count`-th request to `endpoint` has arrived; return its time."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: len(self.times.get(endpoint, [])) >= count, timeout=timeout_s
            )
            if not ok:
                raise BenchError(f"{endpoint} request #{count} did not arrive in {timeout_s:g}s")
            return self.times[endpoint][count - 1]
