"""Enqueueing that rides through a Redis restart or failover.

arq's ``enqueue_job`` WATCHes the job's keys, checks that neither exists, then writes the job
and its queue entry in one MULTI/EXEC. A WATCH does not survive a reconnect, so while Redis
restarts or fails over the call raises: ``WatchError``, ``BusyLoadingError`` while the server
loads its data, connection errors once redis-py's own retries run out, ``ReadOnlyError`` or
``ExecAbortError`` from a primary turned replica. Worse, when the connection drops during EXEC
arq answers ``None`` ("a job with this id exists") whether or not the job was written. A
producer that does not retry drops the write.

:class:`RetryingRedis` runs the transaction again for up to ``enqueue_retry_s``, with the same
job id and the same serialized job, so retrying never enqueues a job twice: when an earlier
attempt was applied and only its reply was lost, the next attempt finds the job (or, once a
worker has run it, its result, which the pipeline's workers keep for an hour) and returns it.
A caller-chosen ``_job_id`` already taken when the first attempt runs returns ``None``, as in
arq.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import uuid4

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import Job, serialize_job
from arq.utils import ms_to_datetime, timestamp_ms, to_ms, to_unix_ms
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ExecAbortError, ReadOnlyError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.errors import UnknownFunction
from pipeline.limits import Limits

# stdlib logging: the producer runs inside other services and must not assume their log setup.
log = logging.getLogger("pipeline.enqueue")

# What a restart or a failover raises. BusyLoadingError is a ConnectionError, and so is
# MasterNotFoundError, raised while a Sentinel names no primary. A primary turned replica
# refuses the write (ReadOnlyError) or, when it turned with the transaction queued, discards the
# whole transaction (a bare ExecAbortError; a command refused when queued raises its own error).
RETRIED: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    WatchError,
    ReadOnlyError,
    ExecAbortError,
    OSError,
    TimeoutError,
)
DEMOTED = (ReadOnlyError, ExecAbortError)
FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0


@dataclass(frozen=True)
class PreparedJob:
    """A job serialized once, so that every attempt writes exactly the same thing."""

    job_id: str
    chosen_id: bool
    queue_name: str
    function: str
    data: bytes
    score: int
    expires_ms: int
    enqueue_time_ms: int

    @property
    def key(self) -> str:
        """arq's key of the job."""
        return job_key_prefix + self.job_id


