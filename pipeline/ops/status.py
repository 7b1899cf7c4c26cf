"""What the pipeline is doing now (``pipeline status``), and the entry each worker publishes for it.

Everything is read on demand, read-only, from Redis and PostgreSQL:

- **Queue.** arq keeps a job in its queue (a sorted set scored by the time the job is due, in
  ms) until the job finishes, so ``ZCARD`` counts running jobs too. A job is *in progress* while
  arq's ``arq:in-progress:<job id>`` key exists; those keys are found with ``SCAN`` (never
  ``KEYS``, which blocks Redis) and kept only when their job is in this queue. The rest are
  *due* (score ≤ now) or *deferred* (due later: ``_defer_by``, or a retry's delay); the oldest
  due job's age is now minus its score: how long it has been due without a worker taking it.
- **Workers.** Each worker publishes a small JSON entry every second under
  ``pipeline:workers:<queue>:<worker id>`` with a 60 s TTL (:class:`Publisher`): its last flush,
  its batch count, when it was last seen. A killed worker's entry expires by itself; a worker
  that shuts down publishes a last entry with ``state: stopped``.
- **Dead letters** by job function (``dead_letters`` holds only unresolved ones: a replay that
  succeeds deletes its row).
- **Rows per table**: PostgreSQL's estimates by default (cheap at any size), or ``count(*)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol

import redis.asyncio as aioredis
import structlog
from arq.constants import in_progress_key_prefix
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.logs import worker_id
from pipeline.ops.flushes import FlushReport
from pipeline.ops.pause import Pause, pause_key, paused
from pipeline.postgres import create_engine
from pipeline.producer.client import create_pool
from pipeline.redis_queue import close_sentinels
from pipeline.schema import metadata
from pipeline.settings import Settings
from pipeline.worker.retries import CLOCK_PREFIX

log = structlog.get_logger("pipeline.status")

WORKERS_PREFIX = "pipeline:workers:"
INDEX_PREFIX = "pipeline:worker-index:"
PUBLISH_INTERVAL_S = 1.0
WORKER_TTL_S = 60
TABLES = tuple(table.name for table in metadata.sorted_tables)

# Live rows by PostgreSQL's statistics counters (kept current as transactions commit); when they
# say 0 (an empty table, or counters reset by a crash or pg_stat_reset) the planner's reltuples
# from the last VACUUM/ANALYZE (-1: never analyzed).
_ESTIMATES = text(
    """
    SELECT c.relname AS name,
           COALESCE(NULLIF(s.n_live_tup, 0), GREATEST(c.reltuples, 0)::bigint) AS rows
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
    WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND c.relname = ANY(:names)
    """
)
_DEAD_LETTERS = text("SELECT function, count(*) FROM dead_letters GROUP BY function ORDER BY 1")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class QueueStatus(_Model):
    """The arq queue: every job in it is in progress, due, or deferred."""

    name: str
    jobs: int
    in_progress: int
    due: int
    deferred: int
    #: Of the due and deferred ones, those handed back at least once (``pipeline jobs`` says why).
    retrying: int = 0
    oldest_due_age_s: float | None


class WorkerStatus(_Model):
    """A worker's published entry, and how long ago it was published."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    worker_id: str
    state: str = "running"
    host: str = ""
    pid: int = 0
    started_at: dt.datetime | None = None
    seen_at: dt.datetime
    seen_age_s: float = 0.0
    batches: int = 0
    last_flush: FlushReport | None = None
    recent_flushes: list[FlushReport] = []


class DeadLetterStatus(_Model):
    """Unresolved dead letters, by job function."""

    total: int
    by_function: dict[str, int]


class TableRows(_Model):
    """Rows per table of the schema, estimated by PostgreSQL or counted exactly."""

    counted: Literal["estimate", "exact"]
    rows: dict[str, int]


class Status(_Model):
    """Everything ``pipeline status`` shows, as of ``at``."""

    at: dt.datetime
    queue: QueueStatus
    workers: list[WorkerStatus]
    dead_letters: DeadLetterStatus
    tables: TableRows
    paused: Pause | None = None


# --- the workers' side ------------------------------------------------------------------------


class FlushSource(Protocol):
    """What a publisher reads from the worker's coalescer."""

    @property
    def batches(self) -> int:
        """Batches flushed since start-up."""

    @property
    def last_flush(self) -> FlushReport | None:
        """The last flush's report, None before the first."""

    @property
    def recent_flushes(self) -> Iterable[FlushReport]:
        """The last few flushes' reports, newest last."""


def worker_key(queue_name: str, worker: str) -> str:
    """The Redis key of a worker's published entry."""
    return f"{WORKERS_PREFIX}{queue_name}:{worker}"


