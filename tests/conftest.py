"""Session-wide fixtures: a real Redis, the sandbox exchange over HTTP, real Celery workers.

The service reads its configuration from the environment once, at import, exactly as in
production; so this module picks the ports and keys and sets the environment before any
test imports `worker.celery_app`. Limits are scaled so tests stay short: cancel and
cancel-all 10/2s, status and each order list 20/2s.
Three accounts are configured: `default`, `alpha` and `beta`, each with its own key.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from tests import support
from tests.redis_server import free_port, redis_server
from tests.support import stop_process, stop_processes
from worker.sandbox import SandboxConfig, SandboxHandle, generate_keypair, run_sandbox

WORKER_START_TIMEOUT_S = 30.0

#: The user's REDIS_URL, if any. pytest-xdist workers inherit the controller's environment,
#: where this module has already set REDIS_URL to a server nobody started: the user's value
#: travels in CW_TESTS_GIVEN_REDIS_URL instead.
_GIVEN = os.environ.setdefault("CW_TESTS_GIVEN_REDIS_URL", os.environ.get("REDIS_URL", ""))
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ... under pytest-xdist


def _with_db(url: str, db: int) -> str:
    return urlsplit(url)._replace(path=f"/{db}").geturl()


if _GIVEN and _WORKER:  # one given Redis, several test processes: two databases each
    _GIVEN_REDIS_URL: str | None = _with_db(_GIVEN, 2 * int(_WORKER[2:]))
    UNIT_DB = 2 * int(_WORKER[2:]) + 1
else:
    _GIVEN_REDIS_URL = _GIVEN or None
    UNIT_DB = 15  # what unit tests that need an empty database use
_REDIS_PORT = free_port()
_SANDBOX_PORT = free_port()
API_KEY, SECRET_KEY = generate_keypair()
ALPHA_API_KEY, ALPHA_SECRET_KEY = generate_keypair()
BETA_API_KEY, BETA_SECRET_KEY = generate_keypair()

#: The environment every worker and the test process share.
SERVICE_ENV = {
    "REDIS_URL": _GIVEN_REDIS_URL or f"redis://127.0.0.1:{_REDIS_PORT}/0",
    "COINSWITCH_BASE_URL": f"http://127.0.0.1:{_SANDBOX_PORT}",
    "COINSWITCH_API_KEY": API_KEY,
    "COINSWITCH_SECRET_KEY": SECRET_KEY,
    "COINSWITCH_ACCOUNTS": "alpha,beta",
    "COINSWITCH_ALPHA_API_KEY": ALPHA_API_KEY,
    "COINSWITCH_ALPHA_SECRET_KEY": ALPHA_SECRET_KEY,
    "COINSWITCH_BETA_API_KEY": BETA_API_KEY,
    "COINSWITCH_BETA_SECRET_KEY": BETA_SECRET_KEY,
    "COINSWITCH_CANCEL_RATE_LIMIT": "10/2s",
    "COINSWITCH_STATUS_RATE_LIMIT": "20/2s",
    "COINSWITCH_CANCEL_ALL_RATE_LIMIT": "10/2s",
    "COINSWITCH_OPEN_ORDERS_RATE_LIMIT": "20/2s",
    "COINSWITCH_CLOSED_ORDERS_RATE_LIMIT": "20/2s",
    "CANCEL_WORKER_READ_TIMEOUT_S": "1",
    "CANCEL_WORKER_POLL_INITIAL_DELAY_S": "0.1",
    "CANCEL_WORKER_POLL_MAX_DELAY_S": "0.5",
    "CANCEL_WORKER_POLL_MAX_ATTEMPTS": "10",
    "CANCEL_WORKER_RECHECK_INTERVAL_S": "1",
    "CANCEL_WORKER_SWEEP_INTERVAL_S": "0.5",
    "CANCEL_WORKER_VISIBILITY_TIMEOUT_S": "10",
    "CANCEL_WORKER_LOG_FORMAT": "json",
}
os.environ.update(SERVICE_ENV)

SANDBOX_CONFIG = SandboxConfig(
    port=_SANDBOX_PORT,
    confirm_delay_ms=200,
    timeout_ms=1500,
    cancel_limit="10/2s",
    status_limit="20/2s",
    cancel_all_limit="10/2s",
    list_limit="20/2s",
)


def unit_url(redis_url: str) -> str:
    """The URL of the unit tests' database (the URL's own database would win over a db=
    argument in redis-py, so it is replaced)."""
    return _with_db(redis_url, UNIT_DB)


@pytest.fixture(scope="session", autouse=True)
def redis_url() -> Iterator[str]:
    """A Redis URL: REDIS_URL when set, else a redis-server this session starts and stops.

    Autouse: every test may reach Redis through SERVICE_ENV, whatever ran before it."""
    if _GIVEN_REDIS_URL:
        yield _GIVEN_REDIS_URL
        return
    with redis_server(port=_REDIS_PORT) as url:
        yield url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the unit tests' database, emptied for each test, so unit tests never see
    each other's keys."""
    client = redis.Redis.from_url(unit_url(redis_url), decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxHandle]:
    """The simulated exchange over real HTTP, for the whole session."""
    with run_sandbox(SANDBOX_CONFIG, api_keys=[API_KEY, ALPHA_API_KEY, BETA_API_KEY]) as handle:
        yield handle


