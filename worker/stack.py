"""Process supervision for `cancel-worker worker` and `cancel-worker run`.

`worker` runs two Celery workers, one per queue, so a status read never holds a thread a
cancel needs. `run` adds what a laptop lacks: an embedded redis-server (when REDIS_URL does
not answer), the sandbox (when no credentials are set), Flower and the metrics endpoint.
Ctrl-C or SIGTERM stops every child, then waits for each.

Every child runs in its own process group, so the terminal's Ctrl-C reaches only the
supervisor, which sends each child exactly one SIGTERM. When children shared the terminal's
group they got SIGINT and then SIGTERM: Celery repeated its warm shutdown, and Flower's
SIGTERM handler (`sys.exit` inside its atexit callback) printed a traceback.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import BinaryIO
from urllib.parse import urlsplit

import redis
import structlog

from worker.errors import ConfigError
from worker.keys import CANCEL_QUEUE, POLL_QUEUE

STOP_TIMEOUT_S = 15.0  # warm shutdown time before a child is killed
READY_TIMEOUT_S = 20.0
RESTART_DELAY_S = 1.0  # before a dead worker is started again
RESTART_WINDOW_S = 60.0
MAX_RESTARTS_PER_WINDOW = 5  # more deaths than this in the window stop the whole stack
DEFAULT_CANCEL_CONCURRENCY = 4  # threads sending DELETEs (they mostly wait for budget)
DEFAULT_POLL_CONCURRENCY = 8  # threads polling statuses
DEFAULT_DATA_DIR = ".cancel-worker"
DEFAULT_SANDBOX_PORT = 8765
DEFAULT_FLOWER_PORT = 5555
DEFAULT_METRICS_PORT = 9808
PR_SET_PDEATHSIG = 1  # Linux prctl: the signal a child gets when its parent dies
RUN_LOG = "run.log"  # in the data dir: what `run`'s children print (unless --verbose)

log = structlog.get_logger(__name__)


def celery_worker_args(
    queue: str, concurrency: int, name: str, loglevel: str = "INFO"
) -> list[str]:
    """The Celery worker command for one queue (threads pool: the tasks wait on I/O)."""
    return [
        sys.executable, "-m", "celery", "-A", "worker", "worker",
        "-Q", queue, "-P", "threads", "-c", str(concurrency), "-n", f"{name}@%h",
        "--without-gossip", "--without-mingle", "-l", loglevel,
    ]  # fmt: skip


def worker_commands(
    cancel_concurrency: int, poll_concurrency: int, loglevel: str = "INFO"
) -> dict[str, list[str]]:
    """One Celery worker per queue, named so Flower shows which is which."""
    pid = os.getpid()
    return {
        "cancels": celery_worker_args(CANCEL_QUEUE, cancel_concurrency, f"cancels-{pid}", loglevel),
        "polls": celery_worker_args(POLL_QUEUE, poll_concurrency, f"polls-{pid}", loglevel),
    }


def _die_with_parent() -> None:
    """In a child before exec: get SIGTERM if the supervisor dies, so nothing is orphaned."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(
    args: list[str], env: dict[str, str], output: BinaryIO | None
) -> subprocess.Popen[bytes]:
    # Its own process group: the terminal's Ctrl-C does not reach it, only our one SIGTERM.
    return subprocess.Popen(
        args,
        env=env,
        preexec_fn=_die_with_parent,
        process_group=0,
        stdout=output,
        stderr=output,
    )


@dataclass
class Child:
    """One supervised process and how to start it again."""

    args: list[str]
    env: dict[str, str]
    restart: bool
    proc: subprocess.Popen[bytes]
    stop_last: bool = False  # infrastructure (Redis, the sandbox): stopped after the rest
    output: BinaryIO | None = None  # where its stdout and stderr go (None: ours)
    restarts: list[float] = field(default_factory=list)  # monotonic times of restarts


