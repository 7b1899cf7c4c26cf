"""The metrics endpoint's HTTP handling and the recording helpers, without PostgreSQL or Redis
(readiness against real services is in tests/integration/test_metrics.py)."""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fakeredis import FakeAsyncRedis as FakeRedis
from redis.asyncio import Redis

from pipeline.ops import metrics
from pipeline.ops.endpoint import Endpoint
from pipeline.ops.flushes import FlushReport
from pipeline.ops.queue_metrics import QUEUE_REGISTRY, QueueSampler
from pipeline.settings import Settings


async def request(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        writer.write_eof()  # the request is all sent: a truncated one ends here
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    redis = FakeRedis()
    await redis.zadd("q", {f"job-{i}": i for i in range(7)})
    served = Endpoint(Settings(queue_name="q"), redis, sampler=QueueSampler(redis, None, "q"))
    await served.start("127.0.0.1", 0)
    yield served
    await served.close()


def queue_sample(name: str, **labels: str) -> float | None:
    return QUEUE_REGISTRY.get_sample_value(name, labels)


def sample(name: str, **labels: str) -> float:
    found = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_metrics_are_served_with_the_queue_depth(endpoint: Endpoint) -> None:
    response = await request(endpoint.port, b"GET /metrics HTTP/1.1\r\nHost: w\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain; version=0.0.4" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"\npipeline_queue_depth 7.0\n" in body
    assert b"# TYPE pipeline_jobs_total counter" in body


async def test_head_has_no_body_and_bad_requests_are_refused(endpoint: Endpoint) -> None:
    head = await request(endpoint.port, b"HEAD /metrics?x=1 HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
    assert (await request(endpoint.port, b"GET /x HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
    assert (await request(endpoint.port, b"DELETE /ready HTTP/1.1\r\n\r\n")).startswith(
        b"HTTP/1.1 405"
    )
    assert (await request(endpoint.port, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400")
    assert await request(endpoint.port, b"GET /metr") == b""  # the client gave up half-way


async def test_close_ends_connections_still_open() -> None:
    served = Endpoint(Settings(), None)
    await served.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"GET /metrics HTTP/1.1\r\n")  # and never finishes the request
    await writer.drain()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(served.close(), 5)
    assert await reader.read() == b""
    writer.close()
    await writer.wait_closed()


async def test_a_stalled_redis_makes_the_depth_unknown_not_the_scrape_slow() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()  # takes every command, answers none

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    stalled = Redis(port=server.sockets[0].getsockname()[1])
    try:
        started = time.monotonic()
        await QueueSampler(stalled, None, "q", timeout_s=0.2).sample()
        assert time.monotonic() - started < 2
    finally:
        await stalled.aclose()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    assert math.isnan(queue_sample("pipeline_queue_depth"))
    assert queue_sample("pipeline_source_up", source="redis") == 0


def test_a_flush_is_recorded_once_per_batch() -> None:
    before: dict[str, Any] = {
        "rows": sample("pipeline_batch_rows_sum"),
        "count": sample("pipeline_batch_rows_count"),
        "written": sample("pipeline_rows_written_total", kind="unit_kind"),
        "retries": sample("pipeline_batch_retries_total"),
        "failed": sample("pipeline_flush_failures_total", reason="DataError"),
    }
    report = FlushReport(
        batch_id="b",
        jobs=3,
        rows=12,
        retries=2,
        duration_ms=4.0,
        written={"unit_kind": 10},
        failures={"DataError": 1},
    )
    metrics.flushed(report)
    assert sample("pipeline_batch_rows_sum") - before["rows"] == 12
    assert sample("pipeline_batch_rows_count") - before["count"] == 1
    assert sample("pipeline_rows_written_total", kind="unit_kind") - before["written"] == 10
    assert sample("pipeline_batch_retries_total") - before["retries"] == 2
    assert sample("pipeline_flush_failures_total", reason="DataError") - before["failed"] == 1
    assert sample("pipeline_last_flush_timestamp_seconds") > 0


def test_batch_sizes_are_told_apart_up_to_the_largest_batch() -> None:
    """A batch may hold 200,000 rows: the histogram's buckets reach that far."""
    bucket = functools.partial(sample, "pipeline_batch_rows_bucket")
    before = {le: bucket(le=le) for le in ("100000.0", "200000.0", "+Inf")}
    metrics.flushed(FlushReport(batch_id="b", jobs=1, rows=150_000))
    assert bucket(le="100000.0") - before["100000.0"] == 0
    assert bucket(le="200000.0") - before["200000.0"] == 1
    assert bucket(le="+Inf") - before["+Inf"] == 1


def test_jobs_are_counted_by_kind_and_outcome_from_zero() -> None:
    metrics.declare_kind("unit_declared")
    for outcome in metrics.OUTCOMES:
        assert sample("pipeline_jobs_total", kind="unit_declared", outcome=outcome) == 0
    metrics.job_finished("unit_declared", "retried")
    metrics.job_finished("unit_declared", "retried")
    assert sample("pipeline_jobs_total", kind="unit_declared", outcome="retried") == 2
    metrics.IN_FLIGHT.count += 3
    try:
        assert sample("pipeline_jobs_in_flight") == 3
    finally:
        metrics.IN_FLIGHT.count -= 3


async def test_the_page_shows_the_queue_and_escapes_what_it_shows(endpoint: Endpoint) -> None:
    assert endpoint.redis is not None
    await endpoint.redis.set(
        "pipeline:paused:q", '{"since": "2026-01-01T00:00:00Z", "by": "<i>op</i>", "reason": ""}'
    )
    response = await request(endpoint.port, b"GET / HTTP/1.1\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"text/html; charset=utf-8" in head
    page = body.decode()
    assert "<h2>Queue</h2>" in page and "PAUSED" in page
    assert "&lt;i&gt;op&lt;/i&gt;" in page and "<i>op</i>" not in page
    assert '<td class="n">7</td>' in page  # the seven queued jobs
    assert "no database configured" in page
