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
from worker.records import DEFAULT_EVENTS_MAXLEN, now_ms, stamp
from worker.scheduler import Scheduler
from worker.scripts import script

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
        self._create = script(client, "create_batch")
        self._discard = script(client, "discard_batch")

    def create(
        self, batch: BatchRecord, scheduler: Scheduler, *, watch_at_ms: int, owner: str = ""
    ) -> bool:
        """Store a new QUEUED batch and queue it for a cancel-all turn (urgent first)."""
        line = scheduler.line(batch.account, Bucket.CANCEL_ALL)
        created = self._create(
            keys=[
                self.keys.batch(batch.batch_id),
                self.keys.events,
                self.keys.due,
                *line.keys,
                line.active,
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
                *line.args,
                owner,
            ],
        )
        return bool(created)

    def discard_queued(self, batch: BatchRecord, scheduler: Scheduler) -> bool:
        """Remove a batch nothing has sent yet (its request could not be confirmed)."""
        line = scheduler.line(batch.account, Bucket.CANCEL_ALL)
        keys = [self.keys.batch(batch.batch_id), self.keys.due, *line.keys, line.active]
        return bool(self._discard(keys=keys, args=[*line.args, batch.batch_id]))

    def get(self, batch_id: str) -> BatchRecord | None:
        """The record of one batch, or None if unknown (or expired)."""
        raw = self.client.get(self.keys.batch(batch_id))
        return None if raw is None else BatchRecord.from_dict(json.loads(raw))

    def update(self, batch_id: str, change: BatchChange) -> BatchRecord | None:
        """Apply `change` atomically; publish an event if the state moved; return the result."""

        key = self.keys.batch(batch_id)
        result: list[BatchRecord | None] = [None]

        def attempt(pipe: Any) -> None:
            raw = pipe.get(key)
            current = None if raw is None else BatchRecord.from_dict(json.loads(raw))
            result[0] = current
            changed = None if current is None else change(BatchRecord.from_dict(json.loads(raw)))
            if current is None or changed is None:
                return
            stamp(current, changed, now_ms())
            pipe.multi()
            pipe.set(key, json.dumps(changed.to_dict()), ex=self.ttl_s)
            if changed.is_final:
                pipe.zrem(self.keys.due, batch_id)
            if changed.state != current.state:
                self._publish(pipe, changed, current.state)
            result[0] = changed

        self.client.transaction(attempt, key)
        return result[0]

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
