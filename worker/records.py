"""Cancellation records in Redis: creation, changes, history, events and re-check times.

Each record is one JSON string. A change is decided in Python (worker.cancellation) from
the record as read, then stored by one script only if the record is still the one it was
decided from (else decided again from what is there now), with everything that goes with
it in the same step: the event and state counts of a new state; for a final state, the end
of the sweeper's watch, its places in lines, its batch's pending entry and the
time-to-final histogram; the lease of the turn that decided it; and the line it joins next.
A final state is never changed again, so a late duplicate poll cannot flip it. Events go
to a Redis Stream.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import redis

from worker.connection import Replication
from worker.errors import InvalidRequest
from worker.keys import Keys
from worker.learning import CONFIRM_LEARNING, confirm_time_ms
from worker.models import DEFAULT_ACCOUNT, Bucket, CancelRecord, OrderState, Priority
from worker.publisher import Prepared
from worker.scheduler import RELEASE_LEAD_MS, Released, Scheduler
from worker.scripts import script

DEFAULT_EVENTS_MAXLEN = 100_000  # approximate cap of the event stream (entries)
UPDATE_ATTEMPTS = 50  # a change decided again this often at most, while others keep writing

#: Upper bounds (seconds) of the request → final histogram that metrics expose.
TIME_TO_FINAL_BUCKETS_S = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)

#: A change to a record: return the record to store, or None to leave it as it is.
Change = Callable[[CancelRecord], CancelRecord | None]


def now_ms() -> int:
    """Wall-clock Unix time in milliseconds, the unit of every record timestamp."""
    return time.time_ns() // 1_000_000


class Stored(Protocol):
    """What `stamp` needs of a record (CancelRecord, BatchRecord)."""

    updated_at: int
    final_at: int | None
    history: list[dict[str, Any]]

    @property
    def state(self) -> enum.StrEnum: ...

    @property
    def is_final(self) -> bool: ...


StoredT = TypeVar("StoredT", bound=Stored)


def stamp(current: Stored, changed: StoredT, at: int) -> StoredT:
    """Date a change: its update time, and for a new state its history entry (and its final
    time when final)."""
    changed.updated_at = at
    if changed.state != current.state:
        changed.history.append({"state": changed.state.value, "at": at})
        if changed.is_final:
            changed.final_at = at
    return changed


@dataclass(frozen=True)
class Next:
    """The line an order joins in the same write as its record (see store.lua)."""

    kind: str  # "cancel" (a DELETE turn), "status" (a status read) or "confirm"
    priority: Priority
    owner: str
    delay_ms: int  # -1 for "confirm": when the exchange usually confirms (learned)
    since_ms: int = 0  # "cancel": the place it keeps (its request time)
    looked: bool = False  # "confirm": the lists just looked for it
    confirm: dict[str, Any] = field(default_factory=dict)  # "confirm": see confirmation.py


@dataclass
class Created:
    """What a request stored: the records (new or as they were), which are new, the turns
    handed out at once, and whether a replica confirmed the writes (or none exists)."""

    records: list[CancelRecord]
    created: list[bool]
    turns: list[Released]  # to publish
    confirmed: bool = True
    published: list[Released] = field(default_factory=list)  # published by the script


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
        self._request = script(client, "request")
        self._store = script(client, "store")
        self._discard = script(client, "discard")

    # --- reading ---------------------------------------------------------------------------

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

    # --- creating --------------------------------------------------------------------------

    def create_many(
        self,
        order_ids: Sequence[str],
        exchange: str,
        scheduler: Scheduler,
        *,
        account: str = DEFAULT_ACCOUNT,
        priority: Priority = Priority.NORMAL,
        owner: str | None = None,
        watch_at_ms: int | None = None,
        batch_id: str | None = None,
        accepted: bool = False,
        hand_out: bool = True,
        replication: Replication | None = None,
        prepared: Sequence[Prepared] = (),
    ) -> Created:
        """Create records for the ids that have none, atomically, in one round trip.

        Each new record is QUEUED and joins the account's cancel line, and the line's free
        turns are handed out at once (`hand_out`): so a cancel that meets a free budget
        needs no dispatcher. With `accepted`, records of orders a cancel-all already sent
        for cancellation are created CANCELLATION_RAISED, in no line. With `batch_id` each
        is pending in that batch. Each new record gets its first event and state count in
        the same script, and with `watch_at_ms` the sweeper watches it from then on, so no
        record exists that nothing would ever look at. Existing records are returned as they
        are. With `replication`, the writes are confirmed on a replica in the same round
        trip when replicas exist (see Replication.call). A turn handed out to a job with
        `prepared` messages is published by the same call (`Created.published`).
        """
        at = now_ms()
        state = OrderState.CANCELLATION_RAISED if accepted else OrderState.QUEUED
        fresh = [
            _new_record(i, exchange, account, priority, owner, at, state, batch_id, accepted)
            for i in order_ids
        ]
        if not fresh:
            return Created([], [], [])
        line = scheduler.line(account, Bucket.CANCEL)
        handing_out = hand_out and not accepted and account in scheduler.accounts
        if handing_out:
            schedule, pause, _ = scheduler.budget_keys(account, Bucket.CANCEL)
            rate = scheduler.accounts[account].rates[Bucket.CANCEL]
            budget: list[Any] = [
                "1",
                rate.count,
                rate.period_ms,
                scheduler.margin_floor_ms,
                scheduler.margin_ceiling_ms,
                RELEASE_LEAD_MS,
                scheduler.watch_ms,
            ]
        else:
            schedule = pause = self.keys.schedule("-", Bucket.CANCEL)  # unused: nothing handed out
            budget = ["0", 0, 0, 0, 0, 0, 0]
        keys = [
            self.keys.events,
            self.keys.state_counts,
            self.keys.due,
            line.active,
            self.keys.wake,
            self.keys.batch_pending(batch_id or ""),
            *line.keys,
            schedule,
            pause,
            self.keys.margin,
            self.keys.owned(account, owner or ""),
            *(
                key
                for r in fresh
                for key in (self.keys.record(r.order_id), self.keys.owner_of(r.order_id))
            ),
        ]
        args: list[Any] = [
            self.ttl_s,
            "" if watch_at_ms is None else watch_at_ms,
            self.events_maxlen,
            account,
            state.value,
            priority.rank,
            owner or "",
            "0" if accepted else "1",
            batch_id or "",
            *line.args,
            *budget,
        ]
        for record in fresh:
            event = _event_fields(record, previous=None)
            body = json.dumps(record.to_dict())
            args += [record.order_id, at, body, json.dumps(event)]
        for ready in prepared:
            args += [ready.job, ready.member, len(ready.commands)]
            args += [word for command in ready.commands for word in command]
        if replication is None:
            reply, confirmed = self._request(keys=keys, args=args), True
        else:
            reply, confirmed = replication.call(
                self._request, keys, args, lambda r: 0 if r[0] == "conflict" else int(r[2])
            )
        if reply[0] == "conflict":
            raise InvalidRequest(
                "owner", owner, f"order {reply[1]} is tracked to owner {str(reply[2])!r}"
            )
        created = [flag == "1" for flag in str(reply[1])]
        turns: list[Released] = []
        published: list[Released] = []
        for record, tracked in zip(fresh, str(reply[3]).split(","), strict=True):
            record.owner = tracked or None  # a tracked order's owner, told or not
        for i in range(4, len(reply), 4):
            turn = Released(
                account, Bucket.CANCEL, str(reply[i]), str(reply[i + 1]), int(reply[i + 2])
            )
            (published if reply[i + 3] == "1" else turns).append(turn)
        pairs = list(zip(fresh, created, strict=True))
        existing = iter(self.get_many([r.order_id for r, made in pairs if not made]))
        records = [r if made else (next(existing) or r) for r, made in pairs]
        return Created(records, created, turns, confirmed, published)

    def discard_queued(
        self,
        order_ids: Sequence[str],
        scheduler: Scheduler,
        account: str,
        turns: Sequence[Released] = (),
    ) -> int:
        """Undo a request no replica confirmed: remove its records still QUEUED and either
        waiting in line or holding one of `turns` (handed out to it, never published).

        Their counts, sweeper watches and places in line go too, so a later request creates
        them afresh; return how many were removed.
        """
        if not order_ids:
            return 0
        members = {turn.job: turn.member for turn in turns}
        line = scheduler.line(account, Bucket.CANCEL)
        schedule = (
            scheduler.budget_keys(account, Bucket.CANCEL)[0]
            if account in scheduler.accounts
            else self.keys.schedule("-", Bucket.CANCEL)
        )
        keys = [
            self.keys.state_counts,
            self.keys.due,
            *line.keys,
            line.active,
            schedule,
            *map(self.keys.record, order_ids),
        ]
        args = [*line.args]
        for order_id in order_ids:
            args += [order_id, members.get(order_id, "")]
        return int(self._discard(keys=keys, args=args))

    # --- changing --------------------------------------------------------------------------

    def update(
        self,
        order_id: str,
        change: Callable[[CancelRecord], tuple[CancelRecord | None, Next | None]] | Change,
        scheduler: Scheduler,
        *,
        raw: str | None = None,
        lease: tuple[str, str] | None = None,
    ) -> CancelRecord | None:
        """Apply `change` to the record and store the result, if the record did not change
        meanwhile (else apply it again to what is there now); return what is stored.

        `change` returns the record to store (None: leave it) or (record, next line).
        `raw` is the record as the caller read it (saves a read when it is still current);
        `lease` (key, owner) is released in the same write. Returns None if there is no
        record.
        """
        key = self.keys.record(order_id)
        for _ in range(UPDATE_ATTEMPTS):
            if raw is None:
                raw = self.client.get(key)
                if raw is None:
                    self._release(lease)
                    return None
            current = CancelRecord.from_dict(json.loads(raw))
            decided = change(CancelRecord.from_dict(json.loads(raw)))
            changed, step = decided if isinstance(decided, tuple) else (decided, None)
            if current.is_final:
                changed = None
            if changed is None and step is None and lease is None:
                return current
            stored = current if changed is None else stamp(current, changed, now_ms())
            body = raw if changed is None else json.dumps(stored.to_dict())
            reply = self._store(
                keys=self._store_keys(stored, scheduler, lease),
                args=[
                    raw,
                    body,
                    self.ttl_s,
                    self.events_maxlen,
                    json.dumps(self._effects(current, stored, changed is not None, lease, step)),
                    *scheduler.line(stored.account, Bucket.CANCEL).args,
                    *scheduler.line(stored.account, Bucket.STATUS).args,
                    *scheduler.line(stored.account, Bucket.CLOSED_ORDERS).args,
                    order_id,
                ],
            )
            if reply[0] == "ok":
                newly_final = stored.is_final and not current.is_final
                if newly_final and stored.batch_id and self.on_batch_order_final is not None:
                    self.on_batch_order_final(stored.batch_id)
                return stored
            raw = str(reply[1]) or None
            if raw is None:
                self._release(lease)
                return None
        raise RuntimeError(f"record {order_id} kept changing; {UPDATE_ATTEMPTS} attempts")

    def _release(self, lease: tuple[str, str] | None) -> None:
        if lease is not None:
            key, owner = lease
            script(self.client, "lease_release")(keys=[key], args=[owner])

    def _store_keys(
        self, record: CancelRecord, scheduler: Scheduler, lease: tuple[str, str] | None
    ) -> list[str]:
        keys, account = self.keys, record.account
        return [
            keys.record(record.order_id),
            keys.events,
            keys.state_counts,
            keys.due,
            keys.time_to_final,
            keys.confirm(account),
            keys.confirm_pass(account),
            keys.batch_pending(record.batch_id or ""),
            lease[0] if lease else keys.record(""),
            scheduler.line(account, Bucket.CANCEL).active,
            keys.wake,
            *scheduler.line(account, Bucket.CANCEL).keys,
            *scheduler.line(account, Bucket.STATUS).keys,
            *scheduler.line(account, Bucket.CLOSED_ORDERS).keys,
            keys.confirm_delay,
            keys.confirm_times,
            *scheduler.budget_spec(account, Bucket.CLOSED_ORDERS)[0],
            keys.owner_of(record.order_id),
            keys.owned(account, record.owner or ""),
        ]

    def _effects(
        self,
        current: CancelRecord,
        stored: CancelRecord,
        changed: bool,
        lease: tuple[str, str] | None,
        step: Next | None,
    ) -> dict[str, Any]:
        effects: dict[str, Any] = {"final": False}
        if changed and stored.state != current.state:
            effects["event"] = _event_fields(stored, previous=current.state)
            effects["was"], effects["now"] = current.state.value, stored.state.value
            if stored.is_final:
                effects["final"] = True
                confirm_ms = confirm_time_ms(current, stored)
                if confirm_ms is not None:
                    effects["learn"] = CONFIRM_LEARNING.args(confirm_ms)
                elapsed = stored.updated_at - stored.requested_at
                effects["histogram"] = [
                    f"le:{bound}" for bound in TIME_TO_FINAL_BUCKETS_S if elapsed <= bound * 1000
                ]
                effects["elapsed_ms"] = max(0, elapsed)
        if lease is not None:
            effects["lease"] = lease[1]
        if step is not None and not stored.is_final:
            effects["next"] = {
                "kind": step.kind,
                "rank": step.priority.rank,
                "owner": step.owner,
                "delay_ms": step.delay_ms,
                "since": step.since_ms,
                "looked": step.looked,
                **step.confirm,
            }
        return effects

    def transition(
        self,
        order_id: str,
        state: OrderState,
        scheduler: Scheduler,
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

        return self.update(order_id, change, scheduler)

    # --- the sweeper's watch and the figures ----------------------------------------------

    def schedule_checks(self, due: dict[str, int]) -> None:
        """Ask the sweeper to look at these orders again at these times (ms), in one trip."""
        if due:
            self.client.zadd(self.keys.due, due)

    def schedule_check(self, order_id: str, at_ms: int) -> None:
        """Ask the sweeper to look at this order again at `at_ms` (if nothing else does)."""
        self.schedule_checks({order_id: at_ms})

    def unschedule(self, order_ids: Sequence[str]) -> None:
        """Stop watching these orders (they are final or gone)."""
        if order_ids:
            self.client.zrem(self.keys.due, *order_ids)

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


def _event_fields(record: CancelRecord, *, previous: OrderState | None) -> list[str]:
    """The stream entry of a record's state, as a flat field/value list."""
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
        "owner": record.owner or "",
    }
    return [item for pair in event.items() for item in pair]


def _new_record(
    order_id: str,
    exchange: str,
    account: str,
    priority: Priority,
    owner: str | None,
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
        owner=owner,
        history=[{"state": state.value, "at": at}],
        batch_id=batch_id,
        cancel_accepted=accepted,
    )
