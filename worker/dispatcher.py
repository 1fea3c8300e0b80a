"""The dispatcher: one thread in every worker process that hands out turns, and nothing else.

It asks the scheduler for the free slots of the lines that are due (one read of the active
index, one Lua call for the due lines), publishes each turn as a Celery task, and sleeps
until the next slot frees or a job joins a line (a wake token in Redis, taken by one
dispatcher with BLPOP). Every worker runs one, and they compete through Lua, so nothing
depends on any single process: kill a host and the others carry on. A cancel that meets a
free budget does not come here at all: its request hands its own turn out
(worker.producer). The fleet's slower duties run on threads of their own (worker.duties),
so none of them delays a hand-out.
"""

from __future__ import annotations

import threading

import redis
import structlog

from worker.publisher import Publisher
from worker.scheduler import Scheduler

IDLE_WAIT_S = 5.0  # when nothing is due, look again this often (a join wakes it sooner)
ERROR_PAUSE_S = 1.0  # after a Redis error, before trying again
LISTEN_TIMEOUT_S = 1.0
STOP_TIMEOUT_S = 5.0

log = structlog.get_logger(__name__)


class Dispatcher:
    """Hands out turns as budgets free up (a loop thread and a wake listener)."""

    def __init__(self, client: redis.Redis, scheduler: Scheduler, publisher: Publisher) -> None:
        self.client = client
        self.scheduler = scheduler
        self.publisher = publisher
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the loop and the wake listener as daemon threads."""
        self.scheduler.look_now()  # a look time left by an earlier fleet must not hold a line
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

    def wake(self) -> None:
        """Look at the lines now (a job joined one in this process)."""
        self._wake.set()

    def run_once(self) -> float | None:
        """Hand out every free slot of the due lines; return the next wait (None: idle)."""
        turns, wait_s = self.scheduler.release()
        if turns:
            try:
                self.publisher.publish(turns)
            except Exception as exc:  # the sweeper puts their jobs back in line
                log.error("dispatcher.publish_failed", turns=len(turns), error=str(exc))
        return wait_s

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                wait_s = self.run_once()
            except redis.RedisError as exc:
                log.warning("dispatcher.redis_unavailable", error=str(exc))
                self._stopping.wait(ERROR_PAUSE_S)
                continue
            except Exception:  # keep dispatching whatever one round did
                log.exception("dispatcher.error")
                self._stopping.wait(ERROR_PAUSE_S)
                continue
            self._wake.wait(IDLE_WAIT_S if wait_s is None else min(wait_s, IDLE_WAIT_S))
            self._wake.clear()

    def _listen(self) -> None:
        """Wake the loop when a job joins a line anywhere in the fleet (if this one takes it)."""
        wake_key = self.scheduler.keys.wake
        while not self._stopping.is_set():
            try:
                if self.client.blpop([wake_key], LISTEN_TIMEOUT_S):
                    self._wake.set()
            except redis.RedisError as exc:
                log.debug("dispatcher.listen_error", error=str(exc))
                self._stopping.wait(ERROR_PAUSE_S)