def index_key(queue_name: str) -> str:
    """The sorted set of the queue's running workers, scored by when each last published (ms):
    counting recent workers is then one ``ZCOUNT``, not a scan of every key."""
    return f"{INDEX_PREFIX}{queue_name}"


async def publish(
    redis: aioredis.Redis,
    worker: str,
    last_flush: FlushReport | None,
    *,
    queue_name: str,
    batches: int = 0,
    recent: Iterable[FlushReport] = (),
    started_at: dt.datetime | None = None,
    state: Literal["running", "stopped"] = "running",
    ttl_s: int = WORKER_TTL_S,
) -> bool:
    """Write a worker's entry (JSON) under :func:`worker_key`, expiring after ``ttl_s``; whether
    the queue is paused (read in the same round trip)."""
    entry = {
        "worker_id": worker,
        "state": state,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": started_at.isoformat() if started_at else None,
        "seen_at": dt.datetime.now(dt.UTC).isoformat(),
        "batches": batches,
        "last_flush": last_flush.fields() if last_flush is not None else None,
        "recent_flushes": [flush.fields() for flush in recent],
    }
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(worker_key(queue_name, worker), json.dumps(entry, default=str), ex=ttl_s)
        if state == "running":
            pipe.zadd(index_key(queue_name), {worker: now_ms})
        else:
            pipe.zrem(index_key(queue_name), worker)
        pipe.zremrangebyscore(index_key(queue_name), "-inf", now_ms - ttl_s * 1000)
        pipe.expire(index_key(queue_name), ttl_s)
        pipe.exists(pause_key(queue_name))
        *_, paused = await pipe.execute()
    return bool(paused)


class Publisher:
    """Publishes a worker's entry every ``interval_s`` from a background task.

    The task is never cancelled mid-command (a cancelled Redis call can leave its connection
    half-used): :meth:`stop` asks it to end and waits, then publishes ``state: stopped``.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        source: FlushSource,
        *,
        queue_name: str,
        worker: str,
        interval_s: float = PUBLISH_INTERVAL_S,
    ) -> None:
        self._redis = redis
        self._source = source
        self._queue_name = queue_name
        self.worker = worker
        self._interval_s = interval_s
        self._started_at = dt.datetime.now(dt.UTC)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Whether the queue was paused when last published; listeners hear each change.
        self.paused = False
        self._listeners: list[Callable[[bool], None]] = []

    def on_pause(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(paused)`` whenever the queue's pause is seen set or lifted."""
        self._listeners.append(listener)

    def start(self) -> None:
        """Start publishing."""
        self._task = asyncio.create_task(self._run(), name="pipeline-status")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop publishing, then publish the worker as stopped (errors are logged, not raised)."""
        self._stopping.set()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=timeout_s)
            if not self._task.done():
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        await self._publish("stopped")

    async def _publish(self, state: Literal["running", "stopped"]) -> None:
        try:
            paused = await publish(
                self._redis,
                self.worker,
                self._source.last_flush,
                queue_name=self._queue_name,
                batches=self._source.batches,
                recent=self._source.recent_flushes,
                started_at=self._started_at,
                state=state,
            )
        except Exception as exc:  # status is best effort; it must never disturb the worker
            log.warning("publishing the worker's status failed", error=repr(exc))
            return
        if paused != self.paused:
            self.paused = paused
            log.warning("queue paused: taking no jobs" if paused else "queue resumed")
            for listener in self._listeners:
                listener(paused)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            await self._publish("running")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval_s)


# --- collection -------------------------------------------------------------------------------


def _glob_escape(value: str) -> str:
    return re.sub(r"([\\*?\[\]])", r"\\\1", value)


async def in_progress_ids(redis: aioredis.Redis) -> list[bytes]:
    """Job ids of every queue in progress. SCAN walks the whole Redis database (arq's job and
    result keys too), 1,000 keys a step, without blocking it; arq keeps no count to read instead.
    """
    return await _ids_with_prefix(redis, in_progress_key_prefix)


async def _ids_with_prefix(redis: aioredis.Redis, prefix: str) -> list[bytes]:
    """The job ids of the keys named ``<prefix><job id>``, found with SCAN."""
    keys = [key async for key in redis.scan_iter(match=f"{_glob_escape(prefix)}*", count=1000)]
    return [key[len(prefix.encode()) :] for key in keys]


async def queue_status(
    redis: aioredis.Redis, queue_name: str, *, now_ms: int | None = None
) -> QueueStatus:
    """Counts of the queue's jobs, read in one transaction after scanning the in-progress keys
    (a job claimed after the scan counts as due; one finished after it is gone from both)."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    running_ids = await in_progress_ids(redis)
    clock_ids = await _ids_with_prefix(redis, CLOCK_PREFIX)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zcard(queue_name)
        pipe.zcount(queue_name, "-inf", now)
        pipe.zrange(queue_name, 0, len(running_ids), withscores=True)
        for job_id in (*running_ids, *clock_ids):
            pipe.zscore(queue_name, job_id)
        jobs, due_or_running, lowest, *found = await pipe.execute()
    scores, clocked = found[: len(running_ids)], found[len(running_ids) :]
    running = {
        job_id for job_id, score in zip(running_ids, scores, strict=True) if score is not None
    }
    retrying = sum(
        1
        for job_id, score in zip(clock_ids, clocked, strict=True)
        if score is not None and job_id not in running
    )
    running_due = sum(1 for score in scores if score is not None and score <= now)
    oldest = next((score for job_id, score in lowest if job_id not in running), None)
    return QueueStatus(
        name=queue_name,
        jobs=jobs,
        in_progress=len(running),
        due=due_or_running - running_due,
        deferred=jobs - due_or_running - (len(running) - running_due),
        retrying=retrying,
        oldest_due_age_s=None if oldest is None or oldest > now else (now - oldest) / 1000,
    )


