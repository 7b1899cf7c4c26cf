"""The arq worker: ``pipeline worker``, or ``arq pipeline.WorkerSettings``.

Start-up builds the engine and the coalescer and keeps them in ``ctx``; shutdown flushes what the
coalescer holds before the engine closes. On SIGTERM arq stops taking jobs and waits up to
``shutdown_wait_s`` for running jobs, which complete as soon as their batch commits.

``pipeline worker`` runs :class:`PipelineWorker`, which claims and finishes jobs in batches
(:mod:`pipeline.worker.batch.claiming`) and survives Redis dropping its connections. arq's own
command cannot be told to use a subclass: ``arq pipeline.WorkerSettings`` builds a stock
``Worker``, and its start-up hook turns that worker into a :class:`PipelineWorker` before the first
poll, so the deployment command runs the same worker. With ``PIPELINE_BATCH_CLAIMS=false`` it stays
stock arq: the same functions and keys, one job claimed at a time, and a connection dropped while
it claims ends the process. Both kinds of worker can share one queue.
"""

from __future__ import annotations

import copy
import gc
import sys
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any, TypeVar

import structlog
from arq import func
from arq.worker import Function, Worker
from redis.asyncio.retry import Retry
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline import logs
from pipeline.kinds import ATOMIC, KINDS
from pipeline.ops import endpoint, status
from pipeline.postgres import create_engine, redacted
from pipeline.reads.metrics import POOLS
from pipeline.redis_queue import connect_queue, queue_redis
from pipeline.serialization import JobDeserializer, serialize
from pipeline.settings import Settings, get_settings, settings_or_exit
from pipeline.worker import runtime, undeliverable
from pipeline.worker.batch.claiming import BatchWorker
from pipeline.worker.coalescer import Coalescer
from pipeline.worker.gate import DatabaseGate
from pipeline.worker.jobs import JobRunner, atomic_function, job_function
from pipeline.worker.runtime import Runtime

log = structlog.get_logger("pipeline.worker")
T = TypeVar("T")
#: ``ctx`` key of the endpoint opened before the worker connected (None: none), for one run.
EARLY_ENDPOINT = "early_endpoint"


async def startup(ctx: dict[str, Any]) -> None:
    """arq ``on_startup``: engine, coalescer, job runner and metrics endpoint, kept in ``ctx``."""
    settings: Settings = ctx.get("settings") or get_settings()
    if ctx.get("configure_logging", True):
        logs.configure(settings)
    logs.bind_worker(ctx)
    engine = create_engine(settings)
    POOLS.watch(engine, "write")
    gate = DatabaseGate(
        engine,
        probe_interval_s=settings.database_probe_interval_s,
        probe_timeout_s=min(settings.db_connect_timeout_s, 5.0),
    )
    coalescer = Coalescer(
        engine,
        max_rows=settings.batch_max_rows,
        transient_retries=settings.transient_retries,
        backoff_s=settings.transient_backoff_s,
        flushers=settings.flushers,
        gate=gate,
    )
    coalescer.start()
    found = ctx[runtime.KEY] = Runtime(JobRunner(settings, engine, coalescer))
    status.start_publishing(ctx, settings.queue_name, coalescer)
    # Everything made so far (modules, engine, models) lives as long as the worker: keep it out
    # of the cyclic garbage collector, whose full passes over it were the latency tail
    # (docs/performance-log.md).
    gc.freeze()
    found.endpoint = await _endpoint(ctx, settings, gate, engine)
    _claim_in_batches(settings, gate, ctx.get("status_publisher"))
    log.info(
        "worker started",
        metrics_port=found.endpoint.port if found.endpoint else None,
        database=redacted(settings.database_url),
        redis=redacted(settings.redis_url),
        queue=settings.queue_name,
        max_jobs=settings.max_jobs,
        batch_max_rows=settings.batch_max_rows,
    )


