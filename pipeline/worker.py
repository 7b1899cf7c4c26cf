"""The arq worker: ``arq pipeline.WorkerSettings``.

Start-up builds the engine and the coalescer and keeps them in ``ctx``; shutdown flushes what the
coalescer holds before the engine closes. On SIGTERM arq stops taking jobs and waits up to
``shutdown_wait_s`` for running jobs, which complete as soon as their batch commits.
"""

from __future__ import annotations

from typing import Any

import structlog
from arq import func
from arq.connections import RedisSettings
from arq.worker import Function

from pipeline import logs
from pipeline.coalescer import Coalescer
from pipeline.db import create_engine, redacted
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
        "redis_settings": RedisSettings.from_dsn(str(settings.redis_url)),
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