async def workers(redis: aioredis.Redis, queue_name: str) -> list[WorkerStatus]:
    """The entries of the workers of ``queue_name`` seen in the last minute, by worker id."""
    prefix = len(worker_key(queue_name, "").encode())
    pattern = worker_key(_glob_escape(queue_name), "*")
    keys = [key async for key in redis.scan_iter(match=pattern, count=1000)]
    keys = [key for key in keys if b":" not in key[prefix:]]  # not queue "<queue>:<more>"'s
    now = dt.datetime.now(dt.UTC)
    found = []
    for raw in await redis.mget(keys) if keys else []:
        if raw is None:  # expired since the scan
            continue
        try:
            entry = WorkerStatus.model_validate_json(raw)
        except ValidationError:
            continue
        age = round((now - entry.seen_at).total_seconds(), 3)
        found.append(entry.model_copy(update={"seen_age_s": age}))
    return sorted(found, key=lambda w: w.worker_id)


async def dead_letter_counts(engine: AsyncEngine) -> DeadLetterStatus:
    """How many dead letters each job function has."""
    async with engine.connect() as conn:
        counts = {function: int(n) for function, n in await conn.execute(_DEAD_LETTERS)}
    return DeadLetterStatus(total=sum(counts.values()), by_function=counts)


async def table_rows(engine: AsyncEngine, *, exact: bool = False) -> TableRows:
    """Rows of every table of the schema that exists: estimates, or ``count(*)`` with ``exact``
    (one statement, one snapshot; it reads every row, so it is slow on big tables)."""
    async with engine.connect() as conn:
        result = await conn.execute(_ESTIMATES, {"names": list(TABLES)})
        estimates: dict[str, int] = {name: n for name, n in result}
        if exact and estimates:
            counts = " UNION ALL ".join(
                f"SELECT '{name}', count(*) FROM \"{name}\""  # noqa: S608 - the schema's names
                for name in TABLES
                if name in estimates
            )
            estimates = {name: n for name, n in await conn.execute(text(counts))}
    rows = {name: int(estimates[name]) for name in TABLES if name in estimates}
    return TableRows(counted="exact" if exact else "estimate", rows=rows)


async def collect(settings: Settings, *, exact: bool = False) -> Status:
    """The pipeline's status from the Redis and PostgreSQL of ``settings``."""
    at = dt.datetime.now(dt.UTC)
    redis = await create_pool(settings=settings)  # the queue's Redis, Sentinel included
    engine = create_engine(settings)
    try:
        queue = await queue_status(redis, settings.queue_name)
        seen = await workers(redis, settings.queue_name)
        held = await paused(redis, settings.queue_name)
        letters = await dead_letter_counts(engine)
        tables = await table_rows(engine, exact=exact)
    finally:
        await redis.aclose()
        await close_sentinels(redis)
        await engine.dispose()
    return Status(
        at=at, queue=queue, workers=seen, dead_letters=letters, tables=tables, paused=held
    )


def start_publishing(ctx: dict[str, Any], queue_name: str, source: FlushSource) -> None:
    """From a worker's start-up: publish its entry through arq's pool (``ctx["redis"]``) until
    :func:`stop_publishing`; the publisher is kept in ``ctx["status_publisher"]``."""
    redis = ctx.get("redis")
    if redis is None:  # start-up called outside an arq worker
        return
    publisher = Publisher(redis, source, queue_name=queue_name, worker=worker_id(ctx))
    publisher.start()
    ctx["status_publisher"] = publisher


async def stop_publishing(ctx: dict[str, Any]) -> None:
    """From a worker's shutdown: stop publishing and publish the worker as stopped."""
    publisher: Publisher | None = ctx.pop("status_publisher", None)
    if publisher is not None:
        await publisher.stop()
