"""``insert_nodes`` saves nodes: a newer version updates label, content, metadata and parent (a
move), an older or equal one changes nothing; a move under the node's own descendant is refused
for that node alone; a move refreshes the branch statistics of the old and the new ancestors.
Every test runs under stock arq and ``pipeline worker``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.worker import Worker
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline import JobFailed
from pipeline.reads import TaxonomyReads
from tests.integration.batching import in_one_batch, run
from tests.integration.helpers import rows, scalar

TREE = [
    {"node_id": "root", "label": "root"},
    {"node_id": "a", "parent_id": "root", "label": "a"},
    {"node_id": "b", "parent_id": "root", "label": "b"},
    {"node_id": "a1", "parent_id": "a", "label": "a1"},
    {"node_id": "a2", "parent_id": "a1", "label": "a2"},
]
NODE = "SELECT parent_id, label, content, metadata, version FROM nodes WHERE node_id = :n"


def save(version: int | None, *nodes: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = {"project_id": "p", "nodes": list(nodes)}
    if version is not None:
        payload["version"] = version
    return payload


async def seeded(producer: ArqRedis, worker_of: Callable[..., Worker]) -> None:
    await producer.enqueue_job("upsert_project", project_id="p", name="p")
    await producer.enqueue_job("insert_nodes", **save(1, *TREE))
    await run(worker_of)


async def test_a_newer_version_updates_a_node_and_an_older_or_equal_one_does_not(
    producer: ArqRedis, worker_of: Callable[..., Worker], engine: AsyncEngine
) -> None:
    await seeded(producer, worker_of)
    moved = {"node_id": "a1", "parent_id": "b", "label": "A1", "content": "c", "metadata": {"k": 1}}
    newer = await producer.enqueue_job("insert_nodes", **save(5, moved))
    await run(worker_of)
    older = {"node_id": "a1", "parent_id": "a", "label": "old"}
    stale = await producer.enqueue_job("insert_nodes", **save(4, older))
    same = await producer.enqueue_job("insert_nodes", **save(5, {**moved, "label": "same v"}))
    await run(worker_of)
    assert newer is not None and stale is not None and same is not None
    assert (await newer.result(timeout=5))["applied"] == 1
    assert [(await j.result(timeout=5))["unchanged"] for j in (stale, same)] == [1, 1]
    assert await rows(engine, NODE, n="a1") == [("b", "A1", "c", {"k": 1}, 5)]
    # Its subtree moved with it.
    reads = TaxonomyReads(engine)
    assert [n.node_id for n in await reads.ancestors("p", "a2")] == ["root", "b", "a1"]
    # A save without a version is versioned by its enqueue time: it wins over version 5.
    later = await producer.enqueue_job("insert_nodes", **save(None, {**moved, "label": "now"}))
    await run(worker_of)
    assert later is not None and (await later.result(timeout=5))["applied"] == 1
    assert (await rows(engine, NODE, n="a1"))[0][1] == "now"


async def test_a_move_under_its_own_descendant_is_refused_for_that_node_alone(
    producer: ArqRedis,
    worker_of: Callable[..., Worker],
    engine: AsyncEngine,
) -> None:
    await seeded(producer, worker_of)
    calls = [
        # a under its grandchild a2: refused; b under a, in the same job: saved.
        (
            "insert_nodes",
            save(9, {"node_id": "a", "parent_id": "a2", "label": "a"}, {**TREE[2], "label": "B"}),
        ),
        ("update_scores", {"project_id": "p", "scores": [{"node_id": "b", "ucb_score": 1.0}]}),
        ("insert_nodes", save(9, {"node_id": "c", "parent_id": "a2", "label": "c"})),
    ]
    jobs, worker = await in_one_batch(producer, engine, worker_of, calls)
    assert worker.jobs_failed == 1
    with pytest.raises(JobFailed) as refused:
        await jobs[0].result(timeout=5)
    assert refused.value.kind == "DataError"
    assert "nodes (project_id=p, node_id=a)" in refused.value.message
    assert "would make it its own ancestor" in refused.value.message
    assert [(await j.result(timeout=5))["applied"] for j in jobs[1:]] == [1, 1]
    assert await rows(engine, "SELECT node_id, parent_id, label FROM nodes ORDER BY 1") == [
        ("a", "root", "a"),
        ("a1", "a", "a1"),
        ("a2", "a1", "a2"),
        ("b", "root", "B"),
        ("c", "a2", "c"),
        ("root", None, "root"),
    ]
    dead = await rows(engine, "SELECT function, error_class, error_message FROM dead_letters")
    assert [(d[0], d[1]) for d in dead] == [("insert_nodes", "DataError")]


async def test_moves_that_make_a_cycle_together_are_refused(
    producer: ArqRedis, worker_of: Callable[..., Worker], engine: AsyncEngine
) -> None:
    await seeded(producer, worker_of)
    # a under b and b under a, in one job: neither may go, whatever the order.
    job = await producer.enqueue_job(
        "insert_nodes",
        **save(
            9,
            {"node_id": "a", "parent_id": "b", "label": "a"},
            {"node_id": "b", "parent_id": "a", "label": "b"},
        ),
    )
    await run(worker_of)
    assert job is not None
    with pytest.raises(JobFailed, match="own ancestor"):
        await job.result(timeout=5)
    assert await rows(
        engine, "SELECT node_id, parent_id FROM nodes WHERE node_id IN ('a', 'b')"
    ) == [
        ("a", "root"),
        ("b", "root"),
    ]


async def test_a_move_refreshes_the_statistics_of_the_old_and_the_new_ancestors(
    producer: ArqRedis, worker_of: Callable[..., Worker], engine: AsyncEngine
) -> None:
    await seeded(producer, worker_of)
    reads = TaxonomyReads(engine)
    before = {n: await reads.branch_stats("p", n) for n in ("a", "b", "root")}
    assert {n: s.node_count for n, s in before.items() if s} == {"a": 3, "b": 1, "root": 5}
    assert await scalar(engine, "SELECT count(*) FROM branch_stats") == 3
    await producer.enqueue_job("insert_nodes", **save(5, {**TREE[3], "parent_id": "b"}))
    await run(worker_of)
    after = {n: await reads.branch_stats("p", n) for n in ("a", "b", "root")}
    assert {n: s.node_count for n, s in after.items() if s} == {"a": 1, "b": 3, "root": 5}
