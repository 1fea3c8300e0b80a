"""A throwaway redis-server on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

START_TIMEOUT_S = 10.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server(*, appendonly: bool = False, port: int | None = None) -> Iterator[str]:
    """Run redis-server from PATH on a free port in a temp dir; yield its URL; stop it after."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not on PATH: install it (apt-get install redis-server) "
            "or set REDIS_URL to a Redis the tests may use"
        )
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="cw-redis-") as data_dir:
        args = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", data_dir,
            "--save", "",
            "--appendonly", "yes" if appendonly else "no",
            "--daemonize", "no",
            "--logfile", str(Path(data_dir) / "redis.log"),
        ]  # fmt: skip
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            _wait_ready(url, proc)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {proc.returncode} at start-up")
        try:
            if client.ping():
                client.close()
                return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
