"""Running jobs in one batch or across batches, for tests whose outcome must not depend on it."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.jobs import Job
from arq.worker import Worker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline import JobFailed
from pipeline.ops import metrics
from pipeline.worker.coalescer import Coalescer
from tests.integration.helpers import scalar

Call = tuple[str, dict[str, Any]]


async def run(make: Callable[[], Worker]) -> Worker:
    """Drain the queue with one burst worker."""
    worker = make()
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker


async def enqueue(producer: ArqRedis, calls: list[Call]) -> list[Job]:
    """Enqueue ``calls`` in order."""
    jobs = [await producer.enqueue_job(function, **kwargs) for function, kwargs in calls]
    assert all(job is not None for job in jobs)
    return [job for job in jobs if job is not None]


async def until(condition: Callable[[], Any], what: str) -> None:
    """Wait (up to 10 s) until ``condition()`` (or the awaitable it returns) is true."""
    for _ in range(2000):
        result = condition()
        if await result if inspect.isawaitable(result) else result:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


async def waiting_on_lock(engine: AsyncEngine, query: str = "") -> bool:
    """Whether a statement (containing ``query``) of the test's database waits for a lock."""
    return bool(
        await scalar(
            engine,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND strpos(query, :q) > 0",
            q=query,
        )
    )


async def in_one_batch(
    producer: ArqRedis, engine: AsyncEngine, make: Callable[[], Worker], calls: list[Call]
) -> tuple[list[Job], Worker]:
    """Run ``calls`` as one batch, submitted in order: while a first flush (a heartbeat) waits on a
    lock, each job is enqueued once the one before it waits in the coalescer."""
    worker = make()
    async with engine.connect() as blocker:
        await blocker.execute(text("LOCK TABLE service_health IN EXCLUSIVE MODE"))
        await producer.enqueue_job("heartbeat", service="s", instance_id="i", status="ok")
        running = asyncio.create_task(worker.main())
        await until(lambda: waiting_on_lock(engine), "the first flush to wait on the lock")
        coalescer: Coalescer = worker.ctx["pipeline"].coalescer
        held = metrics.IN_FLIGHT.count  # the heartbeat's job
        jobs = []
        for i, call in enumerate(calls):
            jobs += await enqueue(producer, [call])
            # A job counts as in flight and submits its rows in one step, with no await between.
            await until(lambda i=i: metrics.IN_FLIGHT.count == held + i + 1, f"job {i} to submit")
        await blocker.rollback()
    try:
        await running
    finally:
        await worker.close()
    assert coalescer.batches == 2 and coalescer.last_flush is not None
    assert coalescer.last_flush.jobs == len(calls)  # the calls shared one batch
    return jobs, worker


async def across_batches(
    producer: ArqRedis, make: Callable[[], Worker], calls: list[Call]
) -> tuple[list[Job], Worker]:
    """Run the first of ``calls`` alone, then the others together."""
    jobs = await enqueue(producer, calls[:1])
    await run(make)
    jobs += await enqueue(producer, calls[1:])
    return jobs, await run(make)


async def conflict_of(job: Job) -> str:
    """The message of a job that failed with a conflict."""
    with pytest.raises(JobFailed) as caught:
        await job.result(timeout=5)
    assert caught.value.kind == "Conflict"
    return caught.value.message
