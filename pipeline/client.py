"""The producer side: a Redis pool with the pipeline's serializer, and a typed client.

``await (await create_pool()).enqueue_job("update_scores", project_id=…, scores=[…])`` is all a
producer needs. :class:`PipelineClient` validates a payload before it is enqueued (so a bad
write fails in the producer, where the bug is) and can wait for the commit receipt.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.jobs import Job
from pydantic import BaseModel

from pipeline.db import close_sentinels, connect_queue, queue_redis
from pipeline.enqueue import RetryingRedis
from pipeline.errors import InvalidPayload
from pipeline.kinds import BY_NAME
from pipeline.serialization import deserialize, serialize
from pipeline.settings import Settings, get_settings


class Receipt(BaseModel):
    """Proof that a job's rows are committed."""

    batch_id: str
    rows: int
    jobs: int
    committed_at: dt.datetime


async def create_pool(
    redis_url: str | None = None, *, settings: Settings | None = None
) -> RetryingRedis:
    """An ``ArqRedis`` using msgpack and the pipeline's queue, ready for ``enqueue_job``.

    Its ``enqueue_job`` rides through a Redis restart or failover, retrying for up to
    ``enqueue_retry_s`` with the same job id (:class:`pipeline.enqueue.RetryingRedis`). Its jobs
    stay in Redis for ``job_expiry_s`` past when they are due (arq's default is a day, after
    which a job no worker has started is dropped: an outage longer than that would lose
    writes)."""
    settings = settings or get_settings()
    redis = await connect_queue(
        queue_redis(settings, redis_url),
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=settings.queue_name,
        expires_extra_ms=settings.job_expiry_s * 1000,
    )
    return RetryingRedis.adopt(redis, enqueue_retry_s=settings.enqueue_retry_s)


async def idle(redis: ArqRedis, queue_name: str) -> bool:
    """True when no job waits in ``queue_name`` and none is in progress anywhere.

    arq keeps a job in its queue until it finishes, so the count usually decides; the in-progress
    keys are looked for with SCAN (never KEYS, which blocks a Redis shared with others)."""
    if await redis.zcard(queue_name):
        return False
    async for _ in redis.scan_iter(match=f"{in_progress_key_prefix}*", count=1000):
        return False
    return True


class PipelineClient:
    """Validates writes, enqueues them, and optionally waits for their receipt."""

    def __init__(self, redis: ArqRedis) -> None:
        self.redis = redis

    @classmethod
    async def connect(
        cls, redis_url: str | None = None, *, settings: Settings | None = None
    ) -> PipelineClient:
        """A client on a new pool."""
        return cls(await create_pool(redis_url, settings=settings))

    async def close(self) -> None:
        """Close the pool (and its connections to Redis Sentinels, if any)."""
        await self.redis.aclose()
        await close_sentinels(self.redis)

    async def enqueue(self, function: str, /, **payload: Any) -> Job:
        """Validate ``payload`` for ``function`` and enqueue it; raises :class:`InvalidPayload`."""
        kind = BY_NAME.get(function)
        if kind is None:
            raise InvalidPayload(f"unknown write kind {function!r}; known: {sorted(BY_NAME)}")
        model: BaseModel = kind.parse(payload)
        job = await self.redis.enqueue_job(
            function, **model.model_dump(mode="json", exclude_unset=True)
        )
        if job is None:  # only happens with a caller-chosen job id, which this client never sets
            raise InvalidPayload(f"{function}: job was not enqueued")
        return job

    async def write(
        self, function: str, /, timeout: float | None = None, **payload: Any
    ) -> Receipt:
        """Enqueue and wait until committed; a failed job raises :class:`pipeline.JobFailed`."""
        job = await self.enqueue(function, **payload)
        result = await job.result(timeout=timeout, poll_delay=0.01)
        return Receipt.model_validate(result)
