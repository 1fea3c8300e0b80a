"""The task side of a turn: take it just before the request, make the one call, store what the
answer means, all in as few Redis round trips as the guarantees allow.

An order's turn (a DELETE or a status read) is taken by one script (take.lua: the record
checked, the order's lease, the commit of the send time and, for a DELETE, the "DELETE under
way" mark); with replicas, that is confirmed on one before the request (WAIT, pipelined).
The answer is decided by worker.cancellation and stored, with the lease released and the
next line joined, by one more (store.lua). `Turn` is the same for the other budgets'
turns (a cancel-all, a list pass), which take theirs with a plain commit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from worker.cancellation import (
    Answer,
    Decision,
    Move,
    Reply,
    after_delete,
    after_status,
    poll_delay_s,
)
from worker.errors import ExchangeError, RateLimited
from worker.models import Bucket, CancelRecord
from worker.records import now_ms
from worker.routing import next_of
from worker.scheduler import REPLICA_HOLD_MS, Scheduler
from worker.scripts import script
from worker.services import Services

MAX_HOLD_S = 2.0  # a task waits this long at most for its turn to clear; then it queues again

log = structlog.get_logger(__name__)
T = TypeVar("T")


class Turn:
    """A slot handed to one task: taken (committed) just before the request, or given back."""

    def __init__(self, scheduler: Scheduler, account: str, bucket: Bucket, member: str) -> None:
        self.scheduler = scheduler
        self.account = account
        self.bucket = bucket
        self.member = member
        self.taken = False
        self.sent_at_ms = 0  # Redis clock: when the turn was taken (the request's send time)
        self._taken_at = 0.0

    def take(
        self, *, max_hold_s: float = MAX_HOLD_S, sleep: Callable[[float], None] = time.sleep
    ) -> bool:
        """Commit the send time now, waiting (at most `max_hold_s`) while the window is full.

        False means the wait would be longer (a 429 pause), or no replica confirmed the send
        time (a failover could forget it): give the turn back and queue again.
        """
        replication = self.scheduler.replication
        if replication is not None and not replication.healthy and not replication.confirmed():
            return self._hold_for_replica()  # spend no slot while no replica answers
        held_s = 0.0
        while True:
            started = time.monotonic()
            ok, value = self.scheduler.commit(self.account, self.bucket, self.member)
            if ok:
                self.taken, self._taken_at, self.sent_at_ms = True, started, value
                if replication is not None and not replication.confirmed():
                    # The send time may be on the primary only: a failover could forget it
                    # and hand its slot out again. The slot stays spent; nothing is sent.
                    return self._hold_for_replica()
                return True
            wait_s = value / 1000
            if held_s + wait_s > max_hold_s:
                return False
            sleep(wait_s)
            held_s += wait_s

    def _hold_for_replica(self) -> bool:
        log.warning("budget.replica_unconfirmed", account=self.account, bucket=self.bucket.value)
        self.scheduler.hold(self.account, self.bucket, REPLICA_HOLD_MS, "replica")
        return False

    def request(self, call: Callable[[], T]) -> T:
        """Make the turn's exchange request; learn from its span, and pause on a 429."""
        try:
            result = call()
        except RateLimited:
            self.answered()
            self.rate_limited()
            raise
        except ExchangeError as exc:
            if exc.status_code is not None:  # a timeout or a dropped connection says nothing
                self.answered()
            raise
        self.answered()
        return result

    def answered(self) -> None:
        """The exchange answered: teach the margin how long the request was under way."""
        if self.taken:
            self.scheduler.observe((time.monotonic() - self._taken_at) * 1000)

    def give_back(self) -> None:
        """Free the slot if the turn was not taken (the job went no further)."""
        if not self.taken:
            self.scheduler.give_back(self.account, self.bucket, self.member)

    def rate_limited(self) -> None:
        """The exchange answered 429: pause this budget for every worker."""
        paused_ms = self.scheduler.pause(self.account, self.bucket)
        log.warning("budget.paused", account=self.account, bucket=self.bucket.value, ms=paused_ms)


@dataclass(frozen=True)
class Taken:
    """What take.lua found: its code and the record (as stored after any mark), and whether
    a replica confirmed the turn's writes (or none exists)."""

    code: str
    raw: str | None = None
    wait_ms: int = 0
    confirmed: bool = True

    @property
    def record(self) -> CancelRecord | None:
        """The record, parsed."""
        return None if self.raw is None else CancelRecord.from_dict(json.loads(self.raw))


