"""Redis connections of the arq queue: a URL or Redis Sentinel, reconnecting and retrying a
command when a connection drops."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.settings import Settings


def redis_settings(
    url: str, sentinels: Sequence[str] = (), sentinel_master: str = "mymaster"
) -> RedisSettings:
    """arq's Redis settings for ``url``, reconnecting and retrying a command when a connection
    drops (commands and MULTI/EXEC transactions; a WATCH cannot be retried, see claiming.py).

    With ``sentinels`` (``host:port`` each), Redis Sentinel names the primary of
    ``sentinel_master`` and the URL gives only the database number and the password."""
    settings = RedisSettings.from_dsn(url)
    if sentinels:
        settings.host = [_host_port(s) for s in sentinels]
        settings.sentinel = True
        settings.sentinel_master = sentinel_master
    settings.retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=8)
    # Timeouts are listed here rather than through retry_on_timeout, with which redis-py appends
    # them to this same list again for every connection it makes.
    settings.retry_on_error = [
        RedisConnectionError,
        RedisTimeoutError,
        ConnectionError,
        TimeoutError,
    ]
    return settings


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"a sentinel address is host:port, got {address!r}")
    return host, int(port)


def queue_redis(settings: Settings, url: str | None = None) -> RedisSettings:
    """The Redis settings of the arq queue that ``settings`` configure (URL, Sentinel)."""
    return redis_settings(
        url or str(settings.redis_url), settings.redis_sentinels, settings.redis_sentinel_master
    )


async def connect_queue(config: RedisSettings, **options: Any) -> ArqRedis:
    """arq's ``create_pool``, with ``config``'s retry settings on Sentinel's connections too.

    arq hands them to a plain pool only; through Sentinel, a command failed at once while a
    failover was under way (for about two seconds the Sentinel names no primary), where it should
    wait and retry like any other dropped connection."""
    redis = await create_pool(config, **options)
    if config.sentinel:
        redis.connection_pool.connection_kwargs.update(
            retry=config.retry,
            retry_on_error=config.retry_on_error,
            socket_connect_timeout=config.conn_timeout,
        )
        # The connection arq checked the pool with has none of them: drop it.
        await redis.connection_pool.disconnect()
        redis.connection_pool.reset()  # type: ignore[no-untyped-call]  # unannotated in redis-py
    return redis


async def close_sentinels(redis: Redis) -> None:
    """Close the connections to the Sentinels behind ``redis`` (after ``redis.aclose()``): arq
    asks them for the primary through a client it never closes."""
    manager = getattr(redis.connection_pool, "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()
