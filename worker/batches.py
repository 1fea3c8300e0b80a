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

SCOPE_JOB = "scope"  # `scope:<batch_id>:<symbol or *>[@to_time#page]`: an owner's list read
ALL_SYMBOLS = "*"  # a scoped read of every symbol's open orders


def first_job(batch: BatchRecord) -> tuple[Bucket, str]:
    """Where a new batch waits first: its cancel-all turn, or (scoped to an owner) a read of
    the open orders of its first symbol (`*`: all of them)."""
    if batch.scoped:
        target = batch.symbols[0] if batch.symbols else ALL_SYMBOLS
        return Bucket.OPEN_ORDERS, f"{SCOPE_JOB}:{batch.batch_id}:{target}"
    return Bucket.CANCEL_ALL, batch.batch_id


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

    def create(self, batch: BatchRecord, scheduler: Scheduler, *, watch_at_ms: int) -> bool:
        """Store a new QUEUED batch and queue it, urgent first: for a cancel-all turn, or
        scoped to an owner, for a read of the open orders first (worker.mass_cancel)."""
        bucket, job = first_job(batch)
        line = scheduler.line(batch.account, bucket)
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
                batch.owner or "",
                job,
            ],
        )
        return bool(created)

    def discard_queued(self, batch: BatchRecord, scheduler: Scheduler) -> bool:
        """Remove a batch nothing has sent yet (its request could not be confirmed)."""
        bucket, job = first_job(batch)
        line = scheduler.line(batch.account, bucket)
        keys = [self.keys.batch(batch.batch_id), self.keys.due, *line.keys, line.active]
        return bool(self._discard(keys=keys, args=[*line.args, batch.batch_id, job]))

    def get(self, batch_id: str) -> BatchRecord | None:
        """The record of one batch, or None if unknown (or expired)."""
        raw = self.client.get(self.keys.batch(batch_id))
        return None if raw is None else BatchRecord.from_dict(json.loads(raw))

    def update(self, batch_id: str, change: BatchChange) -> BatchRecord | None:
        """Apply `change` atomically; publish an event if the state moved; return the result."""

        key = self.keys.batch(batch_id)
        result: list[BatchRecord | None] = [None]
        ended = [False]  # this change made the batch final

        def attempt(pipe: Any) -> None:
            raw = pipe.get(key)
            current = None if raw is None else BatchRecord.from_dict(json.loads(raw))
            result[0], ended[0] = current, False
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
            result[0], ended[0] = changed, changed.is_final and not current.is_final

        self.client.transaction(attempt, key)
        batch = result[0]
        if ended[0] and batch is not None and batch.parent:
            self._child_ended(batch)
        return batch

    def _child_ended(self, child: BatchRecord) -> None:
        """A scoped batch's cancel-all ended: it is no longer pending; a refusal is the
        parent's error (its owner's orders of that symbol were not cancelled)."""
        assert child.parent is not None
        if child.state is BatchState.FAILED:
            error = dict(child.error or {})
            error["message"] = f"cancel-all of {child.symbol} failed: {error.get('message', '')}"

            def note(parent: BatchRecord) -> BatchRecord | None:
                if parent.is_final or parent.error is not None:
                    return None
                parent.error = {"code": error.get("code", ""), "message": error["message"][:300]}
                return parent

            self.update(child.parent, note)
        self.untrack(child.parent, [child.batch_id])
        self.finish_if_done(child.parent)

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

    def name_foreign(self, batch: BatchRecord, foreign: list[dict[str, Any]]) -> None:
        """Name, in the batch (and its scoped parent) and in one event each, orders of others
        that its cancel-all moved: [{"order_id", "owner" (None: untracked)}]."""

        def note(record: BatchRecord) -> BatchRecord:
            known = {f["order_id"] for f in record.foreign}
            record.foreign += [f for f in foreign if f["order_id"] not in known]
            return record

        for batch_id in filter(None, (batch.batch_id, batch.parent)):
            self.update(batch_id, note)
        pipe = self.client.pipeline(transaction=False)
        for moved in foreign:
            pipe.xadd(
                self.keys.events,
                {
                    "kind": "moved",
                    "order_id": moved["order_id"],
                    "owner": moved["owner"] or "",
                    "batch_id": batch.batch_id,
                    "parent": batch.parent or "",
                    "by": batch.owner or "",
                    "account": batch.account,
                    "symbol": batch.symbol or "",
                    "at": str(now_ms()),
                },
                maxlen=self.events_maxlen,
                approximate=True,
            )
        pipe.execute()

    def untrack(self, batch_id: str, ended: list[str]) -> None:
        """Forget orders (or a scoped batch's cancel-alls) that are no longer pending."""
        if ended:
            self.client.srem(self.keys.batch_pending(batch_id), *ended)

    def finish_if_done(self, batch_id: str) -> BatchRecord | None:
        """End an accepted batch once none of its orders is pending: DONE, or FAILED for a
        scoped batch one of whose cancel-alls was refused; return it if it ended."""
        if self.client.scard(self.keys.batch_pending(batch_id)):
            return None

        def change(batch: BatchRecord) -> BatchRecord | None:
            if batch.state is not BatchState.ACCEPTED:
                return None
            failed = batch.scoped and batch.error is not None
            batch.state = BatchState.FAILED if failed else BatchState.DONE
            return batch

        ended = self.update(batch_id, change)
        return ended if ended is not None and ended.is_final else None

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
                "owner": batch.owner or "",
            },
            maxlen=self.events_maxlen,
            approximate=True,
        )
