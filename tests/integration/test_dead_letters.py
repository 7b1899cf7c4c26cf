"""Dead-letter tooling: replay (a success leaves the store, a failure refreshes the same row),
purge by age, the CLI, the payload-size limit, and letters of raw bytes."""

from __future__ import annotations

import base64
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

from pipeline import JobFailed
from pipeline.errors import InvalidPayload
from pipeline.ops import dead_letters
from pipeline.serialization import UNDELIVERABLE, JobDeserializer, deserialize, serialize
from pipeline.settings import Settings
from pipeline.worker.service import PipelineWorker, worker_options
from tests.integration.helpers import rows, scalar, seed_tree
from tests.integration.test_undeliverable import push
from tests.undeliverable_jobs import CASES, deep_metadata

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


def run_cli(settings: Settings, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    """``pipeline dead-letters …`` against the test's database and queue."""
    env = {
        **os.environ,
        "PIPELINE_DATABASE_URL": str(settings.database_url),
        "PIPELINE_REDIS_URL": str(settings.redis_url),
        "PIPELINE_QUEUE_NAME": settings.queue_name,
        "COLUMNS": "200",  # the table's width, with no terminal
    }
    command = [sys.executable, "-m", "pipeline", "dead-letters", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stdout + done.stderr
    return done


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

    def cli(*args: str) -> str:
        return run_cli(settings, *args).stdout

    [listed] = [json.loads(line) for line in cli("list", "--json").splitlines()]
    assert (listed["function"], listed["error_class"]) == ("insert_nodes", "MissingReference")
    assert json.loads(cli("show", str(listed["id"])))["payload"] == ORPHAN
    assert cli("replay", "--all").strip() == "replayed 1 dead letter(s)"
    assert await producer.zcard(settings.queue_name) == 1
    assert cli("purge", "--older-than", "1d").strip() == "purged 0 dead letter(s)"


async def test_an_oversized_job_is_dead_lettered_with_its_size(
    producer: ArqRedis,
    plain_producer: ArqRedis,
    run_worker: Callable[..., Any],
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    await seed_tree(producer, "p", ["a"])
    huge = await plain_producer.enqueue_job(
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


async def test_letters_of_raw_bytes_are_shown_and_not_replayed(
    producer: ArqRedis,
    plain_producer: ArqRedis,
    run_worker: Callable[..., Any],
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    [pickled] = [case for case in CASES if case.name == "pickle"]
    await push(producer, settings.queue_name, pickled.data)
    unknown = await plain_producer.enqueue_job("no_such_function", x=[1, "y"])
    assert unknown is not None
    await run_worker()
    by_function = {letter.function: letter for letter in await dead_letters.listing(engine)}
    raw, decoded = by_function[UNDELIVERABLE], by_function["no_such_function"]
    assert (raw.raw, raw.payload, raw.replayable) == (pickled.data, {}, False)
    assert (decoded.raw, decoded.payload, decoded.replayable) == (None, {"x": [1, "y"]}, True)

    table = run_cli(settings, "list").stdout
    assert f"{len(pickled.data)} B" in table and "pickle is not accepted" in table
    listed = {
        line["id"]: line
        for line in map(json.loads, run_cli(settings, "list", "--json").stdout.splitlines())
    }
    assert base64.b64decode(listed[raw.id]["raw"]) == pickled.data
    assert listed[decoded.id]["raw"] is None
    shown = json.loads(run_cli(settings, "show", str(raw.id)).stdout)
    assert base64.b64decode(shown["raw"]) == pickled.data and shown["payload"] == {}

    refused = run_cli(settings, "replay", "--id", str(decoded.id), "--id", str(raw.id), code=1)
    assert refused.stdout.strip() == (
        f"not replayed: dead letter {raw.id} holds only the raw bytes of a job that never "
        "decoded (nothing to replay; see `show` for them)"
    )
    assert await producer.zcard(settings.queue_name) == 0  # nothing was replayed
    with pytest.raises(dead_letters.NotReplayable):
        await dead_letters.replay(producer, [decoded, raw])
    assert await producer.zcard(settings.queue_name) == 0

    # The decoded letter names a function the pipeline does not have: not replayed either.
    replayed = run_cli(settings, "replay", "--all").stdout.splitlines()
    assert replayed[0] == (
        f"not replayed: dead letter {decoded.id} names a function this version of the pipeline "
        "does not have"
    )
    assert replayed[1] == "replayed 0 dead letter(s)"
    assert replayed[2].startswith(f"not replayed: dead letter {raw.id} holds only the raw bytes")
    refused = run_cli(settings, "replay", "--id", str(decoded.id), code=1)
    assert refused.stdout.strip().endswith("does not have: nothing was replayed")
    assert await producer.zcard(settings.queue_name) == 0


async def test_a_letter_of_an_unknown_function_replays_once_the_function_exists(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine, settings: Settings
) -> None:
    # A worker deployed before `heartbeat` existed: the job is dead-lettered, not lost.
    options = worker_options(settings)
    options["functions"] = [f for f in options["functions"] if f.name != "heartbeat"]
    names = [f.name for f in options["functions"]]
    options["job_deserializer"] = JobDeserializer(settings.job_max_bytes, names)
    options["ctx"]["configure_logging"] = False
    old = PipelineWorker(**options, burst=True, handle_signals=False)
    beat = {"service": "s", "instance_id": "i", "status": "ok", "metadata": {"v": 1}}
    job = await producer.enqueue_job("heartbeat", **beat)
    assert job is not None
    try:
        await old.main()
    finally:
        await old.close()
    [letter] = await dead_letters.listing(engine)
    assert (letter.function, letter.payload, letter.error_message) == (
        "heartbeat",
        beat,
        "unknown function 'heartbeat'",
    )

    await dead_letters.replay(producer, [letter])
    worker = await run_worker()  # a worker that has the function
    assert worker.jobs_complete == 1
    assert await dead_letters.listing(engine) == []
    assert await rows(engine, "SELECT service_name, status FROM service_health") == [("s", "ok")]


async def test_a_payload_the_store_cannot_take_as_json_is_kept_as_bytes(
    engine: AsyncEngine,
) -> None:
    letter = {"function": "insert_nodes", "error": InvalidPayload("bad"), "tries": 1}
    deep = {"nodes": [deep_metadata(990)]}
    await dead_letters.record(engine, job_id="deep", payload=deep, **letter)
    async with engine.begin() as conn:  # a rule of the table this payload breaks
        await conn.execute(
            text("ALTER TABLE dead_letters ADD CONSTRAINT no_x CHECK (NOT payload ? 'x')")
        )
    await dead_letters.keep(engine, job_id="refused", payload={"x": [1]}, **letter)
    stored = {d.job_id: d for d in await dead_letters.listing(engine)}
    # compared as bytes: even == recurses, and 990 levels is near Python's limit
    assert stored["deep"].payload == {} and stored["deep"].raw == serialize(deep)
    assert stored["refused"].payload == {} and deserialize(stored["refused"].raw) == {"x": [1]}
    assert not stored["deep"].replayable and stored["deep"].error_message == "bad"
