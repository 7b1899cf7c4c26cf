"""Producer-side coalescing against fakeredis: items group into jobs per kind and shared
arguments, up to max_items; a bad item fails only its own caller."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
from arq.connections import ArqRedis

from pipeline import PipelineClient
from pipeline.errors import InvalidPayload
from pipeline.producer.coalescing import CoalescingClient, items_field


@pytest.fixture
def coalescing(fake_arq: ArqRedis) -> CoalescingClient:
    return CoalescingClient(PipelineClient(fake_arq), max_items=100, linger_s=0.01)


async def enqueued(redis: ArqRedis) -> list[dict[str, object]]:
    ids = await redis.zrange("pipeline:unit", 0, -1)
    return [msgpack.unpackb(await redis.get(f"arq:job:{i.decode()}")) for i in ids]


async def test_single_writes_become_few_jobs(coalescing: CoalescingClient) -> None:
    calls = [
        coalescing.write("update_scores", {"node_id": f"n{i}", "ucb_score": float(i)}, project_id=p)
        for p in ("a", "b")
        for i in range(125)
    ]
    assert await asyncio.gather(*calls) == [None] * 250
    jobs = await enqueued(coalescing.client.redis)
    sizes = sorted((j["k"]["project_id"], len(j["k"]["scores"])) for j in jobs)
    assert sizes == [("a", 25), ("a", 100), ("b", 25), ("b", 100)]
    every = sorted(
        s["node_id"] for j in jobs for s in j["k"]["scores"] if j["k"]["project_id"] == "a"
    )
    assert every == sorted(f"n{i}" for i in range(125))


async def test_a_bad_item_fails_only_its_caller(coalescing: CoalescingClient) -> None:
    good = coalescing.write("update_statuses", {"node_id": "n", "status": "pruned"}, project_id="p")
    bad = coalescing.write("update_statuses", {"node_id": "n", "status": "gone"}, project_id="p")
    results = await asyncio.gather(good, bad, return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], InvalidPayload) and "statuses.0.status" in str(results[1])
    [job] = await enqueued(coalescing.client.redis)
    assert job["k"]["statuses"] == [{"node_id": "n", "status": "pruned"}]


def test_only_kinds_with_a_list_of_items_coalesce() -> None:
    assert items_field("insert_nodes") == "nodes"
    assert items_field("mark_training_used") == "ids"
    with pytest.raises(InvalidPayload, match="does not take a list"):
        items_field("heartbeat")
