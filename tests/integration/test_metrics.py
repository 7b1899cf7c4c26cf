"""The worker's metrics endpoint, its readiness endpoint and its log lines, on a running worker
against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import structlog
from arq.connections import ArqRedis
from arq.worker import Worker
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline import JobFailed
from pipeline.reads import TaxonomyReads
from pipeline.settings import Settings
from pipeline.worker.runtime import runtime_or_none
from tests.integration.helpers import Proxy, results, scalar, seed_tree, stop_worker
from tests.logging_state import logging_restored

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ENDPOINT = {"metrics_port": 0, "metrics_host": "127.0.0.1"}


async def get(port: int, path: str) -> tuple[int, str]:
    """One HTTP GET against the worker's endpoint: status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: worker\r\n\r\n".encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode()


async def scrape(port: int) -> Samples:
    """Every sample of a ``/metrics`` scrape, by name and labels."""
    status, body = await get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; a series not exported yet counts as 0."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much a series grew between two scrapes."""
    return value(after, name, **labels) - value(before, name, **labels)


async def started(worker: Worker) -> int:
    """Wait for a background worker's start-up; the port its endpoint listens on."""
    for _ in range(1000):
        found = runtime_or_none(worker.ctx)
        if found is not None and found.endpoint is not None:
            return found.endpoint.port
        await asyncio.sleep(0.01)
    raise AssertionError("the worker did not start")


@pytest.fixture
async def running(make_worker: Callable[..., Worker]) -> AsyncIterator[Callable[..., Any]]:
    """Start background workers (not burst) with their endpoint on a free port; each is stopped
    at the end by switching it to burst mode."""
    workers: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(**settings: Any) -> tuple[Worker, int]:
        worker = make_worker({**ENDPOINT, **settings}, burst=False)
        workers.append((worker, asyncio.create_task(worker.main())))
        return worker, await started(worker)

    yield start
    for worker, task in workers:
        await stop_worker(worker, task)


async def test_counters_and_histograms_move_by_what_the_worker_did(
    running: Callable[..., Any], producer: ArqRedis, engine: AsyncEngine
) -> None:
    worker, port = await running()
    before = await scrape(port)

    await seed_tree(producer, "p", ["a", "b", "c"])
    scores = [{"node_id": n, "ucb_score": 1.0} for n in ("a", "b")]
    good = await producer.enqueue_job("update_scores", project_id="p", scores=scores)
    invalid = await producer.enqueue_job("update_scores", project_id="p", scores="nope")
    # A status for a node that never arrives: retried for retry_wait_s, then dead-lettered.
    orphan = await producer.enqueue_job(
        "update_statuses", project_id="p", statuses=[{"node_id": "ghost", "status": "pruned"}]
    )
    assert good is not None and invalid is not None and orphan is not None
    await results([good])
    for job in (invalid, orphan):
        with pytest.raises(JobFailed):
            await job.result(timeout=30)
    after = await scrape(port)

    def grew(name: str, **labels: str) -> float:
        return delta(before, after, name, **labels)

    assert grew("pipeline_rows_written_total", kind="upsert_project") == 1
    assert grew("pipeline_rows_written_total", kind="insert_nodes") == 4
    assert grew("pipeline_rows_written_total", kind="update_scores") == 2
    for kind in ("upsert_project", "insert_nodes", "update_scores"):
        assert grew("pipeline_jobs_total", kind=kind, outcome="completed") == 1
    assert grew("pipeline_jobs_total", kind="update_scores", outcome="invalid") == 1
    # The dead letter counts the runs: every one but the last was a retry.
    runs = await scalar(engine, "SELECT tries FROM dead_letters WHERE function = 'update_statuses'")
    assert runs > 2
    assert grew("pipeline_jobs_total", kind="update_statuses", outcome="retried") == runs - 1
    assert grew("pipeline_jobs_total", kind="update_statuses", outcome="dead_lettered") == 1
    assert grew("pipeline_jobs_total", kind="update_statuses", outcome="completed") == 0
    assert grew("pipeline_dead_letters_total", kind="update_scores", reason="InvalidPayload") == 1
    assert (
        grew("pipeline_dead_letters_total", kind="update_statuses", reason="MissingReference") == 1
    )
    assert grew("pipeline_rows_written_total", kind="update_statuses") == 0
    assert grew("pipeline_flush_failures_total", reason="MissingReference") >= 4

    # Every flush is one observation of each histogram; their sums count what was submitted.
    flushes = grew("pipeline_batch_rows_count")
    assert flushes >= 1
    assert grew("pipeline_batch_jobs_count") == grew("pipeline_flush_duration_seconds_count")
    assert grew("pipeline_batch_jobs_count") == flushes
    assert grew("pipeline_batch_rows_sum") >= 1 + 4 + 2 + 4  # the orphan's row, once a try
    assert grew("pipeline_batch_jobs_sum") >= 3 + 4
    assert grew("pipeline_batch_rows_bucket", le="+Inf") == flushes
    assert grew("pipeline_flush_duration_seconds_sum") > 0
    assert value(after, "pipeline_last_flush_timestamp_seconds") > value(
        before, "pipeline_last_flush_timestamp_seconds"
    )
    assert value(after, "pipeline_jobs_in_flight") == 0
    assert value(after, "process_resident_memory_bytes") > 0
    assert worker.jobs_complete >= 3


