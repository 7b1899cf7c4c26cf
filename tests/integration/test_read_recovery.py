"""Reads survive a dropped connection, and every read is measured.

The backend of a repository's only pooled connection is terminated between two reads (as a
restart or failover of the server does to every connection): the second read must still answer,
through one retry on a fresh connection.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from pipeline import reads as read_side
from pipeline.reads.base import ReadRepository
from pipeline.reads.metrics import READ_METRICS, READ_RETRIES, READ_SECONDS

APP = "pipeline-read-under-test"

Read = Callable[[AsyncEngine | AsyncSession], Awaitable[Any]]


async def _node(source: AsyncEngine | AsyncSession) -> Any:
    return await read_side.TaxonomyReads(source).node("p", "n")


async def _claim(source: AsyncEngine | AsyncSession) -> Any:
    # A snapshot read: three statements in one REPEATABLE READ transaction.
    return await read_side.VerificationReads(source).claim("c1")


async def _events(source: AsyncEngine | AsyncSession) -> Any:
    return (await read_side.TaskReads(source).events(limit=5)).items


async def _trail(source: AsyncEngine | AsyncSession) -> Any:
    return await read_side.AuditReads(source).trail("claim", "c1")


async def _load(source: AsyncEngine | AsyncSession) -> Any:
    return await read_side.TaxonomyReads(source).load_project("p")


async def _stream(source: AsyncEngine | AsyncSession) -> Any:
    return [node async for node in read_side.TaxonomyReads(source).stream_project("p")]


READS: dict[str, tuple[str, Read]] = {
    "projects.load_project": ("projects.load_project", _load),
    "projects.stream_project": ("projects.stream_project", _stream),
    "taxonomy.node": ("taxonomy.node", _node),
    "verification.claim": ("verification.claim", _claim),
    "tasks.events": ("tasks.events", _events),
    "audit.trail": ("audit.trail", _trail),
}


@pytest.fixture
async def single(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine with one pooled connection, findable by its application_name."""
    engine = create_async_engine(
        database_url,
        pool_size=1,
        max_overflow=0,
        connect_args={"server_settings": {"application_name": APP}},
    )
    yield engine
    await engine.dispose()


async def _terminate(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        # The pids first, filtered, then the terminations: a planner may evaluate the conditions
        # of one WHERE in any order, and this must never end anyone else's session.
        pids = await conn.scalars(
            text(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = :app"
            ),
            {"app": APP},
        )
        killed = 0
        for pid in list(pids):
            killed += bool(
                await conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            )
    return killed


async def _seed(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO claims (external_id, content) VALUES ('c1', 'x')"))
        await conn.execute(text("INSERT INTO projects (project_id, name) VALUES ('p', 'P')"))
        await conn.execute(
            text("INSERT INTO nodes (project_id, node_id, label) VALUES ('p', 'n', 'N')")
        )


@pytest.mark.parametrize("name", sorted(READS))
async def test_a_read_after_its_connection_was_dropped_answers(
    name: str, single: AsyncEngine, engine: AsyncEngine
) -> None:
    query, read = READS[name]
    await _seed(engine)
    first = await read(single)
    retries = READ_RETRIES.labels(query)._value.get()
    assert await _terminate(engine) == 1
    assert await read(single) == first
    assert READ_RETRIES.labels(query)._value.get() == retries + 1
    # The pool replaced the connection: a third read needs no retry.
    assert await read(single) == first
    assert READ_RETRIES.labels(query)._value.get() == retries + 1


async def test_a_read_in_a_session_is_not_retried(single: AsyncEngine, engine: AsyncEngine) -> None:
    await _seed(engine)
    async with AsyncSession(single) as session:
        await _claim(session)
        await _terminate(engine)
        # The session's transaction is gone with its connection: only its owner can redo it.
        with pytest.raises(DBAPIError):
            await _claim(session)


async def test_every_read_is_timed_and_the_pool_is_exported(single: AsyncEngine) -> None:
    before = _count("audit.trail")
    await _trail(single)
    assert _count("audit.trail") == before + 1
    exposition = generate_latest(READ_METRICS).decode()
    database = f"{single.url.host}:{single.url.port}/{single.url.database}"
    assert f'pipeline_db_pool_size{{database="{database}",role="read"}} 1.0' in exposition
    assert f'pipeline_db_pool_idle{{database="{database}",role="read"}} 1.0' in exposition


def _count(query: str) -> float:
    for metric in READ_SECONDS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels == {"query": query}:
                return sample.value
    raise AssertionError(f"no {query} series")


def test_every_public_read_of_every_repository_is_wrapped() -> None:
    repositories = [
        value
        for value in vars(read_side).values()
        if inspect.isclass(value) and issubclass(value, ReadRepository)
    ]
    assert len(repositories) >= 4
    for repository in repositories:
        for name, member in inspect.getmembers(repository, inspect.isfunction):
            if name.startswith("_"):
                continue
            if inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member):
                assert getattr(member, "_pipeline_read", False), f"{repository.__name__}.{name}"


def test_a_producer_exposes_the_read_metrics_by_registering_the_registry() -> None:
    theirs = CollectorRegistry()
    theirs.register(READ_METRICS)  # what docs/reading.md tells a producer to do with its registry
    names = {family.name for family in theirs.collect()}
    assert {"pipeline_read_duration_seconds", "pipeline_db_pool_checked_out"} <= names