@dataclass
class Supervisor:
    """Starts children; restarts those that may be restarted; stops all on a signal.

    Celery workers are restarted when they die (a Redis outage can make one exit with an
    "Unrecoverable error" inside kombu); Redis messages they held come back after the
    visibility timeout. A child that keeps dying, or one not meant to restart, stops all.
    """

    children: dict[str, Child] = field(default_factory=dict)
    #: Where children started with an `output` file print, named in exit messages.
    log_path: Path | None = None
    _stopping: bool = False

    def start(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        restart: bool = False,
        stop_last: bool = False,
        output: BinaryIO | None = None,
    ) -> None:
        """Start one child process printing to `output` (default: our stdout/stderr).

        `stop_last` marks infrastructure the others depend on: it is stopped only after
        every other child has exited.
        """
        environment = dict(env or os.environ)
        proc = _spawn(list(args), environment, output)
        self.children[name] = Child(list(args), environment, restart, proc, stop_last, output)
        log.info("stack.started", child=name, pid=proc.pid)

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        self._stopping = True

    def _revive(self, name: str, child: Child) -> bool:
        """Restart a dead child if it may be restarted and is not crash-looping."""
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_S]
        if not child.restart or len(child.restarts) >= MAX_RESTARTS_PER_WINDOW:
            return False
        time.sleep(RESTART_DELAY_S)
        if self._stopping:  # it died of the same Ctrl-C that is stopping us
            return True
        child.restarts.append(now)
        child.proc = _spawn(child.args, child.env, child.output)
        log.warning("stack.restarted", child=name, pid=child.proc.pid)
        return True

    def run_until_stopped(self) -> int:
        """Block until a signal or a fatal child exit; stop everything; return an exit code."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        code = 0
        try:
            while not self._stopping:
                for name, child in self.children.items():
                    if child.proc.poll() is None or self._stopping:
                        continue
                    where = {"log": str(self.log_path)} if child.output and self.log_path else {}
                    log.error("stack.child_exited", child=name, code=child.proc.returncode, **where)
                    if not self._revive(name, child):
                        code = 1
                        self._stopping = True
                time.sleep(0.2)
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def stop(self) -> None:
        """Stop the workers and tools first, then the infrastructure they use.

        Each group gets SIGTERM (a warm shutdown for Celery), then a kill after a grace.
        """
        for last in (False, True):
            group = {n: c for n, c in reversed(self.children.items()) if c.stop_last is last}
            for child in group.values():
                if child.proc.poll() is None:
                    child.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for name, child in group.items():
                try:
                    child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("stack.killing", child=name)
                    child.proc.kill()
                    child.proc.wait(timeout=5)
                log.info("stack.child_stopped", child=name)
        log.info("stack.stopped")


def redis_answers(url: str) -> bool:
    """Whether a Redis server (for Sentinel URLs: the primary) answers PING within a second."""
    from worker.connection import connect_redis
    from worker.settings import Settings

    try:
        client = connect_redis(Settings(redis_url=url), timeout_s=1.0)
        return bool(client.ping())
    except (redis.RedisError, ValueError):
        return False


def redis_persistence(url: str) -> str | None:
    """What a running Redis keeps across a restart, for people: None if AOF is on, else a
    warning (RDB snapshots only, nothing at all, or unknown when CONFIG is refused, as
    managed Redis services often do)."""
    from worker.connection import connect_redis
    from worker.settings import Settings

    client = connect_redis(Settings(redis_url=url), timeout_s=1.0)
    try:
        config = client.config_get("appendonly")
        config.update(client.config_get("save"))
    except redis.ResponseError as exc:  # CONFIG renamed or disabled
        try:
            aof = str(client.info("persistence").get("aof_enabled")) == "1"
        except redis.RedisError:
            aof = False
        if aof:
            return None
        return f"persistence unknown: it refused CONFIG GET ({exc}); make sure AOF is on"
    except redis.RedisError as exc:
        return f"persistence unknown: {exc}"
    finally:
        client.close()
    if config.get("appendonly") == "yes":
        return None
    if config.get("save", "").strip():
        return (
            f"persistence: RDB snapshots only (save {config['save']}), no AOF: a crash "
            "loses what changed since the last snapshot"
        )
    return (
        "NO persistence (appendonly no, no RDB saves): a restart loses every waiting "
        "cancel, record and armed switch (redis-cli CONFIG SET appendonly yes)"
    )


def workers_ready(url: str, namespace: str, queues: Sequence[str], since_ms: int) -> bool:
    """Whether a worker of each queue has said so (its dispatcher's heartbeat) since `since_ms`:
    it consumes, and the accounts it serves are registered, so a request is accepted."""
    import json

    from worker.connection import connect_redis
    from worker.keys import Keys
    from worker.settings import Settings

    try:
        client = connect_redis(Settings(redis_url=url), timeout_s=1.0)
        entries = [json.loads(raw) for raw in client.hgetall(Keys(namespace).workers).values()]
    except (redis.RedisError, ValueError):
        return False
    seen = {q for e in entries if int(e.get("seen_ms", 0)) >= since_ms for q in e["queues"]}
    return set(queues) <= seen


def replica_in_sync(port: int) -> bool:
    """Whether the local replica on `port` finished its first sync (so it acknowledges WAIT)."""
    try:
        client = redis.Redis(port=port, socket_timeout=1.0, socket_connect_timeout=1.0)
        with client:
            return bool(client.info("replication").get("master_link_status") == "up")
    except redis.RedisError:
        return False


@dataclass(frozen=True)
class SentinelLayout:
    """A local primary, a replica and three Sentinels watching them (for `run --sentinel`
    and the failover tests); every port on loopback."""

    primary_port: int
    replica_port: int
    sentinel_ports: tuple[int, int, int]
    master_name: str = "mymaster"
    down_after_ms: int = 1000  # the Sentinels call the primary down after this much silence
    failover_timeout_ms: int = 3000  # and a failed attempt is retried after twice this

    @property
    def redis_url(self) -> str:
        """REDIS_URL in Celery's Sentinel form."""
        return ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports) + "/0"

    def commands(self, data_dir: Path) -> dict[str, list[str]]:
        """The five redis-server commands (AOF on both servers), writing Sentinel configs."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise ConfigError(
                "REDIS_URL", "redis-server is not on PATH: apt-get install redis-server"
            )
        commands: dict[str, list[str]] = {}
        for name, port in (("primary", self.primary_port), ("replica", self.replica_port)):
            where = data_dir / name
            where.mkdir(parents=True, exist_ok=True)
            commands[name] = [
                binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(where),
                "--appendonly", "yes", "--save", "", "--repl-diskless-sync-delay", "0",
            ]  # fmt: skip
        commands["replica"] += ["--replicaof", "127.0.0.1", str(self.primary_port)]
        for i, port in enumerate(self.sentinel_ports):
            where = data_dir / f"sentinel{i}"
            where.mkdir(parents=True, exist_ok=True)
            config = where / "sentinel.conf"  # Sentinels rewrite their config as they learn
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {where}\n"
                f"sentinel monitor {self.master_name} 127.0.0.1 {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {self.master_name} 1\n"
            )
            commands[f"sentinel{i}"] = [binary, str(config), "--sentinel"]
        return commands


def redis_server_args(url: str, data_dir: Path) -> list[str]:
    """An embedded redis-server on the URL's port, persisting (AOF) into data_dir."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError(
            "REDIS_URL",
            f"nothing answers at {url} and redis-server is not on PATH "
            "(install it: apt-get install redis-server)",
        )
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    if host not in ("localhost", "127.0.0.1", "::1"):
        raise ConfigError("REDIS_URL", f"{url} does not answer and is not local to start")
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        binary, "--bind", "127.0.0.1", "--port", str(parts.port or 6379),
        "--dir", str(data_dir.resolve()), "--appendonly", "yes", "--save", "",
    ]  # fmt: skip


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, log_path: Path | None = None
) -> None:
    """Poll `check` until it is true, or raise ConfigError after timeout_s (naming the log)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            see = f"; its output is in {log_path}" if log_path else ""
            raise ConfigError("run", f"{what} did not come up within {timeout_s:g}s{see}")
        time.sleep(0.1)


@dataclass(frozen=True)
class RunOptions:
    """What `cancel-worker run` starts, and where."""

    data_dir: Path = Path(DEFAULT_DATA_DIR)
    sentinel: bool = False  # a primary, a replica and three Sentinels instead of one Redis
    sandbox_port: int = DEFAULT_SANDBOX_PORT
    flower_port: int = DEFAULT_FLOWER_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    cancel_concurrency: int = DEFAULT_CANCEL_CONCURRENCY
    poll_concurrency: int = DEFAULT_POLL_CONCURRENCY
    verbose: bool = False  # the children print on our terminal instead of into RUN_LOG
    drop_leftovers: bool = False  # an earlier run's unfinished work ends FAILED(dropped)


def open_run_log(data_dir: Path) -> tuple[Path, BinaryIO]:
    """A fresh RUN_LOG in data_dir (the previous one kept as RUN_LOG.1), open for the children."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / RUN_LOG
    if path.exists():
        path.replace(data_dir / f"{RUN_LOG}.1")
    return path, open(path, "ab")  # the children write it until run ends


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "worker.cli", *args]