async def test_the_worker_serves_its_pool_and_the_read_metrics_of_its_process(
    running: Callable[..., Any], engine: AsyncEngine, settings: Settings
) -> None:
    _, port = await running()
    before = await scrape(port)
    await TaxonomyReads(engine).node("p", "nothing")
    after = await scrape(port)
    assert delta(before, after, "pipeline_read_duration_seconds_count", query="taxonomy.node") == 1
    url = make_url(str(settings.database_url))
    database = f"{url.host}:{url.port}/{url.database}"
    assert value(after, "pipeline_db_pool_size", role="write", database=database) == (
        settings.db_pool_size
    )
    assert value(after, "pipeline_db_pool_size", role="read", database=database) >= 1


async def test_queue_depth_is_read_from_redis_when_scraped(
    running: Callable[..., Any], producer: ArqRedis, settings: Settings
) -> None:
    _, port = await running()
    assert value(await scrape(port), "pipeline_queue_depth") == 0
    # Deferred jobs wait in the queue without a worker taking them.
    jobs = [await producer.enqueue_job("record_events", events=[], _defer_by=600) for _ in range(3)]
    assert value(await scrape(port), "pipeline_queue_depth") == 3
    await producer.zrem(settings.queue_name, *[job.job_id for job in jobs if job is not None])
    assert value(await scrape(port), "pipeline_queue_depth") == 0


async def test_unknown_paths_and_methods_are_refused(running: Callable[..., Any]) -> None:
    _, port = await running()
    assert (await get(port, "/nope"))[0] == 404
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert response.startswith(b"HTTP/1.1 405 ")


async def test_ready_fails_while_postgres_is_unreachable_and_recovers(
    running: Callable[..., Any], proxy: Proxy, database_url: str
) -> None:
    through_proxy = make_url(database_url).set(port=proxy.port)
    _, port = await running(database_url=through_proxy.render_as_string(hide_password=False))
    status, body = await get(port, "/ready")
    assert status == 200, body
    assert body.count(": ok") == 2

    await proxy.down()
    status, body = await get(port, "/ready")
    assert status == 503
    assert "postgres" in body and "unreachable" in body and body.count(": ok") == 1

    await proxy.up()  # the same port again
    assert (await get(port, "/ready"))[0] == 200


async def test_log_lines_are_json_with_the_worker_id_and_no_password(
    make_worker: Callable[..., Worker],
    producer: ArqRedis,
    database_url: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    with_password = make_url(database_url).set(password="s3cret")
    url = with_password.render_as_string(hide_password=False)
    assert "s3cret" in url  # trust authentication accepts any password
    await seed_tree(producer, "p", ["a"])
    bad = await producer.enqueue_job("update_scores", project_id="p", scores="nope")
    worker = make_worker({"database_url": url, "log_format": "json"})
    worker.ctx["configure_logging"] = True  # as in production: start-up configures logging
    capfd.readouterr()
    # restored here: the fixture closes the worker again once the capture is closed
    with logging_restored():
        # Only the handler the worker's start-up installs writes here, not pytest's own.
        logging.getLogger().handlers.clear()
        try:
            await worker.main()
            await worker.close()
        finally:
            structlog.contextvars.clear_contextvars()  # this test's task bound the worker's id
        err = capfd.readouterr().err
    assert bad is not None
    with pytest.raises(JobFailed):
        await bad.result(timeout=5)

    lines = [json.loads(line) for line in err.splitlines() if line]
    events = [line["event"] for line in lines]
    assert "worker started" in events and "worker stopped" in events
    assert "batch flushed" in events and "job dead-lettered" in events
    assert {line.get("worker_id") for line in lines} == {worker.ctx["worker_id"]}
    batches = [line for line in lines if line["event"] == "batch flushed"]
    for batch in batches:
        # None when nothing committed (nodes that came before their project, say).
        assert batch["batch_id"] is None or len(batch["batch_id"]) == 32
        assert {"jobs", "rows", "kinds", "duration_ms", "retries", "written"} <= batch.keys()
    assert any(batch["batch_id"] for batch in batches)
    assert sum(batch["rows"] for batch in batches) >= 1 + 2
    started_line = next(line for line in lines if line["event"] == "worker started")
    assert "***" in started_line["database"]
    assert all("s3cret" not in json.dumps(line) for line in lines)
