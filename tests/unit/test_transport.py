"""The broker transport (``workers/transport.py``): kombu's Redis transport reusing one client
per channel, chosen for ``redis://`` URLs, and still a working Redis broker."""

from __future__ import annotations

import redis
from kombu import Connection

import workers  # noqa: F401  (installs the transport, as in every worker)
from workers.transport import Transport


def test_redis_urls_get_the_transport_and_keep_their_url(redis_url: str) -> None:
    with Connection(redis_url) as conn:
        assert isinstance(conn.transport, Transport)
        assert conn.as_uri().startswith("redis://")


def test_one_client_per_channel_and_pool(scratch_redis: redis.Redis, redis_url: str) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/1"
    with Connection(url) as conn:
        channel = conn.default_channel
        first = channel._create_client()
        assert channel._create_client() is first
        channel._pool = None  # what a reconnect does: a new pool gets a new client
        assert channel._create_client() is not first


def test_messages_still_go_through(scratch_redis: redis.Redis, redis_url: str) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/1"
    with Connection(url) as conn:
        queue = conn.SimpleQueue("transport-test")
        for i in range(3):
            queue.put({"n": i})
        got = [queue.get(timeout=5) for _ in range(3)]
        for message in got:
            message.ack()
        assert [m.payload["n"] for m in got] == [0, 1, 2]
        queue.close()
    assert not scratch_redis.hlen("unacked")  # every ack reached Redis
