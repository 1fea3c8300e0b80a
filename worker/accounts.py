"""Accounts: one API key each, with its own budgets; configured by env, registered in Redis.

`COINSWITCH_API_KEY` / `COINSWITCH_SECRET_KEY` are the account named `default`;
`COINSWITCH_ACCOUNTS=alpha,beta` adds accounts whose variables carry the upper-cased name
(`COINSWITCH_ALPHA_API_KEY`, `COINSWITCH_ALPHA_CANCEL_RATE_LIMIT`, ...). Workers write what
they serve into a registry hash, so a producer or `cancel-worker limits` needs only
`REDIS_URL`: no keys, and never the secret.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis

from worker.errors import ConfigError
from worker.keys import Keys, key_fingerprint
from worker.models import DEFAULT_ACCOUNT, Bucket
from worker.rates import Rate, parse_rate

#: The exchange's documented budgets, per API key (docs/exchange.md, Rate limits).
DOCUMENTED_RATES: Mapping[Bucket, str] = {
    Bucket.CANCEL: "10/60s",
    Bucket.STATUS: "20/60s",
    Bucket.CANCEL_ALL: "10/60s",
    Bucket.OPEN_ORDERS: "20/60s",
    Bucket.CLOSED_ORDERS: "20/60s",
}
#: How each budget's variable is spelled after `COINSWITCH_` (and the account's name).
RATE_VARIABLES: Mapping[Bucket, str] = {
    Bucket.CANCEL: "CANCEL_RATE_LIMIT",
    Bucket.STATUS: "STATUS_RATE_LIMIT",
    Bucket.CANCEL_ALL: "CANCEL_ALL_RATE_LIMIT",
    Bucket.OPEN_ORDERS: "OPEN_ORDERS_RATE_LIMIT",
    Bucket.CLOSED_ORDERS: "CLOSED_ORDERS_RATE_LIMIT",
}
ACCOUNTS_VARIABLE = "COINSWITCH_ACCOUNTS"
SHARES_SUFFIX = "OWNER_SHARES"  # COINSWITCH_[NAME_]OWNER_SHARES=strat-a:3,strat-b:1
MAX_SHARE = 1000  # an owner's weight, at most (a share of 1 is one turn in 1,000 of that)
_SHARE_RE = re.compile(r"([a-z][a-z0-9_-]{0,63}):(\d+)")
_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_HEX_KEY_RE = re.compile(r"[0-9a-fA-F]{64}")


class Secret(str):
    """A string that never shows itself in repr or str-formatting of containers."""

    def __repr__(self) -> str:
        return "Secret('***')"


def variable(account: str, suffix: str) -> str:
    """The environment variable of one account setting: COINSWITCH_[NAME_]SUFFIX."""
    if account == DEFAULT_ACCOUNT:
        return f"COINSWITCH_{suffix}"
    return f"COINSWITCH_{account.upper()}_{suffix}"


@dataclass(frozen=True)
class AccountInfo:
    """What the scheduler and read-only tools need of an account: no key, no secret."""

    name: str
    fingerprint: str
    rates: Mapping[Bucket, Rate]
    seen_ms: int = 0  # when a worker last registered it (0: from this process's settings)
    #: Owners' weights in every line of the account (an owner not named weighs 1).
    shares: Mapping[str, int] = field(default_factory=dict)

    def to_json(self, seen_ms: int) -> str:
        """The registry entry."""
        rates = {bucket.value: str(rate) for bucket, rate in self.rates.items()}
        entry = {"fingerprint": self.fingerprint, "rates": rates, "seen_ms": seen_ms}
        return json.dumps({**entry, "shares": dict(self.shares)})

    @classmethod
    def from_json(cls, name: str, raw: str) -> AccountInfo:
        """Read a registry entry (budgets this version does not know are skipped)."""
        data = json.loads(raw)
        known = {bucket.value for bucket in Bucket}
        rates = {Bucket(b): parse_rate(r) for b, r in data["rates"].items() if b in known}
        shares = {str(o): int(w) for o, w in data.get("shares", {}).items()}
        return cls(name, str(data["fingerprint"]), rates, int(data.get("seen_ms", 0)), shares)


@dataclass(frozen=True)
class Account:
    """One account as configured: its keys (the secret only where signing is needed)."""

    name: str
    api_key: str | None
    secret_key: Secret | None = field(repr=False)
    rates: Mapping[Bucket, Rate]
    #: Owners' weights in the account's lines (an owner not named weighs 1).
    shares: Mapping[str, int] = field(default_factory=dict)

    def require_keys(self) -> tuple[str, Secret]:
        """Return (api_key, secret_key) or raise ConfigError naming the missing variable."""
        if self.api_key is None:
            raise ConfigError(variable(self.name, "API_KEY"), "is not set")
        if self.secret_key is None:
            raise ConfigError(variable(self.name, "SECRET_KEY"), "is not set")
        return self.api_key, self.secret_key

    def info(self) -> AccountInfo:
        """The public part, for the scheduler and the registry (needs the API key)."""
        if self.api_key is None:
            raise ConfigError(variable(self.name, "API_KEY"), "is not set")
        return AccountInfo(
            self.name, key_fingerprint(self.api_key), self.rates, shares=dict(self.shares)
        )


def rates_from_env(
    env: Mapping[str, str], account: str, defaults: Mapping[Bucket, Rate]
) -> dict[Bucket, Rate]:
    """One account's budgets: its own variables where set, else `defaults`."""
    rates = {}
    for bucket, suffix in RATE_VARIABLES.items():
        name = variable(account, suffix)
        raw = env.get(name)
        if raw is None:
            rates[bucket] = defaults[bucket]
            continue
        try:
            rates[bucket] = parse_rate(raw)
        except ValueError as exc:
            raise ConfigError(name, str(exc)) from None
    return rates


