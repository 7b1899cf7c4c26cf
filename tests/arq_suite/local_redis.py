"""Redis fixtures for arq's own test suite: the local Redis, on a database of this run's own.

arq's conftest.py starts a Redis container (testcontainers) and flushes every database of it
before each test. ``run.py`` imports this module at the end of that conftest, so these fixtures
replace arq's of the same names: they connect to the local Redis (``PIPELINE_TEST_REDIS_URL``,
default ``redis://127.0.0.1:6379``) on a database number claimed the way ``tests/conftest.py``
claims one (``SET pipeline:test-session <token> NX`` on databases 15 down to 1), and flush only
that database, keeping the claim key in it so that no other test session takes it meanwhile.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import msgpack
import pytest
import redis
import redis.exceptions
from arq.connections import ArqRedis, RedisSettings
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

REDIS_BASE_URL = os.environ.get("PIPELINE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
SESSION_KEY = "pipeline:test-session"
CLAIM_TTL_S = 6 * 3600


class RedisContainer:
    """Stands in for testcontainers' class, which arq's conftest names in an annotation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("arq's suite runs on the local Redis here, not in a container")


@dataclass(frozen=True)
class RedisClaim:
    """The Redis database this test session holds, and the token that proves it."""

    url: str
    token: str

    @property
    def settings(self) -> RedisSettings:
        return RedisSettings.from_dsn(self.url)


#: The claim while the session holds it, for watchdog_plugin to release when it ends a hung run.
current_claim: RedisClaim | None = None


def _unreachable(exc: Exception) -> NoReturn:
    pytest.fail(f"Redis is not reachable at {REDIS_BASE_URL} ({exc})")


def _claim_redis_db(token: str) -> str:
    """The URL of a Redis database no other test session holds (1-15; 0 is left to people)."""
    for db in range(15, 0, -1):
        url = f"{REDIS_BASE_URL}/{db}"
        client = redis.Redis.from_url(url)
        try:
            if client.set(SESSION_KEY, token, nx=True, ex=CLAIM_TTL_S):
                return url
        except (OSError, redis.exceptions.ConnectionError) as exc:
            _unreachable(exc)
        finally:
            client.close()
    pytest.fail("every Redis database 1-15 is held by another test session")


def _keep_claim(claim: RedisClaim) -> None:
    """Set the claim key again if a test flushed it; fail if another session took the database
    in the meantime."""
    client = redis.Redis.from_url(claim.url)
    try:
        if client.set(SESSION_KEY, claim.token, nx=True, ex=CLAIM_TTL_S):
            return
        holder = client.get(SESSION_KEY)
        if holder != claim.token.encode():
            pytest.fail(f"another test session took {claim.url} while a test had flushed it")
    finally:
        client.close()


def release_redis_db(claim: RedisClaim) -> None:
    """FLUSHDB the claimed database, if the claim is still this session's (which ends it)."""
    client = redis.Redis.from_url(claim.url)
    try:
        if client.get(SESSION_KEY) == claim.token.encode():
            client.flushdb()
    finally:
        client.close()


async def _flush(client: ArqRedis, claim: RedisClaim) -> None:
    """FLUSHDB with the claim key set again in the same transaction (never FLUSHALL)."""
    async with client.pipeline(transaction=True) as pipe:
        await pipe.watch(SESSION_KEY)
        holder = await pipe.get(SESSION_KEY)
        if holder not in (None, claim.token.encode()):
            pytest.fail(f"another test session holds {claim.url}")
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.flushdb()
        pipe.set(SESSION_KEY, claim.token, ex=CLAIM_TTL_S)
        await pipe.execute()


def _client(claim: RedisClaim, **kwargs: Any) -> ArqRedis:
    settings = claim.settings
    return ArqRedis(
        host=settings.host,
        port=settings.port,
        db=settings.database,
        username=settings.username,
        password=settings.password,
        encoding="utf-8",
        **kwargs,
    )


@pytest.fixture(scope="session")
def redis_claim() -> Iterator[RedisClaim]:
    """This test session's own Redis database, released (flushed) at the end."""
    global current_claim
    token = uuid.uuid4().hex
    claim = current_claim = RedisClaim(_claim_redis_db(token), token)
    yield claim
    release_redis_db(claim)
    current_claim = None


@pytest.fixture(autouse=True)
def _redis_claim_kept(redis_claim: RedisClaim) -> Iterator[None]:
    # arq's test_redis_log flushes the database itself, and with it the claim key.
    yield
    _keep_claim(redis_claim)


@pytest.fixture(scope="session")
def redis_container() -> NoReturn:
    pytest.fail("arq's suite runs on the local Redis here, not in a container")


@pytest.fixture(scope="session")
def test_redis_settings(redis_claim: RedisClaim) -> RedisSettings:
    return redis_claim.settings


@pytest.fixture(scope="session")
def test_redis_host(test_redis_settings: RedisSettings) -> str:
    host = test_redis_settings.host
    assert isinstance(host, str)
    return host


@pytest.fixture(scope="session")
def test_redis_port(test_redis_settings: RedisSettings) -> int:
    return test_redis_settings.port


async def _fresh(redis_claim: RedisClaim, **options: Any) -> AsyncIterator[ArqRedis]:
    """arq's fixtures' client, on the claimed database, flushed first."""
    redis_ = _client(redis_claim, **options)
    await _flush(redis_, redis_claim)
    yield redis_
    await redis_.aclose(close_connection_pool=True)


@pytest.fixture
async def arq_redis(redis_claim: RedisClaim) -> AsyncIterator[ArqRedis]:
    async for redis_ in _fresh(redis_claim):
        yield redis_


@pytest.fixture
async def arq_redis_msgpack(redis_claim: RedisClaim) -> AsyncIterator[ArqRedis]:
    async for redis_ in _fresh(
        redis_claim,
        job_serializer=msgpack.packb,
        job_deserializer=functools.partial(msgpack.unpackb, raw=False),
    ):
        yield redis_


@pytest.fixture
async def arq_redis_retry(redis_claim: RedisClaim) -> AsyncIterator[ArqRedis]:
    async for redis_ in _fresh(
        redis_claim,
        retry=Retry(backoff=NoBackoff(), retries=3),
        retry_on_timeout=True,
        retry_on_error=[redis.exceptions.ConnectionError],
    ):
        yield redis_
