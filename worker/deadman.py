"""A dead man's switch: a strategy's orders come off the book when it goes silent.

CoinSwitch futures has no cancel-on-disconnect; cancel-worker, whose fleet outlives any one
strategy, gives it one. A strategy arms a switch (a name, a timeout, the symbols it guards,
or its whole account) and beats it; if no beat comes within the timeout, the switch fires:
an urgent cancel-all for each guarded symbol (the whole account when none), through the
cancel-all path with its records, confirmation and events.

How it holds:
- The deadline is the expiry of a Redis key (`cw:deadman:beat:<name>`, PX = timeout): one
  clock (Redis's), and a heartbeat is one command any language can send:
  `SET cw:deadman:beat:<name> <anything> PX <timeout_ms> XX` (nil: tripped or not armed).
- Every worker's dispatcher watches (one Lua call per loop, waking at the earliest expiry)
  and claims an expired switch atomically, so any one worker fires it and none depends on
  another: kill a host, stop beat, the rest still fire on time.
- A fired switch stays TRIPPED until armed again; a late beat does not re-arm it, and tells
  the beater it tripped.
- Firing creates its batches under ids derived from the switch and its arming, so a
  dispatcher that dies mid-fire is retried by another without a second cancel-all.
- Armed switches survive a Redis restart (AOF keeps the key's absolute expiry); heartbeats
  that could not land for longer than the timeout make it fire: the safe side.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from worker.errors import BrokerUnavailable, CancelWorkerError, InvalidRequest
from worker.models import (
    DEFAULT_ACCOUNT,
    DEFAULT_EXCHANGE,
    BatchRecord,
    Priority,
    derived_batch_id,
    validate_account,
    validate_exchange,
    validate_owner,
    validate_symbol,
)
from worker.records import DEFAULT_EVENTS_MAXLEN, now_ms
from worker.scripts import script
from worker.services import Services, get_services
from worker.settings import redact_url

MIN_TIMEOUT_S = 2.0
MAX_TIMEOUT_S = 3600.0
FIRING_RETRY_MS = 5000  # a switch claimed this long ago and not tripped yet is fired again
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")

log = structlog.get_logger(__name__)


class SwitchState(enum.StrEnum):
    """Where a switch stands."""

    ARMED = "ARMED"  # watched: it fires if no beat comes within its timeout
    FIRING = "FIRING"  # its timeout passed: a worker is sending its cancel-alls
    TRIPPED = "TRIPPED"  # it fired; a beat does not re-arm it (arm it again)
    DISARMED = "DISARMED"  # switched off by its owner


class SwitchTripped(CancelWorkerError):
    """Raised by a heartbeat for a switch that has fired: its orders are being cancelled."""

    def __init__(self, switch: Switch) -> None:
        batches = ", ".join(switch.batches) or "its cancel-alls"
        super().__init__(f"dead man's switch {switch.name!r} tripped; it sent {batches}")
        self.switch = switch


@dataclass(frozen=True)
class Switch:
    """One switch, as armed, and where it stands now."""

    name: str
    account: str
    exchange: str
    symbols: tuple[str, ...]  # empty: the whole account
    timeout_s: float
    state: SwitchState
    armed_at: int
    tripped_at: int | None
    batches: tuple[str, ...]  # the cancel-alls it sent when it fired
    left_ms: int | None  # until it fires, if armed and beaten in time
    owner: str | None = None  # guards only this strategy's orders

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (`deadman status --json`)."""
        return {
            "name": self.name,
            "account": self.account,
            "exchange": self.exchange,
            "symbols": list(self.symbols),
            "timeout_s": self.timeout_s,
            "state": self.state.value,
            "armed_at": self.armed_at,
            "tripped_at": self.tripped_at,
            "batches": list(self.batches),
            "left_ms": self.left_ms,
            "owner": self.owner,
        }


def validate_name(value: object) -> str:
    """Return a switch name, or raise InvalidRequest naming the value."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise InvalidRequest(
            "name", value, "must be a switch name like strat-1 (letters, digits, _ . : -)"
        )
    return value


def validate_timeout(value: object) -> float:
    """Return a timeout in seconds within MIN_TIMEOUT_S..MAX_TIMEOUT_S, or raise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest("timeout_s", value, "must be a number of seconds")
    if not MIN_TIMEOUT_S <= value <= MAX_TIMEOUT_S:
        raise InvalidRequest(
            "timeout_s", value, f"must be {MIN_TIMEOUT_S:g} to {MAX_TIMEOUT_S:g} seconds"
        )
    return float(value)


