"""The fleet's slower duties, on threads of their own in every worker (none delays a turn).

- **Dead man's switches** (one thread): fire every switch whose deadline passed, then sleep
  until the next deadline, or until a switch is armed (a wake token of its own).
- **Timers** (another thread): the sweep (one worker per interval, through a lock), the
  account registry producers and read-only tools read, the worker's heartbeat (which queues
  it consumes), and a look for a new Redis primary (a failover).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis
import structlog

from worker.accounts import register
from worker.connection import PrimaryChange
from worker.deadman import Deadman
from worker.records import now_ms
from worker.scheduler import Scheduler
from worker.services import Services
from worker.sweeper import sweep

REGISTRY_REFRESH_S = 60.0  # how often a worker re-registers the accounts it serves
WORKER_HEARTBEAT_S = 10.0  # how often a worker says which queues it consumes
WORKER_FORGET_S = 3600.0  # a worker silent this long is dropped from the workers hash
PRIMARY_CHECK_S = 1.0  # how often a worker looks for a new Redis primary (a failover)
SWEEP_BATCH = 500  # orders the sweeper looks at per interval, at most
DEADMAN_IDLE_S = 1.0  # with no switch armed, the watcher looks again this often
MIN_BLOCK_S = 0.01  # the shortest blocking pop (Redis counts its timeout in ms)
ERROR_PAUSE_S = 1.0  # after a Redis error, before trying again
STOP_TIMEOUT_S = 5.0

log = structlog.get_logger(__name__)


@dataclass
class Timer:
    """A duty and how often it runs; `due` is when next (monotonic seconds)."""

    name: str
    every_s: float
    run: Callable[[], None]
    due: float = 0.0


class Duties:
    """Runs the timers and the switch watcher of one worker process."""

    def __init__(
        self,
        services: Services,
        scheduler: Scheduler,
        *,
        node: str = "",
        queues: Sequence[str] = (),
    ) -> None:
        self.services = services
        self.scheduler = scheduler
        self.deadman = Deadman(services)
        self.node = node  # the Celery worker's name, for the workers hash
        self.queues = sorted(queues)
        self._token = uuid.uuid4().hex
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.timers = [
            Timer("registry", REGISTRY_REFRESH_S, self.register),
            Timer("primary", PRIMARY_CHECK_S, self.check_primary),
            Timer("sweep", services.settings.sweep_interval_s, self.sweep),
        ]
        if node:
            self.timers.append(Timer("heartbeat", WORKER_HEARTBEAT_S, self.heartbeat))

    def start(self) -> None:
        """Register and say hello at once, then run both threads as daemons."""
        self.register()
        if self.node:
            self.heartbeat()
        now = time.monotonic()
        for timer in self.timers:
            timer.due = now + (timer.every_s if timer.name in ("registry", "heartbeat") else 0)
        for name, target in (("duties", self._timers), ("deadman", self._watch)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop both threads (the switch watcher ends after its blocking pop)."""
        self._stopping.set()
        for thread in self._threads[:1]:  # the timers
            thread.join(STOP_TIMEOUT_S)

    # --- the duties --------------------------------------------------------------------------

    def register(self) -> None:
        """Tell producers and read-only tools which accounts this worker serves (no secrets)."""
        services = self.services
        register(services.redis, services.keys, services.settings.accounts, now_ms())

    def heartbeat(self) -> None:
        """Say which queues this worker consumes; forget workers long silent."""
        client, key, at = self.services.redis, self.services.keys.workers, now_ms()
        client.hset(key, self.node, json.dumps({"queues": self.queues, "seen_ms": at}))
        for node, raw in client.hgetall(key).items():
            if at - int(json.loads(raw).get("seen_ms", 0)) > WORKER_FORGET_S * 1000:
                client.hdel(key, node)

    def check_primary(self) -> None:
        """A new primary: look at all work under way now, since turns handed out just before
        may be lost; after a restart without replicas, hold every budget one window too."""
        change = self.services.replication.primary_changed()
        if change is PrimaryChange.SAME:
            return
        held = self.scheduler.hold_all() if change is PrimaryChange.RESTARTED else 0
        ahead_ms = self.services.watch_grace_ms
        requeued = sweep(self.services, self.scheduler, limit=SWEEP_BATCH, ahead_ms=ahead_ms)
        log.warning("dispatcher.new_primary", how=change.name, budgets_held=held, requeued=requeued)

    def sweep(self) -> None:
        """Put lost work back in line (one worker per interval)."""
        interval_ms = int(self.services.settings.sweep_interval_s * 1000)
        lock = self.services.keys.sweep_lock
        if self.services.redis.set(lock, self._token, nx=True, px=interval_ms):
            requeued = sweep(self.services, self.scheduler, limit=SWEEP_BATCH)
            if requeued:
                log.info("sweep.done", requeued=requeued)

    # --- the threads -------------------------------------------------------------------------

    def _timers(self) -> None:
        while not self._stopping.is_set():
            now = time.monotonic()
            for timer in self.timers:
                if now < timer.due:
                    continue
                timer.due = now + timer.every_s
                try:
                    timer.run()
                except redis.RedisError as exc:
                    log.warning("duties.redis_unavailable", duty=timer.name, error=str(exc))
                except Exception:  # keep the other duties running whatever this one did
                    log.exception("duties.error", duty=timer.name)
            next_due = min(timer.due for timer in self.timers)
            self._stopping.wait(max(0.0, next_due - time.monotonic()))

    def _watch(self) -> None:
        """Fire switches whose deadline passed; sleep until the next one or an arming."""
        wake = self.services.keys.deadman_wake
        while not self._stopping.is_set():
            try:
                next_s = self.deadman.check()
                timeout = DEADMAN_IDLE_S if next_s is None else min(next_s, DEADMAN_IDLE_S)
                if timeout > 0:  # BLPOP with 0 would block for good
                    self.services.redis.blpop([wake], max(MIN_BLOCK_S, timeout))
            except redis.RedisError as exc:
                log.warning("deadman.redis_unavailable", error=str(exc))
                self._stopping.wait(ERROR_PAUSE_S)
            except Exception:
                log.exception("deadman.error")
                self._stopping.wait(ERROR_PAUSE_S)
