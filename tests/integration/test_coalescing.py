"""Group commit: many jobs, few transactions, and no job completes before its rows are visible."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.worker import Worker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pipeline.kinds import Row, Target
from pipeline.kinds.base import Report
from pipeline.kinds.labeled_samples import save_labeled_samples
from pipeline.kinds.nodes import insert_nodes
from pipeline.worker.coalescer import Coalescer
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


async def test_a_write_waits_for_its_parent_in_another_flushers_transaction(
    producer: ArqRedis,
    run_worker: Callable[..., Any],
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await seed_tree(producer, "p", [])
    await run_worker()
    # The node's insert writes its row, then stalls before committing.
    written, commit = asyncio.Event(), asyncio.Event()
    write = Target.write

    async def stalling_write(target: Target, conn: AsyncConnection, rows: list[Row]) -> Report:
        missing = await write(target, conn, rows)
        if target is insert_nodes.target:
            written.set()
            await commit.wait()
        return missing

    monkeypatch.setattr(Target, "write", stalling_write)
    node = insert_nodes.parse(
        {"project_id": "p", "nodes": [{"node_id": "c", "parent_id": "root", "label": "c"}]}
    )
    # A sample names its node without the project's node lock, which the node's save holds.
    sample_id = "00000000-0000-0000-0000-000000000001"
    sample = save_labeled_samples.parse(
        {"project_id": "p", "samples": [{"sample_id": sample_id, "node_id": "c", "label": "ok"}]}
    )
    coalescer = Coalescer(engine, max_rows=100, transient_retries=0, backoff_s=0.01, flushers=2)
    coalescer.start()
    try:
        node_rows, sample_rows = insert_nodes.rows(node, 1), save_labeled_samples.rows(sample, 1)
        inserting = asyncio.create_task(
            coalescer.submit("j1", "insert_nodes", [(insert_nodes.target, node_rows)])
        )
        await asyncio.wait_for(written.wait(), 5)
        sampling = asyncio.create_task(
            coalescer.submit(
                "j2", "save_labeled_samples", [(save_labeled_samples.target, sample_rows)]
            )
        )
        for _ in range(500):  # the other flusher writes the sample while the node is uncommitted
            if coalescer.batches:
                break
            await asyncio.sleep(0.01)
        assert coalescer.batches == 1 and not sampling.done()
        assert coalescer.last_flush is not None and coalescer.last_flush.held == 1
        commit.set()
        first, second = await asyncio.wait_for(asyncio.gather(inserting, sampling), 5)
    finally:
        commit.set()
        await coalescer.close()
    assert second["batch_id"] != first["batch_id"] and coalescer.batches == 3
    assert await scalar(engine, "SELECT node_id FROM labeled_samples") == "c"
