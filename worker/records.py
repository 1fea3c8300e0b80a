"""Cancellation records in Redis: atomic transitions, history, events and re-check times.

Each record is one JSON string, changed only inside WATCH/MULTI so concurrent workers never
lose an update. A final state is never changed again, so a late duplicate poll cannot flip
it. Every state change is appended to a Redis Stream in the same transaction.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

import redis

from worker.keys import Keys
from worker.models import DEFAULT_ACCOUNT, Bucket, CancelRecord, OrderState, Priority
from worker.scheduler import LIBRARY, budget_id, room_keys

DEFAULT_EVENTS_MAXLEN = 100_000  # approximate cap of the event stream (entries)

#: Upper bounds (seconds) of the request → final histogram that metrics expose.
TIME_TO_FINAL_BUCKETS_S = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)

#: Create the records that do not exist yet, each with its first event, count and watch;
#: a QUEUED one also joins its account's line for a DELETE turn, and one a cancel-all sent
#: joins its batch's pending set. Wakes the dispatchers if anything joined a line.
#: KEYS: [1] events stream, [2] state counts hash, [3] due zset, [4..7] the cancel line
#:       (ready, later, info, active index), [8] wake list, [9] the batch's pending set,
#:       [10..] record keys
#: ARGV: [1] TTL s, [2] watch-at ms or "", [3] events maxlen, [4] exchange, [5] now ms,
#:       [6] account, [7] priority, [8] rank, [9] budget id, [10] state, [11] "1" to join
#:       the cancel line, [12] batch id or "", then (order_id, record JSON) per record key
#: Returns: a list of 1 (created) / 0 (existed), one per record key.
CREATE_LUA = (
    LIBRARY
    + """
