"""Every write kind round-trips: plain enqueue_job through pipeline.create_pool, a real arq worker,
and back out through the read repository."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.reads import TaxonomyReads
from pipeline.settings import Settings
from tests.integration.helpers import redeliver, rows

SAMPLE = uuid.UUID("6028fa7b-c00b-40ce-a5dc-94f5fca94d4c")


async def test_every_kind_round_trips(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine, settings: Settings
) -> None:
    jobs = [
        await producer.enqueue_job(
            "upsert_project", project_id="p", name="Topics", config={"c": 1.4, "tags": ["a"]}
        ),
        await producer.enqueue_job(
            "save_rubric",
            project_id="p",
            rubric_id="quality",
            version=1,
            principles=[
                {"name": "accuracy", "description": "Is it right?", "weight": 2.0},
                {"name": "clarity"},
            ],
        ),
        await producer.enqueue_job(
            "insert_nodes",
            project_id="p",
            nodes=[
                {"node_id": "root", "label": "All"},
                {
                    "node_id": "a",
                    "parent_id": "root",
                    "label": "A",
                    "content": "text",
                    "metadata": {"source": "llm", "n": [1, 2]},
                },
                {"node_id": "a1", "parent_id": "a", "label": "A1", "status": "terminal"},
            ],
        ),
        await producer.enqueue_job(
            "update_scores",
            project_id="p",
            scores=[
                {"node_id": "a", "rubric_score": 0.75, "ucb_score": 1.5},
                {"node_id": "a1", "ucb_score": 2.5},
            ],
        ),
        await producer.enqueue_job(
            "update_statuses", project_id="p", statuses=[{"node_id": "a", "status": "expanded"}]
        ),
        await producer.enqueue_job(
            "save_principle_scores",
            project_id="p",
            scores=[
                {
                    "node_id": "a",
                    "rubric_id": "quality",
                    "rubric_version": 1,
                    "principle": "accuracy",
                    "score": 0.9,
                },
                {
                    "node_id": "a",
                    "rubric_id": "quality",
                    "rubric_version": 1,
                    "principle": "clarity",
                    "score": 0.6,
                },
            ],
        ),
        await producer.enqueue_job(
            "save_labeled_samples",
            project_id="p",
            samples=[
                {
                    "sample_id": str(SAMPLE),
                    "node_id": "a",
                    "label": "good",
                    "text": "a fine topic",
                    "annotator": "ann",
                    "metadata": {"k": "v"},
                }
            ],
        ),
    ]
    worker = await run_worker()
    assert worker.jobs_failed == 0
    assert [(await job.result(timeout=5))["rows"] for job in jobs] == [1, 1, 3, 2, 1, 2, 1]

    reads = TaxonomyReads(engine)
    project = await rows(engine, "SELECT name, config FROM projects WHERE project_id = 'p'")
    assert project == [("Topics", {"c": 1.4, "tags": ["a"]})]

    rubric = await reads.rubric("p", "quality", 1)
    assert rubric is not None
    assert [(p.name, p.description, p.weight, p.position) for p in rubric.principles] == [
        ("accuracy", "Is it right?", 2.0, 0),
        ("clarity", "", 1.0, 1),
    ]
    assert len({p.principle_id for p in rubric.principles}) == 2

    a = await reads.node("p", "a")
    assert a is not None
    assert (a.parent_id, a.label, a.content, a.status) == ("root", "A", "text", "expanded")
    assert (a.rubric_score, a.ucb_score, dict(a.metadata)) == (
        0.75,
        1.5,
        {"source": "llm", "n": [1, 2]},
    )
    a1 = await reads.node("p", "a1")
    assert a1 is not None
    assert (a1.status, a1.rubric_score, a1.ucb_score) == ("terminal", None, 2.5)
    assert [n.node_id for n in await reads.path("p", "a1")] == ["root", "a", "a1"]

    assert await reads.principle_scores("p", "quality", 1, ["a", "a1"]) == {
        "a": {"accuracy": 0.9, "clarity": 0.6},
        "a1": {},
    }
    [sample] = await reads.labeled_samples("p", "a")
    assert (
        sample.sample_id,
        sample.label,
        sample.text,
        sample.annotator,
        dict(sample.metadata),
    ) == (SAMPLE, "good", "a fine topic", "ann", {"k": "v"})

    # Re-delivering every job (as arq does after a crash) changes nothing.
    before = await rows(engine, "SELECT * FROM nodes ORDER BY node_id")
    for job in jobs:
        await redeliver(producer, job, settings.queue_name)
    worker = await run_worker()
    assert worker.jobs_complete == len(jobs) and worker.jobs_failed == 0
    assert await rows(engine, "SELECT * FROM nodes ORDER BY node_id") == before
    assert len(await reads.labeled_samples("p", "a")) == 1
    assert await rows(engine, "SELECT count(*) FROM rubric_principles") == [(2,)]
    assert await rows(engine, "SELECT count(*) FROM principle_scores") == [(2,)]


async def test_branch_stats_follow_committed_writes(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine
) -> None:
    await producer.enqueue_job("upsert_project", project_id="p", name="p")
    await producer.enqueue_job(
        "insert_nodes",
        project_id="p",
        nodes=[
            {"node_id": "root", "label": "r"},
            {"node_id": "a", "parent_id": "root", "label": "a"},
            {"node_id": "b", "parent_id": "a", "label": "b"},
        ],
    )
    await run_worker()
    reads = TaxonomyReads(engine)
    cold = await reads.branch_stats("p", "root")
    assert cold is not None and (cold.node_count, cold.scored_count, cold.max_score) == (3, 0, None)
    assert await rows(engine, "SELECT count(*) FROM branch_stats") == [(1,)]

    await producer.enqueue_job(
        "update_scores", project_id="p", scores=[{"node_id": "b", "rubric_score": 0.8}]
    )
    await run_worker()
    scored = await reads.branch_stats("p", "root")
    assert scored is not None and (scored.scored_count, scored.max_score) == (1, 0.8)

    await producer.enqueue_job(
        "update_statuses", project_id="p", statuses=[{"node_id": "b", "status": "pruned"}]
    )
    await producer.enqueue_job(
        "insert_nodes", project_id="p", nodes=[{"node_id": "c", "parent_id": "b", "label": "c"}]
    )
    await run_worker()
    grown = await reads.branch_stats("p", "root")
    assert grown is not None and (grown.node_count, grown.alive_count, grown.max_depth) == (4, 3, 3)
    sub = await reads.branch_stats("p", "b")
    assert sub is not None and (sub.node_count, sub.alive_count) == (2, 1)


async def test_a_queued_job_outlives_arqs_one_day_default(
    producer: ArqRedis, settings: Settings
) -> None:
    # A worker outage of a few days must not drop jobs: they stay for job_expiry_s (7 days).
    job = await producer.enqueue_job("upsert_project", project_id="x", name="x")
    assert job is not None
    ttl_ms = await producer.pttl(f"arq:job:{job.job_id}")
    assert settings.job_expiry_s * 1000 - 60_000 < ttl_ms <= settings.job_expiry_s * 1000
    assert ttl_ms > 6 * 86_400_000
