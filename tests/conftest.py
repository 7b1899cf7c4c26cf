"""Fixtures shared by every test: real PostgreSQL and Redis, a fresh database for each test.

A session-wide template database is migrated once with Alembic (``upgrade head``); each test
gets its own copy (``CREATE DATABASE … TEMPLATE``), dropped afterwards. Each test session claims
a Redis database number of its own (so two test runs on one machine never flush each other's
queues), and flushes it before each test.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
import redis.asyncio as aioredis
from arq import create_pool as arq_create_pool
from arq.connections import ArqRedis, RedisSettings
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pipeline.cli.migrate import downgrade, upgrade
from pipeline.serialization import deserialize, serialize
from pipeline.settings import Settings
from tests.logging_state import failed_emits, logging_restored

ADMIN_URL = os.environ.get(
    "PIPELINE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE_URL = os.environ.get("PIPELINE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
SESSION_KEY = "pipeline:test-session"
HOW_TO_START = (
    "start them with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start; "
    'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'
)


def _db_url(name: str) -> str:
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


async def _admin(sql: str) -> None:
    try:
        conn = await asyncpg.connect(ADMIN_URL)
    except OSError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL} ({exc}); {HOW_TO_START}")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def migrate(url: str, revision: str = "head", *, down: bool = False) -> None:
    """Run Alembic against ``url`` the way ``pipeline migrate`` does."""
    if down:
        downgrade(url, revision, configure_logging=False)
    else:
        upgrade(url, revision, create=False, configure_logging=False)


@pytest.fixture(scope="session")
def _failed_emits() -> Iterator[list[str]]:
    with failed_emits() as seen:
        yield seen


@pytest.fixture(autouse=True)
def _logging_restored(_failed_emits: list[str]) -> Iterator[None]:
    """No test leaves a handler behind that writes to its own, closed, captured stderr, and a log
    line that could not be written fails the test it came in (or, from a later fixture's
    teardown, the next test)."""
    with logging_restored():
        yield
    lost, _failed_emits[:] = _failed_emits[:], []
    assert not lost, f"log lines not written: {lost}"


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    """A migrated database that each test's database is copied from."""
    name = f"pipeline_test_tpl_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        migrate(_db_url(name))
        yield name
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@asynccontextmanager
async def _fresh_database(template_db: str) -> AsyncIterator[str]:
    name = f"pipeline_test_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    try:
        yield (
            make_url(_db_url(name))
            .set(drivername="postgresql+asyncpg")
            .render_as_string(hide_password=False)
        )
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def database_url(template_db: str) -> AsyncIterator[str]:
    """The URL of a fresh, migrated database of this test's own."""
    async with _fresh_database(template_db) as url:
        yield url


@pytest.fixture(scope="module")
async def module_database_url(template_db: str) -> AsyncIterator[str]:
    """The URL of a fresh, migrated database shared by one module's tests (for read-only tests
    whose data takes long to build)."""
    async with _fresh_database(template_db) as url:
        yield url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on this test's database."""
    eng = create_async_engine(database_url, pool_size=4, max_overflow=4)
    try:
        yield eng
    finally:
        await eng.dispose()


async def _claim_redis_db(token: str) -> str:
    """The URL of a Redis database no other test session holds (1-15; 0 is left to people)."""
    for db in range(15, 0, -1):
        url = f"{REDIS_BASE_URL}/{db}"
        client = aioredis.from_url(url)
        try:
            if await client.set(SESSION_KEY, token, nx=True, ex=6 * 3600):
                return url
        except (OSError, aioredis.ConnectionError) as exc:
            pytest.fail(f"Redis is not reachable at {REDIS_BASE_URL} ({exc}); {HOW_TO_START}")
        finally:
            await client.aclose()
    pytest.fail("every Redis database 1-15 is held by another test session")


async def _release_redis_db(url: str, token: str) -> None:
    client = aioredis.from_url(url)
    try:
        if await client.get(SESSION_KEY) == token.encode():
            await client.flushdb()
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def session_redis_url() -> Iterator[str]:
    """This test session's own Redis database."""
    token = uuid.uuid4().hex
    url = asyncio.run(_claim_redis_db(token))
    yield url
    asyncio.run(_release_redis_db(url, token))


@pytest.fixture
async def redis_url(session_redis_url: str) -> AsyncIterator[str]:
    """The session's Redis database, flushed before each test (the session's claim is kept)."""
    client = aioredis.from_url(session_redis_url)
    try:
        token = await client.get(SESSION_KEY)
        await client.flushdb()
        await client.set(SESSION_KEY, token or b"", ex=6 * 3600)
    finally:
        await client.aclose()
    yield session_redis_url


@pytest.fixture
async def plain_producer(settings: Settings) -> AsyncIterator[ArqRedis]:
    """A producer on plain arq (the pipeline's serializer and queue, no checks at the door):
    jobs ``pipeline.create_pool`` would refuse reach the worker this way."""
    pool = await arq_create_pool(
        RedisSettings.from_dsn(str(settings.redis_url)),
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=settings.queue_name,
    )
    yield pool
    await pool.aclose()
