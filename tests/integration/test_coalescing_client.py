"""Producer-side coalescing with a real worker: callers that wait get their commit receipt."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from arq.connections import ArqRedis
from arq.worker import Worker
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline import PipelineClient
from pipeline.producer.coalescing import CoalescingClient
from tests.integration.helpers import scalar, seed_tree, stop_worker


async def test_coalesced_writes_commit_in_few_jobs(
    producer: ArqRedis, make_worker: Callable[..., Worker], engine: AsyncEngine
) -> None:
    nodes = [f"n{i}" for i in range(300)]
    await seed_tree(producer, "p", nodes)
    worker = make_worker(burst=False)
    running = asyncio.create_task(worker.main())
    try:
        client = CoalescingClient(PipelineClient(producer), max_items=100, linger_s=0.005)
        receipts = await asyncio.gather(
            *(
                client.write(
                    "update_scores", {"node_id": n, "rubric_score": 0.5}, project_id="p", wait=True
                )
                for n in nodes
            )
        )
    finally:
        await stop_worker(worker, running)
    assert all(r is not None for r in receipts)
    assert {r.rows for r in receipts if r is not None} <= {100}
    assert await scalar(engine, "SELECT count(*) FROM nodes WHERE rubric_score = 0.5") == 300
    assert worker.jobs_complete <= 2 + 3  # the seed's two jobs and three of 100 items
