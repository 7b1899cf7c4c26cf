"""Fixtures of the producer's unit tests: an arq pool on fakeredis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from arq.connections import ArqRedis
from fakeredis import FakeAsyncRedis

from pipeline.serialization import deserialize, serialize


@pytest.fixture
async def fake_arq() -> AsyncIterator[ArqRedis]:
    """An ``ArqRedis`` with the pipeline's serializer on an in-memory Redis."""
    fake = FakeAsyncRedis()
    yield ArqRedis(
        connection_pool=fake.connection_pool,
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name="pipeline:unit",
    )
    await fake.aclose()
