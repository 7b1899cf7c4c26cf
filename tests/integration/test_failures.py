"""Failure isolation: missing references retry then dead-letter, bad input and data errors sink
only their own job, transient errors retry the batch, pickled jobs never run (they are
dead-lettered)."""

from __future__ import annotations

import asyncio
import pickle
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from arq import create_pool as arq_create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.settings import Settings
from tests.integration.batching import until
from tests.integration.helpers import failure, rows, scalar, seed_tree, stop_worker

DEAD = "SELECT function, error_class, error_message, tries, payload FROM dead_letters ORDER BY id"


async def test_child_enqueued_before_its_parent_lands_once_the_parent_exists(
    producer: ArqRedis,
    run_worker: Callable[..., Any],
    worker_of: Callable[..., Any],
    engine: AsyncEngine,
) -> None:
    await seed_tree(producer, "p", [])
    await run_worker()
    child = await producer.enqueue_job(
        "insert_nodes", project_id="p", nodes=[{"node_id": "c", "parent_id": "b", "label": "c"}]
    )
    score = await producer.enqueue_job(
        "update_scores", project_id="p", scores=[{"node_id": "b", "rubric_score": 0.5}]
    )
    worker = worker_of()
    running = asyncio.create_task(worker.main())
    await until(lambda: worker.jobs_retried >= 2, "the child and the score handed back")
    await producer.enqueue_job(
        "insert_nodes", project_id="p", nodes=[{"node_id": "b", "parent_id": "root", "label": "b"}]
    )
    await stop_worker(worker, running)
    assert worker.jobs_failed == 0
    assert (await child.result(timeout=5))["rows"] == 1
    assert (await score.result(timeout=5))["rows"] == 1
    assert await rows(
        engine, "SELECT node_id, parent_id, rubric_score FROM nodes ORDER BY node_id"
    ) == [
        ("b", "root", 0.5),
        ("c", "b", None),
        ("root", None, None),
    ]
    assert await rows(engine, DEAD) == []