local created, joined = {}, false
local now = clock()
for i = 10, #KEYS do
  local n = (i - 10) * 2
  local order_id, body = ARGV[13 + n], ARGV[14 + n]
  if redis.call('SET', KEYS[i], body, 'NX', 'EX', tonumber(ARGV[1])) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'kind', 'order',
      'order_id', order_id, 'exchange', ARGV[4], 'account', ARGV[6], 'priority', ARGV[7],
      'state', ARGV[10], 'previous', '', 'at', ARGV[5], 'error_code', '', 'batch_id', ARGV[12])
    redis.call('HINCRBY', KEYS[2], ARGV[10], 1)
    if ARGV[2] ~= '' then redis.call('ZADD', KEYS[3], tonumber(ARGV[2]), order_id) end
    if ARGV[11] == '1' then
      join(KEYS[4], KEYS[5], KEYS[6], KEYS[7], ARGV[9], order_id, tonumber(ARGV[8]), now,
        tonumber(ARGV[5]), n / 2, now)
      joined = true
    end
    if ARGV[12] ~= '' then redis.call('SADD', KEYS[9], order_id) end
    created[#created + 1] = 1
  else
    created[#created + 1] = 0
  end
end
if joined then wake(KEYS[8]) end
return created
"""
)

#: Undo CREATE_LUA for records still QUEUED and still waiting in line (nothing sent them
#: yet); a record a worker has already moved on is kept, since its cancel is under way.
#: KEYS: [1] state counts hash, [2] due zset, [3..5] the cancel room, [6..] record keys
#: ARGV: the order id of each record key, in order
#: Returns: how many records were removed.
DISCARD_LUA = """
local removed = 0
for i = 6, #KEYS do
  local order_id = ARGV[i - 5]
  local body = redis.call('GET', KEYS[i])
  local waiting = redis.call('ZSCORE', KEYS[3], order_id) or redis.call('ZSCORE', KEYS[4], order_id)
  if body and waiting and cjson.decode(body)['state'] == 'QUEUED' then
    redis.call('DEL', KEYS[i])
    redis.call('ZREM', KEYS[2], order_id)
    redis.call('ZREM', KEYS[3], order_id)
    redis.call('ZREM', KEYS[4], order_id)
    redis.call('HDEL', KEYS[5], order_id)
    removed = removed + 1
  end
end
if removed > 0 then redis.call('HINCRBY', KEYS[1], 'QUEUED', -removed) end
return removed
"""

#: A change to a record: return the record to store, or None to leave it as it is.
Change = Callable[[CancelRecord], CancelRecord | None]


def now_ms() -> int:
    """Wall-clock Unix time in milliseconds, the unit of every record timestamp."""
    return time.time_ns() // 1_000_000


class Stored(Protocol):
    """What `update_stored` needs of a record (CancelRecord, BatchRecord)."""

    updated_at: int
    final_at: int | None
    history: list[dict[str, Any]]

    @property
    def state(self) -> enum.StrEnum: ...

    @property
    def is_final(self) -> bool: ...

    def to_dict(self) -> dict[str, Any]: ...


StoredT = TypeVar("StoredT", bound=Stored)


def update_stored(
    client: redis.Redis,
    key: str,
    parse: Callable[[dict[str, Any]], StoredT],
    change: Callable[[StoredT], StoredT | None],
    *,
    ttl_s: int,
    alongside: Callable[[Any, StoredT, StoredT, int], None],
) -> StoredT | None:
    """Apply `change` to the JSON record at `key` in one WATCH transaction.

    The change gets a copy; what it returns is stamped (update time, state history, final
    time) and stored, with whatever `alongside(pipe, current, changed, at)` queues in the same
    transaction. Returns what is stored: the change, the unchanged record if it returned
    None, or None if there is no record.
    """
    result: list[StoredT | None] = [None]

    def attempt(pipe: Any) -> None:
        raw = pipe.get(key)
        if raw is None:
            result[0] = None
            return
        current = parse(json.loads(raw))
        changed = change(parse(current.to_dict()))
        result[0] = current
        if changed is None:
            return
        at = now_ms()
        changed.updated_at = at
        if changed.state != current.state:
            changed.history.append({"state": changed.state.value, "at": at})
            if changed.is_final:
                changed.final_at = at
        pipe.multi()
        pipe.set(key, json.dumps(changed.to_dict()), ex=ttl_s)
        alongside(pipe, current, changed, at)
        result[0] = changed

    client.transaction(attempt, key)
    return result[0]


class RecordStore:
    """Reads and changes cancellation records; the only writer of record keys."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        ttl_s: int,
        events_maxlen: int = DEFAULT_EVENTS_MAXLEN,
        on_batch_order_final: Callable[[str], object] | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.ttl_s = ttl_s
        self.events_maxlen = events_maxlen
        #: Called with the batch id after an order of a cancel-all became final.
        self.on_batch_order_final = on_batch_order_final
        self._create = client.register_script(CREATE_LUA)
        self._discard = client.register_script(DISCARD_LUA)

    def get(self, order_id: str) -> CancelRecord | None:
        """The record of one order, or None if nobody asked to cancel it (or it expired)."""
        raw = self.client.get(self.keys.record(order_id))
        return None if raw is None else CancelRecord.from_dict(json.loads(raw))

    def get_many(self, order_ids: Iterable[str]) -> list[CancelRecord | None]:
        """Records of several orders in one round trip, in the same order."""
        ids = list(order_ids)
        if not ids:
            return []
        raws = self.client.mget([self.keys.record(i) for i in ids])
        return [None if raw is None else CancelRecord.from_dict(json.loads(raw)) for raw in raws]

    def create(
        self,
        order_id: str,
        exchange: str,
        *,
        account: str = DEFAULT_ACCOUNT,
        priority: Priority = Priority.NORMAL,
        watch_at_ms: int | None = None,
    ) -> tuple[CancelRecord, bool]:
        """Create a QUEUED record unless one exists; return (record, created)."""
        records, created = self.create_many(
            [order_id], exchange, account=account, priority=priority, watch_at_ms=watch_at_ms
        )
        return records[0], created[0]

    def create_many(
        self,
        order_ids: list[str],
        exchange: str,
        *,
        account: str = DEFAULT_ACCOUNT,
        priority: Priority = Priority.NORMAL,
        watch_at_ms: int | None = None,
        batch_id: str | None = None,
        accepted: bool = False,
    ) -> tuple[list[CancelRecord], list[bool]]:
        """Create records for the ids that have none, atomically, in one round trip.

        Each new record is QUEUED and joins the account's line for a DELETE turn, unless
        `accepted`: orders a cancel-all already sent for cancellation are created
        CANCELLATION_RAISED. With `batch_id` each is also pending in that batch. Each new
        record gets its first event and state count in the same script, and with
        `watch_at_ms` the sweeper watches it from then on, so no record exists that nothing
        would ever look at. Existing records are returned as they are.
        """
        at = now_ms()
        state = OrderState.CANCELLATION_RAISED if accepted else OrderState.QUEUED
        fresh = [
            _new_record(order_id, exchange, account, priority, at, state, batch_id, accepted)
            for order_id in order_ids
        ]
        if not fresh:
            return [], []
        flags = self._create(
            keys=[
                self.keys.events,
                self.keys.state_counts,
                self.keys.due,
                *room_keys(self.keys, account, Bucket.CANCEL),
                self.keys.wake,
                self.keys.batch_pending(batch_id or ""),
                *(self.keys.record(r.order_id) for r in fresh),
            ],
            args=[
                self.ttl_s,
                "" if watch_at_ms is None else watch_at_ms,
                self.events_maxlen,
                exchange,
                at,
                account,
                priority.value,
                priority.rank,
                budget_id(account, Bucket.CANCEL),
                state.value,
                "0" if accepted else "1",
                batch_id or "",
                *(item for r in fresh for item in (r.order_id, json.dumps(r.to_dict()))),
            ],
        )
        created = [bool(flag) for flag in flags]
        pairs = list(zip(fresh, created, strict=True))
        existing = iter(self.get_many([r.order_id for r, made in pairs if not made]))
        records = [r if made else (next(existing) or r) for r, made in pairs]
        return records, created

    def discard_queued(self, order_ids: list[str], account: str = DEFAULT_ACCOUNT) -> int:
        """Remove QUEUED records still waiting in line (nothing sent them); return how many.

        Their counts, sweeper watches and places in line go too, so a later request creates
        them afresh.
        """
        if not order_ids:
            return 0
        keys = [
            self.keys.state_counts,
            self.keys.due,
            *room_keys(self.keys, account, Bucket.CANCEL)[:3],
            *map(self.keys.record, order_ids),
        ]
        return int(self._discard(keys=keys, args=order_ids))

    def update(self, order_id: str, change: Change) -> CancelRecord | None:
        """Apply `change` atomically; publish an event if the state moved; return the result."""

        def alongside(pipe: Any, current: CancelRecord, changed: CancelRecord, at: int) -> None:
            if changed.is_final:
                pipe.zrem(self.keys.due, order_id)
                pipe.zrem(self.keys.confirm(changed.account), order_id)
                for bucket in (Bucket.CANCEL, Bucket.STATUS):  # no turn is needed any more
                    pipe.zrem(self.keys.room_ready(changed.account, bucket), order_id)
                    pipe.zrem(self.keys.room_later(changed.account, bucket), order_id)
                    pipe.hdel(self.keys.room_info(changed.account, bucket), order_id)
                if changed.batch_id:
                    pipe.srem(self.keys.batch_pending(changed.batch_id), order_id)
            if changed.state != current.state:
                self._publish(changed, previous=current.state, pipe=pipe)
                pipe.hincrby(self.keys.state_counts, current.state.value, -1)
                pipe.hincrby(self.keys.state_counts, changed.state.value, 1)
                if changed.is_final:
                    self._observe_time_to_final(pipe, at - changed.requested_at)

        final = update_stored(
            self.client,
            self.keys.record(order_id),
            CancelRecord.from_dict,
            change,
            ttl_s=self.ttl_s,
            alongside=alongside,
        )
        if final is not None and final.is_final and final.batch_id and self.on_batch_order_final:
            self.on_batch_order_final(final.batch_id)
        return final

    def transition(
        self,
        order_id: str,
        state: OrderState,
        *,
        order: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
        **fields: Any,
    ) -> CancelRecord | None:
        """Move a record to `state` (a final record is left alone); return what is stored."""

        def change(record: CancelRecord) -> CancelRecord | None:
            if record.is_final:
                return None
            record.state = state
            if order is not None:
                record.order = order
            if error is not None:
                record.error = error
            for name, value in fields.items():
                setattr(record, name, value)
            return record

        return self.update(order_id, change)

    def settle(self, order_id: str, order: dict[str, Any]) -> CancelRecord | None:
        """Record a terminal status the exchange showed (a status read, a list, a cancel)."""
        state = OrderState(order["status"])
        return self.transition(order_id, state, order=order, delete_in_flight=False)

    def schedule_check(self, order_id: str, at_ms: int) -> None:
        """Ask the sweeper to look at this order again at `at_ms` (if nothing else does)."""
        self.schedule_checks({order_id: at_ms})

    def schedule_checks(self, due: dict[str, int]) -> None:
        """schedule_check for several orders in one round trip."""
        if due:
            self.client.zadd(self.keys.due, due)

    def unschedule(self, order_id: str) -> None:
        """Stop watching an order (it is final or gone)."""
        self.client.zrem(self.keys.due, order_id)

    def due(self, until_ms: int, limit: int) -> list[str]:
        """Order ids whose re-check time has come, oldest first."""
        return list(self.client.zrangebyscore(self.keys.due, "-inf", until_ms, 0, limit))

    def count_due(self) -> int:
        """How many unfinished orders the sweeper is watching."""
        return int(self.client.zcard(self.keys.due))

    def state_counts(self) -> dict[str, int]:
        """How many records are in each state right now."""
        return {state: int(n) for state, n in self.client.hgetall(self.keys.state_counts).items()}

    def time_to_final(self) -> tuple[list[tuple[float, int]], int, float]:
        """The request → final histogram: ([(bound_s, cumulative count)], count, sum_s)."""
        raw = self.client.hgetall(self.keys.time_to_final)
        buckets = [(b, int(raw.get(f"le:{b}", 0))) for b in TIME_TO_FINAL_BUCKETS_S]
        return buckets, int(raw.get("count", 0)), int(raw.get("sum_ms", 0)) / 1000

    def _observe_time_to_final(self, pipe: Any, elapsed_ms: int) -> None:
        for bound in TIME_TO_FINAL_BUCKETS_S:
            if elapsed_ms <= bound * 1000:
                pipe.hincrby(self.keys.time_to_final, f"le:{bound}", 1)
        pipe.hincrby(self.keys.time_to_final, "count", 1)
        pipe.hincrby(self.keys.time_to_final, "sum_ms", max(0, elapsed_ms))

    def _publish(
        self, record: CancelRecord, *, previous: OrderState | None, pipe: Any = None
    ) -> None:
        event = {
            "kind": "order",
            "order_id": record.order_id,
            "exchange": record.exchange,
            "account": record.account,
            "priority": record.priority,
            "state": record.state.value,
            "previous": previous.value if previous else "",
            "at": str(record.updated_at),
            "error_code": (record.error or {}).get("code", ""),
            "batch_id": record.batch_id or "",
        }
        (pipe or self.client).xadd(
            self.keys.events, event, maxlen=self.events_maxlen, approximate=True
        )


def _new_record(
    order_id: str,
    exchange: str,
    account: str,
    priority: Priority,
    at: int,
    state: OrderState,
    batch_id: str | None,
    accepted: bool,
) -> CancelRecord:
    return CancelRecord(
        order_id=order_id,
        exchange=exchange,
        state=state,
        requested_at=at,
        updated_at=at,
        account=account,
        priority=priority.value,
        history=[{"state": state.value, "at": at}],
        batch_id=batch_id,
        cancel_accepted=accepted,
    )