async def open_endpoint(ctx: dict[str, Any]) -> None:
    """Open the worker's endpoint before it connects to Redis (once per run), so that
    ``/ready`` answers 503, naming what is unreachable, while Redis is down at start-up;
    start-up hands it the queue, the database gate and the engine (:func:`_endpoint`)."""
    if EARLY_ENDPOINT in ctx:
        return
    settings: Settings = ctx.get("settings") or get_settings()
    logs.bind_worker(ctx)  # the endpoint's lines carry the worker's id from the first
    ctx[EARLY_ENDPOINT] = await endpoint.start_before_connecting(settings)


async def _endpoint(
    ctx: dict[str, Any], settings: Settings, gate: DatabaseGate, engine: AsyncEngine
) -> endpoint.Endpoint | None:
    """The endpoint opened before Redis answered, given the queue, gate and engine now; or a
    new one if none was opened."""
    early: endpoint.Endpoint | None = ctx.get(EARLY_ENDPOINT)
    if early is None:
        return await endpoint.start(settings, ctx.get("redis"), gate, engine)
    early.attach(ctx.get("redis"), gate, engine)
    return early


class _EndpointFirst(Retry):
    """The retry policy of the worker's Redis connections (the settings' own), which first opens
    the endpoint (:func:`open_endpoint`).

    ``arq pipeline.WorkerSettings`` builds a stock arq ``Worker``, which connects to Redis in
    ``Worker.main``, retrying for seconds while Redis is down, before it runs ``on_startup``: its
    first connection attempt is the first code of the pipeline's it runs. Only inside a worker's
    ``main`` does this open anything (``arq --check`` connects with these settings too); the
    copies redis-py makes, one per connection, share the worker's ``ctx``.
    """

    __slots__ = ("_ctx",)

    def __init__(self, retry: Retry, ctx: dict[str, Any]) -> None:
        super().__init__(retry._backoff, retry._retries, retry._supported_errors)
        self._ctx = ctx

    def __deepcopy__(self, memo: dict[int, Any]) -> _EndpointFirst:
        twin = copy.copy(self)  # the same ctx
        twin._backoff = copy.deepcopy(self._backoff, memo)
        return twin

    async def call_with_retry(
        self, do: Callable[[], Awaitable[T]], fail: Callable[[RedisError], Any]
    ) -> T:
        """Open the endpoint if a worker is starting and has none yet, then ``Retry``'s own."""
        if EARLY_ENDPOINT not in self._ctx and _running_worker() is not None:
            try:
                await open_endpoint(self._ctx)
            except OSError:  # the port is taken: start-up tries again and says so, not Redis
                self._ctx[EARLY_ENDPOINT] = None
        return await super().call_with_retry(do, fail)


def _claim_in_batches(
    settings: Settings, gate: DatabaseGate, publisher: status.Publisher | None
) -> None:
    """Make the stock arq worker running this start-up (``arq pipeline.WorkerSettings``) a
    :class:`PipelineWorker` from its next poll on; with ``batch_claims`` off, have it at least
    take no job while PostgreSQL is unreachable or the queue is paused (seen when the worker
    publishes its status, every second; batch claims see a pause in their claim script)."""
    worker = _running_worker()
    if worker is None or isinstance(worker, BatchWorker):
        return
    if settings.batch_claims:
        PipelineWorker.adopt(worker)
        return
    # Stock claims stop at max_jobs: 0 while held (SIGTERM's own stop, allow_pick_jobs, is left
    # alone).
    limit = worker.max_jobs
    held = {"gate": not gate.is_open, "paused": False}

    def hold(reason: str, on: bool) -> None:
        held[reason] = on
        worker.max_jobs = 0 if any(held.values()) else limit

    gate.on_change(lambda is_open: hold("gate", not is_open))
    if publisher is not None:
        publisher.on_pause(lambda paused: hold("paused", paused))


