"""kombu's Redis transport, with one Redis client per channel instead of one per command.

kombu builds a new ``redis.Redis`` object for every publish, ack and bookkeeping write
(``Channel.conn_or_acquire`` → ``_create_client``); with redis-py 6+ that constructor is not
cheap (it builds the reply-callback tables each time), and in bench B4 building them was about
7 % of a worker's CPU: every look at a run publishes one message and acks another. The client
holds no connection of its own (it borrows from the channel's pool), so one per channel and
pool serves every call; a new pool (after a reconnect) gets a new client.

``install()`` (called by ``workers/app.py``) makes it the transport of ``redis://`` URLs, so
URLs, Flower and the celery CLI see a plain Redis broker.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()  # type: ignore[no-untyped-call]
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> None:
    TRANSPORT_ALIASES["redis"] = f"{__name__}:Transport"
