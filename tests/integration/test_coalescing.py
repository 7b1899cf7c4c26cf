"""Group commit: many jobs, few transactions, and no job completes before its rows are visible."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from arq.connections import ArqRedis
from arq.worker import Worker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.helpers import results, rows, scalar, seed_tree, stop_worker


async def test_many_concurrent_jobs_share_few_transactions(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine
) -> None:
    node_ids = [f"n{i:03d}" for i in range(300)]
    await seed_tree(producer, "p", node_ids)
    await run_worker()
    jobs = [
        await producer.enqueue_job(
            "update_scores", project_id="p", scores=[{"node_id": n, "rubric_score": i / 300}]
        )
        for i, n in enumerate(node_ids)
    ]
    # Stall the first flush on a lock for a moment: the jobs arriving meanwhile must all
    # wait for it and then share the next transaction(s), not take one each.
    async with engine.connect() as blocker:
        await blocker.execute(text("LOCK TABLE nodes IN EXCLUSIVE MODE"))
        draining = asyncio.create_task(run_worker())
        await asyncio.sleep(1.0)
        await blocker.rollback()
    worker = await draining

    receipts = await results(jobs)
    batches = {r["batch_id"] for r in receipts}
    assert worker.jobs_complete == 300 and worker.jobs_failed == 0
    assert len(batches) <= 20, f"300 jobs took {len(batches)} transactions"
    assert max(r["jobs"] for r in receipts) >= 100
    assert all(r["rows"] == 1 for r in receipts)
    assert await scalar(engine, "SELECT count(*) FROM nodes WHERE rubric_score IS NOT NULL") == 300


async def test_no_job_completes_before_its_rows_are_visible(
    producer: ArqRedis, make_worker: Callable[..., Worker], engine: AsyncEngine
) -> None:
    await seed_tree(producer, "p", [])
    worker = make_worker(burst=False)
    running = asyncio.create_task(worker.main())
    try:
        jobs = [
            await producer.enqueue_job(
                "insert_nodes",
                project_id="p",
                nodes=[{"node_id": f"c{i}", "parent_id": "root", "label": "x"}],
            )
            for i in range(200)
        ]

        async def check(i: int) -> bool:
            await jobs[i].result(timeout=10, poll_delay=0.001)
            # A separate connection, right after the job reports completion.
            found = await rows(
                engine, "SELECT 1 FROM nodes WHERE project_id='p' AND node_id=:n", n=f"c{i}"
            )
            return bool(found)

        seen = await asyncio.gather(*(check(i) for i in range(200)))
    finally:
        await stop_worker(worker, running)
    assert all(seen), f"{seen.count(False)} jobs completed before their rows were visible"
