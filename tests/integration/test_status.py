"""``pipeline status`` against real Redis and PostgreSQL: what it reports is what they hold, and a
running worker publishes its last flush every second."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.worker import Worker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.ops import status
from pipeline.settings import Settings
from tests.integration.helpers import rows, scalar, seed_tree, stop_worker

INVALID = [  # each is dead-lettered on its first try
    ("insert_nodes", {"project_id": "p", "nodes": [{"node_id": "x"}]}),
    ("insert_nodes", {"project_id": "p", "nodes": [], "extra": 1}),
    ("update_statuses", {"project_id": "p", "statuses": [{"node_id": "a", "status": "gone"}]}),
]
SCORE = {"ucb_score": 1.5}


async def published(
    redis: ArqRedis, queue: str, ready: Callable[[status.WorkerStatus], bool]
) -> status.WorkerStatus:
    """The one worker's entry, once it shows what ``ready`` waits for (it is published every
    second)."""
    deadline = time.monotonic() + 3 * status.PUBLISH_INTERVAL_S + 2
    while True:
        seen = await status.workers(redis, queue)
        if len(seen) == 1 and ready(seen[0]):
            return seen[0]
        assert time.monotonic() < deadline, seen
        await asyncio.sleep(0.05)


async def test_status_reports_what_redis_and_postgres_hold(
    producer: ArqRedis,
    run_worker: Callable[..., Any],
    engine: AsyncEngine,
    settings: Settings,
    run_cli: Callable[..., Any],
) -> None:
    queue = settings.queue_name
    await seed_tree(producer, "p", ["a", "b", "c"])
    await producer.enqueue_job(
        "update_statuses", project_id="p", statuses=[{"node_id": "a", "status": "pruned"}]
    )
    for function, payload in INVALID:
        await producer.enqueue_job(function, **payload)
    worker: Worker = await run_worker()
    assert worker.jobs_failed == len(INVALID)
    await published(
        producer, queue, lambda w: w.batches == worker.ctx["pipeline"].coalescer.batches
    )

    # Left in the queue: three due jobs (one of them taken by a worker) and two deferred ones.
    due = [
        await producer.enqueue_job(
            "update_scores", project_id="p", scores=[{"node_id": n, **SCORE}]
        )
        for n in ("a", "b", "c")
    ]
    for n in ("a", "b"):
        await producer.enqueue_job(
            "update_scores", project_id="p", scores=[{"node_id": n, **SCORE}], _defer_by=3600
        )
    assert due[0] is not None
    await producer.set(f"arq:in-progress:{due[0].job_id}", b"1", px=60_000)
    await producer.set("arq:in-progress:a-job-of-another-queue", b"1", px=60_000)

    code, out, _ = await run_cli("status", "--json", "--exact")
    assert code == 0
    report = json.loads(out)

    now = time.time() * 1000
    waiting = await producer.zrange(queue, 1, 1, withscores=True)  # due[1], the oldest not taken
    assert report["queue"] == {
        "name": queue,
        "jobs": await producer.zcard(queue),
        "in_progress": 1,
        "due": await producer.zcount(queue, "-inf", now) - 1,
        "deferred": await producer.zcount(queue, f"({now}", "+inf"),
        "retrying": 0,
        "oldest_due_age_s": pytest.approx((now - waiting[0][1]) / 1000, abs=2),
    }
    assert (report["queue"]["jobs"], report["queue"]["due"], report["queue"]["deferred"]) == (
        5,
        2,
        2,
    )

    by_function = dict(
        await rows(engine, "SELECT function, count(*) FROM dead_letters GROUP BY function")
    )
    assert report["dead_letters"] == {"total": 3, "by_function": by_function}
    assert by_function == {"insert_nodes": 2, "update_statuses": 1}

    counts = {t: await scalar(engine, f'SELECT count(*) FROM "{t}"') for t in status.TABLES}
    assert report["tables"] == {"counted": "exact", "rows": counts}
    # One audit row per row written: the project, four nodes, one status change.
    assert (counts["projects"], counts["nodes"], counts["audit_log"]) == (1, 4, 6)

    [entry] = report["workers"]
    assert entry["worker_id"] == worker.ctx["worker_id"]
    # The burst worker has drained the queue and shut down (a running one: the next test).
    assert entry["state"] == "stopped" and entry["batches"] >= 1
    assert entry["last_flush"]["rows"] >= 1 and entry["last_flush"]["at"]
    assert 0 <= entry["seen_age_s"] < status.WORKER_TTL_S

    code, human, _ = await run_cli("status")
    assert code == 0
    for word in ("queue", "in progress", "deferred", "workers", "insert_nodes", "update_statuses"):
        assert word in human
    assert "rows per table" in human and "rows (estimated)" in human


async def test_estimates_match_the_counts_once_analyzed(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine
) -> None:
    await seed_tree(producer, "p", [f"n{i}" for i in range(40)])
    await run_worker()
    exact = await status.table_rows(engine, exact=True)
    assert exact.rows["nodes"] == 41
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE"))
    deadline = time.monotonic() + 15
    while (estimated := await status.table_rows(engine)).rows != exact.rows:
        # statistics of the worker's connections reach PostgreSQL's counters within a second
        assert time.monotonic() < deadline, (estimated.rows, exact.rows)
        await asyncio.sleep(0.2)
    assert estimated.counted == "estimate"


async def test_a_running_worker_publishes_every_second_and_says_when_it_stopped(
    producer: ArqRedis, make_worker: Callable[..., Worker], settings: Settings
) -> None:
    worker = make_worker(burst=False)
    running = asyncio.create_task(worker.main())
    job = await producer.enqueue_job("upsert_project", project_id="p", name="P")
    assert job is not None
    await job.result(timeout=10)

    first = await published(producer, settings.queue_name, lambda w: w.last_flush is not None)
    assert first.state == "running" and first.last_flush.rows == 1
    key = status.worker_key(settings.queue_name, first.worker_id)
    assert 0 < await producer.ttl(key) <= status.WORKER_TTL_S

    await asyncio.sleep(status.PUBLISH_INTERVAL_S * 1.5)
    [later] = await status.workers(producer, settings.queue_name)
    assert later.seen_at > first.seen_at

    await stop_worker(worker, running)
    await worker.close()
    [stopped] = await status.workers(producer, settings.queue_name)
    assert (stopped.worker_id, stopped.state) == (first.worker_id, "stopped")
