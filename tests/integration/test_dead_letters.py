"""Dead-letter tooling: replay (a success leaves the store, a failure refreshes the same row),
purge by age, the CLI, and the payload-size limit."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline import JobFailed, dead_letters
from pipeline.settings import Settings
from tests.integration.helpers import rows, scalar, seed_tree

ORPHAN = {"project_id": "p", "nodes": [{"node_id": "o", "parent_id": "later", "label": "o"}]}


async def dead_orphan(producer: ArqRedis, run_worker: Callable[..., Any]) -> None:
    await seed_tree(producer, "p", [])
    await producer.enqueue_job("insert_nodes", **ORPHAN)
    worker = await run_worker()
    assert worker.jobs_failed == 1


async def test_a_replay_that_succeeds_leaves_the_store(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine
) -> None:
    await dead_orphan(producer, run_worker)
    [letter] = await dead_letters.listing(engine)
    assert (letter.function, letter.error_class, letter.payload) == (
        "insert_nodes",
        "MissingReference",
        ORPHAN,
    )

    # Replayed before the parent exists: it fails again and refreshes the same row.
    await dead_letters.replay(producer, [letter])
    await run_worker()
    [again] = await dead_letters.listing(engine)
    assert again.id == letter.id and again.tries > letter.tries
    assert again.last_seen_at > letter.last_seen_at

    await producer.enqueue_job(
        "insert_nodes",
        project_id="p",
        nodes=[{"node_id": "later", "parent_id": "root", "label": "l"}],
    )
    await run_worker()
    await dead_letters.replay(producer, [again])
    worker = await run_worker()
    assert worker.jobs_failed == 0
    assert await dead_letters.listing(engine) == []
    assert await scalar(engine, "SELECT parent_id FROM nodes WHERE node_id = 'o'") == "later"


async def test_purge_deletes_only_old_dead_letters(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine
) -> None:
    await dead_orphan(producer, run_worker)
    await producer.enqueue_job(
        "update_statuses", project_id="p", statuses=[{"node_id": "x", "status": "bad"}]
    )
    await run_worker()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE dead_letters SET last_seen_at = now() - interval '8 days' "
                "WHERE function = 'insert_nodes'"
            )
        )
    assert await dead_letters.purge(engine, dt.timedelta(days=7)) == 1
    assert await rows(engine, "SELECT function FROM dead_letters") == [("update_statuses",)]


async def test_the_cli_lists_shows_and_replays(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine, settings: Settings
) -> None:
    await dead_orphan(producer, run_worker)
    env = {
        **os.environ,
        "PIPELINE_DATABASE_URL": str(settings.database_url),
        "PIPELINE_REDIS_URL": str(settings.redis_url),
        "PIPELINE_QUEUE_NAME": settings.queue_name,
    }

    def cli(*args: str) -> str:
        command = [sys.executable, "-m", "pipeline.cli", "dead-letters", *args]
        return subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout

    [listed] = [json.loads(line) for line in cli("list", "--json").splitlines()]
    assert (listed["function"], listed["error_class"]) == ("insert_nodes", "MissingReference")
    assert json.loads(cli("show", str(listed["id"])))["payload"] == ORPHAN
    assert cli("replay", "--all").strip() == "replayed 1 dead letter(s)"
    assert await producer.zcard(settings.queue_name) == 1
    assert cli("purge", "--older-than", "1d").strip() == "purged 0 dead letter(s)"


async def test_an_oversized_job_is_dead_lettered_with_its_size(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine, settings: Settings
) -> None:
    await seed_tree(producer, "p", ["a"])
    huge = await producer.enqueue_job(
        "insert_nodes",
        project_id="p",
        nodes=[{"node_id": "h", "parent_id": "root", "label": "x" * 2_000_000}],
    )
    small = await producer.enqueue_job(
        "update_scores", project_id="p", scores=[{"node_id": "a", "ucb_score": 1.0}]
    )
    worker = await run_worker()
    assert worker.jobs_failed == 1
    assert (await small.result(timeout=5))["rows"] == 1
    with pytest.raises(JobFailed) as failed:
        await huge.result(timeout=5)
    assert failed.value.kind == "InvalidPayload"
    assert f"at most {settings.job_max_bytes}" in failed.value.message
    [letter] = await dead_letters.listing(engine)
    assert letter.error_class == "InvalidPayload" and "bytes" in letter.error_message


async def test_a_nul_quoted_by_the_validation_error_does_not_block_the_dead_letter(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine
) -> None:
    # pydantic quotes the bad character in its message; PostgreSQL text cannot hold a NUL.
    job = await producer.enqueue_job(
        "record_events",
        events=[{"event_id": "a\x00", "event_type": "x", "payload": {}, "occurred_at": None}],
    )
    worker = await run_worker()
    assert (worker.jobs_failed, worker.jobs_retried) == (1, 0)
    with pytest.raises(JobFailed):
        await job.result(timeout=5)
    [letter] = await dead_letters.listing(engine)
    assert letter.function == "record_events" and "\\x00" in letter.error_message