def _cli_hint() -> str:
    """How another shell runs this CLI: by name if it is on PATH, else by its full path."""
    if shutil.which("cancel-worker"):
        return "cancel-worker"
    return str(Path(sys.executable).parent / "cancel-worker")


def _http_ok(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=1).ok
    except requests.RequestException:
        return False


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on this TCP port."""
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def check_ports(ports: Mapping[str, tuple[int, str]]) -> None:
    """Refuse, before anything starts, ports another process holds: name → (port, flag)."""
    for what, (port, flag) in ports.items():
        if port_in_use(port):
            raise ConfigError(
                flag,
                f"port {port} ({what}) is already in use, perhaps by another "
                f"`cancel-worker run`: stop it, or choose another port with {flag}",
            )


def without_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """The environment for processes that never sign: no COINSWITCH_*_SECRET_KEY."""
    return {k: v for k, v in env.items() if not (k.startswith("COINSWITCH_") and "SECRET" in k)}


def leftover_lines(env: Mapping[str, str], *, drop: bool, sandbox: bool) -> list[str]:
    """The banner's word on work an earlier run left in this Redis (before workers start,
    so none of it has moved yet): dropped with `drop`, else how much waits, and where."""
    from worker import leftovers
    from worker.services import Services
    from worker.settings import Settings

    services = Services(Settings.from_env(env))
    try:
        if drop:
            orders, batches = leftovers.drop(services)
            if not orders and not batches:
                return []
            return [
                f"Leftovers   dropped {orders} order(s) and {batches} cancel-all(s) an earlier "
                "run left: FAILED(dropped)"
            ]
        found = leftovers.find(services)
    finally:
        services.redis.close()
    if not found:
        return []
    why = (
        "against this NEW sandbox they can only end FAILED(order_not_found)"
        if sandbox
        else "they go on now"
    )
    return [
        "Leftovers   an earlier run left work in this Redis:",
        *(f"            {account.text()}" for account in found),
        f"            {why}; `run --drop-leftovers` starts with empty lines instead",
    ]


def run_stack(options: RunOptions) -> int:
    """Bring the whole stack up on this machine, print where to look, run until Ctrl-C."""
    from worker.connection import is_sentinel_url
    from worker.sandbox import AdminClient, generate_keypair
    from worker.settings import DEFAULT_NAMESPACE, DEFAULT_REDIS_URL, redact_url

    env = dict(os.environ)
    env.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    layout = None
    if is_sentinel_url(env["REDIS_URL"]) and (
        options.sentinel or not redis_answers(env["REDIS_URL"])
    ):
        raise ConfigError(
            "REDIS_URL",
            f"{redact_url(env['REDIS_URL'])} names Sentinels that "
            + ("--sentinel cannot start" if options.sentinel else "do not answer")
            + "; `run --sentinel` starts its own from a redis:// URL's port",
        )
    if options.sentinel:
        base = urlsplit(env["REDIS_URL"]).port or 6379
        layout = SentinelLayout(base, base + 1, (base + 2, base + 3, base + 4))
        env["REDIS_URL"] = layout.redis_url
    redis_url = env["REDIS_URL"]
    use_sandbox = not (env.get("COINSWITCH_API_KEY") and env.get("COINSWITCH_SECRET_KEY"))
    wanted = {"Flower": (options.flower_port, "--flower-port")}
    wanted["metrics"] = (options.metrics_port, "--metrics-port")
    if use_sandbox:
        wanted["the sandbox"] = (options.sandbox_port, "--sandbox-port")
    if layout is not None:
        wanted["the Redis primary"] = (layout.primary_port, "REDIS_URL")
        wanted["the Redis replica"] = (layout.replica_port, "REDIS_URL")
        for port in layout.sentinel_ports:
            wanted[f"a Sentinel ({port})"] = (port, "REDIS_URL")
    check_ports(wanted)
    log_path: Path | None = None
    output: BinaryIO | None = None
    if not options.verbose:  # the children's banners and warnings would bury ours
        log_path, output = open_run_log(options.data_dir)
    supervisor = Supervisor(log_path=log_path)
    lines: list[str] = []

    def start(
        name: str, args: Sequence[str], child_env: Mapping[str, str] | None = None, **how: bool
    ) -> None:
        """Start a child whose output goes where run's option says."""
        supervisor.start(name, args, child_env, output=output, **how)

    def wait(check: Callable[[], bool], what: str) -> None:
        wait_until(check, READY_TIMEOUT_S, what, log_path)

    try:
        if layout is not None:
            for name, command in layout.commands(options.data_dir / "sentinel").items():
                start(name, command, stop_last=True)
            wait(lambda: redis_answers(redis_url), "the Sentinels' primary")
            wait(lambda: replica_in_sync(layout.replica_port), "the replica")
            lines += [
                f"Redis       primary :{layout.primary_port}, replica :{layout.replica_port}, "
                f"Sentinels {', '.join(map(str, layout.sentinel_ports))} (master "
                f"{layout.master_name}; data in {options.data_dir}/sentinel)",
                f"            try a failover: redis-cli -p {layout.primary_port} shutdown nosave",
            ]
        elif redis_answers(redis_url):
            lines.append(
                f"Redis       {redact_url(redis_url)}: REUSED, a Redis already answering there "
                "(run did not start it and leaves it running)"
            )
            persistence = redis_persistence(redis_url)
            if persistence is not None:
                lines.append(f"            WARNING: {persistence}")
        else:
            redis_args = redis_server_args(redis_url, options.data_dir / "redis")
            start("redis", redis_args, stop_last=True)
            wait(lambda: redis_answers(redis_url), "redis-server")
            lines.append(
                f"Redis       {redact_url(redis_url)} (embedded, AOF data in "
                f"{options.data_dir}/redis)"
            )
        if use_sandbox:
            api_key, secret_key = generate_keypair()
            sandbox_url = f"http://127.0.0.1:{options.sandbox_port}"
            # A fresh seed per start: sandbox order ids must not repeat ids that records
            # of an earlier run (kept in a persistent Redis) already describe.
            sandbox_args = _cli(
                "sandbox", "--port", str(options.sandbox_port), "--api-key", api_key
            )
            start("sandbox", [*sandbox_args, "--seed", str(secrets.randbits(32))], stop_last=True)
            env.update(
                COINSWITCH_BASE_URL=sandbox_url,
                COINSWITCH_API_KEY=api_key,
                COINSWITCH_SECRET_KEY=secret_key,
            )
            wait(lambda: _http_ok(f"{sandbox_url}/_sandbox/health"), "sandbox")
            demo = AdminClient(sandbox_url).create_order(
                symbol="DOGEUSDT", side="BUY", order_type="LIMIT", quantity="22", price="0.28"
            )
            lines += [
                f"Exchange    SANDBOX at {sandbox_url}: no COINSWITCH_API_KEY/SECRET_KEY set,",
                "            so nothing reaches CoinSwitch. A demo order is open on it; from",
                "            another shell (it needs only REDIS_URL):",
                f"            REDIS_URL={shlex.quote(redis_url)} {_cli_hint()} cancel "
                f"{demo['order_id']} --wait",
                f"            (more: curl -s -XPOST {sandbox_url}/_sandbox/orders "
                '-d \'{"symbol":"DOGEUSDT","side":"BUY","order_type":"LIMIT",'
                '"quantity":"1","price":"0.1"}\')',
                "            The sandbox keeps its orders in memory: a cancel still pending when",
                "            `run` stops can only end FAILED(order_not_found) against the next",
                "            one (`run --drop-leftovers` ends such leftovers FAILED(dropped)).",
            ]
        else:
            lines.append(f"Exchange    {env.get('COINSWITCH_BASE_URL', 'https://coinswitch.co')}")
        lines += leftover_lines(env, drop=options.drop_leftovers, sandbox=use_sandbox)
        workers_since_ms = time.time_ns() // 1_000_000
        for name, args in worker_commands(
            options.cancel_concurrency, options.poll_concurrency
        ).items():
            start(name, args, env, restart=True)  # the only processes that sign
        options.data_dir.mkdir(parents=True, exist_ok=True)
        reader_env = without_secrets(env)
        flower = [
            sys.executable, "-m", "celery", "-A", "worker", "flower",
            "--address=127.0.0.1", f"--port={options.flower_port}",
        ]  # fmt: skip
        flower_env = dict(reader_env)
        if not env.get("FLOWER_BASIC_AUTH"):
            # Loopback only: let the local user read Flower's API without credentials.
            flower_env["FLOWER_UNAUTHENTICATED_API"] = "true"
        start("flower", flower, flower_env)
        start("metrics", _cli("metrics", "--port", str(options.metrics_port)), reader_env)
        flower_url = f"http://127.0.0.1:{options.flower_port}"
        metrics_url = f"http://127.0.0.1:{options.metrics_port}/metrics"
        wait(lambda: _http_ok(f"{flower_url}/healthcheck"), "Flower")
        wait(lambda: _http_ok(metrics_url), "metrics")
        namespace = env.get("CANCEL_WORKER_NAMESPACE") or DEFAULT_NAMESPACE
        queues = (CANCEL_QUEUE, POLL_QUEUE)
        wait(lambda: workers_ready(redis_url, namespace, queues, workers_since_ms), "the workers")
        lines += [
            "Workers     cancels + polls (Celery, threads pool; each dispatches and sweeps)",
            f"Flower      {flower_url}"
            + ("  (auth from FLOWER_BASIC_AUTH)" if env.get("FLOWER_BASIC_AUTH") else ""),
            f"Metrics     {metrics_url}",
        ]
        if log_path is not None:
            lines.append(
                f"Logs        {log_path}: what the workers, Flower, metrics, the sandbox and "
                "Redis print (--verbose: here instead)"
            )
        lines.append("Ctrl-C stops everything.")
        print("\ncancel-worker is running\n  " + "\n  ".join(lines) + "\n", flush=True)
    except BaseException:
        supervisor.stop()
        if output is not None:
            output.close()
        raise
    try:
        return supervisor.run_until_stopped()
    finally:
        if output is not None:
            output.close()