class Deadman:
    """Arms, beats, disarms and reads switches, and fires the ones whose time has come."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.keys = services.keys
        client = services.redis
        self._arm = script(client, "deadman_arm")
        self._beat = script(client, "deadman_beat")
        self._disarm = script(client, "deadman_disarm")
        self._check = script(client, "deadman_check")
        self._trip = script(client, "deadman_trip")

    def arm(
        self,
        name: str,
        timeout_s: float,
        symbols: list[str],
        account: str,
        exchange: str,
        owner: str | None = None,
    ) -> Switch:
        """Arm (or re-arm) a validated switch; it fires if not beaten within `timeout_s`."""
        self.services.require_account(account)
        keys = self.keys
        self._arm(
            keys=[
                keys.deadman(name),
                keys.deadman_beat(name),
                keys.deadman_armed,
                keys.deadman_names,
                keys.events,
                keys.deadman_wake,
            ],
            args=[
                name,
                account,
                exchange,
                ",".join(symbols),
                round(timeout_s * 1000),
                DEFAULT_EVENTS_MAXLEN,
                owner or "",
            ],
        )
        if not self.services.replication.confirmed():
            raise BrokerUnavailable(
                f"no replica confirmed arming {name!r} within "
                f"{self.services.settings.replica_wait_ms} ms; arm it again"
            )
        switch = self.get(name)
        assert switch is not None
        if not symbols and owner is None:
            log.warning(
                "deadman.whole_account",
                name=name,
                account=account,
                note="firing cancels every open order of the account, not only this strategy's",
            )
        log.info(
            "deadman.armed",
            name=name,
            account=account,
            symbols=symbols,
            owner=owner,
            timeout_s=timeout_s,
        )
        return switch

    def beat(self, name: str) -> int:
        """One heartbeat (one round trip); returns the timeout in ms it was pushed by.

        Raises SwitchTripped if the switch fired, InvalidRequest if it is unknown or disarmed.
        """
        reply = self._beat(keys=[self.keys.deadman(name), self.keys.deadman_beat(name)])
        code = int(reply[0])
        if code == 1:
            return int(reply[1])
        if code == 2:
            switch = self.get(name)
            assert switch is not None
            raise SwitchTripped(switch)
        reason = "is disarmed: arm it again" if code == 3 else "is not armed (unknown switch)"
        raise InvalidRequest("name", name, reason)

    def disarm(self, name: str) -> Switch:
        """Switch it off: it will not fire. InvalidRequest if unknown."""
        keys = self.keys
        previous = self._disarm(
            keys=[
                keys.deadman(name),
                keys.deadman_beat(name),
                keys.deadman_armed,
                keys.deadman_firing,
                keys.events,
            ],
            args=[name, DEFAULT_EVENTS_MAXLEN],
        )
        if not previous:
            raise InvalidRequest("name", name, "is not armed (unknown switch)")
        switch = self.get(name)
        assert switch is not None
        log.info("deadman.disarmed", name=name, was=previous)
        return switch

    def get(self, name: str) -> Switch | None:
        """One switch, or None if it was never armed."""
        pipe = self.services.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.deadman(name))
        pipe.pttl(self.keys.deadman_beat(name))
        fields, left = pipe.execute()
        if not fields:
            return None
        state = SwitchState(fields["state"])
        return Switch(
            name=name,
            account=fields.get("account", DEFAULT_ACCOUNT),
            exchange=fields.get("exchange", DEFAULT_EXCHANGE),
            symbols=tuple(s for s in fields.get("symbols", "").split(",") if s),
            timeout_s=int(fields.get("timeout_ms", 0)) / 1000,
            state=state,
            armed_at=int(fields.get("armed_at", 0)),
            tripped_at=int(fields["tripped_at"]) if fields.get("tripped_at") else None,
            batches=tuple(b for b in fields.get("batches", "").split(",") if b),
            left_ms=max(0, int(left)) if state is SwitchState.ARMED and int(left) >= 0 else None,
            owner=fields.get("owner") or None,
        )

    def all(self) -> list[Switch]:
        """Every switch ever armed (and not forgotten), by name."""
        names = sorted(self.services.redis.smembers(self.keys.deadman_names))
        return [s for s in (self.get(n) for n in names) if s is not None]

    def check(self) -> float | None:
        """Fire every switch whose deadline passed; return seconds until the next deadline."""
        keys = self.keys
        reply = self._check(
            keys=[keys.deadman_armed, keys.deadman_firing],
            args=[keys.deadman(""), keys.deadman_beat(""), FIRING_RETRY_MS],
        )
        next_ms = int(reply[0])
        for name in reply[1:]:
            self.fire(str(name))
        return None if next_ms < 0 else next_ms / 1000

    def fire(self, name: str) -> list[str]:
        """Send the cancel-alls of a claimed switch (idempotent); mark it TRIPPED."""
        services, switch = self.services, self.get(name)
        if switch is None or switch.state is not SwitchState.FIRING:
            return []
        batch_ids = []
        # An owner's switch: one batch scoped to its orders, over the symbols it guards;
        # else a cancel-all per symbol (the whole account when none).
        scopes = [None] if switch.owner else (switch.symbols or (None,))
        for symbol in scopes:
            scope = f"{name}:{switch.armed_at}:{symbol or switch.owner or '*'}"
            batch_id = derived_batch_id(scope)
            batch = BatchRecord.queued(
                batch_id,
                account=switch.account,
                exchange=switch.exchange,
                symbol=symbol,
                priority=Priority.URGENT,
                at=now_ms(),
                owner=switch.owner,
                symbols=list(switch.symbols) if switch.owner else None,
            )
            services.batches.create(
                batch, services.scheduler, watch_at_ms=now_ms() + services.watch_grace_ms
            )
            batch_ids.append(batch_id)
        tripped = self._trip(
            keys=[
                self.keys.deadman(name),
                self.keys.deadman_firing,
                self.keys.events,
                self.keys.deadman_stats,
            ],
            args=[name, ",".join(batch_ids), DEFAULT_EVENTS_MAXLEN],
        )
        if tripped:
            log.error(
                "deadman.triggered",
                name=name,
                account=switch.account,
                symbols=list(switch.symbols) or "the whole account",
                batches=batch_ids,
            )
        return batch_ids

    def fired_counts(self) -> dict[str, int]:
        """How many times each switch has fired (for metrics)."""
        raw = self.services.redis.hgetall(self.keys.deadman_stats)
        return {name: int(count) for name, count in raw.items()}


def _deadman() -> Deadman:
    return Deadman(get_services())


def _unavailable(exc: redis.RedisError) -> BrokerUnavailable:
    where = redact_url(get_services().settings.redis_url)
    return BrokerUnavailable(f"Redis unavailable at {where}: {exc}")


def arm_deadman(
    name: str,
    timeout_s: float,
    symbols: list[str] | None = None,
    *,
    account: str = DEFAULT_ACCOUNT,
    exchange: str = DEFAULT_EXCHANGE,
    owner: str | None = None,
) -> Switch:
    """Arm a dead man's switch: without a heartbeat for `timeout_s`, cancel the orders of
    `symbols` (every open order of the account when none) with urgent cancel-alls; with
    `owner`, only that strategy's orders (tracked to it) of those symbols (of every symbol
    it has open orders in, when none), never another's.

    Beat it every timeout ÷ 4 (`heartbeat(name)`) and disarm it before a planned stop.
    Arming a name again re-arms it (a tripped switch included), with the new settings.
    """
    name = validate_name(name)
    timeout = validate_timeout(timeout_s)
    chosen = [validate_symbol(s) for s in (symbols or [])]
    guarded = list(dict.fromkeys(s for s in chosen if s is not None))
    account = validate_account(account)
    exchange = validate_exchange(exchange)
    guard = validate_owner(owner) if owner is not None else None
    try:
        return _deadman().arm(name, timeout, guarded, account, exchange, guard)
    except redis.RedisError as exc:
        raise _unavailable(exc) from exc


def heartbeat(name: str) -> int:
    """Beat the switch (one Redis round trip); returns its timeout in ms.

    Raises SwitchTripped if it has fired (a late beat does not re-arm it), InvalidRequest if
    it is unknown or disarmed.
    """
    try:
        return _deadman().beat(validate_name(name))
    except redis.RedisError as exc:
        raise _unavailable(exc) from exc


def disarm(name: str) -> Switch:
    """Switch it off (before a planned stop): it will not fire."""
    try:
        return _deadman().disarm(validate_name(name))
    except redis.RedisError as exc:
        raise _unavailable(exc) from exc


def deadman_status(name: str | None = None) -> list[Switch]:
    """Every switch, or the one named (InvalidRequest if unknown)."""
    try:
        if name is None:
            return _deadman().all()
        switch = _deadman().get(validate_name(name))
    except redis.RedisError as exc:
        raise _unavailable(exc) from exc
    if switch is None:
        raise InvalidRequest("name", name, "is not armed (unknown switch)")
    return [switch]
