"""Running it like production: `cancel-worker run`, the Procfile, docker-compose.yml."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import redis
import requests
import yaml

from tests.conftest import SERVICE_ENV
from tests.redis_server import free_port, free_ports, redis_server
from tests.support import ROOT, place_orders, wait_for
from worker.sandbox import AdminClient, SandboxHandle
from worker.stack import redis_persistence

pytestmark = pytest.mark.integration

RUN_START_TIMEOUT_S = 60.0
BIN_DIR = str(Path(sys.executable).parent)


def path_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with this interpreter's scripts (cancel-worker, celery) first on PATH."""
    env = dict(env)
    env["PATH"] = BIN_DIR + os.pathsep + env.get("PATH", "")
    return env


class Output:
    """Collects one of a child's streams in a thread, so waits never block on a pipe."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None
        self.text = ""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            with self._lock:
                self.text += line

    def events(self) -> list[dict[str, Any]]:
        """The structlog JSON lines among the text."""
        return [json.loads(line) for line in self.text.splitlines() if line.startswith("{")]


def started_pids(errors: Output) -> list[int]:
    """Pids of the children `run` says it started."""
    return [e["pid"] for e in errors.events() if e.get("event") == "stack.started"]


def alive(pid: int) -> bool:
    """Whether a process (not a zombie) with this pid exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextlib.contextmanager
def running(redis_url: str, *extra: str) -> Iterator[dict[str, Any]]:
    """`cancel-worker run` with no keys set, until the stack says it is running; yields its
    stdout ("output"), stderr ("errors") and data dir."""
    ports = {name: free_port() for name in ("sandbox", "flower", "metrics")}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COINSWITCH_", "CANCEL_"))}
    env["REDIS_URL"] = redis_url
    with tempfile.TemporaryDirectory(prefix="cw-run-") as data_dir:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "worker.cli", "run", "--data-dir", data_dir,
                "--sandbox-port", str(ports["sandbox"]),
                "--flower-port", str(ports["flower"]),
                "--metrics-port", str(ports["metrics"]),
                *extra,
            ],
            cwd=ROOT,
            env=path_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )  # fmt: skip
        output, errors = Output(proc.stdout), Output(proc.stderr)
        try:
            wait_for(
                lambda: "Ctrl-C stops everything." in output.text or proc.poll() is not None,
                RUN_START_TIMEOUT_S,
                "the stack to come up",
            )
            assert proc.poll() is None, (output.text + errors.text)[-3000:]
            yield {
                "proc": proc,
                "output": output,
                "errors": errors,
                "env": env,
                "ports": ports,
                "data_dir": Path(data_dir),
            }
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # its children get SIGTERM (PDEATHSIG)
                proc.wait(timeout=10)
                with contextlib.suppress(TimeoutError):
                    wait_for(lambda: not stack_processes(redis_url), 20, "the children to exit")
                for pid in stack_processes(redis_url):  # only processes given this REDIS_URL
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def stack() -> Iterator[dict[str, Any]]:
    """`cancel-worker run` on a machine where nothing answers at REDIS_URL and no keys are set."""
    with running(f"redis://127.0.0.1:{free_port()}/0") as started:
        yield started


def demo_cancel(output: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    """Run the demo command `run` printed, from a shell that has only REDIS_URL."""
    command = rf"REDIS_URL={re.escape(shlex.quote(redis_url))} \S*cancel-worker cancel"
    pattern = command + r" ([0-9a-f-]{36}) --wait"
    match = re.search(pattern, output)
    assert match, output[-3000:]
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "cancel", match.group(1), "--wait", "--timeout", "60"],
        cwd=ROOT,
        env=path_env(
            {k: v for k, v in os.environ.items() if not k.startswith("COINSWITCH_")}
            | {"REDIS_URL": redis_url}
        ),
        capture_output=True,
        text=True,
        timeout=90,
    )


