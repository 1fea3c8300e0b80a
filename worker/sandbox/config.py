"""Sandbox configuration: one frozen value, validated once, swapped whole at runtime.

Every knob that imitates something the exchange leaves undocumented (docs/exchange.md,
"Undocumented: assumptions and the sandbox's choices") lives here with a named default, so
the choice is visible and changeable (CLI flag or `POST /_sandbox/config`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import Any, Final

from worker.settings import parse_rate as settings_parse_rate

# Endpoint names used in stats, faults and limits, mapped to (method, path).
ENDPOINTS: Final[dict[str, tuple[str, str]]] = {
    "place": ("POST", "/trade/api/v2/futures/order"),
    "cancel": ("DELETE", "/trade/api/v2/futures/order"),
    "status": ("GET", "/trade/api/v2/futures/order"),
    "cancel_all": ("POST", "/trade/api/v2/futures/cancel_all"),
    "open": ("POST", "/trade/api/v2/futures/orders/open"),
    "closed": ("POST", "/trade/api/v2/futures/orders/closed"),
}

# Documented limits (docs/exchange.md, Rate limits), as COUNT/PERIOD strings.
DEFAULT_CANCEL_LIMIT: Final = "10/60s"
DEFAULT_STATUS_LIMIT: Final = "20/60s"
DEFAULT_PLACE_LIMIT: Final = "20/60s"
DEFAULT_CANCEL_ALL_LIMIT: Final = "10/60s"
DEFAULT_LIST_LIMIT: Final = "20/60s"

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 0  # 0 = any free port; the CLI uses 8765
DEFAULT_CONFIRM_DELAY_MS: Final = 500  # CANCELLATION_RAISED -> final
DEFAULT_AUTO_FILL_DELAY_MS: Final = 1000  # placement -> spontaneous fill
DEFAULT_TIMEOUT_MS: Final = 3000  # how long a timeout fault hangs before dropping the socket
DEFAULT_JUST_PLACED_MS: Final = 0  # cancels refused this soon after placement (real: ~50 ms)
DEFAULT_MAX_SKEW_MS: Final = 60_000  # documented epoch drift limit
DEFAULT_REFUSE_STATUS: Final = 400
DEFAULT_UNKNOWN_ORDER_STATUS: Final = 404
DEFAULT_MISSING_EPOCH_STATUS: Final = 401
DEFAULT_PARTIAL_CANCEL_STATUS: Final = "PARTIALLY_EXECUTED"

REFUSE_STATUSES: Final = (400, 404, 409, 422)
UNKNOWN_ORDER_STATUSES: Final = (400, 404, 409, 422)
PARTIAL_CANCEL_STATUSES: Final = ("PARTIALLY_EXECUTED", "CANCELLED")
RATE_SCOPES: Final = ("key", "ip")


def parse_rate(text: str) -> tuple[int, float]:
    """Parse a rate with the project's one grammar (worker.settings.parse_rate).

    Returns (count, period in seconds); raises ValueError quoting the text.
    """
    rate = settings_parse_rate(text)
    return rate.count, rate.period_s


@dataclass(frozen=True)
class SandboxConfig:
    """All sandbox behaviour knobs; rates are probabilities in [0, 1], times in ms."""

    host: str = DEFAULT_HOST
    allow_remote: bool = False  # bind a non-loopback host (a private container network)
    port: int = DEFAULT_PORT
    cancel_limit: str = DEFAULT_CANCEL_LIMIT
    status_limit: str = DEFAULT_STATUS_LIMIT
    place_limit: str = DEFAULT_PLACE_LIMIT
    cancel_all_limit: str = DEFAULT_CANCEL_ALL_LIMIT
    list_limit: str = DEFAULT_LIST_LIMIT  # open and closed orders, separate buckets
    rate_scope: str = "key"  # "key": per API key; "ip": per client IP
    confirm_delay_ms: int = DEFAULT_CONFIRM_DELAY_MS
    fill_race_rate: float = 0.0  # P(an accepted cancel loses the race to a fill)
    partial_fill_share: float = 0.5  # of raced fills, the share ending PARTIALLY_EXECUTED
    partial_cancel_status: str = DEFAULT_PARTIAL_CANCEL_STATUS  # partly filled, then cancelled
    auto_fill_rate: float = 0.0  # P(a placed GTC LIMIT order fills on its own)
    auto_fill_delay_ms: int = DEFAULT_AUTO_FILL_DELAY_MS
    just_placed_ms: int = DEFAULT_JUST_PLACED_MS
    error_rate: float = 0.0  # share of signed requests answered 5xx
    error_applied_share: float = 0.5  # of errors and timeouts, share where the op took effect
    timeout_rate: float = 0.0
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    malformed_rate: float = 0.0  # 200 with a truncated body; the op took effect
    latency_ms: int = 0  # added before every exchange response
    latency_jitter_ms: int = 0  # 0..J ms (seeded) before a request reaches the rate limiter
    refuse_status: int = DEFAULT_REFUSE_STATUS
    unknown_order_status: int = DEFAULT_UNKNOWN_ORDER_STATUS
    missing_epoch_status: int = DEFAULT_MISSING_EPOCH_STATUS
    max_skew_ms: int = DEFAULT_MAX_SKEW_MS
    seed: int = 0
    log_level: str = "info"

    def __post_init__(self) -> None:
        """Reject bad values at construction, naming the field."""
        for name in ("cancel_limit", "status_limit", "place_limit", "cancel_all_limit"):
            _check(name, getattr(self, name), _is_rate)
        _check("list_limit", self.list_limit, _is_rate)
        for name in (
            "fill_race_rate",
            "partial_fill_share",
            "auto_fill_rate",
            "error_rate",
            "error_applied_share",
            "timeout_rate",
            "malformed_rate",
        ):
            _check(name, getattr(self, name), _is_probability)
        if self.error_rate + self.timeout_rate + self.malformed_rate > 1.0:
            raise ValueError("error_rate + timeout_rate + malformed_rate must not exceed 1")
        for name in (
            "confirm_delay_ms",
            "auto_fill_delay_ms",
            "just_placed_ms",
            "timeout_ms",
            "latency_ms",
            "latency_jitter_ms",
            "max_skew_ms",
        ):
            _check(name, getattr(self, name), _is_non_negative_int)
        _check("host", self.host, _is_address)
        if not (self.allow_remote or _is_loopback(self.host)):
            raise ValueError(
                f"invalid host {self.host!r}: loopback only (--allow-remote inside a private "
                "network, e.g. docker compose's)"
            )
        _check("port", self.port, lambda v: _is_non_negative_int(v) and v <= 65535)
        _check("seed", self.seed, lambda v: isinstance(v, int) and not isinstance(v, bool))
        _check("rate_scope", self.rate_scope, lambda v: v in RATE_SCOPES)
        _check("refuse_status", self.refuse_status, lambda v: v in REFUSE_STATUSES)
        _check(
            "unknown_order_status", self.unknown_order_status, lambda v: v in UNKNOWN_ORDER_STATUSES
        )
        _check("missing_epoch_status", self.missing_epoch_status, _is_client_error)
        _check(
            "partial_cancel_status",
            self.partial_cancel_status,
            lambda v: v in PARTIAL_CANCEL_STATUSES,
        )

    def limit_for(self, endpoint: str) -> tuple[int, float]:
        """(count, period seconds) of one endpoint's rate limit."""
        field = "list_limit" if endpoint in ("open", "closed") else f"{endpoint}_limit"
        return parse_rate(getattr(self, field))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able view, as the admin config endpoint returns it."""
        return dataclasses.asdict(self)


# Knobs `POST /_sandbox/config` may change while running (not host/port/seed/log level).
RUNTIME_KNOBS: Final = frozenset(
    f.name
    for f in dataclasses.fields(SandboxConfig)
    if f.name not in ("host", "allow_remote", "port", "seed", "log_level")
)


def _check(name: str, value: Any, ok: Any) -> None:
    if not ok(value):
        raise ValueError(f"invalid {name}: {value!r}")


def _is_rate(value: Any) -> bool:
    try:
        parse_rate(value)
    except ValueError:
        return False
    return True


def _is_address(value: Any) -> bool:
    if value == "localhost":
        return True
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_loopback(value: Any) -> bool:
    """The sandbox must never be reachable from outside this machine."""
    if value == "localhost":
        return True
    try:
        return isinstance(value, str) and ipaddress.ip_address(value).is_loopback
    except ValueError:
        return False


def _is_probability(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _is_non_negative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_client_error(value: Any) -> bool:
    return _is_non_negative_int(value) and 400 <= value <= 499
