"""A throwaway redis-server on a free loopback port, for tests, soak runs and benchmarks."""

from __future__ import annotations

import os
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
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Below Linux's ephemeral range (32768-60999): a client's outgoing connection cannot take
#: one of these between the check and the server's bind (a replica once failed to bind so).
FIXED_PORTS = range(20000, 32000)


def free_ports(count: int) -> list[int]:
    """`count` consecutive ports on 127.0.0.1, outside the ephemeral range, free to bind."""
    span = len(FIXED_PORTS) - count
    start = (os.getpid() * 7919 + time.monotonic_ns() // 1000) % span  # apart across runs
    for step in range(0, span, count):
        base = FIXED_PORTS[0] + (start + step) % span
        if all(_bindable(base + i) for i in range(count)):
            return list(range(base, base + count))
    raise RuntimeError(f"no {count} consecutive free ports in {FIXED_PORTS}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class RedisServer:
    """One redis-server process that can be stopped and started again on the same data."""

    def __init__(self, data_dir: Path, *, port: int | None = None, appendonly: bool = False):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not on PATH: install it (apt-get install redis-server) "
                "or set REDIS_URL to a Redis the tests may use"
            )
        self.binary = binary
        self.data_dir = data_dir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server (AOF replayed if there is one) and wait until it answers PING."""
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """Shut down gracefully (SIGTERM: the AOF is flushed), killing it after a timeout."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


@contextmanager
def redis_server(*, appendonly: bool = False, port: int | None = None) -> Iterator[str]:
    """Run redis-server from PATH on a free port in a temp dir; yield its URL; stop it after."""
    with tempfile.TemporaryDirectory(prefix="cw-redis-") as data_dir:
        server = RedisServer(Path(data_dir), port=port, appendonly=appendonly)
        try:
            server.start()
            yield server.url
        finally:
            server.stop()
