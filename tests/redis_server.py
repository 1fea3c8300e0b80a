"""A throwaway redis-server on a free loopback port, for tests, soak runs and benchmarks."""

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
STOP_TIMEOUT_S = 10.0


#: Below Linux's ephemeral range (32768-60999), so a client's outgoing connection cannot take
#: a port between the check and the server's bind (a replica once failed to bind so); and
#: cut in slices, one per process (pytest-xdist workers, a benchmark beside the tests), so
#: two processes never pick the same port: two bind-to-0 probes a moment apart can both be
#: handed one port. A process claims a slice by holding its first port bound until it exits.
FIXED_PORTS = range(20000, 32000)
PORT_SLICE = 500  # ports per process
_claim: list[socket.socket] = []  # the bound socket that holds this process's slice
_handed_out: set[int] = set()


def _slice() -> range:
    if not _claim:
        for start in range(FIXED_PORTS.start, FIXED_PORTS.stop, PORT_SLICE):
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", start))
            except OSError:
                sock.close()
                continue
            _claim.append(sock)
            break
        else:
            raise RuntimeError(f"every slice of {FIXED_PORTS} is claimed by another process")
    start = _claim[0].getsockname()[1]
    return range(start + 1, start + PORT_SLICE)


def free_port() -> int:
    """A TCP port on 127.0.0.1, free to bind now and never handed out before in this process."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` consecutive ports of this process's slice, free to bind, not handed out before."""
    ports = _slice()
    span = len(ports) - count
    offset = (time.monotonic_ns() // 1000) % span  # apart across runs on one machine
    for step in range(span):
        base = ports.start + (offset + step) % span
        block = range(base, base + count)
        if not _handed_out.intersection(block) and all(_bindable(p) for p in block):
            _handed_out.update(block)
            return list(block)
    raise RuntimeError(f"no {count} consecutive free ports in {ports}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class RedisServer:
    """One redis-server process that can be stopped and started again on the same data."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        appendonly: bool = False,
        extra_args: tuple[str, ...] = (),
    ):
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
        self.extra_args = extra_args  # e.g. ("--save", "900 1"): later options win
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
            *self.extra_args,
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
                        self._check_own(client)
                        return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def _check_own(self, client: redis.Redis) -> None:
        """Fail if the server answering on the port is another process's, not ours."""
        assert self.proc is not None
        answering = int(client.info("server")["process_id"])
        if answering != self.proc.pid:
            self.proc.kill()
            raise RuntimeError(f"port {self.port} is served by another redis-server ({answering})")

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
def redis_server(
    *, appendonly: bool = False, port: int | None = None, extra_args: tuple[str, ...] = ()
) -> Iterator[str]:
    """Run redis-server from PATH on a free port in a temp dir; yield its URL; stop it after."""
    with tempfile.TemporaryDirectory(prefix="cw-redis-") as data_dir:
        server = RedisServer(
            Path(data_dir), port=port, appendonly=appendonly, extra_args=extra_args
        )
        try:
            server.start()
            yield server.url
        finally:
            server.stop()
