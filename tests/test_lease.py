"""Leases: one owner at a time, renewable, lapsing when the owner dies."""

import time

import redis

from worker.lease import Leases


def test_one_owner_at_a_time(redis_client: redis.Redis) -> None:
    """A second owner is refused while the first holds the lease; the first may renew."""
    leases = Leases(redis_client)
    assert leases.acquire("l", "a", 10_000)
    assert not leases.acquire("l", "b", 10_000)
    assert leases.acquire("l", "a", 10_000)
    leases.release("l", "b")  # not the owner: no effect
    assert not leases.acquire("l", "b", 10_000)
    leases.release("l", "a")
    assert leases.acquire("l", "b", 10_000)


def test_lapsed_lease_can_be_taken(redis_client: redis.Redis) -> None:
    """When the owner stops renewing, the lease expires and another owner takes it."""
    leases = Leases(redis_client)
    assert leases.acquire("l", "a", 50)
    deadline = time.monotonic() + 2
    while not leases.acquire("l", "b", 10_000):
        assert time.monotonic() < deadline
        time.sleep(0.01)