class OrderTurn:
    """One order's DELETE or status turn, from taking it to storing what the answer means."""

    def __init__(
        self, services: Services, account: str, order_id: str, member: str, owner: str
    ) -> None:
        self.services = services
        self.scheduler = services.scheduler
        self.account = account
        self.order_id = order_id
        self.member = member
        self.owner = owner  # the lease's owner token: this delivery
        self._take = script(services.redis, "take")

    def cancel(self) -> str:
        """Use a DELETE turn: send the DELETE (at most once after the exchange accepted one)."""
        return self._run(Bucket.CANCEL)

    def check(self) -> str:
        """Use a status turn: read the status once and decide what comes next."""
        return self._run(Bucket.STATUS)

    def _run(self, bucket: Bucket) -> str:
        services, keys = self.services, self.services.keys
        delete = bucket is Bucket.CANCEL
        lease_key = keys.cancel_lease(self.order_id) if delete else keys.poll_lease(self.order_id)
        lease = (lease_key, self.owner)
        taken, started = self._take_turn(bucket, lease_key, delete)
        record = taken.record
        if taken.code != "go":
            self.scheduler.give_back(self.account, bucket, self.member)
        if taken.code in ("gone", "final", "leased"):
            if taken.code == "leased":
                log.info("turn.duplicate_delivery", bucket=bucket.value)
            return taken.code
        assert record is not None and taken.raw is not None
        if taken.code in ("accepted", "in_flight"):
            # Accepted: confirm it. Under way: its outcome is unknown; the status decides.
            delay = poll_delay_s(services.settings, record.polls) if record.cancel_accepted else 0.0
            self._store(taken.raw, lambda r: Decision(None, Move.CHECK, delay), lease=None)
            return taken.code
        if taken.code == "wait":
            self._store(
                taken.raw, lambda r: Decision(None, Move.CANCEL if delete else Move.CHECK), lease
            )
            return "requeued"
        if not self._confirmed(taken, bucket, lease):
            return "replica_unconfirmed"
        client = services.exchange(self.account)
        if delete:
            reply = Reply.of(lambda: client.cancel_order(self.order_id, record.exchange))
        else:
            reply = Reply.of(lambda: client.get_order(self.order_id))
        if reply.kind is Answer.ORDER or reply.status_code is not None:
            self.scheduler.observe((time.monotonic() - started) * 1000)
        if reply.kind is Answer.RATE_LIMITED:
            paused_ms = self.scheduler.pause(self.account, bucket)
            log.warning("budget.paused", account=self.account, bucket=bucket.value, ms=paused_ms)
        settings = services.settings

        def decide(current: CancelRecord) -> Decision:
            if delete:
                return after_delete(current, reply, settings)
            return after_status(current, reply, settings, now_ms())

        decision = self._store(taken.raw, decide, lease)
        if decision.event is not None:
            level = log.error if decision.event == "order.failed_auth" else log.info
            if decision.event in (
                "cancel.outcome_unknown",
                "poll.outcome_unknown",
                "poll.unconfirmed",
            ):
                level = log.warning
            level(decision.event, **decision.fields)
        return decision.move.value

    def _take_turn(self, bucket: Bucket, lease_key: str, delete: bool) -> tuple[Taken, float]:
        """Run take.lua (waiting, at most MAX_HOLD_S, while the window is full)."""
        services, scheduler = self.services, self.scheduler
        commit_keys, commit_args = scheduler.commit_args(self.account, bucket, self.member)
        schedule, pause, stats, margin = commit_keys
        replication = services.replication
        keys = [services.keys.record(self.order_id), lease_key, schedule, pause, stats, margin]

        def replicas_of(reply: Any) -> int:
            going = reply[0] in ("go", "go_unmarked")
            return int(reply[4]) if going else replication.known_replicas

        held_s = 0.0
        while True:
            started = time.monotonic()
            args = [
                self.owner,
                services.lease_ttl_ms,
                *commit_args,
                "1" if delete else "0",
                now_ms(),
                services.settings.record_ttl_s,
            ]
            reply, confirmed = replication.call(self._take, keys, args, replicas_of)
            code = str(reply[0])
            if code == "gone":
                return Taken(code), started
            if code == "wait":
                wait_s = int(reply[1]) / 1000
                if held_s + wait_s > MAX_HOLD_S:
                    return Taken(code, str(reply[2]), int(reply[1])), started
                time.sleep(wait_s)
                held_s += wait_s
                continue
            if code in ("go", "go_unmarked"):
                taken = Taken("go", str(reply[3]), confirmed=confirmed)
                if code == "go_unmarked":
                    taken = self._mark(taken)
                return taken, started
            return Taken(code, str(reply[1])), started

    def _mark(self, taken: Taken) -> Taken:
        """Mark "DELETE under way" from Python (a record take.lua cannot re-encode)."""

        def mark(record: CancelRecord) -> CancelRecord:
            record.attempts += 1
            record.delete_in_flight = True
            record.refused = False
            return record

        stored = self.services.store.update(self.order_id, mark, self.scheduler, raw=taken.raw)
        if stored is None:
            return Taken("gone")
        return Taken(
            "go", json.dumps(stored.to_dict()), confirmed=self.services.replication.confirmed()
        )

    def _confirmed(self, taken: Taken, bucket: Bucket, lease: tuple[str, str]) -> bool:
        """With replicas, the send time (and mark) must be on one before the request; if none
        confirms, nothing is sent, the mark is undone, the budget waits, the order requeues."""
        if taken.confirmed:
            return True
        log.warning("budget.replica_unconfirmed", account=self.account, bucket=bucket.value)
        self.scheduler.hold(self.account, bucket, REPLICA_HOLD_MS, "replica")
        delete = bucket is Bucket.CANCEL

        def undo(record: CancelRecord) -> Decision:
            if delete:
                record.attempts -= 1
                record.delete_in_flight = False
            return Decision(record, Move.CANCEL if delete else Move.CHECK)

        self._store(taken.raw, undo, lease)
        return False

    def _store(
        self,
        raw: str | None,
        decide: Callable[[CancelRecord], Decision],
        lease: tuple[str, str] | None,
    ) -> Decision:
        """Store a decision with its next line (and the lease released) in one write."""
        decided: list[Decision] = []
        settings, scheduler = self.services.settings, self.scheduler

        def change(record: CancelRecord) -> tuple[CancelRecord | None, Any]:
            decision = decide(record)
            decided[:] = [decision]
            after = decision.record or record
            return decision.record, next_of(after, decision, settings, scheduler)

        self.services.store.update(self.order_id, change, scheduler, raw=raw, lease=lease)
        return decided[0] if decided else Decision(None, Move.DONE)
