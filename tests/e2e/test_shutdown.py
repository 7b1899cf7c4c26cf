"""Stopping workers: SIGTERM under load exits cleanly and loses nothing; SIGKILL loses nothing
either, because arq runs the killed worker's jobs again and every write is idempotent."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import pytest
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.settings import Settings
from tests.e2e.conftest import WorkerProcess
from tests.e2e.test_workers import drained
from tests.integration.helpers import rows, scalar

pytestmark = pytest.mark.e2e
JOBS = 3000


async def enqueue_workload(producer: ArqRedis) -> None:
    """A project, a root, and JOBS jobs that each insert one child and score it."""
    await producer.enqueue_job("upsert_project", project_id="p", name="p")
    await producer.enqueue_job(
        "insert_nodes", project_id="p", nodes=[{"node_id": "r", "label": "r"}]
    )
    for i in range(JOBS):
        await producer.enqueue_job(
            "insert_nodes",
            project_id="p",
            nodes=[{"node_id": f"n{i}", "parent_id": "r", "label": "x"}],
        )
        await producer.enqueue_job(
            "update_scores",
            project_id="p",
            scores=[{"node_id": f"n{i}", "ucb_score": i, "version": 1}],
        )


async def check_everything_landed(engine: AsyncEngine) -> None:
    """Every write of the workload is there exactly once, and nothing was dead-lettered."""
    assert await scalar(engine, "SELECT count(*) FROM nodes") == JOBS + 1
    assert await rows(
        engine, "SELECT count(*), sum(ucb_score) FROM nodes WHERE ucb_score IS NOT NULL"
    ) == [(JOBS, float(sum(range(JOBS))))]
    assert await scalar(engine, "SELECT count(*) FROM dead_letters") == 0


async def wait_for_progress(engine: AsyncEngine, at_least: int) -> None:
    """Wait until the workers have committed some of the workload."""
    for _ in range(300):
        if await scalar(engine, "SELECT count(*) FROM nodes") >= at_least:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the workers committed nothing")


async def test_sigterm_under_load_exits_cleanly_and_loses_nothing(
    producer: ArqRedis,
    start_worker: Callable[..., WorkerProcess],
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    await enqueue_workload(producer)
    first = start_worker()
    await wait_for_progress(engine, 200)
    code = await asyncio.to_thread(first.stop, signal.SIGTERM, 30)
    assert code == 0, first.output()[-3000:]
    assert "shutdown on SIGTERM" in first.output()
    left = await producer.zcard(settings.queue_name)
    assert 0 < left < 2 * JOBS + 2, "stop it while work is still queued"

    second = start_worker()
    await drained(producer, settings.queue_name, timeout=120)
    assert await asyncio.to_thread(second.stop) == 0
    await check_everything_landed(engine)


async def test_sigkill_loses_nothing(
    producer: ArqRedis,
    start_worker: Callable[..., WorkerProcess],
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    await enqueue_workload(producer)
    first = start_worker()
    await wait_for_progress(engine, 200)
    assert await asyncio.to_thread(first.stop, signal.SIGKILL) == -signal.SIGKILL
    in_progress = await producer.keys("arq:in-progress:*")
    assert in_progress, "kill it while jobs are running"

    second = start_worker()
    # The killed worker's jobs run again once their in-progress keys expire (timeout + 10 s).
    await drained(producer, settings.queue_name, timeout=settings.job_timeout_s + 60)
    assert await asyncio.to_thread(second.stop) == 0
    await check_everything_landed(engine)
