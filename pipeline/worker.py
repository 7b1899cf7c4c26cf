"""The arq worker: ``pipeline worker``, or ``arq pipeline.WorkerSettings``.

Start-up builds the engine and the coalescer and keeps them in ``ctx``; shutdown flushes what the
coalescer holds before the engine closes. On SIGTERM arq stops taking jobs and waits up to
``shutdown_wait_s`` for running jobs, which complete as soon as their batch commits.

``pipeline worker`` runs :class:`PipelineWorker`, which also survives Redis dropping its
connections. arq's own command cannot be told to use a subclass, so ``arq
pipeline.WorkerSettings`` runs plain arq: the same in every other way, but a connection dropped
while it claims a job ends the process (run it under a supervisor that restarts it).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from arq import func
from arq.worker import Function, Worker
from redis.exceptions import RedisError

from pipeline import logs
from pipeline.coalescer import Coalescer
from pipeline.db import create_engine, redacted, redis_settings
from pipeline.jobs import JobRunner, job_function
from pipeline.kinds import KINDS
from pipeline.serialization import JobDeserializer, serialize
from pipeline.settings import Settings, get_settings

log = structlog.get_logger("pipeline.worker")


async def startup(ctx: dict[str, Any]) -> None:
    """arq ``on_startup``: engine, coalescer and job runner, kept in ``ctx``."""
    settings: Settings = ctx.get("settings") or get_settings()
    if ctx.get("configure_logging", True):
        logs.configure(settings.log_level)
    engine = create_engine(settings)
    coalescer = Coalescer(
        engine,
        max_rows=settings.batch_max_rows,
        transient_retries=settings.transient_retries,
        backoff_s=settings.transient_backoff_s,
    )
    coalescer.start()
    ctx["pipeline"] = JobRunner(settings, engine, coalescer)
    log.info(
        "worker started",
        database=redacted(settings.database_url),
        redis=redacted(settings.redis_url),
        queue=settings.queue_name,
        max_jobs=settings.max_jobs,
        batch_max_rows=settings.batch_max_rows,
    )


async def shutdown(ctx: dict[str, Any]) -> None:
    """arq ``on_shutdown``: flush what is held, then close the engine."""
    runner: JobRunner | None = ctx.get("pipeline")
    if runner is None:
        return
    await runner.coalescer.close()
    await runner.engine.dispose()
    log.info("worker stopped", batches=runner.coalescer.batches)


def functions(settings: Settings) -> list[Function]:
    """One arq function per write kind.

    arq fails a job without running it once its tries pass ``max_tries``; the pipeline
    dead-letters a job itself on its last try, so arq's limit sits a little above that.
    """
    return [
        func(job_function(kind), name=kind.name, max_tries=settings.max_tries + 2) for kind in KINDS
    ]


def worker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``arq.Worker`` for these settings (tests build workers from this)."""
    return {
        "functions": functions(settings),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "redis_settings": redis_settings(str(settings.redis_url)),
        "queue_name": settings.queue_name,
        "max_jobs": settings.max_jobs,
        "job_timeout": settings.job_timeout_s,
        "max_tries": settings.max_tries + 2,
        "poll_delay": settings.poll_delay_s,
        "keep_result": 3600,
        "job_completion_wait": settings.shutdown_wait_s,
        "job_serializer": serialize,
        "job_deserializer": JobDeserializer(settings.job_max_bytes),
        "log_results": False,
        "ctx": {"settings": settings},
    }


WorkerSettings = type(
    "WorkerSettings",
    (),
    {
        "__doc__": "What ``arq pipeline.WorkerSettings`` runs, configured by PIPELINE_* variables.",
        "__module__": __name__,
        **worker_options(get_settings()),
    },
)


class PipelineWorker(Worker):
    """arq's worker, hardened against Redis dropping its connections.

    arq claims a job under a WATCH; when the connection drops there, redis-py cannot retry and
    raises, arq does not catch it, and the worker dies with a semaphore slot taken. This worker
    claims jobs one at a time through arq's own ``start_jobs``, gives the slot back when a claim
    fails that way, and goes on polling after a pause. The job stays queued, so nothing is lost.
    """

    reconnect_delay_s = 0.5

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim and start each job; a claim cut short by Redis is undone and retried later."""
        for job_id in job_ids:
            counted = self.job_counter
            try:
                await super().start_jobs([job_id])
            except (RedisError, OSError) as exc:
                # arq took a semaphore slot and counted the job before the claim failed.
                if self.job_counter > counted:
                    self.job_counter -= 1
                    self.sem.release()
                log.warning("claiming a job failed; Redis will be retried", error=repr(exc))
                await asyncio.sleep(self.reconnect_delay_s)
                return

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            log.warning("polling Redis failed; retrying", error=repr(exc))
            await asyncio.sleep(self.reconnect_delay_s)


def run(settings: Settings | None = None, *, burst: bool = False) -> None:
    """Run a :class:`PipelineWorker` until it is stopped (``pipeline worker``)."""
    PipelineWorker(**worker_options(settings or get_settings()), burst=burst).run()
