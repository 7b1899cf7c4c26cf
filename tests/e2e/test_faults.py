"""The fault-injection suite: a known workload, a fault in the middle of it, recovery, and a
check of the database against the state the workload must leave — zero lost writes, zero
duplicated appends, the highest version for every key.

Each test prints its figures (``FAULTS …``); run with ``-s`` to see them.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.settings import Settings
from tests.e2e.conftest import WorkerProcess
from tests.e2e.test_workers import drained
from tests.e2e.workload import Figures, Workload
from tests.undeliverable_jobs import CASES, deep_metadata, push

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
DRAIN_S = 150


def report(name: str, figures: Figures, faults: str) -> None:
    print(f"FAULTS {name}: {figures.line(faults)}")


def clean(figures: Figures, dead_lettered: int = 0) -> bool:
    return (figures.lost, figures.duplicated, figures.wrong_version, figures.dead_lettered) == (
        0,
        0,
        0,
        dead_lettered,
    )


async def started_on(producer: ArqRedis, queue: str) -> None:
    """Return once a worker has finished a job of ``queue``: it is under way, not done."""
    queued = await producer.zcard(queue)
    for _ in range(3000):
        if await producer.zcard(queue) < queued:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("no job finished within 15 s")


async def settle(
    producer: ArqRedis, settings: Settings, workers: list[WorkerProcess], timeout: float = DRAIN_S
) -> None:
    """Drain the queue, then stop the workers cleanly."""
    await drained(producer, settings.queue_name, timeout=timeout)
    codes = [await asyncio.to_thread(w.stop) for w in workers if w.proc.poll() is None]
    assert all(code == 0 for code in codes), [w.output()[-2000:] for w in workers]


async def test_sigkill_at_random_moments(
    producer: ArqRedis,
    start_worker: Callable[..., WorkerProcess],
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    rng = random.Random(11)
    workload = Workload(seed=11)
    worker = start_worker()
    await workload.enqueue(producer)
    kills = 0
    for _ in range(3):
        await asyncio.sleep(rng.uniform(0.3, 1.5))
        assert await asyncio.to_thread(worker.stop, signal.SIGKILL) == -signal.SIGKILL
        kills += 1
        worker = start_worker()
    await settle(producer, settings, [worker])
    figures = await workload.check(engine)
    report("sigkill", figures, f"{kills} SIGKILL")
    assert clean(figures)


async def test_sigterm_under_load(
    producer: ArqRedis,
    start_worker: Callable[..., WorkerProcess],
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    workload = Workload(seed=12)
    first = start_worker()
    await workload.enqueue(producer)
    await started_on(producer, settings.queue_name)  # stopped at once, whatever its speed
    assert await asyncio.to_thread(first.stop, signal.SIGTERM) == 0
    assert "shutdown on SIGTERM" in first.output()
    assert await producer.zcard(settings.queue_name) > 0, "stop it while work is queued"
    await settle(producer, settings, [start_worker()])
    figures = await workload.check(engine)
    report("sigterm", figures, "1 SIGTERM")
    assert clean(figures)


async def test_database_connections_terminated_mid_run(
    producer: ArqRedis,
    start_worker: Callable[..., WorkerProcess],
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    workload = Workload(seed=13)
    worker = start_worker()
    await workload.enqueue(producer)
    await started_on(producer, settings.queue_name)
    terminated = 0
    for _ in range(5):  # every 0.1 s while the worker flushes, whatever its speed
        await asyncio.sleep(0.1)
        async with engine.connect() as conn:
            result = await conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            terminated += int(result.scalar_one())
    await settle(producer, settings, [worker])
    figures = await workload.check(engine)
    report("pg_terminate_backend", figures, f"{terminated} backends terminated")
    assert terminated > 0
    assert '"batch retry"' in worker.output()
    assert clean(figures)


async def test_redis_connections_killed_mid_run(
    producer: ArqRedis,
    start_worker: Callable[..., WorkerProcess],
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    workload = Workload(seed=14)
    worker = start_worker()
    await workload.enqueue(producer)
    admin = aioredis.from_url(str(settings.redis_url))
    killed = 0
    try:
        for _ in range(3):
            await asyncio.sleep(0.7)
            killed += int(
                await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            )
    finally:
        await admin.aclose()
    await settle(producer, settings, [worker])
    figures = await workload.check(engine)
    report("redis client kill", figures, f"{killed} Redis connections killed")
    assert killed > 0
    assert clean(figures)


async def test_poison_jobs_are_the_only_ones_dead_lettered(
    producer: ArqRedis,
    plain_producer: ArqRedis,
    start_worker: Callable[..., WorkerProcess],
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    workload = Workload(seed=15)
    async with engine.begin() as conn:  # a rule only the database knows
        await conn.execute(
            text("ALTER TABLE nodes ADD CONSTRAINT no_poison CHECK (label <> 'poison')")
        )
    poison = [
        ("update_scores", {"project_id": "p", "scores": [{"node_id": "c1", "ucb_score": "NaN?"}]})
    ] * 10
    # Over 1 MiB: what the producer's pool refuses, sent the way another producer could.
    oversized = [("record_events", {"events": [{"event_id": "x" * 2_000_000}]})] * 5
    poison += [
        (
            "insert_nodes",
            {
                "project_id": "p",
                "nodes": [{"node_id": f"bad{i}", "parent_id": "root", "label": "poison"}],
            },
        )
        for i in range(5)
    ]
    poison.append(
        (
            "insert_nodes",
            {
                "project_id": "p",
                "nodes": [{"node_id": "deep", "label": "d", "metadata": deep_metadata(990)}],
            },
        )
    )
    rng = random.Random(15)
    for job in poison:
        workload.jobs.insert(rng.randrange(1, len(workload.jobs)), job)
    poison += oversized
    worker = start_worker()
    half = len(workload.jobs) // 2
    await workload.enqueue(producer, workload.jobs[:half])
    await workload.enqueue(plain_producer, oversized)
    # Jobs no worker can run (bad bytes, unknown functions…), as raw bytes among the others.
    pushed = {await push(producer, settings.queue_name, case.data): case for case in CASES}
    await workload.enqueue(producer, workload.jobs[half:])
    await settle(producer, settings, [worker])
    figures = await workload.check(engine)
    report("poison", figures, f"{len(poison)} poison jobs, {len(pushed)} undeliverable")
    assert clean(figures, dead_lettered=len(poison) + len(pushed))
    async with engine.connect() as conn:
        kinds = (
            await conn.execute(
                text("SELECT error_class, count(*) FROM dead_letters GROUP BY 1 ORDER BY 1")
            )
        ).all()
        undeliverable = (
            await conn.execute(
                text(
                    "SELECT job_id, function, error_message, raw FROM dead_letters "
                    "WHERE error_class = 'UndeliverableJob'"
                )
            )
        ).all()
    assert kinds == [("DataError", 5), ("InvalidPayload", 16), ("UndeliverableJob", len(CASES))]
    assert {row[0]: tuple(row[1:]) for row in undeliverable} == {
        job_id: (case.function, case.reason, case.raw) for job_id, case in pushed.items()
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_a_stalled_database_bounds_memory_and_the_backlog_drains(
    producer: ArqRedis,
    start_worker: Callable[..., WorkerProcess],
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    workload = Workload(seed=16, score_jobs=4000)
    worker = start_worker()
    await asyncio.to_thread(worker.wait_started)
    await asyncio.sleep(0.5)  # and idle
    idle = rss_mb(worker.proc.pid)
    samples = []
    async with engine.connect() as blocker:
        await blocker.execute(text("LOCK TABLE nodes IN ACCESS EXCLUSIVE MODE"))
        await workload.enqueue(producer)
        for _ in range(25):  # five seconds with every flush blocked
            await asyncio.sleep(0.2)
            samples.append(rss_mb(worker.proc.pid))
        backlog = await producer.zcard(settings.queue_name)
        await blocker.rollback()
    await settle(producer, settings, [worker])
    figures = await workload.check(engine)
    report(
        "stalled database",
        figures,
        f"5 s lock; idle RSS {idle:.0f} MB, peak {max(samples):.0f} MB, backlog {backlog}",
    )
    assert clean(figures)
    assert backlog >= len(workload.jobs) - settings.max_jobs  # the queue grew, not the worker
    assert max(samples) < idle + 150