def _running_worker() -> Worker | None:
    """The arq worker whose ``main()`` runs this start-up: arq hands ``on_startup`` only the
    context, and ``arq pipeline.WorkerSettings`` cannot be told to build a subclass. The hook
    runs inside ``main()``, so that frame is on the stack, with the worker as ``self``."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is Worker.main.__code__:
            candidate = frame.f_locals.get("self")
            return candidate if isinstance(candidate, Worker) else None
        frame = frame.f_back
    return None


async def shutdown(ctx: dict[str, Any]) -> None:
    """arq ``on_shutdown``: stop the endpoint, flush what is held, then close the engine."""
    ctx.pop(EARLY_ENDPOINT, None)  # a worker run again opens its endpoint again
    found = runtime.runtime_or_none(ctx)
    if found is not None and found.endpoint is not None:
        await found.endpoint.close()
    if found is not None:
        logs.bind_worker(ctx)  # arq shuts down in another task than the one that started up
        await found.coalescer.close()
    await status.stop_publishing(ctx)  # after the last flush, so the status shows it
    if found is None:
        return
    await found.engine.dispose()
    log.info("worker stopped", batches=found.coalescer.batches)


def functions(settings: Settings) -> list[Function]:
    """One arq function per write kind, ``atomic``, and the one that records undeliverable jobs.

    arq fails a job without running it once its tries pass ``max_tries``; the pipeline
    dead-letters a job itself once its runs pass ``max_tries``, so arq's limit sits above that.
    """
    tries = settings.max_tries + 2
    writes = [func(job_function(kind), name=kind.name, max_tries=tries) for kind in KINDS]
    unit = func(atomic_function(), name=ATOMIC, max_tries=tries)
    return [*writes, unit, undeliverable.function(settings)]


def worker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``arq.Worker`` for these settings (tests build workers from this)."""
    jobs = functions(settings)
    ctx: dict[str, Any] = {"settings": settings}
    redis = queue_redis(settings)
    if settings.metrics_port is not None and redis.retry is not None:
        redis.retry = _EndpointFirst(redis.retry, ctx)
    return {
        "functions": jobs,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "redis_settings": redis,
        "queue_name": settings.queue_name,
        "max_jobs": settings.max_jobs,
        "job_timeout": settings.job_timeout_s,
        "max_tries": settings.max_tries + 2,
        "poll_delay": settings.poll_delay_s,
        "keep_result": 3600,
        "job_completion_wait": settings.shutdown_wait_s,
        "job_serializer": serialize,
        "job_deserializer": JobDeserializer(settings.job_max_bytes, [f.name for f in jobs]),
        "log_results": False,
        "ctx": ctx,
    }


WorkerSettings = type(
    "WorkerSettings",
    (),
    {
        "__doc__": "What ``arq pipeline.WorkerSettings`` runs, configured by PIPELINE_* variables.",
        "__module__": __name__,
        # A bad setting ends arq's command here, reported one line each, no value shown.
        **worker_options(settings_or_exit()),
    },
)


class PipelineWorker(BatchWorker):
    """What ``pipeline worker`` runs: arq's worker, claiming and finishing jobs in batches.

    It claims jobs only while PostgreSQL answers and fewer than two full batches of rows wait for
    the coalescer: one to form the next batch from, one to spare. More would only wait in the
    worker, where their timeouts run, instead of in Redis, where they wait for as long as it takes.
    """

    def _batching(self) -> None:
        super()._batching()
        settings = self.ctx.get("settings")
        # arq's per-job lines only when asked for: at thousands of jobs a second they are noise
        self.log_jobs = isinstance(settings, Settings) and settings.log_jobs

    def saturated(self) -> bool:
        """Whether PostgreSQL is unreachable, or two batches' worth of rows wait already."""
        found = runtime.runtime_or_none(self.ctx)
        if found is None:
            return False
        if not found.gate.is_open:
            return True
        return found.coalescer.pending_rows >= 2 * found.settings.batch_max_rows

    async def main(self) -> None:
        """Open the endpoint (:func:`open_endpoint`), then connect as
        :func:`pipeline.redis_queue.connect_queue` does (retries through Sentinel too)."""
        await open_endpoint(self.ctx)
        if self._pool is None and self.redis_settings is not None:
            self._pool = await connect_queue(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        await super().main()


def run(settings: Settings | None = None, *, burst: bool = False) -> None:
    """Run a :class:`PipelineWorker` until it is stopped (``pipeline worker``)."""
    PipelineWorker(**worker_options(settings or get_settings()), burst=burst).run()
