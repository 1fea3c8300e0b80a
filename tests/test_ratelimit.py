"""The fleet limiter on a real Redis: never more than N in a window, and no slot left idle."""

import threading
import time

import redis

from worker.keys import Keys
from worker.ratelimit import MAX_LATE_REBOOKS, Limiter
from worker.settings import Rate

API_KEY = "ab" * 32


def make_limiter(client: redis.Redis, rate: Rate, margin_ms: int = 50) -> Limiter:
    return Limiter(client, Keys("t"), API_KEY, {"cancel": rate}, margin_ms=margin_ms)


def booked(client: redis.Redis) -> list[float]:
    entries = client.zrange(Keys("t").bucket(API_KEY, "cancel"), 0, -1, withscores=True)
    return sorted(score for _, score in entries)


def test_schedule_never_exceeds_limit_in_any_window(redis_client: redis.Redis) -> None:
    """Any N+1 consecutive booked times span at least period + margin."""
    limiter = make_limiter(redis_client, Rate(10, 1.0))
    for _ in range(35):
        limiter.reserve("cancel")
    times = booked(redis_client)
    assert len(times) == 35
    window = limiter.window_ms("cancel")
    assert all(times[i + 10] - times[i] >= window for i in range(len(times) - 10))


def test_schedule_spends_the_whole_budget(redis_client: redis.Redis) -> None:
    """With callers waiting, the (N+1)-th slot is exactly one window after the first."""
    limiter = make_limiter(redis_client, Rate(10, 1.0))
    waits = [limiter.reserve("cancel") for _ in range(30)]
    assert waits[:10] == [0.0] * 10  # the first window's budget is free at once
    times = booked(redis_client)
    window = limiter.window_ms("cancel")
    # Callers reserve back to back, so each later slot sits one window after its twin.
    assert all(times[i + 10] - times[i] <= window + 25 for i in range(20))


def test_concurrent_callers_share_one_schedule(redis_client: redis.Redis) -> None:
    """Eight threads with their own clients still book a schedule that respects the limit."""
    url = redis_client.connection_pool.connection_kwargs
    clients = [redis.Redis(**url) for _ in range(8)]
    limiters = [make_limiter(c, Rate(5, 1.0)) for c in clients]

    def run(limiter: Limiter) -> None:
        for _ in range(5):
            limiter.reserve("cancel")

    threads = [threading.Thread(target=run, args=(lim,)) for lim in limiters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    times = booked(redis_client)
    assert len(times) == 40
    window = limiters[0].window_ms("cancel")
    assert all(times[i + 5] - times[i] >= window for i in range(len(times) - 5))


def test_pause_pushes_every_new_slot_past_the_pause(redis_client: redis.Redis) -> None:
    """After a 429 pause, the next booked slot is at least one window away for any caller."""
    limiter = make_limiter(redis_client, Rate(10, 2.0))
    limiter.pause("cancel")
    wait_s = make_limiter(redis_client, Rate(10, 2.0)).reserve("cancel")
    assert wait_s >= 1.9
    usage = limiter.usage("cancel")
    assert usage.paused_ms > 0 and usage.rate_limited == 1 and usage.booked_ahead == 1


def test_acquire_waits_and_beats(redis_client: redis.Redis) -> None:
    """acquire() sleeps until the booked slot, calling the heartbeat while it waits."""
    limiter = make_limiter(redis_client, Rate(1, 0.3), margin_ms=0)
    beats: list[int] = []
    slept: list[float] = []
    limiter.acquire("cancel")
    limiter.acquire("cancel", heartbeat=lambda: beats.append(1), sleep=slept.append)
    assert 0.2 <= sum(slept) <= 0.3
    assert beats


def test_late_wake_books_a_new_slot(redis_client: redis.Redis) -> None:
    """A caller that wakes well past its slot (a busy CPU) does not send on it: it books a new
    slot, and the missed one stays booked, so the window still holds at most N."""
    limiter = make_limiter(redis_client, Rate(1, 0.2), margin_ms=40)
    oversleep = [0.1]  # the first wake-up comes 100 ms late, more than half the margin

    def sleep(seconds: float) -> None:
        time.sleep(seconds + (oversleep.pop() if oversleep else 0.0))

    limiter.acquire("cancel")
    waited = limiter.acquire("cancel", sleep=sleep)
    assert limiter.usage("cancel").granted == 3  # the first send, the missed slot, a new one
    missed, used = booked(redis_client)  # (the first send has left the window)
    assert used - missed >= limiter.window_ms("cancel")
    assert waited >= 2 * limiter.window_ms("cancel") / 1000 - 0.01


def test_late_wakes_give_up_rebooking_after_a_bound(redis_client: redis.Redis) -> None:
    """On a machine that always wakes late, acquire books at most MAX_LATE_REBOOKS new slots
    and then returns, instead of spending the budget on slots nobody uses."""
    limiter = make_limiter(redis_client, Rate(1, 0.1), margin_ms=20)

    def sleep(seconds: float) -> None:
        time.sleep(seconds + 0.05)  # every wake-up 50 ms late, more than half the margin

    limiter.acquire("cancel")
    limiter.acquire("cancel", sleep=sleep)
    assert limiter.usage("cancel").granted == 2 + MAX_LATE_REBOOKS
