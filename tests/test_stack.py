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
from typing import Any

import pytest
import redis
import requests
import yaml

from tests.conftest import SERVICE_ENV
from tests.redis_server import free_port, free_ports
from tests.support import ROOT, wait_for
from worker.sandbox import SandboxHandle

pytestmark = pytest.mark.integration

RUN_START_TIMEOUT_S = 60.0
BIN_DIR = str(Path(sys.executable).parent)


def path_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with this interpreter's scripts (cancel-worker, celery) first on PATH."""
    env = dict(env)
    env["PATH"] = BIN_DIR + os.pathsep + env.get("PATH", "")
    return env


class Output:
    """Collects a child's merged output in a thread, so waits never block on a pipe."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.text = ""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._lock:
                self.text += line


def processes_in_group(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes whose process group is `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


@contextlib.contextmanager
def running(redis_url: str, *extra: str) -> Iterator[dict[str, Any]]:
    """`cancel-worker run` with no keys set, until the stack says it is running."""
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
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )  # fmt: skip
        output = Output(proc)
        try:
            wait_for(
                lambda: "cancel-worker is running" in output.text or proc.poll() is not None,
                RUN_START_TIMEOUT_S,
                "the stack to come up",
            )
            assert proc.poll() is None, output.text[-3000:]
            yield {"proc": proc, "output": output, "env": env, "ports": ports}
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


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


def test_run_brings_up_a_working_stack_and_stops_clean(stack: dict[str, Any]) -> None:
    """`run` with no Redis and no keys: embedded Redis and sandbox, a demo order cancels with
    the printed command, Flower lists the task, metrics count it, only the workers hold the
    secret, and Ctrl-C stops the workers and tools before the sandbox and Redis, leaving no
    process behind."""
    proc, output, ports = stack["proc"], stack["output"], stack["ports"]
    redis_url = stack["env"]["REDIS_URL"]
    assert "(embedded, data in" in output.text
    assert "SANDBOX" in output.text and "nothing reaches CoinSwitch" in output.text
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

    signalled_at = len(output.text)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert proc.wait(timeout=40) == 0, output.text[-3000:]
    wait_for(lambda: not processes_in_group(proc.pid), 10, "every child to exit")
    wait_for(lambda: not stack_processes(redis_url), 10, "Redis and the sandbox to exit")
    shutdown = output.text[signalled_at:]
    stopped = [
        json.loads(line)["child"]
        for line in shutdown.splitlines()
        if line.startswith("{") and '"stack.child_stopped"' in line
    ]
    assert set(stopped[-2:]) == {"redis", "sandbox"}, stopped  # the infrastructure goes last
    assert "CRITICAL" not in shutdown and "Traceback" not in shutdown, shutdown[-3000:]


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
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=40) == 0, output.text[-3000:]
        wait_for(lambda: not processes_in_group(proc.pid), 10, "every child to exit")
        assert all(port_is_free(base + i) for i in range(5))


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
            if "KEY" in key or "AUTH" in key or "SECRET" in key:
                assert str(value).startswith("${"), f"{name}.{key} is baked in"
        if name != "worker":  # only the processes that sign get a secret
            assert not [key for key in environment if "SECRET" in key], name
        command = service.get("command", [])
        assert all(isinstance(part, str) for part in command), name
    assert "COINSWITCH_SECRET_KEY" in services["worker"]["environment"]
    assert "--allow-remote" in services["sandbox"]["command"]  # it must bind 0.0.0.0 there
    shlex.split(" ".join(services["worker"]["command"]))


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
