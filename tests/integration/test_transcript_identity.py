"""Transcript entries without ``seq`` and empty jobs, through plain enqueue_job and real burst
workers of both modes.

An entry without ``seq`` is identified by a seq derived from its content: the same entry again
(a re-delivered job, the same entry in a new job, twice in one job) is one row, and entries that
differ in anything are distinct rows that never meet a producer's seq. An empty job completes
and writes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.worker import Worker
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline import JobFailed
from pipeline.kinds.agent_tasks import TranscriptItem, derived_seq
from pipeline.settings import Settings
from tests.integration.batching import across_batches, in_one_batch
from tests.integration.helpers import redeliver, rows, scalar

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
STORED = "SELECT phase, iteration, seq, role, content, timestamp FROM transcripts ORDER BY seq"
DEAD = "SELECT function, error_class FROM dead_letters ORDER BY id"


def entry(
    content: str,
    *,
    at: dt.datetime = T0,
    seq: int | None = None,
    role: str = "chunk",
    phase: str = "implement",
    iteration: int = 0,
) -> dict[str, Any]:
    """A transcript item as a producer sends it: without ``seq`` unless one is given."""
    item: dict[str, Any] = {
        "task_id": "TASK-1",
        "phase": phase,
        "iteration": iteration,
        "role": role,
        "content": content,
        "timestamp": at.isoformat(),
    }
    if seq is not None:
        item["seq"] = seq
    return item


def seq_of(item: dict[str, Any]) -> int:
    """The seq the worker derives for an item sent without one."""
    return derived_seq(TranscriptItem.model_validate(item))


async def test_empty_jobs_complete_and_write_nothing(
    producer: ArqRedis, drain: Callable[[], Any], engine: AsyncEngine
) -> None:
    empty = [
        await producer.enqueue_job("append_transcripts", transcripts=[]),
        await producer.enqueue_job("record_events", events=[]),
        await producer.enqueue_job("record_events", events=[], urgent=True),
    ]
    other = await producer.enqueue_job("append_transcripts", transcripts=[entry("written")])
    worker = await drain()
    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (4, 0, 0)
    for job in empty:
        assert job is not None
        receipt = await job.result(timeout=5)
        assert (receipt["batch_id"], receipt["rows"], receipt["applied"]) == (None, 0, 0)
    assert other is not None and (await other.result(timeout=5))["applied"] == 1
    assert [r[4] for r in await rows(engine, STORED)] == ["written"]
    assert await scalar(engine, "SELECT count(*) FROM events") == 0
    assert await rows(engine, DEAD) == []


async def test_an_entry_without_seq_stores_once_when_delivered_or_sent_again(
    producer: ArqRedis, drain: Callable[[], Any], engine: AsyncEngine, settings: Settings
) -> None:
    one, two = entry("step one", role="prompt"), entry("step two", at=T0 + dt.timedelta(seconds=1))
    job = await producer.enqueue_job("append_transcripts", transcripts=[one, two])
    assert job is not None
    assert (await drain()).jobs_complete == 1
    stored = await rows(engine, STORED)
    assert sorted(r[2] for r in stored) == sorted([seq_of(one), seq_of(two)])
    assert all(r[2] < 0 for r in stored)

    await redeliver(producer, job, settings.queue_name)
    # The same entries in a new job, in another order, one instant written with another offset.
    plus_two = dt.timezone(dt.timedelta(hours=2))
    moved = {**two, "timestamp": (T0 + dt.timedelta(seconds=1)).astimezone(plus_two).isoformat()}
    assert moved["timestamp"] != two["timestamp"]
    again = await producer.enqueue_job("append_transcripts", transcripts=[moved, one])
    assert again is not None
    worker = await drain()
    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (2, 0, 0)
    for receipt in [await job.result(timeout=5), await again.result(timeout=5)]:
        assert (receipt["rows"], receipt["applied"], receipt["unchanged"]) == (2, 0, 2)
    assert await rows(engine, STORED) == stored
    assert await rows(engine, DEAD) == []


@pytest.mark.parametrize("together", [True, False], ids=["one-batch", "across-batches"])
async def test_identical_entries_are_one_and_different_ones_never_collide(
    producer: ArqRedis,
    engine: AsyncEngine,
    make_worker: Callable[..., Worker],
    together: bool,
) -> None:
    base = entry("the same words")
    different = [
        entry("the same words", at=T0 + dt.timedelta(microseconds=1)),
        entry("the same words", role="response"),
        entry("the same words."),
        entry("the same words", phase="review"),
        entry("the same words", iteration=1),
        entry("the same words", seq=0),  # a producer's seq, on an entry otherwise the base
        entry("the same words", seq=1),
    ]
    calls = [
        ("append_transcripts", {"transcripts": [base, base]}),  # twice in one job
        ("append_transcripts", {"transcripts": [base]}),  # again in another job
        ("append_transcripts", {"transcripts": different}),
    ]
    if together:
        jobs, worker = await in_one_batch(producer, engine, make_worker, calls)
    else:
        jobs, worker = await across_batches(producer, make_worker, calls)

    assert worker.jobs_failed == 0 and worker.jobs_retried == 0
    receipts = [await job.result(timeout=5) for job in jobs]
    # The entry sent twice in the first job is applied once; the second job's copy is unchanged.
    assert [(r["rows"], r["applied"], r["unchanged"]) for r in receipts] == [
        (2, 1, 1),
        (1, 0, 1),
        (len(different), len(different), 0),
    ]
    stored = await rows(engine, STORED)
    assert len(stored) == 1 + len(different)
    derived = sorted(seq_of(item) for item in [base, *different[:5]])
    assert [r[2] for r in stored] == [*derived, 0, 1]
    assert len(set(derived)) == 6 and derived[-1] < 0
    assert await rows(engine, DEAD) == []


async def test_a_producer_cannot_send_a_seq_of_the_derived_range(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine
) -> None:
    taken = entry("derived")
    await producer.enqueue_job("append_transcripts", transcripts=[taken])
    bad = await producer.enqueue_job(
        "append_transcripts", transcripts=[entry("other", seq=seq_of(taken))]
    )
    assert bad is not None
    worker = await run_worker()
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 1)
    with pytest.raises(JobFailed, match=r"transcripts\.0\.seq"):
        await bad.result(timeout=5)
    assert [r[4] for r in await rows(engine, STORED)] == ["derived"]
    assert await rows(engine, DEAD) == [("append_transcripts", "InvalidPayload")]
