"""The test Redis is real and isolated."""

import redis


def test_redis_is_real_and_empty(redis_client: redis.Redis) -> None:
    """Each test starts on an empty database of a real server."""
    assert redis_client.dbsize() == 0
    redis_client.set("k", "v")
    assert redis_client.get("k") == "v"
    assert redis_client.info("server")["redis_version"]
