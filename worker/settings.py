"""Configuration, read from the environment once into a frozen object.

Names in the public contract (DESIGN.md §2) keep their names; our own tuning knobs use the
`CANCEL_WORKER_` prefix. A bad value raises ConfigError naming the variable, at start-up.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.errors import ConfigError

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_BASE_URL = "https://coinswitch.co"
DEFAULT_CANCEL_RATE = "10/60s"  # DELETE /futures/order, API.md §7
DEFAULT_STATUS_RATE = "20/60s"  # GET /futures/order
DEFAULT_CANCEL_ALL_RATE = "10/60s"  # POST /futures/cancel_all
DEFAULT_RATE_MARGIN_MS = 50  # added to every window so send jitter never shows limit + 1
DEFAULT_NAMESPACE = "cw"  # prefix of every Redis key we own
DEFAULT_RECORD_TTL_S = 7 * 24 * 3600
DEFAULT_CONNECT_TIMEOUT_S = 3.05
DEFAULT_READ_TIMEOUT_S = 10.0
DEFAULT_VISIBILITY_TIMEOUT_S = 30  # a killed worker's messages come back after this
DEFAULT_POLL_INITIAL_DELAY_S = 0.5
DEFAULT_POLL_MAX_DELAY_S = 8.0  # capped well below the visibility timeout (ETA messages)
DEFAULT_POLL_MAX_ATTEMPTS = 30
DEFAULT_POLL_DEADLINE_S = 300.0  # active polling gives up after this, then UNCONFIRMED
DEFAULT_RECHECK_INTERVAL_S = 60.0  # UNCONFIRMED orders are re-checked this often
DEFAULT_SWEEP_INTERVAL_S = 5.0  # how often the sweeper looks for due re-checks

_RATE_RE = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|m|h)?\s*")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_HEX_KEY_RE = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class Rate:
    """At most `count` requests in any window of `period_s` seconds."""

    count: int
    period_s: float

    @property
    def period_ms(self) -> int:
        """The window in whole milliseconds."""
        return round(self.period_s * 1000)

    def __str__(self) -> str:
        return f"{self.count}/{self.period_s:g}s"


def parse_rate(text: str) -> Rate:
    """Parse `COUNT/PERIOD` (`10/60s`, `10/2s`, `5/500ms`, Celery's `10/m`; bare = seconds).

    The one rate grammar of the project: the worker's settings and the sandbox's flags.
    """
    match = _RATE_RE.fullmatch(text) if isinstance(text, str) else None
    if not match or (match[2] is None and match[3] is None):
        raise ValueError(f"{text!r} is not a rate like 10/60s, 10/2s, 5/500ms or 10/m")
    count, amount, unit = int(match[1]), float(match[2] or 1), match[3] or "s"
    period_s = amount * _UNIT_SECONDS[unit]
    if count < 1 or period_s <= 0:
        raise ValueError(f"{text!r} must allow at least 1 request in a positive period")
    return Rate(count, period_s)


class Secret(str):
    """A string that never shows itself in repr or str-formatting of containers."""

    def __repr__(self) -> str:
        return "Secret('***')"


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment; build with `Settings.from_env()`."""

    redis_url: str = DEFAULT_REDIS_URL
    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = None
    secret_key: Secret | None = field(default=None, repr=False)
    cancel_rate: Rate = field(default_factory=lambda: parse_rate(DEFAULT_CANCEL_RATE))
    status_rate: Rate = field(default_factory=lambda: parse_rate(DEFAULT_STATUS_RATE))
    cancel_all_rate: Rate = field(default_factory=lambda: parse_rate(DEFAULT_CANCEL_ALL_RATE))
    rate_margin_ms: int = DEFAULT_RATE_MARGIN_MS
    namespace: str = DEFAULT_NAMESPACE
    record_ttl_s: int = DEFAULT_RECORD_TTL_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    visibility_timeout_s: int = DEFAULT_VISIBILITY_TIMEOUT_S
    poll_initial_delay_s: float = DEFAULT_POLL_INITIAL_DELAY_S
    poll_max_delay_s: float = DEFAULT_POLL_MAX_DELAY_S
    poll_max_attempts: int = DEFAULT_POLL_MAX_ATTEMPTS
    poll_deadline_s: float = DEFAULT_POLL_DEADLINE_S
    recheck_interval_s: float = DEFAULT_RECHECK_INTERVAL_S
    sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the environment; raise ConfigError naming the first bad variable."""
        env = os.environ if environ is None else environ
        api_key = env.get("COINSWITCH_API_KEY") or None
        secret = env.get("COINSWITCH_SECRET_KEY") or None
        if api_key is not None and not _HEX_KEY_RE.fullmatch(api_key):
            raise ConfigError("COINSWITCH_API_KEY", "must be 64 hex characters (an Ed25519 key)")
        if secret is not None and not _HEX_KEY_RE.fullmatch(secret):
            # Never echo the value: it is the private key.
            raise ConfigError("COINSWITCH_SECRET_KEY", "must be 64 hex characters (Ed25519 seed)")
        base_url = env.get("COINSWITCH_BASE_URL", DEFAULT_BASE_URL).rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError("COINSWITCH_BASE_URL", f"{base_url!r} is not an http(s) URL")
        tuning: dict[str, Any] = {
            name: _number(env, f"CANCEL_WORKER_{name.upper()}", kind)
            for name, kind in _TUNING
            if env.get(f"CANCEL_WORKER_{name.upper()}")
        }
        return cls(
            redis_url=env.get("REDIS_URL", DEFAULT_REDIS_URL),
            base_url=base_url,
            api_key=api_key.lower() if api_key else None,
            secret_key=Secret(secret.lower()) if secret else None,
            cancel_rate=_rate(env, "COINSWITCH_CANCEL_RATE_LIMIT", DEFAULT_CANCEL_RATE),
            status_rate=_rate(env, "COINSWITCH_STATUS_RATE_LIMIT", DEFAULT_STATUS_RATE),
            cancel_all_rate=_rate(env, "COINSWITCH_CANCEL_ALL_RATE_LIMIT", DEFAULT_CANCEL_ALL_RATE),
            namespace=env.get("CANCEL_WORKER_NAMESPACE", DEFAULT_NAMESPACE),
            **tuning,
        )

    def require_credentials(self) -> tuple[str, Secret]:
        """Return (api_key, secret_key) or raise ConfigError naming the missing variable."""
        if self.api_key is None:
            raise ConfigError("COINSWITCH_API_KEY", "is not set")
        if self.secret_key is None:
            raise ConfigError("COINSWITCH_SECRET_KEY", "is not set")
        return self.api_key, self.secret_key


def _rate(env: Mapping[str, str], name: str, default: str) -> Rate:
    try:
        return parse_rate(env.get(name, default))
    except ValueError as exc:
        raise ConfigError(name, str(exc)) from None


#: Tuning knobs read from `CANCEL_WORKER_<FIELD NAME>`; each must be a positive number.
_TUNING: tuple[tuple[str, type[int] | type[float]], ...] = (
    ("rate_margin_ms", int),
    ("record_ttl_s", int),
    ("connect_timeout_s", float),
    ("read_timeout_s", float),
    ("visibility_timeout_s", int),
    ("poll_initial_delay_s", float),
    ("poll_max_delay_s", float),
    ("poll_max_attempts", int),
    ("poll_deadline_s", float),
    ("recheck_interval_s", float),
    ("sweep_interval_s", float),
)


def _number(env: Mapping[str, str], name: str, kind: type[int] | type[float]) -> float:
    raw = env[name]
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(name, f"{raw!r} is not a valid {kind.__name__}") from None
    if value <= 0:
        raise ConfigError(name, f"{raw!r} must be positive")
    return value
