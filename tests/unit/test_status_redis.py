"""The Redis side of ``pipeline status`` against fakeredis: how the queue's jobs are counted, and
the entries workers publish."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fakeredis import FakeAsyncRedis

from pipeline.logs import worker_id
from pipeline.ops import status
from pipeline.ops.flushes import FlushReport

NOW = 1_800_000_000_000
QUEUE = "pipeline:unit[1]"  # glob characters must not widen the workers' pattern


@pytest.fixture
async def redis() -> AsyncIterator[FakeAsyncRedis]:
    fake = FakeAsyncRedis()
    yield fake
    await fake.aclose()


class Source:
    """A coalescer as the publisher sees it."""

    def __init__(self) -> None:
        self.batches = 0
        self.last_flush: FlushReport | None = None
        self.recent_flushes: list[FlushReport] = []


async def test_jobs_are_in_progress_due_or_deferred(redis: FakeAsyncRedis) -> None:
    # arq keeps a running job in the queue until it finishes, scored by when it was due.
    await redis.zadd(
        QUEUE,
        {
            "running-1": NOW - 9_000,
            "running-2": NOW - 8_000,
            "waiting-1": NOW - 7_500,
            "waiting-2": NOW,
            "deferred-1": NOW + 60_000,
            "deferred-2": NOW + 120_000,
        },
    )
    await redis.zadd("other:queue", {"elsewhere": NOW - 20_000})
    for job_id in ("running-1", "running-2", "elsewhere", "finished-meanwhile"):
        await redis.set(f"arq:in-progress:{job_id}", b"1")

    queue = await status.queue_status(redis, QUEUE, now_ms=NOW)
    assert queue == status.QueueStatus(
        name=QUEUE, jobs=6, in_progress=2, due=2, deferred=2, oldest_due_age_s=7.5
    )


async def test_an_empty_or_only_deferred_queue_has_no_oldest_due_job(
    redis: FakeAsyncRedis,
) -> None:
    queue = await status.queue_status(redis, QUEUE, now_ms=NOW)
    assert (queue.jobs, queue.due, queue.deferred, queue.oldest_due_age_s) == (0, 0, 0, None)
    await redis.zadd(QUEUE, {"later": NOW + 1})
    queue = await status.queue_status(redis, QUEUE, now_ms=NOW)
    assert (queue.jobs, queue.due, queue.deferred, queue.oldest_due_age_s) == (1, 0, 1, None)


async def test_a_publisher_publishes_until_stopped_then_says_so(redis: FakeAsyncRedis) -> None:
    source = Source()
    ctx: dict[str, Any] = {"redis": redis}
    status.start_publishing(ctx, QUEUE, source)
    worker = ctx["worker_id"]
    assert worker == worker_id(ctx)  # made once, then shared
    key = status.worker_key(QUEUE, worker)
    await asyncio.sleep(0.05)
    [entry] = await status.workers(redis, QUEUE)
    assert (entry.worker_id, entry.state, entry.batches, entry.last_flush) == (
        worker,
        "running",
        0,
        None,
    )
    assert 0 < await redis.ttl(key) <= status.WORKER_TTL_S

    source.batches, source.last_flush = 3, FlushReport(at="2026-01-01T00:00:00+00:00", rows=7)
    await status.stop_publishing(ctx)
    await status.stop_publishing(ctx)  # arq may shut a worker down twice
    assert "status_publisher" not in ctx
    [entry] = await status.workers(redis, QUEUE)
    assert (entry.state, entry.batches, entry.last_flush) == ("stopped", 3, source.last_flush)

    # Another queue's workers, and entries that are not a worker's, are left out.
    for queue in ("pipeline:unit1", f"{QUEUE}:sub"):
        await redis.set(status.worker_key(queue, "x"), json.dumps({"worker_id": "x"}))
    await redis.set(status.worker_key(QUEUE, "junk"), b"not json")
    assert [w.worker_id for w in await status.workers(redis, QUEUE)] == [worker]


def test_a_worker_id_already_in_ctx_is_kept() -> None:
    ctx: dict[str, Any] = {"worker_id": "host-1-abc"}
    assert worker_id(ctx) == "host-1-abc"
    fresh: dict[str, Any] = {}
    assert worker_id(fresh) == fresh["worker_id"] != worker_id({})
