"""Transcripts and events through plain enqueue_job and a real worker: round trips, re-delivery,
full-text search, and urgent events that do not wait behind a backlog."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline import JobFailed
from pipeline.settings import Settings
from tests.integration.helpers import redeliver, rows, scalar

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def entry(seq: int, content: str, *, phase: str = "plan", role: str = "response") -> dict[str, Any]:
    return {
        "task_id": "TASK-1",
        "phase": phase,
        "iteration": 0,
        "seq": seq,
        "role": role,
        "content": content,
        "timestamp": (T0 + dt.timedelta(seconds=seq)).isoformat(),
    }


async def test_transcripts_round_trip_once_and_are_searchable(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine, settings: Settings
) -> None:
    job = await producer.enqueue_job(
        "append_transcripts",
        transcripts=[
            entry(0, "Plan the migration of the billing service", role="prompt"),
            entry(1, "The migration runs in three steps; each migration step is reversible"),
            entry(2, "Unrelated chatter about lunch"),
        ],
    )
    await producer.enqueue_job(
        "append_transcripts", transcripts=[entry(0, "Implement it", phase="implement")]
    )
    bad = await producer.enqueue_job(
        "append_transcripts", transcripts=[entry(5, "x", role="narrator")]
    )
    worker = await run_worker()
    assert worker.jobs_complete == 2 and worker.jobs_failed == 1
    with pytest.raises(JobFailed, match=r"transcripts\.0\.role"):
        await bad.result(timeout=5)

    await redeliver(producer, job, settings.queue_name)
    await run_worker()
    assert await rows(
        engine, "SELECT phase, seq, role FROM transcripts ORDER BY timestamp, phase, seq"
    ) == [
        ("implement", 0, "response"),
        ("plan", 0, "prompt"),
        ("plan", 1, "response"),
        ("plan", 2, "response"),
    ]

    hits = await rows(
        engine,
        "SELECT seq, ts_rank_cd(search, q) FROM transcripts, websearch_to_tsquery('english', :q) q "
        "WHERE search @@ q ORDER BY 2 DESC, seq",
        q="migrating",
    )
    assert [h[0] for h in hits] == [1, 0]  # stemmed, and two mentions rank above one


async def test_events_round_trip_once(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine, settings: Settings
) -> None:
    events = [
        {
            "event_id": str(uuid.UUID(int=i)),
            "task_id": "TASK-1",
            "event_type": "phase_started",
            "payload": {"phase": "plan", "n": i},
            "occurred_at": (T0 + dt.timedelta(seconds=i)).isoformat(),
        }
        for i in range(50)
    ]
    events.append(
        {
            "event_id": str(uuid.UUID(int=99)),
            "event_type": "system_ready",
            "occurred_at": T0.isoformat(),
            "duration_ms": 120,
        }
    )
    job = await producer.enqueue_job("record_events", events=events)
    naive = await producer.enqueue_job(
        "record_events",
        events=[
            {
                "event_id": str(uuid.UUID(int=100)),
                "event_type": "x",
                "occurred_at": "2026-03-01T12:00:00",
            }
        ],
    )
    await run_worker()
    await redeliver(producer, job, settings.queue_name)
    await run_worker()
    assert await scalar(engine, "SELECT count(*) FROM events") == 51
    assert await rows(
        engine, "SELECT task_id, payload, duration_ms FROM events WHERE event_type = 'system_ready'"
    ) == [(None, {}, 120)]
    with pytest.raises(JobFailed, match="timezone"):
        await naive.result(timeout=5)


async def test_an_urgent_event_does_not_wait_behind_a_backlog(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine
) -> None:
    def batch(start: int) -> list[dict[str, Any]]:
        return [
            {
                "event_id": str(uuid.UUID(int=start + i)),
                "task_id": "T",
                "event_type": "chunk",
                "occurred_at": T0.isoformat(),
            }
            for i in range(100)
        ]

    backlog = [
        await producer.enqueue_job("record_events", events=batch(1000 * (j + 1))) for j in range(30)
    ]
    urgent = await producer.enqueue_job(
        "record_events",
        events=[
            {
                "event_id": str(uuid.UUID(int=7)),
                "task_id": "T",
                "event_type": "phase_completed",
                "occurred_at": T0.isoformat(),
            }
        ],
        urgent=True,
    )
    # Every job is waiting in the coalescer while the first flushes are stalled (one per flusher);
    # each job is a full batch (batch_max_rows=100), so without urgency the last job would be the
    # 31st transaction, and with it the next one after the stalled ones.
    async with engine.connect() as blocker:
        await blocker.execute(text("LOCK TABLE events IN EXCLUSIVE MODE"))
        draining = asyncio.create_task(run_worker(settings_overrides={"batch_max_rows": 100}))
        await asyncio.sleep(1.0)
        await blocker.rollback()
    await draining
    committed = sorted(
        [((await j.result(timeout=5))["committed_at"], "backlog") for j in backlog]
        + [((await urgent.result(timeout=5))["committed_at"], "urgent")]
    )
    assert [kind for _, kind in committed].index("urgent") <= Settings().flushers
    assert await scalar(engine, "SELECT count(*) FROM events") == 3001
