"""An unreachable PostgreSQL costs jobs time, never tries: jobs wait, go back to the queue before
arq's timeout, and commit once PostgreSQL answers; the worker takes no job meanwhile.
Runs that are cut short are the only ones that spend tries, and a job cut short too often is
dead-lettered instead of run again. Every test runs under stock arq and ``pipeline worker``."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, retry_key_prefix
from arq.worker import Worker
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline import JobFailed
from pipeline.settings import Settings
from pipeline.worker.runtime import runtime
from tests.integration.helpers import Proxy, rows, scalar, seed_tree, stop_worker


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    """Wait until ``predicate`` holds."""
    for _ in range(int(timeout_s * 100)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {timeout_s} s: {what}")


async def until_async(count: Callable[[], Awaitable[int]], what: str) -> None:
    """Wait until ``count`` is above zero."""
    for _ in range(1000):
        if await count():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within 10 s: {what}")


async def in_progress(redis: ArqRedis) -> int:
    return len([key async for key in redis.scan_iter(match=f"{in_progress_key_prefix}*")])


async def test_jobs_wait_out_an_unreachable_database_without_spending_tries(
    producer: ArqRedis,
    worker_of: Callable[..., Worker],
    proxy: Proxy,
    database_url: str,
    engine: AsyncEngine,
    settings: Settings,
    mode: str,
) -> None:
    await seed_tree(producer, "p", [])
    await worker_of().main()
    through_proxy = make_url(database_url).set(port=proxy.port)
    job_timeout_s = 2
    worker = worker_of(
        burst=False,
        database_url=through_proxy.render_as_string(hide_password=False),
        job_timeout_s=job_timeout_s,
    )
    running = asyncio.create_task(worker.main())
    await until(lambda: "pipeline" in worker.ctx, "the worker has started")
    await proxy.down()
    jobs = [
        await producer.enqueue_job(
            "insert_nodes",
            project_id="p",
            nodes=[{"node_id": f"n{i}", "parent_id": "root", "label": "n"}],
        )
        for i in range(20)
    ]
    jobs += [
        await producer.enqueue_job("upsert_project", project_id=f"q{i}", name="q") for i in range(5)
    ]
    runner = runtime(worker.ctx)
    await until(lambda: not runner.gate.is_open, "the first flush that fails closes the gate")
    assert runner.gate.reason is not None
    await asyncio.sleep(3 * job_timeout_s)  # each job reaches its wait more than twice
    assert await in_progress(producer) == 0  # it handed back what it held and claims nothing
    assert await producer.zcard(settings.queue_name) == 25
    await proxy.up()
    await stop_worker(worker, running)
    assert worker.jobs_failed == 0 and worker.jobs_retried > 0
    for job in jobs:
        assert job is not None
        info = await job.result_info()
        assert info is not None and info.success and info.job_try == 1
    assert await scalar(engine, "SELECT count(*) FROM nodes") == 21
    assert await scalar(engine, "SELECT count(*) FROM projects") == 6
    assert await rows(engine, "SELECT * FROM dead_letters") == []
    assert runner.gate.is_open


async def test_a_job_whose_runs_were_all_cut_short_is_dead_lettered_unrun(
    producer: ArqRedis,
    worker_of: Callable[..., Worker],
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    job = await producer.enqueue_job("upsert_project", project_id="p", name="p")
    assert job is not None
    # As arq counts them: max_tries runs started, none finished (each worker was killed).
    await producer.set(retry_key_prefix + job.job_id, settings.max_tries)
    worker = worker_of()
    await worker.main()
    assert worker.jobs_failed == 1
    with pytest.raises(JobFailed) as failed:
        await job.result(timeout=5)
    assert failed.value.kind == "NeverFinished"
    assert f"started {settings.max_tries + 1} times" in failed.value.message
    dead = await rows(engine, "SELECT function, error_class, tries, payload FROM dead_letters")
    assert dead == [
        (
            "upsert_project",
            "NeverFinished",
            settings.max_tries + 1,
            {"project_id": "p", "name": "p"},
        )
    ]
    assert await scalar(engine, "SELECT count(*) FROM projects") == 0


async def test_a_run_cancelled_by_shutdown_gives_its_try_back(
    producer: ArqRedis,
    worker_of: Callable[..., Worker],
    engine: AsyncEngine,
) -> None:
    await seed_tree(producer, "p", ["a"])
    await worker_of().main()
    job = await producer.enqueue_job(
        "update_statuses", project_id="p", statuses=[{"node_id": "a", "status": "pruned"}]
    )
    assert job is not None
    async with engine.connect() as blocker:
        await blocker.execute(text("LOCK TABLE nodes IN ACCESS EXCLUSIVE MODE"))
        worker = worker_of(burst=False)
        running = asyncio.create_task(worker.main())
        await until_async(lambda: in_progress(producer), "the job has started")
        await asyncio.sleep(0.2)  # it waits for its commit
        assert await producer.get(retry_key_prefix + job.job_id) == b"1"
        worker.main_task = running
        worker.handle_sig(signal.SIGTERM)  # what arq does once SIGTERM's wait is over: cancel all
        await asyncio.gather(running, *worker.tasks.values(), return_exceptions=True)
        await blocker.rollback()
    assert await producer.get(retry_key_prefix + job.job_id) == b"0"
    await worker_of().main()
    info = await job.result_info()
    assert info is not None and info.success and info.job_try == 1