async def test_a_child_waits_for_its_parent_longer_than_max_tries_hand_backs(
    producer: ArqRedis,
    run_worker: Callable[..., Any],
    worker_of: Callable[..., Any],
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    await seed_tree(producer, "p", [])
    await run_worker()
    child = await producer.enqueue_job(
        "insert_nodes", project_id="p", nodes=[{"node_id": "c", "parent_id": "late", "label": "c"}]
    )
    # a wait far longer than the test needs, so the count of hand-backs, not the clock, decides
    worker = worker_of(retry_wait_s=60.0)
    running = asyncio.create_task(worker.main())
    await until(lambda: worker.jobs_retried > 2 * settings.max_tries, "many hand-backs")
    late = {"node_id": "late", "parent_id": "root", "label": "l"}
    await producer.enqueue_job("insert_nodes", project_id="p", nodes=[late])
    await stop_worker(worker, running)
    # Handed back many more times than max_tries: a missing reference is given time, not tries.
    assert worker.jobs_failed == 0 and worker.jobs_complete == 2
    info = await child.result_info()
    assert info is not None and info.success and info.job_try == 1
    assert await rows(engine, "SELECT node_id FROM nodes ORDER BY node_id") == [
        ("c",),
        ("late",),
        ("root",),
    ]
    assert await rows(engine, DEAD) == []


async def test_references_that_never_come_are_dead_lettered_once_their_wait_is_over(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine, settings: Settings
) -> None:
    await seed_tree(producer, "p", ["a"])
    await run_worker()
    orphan = await producer.enqueue_job(
        "insert_nodes", project_id="p", nodes=[{"node_id": "o", "parent_id": "ghost", "label": "o"}]
    )
    unknown = await producer.enqueue_job(
        "update_statuses", project_id="p", statuses=[{"node_id": "ghost", "status": "pruned"}]
    )
    fine = await producer.enqueue_job(
        "update_statuses", project_id="p", statuses=[{"node_id": "a", "status": "pruned"}]
    )
    started = time.monotonic()
    worker = await run_worker()
    assert time.monotonic() - started >= settings.retry_wait_s
    assert worker.jobs_failed == 2 and worker.jobs_complete == 1
    assert (await fine.result(timeout=5))["rows"] == 1
    for job in (orphan, unknown):
        failed = await failure(job)
        assert failed.kind == "MissingReference"
        assert "do not exist yet" in failed.message
        waited = re.search(r"retried for ([\d.]+) s while", failed.message)
        assert waited is not None and float(waited[1]) >= settings.retry_wait_s
    dead = await rows(engine, DEAD)
    assert sorted((d[0], d[1]) for d in dead) == [
        ("insert_nodes", "MissingReference"),
        ("update_statuses", "MissingReference"),
    ]
    assert all(d[3] > settings.max_tries for d in dead)  # every hand-back is a run, none a try
    assert {d[4]["nodes"][0]["parent_id"] for d in dead if d[0] == "insert_nodes"} == {"ghost"}
    assert await scalar(engine, "SELECT count(*) FROM nodes WHERE node_id = 'o'") == 0


async def test_invalid_payload_fails_alone_with_a_clear_message(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine
) -> None:
    await seed_tree(producer, "p", [f"n{i}" for i in range(20)])
    await run_worker()
    good = [
        await producer.enqueue_job(
            "update_scores", project_id="p", scores=[{"node_id": f"n{i}", "ucb_score": i}]
        )
        for i in range(20)
    ]
    bad = await producer.enqueue_job(
        "update_scores", project_id="p", scores=[{"node_id": "n1", "ucb_score": "high"}]
    )
    positional = await producer.enqueue_job("update_scores", "p")
    worker = await run_worker()

    assert worker.jobs_complete == 20 and worker.jobs_failed == 2 and worker.jobs_retried == 0
    assert await scalar(engine, "SELECT count(*) FROM nodes WHERE ucb_score IS NOT NULL") == 20
    failed = await failure(bad)
    assert failed.kind == "InvalidPayload"
    assert failed.message == "update_scores: scores.0.ucb_score: Input should be a valid number"
    assert [(await job.result(timeout=5))["rows"] for job in good] == [1] * 20
    assert (await failure(positional)).message.endswith("keyword arguments only, got 1 positional")
    dead = await rows(engine, DEAD)
    assert [(d[0], d[1], d[3]) for d in dead] == [("update_scores", "InvalidPayload", 1)] * 2
    assert {"project_id": "p", "scores": [{"node_id": "n1", "ucb_score": "high"}]} in [
        d[4] for d in dead
    ]


async def test_a_data_error_sinks_only_its_own_job(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine
) -> None:
    await seed_tree(producer, "p", [])
    await run_worker()
    # A rule the database knows and the payload models do not.
    async with engine.begin() as conn:
        await conn.execute(
            text("ALTER TABLE nodes ADD CONSTRAINT no_poison CHECK (label <> 'poison')")
        )
    jobs = [
        await producer.enqueue_job(
            "insert_nodes",
            project_id="p",
            nodes=[
                {"node_id": f"n{i}", "parent_id": "root", "label": "poison" if i == 13 else "ok"}
            ],
        )
        for i in range(40)
    ]
    async with engine.connect() as blocker:  # make all 40 jobs share one batch
        await blocker.execute(text("LOCK TABLE nodes IN EXCLUSIVE MODE"))
        draining = asyncio.create_task(run_worker())
        await asyncio.sleep(0.5)
        await blocker.rollback()
    worker = await draining

    assert worker.jobs_complete == 39 and worker.jobs_failed == 1 and worker.jobs_retried == 0
    assert await scalar(engine, "SELECT count(*) FROM nodes WHERE label = 'ok'") == 39
    failed = await failure(jobs[13])
    assert failed.kind == "DataError" and "no_poison" in failed.message
    dead = await rows(engine, DEAD)
    assert [(d[0], d[1], d[4]["nodes"][0]["node_id"]) for d in dead] == [
        ("insert_nodes", "DataError", "n13")
    ]


async def inject_serialization_failures(engine: AsyncEngine, count: int) -> None:
    """Make the next ``count`` inserts into ``nodes`` fail as a serialization failure would."""
    async with engine.begin() as conn:
        await conn.execute(text("CREATE SEQUENCE chaos"))
        await conn.execute(
            text(
                f"""
                CREATE FUNCTION chaos() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF nextval('chaos') <= {count} THEN
                        RAISE EXCEPTION 'injected' USING ERRCODE = '40001';
                    END IF;
                    RETURN NULL;
                END $$
                """
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER chaos BEFORE INSERT ON nodes "
                "FOR EACH STATEMENT EXECUTE FUNCTION chaos()"
            )
        )


@pytest.mark.parametrize(("failures", "rerun_by_arq"), [(3, False), (7, True)])
async def test_transient_errors_retry_the_batch_then_the_jobs(
    producer: ArqRedis,
    run_worker: Callable[..., Any],
    engine: AsyncEngine,
    failures: int,
    rerun_by_arq: bool,
) -> None:
    await seed_tree(producer, "p", [])
    await run_worker()
    await inject_serialization_failures(engine, failures)
    for i in range(30):
        await producer.enqueue_job(
            "insert_nodes",
            project_id="p",
            nodes=[{"node_id": f"n{i}", "parent_id": "root", "label": "x"}],
        )
    worker = await run_worker()
    assert worker.jobs_complete == 30 and worker.jobs_failed == 0
    assert (worker.jobs_retried > 0) is rerun_by_arq
    assert await scalar(engine, "SELECT count(*) FROM nodes") == 31
    assert await scalar(engine, "SELECT last_value FROM chaos") > failures
    assert await rows(engine, DEAD) == []


async def test_a_transient_error_that_never_stops_ends_in_a_dead_letter(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine, settings: Settings
) -> None:
    await seed_tree(producer, "p", [])
    await run_worker()
    await inject_serialization_failures(engine, 10_000)
    job = await producer.enqueue_job(
        "insert_nodes", project_id="p", nodes=[{"node_id": "n", "parent_id": "root", "label": "x"}]
    )
    worker = await run_worker()
    # PostgreSQL answers every probe, so the failures count on the retry clock; no try is spent.
    assert worker.jobs_failed == 1 and worker.jobs_retried > settings.max_tries
    failed = await failure(job)
    assert failed.kind == "TransientError" and "while PostgreSQL was reachable" in failed.message
    assert [d[1] for d in await rows(engine, DEAD)] == ["TransientError"]


async def test_pickled_jobs_are_refused_and_the_worker_goes_on(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine, settings: Settings
) -> None:
    await seed_tree(producer, "p", [])
    pickling = await arq_create_pool(
        RedisSettings.from_dsn(str(settings.redis_url)), default_queue_name=settings.queue_name
    )
    try:
        evil = await pickling.enqueue_job(
            "insert_nodes", project_id="p", nodes=[{"node_id": "x", "label": "x"}]
        )
        assert evil is not None
        raw = await pickling.get(f"arq:job:{evil.job_id}")
        assert pickle.loads(raw)["f"] == "insert_nodes"  # it really is a pickle
    finally:
        await pickling.aclose()
    worker = await run_worker()
    assert worker.jobs_failed == 1 and worker.jobs_complete == 2
    assert await rows(engine, "SELECT node_id FROM nodes") == [("root",)]
    failed = await failure(
        Job(
            evil.job_id,
            producer,
            _queue_name=settings.queue_name,
            _deserializer=producer.job_deserializer,
        )
    )
    assert (failed.kind, failed.message) == ("UndeliverableJob", "pickle is not accepted")
    assert await rows(engine, "SELECT function, raw FROM dead_letters") == [
        ("pipeline_undeliverable", raw)
    ]
