"""Readiness: can this process reach PostgreSQL and Redis right now? (``pipeline ready``)

A probe for orchestrators: it fails while either service is unreachable and passes again as soon
as both answer, with nothing to reset. Each check is bounded in time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from arq import create_pool
from sqlalchemy import text

from pipeline.postgres import create_engine, redacted
from pipeline.redis_queue import close_sentinels, queue_redis
from pipeline.settings import Settings

TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one service's check; ``error`` is None when it answered."""

    service: str
    target: str
    error: str | None


async def _postgres(settings: Settings) -> None:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


async def _redis(settings: Settings) -> None:
    config = queue_redis(settings)
    config.conn_retries = 0
    config.retry = None
    redis = await create_pool(config)
    try:
        await redis.ping()
    finally:
        await redis.aclose()
        await close_sentinels(redis)


async def _check(service: str, target: str, probe: Coroutine[Any, Any, None]) -> Check:
    try:
        await asyncio.wait_for(probe, TIMEOUT_S)
    except Exception as exc:  # any failure means "not ready"; the reason is for the operator
        return Check(service, target, f"{type(exc).__name__}: {exc}".splitlines()[0][:200])
    return Check(service, target, None)


async def readiness(settings: Settings) -> list[Check]:
    """Check PostgreSQL and Redis at once."""
    return list(
        await asyncio.gather(
            _check("postgres", redacted(settings.database_url), _postgres(settings)),
            _check("redis", redacted(settings.redis_url), _redis(settings)),
        )
    )
