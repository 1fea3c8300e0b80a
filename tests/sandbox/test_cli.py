"""`cancel-worker sandbox` as a real subprocess: options, key printing, issue 2's acceptance."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.coinswitch_client import ORDER_PATH, CoinSwitchClient
from tests.sandbox.conftest import final_status, wait_for
from worker.sandbox import generate_keypair

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 10.0
OPTIONS = (
    "--host",
    "--port",
    "--api-key",
    "--cancel-limit",
    "--status-limit",
    "--place-limit",
    "--cancel-all-limit",
    "--list-limit",
    "--rate-scope",
    "--confirm-delay-ms",
    "--fill-race-rate",
    "--partial-fill-share",
    "--auto-fill-rate",
    "--auto-fill-delay-ms",
    "--error-rate",
    "--error-applied-share",
    "--timeout-rate",
    "--timeout-ms",
    "--malformed-rate",
    "--latency-ms",
    "--latency-jitter-ms",
    "--refuse-status",
    "--unknown-order-status",
    "--missing-epoch-status",
    "--seed",
    "--log-level",
)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m worker.cli ...` from the repo root and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def sandbox_process(
    args: list[str], log: Path, stop_signal: int = signal.SIGTERM
) -> Iterator[subprocess.Popen[str]]:
    """Start the sandbox CLI; stop it with a signal and check it exits 0."""
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "sandbox", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            yield proc
        finally:
            proc.send_signal(stop_signal)
            try:
                code = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            assert proc.stdout is not None
            proc.stdout.close()
    assert code == 0, log.read_text()


def read_until_listening(proc: subprocess.Popen[str]) -> list[str]:
    """Read stdout lines up to the 'listening' line."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if "listening" in line:
            return lines
    raise AssertionError(f"sandbox did not start: {lines}")


def test_help_lists_every_option() -> None:
    """`cancel-worker sandbox --help` documents every option with its default."""
    result = cli("sandbox", "--help")
    assert result.returncode == 0
    for option in OPTIONS:
        assert option in result.stdout
    assert "10/60s" in result.stdout and "8765" in result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--cancel-limit", "ten"], "argument --cancel-limit: 'ten' is not a rate"),
        (["--status-limit", "10/2x"], "argument --status-limit: '10/2x' is not a rate"),
        (["--api-key", "abc"], "argument --api-key"),
        (["--refuse-status", "500"], "argument --refuse-status"),
        (["--fill-race-rate", "2"], "argument --fill-race-rate"),
        (["--host", "example.com"], "argument --host: invalid host 'example.com'"),
        (["--host", "0.0.0.0"], "invalid host '0.0.0.0': loopback only (--allow-remote"),
    ],
)
def test_bad_option_is_an_argparse_error(args: list[str], fragment: str) -> None:
    """A bad value exits 2 with an error naming the option and value."""
    result = cli("sandbox", *args)
    assert result.returncode == 2
    assert fragment in result.stderr


def test_issue_2_acceptance_flow(tmp_path: Path) -> None:
    """Started as in issue 2, the sandbox serves place/cancel/poll, one 429 of 11, and 401s.
    The 11 DELETEs must all go within one 2 s window: 11 loopback requests need a small part
    of it, the rest is slack for a loaded 2-core machine."""
    public, secret = generate_keypair()
    port = free_port()
    args = ["--port", str(port), "--api-key", public, "--cancel-limit", "10/2s"]
    args += ["--status-limit", "20/2s", "--confirm-delay-ms", "200"]
    with sandbox_process(args, tmp_path / "sandbox.log") as proc:
        lines = read_until_listening(proc)
        url = f"http://127.0.0.1:{port}"
        assert f"COINSWITCH_BASE_URL={url}" in lines
        client = CoinSwitchClient(url, public, secret)

        placed = client.place(
            symbol="dogeusdt", side="buy", order_type="limit", quantity=22, price=0.28
        )
        assert placed.status_code == 200
        order_id = placed.json()["data"]["order_id"]
        first_cancel_at = time.monotonic()
        cancel = client.cancel(order_id)
        assert (cancel.status_code, cancel.json()["data"]["status"]) == (
            200,
            "CANCELLATION_RAISED",
        )
        assert final_status(client, order_id)["status"] == "CANCELLED"

        ids = []
        for _ in range(11):
            response = client.place(
                symbol="DOGEUSDT", side="BUY", order_type="LIMIT", quantity=1, price=0.1
            )
            ids.append(response.json()["data"]["order_id"])
        time.sleep(max(0.0, 2.05 - (time.monotonic() - first_cancel_at)))  # let the window pass
        started = time.monotonic()
        codes = [client.cancel(i).status_code for i in ids]
        assert time.monotonic() - started < 2.0
        assert codes.count(429) == 1 and codes.count(200) == 10

        _, wrong_secret = generate_keypair()
        bad_sig = client.request(
            "GET", ORDER_PATH, params={"order_id": order_id}, secret=wrong_secret
        )
        assert bad_sig.status_code == 401
        old_epoch = time.time_ns() // 1_000_000 - 120_000
        stale = client.request("GET", ORDER_PATH, params={"order_id": order_id}, epoch=old_epoch)
        assert stale.status_code == 401


def test_generated_keys_are_printed_and_work(tmp_path: Path) -> None:
    """Without --api-key the CLI prints a working key pair and the env lines; Ctrl-C exits 0."""
    log_path = tmp_path / "sandbox.log"
    with sandbox_process(["--port", "0"], log_path, stop_signal=signal.SIGINT) as proc:
        lines = read_until_listening(proc)
        env = dict(line.split("=", 1) for line in lines if line.startswith("COINSWITCH_"))
        assert set(env) == {"COINSWITCH_BASE_URL", "COINSWITCH_API_KEY", "COINSWITCH_SECRET_KEY"}
        assert any(env["COINSWITCH_SECRET_KEY"] in line for line in lines if "Secret" in line)
        client = CoinSwitchClient(
            env["COINSWITCH_BASE_URL"], env["COINSWITCH_API_KEY"], env["COINSWITCH_SECRET_KEY"]
        )
        wait_for(lambda: requests.get(f"{client.base_url}/_sandbox/health", timeout=5).ok)
        assert client.status("unknown").status_code == 404
    log = log_path.read_text()
    assert '"event": "request"' in log
    assert env["COINSWITCH_SECRET_KEY"] not in log
