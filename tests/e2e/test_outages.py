"""PostgreSQL outages under real worker processes, in both modes, on a cluster of the test's own:
writes enqueued before and during the outage all land once it is back, none is dead-lettered,
none fails in arq, and every key ends at its newest version.

The 30-second outage runs by default; the outage of several minutes (with a backlog of hundreds
of thousands of jobs under ``pipeline worker``) is marked ``long``, which ``./run test`` runs after
the default suite. ``PIPELINE_TEST_OUTAGE_S`` sets its length.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.settings import Settings
from tests.e2e.conftest import WorkerProcess
from tests.e2e.private_postgres import PrivatePostgres, free_port
from tests.e2e.test_faults import report, rss_mb, settle, started_on
from tests.e2e.workload import T0, Workload
from tests.integration.helpers import scalar

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster these tests may stop and start."""
    pg = PrivatePostgres()
    pg.start()
    try:
        yield pg
    finally:
        pg.remove()


@pytest.fixture
def database_url(private_pg: PrivatePostgres) -> str:
    """A fresh, migrated database on the private cluster (running, whatever a test before did)."""
    if not (private_pg.data / "postmaster.pid").exists():
        private_pg.start()
    return private_pg.create_migrated(f"outage_{uuid.uuid4().hex[:12]}")


async def failed_in_arq(producer: ArqRedis) -> list[str]:
    """The jobs arq recorded as failed (a result with ``success`` false)."""
    return [
        f"{r.function}: {r.result!r}" for r in await producer.all_job_results() if not r.success
    ]


async def in_progress(producer: ArqRedis) -> int:
    """Jobs some worker holds now (arq's in-progress keys)."""
    return len([k async for k in producer.scan_iter(match=f"{in_progress_key_prefix}*")])


async def ready(port: int) -> tuple[int, str]:
    """The worker's ``/ready`` answer: status code and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /ready HTTP/1.1\r\nHost: worker\r\n\r\n")
    answer = (await reader.read()).decode()
    writer.close()
    return int(answer.split(" ", 2)[1]), answer.split("\r\n\r\n", 1)[1]


async def until(predicate: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Wait for an async ``predicate`` to hold."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        await asyncio.sleep(0.2)


async def holding(port: int) -> bool:
    status, body = await ready(port)
    return status == 503 and "holding its writes and taking no jobs" in body


async def test_a_30_second_outage_under_the_mixed_workload(
    producer: ArqRedis,
    start_worker: Callable[..., WorkerProcess],
    private_pg: PrivatePostgres,
    engine: AsyncEngine,
    settings: Settings,
    mode: str,
) -> None:
    workload = Workload(seed=21)
    half = len(workload.jobs) // 2
    port = free_port()
    worker = start_worker(PIPELINE_METRICS_PORT=str(port))
    await workload.enqueue(producer, workload.jobs[:half])
    await started_on(producer, settings.queue_name)
    await asyncio.to_thread(private_pg.stop)
    stopped = time.monotonic()
    await workload.enqueue(producer, workload.jobs[half:])
    await until(lambda: holding(port), 15, "/ready says the worker holds its writes")
    # It hands back what it holds and claims nothing more, in both modes.
    await until(lambda: _none_in_progress(producer), 15, "no job in progress")
    await asyncio.sleep(2)
    assert await in_progress(producer) == 0
    await asyncio.sleep(max(0.0, 30 - (time.monotonic() - stopped)))
    await asyncio.to_thread(private_pg.start)
    await settle(producer, settings, [worker])

    figures = await workload.check(engine)
    report("30 s outage", figures, "PostgreSQL stopped 30 s")
    assert (figures.lost, figures.duplicated, figures.wrong_version) == (0, 0, 0)
    assert figures.dead_lettered == 0
    assert await failed_in_arq(producer) == []
    output = worker.output()
    assert "database unreachable; holding writes" in output
    assert "database reachable again; resuming" in output


async def _none_in_progress(producer: ArqRedis) -> bool:
    return await in_progress(producer) == 0


OUTAGE_S = float(os.environ.get("PIPELINE_TEST_OUTAGE_S", "180"))


def event_job(i: int) -> dict[str, object]:
    event = {"event_id": str(uuid.UUID(int=i + 1)), "event_type": "tick"}
    return {"events": [{**event, "occurred_at": T0.isoformat()}]}


async def enqueue_events(producer: ArqRedis, first: int, count: int) -> None:
    """Enqueue ``count`` one-event jobs, many at a time."""
    for start in range(first, first + count, 1000):
        stop = min(start + 1000, first + count)
        await asyncio.gather(
            *(producer.enqueue_job("record_events", **event_job(i)) for i in range(start, stop))
        )


@pytest.mark.long
@pytest.mark.timeout(OUTAGE_S + 900)
async def test_an_outage_of_minutes_with_a_backlog(
    producer: ArqRedis,
    start_worker: Callable[..., WorkerProcess],
    private_pg: PrivatePostgres,
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    # Jobs before the outage, jobs at its start (waiting all through it), and a backlog in its
    # last part, as large as a worker drains in a minute or two, enqueued in time to be waiting
    # when PostgreSQL is back (both commands run the batch worker).
    before, during = 300, 300
    backlog, backlog_at = 200_000, OUTAGE_S - 75
    total = before + during + backlog
    worker = start_worker()
    await asyncio.to_thread(worker.wait_started)
    await asyncio.sleep(0.5)
    idle = rss_mb(worker.proc.pid)
    await enqueue_events(producer, 0, before)
    await started_on(producer, settings.queue_name)
    await asyncio.to_thread(private_pg.stop)
    stopped = time.monotonic()
    await enqueue_events(producer, before, during)
    samples, enqueuing = [], None
    while time.monotonic() - stopped < OUTAGE_S:
        await asyncio.sleep(1)
        samples.append(rss_mb(worker.proc.pid))
        if enqueuing is None and time.monotonic() - stopped >= backlog_at:
            enqueuing = asyncio.create_task(enqueue_events(producer, before + during, backlog))
        if time.monotonic() - stopped > 10:
            assert await in_progress(producer) == 0, "the worker took jobs while down"
    assert enqueuing is not None
    await enqueuing
    queued = await producer.zcard(settings.queue_name)
    await asyncio.to_thread(private_pg.start)
    await settle(producer, settings, [worker], timeout=600)

    stored = await scalar(engine, "SELECT count(*) FROM events")
    dead = await scalar(engine, "SELECT count(*) FROM dead_letters")
    print(
        f"FAULTS {OUTAGE_S:.0f} s outage: jobs={total} stored={stored} dead={dead} "
        f"queued at the end of the outage={queued} idle RSS {idle:.0f} MB, "
        f"peak {max(samples):.0f} MB"
    )
    assert (stored, dead) == (total, 0)
    assert await failed_in_arq(producer) == []
    assert queued >= during + backlog  # they waited in Redis
    assert max(samples) < idle + 150
