"""The producer side: a Redis pool with the pipeline's serializer, and a typed client.

``await (await create_pool()).enqueue_job("update_scores", project_id=…, scores=[…])`` is all a
producer needs. :class:`PipelineClient` validates a payload before it is enqueued (so a bad
write fails in the producer, where the bug is) and can wait for the commit receipt. Both refuse
a function the worker does not have, and a job over the worker's limits, before anything is
queued.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from types import TracebackType
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.jobs import Job

from pipeline.errors import InvalidPayload, StillQueued, UnknownFunction
from pipeline.kinds import ATOMIC, BY_NAME, FUNCTION_NAMES, atomic
from pipeline.limits import Limits
from pipeline.producer.enqueue import RetryingRedis
from pipeline.receipts import Receipt
from pipeline.redis_queue import close_sentinels, connect_queue, queue_redis
from pipeline.serialization import deserialize, serialize
from pipeline.settings import Settings, get_settings


async def create_pool(
    redis_url: str | None = None,
    *,
    settings: Settings | None = None,
    functions: Collection[str] | None = FUNCTION_NAMES,
) -> RetryingRedis:
    """An ``ArqRedis`` using msgpack and the pipeline's queue, ready for ``enqueue_job``.

    Its ``enqueue_job`` rides through a Redis restart or failover, retrying for up to
    ``enqueue_retry_s`` with the same job id
    (:class:`pipeline.producer.enqueue.RetryingRedis`). Its jobs stay in Redis for ``job_expiry_s``
    past when they are due (arq's default is a day, after which a job no worker has started is
    dropped: an outage longer than that would lose writes). It refuses a job naming a function not
    in ``functions`` (every job the worker has; None: any name) or over ``job_max_bytes``, before
    anything is queued."""
    settings = settings or get_settings()
    redis = await connect_queue(
        queue_redis(settings, redis_url),
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=settings.queue_name,
        expires_extra_ms=settings.job_expiry_s * 1000,
    )
    return RetryingRedis.adopt(
        redis,
        enqueue_retry_s=settings.enqueue_retry_s,
        functions=functions,
        limits=Limits.of(settings),
    )


async def idle(redis: ArqRedis, queue_name: str) -> bool:
    """True when no job waits in ``queue_name`` and none is in progress anywhere.

    arq keeps a job in its queue until it finishes, so the count usually decides; the in-progress
    keys are looked for with SCAN (never KEYS, which blocks a Redis shared with others)."""
    if await redis.zcard(queue_name):
        return False
    async for _ in redis.scan_iter(match=f"{in_progress_key_prefix}*", count=1000):
        return False
    return True


async def receipt_of(job: Job, function: str, timeout: float) -> Receipt:
    """Wait up to ``timeout`` seconds for ``job``'s receipt; a failed job raises
    :class:`pipeline.JobFailed`, one still waiting :class:`pipeline.errors.StillQueued`."""
    try:
        result = await job.result(timeout=None if math.isinf(timeout) else timeout, poll_delay=0.01)
    except TimeoutError:
        status = await job.status()
        raise StillQueued(
            f"{function} job {job.job_id} has not committed after {timeout:g} s and is "
            f"{status.value}; it is not lost: it commits or is dead-lettered later (`pipeline "
            f"status` shows the queue; `Job({job.job_id!r}, redis).result()` waits on)",
            job_id=job.job_id,
        ) from None
    return Receipt.of(result)


class PipelineClient:
    """Validates writes, enqueues them, and optionally waits for their receipt.

    ``PipelineClient(pool)`` uses a pool of :func:`create_pool`, ``PipelineClient()`` makes its
    own when entered (``async with``); leaving the block, or :meth:`aclose`, closes the pool.
    """

    def __init__(self, redis: ArqRedis | None = None, *, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.limits = Limits.of(self.settings)
        self._redis = redis

    @classmethod
    async def connect(
        cls, redis_url: str | None = None, *, settings: Settings | None = None
    ) -> PipelineClient:
        """A client on a new pool."""
        return cls(await create_pool(redis_url, settings=settings), settings=settings)

    @property
    def redis(self) -> ArqRedis:
        """The pool jobs are enqueued through."""
        if self._redis is None:
            raise RuntimeError("PipelineClient is not connected: use `async with` or connect()")
        return self._redis

    async def __aenter__(self) -> PipelineClient:
        if self._redis is None:
            self._redis = await create_pool(settings=self.settings)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pool (and its connections to Redis Sentinels, if any)."""
        if self._redis is not None:
            await self._redis.aclose()
            await close_sentinels(self._redis)
            self._redis = None

    close = aclose

    def check(self, function: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments to enqueue for ``payload``, validated as the worker will and
        within its item limit; raises :class:`InvalidPayload` (:class:`UnknownFunction`)."""
        if function == ATOMIC:
            writes, urgent = atomic.validate(payload)
            rows = sum(len(kind.rows(model, 0)) for kind, model in writes)
            dumped: dict[str, Any] = {
                "writes": [
                    {"kind": kind.name, "args": model.model_dump(mode="json", exclude_unset=True)}
                    for kind, model in writes
                ]
            }
            if urgent:
                dumped["urgent"] = True
        else:
            kind = BY_NAME.get(function)
            if kind is None:
                raise UnknownFunction.named(function, FUNCTION_NAMES)
            model = kind.parse(payload)
            rows = len(kind.rows(model, 0))
            dumped = model.model_dump(mode="json", exclude_unset=True)
        self.limits.check_items(function, rows)
        return dumped

    async def enqueue(self, function: str, /, **payload: Any) -> Job:
        """Validate ``payload`` for ``function`` and enqueue it; raises :class:`InvalidPayload`."""
        job = await self.redis.enqueue_job(function, **self.check(function, payload))
        if job is None:  # only happens with a caller-chosen job id, which this client never sets
            raise InvalidPayload(f"{function}: job was not enqueued")
        return job

    async def write(
        self, function: str, /, timeout: float | None = None, **payload: Any
    ) -> Receipt:
        """Enqueue and wait until committed, for up to ``timeout`` seconds (default: the
        ``client_wait_s`` setting; ``math.inf``: no end). A failed job raises
        :class:`pipeline.JobFailed`; one not committed in time :class:`StillQueued`."""
        job = await self.enqueue(function, **payload)
        return await receipt_of(job, function, self.wait_s(timeout))

    async def atomic(
        self,
        *writes: tuple[str, dict[str, Any]],
        urgent: bool = False,
        timeout: float | None = None,
    ) -> Receipt:
        """Write ``(kind, arguments)`` pairs as one unit, all committed together or none, and
        wait for the receipt (as :meth:`write`)."""
        units = [{"kind": kind, "args": args} for kind, args in writes]
        payload: dict[str, Any] = (
            {"writes": units, "urgent": urgent} if urgent else {"writes": units}
        )
        return await self.write(ATOMIC, timeout=timeout, **payload)

    def wait_s(self, timeout: float | None) -> float:
        """The time to wait for a commit: ``timeout``, or the setting."""
        return self.settings.client_wait_s if timeout is None else timeout
