"""The producer's side of the contract, with real Redis and PostgreSQL: nothing the worker cannot
run is queued, nothing handed to a client is lost when its producer stops, urgent writes go at
once, a wait ends with an error that says the job is still queued."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.worker import Worker
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline import PipelineClient, create_pool
from pipeline.errors import InvalidPayload, StillQueued, UnknownFunction
from pipeline.producer.coalescing import CoalescingClient
from pipeline.settings import Settings
from tests.integration.batching import run
from tests.integration.helpers import rows, scalar, seed_tree, stop_worker

NODES = [f"n{i}" for i in range(40)]


def score(node: str, value: float = 0.5) -> dict[str, Any]:
    return {"node_id": node, "rubric_score": value}


async def queued(redis: ArqRedis, settings: Settings) -> list[dict[str, Any]]:
    """Every job in the queue, decoded, in queue order."""
    ids = await redis.zrange(settings.queue_name, 0, -1)
    return [
        msgpack.unpackb(await redis.get(job_key_prefix + job_id.decode()), strict_map_key=False)
        for job_id in ids
    ]


async def test_a_mistyped_function_is_refused_before_anything_is_queued(
    producer: ArqRedis, settings: Settings
) -> None:
    with pytest.raises(UnknownFunction, match="did you mean 'update_scores'"):
        await producer.enqueue_job("update_score", project_id="p", scores=[score("a")])
    client = PipelineClient(producer)
    with pytest.raises(UnknownFunction):
        await client.enqueue("update_score", project_id="p", scores=[score("a")])
    with pytest.raises(UnknownFunction):
        await CoalescingClient(client).write("update_score", score("a"), project_id="p")
    with pytest.raises(UnknownFunction):
        await producer.enqueue_job("pipeline_undeliverable")  # reserved for the worker
    assert await producer.zcard(settings.queue_name) == 0


async def test_a_mistyped_function_sent_through_plain_arq_is_dead_lettered(
    plain_producer: ArqRedis, worker_of: Callable[..., Worker], engine: AsyncEngine
) -> None:
    job = await plain_producer.enqueue_job("update_score", project_id="p", scores=[score("a")])
    await run(worker_of)
    assert job is not None
    [(function, error, payload)] = await rows(
        engine, "SELECT function, error_class, payload FROM dead_letters"
    )
    assert (function, error) == ("update_score", "UndeliverableJob")
    assert payload == {"project_id": "p", "scores": [score("a")]}  # replayable once renamed


async def test_jobs_over_the_workers_limits_are_refused_before_anything_is_queued(
    settings: Settings,
) -> None:
    small = settings.model_copy(update={"job_max_items": 3, "job_max_bytes": 2048})
    pool = await create_pool(settings=small)
    try:
        with pytest.raises(InvalidPayload, match="bytes; at most 2048"):
            await pool.enqueue_job("upsert_project", project_id="p", name="x" * 3000)
        client = PipelineClient(pool, settings=small)
        with pytest.raises(InvalidPayload, match="4 items in one job; at most 3"):
            await client.enqueue("update_scores", project_id="p", scores=[score("a")] * 4)
        writes = [{"kind": "update_scores", "args": {"project_id": "p", "scores": [score("a")]}}]
        with pytest.raises(InvalidPayload, match="atomic: 4 items"):
            await client.enqueue("atomic", writes=writes * 4)
        await client.enqueue("update_scores", project_id="p", scores=[score("a")] * 3)
        assert await pool.zcard(settings.queue_name) == 1
    finally:
        await pool.aclose()


async def test_the_coalescing_client_keeps_each_job_within_the_limits(
    producer: ArqRedis, worker_of: Callable[..., Worker], engine: AsyncEngine, settings: Settings
) -> None:
    await seed_tree(producer, "p", NODES)
    await run(worker_of)
    small = settings.model_copy(update={"job_max_items": 7, "job_max_bytes": 2048})
    pool = await create_pool(settings=small)
    long_label = "x" * 300  # a few items fill 2 KiB
    async with (
        PipelineClient(pool, settings=small) as typed,
        CoalescingClient(typed, max_items=500) as client,
    ):
        with pytest.raises(InvalidPayload, match="at most 2048"):  # one item alone is too big
            await client.write("record_events", _event("big", "y" * 3000))
        await asyncio.gather(
            *(client.write("record_events", _event(n, long_label)) for n in NODES),
            *(client.write("update_scores", score(n), project_id="p") for n in NODES),
        )
    jobs = await queued(producer, settings)
    assert all(len(job["k"].get("events", job["k"].get("scores", []))) <= 7 for job in jobs)
    assert all(len(msgpack.packb(job)) <= 2048 for job in jobs)
    worker = await run(worker_of)
    assert worker.jobs_failed == 0
    assert await scalar(engine, "SELECT count(*) FROM events") == len(NODES)
    assert await scalar(engine, "SELECT count(*) FROM nodes WHERE rubric_score = 0.5") == 40


def _event(name: str, detail: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
        "event_type": "seen",
        "payload": {"detail": detail},
        "occurred_at": "2026-12-02T10:00:00+00:00",
    }


async def test_leaving_the_block_sends_every_buffered_write(
    producer: ArqRedis, worker_of: Callable[..., Worker], engine: AsyncEngine, settings: Settings
) -> None:
    """The producer stops (its task is cancelled) while writes linger in the client's buffer:
    leaving the block sends them, without waiting out the linger."""
    await seed_tree(producer, "p", NODES)
    await run(worker_of)
    writers: set[asyncio.Task[Any]] = set()
    handed = asyncio.Event()

    async def producing() -> None:
        async with CoalescingClient(linger_s=60, max_items=1000, settings=settings) as client:
            for node in NODES:
                write = client.write("update_scores", score(node, 0.9), project_id="p")
                writers.add(asyncio.create_task(write))
            handed.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(producing())
    await handed.wait()
    await asyncio.sleep(0.05)  # every write is in the buffer
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 5  # sent at once, not after linger_s
    assert await producer.zcard(settings.queue_name) == 1  # one job, enqueued before the exit
    await run(worker_of)
    assert await scalar(engine, "SELECT count(*) FROM nodes WHERE rubric_score = 0.9") == 40


async def test_leaving_the_block_waits_for_the_writes_that_wait_for_their_commit(
    producer: ArqRedis, worker_of: Callable[..., Worker], settings: Settings
) -> None:
    await seed_tree(producer, "p", NODES)
    worker = worker_of(burst=False)
    running = asyncio.create_task(worker.main())
    receipts: list[Any] = []
    try:
        async with CoalescingClient(PipelineClient(producer), linger_s=60) as client:

            async def write(node: str) -> None:
                receipts.append(
                    await client.write("update_scores", score(node), project_id="p", wait=True)
                )

            writers = [asyncio.create_task(write(node)) for node in NODES]
            await asyncio.sleep(0.05)
        assert len(receipts) == len(NODES)  # every waiting caller had its receipt
        assert all(writer.done() for writer in writers)
        assert {r.applied for r in receipts} == {len(NODES)}
    finally:
        await stop_worker(worker, running)


async def test_an_urgent_write_goes_at_once_with_what_was_buffered_before_it(
    producer: ArqRedis, worker_of: Callable[..., Worker], engine: AsyncEngine
) -> None:
    await seed_tree(producer, "p", NODES)
    worker = worker_of(burst=False)
    running = asyncio.create_task(worker.main())
    try:
        async with CoalescingClient(PipelineClient(producer), linger_s=30) as client:
            early = [
                asyncio.create_task(client.write("record_events", _event(n, "early")))
                for n in NODES[:3]
            ]
            await asyncio.sleep(0.01)
            started = time.monotonic()
            receipt = await client.write(
                "record_events", _event(NODES[3], "urgent"), urgent=True, wait=True
            )
            assert time.monotonic() - started < 5  # not after linger_s
            assert receipt is not None and receipt.rows == 4  # the three before it, in its job
            assert await scalar(engine, "SELECT count(*) FROM events") == 4
            await asyncio.gather(*early)
            # A kind without an urgent flag is sent at once all the same.
            started = time.monotonic()
            await client.write("update_scores", score(NODES[0]), project_id="p", urgent=True)
            assert time.monotonic() - started < 5
    finally:
        await stop_worker(worker, running)


class SlowingPool:
    """A pool whose every enqueue takes less time than the one before: enqueues that ran side
    by side would land in the opposite order."""

    def __init__(self, pool: ArqRedis) -> None:
        self.pool = pool
        self.landed: list[list[str]] = []
        self.job_ids: list[str] = []
        self.calls = 0

    async def enqueue_job(self, function: str, **kwargs: Any) -> Any:
        self.calls += 1
        await asyncio.sleep(max(0.2 - 0.05 * self.calls, 0.0))
        job = await self.pool.enqueue_job(function, **kwargs)
        self.landed.append([item["node_id"] for item in kwargs["scores"]])
        self.job_ids.append(job.job_id)
        return job


async def test_jobs_of_one_key_are_enqueued_in_the_order_of_their_items(
    producer: ArqRedis,
) -> None:
    pool = SlowingPool(producer)
    client = CoalescingClient(PipelineClient(pool), max_items=3, linger_s=60)  # type: ignore[arg-type]
    writes = [
        asyncio.create_task(client.write("update_scores", score(n), project_id="p"))
        for n in NODES[:10]
    ]
    await asyncio.sleep(0.01)
    await client.aclose()  # sends the last, lingering item
    await asyncio.gather(*writes)
    assert pool.landed == [NODES[0:3], NODES[3:6], NODES[6:9], NODES[9:10]]
    times = [msgpack.unpackb(await producer.get(job_key_prefix + i))["et"] for i in pool.job_ids]
    assert times == sorted(times)  # a later item never gets an earlier default version


async def test_a_write_that_waits_ends_by_default_saying_the_job_is_still_queued(
    producer: ArqRedis, settings: Settings
) -> None:
    impatient = settings.model_copy(update={"client_wait_s": 0.3})
    client = PipelineClient(producer, settings=impatient)
    started = time.monotonic()
    with pytest.raises(StillQueued, match="is queued; it is not lost") as waited:
        await client.write("upsert_project", project_id="p", name="p")  # no worker runs
    assert time.monotonic() - started < 3
    assert await producer.exists(job_key_prefix + waited.value.job_id)
    with pytest.raises(StillQueued):
        await CoalescingClient(client).write("update_scores", score("a"), project_id="p", wait=True)
    with pytest.raises(TimeoutError):  # what code written for arq's own timeout catches
        await client.write("upsert_project", timeout=0.1, project_id="q", name="q")
    assert await producer.zcard(settings.queue_name) == 3


async def test_the_typed_client_writes_an_atomic_unit(
    producer: ArqRedis, worker_of: Callable[..., Worker], engine: AsyncEngine
) -> None:
    worker = worker_of(burst=False)
    running = asyncio.create_task(worker.main())
    try:
        async with PipelineClient(producer) as client:
            receipt = await client.atomic(
                ("upsert_project", {"project_id": "p", "name": "p"}),
                ("insert_nodes", {"project_id": "p", "nodes": [{"node_id": "r", "label": "r"}]}),
            )
            with pytest.raises(InvalidPayload, match=r"atomic: insert_nodes: writes\.1\.args"):
                await client.atomic(
                    ("upsert_project", {"project_id": "q", "name": "q"}),
                    ("insert_nodes", {"project_id": "q", "nodes": [{"label": "no id"}]}),
                )
    finally:
        await stop_worker(worker, running)
    assert (receipt.rows, receipt.applied) == (2, 2)
    assert await rows(engine, "SELECT project_id, node_id FROM nodes") == [("p", "r")]
    assert await scalar(engine, "SELECT count(*) FROM projects") == 1
