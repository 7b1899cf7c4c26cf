"""The batch worker's claims follow arq's rules: a job another worker holds is left alone until
its in-progress key goes, a deferred job waits until it is due, and every job runs once with
arq's try count and result."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from arq import Retry, func
from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus
from arq.utils import timestamp_ms
from arq.worker import Worker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline import JobFailed
from pipeline.redis_queue import queue_redis
from pipeline.schema.taxonomy import node_updates_lock_key
from pipeline.serialization import deserialize, serialize
from pipeline.settings import Settings
from pipeline.worker.batch.claiming import BatchWorker
from tests.integration.helpers import seed_tree, stop_worker


def score(node: str, version: int) -> dict[str, object]:
    return {"node_id": node, "ucb_score": float(version), "version": version}


async def test_held_and_deferred_jobs_wait_and_every_job_runs_once(
    producer: ArqRedis, make_worker: Callable[..., Worker], settings: Settings
) -> None:
    await seed_tree(producer, "p", ["a"])
    await make_worker().main()
    jobs: list[Job] = []
    for version in range(1, 301):
        job = await producer.enqueue_job(
            "update_scores", project_id="p", scores=[score("a", version)]
        )
        assert job is not None
        jobs.append(job)
    held = jobs[:120]  # the front of the queue, "running" on another worker
    for job in held:
        await producer.set(f"arq:in-progress:{job.job_id}", b"1", px=60_000)
    deferred = await producer.enqueue_job(
        "update_scores", project_id="p", scores=[score("a", 999)], _defer_by=3600
    )
    assert deferred is not None

    worker = make_worker(burst=False)
    worker.claim_batch = 50  # several polls, each reading past the held front of the queue
    running = asyncio.create_task(worker.main())
    try:
        for job in jobs[120:]:
            assert (await job.result(timeout=30))["rows"] == 1
        assert [await job.status() for job in held] == [JobStatus.in_progress] * len(held)
        assert await deferred.status() == JobStatus.deferred

        # The other worker "dies" and the deferral ends: now this worker takes them too.
        await producer.delete(*(f"arq:in-progress:{job.job_id}" for job in held))
        await producer.zadd(settings.queue_name, {deferred.job_id: timestamp_ms()}, xx=True)
        for job in [*held, deferred]:
            assert (await job.result(timeout=30))["rows"] == 1
    finally:
        await stop_worker(worker, running)
    assert worker.jobs_complete == 301 and worker.jobs_failed == worker.jobs_retried == 0
    infos = [await job.result_info() for job in [*jobs, deferred]]
    assert all(info is not None and info.success and info.job_try == 1 for info in infos)
    assert await producer.zcard(settings.queue_name) == 0
    assert not await producer.keys("arq:in-progress:*")


async def _slow(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(30)


async def _fast(ctx: dict[str, Any]) -> str:
    return "ok"


async def _retried_once(ctx: dict[str, Any]) -> int:
    if ctx["job_try"] == 1:
        raise Retry(defer=0.05)
    return int(ctx["job_try"])


async def test_timeouts_retries_and_results_follow_arq(
    plain_producer: ArqRedis, settings: Settings
) -> None:
    worker = BatchWorker(
        functions=[
            func(_slow, name="slow", timeout=0.3),
            func(_fast, name="fast"),
            func(_retried_once, name="retried_once"),
        ],
        redis_settings=queue_redis(settings),
        queue_name=settings.queue_name,
        job_serializer=serialize,
        job_deserializer=deserialize,
        keep_result=60,
        burst=True,
        handle_signals=False,
    )
    slow, fast, retried = [
        await plain_producer.enqueue_job(name) for name in ("slow", "fast", "retried_once")
    ]
    assert slow is not None and fast is not None and retried is not None
    started = time.monotonic()
    try:
        await worker.main()
    finally:
        await worker.close()
    assert time.monotonic() - started < 5  # the slow job was cut off, not waited for
    with pytest.raises(JobFailed) as timed_out:
        await slow.result(timeout=1)
    assert timed_out.value.kind == "TimeoutError"
    assert await fast.result(timeout=1) == "ok"
    assert await retried.result(timeout=1) == 2
    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (2, 1, 1)


async def test_a_stalled_database_leaves_the_backlog_in_redis(
    producer: ArqRedis, make_worker: Callable[..., Worker], settings: Settings, engine: AsyncEngine
) -> None:
    await seed_tree(producer, "p", [f"n{i}" for i in range(5)])
    await make_worker().main()
    jobs = []
    for version in range(1, 101):
        job = await producer.enqueue_job(
            "update_scores", project_id="p", scores=[score(f"n{i}", version) for i in range(5)]
        )
        assert job is not None
        jobs.append(job)
    # Two batches' worth of rows is 20 rows, 4 jobs; a claim takes at most 4 jobs more.
    worker = make_worker(settings_overrides={"batch_max_rows": 10}, burst=False)
    worker.claim_batch = 4
    async with engine.connect() as blocker:
        # Holding the project's node-update lock stalls every flush at its first statement.
        await blocker.execute(
            text(f"SELECT pg_advisory_lock({node_updates_lock_key(':p')})"), {"p": "p"}
        )
        running = asyncio.create_task(worker.main())
        try:
            await asyncio.sleep(1.0)
            assert worker.job_counter <= 2 + 4 + 4
            assert await producer.zcard(settings.queue_name) >= 90
        finally:
            await blocker.execute(
                text(f"SELECT pg_advisory_unlock({node_updates_lock_key(':p')})"), {"p": "p"}
            )
        try:
            for job in jobs:
                assert (await job.result(timeout=30))["rows"] == 5
        finally:
            await stop_worker(worker, running)
    assert worker.jobs_complete == 100 and worker.jobs_failed == worker.jobs_retried == 0
