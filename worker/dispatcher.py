"""The dispatcher: one thread in every worker process that hands out turns and sweeps.

It asks the scheduler for every free slot of every budget (one Lua call), publishes each
turn as a Celery task, and sleeps until the next slot frees or a job joins a line (a wake
token in Redis, taken by one dispatcher with BLPOP). Every worker runs one, and they compete
through Lua, so nothing depends on any single process: kill a host and the others carry on.
The same loop fires dead man's switches whose deadline passed (worker.deadman) and runs the
periodic duties that used to need beat: the sweep (one dispatcher per interval, through a
lock) and the account registry that producers and read-only tools read.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence

import redis
import structlog

from worker.accounts import register
from worker.celery_app import CANCEL_ALL_TASK, CANCEL_TASK, LIST_TASK, POLL_TASK, app
from worker.connection import PrimaryChange
from worker.deadman import Deadman
from worker.models import Bucket
from worker.records import now_ms
from worker.scheduler import Released, Scheduler
from worker.services import Services
from worker.sweeper import sweep

IDLE_WAIT_S = 5.0  # when nothing is due, look again this often (a join wakes it sooner)
ERROR_PAUSE_S = 1.0  # after a Redis error, before trying again
REGISTRY_REFRESH_S = 60.0  # how often a worker re-registers the accounts it serves
WORKER_HEARTBEAT_S = 10.0  # how often a worker says which queues it consumes
WORKER_FORGET_S = 3600.0  # a worker silent this long is dropped from the workers hash
PRIMARY_CHECK_S = 1.0  # how often a dispatcher looks for a new Redis primary (a failover)
SWEEP_BATCH = 500  # orders the sweeper looks at per interval, at most
LISTEN_TIMEOUT_S = 1.0
STOP_TIMEOUT_S = 5.0

log = structlog.get_logger(__name__)

Publish = Callable[[Released], None]

#: The task that uses a turn of each budget (routed to its queue by celery_app).
TASK_OF = {
    Bucket.CANCEL: CANCEL_TASK,
    Bucket.STATUS: POLL_TASK,
    Bucket.CANCEL_ALL: CANCEL_ALL_TASK,
    Bucket.OPEN_ORDERS: LIST_TASK,
    Bucket.CLOSED_ORDERS: LIST_TASK,
}


def publish_turn(turn: Released) -> None:
    """Publish a turn as the task that uses it (by name: any process may hand out turns).

    Its task id starts with the budget and the job (`cancel-<order_id>-…`), so Flower's list
    and its search find an order's DELETE and status reads at a glance.
    """
    name = TASK_OF[turn.bucket]
    suffix = uuid.uuid4().hex[:8]
    if turn.bucket in (Bucket.CANCEL, Bucket.STATUS):
        args: tuple[str, ...] = (turn.job,)
        kwargs = {"account": turn.account, "turn": turn.member}
        shown = {"account": turn.account}
        task_id = f"{turn.bucket.value}-{turn.job}-{suffix}"
    elif turn.bucket is Bucket.CANCEL_ALL:
        args, kwargs = (), {"batch": turn.job, "account": turn.account, "turn": turn.member}
        shown = {"batch": turn.job, "account": turn.account}
        task_id = f"{turn.bucket.value}-{turn.job}-{suffix}"
    else:
        args = ()
        kwargs = {
            "job": turn.job,
            "account": turn.account,
            "bucket": turn.bucket.value,
            "turn": turn.member,
        }
        shown = {"job": turn.job, "account": turn.account}
        task_id = f"{turn.bucket.value}-{turn.account}-{suffix}"
    app.send_task(name, args, kwargs, task_id=task_id, kwargsrepr=repr(shown))


class Dispatcher:
    """Hands out turns as budgets free up, and runs the fleet's periodic duties."""

    def __init__(
        self,
        services: Services,
        scheduler: Scheduler,
        publish: Publish,
        *,
        node: str = "",
        queues: Sequence[str] = (),
    ) -> None:
        self.services = services
        self.scheduler = scheduler
        self.publish = publish
        self.deadman = Deadman(services)
        self.node = node  # the Celery worker's name, for the workers hash
        self.queues = sorted(queues)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._owner = uuid.uuid4().hex
        self._next_registry = 0.0
        self._next_heartbeat = 0.0
        self._next_primary = 0.0
        self._next_sweep = 0.0

    def start(self) -> None:
        """Start the loop and the wake listener as daemon threads."""
        for name, target in (("dispatcher", self._loop), ("dispatcher-wake", self._listen)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("dispatcher.started", accounts=sorted(self.scheduler.accounts))

    def stop(self) -> None:
        """Stop both threads (turns already published are the workers' to finish). Only the
        loop is waited for: the listener holds nothing and ends after its blocking pop."""
        self._stopping.set()
        self._wake.set()
        for thread in self._threads[:1]:  # the loop
            thread.join(STOP_TIMEOUT_S)

    def run_once(self) -> float | None:
        """Fire due dead man's switches, hand out every free slot, run due duties; return the
        next wait (None: idle)."""
        deadline_s = self.deadman.check()  # its cancel-alls join their lines first
        turns, wait_s = self.scheduler.release()
        for turn in turns:
            try:
                self.publish(turn)
            except Exception as exc:  # the sweeper puts the job back in line
                log.error("dispatcher.publish_failed", job=turn.job, error=str(exc))
        self._duties()
        waits = [w for w in (wait_s, deadline_s) if w is not None]
        return min(waits) if waits else None

    def _duties(self) -> None:
        now, services = time.monotonic(), self.services
        if now >= self._next_registry:
            register(services.redis, services.keys, services.settings.accounts, now_ms())
            self._next_registry = now + REGISTRY_REFRESH_S
        if now >= self._next_primary:
            self._next_primary = now + PRIMARY_CHECK_S
            change = services.replication.primary_changed()
            if change is not PrimaryChange.SAME:
                self._after_failover(change)
        if self.node and now >= self._next_heartbeat:
            self._heartbeat()
            self._next_heartbeat = now + WORKER_HEARTBEAT_S
        if now >= self._next_sweep:
            interval_s = self.services.settings.sweep_interval_s
            self._next_sweep = now + interval_s
            lock = self.services.keys.sweep_lock
            if self.services.redis.set(lock, self._owner, nx=True, px=int(interval_s * 1000)):
                requeued = sweep(self.services, self.scheduler, limit=SWEEP_BATCH)
                if requeued:
                    log.info("sweep.done", requeued=requeued)

    def _after_failover(self, change: PrimaryChange) -> None:
        """A new primary: look at all work under way now, since turns handed out just before
        may be lost; after a restart without replicas, hold every budget one window too."""
        held = self.scheduler.hold_all() if change is PrimaryChange.RESTARTED else 0
        ahead_ms = self.services.watch_grace_ms
        requeued = sweep(self.services, self.scheduler, limit=SWEEP_BATCH, ahead_ms=ahead_ms)
        log.warning("dispatcher.new_primary", how=change.name, budgets_held=held, requeued=requeued)

    def _heartbeat(self) -> None:
        """Say which queues this worker consumes; forget workers long silent."""
        client, key, at = self.services.redis, self.services.keys.workers, now_ms()
        client.hset(key, self.node, json.dumps({"queues": self.queues, "seen_ms": at}))
        for node, raw in client.hgetall(key).items():
            if at - int(json.loads(raw).get("seen_ms", 0)) > WORKER_FORGET_S * 1000:
                client.hdel(key, node)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                wait_s = self.run_once()
            except redis.RedisError as exc:
                log.warning("dispatcher.redis_unavailable", error=str(exc))
                self._stopping.wait(ERROR_PAUSE_S)  # due duties would otherwise spin
                continue
            except Exception:  # keep dispatching whatever one round did
                log.exception("dispatcher.error")
                self._stopping.wait(ERROR_PAUSE_S)
                continue
            next_duty = min(
                self._next_registry, self._next_heartbeat, self._next_primary, self._next_sweep
            )
            until_duty = next_duty - time.monotonic()
            timeout = min(IDLE_WAIT_S if wait_s is None else wait_s, max(0.0, until_duty))
            self._wake.wait(min(timeout, IDLE_WAIT_S))
            self._wake.clear()

    def _listen(self) -> None:
        """Wake the loop when a job joins a line anywhere in the fleet (if this one takes it)."""
        while not self._stopping.is_set():
            try:
                if self.services.redis.blpop([self.services.keys.wake], LISTEN_TIMEOUT_S):
                    self._wake.set()
            except redis.RedisError as exc:
                log.debug("dispatcher.listen_error", error=str(exc))
                self._stopping.wait(ERROR_PAUSE_S)
