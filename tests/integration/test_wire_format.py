"""The wire format of docs/producing.md, for a producer in another language: jobs written and
results read with nothing but Redis commands and plain msgpack, in both worker modes. A receipt is
a plain map; a failure is ``{"error", "message", "dead_letter_id"}``, with the id of the job's row
in ``dead_letters``."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis
from arq.worker import Worker
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.settings import Settings
from tests.integration.helpers import scalar

RECEIPT_KEYS = {"batch_id", "rows", "applied", "unchanged", "jobs", "committed_at"}
RESULT_KEPT_MS = 3_600_000
EVENT = {
    "event_id": str(uuid.uuid4()),
    "event_type": "phase_completed",
    "payload": {"phase": "plan"},
    "occurred_at": "2026-01-02T03:04:05.123456+00:00",
}


@pytest.fixture
async def plain(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """A Redis client that knows nothing of arq or the pipeline."""
    client = aioredis.from_url(str(settings.redis_url))
    yield client
    await client.aclose()


async def enqueue(client: aioredis.Redis, settings: Settings, function: str, **kwargs: Any) -> str:
    """Enqueue a job as docs/producing.md says: the job key, then its id in the queue."""
    job_id = uuid.uuid4().hex
    now_ms = int(time.time() * 1000)
    job = {"t": None, "f": function, "a": [], "k": kwargs, "et": now_ms}
    await client.psetex(f"arq:job:{job_id}", settings.job_expiry_s * 1000, msgpack.packb(job))
    await client.zadd(settings.queue_name, {job_id: now_ms})
    return job_id


async def result(client: aioredis.Redis, job_id: str) -> dict[str, Any]:
    """A job's result as plain msgpack, after checking it is kept for an hour."""
    key = f"arq:result:{job_id}"
    raw = await client.get(key)
    assert raw is not None, f"no result for {job_id}"
    assert 0 < await client.pttl(key) <= RESULT_KEPT_MS
    record: dict[str, Any] = msgpack.unpackb(raw)
    assert {"t", "f", "a", "k", "et", "s", "r", "st", "ft", "q", "id"} <= record.keys()
    assert (record["id"], record["t"]) == (job_id, 1)
    assert record["et"] <= record["st"] <= record["ft"]
    return record


async def letter_id(engine: AsyncEngine, job_id: str) -> int:
    found = await scalar(engine, "SELECT id FROM dead_letters WHERE job_id = :j", j=job_id)
    assert isinstance(found, int), f"no dead letter for {job_id}"
    return found


async def test_jobs_written_and_results_read_with_plain_redis_and_msgpack(
    plain: aioredis.Redis,
    settings: Settings,
    worker_of: Callable[..., Worker],
    engine: AsyncEngine,
) -> None:
    project = await enqueue(plain, settings, "upsert_project", project_id="p", name="P")
    events = await enqueue(plain, settings, "record_events", events=[EVENT])
    invalid = await enqueue(
        plain,
        settings,
        "update_scores",
        project_id="p",
        scores=[{"node_id": "a", "ucb_score": "high"}],
    )
    unknown = await enqueue(plain, settings, "no_such_function", x=1)
    await worker_of().main()

    for job_id in (project, events):
        record = await result(plain, job_id)
        assert record["s"] is True
        receipt = record["r"]
        assert receipt.keys() == RECEIPT_KEYS
        assert (receipt["rows"], receipt["applied"], receipt["unchanged"]) == (1, 1, 0)
        assert isinstance(receipt["batch_id"], str) and receipt["jobs"] >= 1
        assert dt.datetime.fromisoformat(receipt["committed_at"]).utcoffset() == dt.timedelta(0)
    assert (
        await scalar(engine, "SELECT count(*) FROM events WHERE event_id = :e", e=EVENT["event_id"])
        == 1
    )

    bad = await result(plain, invalid)
    assert bad["s"] is False and bad["f"] == "update_scores"
    assert bad["r"] == {
        "error": "InvalidPayload",
        "message": bad["r"]["message"],
        "dead_letter_id": await letter_id(engine, invalid),
    }
    assert bad["r"]["message"].startswith("update_scores: scores.0.ucb_score")

    undelivered = await result(plain, unknown)
    # arq ran it as the reserved function, which records its dead letter
    assert (undelivered["s"], undelivered["f"]) == (False, "pipeline_undeliverable")
    assert undelivered["r"] == {
        "error": "UndeliverableJob",
        "message": "unknown function 'no_such_function'",
        "dead_letter_id": await letter_id(engine, unknown),
    }
