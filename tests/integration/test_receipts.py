"""Receipts report outcomes, not submissions: rows applied and rows unchanged, right across the
jobs coalesced into one transaction, across batches, and across the runs of a retried job; the
flush log and the rows-written metric count applied rows only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from arq.connections import ArqRedis
from arq.worker import Worker
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.ops import metrics
from pipeline.settings import Settings
from pipeline.worker.coalescer import Coalescer
from tests.integration.batching import in_one_batch, run
from tests.integration.helpers import redeliver, rows, seed_tree

EVENT = {"event_id": "00000000-0000-0000-0000-0000000000e1", "event_type": "tick"}
EVENT["occurred_at"] = "2026-01-01T00:00:00+00:00"


def outcome(receipt: dict[str, Any]) -> tuple[int, int]:
    return receipt["applied"], receipt["unchanged"]


def score(ucb: float | None, version: int, field: str = "ucb_score") -> dict[str, Any]:
    return {"project_id": "p", "scores": [{"node_id": "a", field: ucb, "version": version}]}


async def test_receipts_of_coalesced_jobs_count_what_each_applied(
    producer: ArqRedis, make_worker: Callable[..., Worker], engine: AsyncEngine
) -> None:
    await seed_tree(producer, "p", ["a"])
    await run(make_worker)
    calls = [
        ("update_scores", score(1.0, 5)),  # superseded in the batch by version 7
        ("update_scores", score(2.0, 7)),
        ("update_scores", score(0.5, 3, "rubric_score")),  # another field of the same node
        ("record_events", {"events": [EVENT]}),
        ("record_events", {"events": [EVENT]}),  # the same event again: a duplicate identity
        ("upsert_project", {"project_id": "p", "name": "old", "version": 1}),  # stale
    ]
    before = metrics.ROWS_WRITTEN.labels(kind="update_scores")._value.get()
    jobs, worker = await in_one_batch(producer, engine, make_worker, calls)
    receipts = [await job.result(timeout=5) for job in jobs]
    assert [outcome(r) for r in receipts] == [(0, 1), (1, 0), (1, 0), (1, 0), (0, 1), (0, 1)]
    assert {r["batch_id"] for r in receipts} == {receipts[0]["batch_id"]}
    assert all(r["rows"] == 1 and r["jobs"] == len(calls) for r in receipts)
    coalescer: Coalescer = worker.ctx["pipeline"].coalescer
    assert coalescer.last_flush is not None
    assert coalescer.last_flush.written == {
        "update_scores": 2,
        "record_events": 1,
        "upsert_project": 0,
    }
    assert metrics.ROWS_WRITTEN.labels(kind="update_scores")._value.get() - before == 2
    assert await rows(engine, "SELECT ucb_score, rubric_score FROM nodes WHERE node_id = 'a'") == [
        (2.0, 0.5)
    ]
    assert await rows(engine, "SELECT name FROM projects") == [("p",)]


async def test_a_stale_update_and_a_redelivery_are_unchanged(
    producer: ArqRedis, worker_of: Callable[..., Worker], engine: AsyncEngine, settings: Settings
) -> None:
    await seed_tree(producer, "p", ["a"])
    newer = await producer.enqueue_job("update_scores", **score(2.0, 7))
    await run(worker_of)
    older = await producer.enqueue_job("update_scores", **score(1.0, 5))
    await run(worker_of)
    assert newer is not None and older is not None
    assert outcome(await newer.result(timeout=5)) == (1, 0)
    assert outcome(await older.result(timeout=5)) == (0, 1)
    await redeliver(producer, newer, settings.queue_name)  # arq runs it again, as after a crash
    await run(worker_of)
    assert outcome(await newer.result(timeout=5)) == (0, 1)
    assert await rows(engine, "SELECT ucb_score FROM nodes WHERE node_id = 'a'") == [(2.0,)]


async def test_a_job_retried_for_a_missing_parent_counts_the_rows_its_first_run_applied(
    producer: ArqRedis, worker_of: Callable[..., Worker], engine: AsyncEngine
) -> None:
    await seed_tree(producer, "p", [])
    await run(worker_of)
    nodes = [
        {"node_id": "x", "parent_id": "root", "label": "x"},  # lands in the first run
        {"node_id": "y", "parent_id": "late", "label": "y"},  # waits for its parent
    ]
    job = await producer.enqueue_job("insert_nodes", project_id="p", nodes=nodes, version=3)
    late = {"node_id": "late", "parent_id": "root", "label": "late"}
    await producer.enqueue_job("insert_nodes", project_id="p", nodes=[late], _defer_by=0.3)
    worker = await run(worker_of)
    assert worker.jobs_retried >= 1 and job is not None
    assert outcome(await job.result(timeout=5)) == (2, 0)
    assert await rows(engine, "SELECT node_id FROM nodes ORDER BY 1") == [
        ("late",),
        ("root",),
        ("x",),
        ("y",),
    ]