def shares_from_env(
    env: Mapping[str, str], account: str, defaults: Mapping[str, int]
) -> dict[str, int]:
    """One account's owner shares: `COINSWITCH_[NAME_]OWNER_SHARES=strat-a:3,strat-b:1`
    (its own variable where set, else `defaults`)."""
    name = variable(account, SHARES_SUFFIX)
    raw = env.get(name)
    if raw is None or not raw.strip():
        return dict(defaults)
    shares: dict[str, int] = {}
    for part in raw.split(","):
        match = _SHARE_RE.fullmatch(part.strip())
        if match is None or not 1 <= int(match[2]) <= MAX_SHARE:
            raise ConfigError(
                name,
                f"{part.strip()!r} is not an owner's share like strat-a:3 (an owner name, a "
                f"colon, a whole number 1 to {MAX_SHARE})",
            )
        shares[match[1]] = int(match[2])
    return shares


def _key(env: Mapping[str, str], name: str, what: str) -> str | None:
    raw = env.get(name) or None
    if raw is not None and not _HEX_KEY_RE.fullmatch(raw):
        # Never echo the value: it may be the private key.
        raise ConfigError(name, f"must be 64 hex characters ({what})")
    return raw.lower() if raw else None


def accounts_from_env(
    env: Mapping[str, str], defaults: Mapping[Bucket, Rate]
) -> dict[str, Account]:
    """Every configured account: `default` when its keys are set, then COINSWITCH_ACCOUNTS."""
    names: list[str] = []
    raw_names = env.get(ACCOUNTS_VARIABLE, "")
    for part in raw_names.split(","):
        name = part.strip().lower()
        if not name:
            continue
        if not _NAME_RE.fullmatch(name) or name == DEFAULT_ACCOUNT:
            raise ConfigError(
                ACCOUNTS_VARIABLE,
                f"{part.strip()!r} is not an account name like alpha "
                f"(a letter, then letters, digits or _; {DEFAULT_ACCOUNT!r} is reserved)",
            )
        if name in names:
            raise ConfigError(ACCOUNTS_VARIABLE, f"{name!r} is listed twice")
        names.append(name)
    accounts: dict[str, Account] = {}
    default_shares = shares_from_env(env, DEFAULT_ACCOUNT, {})
    for name in [DEFAULT_ACCOUNT, *names]:
        api_key = _key(env, variable(name, "API_KEY"), "an Ed25519 public key")
        secret = _key(env, variable(name, "SECRET_KEY"), "an Ed25519 seed")
        if name == DEFAULT_ACCOUNT and api_key is None and secret is None:
            continue  # no default account: only named ones
        if name != DEFAULT_ACCOUNT and api_key is None:
            raise ConfigError(variable(name, "API_KEY"), f"is not set (account {name!r})")
        accounts[name] = Account(
            name=name,
            api_key=api_key,
            secret_key=Secret(secret) if secret else None,
            rates=rates_from_env(env, name, defaults),
            shares=shares_from_env(env, name, default_shares),
        )
    return accounts


def register(client: redis.Redis, keys: Keys, accounts: Mapping[str, Account], now_ms: int) -> None:
    """Tell producers and read-only tools which accounts this worker serves (no secrets)."""
    entries = {name: account.info().to_json(now_ms) for name, account in accounts.items()}
    if entries:
        client.hset(keys.accounts, mapping=entries)


def registered(client: redis.Redis, keys: Keys) -> dict[str, AccountInfo]:
    """Every account some worker has registered, by name."""
    raw = client.hgetall(keys.accounts)
    return {name: AccountInfo.from_json(name, value) for name, value in sorted(raw.items())}


def is_registered(client: redis.Redis, keys: Keys, name: str) -> bool:
    """Whether some worker has registered this account."""
    return bool(client.hexists(keys.accounts, name))
