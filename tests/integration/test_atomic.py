"""``atomic``: writes of several kinds commit together or not at all, coalesced with other jobs;
a unit with one bad part leaves no row of any part while the other jobs of its batch commit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from arq.connections import ArqRedis
from arq.worker import Worker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.batching import in_one_batch, run
from tests.integration.helpers import failure, rows, seed_tree, stop_worker

RESULT = "00000000-0000-0000-0000-0000000000a1"


def unit(content: str = "the sky is blue", confidence: float = 0.9) -> dict[str, Any]:
    claim = {"external_id": "c1", "content": content}
    verdict = {
        "result_id": RESULT,
        "claim_id": "c1",
        "framework": "f",
        "result": {"ok": True},
        "confidence": confidence,
    }
    return {
        "writes": [
            {"kind": "upsert_claims", "args": {"claims": [claim]}},
            {"kind": "record_verifications", "args": {"results": [verdict]}},
        ]
    }


async def written(engine: AsyncEngine) -> tuple[int, int]:
    claims = await rows(engine, "SELECT count(*) FROM claims")
    results = await rows(engine, "SELECT count(*) FROM verification_results")
    return claims[0][0], results[0][0]


async def test_a_claim_and_its_verification_commit_as_one_unit(
    producer: ArqRedis, worker_of: Callable[..., Worker], engine: AsyncEngine
) -> None:
    job = await producer.enqueue_job("atomic", **unit())
    await run(worker_of)
    assert job is not None
    receipt = await job.result(timeout=5)
    assert (receipt["rows"], receipt["applied"], receipt["unchanged"]) == (2, 2, 0)
    assert await written(engine) == (1, 1)
    # Sent again in a new job: the claim takes the new job's version (applied), the verdict,
    # an immutable record sent the same way, is unchanged.
    again = await producer.enqueue_job("atomic", **unit())
    await run(worker_of)
    assert again is not None
    receipt = await again.result(timeout=5)
    assert (receipt["applied"], receipt["unchanged"]) == (1, 1)
    assert await written(engine) == (1, 1)


async def test_a_unit_with_an_invalid_part_is_dead_lettered_whole(
    producer: ArqRedis, worker_of: Callable[..., Worker], engine: AsyncEngine
) -> None:
    bad = await producer.enqueue_job("atomic", **unit(confidence=2.0))
    other = await producer.enqueue_job("upsert_project", project_id="p", name="p")
    worker = await run(worker_of)
    assert bad is not None and other is not None and worker.jobs_failed == 1
    failed = await failure(bad)
    assert failed.kind == "InvalidPayload"
    assert failed.message.startswith("atomic: record_verifications: writes.1.args.results.0.")
    assert await written(engine) == (0, 0)
    assert (await other.result(timeout=5))["applied"] == 1
    dead = await rows(engine, "SELECT function, error_class FROM dead_letters")
    assert dead == [("atomic", "InvalidPayload")]


async def test_a_data_error_in_one_part_leaves_no_row_of_any_part_in_a_shared_batch(
    producer: ArqRedis, make_worker: Callable[..., Worker], engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:  # a rule only the database knows
        await conn.execute(
            text("ALTER TABLE claims ADD CONSTRAINT no_poison CHECK (content <> 'poison')")
        )
    calls = [
        ("upsert_project", {"project_id": "p", "name": "p"}),
        ("atomic", unit(content="poison")),
        ("heartbeat", {"service": "svc", "instance_id": "i2", "status": "ok"}),
    ]
    jobs, worker = await in_one_batch(producer, engine, make_worker, calls)
    assert worker.jobs_failed == 1
    assert (await failure(jobs[1])).kind == "DataError"
    assert await written(engine) == (0, 0)  # the verification went with its claim
    assert [(await jobs[i].result(timeout=5))["applied"] for i in (0, 2)] == [1, 1]


async def test_a_unit_waiting_for_a_parent_commits_nothing_until_it_can_commit_everything(
    producer: ArqRedis, worker_of: Callable[..., Worker], engine: AsyncEngine
) -> None:
    await seed_tree(producer, "p", [])
    await run(worker_of)
    child = {"node_id": "c", "parent_id": "late", "label": "c"}
    score = {"node_id": "root", "ucb_score": 3.0, "version": 1}
    job = await producer.enqueue_job(
        "atomic",
        writes=[
            {"kind": "update_scores", "args": {"project_id": "p", "scores": [score]}},
            {"kind": "insert_nodes", "args": {"project_id": "p", "nodes": [child]}},
        ],
    )
    worker = worker_of(burst=False, retry_wait_s=30)
    running = asyncio.create_task(worker.main())
    for _ in range(1000):
        if worker.jobs_retried >= 3:
            break
        await asyncio.sleep(0.01)
    # Handed back three times, and not a row of it committed meanwhile.
    assert worker.jobs_retried >= 3
    assert await rows(engine, "SELECT node_id, ucb_score FROM nodes") == [("root", None)]
    late = {"node_id": "late", "parent_id": "root", "label": "l"}
    await producer.enqueue_job("insert_nodes", project_id="p", nodes=[late])
    await stop_worker(worker, running)
    assert job is not None
    receipt = await job.result(timeout=5)
    assert (receipt["rows"], receipt["applied"]) == (2, 2)
    assert await rows(engine, "SELECT node_id, ucb_score FROM nodes ORDER BY 1") == [
        ("c", None),
        ("late", None),
        ("root", 3.0),
    ]


async def test_a_unit_with_a_conflicting_definition_is_dead_lettered_whole(
    producer: ArqRedis, worker_of: Callable[..., Worker], engine: AsyncEngine
) -> None:
    await producer.enqueue_job("atomic", **unit())
    await run(worker_of)
    changed = unit()
    changed["writes"][0]["args"]["claims"][0]["content"] = "the sky is green"
    changed["writes"][1]["args"]["results"][0]["confidence"] = 0.1  # a different verdict
    job = await producer.enqueue_job("atomic", **changed)
    await run(worker_of)
    assert job is not None
    assert (await failure(job)).kind == "Conflict"
    # The claim update, newer, would have applied alone: in the unit it did not.
    assert await rows(engine, "SELECT content FROM claims") == [("the sky is blue",)]
