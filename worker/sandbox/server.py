"""The HTTP side: a stdlib threading server, one structlog event per request, and a handle.

`run_sandbox()` starts a server on a free loopback port in a daemon thread, for tests and
benchmarks; the CLI uses `start_sandbox()` and blocks until told to stop.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

import structlog

from worker.sandbox.admin import AdminClient
from worker.sandbox.app import MSG_INTERNAL, Reply, Request, SandboxApp
from worker.sandbox.auth import AuthHeaders, generate_keypair
from worker.sandbox.book import Clock, system_clock_ms
from worker.sandbox.config import SandboxConfig

log = structlog.get_logger(__name__)

MAX_BODY_BYTES: Final = 1_000_000
KEY_PREFIX_CHARS: Final = 8  # how much of an API key a log line may show
STOP_TIMEOUT_S: Final = 5.0
SHUTDOWN_POLL_S: Final = 0.02  # serve_forever poll interval: how fast stop() returns
SERVER_NAME: Final = "coinswitch-sandbox"


class _Handler(BaseHTTPRequestHandler):
    """Reads one request, asks the app, stalls/drops/answers as the reply says."""

    server: SandboxHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive, like the real host
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms stall
    server_version = SERVER_NAME
    sys_version = ""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the stdlib access log; `_log` writes the structured one."""

    def _serve(self) -> None:
        started = time.perf_counter()
        body = self._read_body()
        if body is None:
            reply = Reply(400, {"message": "Invalid request body"})
            self.close_connection = True
        else:
            request = Request(
                method=self.command,
                target=self.path,
                headers=AuthHeaders(
                    api_key=self.headers.get("X-AUTH-APIKEY"),
                    signature=self.headers.get("X-AUTH-SIGNATURE"),
                    epoch=self.headers.get("X-AUTH-EPOCH"),
                ),
                body=body,
                client_ip=self.client_address[0],
            )
            try:
                reply = self.server.app.handle(request)
            except Exception:
                log.exception("sandbox_error", method=self.command, path=self.path)
                reply = Reply(500, {"message": MSG_INTERNAL})
        if reply.delay_ms > 0:
            time.sleep(reply.delay_ms / 1000)
        self._log(reply, started)  # before answering, so a client never outruns its log line
        if reply.drop:
            self.close_connection = True  # hang up without a status line
        else:
            self._send(reply)

    def _read_body(self) -> bytes | None:
        """The request body by Content-Length; None when it cannot be read safely."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return None
        if length < 0 or length > MAX_BODY_BYTES:
            return None
        return self.rfile.read(length) if length else b""

    def _send(self, reply: Reply) -> None:
        payload = reply.body()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True  # the client went away; nothing to tell it

    def _log(self, reply: Reply, started: float) -> None:
        path = self.path.split("?", 1)[0]
        key = self.headers.get("X-AUTH-APIKEY") or ""
        event = log.debug if path.startswith("/_sandbox/") else log.info
        event(
            "request",
            method=self.command,
            path=path,
            endpoint=reply.endpoint,
            status="dropped" if reply.drop else reply.status,
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
            api_key=key[:KEY_PREFIX_CHARS] + ("..." if len(key) > KEY_PREFIX_CHARS else ""),
            client=self.client_address[0],
            fault=reply.fault,
            note=reply.note,
        )


class SandboxHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that carries the app; handler threads never block exit."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: SandboxApp) -> None:
        self.app = app
        super().__init__(address, _Handler)


class SandboxHandle:
    """A running sandbox: where it is, which keys work, and its admin client."""

    def __init__(
        self,
        server: SandboxHTTPServer,
        thread: threading.Thread,
        api_key: str,
        secret_key: str | None,
    ) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.host = str(host)
        self.port = int(port)
        self.url = f"http://{self.host}:{self.port}"
        self.api_key = api_key
        self.secret_key = secret_key
        self.app = server.app
        self.admin = AdminClient(self.url)
        self._stopped = False

    def __repr__(self) -> str:
        return f"SandboxHandle(url={self.url!r}, api_key={self.api_key[:KEY_PREFIX_CHARS]}...)"

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(STOP_TIMEOUT_S)
        self.admin.close()


def start_sandbox(
    config: SandboxConfig | None = None,
    *,
    api_keys: Sequence[str] | None = None,
    clock: Clock = system_clock_ms,
) -> SandboxHandle:
    """Start serving in a daemon thread; generate a key pair when no keys are given."""
    config = config or SandboxConfig()
    secret: str | None = None
    if api_keys:
        keys = [key.lower() for key in api_keys]
    else:
        public, secret = generate_keypair()
        keys = [public]
    app = SandboxApp(config, keys, clock)
    server = SandboxHTTPServer((config.host, config.port), app)
    thread = threading.Thread(
        target=functools.partial(server.serve_forever, poll_interval=SHUTDOWN_POLL_S),
        name="sandbox-http",
        daemon=True,
    )
    thread.start()
    handle = SandboxHandle(server, thread, keys[0], secret)
    log.info("sandbox_started", url=handle.url, api_keys=len(keys))
    return handle


@contextmanager
def run_sandbox(
    config: SandboxConfig | None = None,
    *,
    api_keys: Sequence[str] | None = None,
    clock: Clock = system_clock_ms,
) -> Iterator[SandboxHandle]:
    """Run a sandbox for the duration of a `with` block (port 0 = a free port)."""
    handle = start_sandbox(config, api_keys=api_keys, clock=clock)
    try:
        yield handle
    finally:
        handle.stop()
