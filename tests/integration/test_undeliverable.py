"""Jobs that cannot run end in the dead-letter store, in both worker modes: bytes that are not
msgpack, not an arq job, a function the worker does not have, nesting too deep; a dead letter that
cannot be written leaves its job queued; strict validation through a worker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix, retry_key_prefix
from arq.jobs import Job
from arq.worker import Worker
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline import JobFailed
from pipeline.nesting import JOB_MAX_DEPTH, JSON_MAX_DEPTH
from pipeline.ops import metrics
from pipeline.serialization import UNDELIVERABLE
from pipeline.settings import Settings
from pipeline.worker.service import PipelineWorker, worker_options
from tests.integration.helpers import Proxy, rows, seed_tree
from tests.undeliverable_jobs import CASES, ET, Case, deep_metadata, now_ms, push

Drain = Callable[..., Awaitable[Worker]]
LETTERS = (
    "SELECT job_id, function, error_class, error_message, payload, raw, tries, first_seen_at "
    "FROM dead_letters ORDER BY id"
)


@pytest.fixture(params=["arq", "pipeline"])
def drain(request: pytest.FixtureRequest, settings: Settings) -> Drain:
    """Run one burst worker until the queue is empty: stock arq (``arq pipeline.WorkerSettings``
    with ``PIPELINE_BATCH_CLAIMS=false``) or the batch worker (what both commands run)."""

    async def run(settings_overrides: dict[str, Any] | None = None) -> Worker:
        stock = {"batch_claims": False} if request.param == "arq" else {}
        overrides = {**stock, **(settings_overrides or {})}
        options = worker_options(settings.model_copy(update=overrides))
        options["ctx"]["configure_logging"] = False
        options.update({"burst": True, "handle_signals": False})
        worker = (Worker if request.param == "arq" else PipelineWorker)(**options)
        try:
            await worker.main()
        finally:
            await worker.close()
        return worker

    return run


async def failure(producer: ArqRedis, job_id: str, queue: str) -> JobFailed:
    """What a producer awaiting the job sees."""
    job = Job(job_id, producer, _queue_name=queue, _deserializer=producer.job_deserializer)
    with pytest.raises(JobFailed) as caught:
        await job.result(timeout=5)
    return caught.value


def dead_letters_counted(kind: str, reason: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value(
            "pipeline_dead_letters_total", {"kind": kind, "reason": reason}
        )
        or 0.0
    )


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_a_job_that_cannot_run_is_dead_lettered(
    case: Case, drain: Drain, producer: ArqRedis, engine: AsyncEngine, settings: Settings
) -> None:
    await seed_tree(producer, "p", ["a"])
    bad = await push(producer, settings.queue_name, case.data)
    good = await producer.enqueue_job(
        "update_scores", project_id="p", scores=[{"node_id": "a", "ucb_score": 0.5}]
    )
    assert good is not None
    kind = case.function if case.function == "insert_nodes" else UNDELIVERABLE
    counted = dead_letters_counted(kind, case.error)

    worker = await drain()

    assert (worker.jobs_complete, worker.jobs_failed) == (3, 1)  # retried: a score before its node
    assert (await good.result(timeout=5))["rows"] == 1
    assert await rows(engine, "SELECT node_id, ucb_score FROM nodes ORDER BY node_id") == [
        ("a", 0.5),
        ("root", None),
    ]
    [letter] = await rows(engine, LETTERS)
    assert letter[:7] == (
        bad,
        case.function,
        case.error,
        case.reason,
        case.payload or {},
        case.raw,
        1,
    )
    assert abs(letter.first_seen_at.timestamp() * 1000 - now_ms()) < 60_000
    failed = await failure(producer, bad, settings.queue_name)
    assert (failed.kind, failed.message) == (case.error, case.reason)
    assert dead_letters_counted(kind, case.error) == counted + 1
    assert await producer.exists(job_key_prefix + bad) == 0


async def test_an_undeliverable_job_keeps_its_enqueue_time(
    drain: Drain, producer: ArqRedis, settings: Settings
) -> None:
    [case] = [c for c in CASES if c.name == "kwargs not a map"]
    bad = await push(producer, settings.queue_name, case.data)
    await drain()
    job = Job(
        bad, producer, _queue_name=settings.queue_name, _deserializer=producer.job_deserializer
    )
    info = await job.result_info()
    assert info is not None and (info.function, info.success) == (UNDELIVERABLE, False)
    assert int(info.enqueue_time.timestamp() * 1000) == ET


async def test_a_dead_letter_that_cannot_be_written_leaves_the_job_queued(
    drain: Drain,
    producer: ArqRedis,
    engine: AsyncEngine,
    settings: Settings,
    proxy: Proxy,
    database_url: str,
) -> None:
    [case] = [c for c in CASES if c.name == "pickle"]
    through_proxy = make_url(database_url).set(port=proxy.port).render_as_string(False)
    bad = await push(producer, settings.queue_name, case.data)
    await proxy.down()
    draining = asyncio.create_task(drain({"database_url": through_proxy}))

    async def tries() -> int:
        return int(await producer.get(retry_key_prefix + bad) or 0)

    await asyncio.sleep(1.0)
    # run with PostgreSQL gone: still queued, with its bytes, no letter, and no try spent
    assert await tries() <= 1 and not draining.done()
    assert await producer.get(job_key_prefix + bad) == case.data
    assert await producer.zscore(settings.queue_name, bad) is not None
    assert await rows(engine, LETTERS) == []

    await proxy.up()
    worker = await asyncio.wait_for(draining, 30)
    assert (worker.jobs_failed, worker.jobs_complete) == (1, 0) and worker.jobs_retried >= 1
    [letter] = await rows(engine, LETTERS)
    assert (letter.job_id, letter.raw, letter.error_message) == (bad, case.data, case.reason)
    assert letter.tries == 1
    assert await producer.zscore(settings.queue_name, bad) is None
    assert (await failure(producer, bad, settings.queue_name)).message == case.reason


async def test_deep_json_is_rejected_at_validation_or_before(
    drain: Drain, producer: ArqRedis, engine: AsyncEngine, settings: Settings
) -> None:
    await seed_tree(producer, "p", [])

    def nodes(node_id: str, levels: int) -> dict[str, Any]:
        node = {"node_id": node_id, "parent_id": "root", "label": node_id}
        return {"project_id": "p", "nodes": [{**node, "metadata": deep_metadata(levels)}]}

    fine = await producer.enqueue_job("insert_nodes", **nodes("fine", JSON_MAX_DEPTH))
    deep = await producer.enqueue_job("insert_nodes", **nodes("deep", 200))
    # 990 levels: what once raised RecursionError in the JSON encoder (and in arq's log line)
    deeper = await producer.enqueue_job("insert_nodes", **nodes("deeper", 990))
    # deep junk where text belongs: refused by its type, and stored with the letter
    junk = {"project_id": "p", "nodes": [{"node_id": "j", "label": deep_metadata(400)}]}
    label = await producer.enqueue_job("insert_nodes", **junk)
    assert fine is not None and deep is not None and deeper is not None and label is not None
    sent = await producer.get(job_key_prefix + deeper.job_id)

    worker = await drain()

    assert worker.jobs_failed == 3
    assert (await fine.result(timeout=5))["rows"] == 1
    letters = {letter.job_id: letter for letter in await rows(engine, LETTERS)}
    assert len(letters) == 3
    assert letters[label.job_id].error_message == (
        "insert_nodes: nodes.0.label: Input should be a valid string"
    )
    assert letters[label.job_id].raw is None
    assert letters[label.job_id].payload["nodes"][0]["node_id"] == "j"
    shallow = letters[deep.job_id]
    assert (shallow.function, shallow.error_class, shallow.raw) == (
        "insert_nodes",
        "InvalidPayload",
        None,
    )
    assert shallow.error_message == (
        "insert_nodes: nodes.0.metadata: "
        f"Value error, JSON must not nest deeper than {JSON_MAX_DEPTH} levels"
    )
    assert shallow.payload == nodes("deep", 200)
    deepest = letters[deeper.job_id]
    assert (deepest.function, deepest.error_class, deepest.payload, deepest.raw) == (
        "insert_nodes",
        "InvalidPayload",
        {},
        sent,
    )
    assert deepest.error_message == f"insert_nodes: nested deeper than {JOB_MAX_DEPTH} levels"
    for job in (deep, deeper, label):
        with pytest.raises(JobFailed) as failed:
            await job.result(timeout=5)
        assert failed.value.kind == "InvalidPayload"


async def test_a_boolean_score_and_a_number_for_a_time_are_rejected(
    drain: Drain, producer: ArqRedis, engine: AsyncEngine
) -> None:
    await seed_tree(producer, "p", ["a"])
    score = await producer.enqueue_job(
        "update_scores", project_id="p", scores=[{"node_id": "a", "ucb_score": True}]
    )
    event = {"event_id": str(uuid.uuid4()), "event_type": "x", "occurred_at": 1_767_225_600}
    timed = await producer.enqueue_job("record_events", events=[event])
    assert score is not None and timed is not None
    worker = await drain()
    assert worker.jobs_failed == 2
    assert await rows(engine, "SELECT ucb_score FROM nodes WHERE node_id = 'a'") == [(None,)]
    assert await rows(engine, "SELECT count(*) FROM events") == [(0,)]
    messages = {
        score.job_id: "update_scores: scores.0.ucb_score: Input should be a valid number",
        timed.job_id: "record_events: events.0.occurred_at: "
        "Value error, a timestamp must be an ISO 8601 string with a time zone",
    }
    assert {
        (letter.job_id, letter.error_class, letter.error_message)
        for letter in await rows(engine, LETTERS)
    } == {(job_id, "InvalidPayload", message) for job_id, message in messages.items()}