class RetryingRedis(ArqRedis):
    """An ``ArqRedis`` whose ``enqueue_job`` retries through a Redis restart or failover.

    ``enqueue_retries`` counts the attempts that were retried, by the error's class name.
    """

    def __init__(
        self,
        *args: Any,
        enqueue_retry_s: float = 30.0,
        functions: Collection[str] | None = None,
        limits: Limits | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.enqueue_retry_s = enqueue_retry_s
        self.enqueue_retries: Counter[str] = Counter()
        #: The functions a job may name, and how big it may be (None: anything goes).
        self.functions = frozenset(functions) if functions is not None else None
        self.limits = limits

    @classmethod
    def adopt(
        cls,
        redis: ArqRedis,
        *,
        enqueue_retry_s: float,
        functions: Collection[str] | None = None,
        limits: Limits | None = None,
    ) -> RetryingRedis:
        """A ``RetryingRedis`` that takes over ``redis``'s connection pool and job settings
        (arq's ``create_pool`` makes only plain ``ArqRedis``); close this one, not ``redis``."""
        adopted = cls(
            connection_pool=redis.connection_pool,
            job_serializer=redis.job_serializer,
            job_deserializer=redis.job_deserializer,
            default_queue_name=redis.default_queue_name,
            expires_extra_ms=redis.expires_extra_ms,
            enqueue_retry_s=enqueue_retry_s,
            functions=functions,
            limits=limits,
        )
        adopted.auto_close_connection_pool = True
        return adopted

    async def enqueue_job(
        self,
        function: str,
        *args: Any,
        _job_id: str | None = None,
        _queue_name: str | None = None,
        _defer_until: datetime | None = None,
        _defer_by: int | float | timedelta | None = None,
        _expires: int | float | timedelta | None = None,
        _job_try: int | None = None,
        **kwargs: Any,
    ) -> Job | None:
        """arq's ``enqueue_job`` (same arguments, same result), retried on the errors of a
        restart or failover until ``enqueue_retry_s`` has passed; then the last error raises.

        A function not in ``functions`` raises :class:`~pipeline.errors.UnknownFunction`, and a
        job over ``limits.bytes`` :class:`~pipeline.errors.InvalidPayload`, before anything is
        queued: the worker could only dead-letter them."""
        if _defer_until and _defer_by:
            raise RuntimeError("use either 'defer_until' or 'defer_by' or neither, not both")
        if self.functions is not None and function not in self.functions:
            raise UnknownFunction.named(function, self.functions)
        enqueue_time_ms = timestamp_ms()
        score = _due_ms(enqueue_time_ms, _defer_until, _defer_by)
        data = serialize_job(
            function, args, kwargs, _job_try, enqueue_time_ms, serializer=self.job_serializer
        )
        if self.limits is not None:
            self.limits.check_bytes(function, len(data))
        job = PreparedJob(
            job_id=_job_id or uuid4().hex,
            chosen_id=bool(_job_id),
            queue_name=_queue_name or self.default_queue_name,
            function=function,
            data=data,
            score=score,
            expires_ms=to_ms(_expires) or score - enqueue_time_ms + self.expires_extra_ms,
            enqueue_time_ms=enqueue_time_ms,
        )
        return await self._enqueue(job)

    async def _enqueue(self, job: PreparedJob) -> Job | None:
        deadline = time.monotonic() + self.enqueue_retry_s
        retries = 0
        while True:
            try:
                return await self._attempt(job, retried=retries > 0)
            except RETRIED as exc:
                delay = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** min(retries, 10))
                delay *= random.uniform(0.5, 1.0)  # producers that lost Redis together spread out
                if time.monotonic() + delay > deadline:
                    raise
                retries += 1
                self.enqueue_retries[type(exc).__name__] += 1
                log.warning(
                    "enqueue of %s retried after %s (retry %d)",
                    job.function,
                    type(exc).__name__,
                    retries,
                )
                if isinstance(exc, DEMOTED):
                    # Idle connections may all lead to the demoted primary: make new ones.
                    await self.connection_pool.disconnect(inuse_connections=False)
                await asyncio.sleep(delay)

    async def _attempt(self, job: PreparedJob, *, retried: bool) -> Job | None:
        """One run of arq's transaction; ``retried`` when an earlier run may have been applied."""
        async with self.pipeline(transaction=True) as pipe:
            await pipe.watch(job.key)
            if await pipe.exists(job.key, result_key_prefix + job.job_id):
                await pipe.reset()  # type: ignore[no-untyped-call]  # unannotated in redis-py
                if retried and await self._written_earlier(job):
                    return self._job(job)
                return None
            pipe.multi()  # type: ignore[no-untyped-call]  # unannotated in redis-py
            pipe.psetex(job.key, job.expires_ms, job.data)
            pipe.zadd(job.queue_name, {job.job_id: job.score})
            # A WatchError here is a lost connection or a job enqueued meanwhile under this id;
            # the next attempt tells them apart.
            await pipe.execute()
        return self._job(job)

    async def _written_earlier(self, job: PreparedJob) -> bool:
        """Whether the job found under ``job``'s id is the one an earlier attempt wrote."""
        if not job.chosen_id:
            return True  # a fresh uuid4: no one else enqueues under it
        stored = await self.get(job.key)
        if stored is not None:
            return bool(stored == job.data)
        # A worker ran it since: its result records the enqueue time and function.
        info = await self._job(job).result_info()
        return (
            info is not None
            and info.function == job.function
            and info.enqueue_time == ms_to_datetime(job.enqueue_time_ms)
        )

    def _job(self, job: PreparedJob) -> Job:
        return Job(
            job.job_id, redis=self, _queue_name=job.queue_name, _deserializer=self.job_deserializer
        )


def _due_ms(
    now_ms: int, defer_until: datetime | None, defer_by: int | float | timedelta | None
) -> int:
    """When the job is due (its score in the queue), as arq computes it."""
    if defer_until is not None:
        return to_unix_ms(defer_until)
    return now_ms + (to_ms(defer_by) or 0)
