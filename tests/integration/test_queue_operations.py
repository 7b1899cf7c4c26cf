"""Seeing and acting on the queue against real Redis and PostgreSQL: ``pipeline jobs`` (list,
show, cancel into the dead-letter store), the queue-side metrics, and the guards of destructive
commands (an unknown function, ``--dry-run``, the question on a terminal)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pipeline.ops import dead_letters, metrics, queue_jobs
from pipeline.ops.queue_metrics import COLLECTOR, QUEUE_REGISTRY, QueueSampler, function_of
from pipeline.settings import Settings
from pipeline.worker.retries import CLOCK_PREFIX
from tests.integration.helpers import rows, scalar, seed_tree

NODE = {"project_id": "p", "nodes": [{"node_id": "x", "parent_id": "root", "label": "x"}]}


async def node_ids(engine: AsyncEngine) -> set[str]:
    return {row[0] for row in await rows(engine, "SELECT node_id FROM nodes")}


async def test_a_cancelled_job_becomes_a_dead_letter_and_never_runs(
    producer: ArqRedis,
    drain: Callable[[], Any],
    engine: AsyncEngine,
    settings: Settings,
    run_cli: Callable[..., Any],
) -> None:
    await seed_tree(producer, "p", ["a"])
    keep = await producer.enqueue_job("insert_nodes", **NODE)
    doomed = await producer.enqueue_job(
        "insert_nodes",
        project_id="p",
        nodes=[{"node_id": "gone", "parent_id": "root", "label": "gone"}],
    )
    assert keep is not None and doomed is not None

    code, out, _ = await run_cli("jobs", "cancel", doomed.job_id, "--dry-run")
    assert code == 0 and f"would cancel {doomed.job_id}" in out
    assert await producer.zscore(settings.queue_name, doomed.job_id) is not None

    code, out, _ = await run_cli("jobs", "cancel", doomed.job_id, "--reason", "bad batch")
    assert code == 0 and f"cancelled {doomed.job_id}" in out
    assert await producer.zscore(settings.queue_name, doomed.job_id) is None
    assert not await producer.exists(job_key_prefix + doomed.job_id)
    assert not await producer.exists(in_progress_key_prefix + doomed.job_id)
    [letter] = await dead_letters.listing(engine)
    assert (letter.job_id, letter.function, letter.error_class) == (
        doomed.job_id,
        "insert_nodes",
        "Cancelled",
    )
    assert letter.payload["nodes"][0]["node_id"] == "gone"
    assert "bad batch" in letter.error_message

    await drain()
    assert await node_ids(engine) == {"root", "a", "x"}  # every write but the cancelled one

    # Nothing vanished: the cancelled job is a dead letter, and replaying it writes it.
    code, _, _ = await run_cli("dead-letters", "replay", "--id", str(letter.id))
    assert code == 0
    await drain()
    assert await node_ids(engine) == {"root", "a", "x", "gone"}
    assert await dead_letters.listing(engine) == []


async def test_a_job_in_progress_or_gone_is_not_cancelled(
    producer: ArqRedis, engine: AsyncEngine, settings: Settings, run_cli: Callable[..., Any]
) -> None:
    job = await producer.enqueue_job("insert_nodes", **NODE)
    assert job is not None
    await producer.set(in_progress_key_prefix + job.job_id, b"1", px=60_000)
    code, _, err = await run_cli("jobs", "cancel", job.job_id, "--yes")
    assert code == 1 and "in progress" in err
    assert await producer.zscore(settings.queue_name, job.job_id) is not None
    code, _, err = await run_cli("jobs", "cancel", "no-such-job")
    assert code == 1 and "no job 'no-such-job'" in err
    assert await scalar(engine, "SELECT count(*) FROM dead_letters") == 0


async def test_a_cancel_that_cannot_write_its_dead_letter_leaves_the_job_queued(
    producer: ArqRedis, database_url: str, settings: Settings
) -> None:
    job = await producer.enqueue_job("insert_nodes", **NODE)
    assert job is not None
    broken = create_async_engine(database_url.rsplit("/", 1)[0] + "/no_such_database_here")
    try:
        with pytest.raises(Exception, match="no_such_database_here"):
            await queue_jobs.cancel(producer, broken, settings.queue_name, job.job_id, reason="x")
    finally:
        await broken.dispose()
    # Still queued, and not held: a worker takes it at once.
    assert await producer.zscore(settings.queue_name, job.job_id) is not None
    assert await producer.exists(job_key_prefix + job.job_id)
    assert not await producer.exists(in_progress_key_prefix + job.job_id)


async def test_jobs_lists_each_state_with_tries_and_last_error(
    producer: ArqRedis,
    make_worker: Callable[..., Any],
    settings: Settings,
    run_cli: Callable[..., Any],
) -> None:
    await producer.enqueue_job("upsert_project", project_id="p", name="p")
    orphan = await producer.enqueue_job(
        "insert_nodes",
        project_id="p",
        nodes=[{"node_id": "o", "parent_id": "nowhere", "label": "o"}],
    )
    assert orphan is not None
    # The orphan's parent never comes: the worker hands it back, to run again in a minute.
    worker = make_worker({"retry_wait_s": 3600.0, "reference_retry_delay_s": 60}, burst=False)
    running_worker = asyncio.create_task(worker.main())
    deadline = time.monotonic() + 20
    while not await producer.exists(CLOCK_PREFIX + orphan.job_id):
        assert time.monotonic() < deadline, "the orphan was never handed back"
        await asyncio.sleep(0.05)
    worker.burst, worker.max_burst_jobs = True, 0  # stop now, with the orphan still deferred
    await asyncio.wait_for(running_worker, timeout=30)
    due = await producer.enqueue_job("insert_nodes", **NODE)
    later = await producer.enqueue_job("insert_nodes", **NODE, _defer_by=3600)
    running = await producer.enqueue_job("upsert_project", project_id="q", name="q")
    assert due is not None and later is not None and running is not None
    await producer.set(in_progress_key_prefix + running.job_id, b"1", px=60_000)

    code, out, _ = await run_cli("jobs", "list", "--json")
    assert code == 0
    listed = {entry["job_id"]: entry for entry in map(json.loads, out.splitlines())}
    assert {job_id: entry["state"] for job_id, entry in listed.items()} == {
        orphan.job_id: "retrying",
        due.job_id: "due",
        later.job_id: "deferred",
        running.job_id: "in_progress",
    }
    retried = listed[orphan.job_id]
    assert retried["returns"] >= 1 and retried["function"] == "insert_nodes"
    assert retried["last_error"].startswith("MissingReference: ")
    assert listed[due.job_id]["last_error"] is None and listed[due.job_id]["tries"] == 0

    code, out, _ = await run_cli("jobs", "list", "--json", "--state", "deferred")
    assert [json.loads(line)["job_id"] for line in out.splitlines()] == [later.job_id]
    code, out, _ = await run_cli("jobs", "list", "--json", "--function", "upsert_project")
    assert [json.loads(line)["job_id"] for line in out.splitlines()] == [running.job_id]

    code, out, _ = await run_cli("jobs", "show", orphan.job_id)
    shown = json.loads(out)
    assert shown["payload"] == {
        "project_id": "p",
        "nodes": [{"node_id": "o", "parent_id": "nowhere", "label": "o"}],
    }
    assert shown["state"] == "retrying"

    code, out, _ = await run_cli("jobs")  # a table by default
    assert code == 0 and "retrying" in out and "insert_nodes" in out


@pytest.mark.parametrize(
    "command",
    [
        ("jobs", "list", "--function", "insert_node"),
        ("dead-letters", "list", "--function", "insert_node"),
        ("dead-letters", "replay", "--all", "--function", "insert_node"),
        ("dead-letters", "purge", "--older-than", "1d", "--function", "insert_node"),
    ],
)
async def test_an_unknown_function_is_an_error(
    command: tuple[str, ...], run_cli: Callable[..., Any]
) -> None:
    code, _, err = await run_cli(*command)
    assert code == 2
    assert "no job function 'insert_node'" in err and "insert_nodes" in err


async def test_destructive_dead_letter_commands_dry_run_and_ask_on_a_terminal(
    producer: ArqRedis,
    engine: AsyncEngine,
    settings: Settings,
    run_cli: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = [
        await dead_letters.record(
            engine,
            job_id=f"j{i}",
            function="insert_nodes",
            payload=NODE,
            error=ValueError("x"),
            tries=1,
        )
        for i in range(3)
    ]
    code, out, _ = await run_cli("dead-letters", "replay", "--all", "--dry-run")
    assert code == 0 and "would replay 3 dead letter(s)" in out
    code, out, _ = await run_cli("dead-letters", "purge", "--older-than", "0s", "--dry-run")
    assert code == 0 and "would purge 3" in out
    assert await producer.zcard(settings.queue_name) == 0
    assert len(await dead_letters.listing(engine)) == 3

    # On a terminal the command asks, and "no" does nothing.
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda _prompt: "n")
    code, out, _ = await run_cli("dead-letters", "purge", "--older-than", "0s")
    assert code == 1 and "nothing purged" in out
    code, out, _ = await run_cli("dead-letters", "replay", "--all")
    assert code == 1 and "nothing replayed" in out
    assert len(await dead_letters.listing(engine)) == 3
    assert await producer.zcard(settings.queue_name) == 0

    monkeypatch.setattr("builtins.input", lambda _prompt: "y")
    code, out, _ = await run_cli("dead-letters", "purge", "--older-than", "0s")
    assert code == 0 and "purged 3" in out
    assert await dead_letters.listing(engine) == [] and len(ids) == 3


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in QUEUE_REGISTRY.collect()
        for sample in family.samples
    }


async def test_the_queue_side_metrics_count_what_redis_and_postgres_hold(
    producer: ArqRedis, engine: AsyncEngine, settings: Settings
) -> None:
    for n in range(3):
        await producer.enqueue_job("insert_nodes", **NODE, _job_id=f"due-{n}")
    await producer.enqueue_job("update_scores", project_id="p", scores=[], _job_id="s")
    await producer.enqueue_job(
        "update_scores", project_id="p", scores=[], _job_id="later", _defer_by=600
    )
    await producer.set(in_progress_key_prefix + "due-0", b"1", px=60_000)
    oldest_due = await producer.zscore(settings.queue_name, "due-1")
    for function, reason in [("insert_nodes", ValueError), ("insert_nodes", ValueError)]:
        await dead_letters.record(
            engine,
            job_id=f"{function}-{time.monotonic_ns()}",
            function=function,
            payload={},
            error=reason("x"),
            tries=1,
        )
    await dead_letters.record(
        engine, job_id="c", function="update_scores", payload={}, error=KeyError("x"), tries=1
    )

    sampler = QueueSampler(producer, engine, settings.queue_name)
    await sampler.sample()
    got = _samples()
    assert got[("pipeline_queue_depth", ())] == 5
    jobs = {labels: v for (name, labels), v in got.items() if name == "pipeline_queue_jobs"}
    assert jobs == {
        (("function", "insert_nodes"), ("state", "in_progress")): 1,
        (("function", "insert_nodes"), ("state", "due")): 2,
        (("function", "update_scores"), ("state", "due")): 1,
        (("function", "update_scores"), ("state", "deferred")): 1,
    }
    assert oldest_due is not None
    expected_age = time.time() - oldest_due / 1000
    age = got[("pipeline_queue_oldest_due_age_seconds", ())]
    assert expected_age - 1 < age <= expected_age + 0.1
    unresolved = {
        labels: v for (name, labels), v in got.items() if name == "pipeline_dead_letters_unresolved"
    }
    assert unresolved == {
        (("function", "insert_nodes"), ("reason", "ValueError")): 2,
        (("function", "update_scores"), ("reason", "KeyError")): 1,
    }
    assert got[("pipeline_paused", ())] == 0
    assert got[("pipeline_workers_seen", ())] == 0
    assert got[("pipeline_source_up", (("source", "redis"),))] == 1
    assert got[("pipeline_source_up", (("source", "postgres"),))] == 1

    # Past the scan limit, jobs are counted by state only; the totals stay exact.
    await QueueSampler(producer, engine, settings.queue_name, scan_limit=2).sample()
    jobs = {labels: v for (name, labels), v in _samples().items() if name == "pipeline_queue_jobs"}
    assert sum(jobs.values()) == 5
    assert jobs[(("function", "unscanned"), ("state", "due"))] == 2
    assert jobs[(("function", "unscanned"), ("state", "deferred"))] == 1


async def test_the_queue_side_metrics_say_unknown_when_redis_does_not_answer(
    engine: AsyncEngine, settings: Settings
) -> None:
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)  # nothing listens
    try:
        await QueueSampler(dead, engine, settings.queue_name, timeout_s=0.5).sample()
    finally:
        await dead.aclose()
    got = _samples()
    assert math.isnan(got[("pipeline_queue_depth", ())])
    assert math.isnan(got[("pipeline_queue_oldest_due_age_seconds", ())])
    assert got[("pipeline_source_up", (("source", "redis"),))] == 0
    assert got[("pipeline_source_up", (("source", "postgres"),))] == 1
    COLLECTOR.latest = None


def test_the_function_is_read_from_the_first_bytes_of_a_job() -> None:
    from arq.jobs import serialize_job

    from pipeline.serialization import serialize

    body = serialize_job("insert_nodes", (), {"nodes": ["x" * 10_000]}, 3, 1, serializer=serialize)
    assert function_of(body[:320]) == "insert_nodes"
    assert function_of(serialize_job("f", (), {}, None, 1)) == "unknown"  # pickle
    assert function_of(b"") == "unknown"


async def test_each_committed_job_records_its_enqueue_to_commit_time(
    producer: ArqRedis, drain: Callable[[], Any]
) -> None:
    def observed() -> tuple[float, float]:
        count = metrics.REGISTRY.get_sample_value("pipeline_enqueue_to_commit_seconds_count")
        total = metrics.REGISTRY.get_sample_value("pipeline_enqueue_to_commit_seconds_sum")
        return count or 0.0, total or 0.0

    await seed_tree(producer, "p", ["a", "b"])
    await producer.enqueue_job("update_scores", project_id="p", scores=[])  # nothing to commit
    before = observed()
    await asyncio.sleep(0.3)  # the jobs wait in Redis: that counts
    started = time.monotonic()
    await drain()
    ran_s = time.monotonic() - started
    count, total = (now - then for now, then in zip(observed(), before, strict=True))
    assert count == 2  # the project and the nodes; the empty job committed nothing
    assert 0.3 * count <= total <= (0.3 + ran_s + 1) * count
