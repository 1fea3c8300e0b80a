"""Cancel-all records in Redis: one JSON string per batch, its events, and its completion.

A batch is created QUEUED and in line for a cancel-all turn in one script. Once the exchange
names the orders it sent for cancellation, each gets its own cancel record (worker.records)
and the batch keeps the set of those not final yet; when that set empties the batch is DONE.
Every state change is an event in the same stream as the orders' (`kind` says which).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis

from worker.keys import Keys
from worker.models import BatchRecord, BatchState, Bucket, Priority
from worker.records import DEFAULT_EVENTS_MAXLEN, update_stored
from worker.scheduler import LIBRARY, budget_id, room_keys

#: Create a batch record with its event and sweeper watch, and put it in line for a turn.
#: KEYS: [1] batch key, [2] events, [3] due zset, [4..7] the cancel-all line (ready, later,
#:       info, active index), [8] wake list
#: ARGV: [1] TTL s, [2] record JSON, [3] events maxlen, [4] batch id, [5] account,
#:       [6] exchange, [7] symbol or "", [8] priority, [9] rank, [10] requested ms,
#:       [11] watch-at ms, [12] budget id
#: Returns: 1 if created, 0 if the id existed.
CREATE_BATCH_LUA = (
    LIBRARY
    + """
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'EX', tonumber(ARGV[1])) then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'kind', 'batch', 'batch_id', ARGV[4],
  'account', ARGV[5], 'exchange', ARGV[6], 'symbol', ARGV[7], 'priority', ARGV[8],
  'state', 'QUEUED', 'previous', '', 'at', ARGV[10], 'orders', '0', 'error_code', '')
redis.call('ZADD', KEYS[3], tonumber(ARGV[11]), ARGV[4])
local now = clock()
join(KEYS[4], KEYS[5], KEYS[6], KEYS[7], ARGV[12], ARGV[4], tonumber(ARGV[9]), now,
  tonumber(ARGV[10]), 0, now)
wake(KEYS[8])
return 1
"""
)

#: Undo CREATE_BATCH_LUA for a batch still QUEUED and waiting in line (nothing sent it).
#: KEYS: [1] batch key, [2] due zset, [3] the cancel-all line's ready zset
#: ARGV: [1] batch id
#: Returns: 1 if removed.
DISCARD_BATCH_LUA = """
local body = redis.call('GET', KEYS[1])
if not body or not redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 0 end
if cjson.decode(body)['state'] ~= 'QUEUED' then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""

#: A change to a batch: return the batch to store, or None to leave it as it is.
BatchChange = Callable[[BatchRecord], BatchRecord | None]


class BatchStore:
    """Reads and changes cancel-all records; the only writer of batch keys."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        ttl_s: int,
        events_maxlen: int = DEFAULT_EVENTS_MAXLEN,
    ) -> None:
        self.client = client
        self.keys = keys
        self.ttl_s = ttl_s
        self.events_maxlen = events_maxlen
        self._create = client.register_script(CREATE_BATCH_LUA)
        self._discard = client.register_script(DISCARD_BATCH_LUA)

    def create(self, batch: BatchRecord, *, watch_at_ms: int) -> bool:
        """Store a new QUEUED batch and queue it for a cancel-all turn (urgent first)."""
        created = self._create(
            keys=[
                self.keys.batch(batch.batch_id),
                self.keys.events,
                self.keys.due,
                *room_keys(self.keys, batch.account, Bucket.CANCEL_ALL),
                self.keys.wake,
            ],
            args=[
                self.ttl_s,
                json.dumps(batch.to_dict()),
                self.events_maxlen,
                batch.batch_id,
                batch.account,
                batch.exchange,
                batch.symbol or "",
                batch.priority,
                Priority(batch.priority).rank,
                batch.requested_at,
                watch_at_ms,
                budget_id(batch.account, Bucket.CANCEL_ALL),
            ],
        )
        return bool(created)

    def discard_queued(self, batch: BatchRecord) -> bool:
        """Remove a batch nothing has sent yet (its request could not be confirmed)."""
        keys = [
            self.keys.batch(batch.batch_id),
            self.keys.due,
            self.keys.room_ready(batch.account, Bucket.CANCEL_ALL),
        ]
        return bool(self._discard(keys=keys, args=[batch.batch_id]))

    def get(self, batch_id: str) -> BatchRecord | None:
        """The record of one batch, or None if unknown (or expired)."""
        raw = self.client.get(self.keys.batch(batch_id))
        return None if raw is None else BatchRecord.from_dict(json.loads(raw))

    def update(self, batch_id: str, change: BatchChange) -> BatchRecord | None:
        """Apply `change` atomically; publish an event if the state moved; return the result."""

        def alongside(pipe: Any, current: BatchRecord, changed: BatchRecord, at: int) -> None:
            if changed.is_final:
                pipe.zrem(self.keys.due, batch_id)
            if changed.state != current.state:
                self._publish(pipe, changed, current.state)

        return update_stored(
            self.client,
            self.keys.batch(batch_id),
            BatchRecord.from_dict,
            change,
            ttl_s=self.ttl_s,
            alongside=alongside,
        )

    def transition(self, batch_id: str, state: BatchState, **fields: Any) -> BatchRecord | None:
        """Move a batch to `state` (a final batch is left alone); return what is stored."""

        def change(batch: BatchRecord) -> BatchRecord | None:
            if batch.is_final:
                return None
            batch.state = state
            for name, value in fields.items():
                setattr(batch, name, value)
            return batch

        return self.update(batch_id, change)

    def track(self, batch_id: str, pending: list[str]) -> None:
        """Remember which of the batch's orders have no final record yet."""
        key = self.keys.batch_pending(batch_id)
        pipe = self.client.pipeline(transaction=True)
        if pending:
            pipe.sadd(key, *pending)
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    def finish_if_done(self, batch_id: str) -> BatchRecord | None:
        """Mark an accepted batch DONE once none of its orders is pending; return it if so."""
        if self.client.scard(self.keys.batch_pending(batch_id)):
            return None

        def change(batch: BatchRecord) -> BatchRecord | None:
            if batch.state is not BatchState.ACCEPTED:
                return None
            batch.state = BatchState.DONE
            return batch

        done = self.update(batch_id, change)
        return done if done is not None and done.state is BatchState.DONE else None

    def _publish(self, pipe: Any, batch: BatchRecord, previous: BatchState) -> None:
        pipe.xadd(
            self.keys.events,
            {
                "kind": "batch",
                "batch_id": batch.batch_id,
                "account": batch.account,
                "exchange": batch.exchange,
                "symbol": batch.symbol or "",
                "priority": batch.priority,
                "state": batch.state.value,
                "previous": previous.value,
                "at": str(batch.updated_at),
                "orders": str(len(batch.orders_ids)),
                "error_code": (batch.error or {}).get("code", ""),
            },
            maxlen=self.events_maxlen,
            approximate=True,
        )