@pytest.fixture
def exchange(sandbox: SandboxHandle, redis_url: str) -> Iterator[SandboxHandle]:
    """The sandbox with no faults queued and default knobs, and the margin learned afresh."""
    from worker.keys import Keys

    client = redis.Redis.from_url(redis_url)
    keys = Keys()
    # A test's network and exchange are its own: nothing learned from earlier tests.
    client.delete(keys.spans, keys.margin, keys.confirm_times, keys.confirm_delay)
    client.close()
    sandbox.admin.configure(
        fill_race_rate=0.0,
        error_rate=0.0,
        timeout_rate=0.0,
        malformed_rate=0.0,
        latency_jitter_ms=0,
    )
    yield sandbox


def start_worker(
    name: str,
    log_dir: Path,
    *,
    queues: str = "cancels,polls",
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start one real Celery worker with the service environment (plus `extra_env`)."""
    env = {**SERVICE_ENV, **(extra_env or {})}
    return support.start_worker(name, log_dir, env, queues=queues)


def wait_worker_ready(name: str, proc: subprocess.Popen[bytes]) -> None:
    """Block until the worker answers a ping (it is consuming), or fail."""
    from worker.celery_app import app

    hostname = f"{name}@{os.uname().nodename}"
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while not app.control.ping(destination=[hostname], timeout=0.5):
        if proc.poll() is not None:
            pytest.fail(f"worker {name} exited with {proc.returncode} at start-up")
        if time.monotonic() > deadline:
            pytest.fail(f"worker {name} did not answer a ping in {WORKER_START_TIMEOUT_S}s")


@pytest.fixture(scope="session")
def log_dir() -> Iterator[Path]:
    """Where worker processes write their logs: CW_TEST_LOG_DIR if set (kept), else a temp dir."""
    keep = os.environ.get("CW_TEST_LOG_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
        return
    with tempfile.TemporaryDirectory(prefix="cw-logs-") as path:
        yield Path(path)


class SessionWorker:
    """The session's worker process: stopped while a test runs a fleet of its own."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def ensure_running(self) -> None:
        """Start it if it is not running, and wait until it consumes."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = start_worker("test1", self.log_dir)
            wait_worker_ready("test1", self.proc)

    def stop(self) -> None:
        """Stop it (warm shutdown), so that only a test's own workers dispatch and consume."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@pytest.fixture(scope="session")
def session_worker(
    redis_url: str, sandbox: SandboxHandle, log_dir: Path
) -> Iterator[SessionWorker]:
    """The session's worker, started on first use and stopped at the end."""
    worker = SessionWorker(log_dir)
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def workers(session_worker: SessionWorker, log_dir: Path) -> Path:
    """One real Celery worker (its dispatcher sweeps too); returns its log path."""
    session_worker.ensure_running()
    return log_dir / "test1.log"


@pytest.fixture
def own_workers(
    session_worker: SessionWorker, sandbox: SandboxHandle, log_dir: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Stop the session worker; yield a starter for this test's workers (stopped afterwards).

    Every worker runs a dispatcher, so a fleet with its own settings must run alone.
    """
    session_worker.stop()
    started: list[subprocess.Popen[bytes]] = []
    unready: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        name: str,
        *,
        queues: str = "cancels,polls",
        extra_env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> subprocess.Popen[bytes]:
        """Start a worker; wait until it (and any started with wait=False) consumes."""
        proc = start_worker(name, log_dir, queues=queues, extra_env=extra_env)
        started.append(proc)
        if not extra_env or "REDIS_URL" not in extra_env:
            unready.append((name, proc))
        while wait and unready:  # a fleet starts together, then is waited for once
            wait_worker_ready(*unready.pop(0))
        return proc

    try:
        yield start
    finally:
        stop_processes(started)
