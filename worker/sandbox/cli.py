"""`cancel-worker sandbox`: run the simulated exchange in the foreground.

Without `--api-key` it generates a key pair and prints ready-to-paste env lines, so a
developer can point the worker at it in one step.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, Final

import structlog

from worker.sandbox.auth import public_key_from_hex
from worker.sandbox.config import (
    DEFAULT_AUTO_FILL_DELAY_MS,
    DEFAULT_CANCEL_ALL_LIMIT,
    DEFAULT_CANCEL_LIMIT,
    DEFAULT_CONFIRM_DELAY_MS,
    DEFAULT_HOST,
    DEFAULT_JUST_PLACED_MS,
    DEFAULT_LIST_LIMIT,
    DEFAULT_MAX_SKEW_MS,
    DEFAULT_MISSING_EPOCH_STATUS,
    DEFAULT_PARTIAL_CANCEL_STATUS,
    DEFAULT_PLACE_LIMIT,
    DEFAULT_REFUSE_STATUS,
    DEFAULT_STATUS_LIMIT,
    DEFAULT_TIMEOUT_MS,
    DEFAULT_UNKNOWN_ORDER_STATUS,
    PARTIAL_CANCEL_STATUSES,
    RATE_SCOPES,
    REFUSE_STATUSES,
    UNKNOWN_ORDER_STATUSES,
    SandboxConfig,
    parse_rate,
)
from worker.sandbox.server import start_sandbox

log = structlog.get_logger(__name__)

DEFAULT_CLI_PORT: Final = 8765
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
STOP_POLL_S: Final = 1.0


def _rate(text: str) -> str:
    try:
        parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _host(text: str) -> str:
    try:
        SandboxConfig(host=text, allow_remote=True)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid host {text!r}: not an IP address") from None
    return text


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"invalid probability {text!r}: expected 0..1")
    return value


def _millis(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"invalid milliseconds {text!r}: expected an integer >= 0")
    return int(text)


def _api_key(text: str) -> str:
    try:
        public_key_from_hex(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid API key {text!r}: {exc}") from None
    return text.lower()


def _status_code(choices: tuple[int, ...]) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) not in choices:
            raise argparse.ArgumentTypeError(f"invalid status {text!r}: expected one of {choices}")
        return int(text)

    return parse


def _client_error(text: str) -> int:
    if not text.isdigit() or not 400 <= int(text) <= 499:
        raise argparse.ArgumentTypeError(f"invalid status {text!r}: expected a 4xx code")
    return int(text)


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    formatter_class: type[argparse.HelpFormatter] = argparse.ArgumentDefaultsHelpFormatter,
) -> None:
    """Register `sandbox` with every knob of SandboxConfig as an option."""
    p = subparsers.add_parser(
        "sandbox",
        help="run a local imitation of the CoinSwitch PRO futures API",
        description="Run a local imitation of the CoinSwitch PRO futures API (127.0.0.1 only).",
        formatter_class=formatter_class,
    )
    add = p.add_argument
    add(
        "--host",
        type=_host,
        default=DEFAULT_HOST,
        help="address to bind: loopback, unless --allow-remote",
    )
    add(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (only inside a private network, such as "
        "docker compose's): the sandbox answers any client that reaches it",
    )
    add("--port", type=int, default=DEFAULT_CLI_PORT, help="TCP port (0 = any free port)")
    add(
        "--api-key",
        dest="api_keys",
        metavar="HEX",
        action="append",
        type=_api_key,
        default=None,
        help="accepted Ed25519 public key, repeatable; none = generate a pair and print it",
    )
    add(
        "--cancel-limit",
        type=_rate,
        metavar="RATE",
        default=DEFAULT_CANCEL_LIMIT,
        help="DELETE order limit",
    )
    add(
        "--status-limit",
        type=_rate,
        metavar="RATE",
        default=DEFAULT_STATUS_LIMIT,
        help="GET order limit",
    )
    add(
        "--place-limit",
        type=_rate,
        metavar="RATE",
        default=DEFAULT_PLACE_LIMIT,
        help="POST order limit",
    )
    add(
        "--cancel-all-limit",
        type=_rate,
        metavar="RATE",
        default=DEFAULT_CANCEL_ALL_LIMIT,
        help="cancel_all limit",
    )
    add(
        "--list-limit",
        type=_rate,
        metavar="RATE",
        default=DEFAULT_LIST_LIMIT,
        help="open/closed orders limit",
    )
    add("--rate-scope", choices=RATE_SCOPES, default="key", help="rate bucket per API key or IP")
    add(
        "--confirm-delay-ms",
        type=_millis,
        metavar="MS",
        default=DEFAULT_CONFIRM_DELAY_MS,
        help="CANCELLATION_RAISED -> final after this long",
    )
    add(
        "--fill-race-rate",
        type=_probability,
        metavar="P",
        default=0.0,
        help="probability that a cancelled order fills before the cancel confirms",
    )
    add(
        "--partial-fill-share",
        type=_probability,
        metavar="P",
        default=0.5,
        help="of raced fills, the share ending PARTIALLY_EXECUTED rather than EXECUTED",
    )
    add(
        "--partial-cancel-status",
        choices=PARTIAL_CANCEL_STATUSES,
        default=DEFAULT_PARTIAL_CANCEL_STATUS,
        help="final status of a partly filled order whose cancel confirms",
    )
    add(
        "--auto-fill-rate",
        type=_probability,
        metavar="P",
        default=0.0,
        help="probability a placed GTC LIMIT order fills on its own",
    )
    add(
        "--auto-fill-delay-ms",
        type=_millis,
        metavar="MS",
        default=DEFAULT_AUTO_FILL_DELAY_MS,
        help="delay before such a spontaneous fill",
    )
    add(
        "--just-placed-ms",
        type=_millis,
        metavar="MS",
        default=DEFAULT_JUST_PLACED_MS,
        help="cancels this soon after placement are refused",
    )
    add(
        "--error-rate",
        type=_probability,
        metavar="P",
        default=0.0,
        help="share of requests answered 5xx",
    )
    add(
        "--error-applied-share",
        type=_probability,
        metavar="P",
        default=0.5,
        help="of 5xx and timeout faults, share where the operation took effect anyway",
    )
    add(
        "--timeout-rate",
        type=_probability,
        metavar="P",
        default=0.0,
        help="share of requests left hanging",
    )
    add(
        "--timeout-ms",
        type=_millis,
        metavar="MS",
        default=DEFAULT_TIMEOUT_MS,
        help="how long a timeout fault hangs before closing without a response",
    )
    add(
        "--malformed-rate",
        type=_probability,
        metavar="P",
        default=0.0,
        help="share answered 200 with truncated JSON (operation took effect)",
    )
    add(
        "--latency-ms",
        type=_millis,
        metavar="MS",
        default=0,
        help="added before every exchange response",
    )
    add(
        "--latency-jitter-ms",
        type=_millis,
        metavar="J",
        default=0,
        help="each request reaches the rate limiter after a seeded random delay of 0 to J ms "
        "(a network whose one-way delay varies)",
    )
    add(
        "--refuse-status",
        type=_status_code(REFUSE_STATUSES),
        metavar="CODE",
        default=DEFAULT_REFUSE_STATUS,
        help=f"code for refused cancels (final, mid-cancel, just placed); one of {REFUSE_STATUSES}",
    )
    add(
        "--unknown-order-status",
        type=_status_code(UNKNOWN_ORDER_STATUSES),
        metavar="CODE",
        default=DEFAULT_UNKNOWN_ORDER_STATUS,
        help="code for an unknown order id on status and cancel",
    )
    add(
        "--missing-epoch-status",
        type=_client_error,
        metavar="CODE",
        default=DEFAULT_MISSING_EPOCH_STATUS,
        help="code when X-AUTH-EPOCH is absent",
    )
    add(
        "--max-skew-ms",
        type=_millis,
        metavar="MS",
        default=DEFAULT_MAX_SKEW_MS,
        help="largest accepted |server time - X-AUTH-EPOCH|",
    )
    add("--seed", type=int, default=0, help="seed of every random choice")
    add("--log-level", choices=LOG_LEVELS, default="info", help="request log verbosity")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    """Map parsed options onto SandboxConfig (same names, snake_case)."""
    fields: dict[str, Any] = {
        name: getattr(args, name)
        for name in SandboxConfig.__dataclass_fields__
        if hasattr(args, name)
    }
    return SandboxConfig(**fields)


def configure_logging(level: str) -> None:
    """JSON lines on stderr (console renderer on a TTY); stdout stays for the env lines."""
    renderer: Any = (
        structlog.dev.ConsoleRenderer()
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM; exit code 0 on a clean stop."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"cancel-worker sandbox: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    try:
        handle = start_sandbox(config, api_keys=args.api_keys)
    except OSError as exc:
        print(
            f"cancel-worker sandbox: cannot listen on {config.host}:{config.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    if handle.secret_key is not None:
        print("Generated an Ed25519 key pair for this sandbox:")
        print(f"  API key (public): {handle.api_key}")
        print(f"  Secret key (seed): {handle.secret_key}")
        print("Paste these into the worker's environment:")
    print(f"COINSWITCH_BASE_URL={handle.url}")
    print(f"COINSWITCH_API_KEY={handle.api_key}")
    if handle.secret_key is not None:
        print(f"COINSWITCH_SECRET_KEY={handle.secret_key}")
    print(f"Sandbox listening on {handle.url} (admin: {handle.url}/_sandbox/stats)", flush=True)

    stop = threading.Event()
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in stop_signals}
    try:
        while not stop.wait(STOP_POLL_S):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        handle.stop()
    log.info("sandbox_stopped", url=handle.url)
    return 0
