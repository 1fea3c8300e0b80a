"""Helpers shared by the tests, the soak run and the benchmarks (no side effects on import)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
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
    beat: bool = False,
) -> subprocess.Popen[bytes]:
    """Start one real Celery worker process (threads pool), logging to log_dir/NAME.log."""
    args = [
        sys.executable, "-m", "celery", "-A", "worker", "worker",
        "-Q", queues, "-P", "threads", "-c", str(concurrency), "-n", f"{name}@%h",
        "--without-gossip", "--without-mingle", "-l", "INFO",
    ]  # fmt: skip
    if beat:
        args += ["-B", "-s", str(log_dir / f"{name}-beat-schedule")]
    log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        args, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
    )


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM (a Celery worker's warm shutdown), then kill after STOP_TIMEOUT_S."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
