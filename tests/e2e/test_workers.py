"""Several real worker processes on overlapping keys: no deadlocks, no failed job, every key at
its highest version; SIGTERM exits cleanly."""

from __future__ import annotations

import asyncio
import datetime
import json
import random
import signal
from collections.abc import Callable

import pytest
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.producer.client import idle
from pipeline.settings import Settings
from tests.e2e.conftest import WorkerProcess
from tests.integration.helpers import rows, scalar

pytestmark = pytest.mark.e2e
NODES = [f"n{i:04d}" for i in range(3000)]
HOT = NODES[::60]  # 50 keys that every worker keeps touching


async def deadlocks(engine: AsyncEngine) -> int:
    """Deadlocks PostgreSQL has detected in this test's database."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        return int(
            (
                await conn.execute(
                    text(
                        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
                    )
                )
            ).scalar_one()
        )


async def drained(redis: ArqRedis, queue: str, timeout: float) -> None:
    """Wait until the queue is empty and no job is in progress (without polling every job)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await idle(redis, queue):
        assert asyncio.get_running_loop().time() < deadline, "the queue did not drain in time"
        await asyncio.sleep(0.2)


async def test_three_workers_on_overlapping_keys(
    producer: ArqRedis,
    start_worker: Callable[..., WorkerProcess],
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    rng = random.Random(2026)
    # Two batch-claiming workers and a stock arq one (one job at a time) share the queue.
    workers = [start_worker(), start_worker(), start_worker("arq", PIPELINE_BATCH_CLAIMS="false")]
    await producer.enqueue_job("upsert_project", project_id="p", name="p")
    nodes = [{"node_id": "root", "label": "root"}]
    nodes += [{"node_id": n, "parent_id": "root", "label": n} for n in NODES]
    seeded = await producer.enqueue_job("insert_nodes", project_id="p", nodes=nodes)
    await seeded.result(timeout=30)
    before = await deadlocks(engine)

    expected: dict[str, dict[str, tuple[int, object]]] = {n: {} for n in NODES}

    def remember(node: str, field: str, version: int, value: object) -> None:
        if version > expected[node].get(field, (-1, None))[0]:
            expected[node][field] = (version, value)

    payloads: list[tuple[str, dict[str, object]]] = []
    versions = rng.sample(range(1, 10_000_000), 25 * 2000 * 2)
    for _ in range(2000):
        picked = rng.sample(HOT, rng.randint(1, 25))
        scores, statuses = [], []
        for n in picked:
            v, w = versions.pop(), versions.pop()
            scores.append(
                {"node_id": n, "rubric_score": v / 1e7, "ucb_score": float(v), "version": v}
            )
            remember(n, "rubric", v, v / 1e7)
            remember(n, "ucb", v, float(v))
            status = rng.choice(["alive", "expanded", "pruned"])
            statuses.append({"node_id": n, "status": status, "version": w})
            remember(n, "status", w, status)
        # The same keys in other orders, in concurrent jobs that land on different workers.
        payloads.append(("update_scores", {"scores": scores}))
        payloads.append(("update_statuses", {"statuses": rng.sample(statuses, len(statuses))}))

    # Every update becomes due at one moment, so the three workers drain a full queue at once,
    # with large batches that overlap in time.
    due = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=3)
    jobs = [
        await producer.enqueue_job(function, project_id="p", _defer_until=due, **payload)
        for function, payload in payloads
    ]
    await drained(producer, settings.queue_name, timeout=90)
    receipts = [await job.result(timeout=5) for job in jobs]

    assert len(receipts) == 4000
    assert len({r["batch_id"] for r in receipts}) < 4000
    codes = [w.stop(signal.SIGTERM) for w in workers]
    assert codes == [0, 0, 0], [w.output()[-2000:] for w in workers]
    assert await deadlocks(engine) == before
    retries = [line for w in workers for line in w.output().splitlines() if '"batch retry"' in line]
    assert retries == []
    assert await scalar(engine, "SELECT count(*) FROM dead_letters") == 0
    state = await rows(
        engine,
        "SELECT node_id, rubric_score, rubric_score_version, ucb_score, ucb_score_version, "
        "status, status_version FROM nodes WHERE node_id <> 'root' ORDER BY node_id",
    )
    for node_id, rubric, rubric_v, ucb, ucb_v, status, status_v in state:
        want = expected[node_id]
        if "rubric" in want:
            assert (rubric_v, rubric) == want["rubric"]
            assert (ucb_v, ucb) == want["ucb"]
            assert (status_v, status) == want["status"]
        else:
            assert (rubric, ucb, status) == (None, None, "alive")
    flushed = [
        json.loads(line)
        for w in workers
        for line in w.output().splitlines()
        if '"batch flushed"' in line
    ]
    assert sum(f["jobs"] for f in flushed) >= 4001
