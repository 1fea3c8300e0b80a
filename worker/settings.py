"""Configuration, read from the environment once into a frozen object.

Names in the public contract (the README's configuration table) keep their names; our own
tuning knobs use the `CANCEL_WORKER_` prefix. A bad value raises ConfigError naming the
variable, at start-up. Accounts and their budgets are parsed by worker.accounts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import redis.connection

from worker.accounts import (
    ACCOUNTS_VARIABLE,
    DOCUMENTED_RATES,
    Account,
    Secret,
    accounts_from_env,
    rates_from_env,
)
from worker.errors import ConfigError
from worker.models import DEFAULT_ACCOUNT, Bucket
from worker.rates import Rate, parse_rate

__all__ = ["Rate", "Secret", "Settings", "parse_rate", "redact_url"]

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_BASE_URL = "https://coinswitch.co"
#: Floor of the margin added to every window: covers send jitter on a quiet loopback.
DEFAULT_RATE_MARGIN_MS = 50
#: Ceiling of the learned margin: at the real 10/60s, 2 s costs at most 3 % of the budget.
DEFAULT_RATE_MARGIN_MAX_MS = 2000
DEFAULT_NAMESPACE = "cw"  # prefix of every Redis key we own
DEFAULT_RECORD_TTL_S = 7 * 24 * 3600
DEFAULT_CONNECT_TIMEOUT_S = 3.05
DEFAULT_READ_TIMEOUT_S = 10.0
DEFAULT_VISIBILITY_TIMEOUT_S = 30  # a killed worker's messages come back after this
DEFAULT_POLL_INITIAL_DELAY_S = 0.5
DEFAULT_POLL_MAX_DELAY_S = 8.0
DEFAULT_POLL_MAX_ATTEMPTS = 30
DEFAULT_POLL_DEADLINE_S = 300.0  # active polling gives up after this, then UNCONFIRMED
DEFAULT_RECHECK_INTERVAL_S = 60.0  # UNCONFIRMED orders are re-checked this often
DEFAULT_SWEEP_INTERVAL_S = 5.0  # how often one dispatcher looks for lost work
DEFAULT_SENTINEL_MASTER = "mymaster"
#: How long a request waits for a replica to acknowledge its writes (when replicas exist).
DEFAULT_REPLICA_WAIT_MS = 500
REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")
MAX_PORT = 65535  # TCP


def redact_url(url: str) -> str:
    """The URL (or Sentinel URLs) with any password replaced by ***, for messages and logs."""
    return ";".join(_redact_one(part) for part in url.split(";"))


def _redact_one(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparsable URL>"


def _redis_url(env: Mapping[str, str]) -> str:
    """REDIS_URL, checked the way the clients will read it; ConfigError naming the bad part.

    redis-py quietly uses database 0 for a path that is not a number, and fails with a bare
    ValueError deep inside a command for a bad port: both are caught here, at start-up.
    """
    url = env.get("REDIS_URL", DEFAULT_REDIS_URL)
    parts = [part.strip() for part in url.split(";")]
    schemes = [urlsplit(part).scheme for part in parts]
    for part, scheme in zip(parts, schemes, strict=True):
        if scheme not in REDIS_SCHEMES:
            known = ", ".join(f"{name}://" for name in REDIS_SCHEMES)
            what = f"scheme {scheme!r} is not one of" if scheme else "it has no scheme, one of"
            raise ConfigError(
                "REDIS_URL", f"{redact_url(part)!r} is not a Redis URL: {what} {known}"
            )
    if len(parts) > 1 and set(schemes) != {"sentinel"}:
        raise ConfigError(
            "REDIS_URL",
            f"{redact_url(url)!r} joins several URLs with ';', which only sentinel:// URLs may",
        )
    for part in parts:
        _check_redis_url(part)
    return url


def _check_redis_url(url: str) -> None:
    """Port, host, database and query of one Redis (or Sentinel) URL; ConfigError if bad."""
    shown = repr(redact_url(url))
    parts = urlsplit(url)
    if parts.scheme != "unix":
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:
            given = parts.netloc.rpartition("@")[2].rpartition("]")[2].rpartition(":")[2]
            raise ConfigError(
                "REDIS_URL", f"{shown}: port {given!r} is not a number from 1 to {MAX_PORT}"
            )
        database = unquote(parts.path).strip("/")
        if database and not database.isdigit():
            raise ConfigError(
                "REDIS_URL", f"{shown}: database {database!r} (the path) is not a number"
            )
    elif not parts.path:
        raise ConfigError("REDIS_URL", f"{shown} names no socket path")
    if parts.scheme == "sentinel" and not parts.hostname:
        raise ConfigError("REDIS_URL", f"{shown} names no Sentinel host")
    for database in parse_qs(parts.query).get("db", []):
        if not database.isdigit():
            raise ConfigError("REDIS_URL", f"{shown}: database {database!r} (db=) is not a number")
    if parts.scheme != "sentinel":
        try:
            redis.connection.parse_url(url)  # every other query argument, as redis-py reads it
        except ValueError as exc:
            raise ConfigError("REDIS_URL", f"{shown}: {exc}") from None


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment; build with `Settings.from_env()`."""

    redis_url: str = DEFAULT_REDIS_URL
    redis_sentinel_master: str = DEFAULT_SENTINEL_MASTER
    redis_sentinel_password: Secret | None = field(default=None, repr=False)
    base_url: str = DEFAULT_BASE_URL
    #: Configured accounts by name; `default` is COINSWITCH_API_KEY / _SECRET_KEY.
    accounts: Mapping[str, Account] = field(default_factory=dict)
    #: Budgets of an account that sets none of its own (COINSWITCH_*_RATE_LIMIT).
    rates: Mapping[Bucket, Rate] = field(
        default_factory=lambda: {b: parse_rate(r) for b, r in DOCUMENTED_RATES.items()}
    )
    rate_margin_ms: int = DEFAULT_RATE_MARGIN_MS
    rate_margin_max_ms: int = DEFAULT_RATE_MARGIN_MAX_MS
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
    replica_wait_ms: int = DEFAULT_REPLICA_WAIT_MS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the environment; raise ConfigError naming the first bad variable."""
        env = os.environ if environ is None else environ
        base_url = env.get("COINSWITCH_BASE_URL", DEFAULT_BASE_URL).rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError("COINSWITCH_BASE_URL", f"{base_url!r} is not an http(s) URL")
        documented = {bucket: parse_rate(rate) for bucket, rate in DOCUMENTED_RATES.items()}
        rates = rates_from_env(env, DEFAULT_ACCOUNT, documented)
        tuning: dict[str, Any] = {
            name: _number(env, f"CANCEL_WORKER_{name.upper()}", kind)
            for name, kind in TUNING
            if env.get(f"CANCEL_WORKER_{name.upper()}")
        }
        settings = cls(
            redis_url=_redis_url(env),
            redis_sentinel_master=env.get("REDIS_SENTINEL_MASTER") or DEFAULT_SENTINEL_MASTER,
            redis_sentinel_password=(
                Secret(env["REDIS_SENTINEL_PASSWORD"])
                if env.get("REDIS_SENTINEL_PASSWORD")
                else None
            ),
            base_url=base_url,
            accounts=accounts_from_env(env, rates),
            rates=rates,
            namespace=env.get("CANCEL_WORKER_NAMESPACE") or DEFAULT_NAMESPACE,
            **tuning,
        )
        if settings.rate_margin_max_ms < settings.rate_margin_ms:
            raise ConfigError(
                "CANCEL_WORKER_RATE_MARGIN_MAX_MS",
                f"{settings.rate_margin_max_ms} is below CANCEL_WORKER_RATE_MARGIN_MS "
                f"({settings.rate_margin_ms})",
            )
        return settings

    def signing_accounts(self) -> dict[str, Account]:
        """The accounts a worker serves, each with both keys; ConfigError naming what is missing."""
        if not self.accounts:
            raise ConfigError(
                "COINSWITCH_API_KEY",
                f"is not set, and {ACCOUNTS_VARIABLE} names no account: nothing to sign with",
            )
        for account in self.accounts.values():
            account.require_keys()
        return dict(self.accounts)

    def account(self, name: str) -> Account:
        """One configured account; ConfigError naming its variable if it is not configured."""
        found = self.accounts.get(name)
        if found is None:
            detail = "is not set" if name == DEFAULT_ACCOUNT else f"does not list {name!r}"
            raise ConfigError(
                "COINSWITCH_API_KEY" if name == DEFAULT_ACCOUNT else ACCOUNTS_VARIABLE, detail
            )
        return found


#: Tuning knobs read from `CANCEL_WORKER_<FIELD NAME>`; each must be a positive number.
TUNING: tuple[tuple[str, type[int] | type[float]], ...] = (
    ("rate_margin_ms", int),
    ("rate_margin_max_ms", int),
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
    ("replica_wait_ms", int),
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
