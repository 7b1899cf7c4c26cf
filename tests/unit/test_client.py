"""The producer side against fakeredis: validation before enqueueing, msgpack on the wire."""

from __future__ import annotations

import msgpack
import pytest
from arq.connections import ArqRedis

from pipeline import PipelineClient
from pipeline.errors import InvalidPayload


@pytest.fixture
def client(fake_arq: ArqRedis) -> PipelineClient:
    return PipelineClient(fake_arq)


async def test_valid_write_is_enqueued_as_msgpack(client: PipelineClient) -> None:
    job = await client.enqueue(
        "update_scores", project_id="p", scores=[{"node_id": "n", "ucb_score": 2.0}]
    )
    raw = await client.redis.get(f"arq:job:{job.job_id}")
    data = msgpack.unpackb(raw)
    assert data["f"] == "update_scores"
    assert data["k"] == {"project_id": "p", "scores": [{"node_id": "n", "ucb_score": 2.0}]}
    assert await client.redis.zcard("pipeline:unit") == 1


async def test_invalid_write_is_refused_before_it_reaches_redis(client: PipelineClient) -> None:
    with pytest.raises(InvalidPayload, match=r"scores\.0\.status|Extra inputs"):
        await client.enqueue(
            "update_scores", project_id="p", scores=[{"node_id": "n", "status": "x"}]
        )
    with pytest.raises(InvalidPayload, match="unknown function"):
        await client.enqueue("drop_tables", project_id="p")
    assert await client.redis.zcard("pipeline:unit") == 0
