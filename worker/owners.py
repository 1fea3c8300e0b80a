"""Owners: the strategies that share an account, each with its own orders.

An account (an API key) owns the budgets; an owner, a strategy's name, gets a share of them
and a scope for mass actions. A strategy tracks its orders when it places them
(`track_orders`: one round trip for a batch); from then on:
- its cancels wait in its own queue of each line, and owners with jobs waiting take turns
  (worker.scheduler, lines.lua), weighted by COINSWITCH_[NAME_]OWNER_SHARES;
- a cancel-all or a dead man's switch scoped to it cancels its open orders and no one
  else's (worker.mass_cancel);
- `status --owner` lists its orders.
A tracked order forgets its owner when its record becomes final, or with the record's TTL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

from worker.errors import BrokerUnavailable, InvalidRequest
from worker.models import (
    DEFAULT_ACCOUNT,
    CancelRecord,
    validate_account,
    validate_order_id,
    validate_owner,
)
from worker.records import now_ms
from worker.scripts import script
from worker.services import Services, get_services
from worker.settings import redact_url


@dataclass(frozen=True)
class Owned:
    """One order an owner tracks, and its record if a cancel was requested."""

    order_id: str
    record: CancelRecord | None


def track_orders(order_ids: Iterable[str], owner: str, account: str = DEFAULT_ACCOUNT) -> int:
    """Track orders to an owner (a strategy's name), all or none; return how many were new.

    Raises InvalidRequest naming the bad value (an id, the owner, the account, an empty list,
    or an order already tracked to another owner, named), and nothing is written.
    """
    ids = list(dict.fromkeys(validate_order_id(order_id) for order_id in order_ids))
    if not ids:
        raise InvalidRequest("order_ids", [], "is empty: name at least one order")
    return track(get_services(), ids, validate_owner(owner), validate_account(account))


def track(services: Services, ids: Sequence[str], owner: str, account: str) -> int:
    """Track validated ids (also what the task sent by name does)."""
    keys = services.keys
    try:
        services.require_account(account)
        reply = script(services.redis, "track")(
            keys=[keys.owned(account, owner), *map(keys.owner_of, ids)],
            args=[owner, services.settings.record_ttl_s, now_ms(), *ids],
        )
    except redis.RedisError as exc:
        where = redact_url(services.settings.redis_url)
        raise BrokerUnavailable(f"Redis unavailable at {where}: {exc}") from exc
    if reply[0] == "conflict":
        raise InvalidRequest("owner", owner, f"order {reply[1]} is tracked to owner {reply[2]!r}")
    return int(reply[1])


def owners_of(services: Services, order_ids: Sequence[str]) -> dict[str, str | None]:
    """The owner each order is tracked to (None: untracked), in one round trip."""
    if not order_ids:
        return {}
    found = services.redis.mget([services.keys.owner_of(i) for i in order_ids])
    return dict(zip(order_ids, found, strict=True))


def owned_orders(owner: str, account: str = DEFAULT_ACCOUNT) -> list[Owned]:
    """The orders tracked to an owner, oldest first, with their records (the final ones
    leave the list as they are read: a final order forgets its owner)."""
    return owned(get_services(), validate_owner(owner), validate_account(account))


def owned(services: Services, owner: str, account: str) -> list[Owned]:
    """The orders tracked to a validated owner, with their records (see owned_orders)."""
    key = services.keys.owned(account, owner)
    ids = [str(i) for i in services.redis.zrange(key, 0, -1)]
    records = services.store.get_many(ids)
    tracked = owners_of(services, ids)
    gone = [
        i
        for i, record in zip(ids, records, strict=True)
        if tracked[i] != owner or (record is not None and record.is_final)
    ]
    if gone:
        services.redis.zrem(key, *gone)
    return [Owned(i, record) for i, record in zip(ids, records, strict=True) if i not in set(gone)]