def cli(redis_url: str, *args: str) -> str:
    """Run `cancel-worker ARGS` from a shell that has only REDIS_URL; return its stdout."""
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("COINSWITCH_")}
        | {"REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def stack_processes(redis_url: str) -> dict[int, tuple[str, dict[str, str]]]:
    """pid → (command line, environment) of every process started with this REDIS_URL."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw_env = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        env = dict(item.decode(errors="replace").split("=", 1) for item in raw_env if b"=" in item)
        if env.get("REDIS_URL") == redis_url:
            found[int(entry.name)] = (cmdline, env)
    return found


#: What the children print that must not reach run's terminal: Celery's banner, its root
#: warning and shutdown lines, Flower's failed inspections.
CHILD_NOISE = ("[config]", "[queues]", "SecurityWarning", "Warm shutdown", "Inspect method")


def test_run_brings_up_a_working_stack_and_stops_clean(stack: dict[str, Any]) -> None:
    """`run` with no Redis and no keys: embedded Redis and sandbox, a demo order cancels with
    the printed command, Flower lists the task, metrics count it, only the workers hold the
    secret; the terminal shows run's own lines with the banner last, the children's output
    goes to DATA_DIR/run.log; Ctrl-C gives each child one SIGTERM (one warm shutdown per
    worker, no traceback) and stops the workers and tools before the sandbox and Redis,
    leaving no process behind."""
    proc, output, errors, ports = stack["proc"], stack["output"], stack["errors"], stack["ports"]
    redis_url = stack["env"]["REDIS_URL"]
    run_log = stack["data_dir"] / "run.log"
    assert "(embedded, AOF data in" in output.text
    assert "SANDBOX" in output.text and "nothing reaches CoinSwitch" in output.text
    assert output.text.rstrip().endswith("Ctrl-C stops everything."), output.text[-1000:]
    assert f"Logs        {run_log}: " in output.text
    # The terminal holds run's own lines only: its banner and its own log events.
    assert all(line.startswith("{") for line in errors.text.splitlines()), errors.text[-2000:]
    assert {event["logger"] for event in errors.events()} == {"worker.stack"}
    for noise in CHILD_NOISE:
        assert noise not in output.text + errors.text, noise
    # The demo command carries the REDIS_URL another shell needs (no key is needed).
    order_id = re.findall(r"cancel ([0-9a-f-]{36}) --wait", output.text)[0]

    processes = stack_processes(redis_url)
    signers = [env for cmd, env in processes.values() if " worker -Q " in cmd]
    readers = [env for cmd, env in processes.values() if " flower" in cmd or " metrics" in cmd]
    assert signers and len(readers) >= 2
    assert all("COINSWITCH_SECRET_KEY" in env for env in signers)
    assert not any(k for env in readers for k in env if "SECRET" in k)

    result = demo_cancel(output.text, redis_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "summary: 1 CANCELLED"

    flower = f"http://127.0.0.1:{ports['flower']}"

    def flower_task() -> dict[str, Any] | None:
        tasks = requests.get(f"{flower}/api/tasks", timeout=5).json()
        for task in tasks.values():
            if task.get("name") == "cancel_worker.cancel_turn" and order_id in task["args"]:
                return dict(task)
        return None

    task = wait_for(flower_task, 20, "Flower to list the cancel task")
    assert task["state"] == "SUCCESS"
    assert task["uuid"].startswith(f"cancel-{order_id}-")  # findable by order id
    names = {t.get("name") for t in requests.get(f"{flower}/api/tasks", timeout=5).json().values()}
    assert "cancel_worker.sweep" not in names  # the sweep runs in the workers, not as tasks

    metrics = requests.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5).text
    assert 'cancel_worker_orders{state="CANCELLED"} 1.0' in metrics
    assert 'cancel_worker_requests_total{account="default",bucket="cancel"} 1.0' in metrics
    assert "cancel_worker_time_to_final_seconds_count 1.0" in metrics

    # A cancel-all's orders, settled through the order lists, have no task of their own:
    # `status ID` names their batch, and Flower's search by it finds the cancel-all task.
    admin = AdminClient(f"http://127.0.0.1:{ports['sandbox']}")
    place_orders(admin, 2, symbol="ETHUSDT")
    batch_id = json.loads(cli(redis_url, "cancel-all", "--symbol", "ETHUSDT", "--json"))["batch_id"]
    wait_for(
        lambda: json.loads(cli(redis_url, "status", batch_id, "--json"))["state"] == "DONE",
        30,
        "the cancel-all to be done",
    )
    orders = json.loads(cli(redis_url, "status", batch_id, "--json"))["orders_ids"]
    assert len(orders) == 2
    assert f"  batch={batch_id}" in cli(redis_url, "status", orders[0])

    def found_by_batch() -> list[dict[str, Any]]:
        found = requests.get(f"{flower}/api/tasks", params={"search": batch_id}, timeout=5)
        return [
            t for t in found.json().values() if t.get("name") == "cancel_worker.cancel_all_turn"
        ]

    cancel_all_task = wait_for(found_by_batch, 20, "Flower's search to find the cancel-all")[0]
    assert cancel_all_task["uuid"].startswith(f"cancel_all-{batch_id}-")
    assert batch_id in cancel_all_task["kwargs"]

    signalled_at = len(output.text), len(errors.text)
    children = started_pids(errors)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert proc.wait(timeout=40) == 0, errors.text[-3000:]
    wait_for(lambda: not any(alive(pid) for pid in children), 10, "every child to exit")
    wait_for(lambda: not stack_processes(redis_url), 10, "Redis and the sandbox to exit")
    shutdown = output.text[signalled_at[0] :] + errors.text[signalled_at[1] :]
    stopped = [e["child"] for e in errors.events() if e["event"] == "stack.child_stopped"]
    assert set(stopped[-2:]) == {"redis", "sandbox"}, stopped  # the infrastructure goes last
    assert "CRITICAL" not in shutdown and "Traceback" not in shutdown, shutdown[-3000:]
    children_output = run_log.read_text()
    assert "[queues]" in children_output  # Celery's banner went to the log
    # One stop signal each: the terminal's SIGINT no longer reaches the children as well as
    # the supervisor's SIGTERM (two made Flower exit with a traceback from its atexit).
    assert children_output.count("Warm shutdown") == 2, children_output[-3000:]
    assert "Hitting Ctrl+C again" not in children_output
    assert "Traceback" not in children_output, children_output[-3000:]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_run_sentinel_serves_through_a_primary_a_replica_and_three_sentinels() -> None:
    """`run --sentinel`: a primary, a replica and three Sentinels; the demo command, with
    the Sentinel REDIS_URL it prints, cancels the order; Ctrl-C leaves nothing behind."""
    base = free_ports(5)[0]
    with running(f"redis://127.0.0.1:{base}/0", "--sentinel") as started:
        proc, output = started["proc"], started["output"]
        sentinel_url = ";".join(f"sentinel://127.0.0.1:{base + i}" for i in (2, 3, 4)) + "/0"
        assert f"redis-cli -p {base} shutdown nosave" in output.text
        replica = redis.Redis(port=base + 1, decode_responses=True)
        assert replica.info("replication")["role"] == "slave"
        result = demo_cancel(output.text, sentinel_url)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-1] == "summary: 1 CANCELLED"
        children = started_pids(started["errors"])
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=40) == 0, started["errors"].text[-3000:]
        wait_for(lambda: not any(alive(pid) for pid in children), 10, "every child to exit")
        assert all(port_is_free(base + i) for i in range(5))


@pytest.mark.parametrize(
    ("appendonly", "extra_args", "warning"),
    [
        (True, (), None),
        (False, ("--save", "900 1"), "persistence: RDB snapshots only (save 900 1), no AOF"),
        (False, (), "NO persistence (appendonly no, no RDB saves)"),
        (False, ("--rename-command", "CONFIG", ""), "persistence unknown: it refused CONFIG"),
        (True, ("--rename-command", "CONFIG", ""), None),  # INFO still shows AOF on
    ],
    ids=["aof", "rdb-only", "none", "config-refused", "config-refused-aof"],
)
def test_a_running_redis_is_told_by_what_it_keeps(
    appendonly: bool, extra_args: tuple[str, ...], warning: str | None
) -> None:
    """What `run` says of a Redis it reuses: nothing with AOF on; RDB-only or no persistence
    named; unknown when CONFIG is refused (as managed services do) and INFO shows no AOF."""
    with redis_server(appendonly=appendonly, extra_args=extra_args) as url:
        said = redis_persistence(url)
    if warning is None:
        assert said is None
    else:
        assert said is not None and said.startswith(warning), said


def test_run_says_it_reuses_a_redis_that_keeps_nothing() -> None:
    """`run` against a Redis already answering at REDIS_URL (AOF off, no RDB saves) says it
    reuses it and warns that it has no persistence, in the banner; Ctrl-C leaves it running."""
    with redis_server() as url, running(url) as started:
        proc, output = started["proc"], started["output"]
        assert f"Redis       {url}: REUSED, a Redis already answering there" in output.text
        assert "WARNING: NO persistence (appendonly no, no RDB saves)" in output.text
        assert "embedded" not in output.text
        assert output.text.rstrip().endswith("Ctrl-C stops everything.")
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=40) == 0, started["errors"].text[-3000:]
        assert redis.Redis.from_url(url).ping()  # not ours to stop


def test_a_second_run_is_refused_before_it_starts_anything(stack: dict[str, Any]) -> None:
    """`run` on ports another stack holds exits 4 at once, naming the flag to change."""
    ports = stack["ports"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COINSWITCH_", "CANCEL_"))}
    result = subprocess.run(
        [
            sys.executable, "-m", "worker.cli", "run",
            "--sandbox-port", str(ports["sandbox"]),
            "--flower-port", str(ports["flower"]),
            "--metrics-port", str(ports["metrics"]),
        ],
        cwd=ROOT,
        env=path_env({**env, "REDIS_URL": stack["env"]["REDIS_URL"]}),
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 4, result.stdout + result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert "already in use" in error and "--flower-port" in error
    assert "cancel-worker is running" not in result.stdout


def test_run_help_gives_every_option_a_default() -> None:
    """`run --help` describes each option with its default, and the exit codes."""
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "run", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    text = " ".join(result.stdout.split())
    for option in ("--data-dir", "--sandbox-port", "--flower-port", "--metrics-port",
                   "--cancel-concurrency", "--poll-concurrency"):  # fmt: skip
        described = text.split(option, 2)[-1].split("(default:", 1)
        assert len(described) == 2 and len(described[0]) > 10, option
    assert "exit codes:" in result.stdout


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def as_exec(line: str) -> str:
    """A Procfile line run so that its process replaces the shell (its pid is the shell's)."""
    return line if line.startswith((":", "exec ")) else f"exec {line}"


def test_procfile_has_the_production_process_types() -> None:
    """The Procfile declares worker, flower and metrics (workers sweep; no beat is needed)."""
    assert set(procfile()) == {"worker", "flower", "metrics"}


@pytest.mark.parametrize("process_type", ["worker", "flower", "metrics"])
def test_procfile_command_answers(
    process_type: str, redis_url: str, sandbox: SandboxHandle, tmp_path: Path
) -> None:
    """Each Procfile command starts as written and answers (ping, HTTP, or its ready line)."""
    flower_port, metrics_port = free_port(), free_port()
    node = f"procfile-{uuid.uuid4().hex[:6]}"
    env = path_env(
        {
            **os.environ,
            **SERVICE_ENV,
            "FLOWER_PORT": str(flower_port),
            "METRICS_PORT": str(metrics_port),
            "FLOWER_BASIC_AUTH": "ops:secret-pass",
        }
    )
    log_path = tmp_path / "out.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["sh", "-c", as_exec(procfile()[process_type])],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        if process_type == "worker":
            from worker.celery_app import app

            def both_queues_consumed() -> bool:
                replies = app.control.inspect(timeout=0.5).active_queues() or {}
                mine = {q["name"] for n, qs in replies.items() if f"-{proc.pid}@" in n for q in qs}
                return mine == {"cancels", "polls"}

            wait_for(both_queues_consumed, 40, f"{node}: both queues consumed")
        elif process_type == "flower":
            url = f"http://127.0.0.1:{flower_port}"
            wait_for(lambda: _get(f"{url}/healthcheck") == 200, 30, "Flower")
            assert _get(f"{url}/api/workers") == 401  # basic auth from FLOWER_BASIC_AUTH
            ok = requests.get(f"{url}/api/workers", auth=("ops", "secret-pass"), timeout=5)
            assert ok.status_code == 200
        else:
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            wait_for(lambda: _get(url) == 200, 30, "metrics")
            assert "cancel_worker_budget_limit" in requests.get(url, timeout=5).text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def test_procfile_flower_refuses_to_start_without_auth(tmp_path: Path) -> None:
    """Flower listens on 0.0.0.0 in the Procfile, so without FLOWER_BASIC_AUTH it refuses
    to start, saying what to set."""
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    result = subprocess.run(
        ["sh", "-c", procfile()["flower"]],
        cwd=tmp_path, env=path_env(env), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode != 0
    assert "set FLOWER_BASIC_AUTH=user:password" in result.stderr


def _get(url: str) -> int:
    try:
        return requests.get(url, timeout=2).status_code
    except requests.RequestException:
        return 0


def test_compose_file_is_production_shaped() -> None:
    """docker-compose.yml: AOF Redis with a volume and health check, scalable worker, Flower
    with auth from env on 5555, the sandbox under a profile, and no credential baked in."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) >= {"redis", "worker", "flower", "metrics", "sandbox"}
    assert "beat" not in services  # every worker's dispatcher sweeps
    redis_service = services["redis"]
    assert "--appendonly" in redis_service["command"] and "yes" in redis_service["command"]
    assert redis_service["healthcheck"]["test"][-1] == "ping"
    assert any(v.split(":")[0] in compose["volumes"] for v in redis_service["volumes"])
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker  # so --scale works
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH")
    assert "5555:5555" in services["flower"]["ports"]
    assert services["sandbox"]["profiles"] == ["sandbox"]
    for name, service in services.items():
        environment = service.get("environment") or {}
        for key, value in environment.items():
            if "KEY" in key or "AUTH" in key or "SECRET" in key or "PASSWORD" in key:
                # Passed through by name (no value), or interpolated: never written here.
                assert value is None or str(value).startswith("${"), f"{name}.{key} is baked in"
        if name != "worker":  # only the processes that sign get a secret
            assert not [key for key in environment if "SECRET" in key], name
        command = service.get("command", [])
        assert all(isinstance(part, str) for part in command), name
    assert "COINSWITCH_SECRET_KEY" in services["worker"]["environment"]
    assert "--allow-remote" in " ".join(services["sandbox"]["command"])  # binds 0.0.0.0 there
    shlex.split(" ".join(services["worker"]["command"]))


def configuration_variables() -> set[str]:
    """Every variable named in the first column of the README's configuration table."""
    table = (ROOT / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    cells = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    return {name for cell in cells for name in re.findall(r"`([A-Z][A-Z0-9_<>]*)`", cell)}


def test_compose_passes_every_documented_setting_to_the_services_that_read_it() -> None:
    """Every variable of the README's configuration table reaches the worker service (named
    accounts' templated ones through its optional accounts.env); Flower and metrics get every
    setting but the accounts, keys and budgets, which only workers read."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    documented = configuration_variables()
    templated = {name for name in documented if "<" in name}
    assert templated and "COINSWITCH_CLOSED_ORDERS_RATE_LIMIT" in documented  # table parsed
    worker = services["worker"]
    missing = documented - templated - {"FLOWER_BASIC_AUTH"} - set(worker["environment"])
    assert not missing, f"documented but not passed to the worker: {sorted(missing)}"
    assert {"path": "accounts.env", "required": False} in worker["env_file"]  # <NAME> ones
    account_settings = {n for n in documented if n.startswith("COINSWITCH_")}
    for name in ("flower", "metrics"):
        environment = set(services[name]["environment"])
        missing = documented - templated - account_settings - {"FLOWER_BASIC_AUTH"} - environment
        assert not missing, f"{name} lacks {sorted(missing)}"
        assert not environment & account_settings, name  # the accounts would need keys
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    for service in (worker, services["flower"], services["metrics"]):
        for key, value in service["environment"].items():
            # Passed through by name, or interpolated from the same name: unset stays unset.
            assert value is None or str(value).startswith("${" + key), (key, value)


#: `${NAME:?...}` or `${NAME?...}` not escaped as `$${`: a variable Compose requires.
REQUIRED_VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*):?\?")


def test_compose_requires_only_what_every_command_needs() -> None:
    """Compose interpolates the whole file whatever the profiles, so no `${VAR:?}` may sit in
    a profile's service (the sandbox's key is checked by its own shell at start); only
    FLOWER_BASIC_AUTH, for the always-on Flower, is required."""
    text = (ROOT / "docker-compose.yml").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert set(REQUIRED_VARIABLE.findall("\n".join(lines))) == {"FLOWER_BASIC_AUTH"}
    services = yaml.safe_load(text)["services"]
    for name, service in services.items():
        if service.get("profiles"):
            assert not REQUIRED_VARIABLE.search(json.dumps(service)), name
    sandbox = " ".join(services["sandbox"]["command"])
    assert '"$${COINSWITCH_API_KEY:?' in sandbox and '--api-key "$$COINSWITCH_API_KEY"' in sandbox
    assert "COINSWITCH_API_KEY" in services["sandbox"]["environment"]


def test_compose_sentinel_profile_watches_the_primary() -> None:
    """The `sentinel` profile: a replica of `redis` and three Sentinels agreeing (quorum 2)
    on it; every process takes REDIS_URL from the environment, so the Sentinel URL reaches all."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    replica = services["redis-replica"]
    assert replica["profiles"] == ["sentinel"]
    assert replica["command"][-3:] == ["--replicaof", "redis", "6379"]
    sentinels = [services[f"sentinel-{i}"] for i in (1, 2, 3)]
    for sentinel in sentinels:
        assert sentinel["profiles"] == ["sentinel"]
        script = sentinel["command"][-1]
        assert "'sentinel monitor mymaster redis 6379 2'" in script
        assert script.endswith("--sentinel")
    for name in ("worker", "flower", "metrics"):
        assert services[name]["environment"]["REDIS_URL"].startswith("${REDIS_URL:-redis://")
    assert "sentinel://sentinel-1:26379;" in (ROOT / "docker-compose.yml").read_text()
