"""Immutable records keep their first definition, however the jobs are batched.

A second, different definition under an existing identity (a rubric version, an event id…) is
dead-lettered as a ``Conflict`` and only that job fails; the same definition again is a no-op
that completes. Each case runs with both definitions in ONE batch (both jobs wait in the
coalescer while an earlier flush is held) and ACROSS batches (the worker runs between them),
and once against a definition another transaction commits while the worker's insert waits.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.worker import Worker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.settings import Settings
from pipeline.worker.service import PipelineWorker, worker_options
from tests.integration.batching import (
    Call,
    across_batches,
    conflict_of,
    enqueue,
    in_one_batch,
    run,
    until,
    waiting_on_lock,
)
from tests.integration.helpers import rows, scalar

DEAD = "SELECT function, error_class, error_message FROM dead_letters ORDER BY id"
T0 = "2026-03-01T12:00:00+00:00"
EVENT, OTHER_EVENT = uuid.UUID(int=1), uuid.UUID(int=2)
SAMPLE, RESULT, EXAMPLE = uuid.UUID(int=3), uuid.UUID(int=4), uuid.UUID(int=5)


def rubric(version: int, *principles: str, weight: float = 1.0) -> Call:
    return (
        "save_rubric",
        {
            "project_id": "p",
            "rubric_id": "quality",
            "version": version,
            "principles": [
                {"name": n, "description": f"is it {n}?", "weight": weight} for n in principles
            ],
        },
    )


@pytest.fixture(params=["batch", "stock"])
def make(request: pytest.FixtureRequest, settings: Settings) -> Callable[[], Worker]:
    """Burst workers of the test's mode: ``pipeline worker``'s class, or stock arq's."""
    cls = PipelineWorker if request.param == "batch" else Worker

    def build() -> Worker:
        options = worker_options(settings)
        options["ctx"]["configure_logging"] = False
        return cls(**options, burst=True, handle_signals=False)

    return build


async def stored_principles(engine: AsyncEngine, version: int) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in await rows(
            engine,
            "SELECT name, description, weight, position FROM rubric_principles "
            "WHERE rubric_id = 'quality' AND rubric_version = :v ORDER BY position",
            v=version,
        )
    ]


@pytest.mark.parametrize("together", [True, False], ids=["one-batch", "across-batches"])
async def test_a_rubric_version_keeps_its_first_definition(
    producer: ArqRedis,
    engine: AsyncEngine,
    make: Callable[[], Worker],
    together: bool,
) -> None:
    await enqueue(producer, [("upsert_project", {"project_id": "p", "name": "p"})])
    await run(make)
    calls = [
        rubric(1, "alpha"),
        rubric(1, "beta", "gamma"),
        rubric(2, "delta"),  # another version, in the same batch as the conflicting one
        (
            "record_events",
            {"events": [{"event_id": str(EVENT), "event_type": "t", "occurred_at": T0}]},
        ),
        rubric(1, "alpha"),  # the first definition again
        rubric(1, "alpha", weight=2.0),
    ]
    if together:
        jobs, worker = await in_one_batch(producer, engine, make, calls)
    else:
        jobs, worker = await across_batches(producer, make, calls)

    first, other, later, event, again, reweighed = (
        jobs[0],
        jobs[1],
        jobs[2],
        jobs[3],
        jobs[4],
        jobs[5],
    )
    assert worker.jobs_failed == 2 and worker.jobs_retried == 0
    for job in (first, later, event, again):
        assert (await job.result(timeout=5))["rows"] == 1
    assert await stored_principles(engine, 1) == [("alpha", "is it alpha?", 1.0, 0)]
    assert await stored_principles(engine, 2) == [("delta", "is it delta?", 1.0, 0)]
    assert await scalar(engine, "SELECT count(*) FROM events") == 1
    names = "rubrics (project_id=p, rubric_id=quality, version=1)"
    assert names in await conflict_of(other)
    assert "principles differ: stored [alpha], sent [beta, gamma]" in await conflict_of(other)
    assert "descriptions or weights" in await conflict_of(reweighed)
    assert [(d[0], d[1]) for d in await rows(engine, DEAD)] == [("save_rubric", "Conflict")] * 2


@dataclass(frozen=True)
class Case:
    """One immutable kind: what must exist first, a definition, the same again (spelled
    differently where that means the same), a different one under the same identity, an
    unrelated write, the query that reads the stored definition back and what it returns, and
    how the conflict names the identity and what differs."""

    setup: list[Call]
    first: Call
    same: Call
    different: Call
    unrelated: Call
    stored: str
    expected: list[tuple[Any, ...]]
    identity: str
    differs: str


def event(event_id: uuid.UUID, payload: dict[str, Any]) -> Call:
    item = {"event_id": str(event_id), "event_type": "phase", "payload": payload, "occurred_at": T0}
    return "record_events", {"events": [item]}


def transcript(seq: int, content: str, at: str = T0) -> Call:
    item = {"task_id": "T", "phase": "plan", "iteration": 0, "seq": seq, "role": "response"}
    return "append_transcripts", {"transcripts": [{**item, "content": content, "timestamp": at}]}


def score(principle: str, value: float) -> Call:
    item = {"node_id": "n", "rubric_id": "quality", "rubric_version": 1, "principle": principle}
    return "save_principle_scores", {"project_id": "p", "scores": [{**item, "score": value}]}


def sample(sample_id: uuid.UUID, label: str, metadata: dict[str, Any]) -> Call:
    item = {"sample_id": str(sample_id), "node_id": "n", "label": label, "metadata": metadata}
    return "save_labeled_samples", {"project_id": "p", "samples": [item]}


def verification(result_id: uuid.UUID, result: dict[str, Any], confidence: float = 0.5) -> Call:
    item = {"result_id": str(result_id), "claim_id": "c", "framework": "f", "result": result}
    return "record_verifications", {"results": [{**item, "confidence": confidence}]}


def example(example_id: uuid.UUID, validity: bool, evidence: dict[str, Any]) -> Call:
    item = {"id": str(example_id), "framework": "f", "claim_text": "t", "evidence": evidence}
    return "record_training_data", {"items": [{**item, "validity": validity}]}


def checkpoint(version: str, path: str, metrics: dict[str, Any]) -> Call:
    return "register_checkpoint", {
        "model_name": "m",
        "version": version,
        "checkpoint_path": path,
        "metrics": metrics,
    }


TAXONOMY = [
    ("upsert_project", {"project_id": "p", "name": "p"}),
    ("insert_nodes", {"project_id": "p", "nodes": [{"node_id": "n", "label": "n"}]}),
    rubric(1, "accuracy", "clarity"),
]
CASES = {
    "events": Case(
        [],
        event(EVENT, {"a": 1, "b": [True, None]}),
        event(EVENT, {"b": [True, None], "a": 1.0}),
        event(EVENT, {"a": 2, "b": [True, None]}),
        event(OTHER_EVENT, {}),
        f"SELECT payload FROM events WHERE event_id = '{EVENT}'",
        [({"a": 1, "b": [True, None]},)],
        f"events (event_id={EVENT})",
        "differs in payload",
    ),
    "transcripts": Case(
        [],
        transcript(0, "first"),
        transcript(0, "first", at="2026-03-01T13:00:00+01:00"),  # the same instant
        transcript(0, "first", at="2026-03-01T12:00:01+00:00"),
        transcript(1, "next"),
        "SELECT content, timestamp FROM transcripts WHERE seq = 0",
        [("first", dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC))],
        "transcripts (task_id=T, phase=plan, iteration=0, seq=0)",
        "differs in timestamp",
    ),
    "principle_scores": Case(
        TAXONOMY,
        score("accuracy", 0.5),
        score("accuracy", 0.5),
        score("accuracy", 0.75),
        score("clarity", 0.25),
        "SELECT score FROM principle_scores s JOIN rubric_principles p USING (principle_id) "
        "WHERE p.name = 'accuracy'",
        [(0.5,)],
        "principle_scores (project_id=p, node_id=n, rubric_id=quality, rubric_version=1, "
        "principle=accuracy)",
        "differs in score",
    ),
    "labeled_samples": Case(
        TAXONOMY,
        sample(SAMPLE, "good", {"k": "v", "n": 1}),
        sample(SAMPLE, "good", {"n": 1, "k": "v"}),
        sample(SAMPLE, "bad", {"k": "v", "n": 1}),
        sample(uuid.UUID(int=30), "meh", {}),
        f"SELECT label, metadata FROM labeled_samples WHERE sample_id = '{SAMPLE}'",
        [("good", {"k": "v", "n": 1})],
        f"labeled_samples (sample_id={SAMPLE})",
        "differs in label",
    ),
    "verification_results": Case(
        [],
        verification(RESULT, {"verdict": True, "why": "x"}),
        verification(RESULT, {"why": "x", "verdict": True}),
        verification(RESULT, {"verdict": 1, "why": "x"}),  # as in jsonb, true is not 1
        verification(uuid.UUID(int=40), {}),
        f"SELECT result, confidence FROM verification_results WHERE result_id = '{RESULT}'",
        [({"verdict": True, "why": "x"}, 0.5)],
        f"verification_results (result_id={RESULT})",
        "differs in result",
    ),
    "training_data": Case(
        [],
        example(EXAMPLE, True, {"src": ["a", "b"]}),
        example(EXAMPLE, True, {"src": ["a", "b"]}),
        example(EXAMPLE, False, {"src": ["a", "b"]}),
        example(uuid.UUID(int=50), False, {}),
        f"SELECT validity, evidence FROM training_data WHERE id = '{EXAMPLE}'",
        [(True, {"src": ["a", "b"]})],
        f"training_data (id={EXAMPLE})",
        "differs in validity",
    ),
    "model_checkpoints": Case(
        [],
        checkpoint("v1", "/ckpt/a", {"f1": 0.5, "loss": 0.1}),
        checkpoint("v1", "/ckpt/a", {"loss": 0.1, "f1": 0.5}),
        checkpoint("v1", "/ckpt/b", {"f1": 0.5, "loss": 0.1}),
        checkpoint("v2", "/ckpt/c", {}),
        "SELECT checkpoint_path, metrics FROM model_checkpoints WHERE version = 'v1'",
        [("/ckpt/a", {"f1": 0.5, "loss": 0.1})],
        "model_checkpoints (model_name=m, version=v1)",
        "differs in checkpoint_path",
    ),
}


@pytest.mark.parametrize("together", [True, False], ids=["one-batch", "across-batches"])
@pytest.mark.parametrize("name", list(CASES))
async def test_an_immutable_record_keeps_its_first_definition(
    producer: ArqRedis,
    engine: AsyncEngine,
    make_worker: Callable[..., Worker],
    name: str,
    together: bool,
) -> None:
    case = CASES[name]
    if case.setup:
        await enqueue(producer, case.setup)
        await run(make_worker)
    calls = [case.first, case.same, case.different, case.unrelated]
    if together:
        jobs, worker = await in_one_batch(producer, engine, make_worker, calls)
    else:
        jobs, worker = await across_batches(producer, make_worker, calls)

    first, same, different, unrelated = jobs
    assert worker.jobs_failed == 1 and worker.jobs_retried == 0
    for job in (first, same, unrelated):
        assert (await job.result(timeout=5))["rows"] == 1
    assert [tuple(r) for r in await rows(engine, case.stored)] == case.expected
    message = await conflict_of(different)
    assert f"{case.identity}: a different definition is already written" in message
    assert case.differs in message
    [(function, error_class, reason)] = await rows(engine, DEAD)
    assert (function, error_class, reason) == (case.first[0], "Conflict", message)
    count = f"SELECT count(*) FROM {name}"  # the case's name is its table's
    assert await scalar(engine, count) == 2
    # The first definition once more (a re-delivery) completes and changes nothing.
    await enqueue(producer, [case.first])
    assert (await run(make_worker)).jobs_complete == 1
    assert [tuple(r) for r in await rows(engine, case.stored)] == case.expected
    assert await scalar(engine, count) == 2
    assert len(await rows(engine, DEAD)) == 1


async def test_a_definition_committed_while_the_insert_waits_for_it_is_compared(
    producer: ArqRedis, engine: AsyncEngine, make_worker: Callable[..., Worker]
) -> None:
    # Another writer's transaction holds the event, uncommitted, when the worker's insert runs:
    # the insert waits for it and skips the row once it commits, after the statement's snapshot
    # was taken. The comparison must still see that row.
    async with engine.connect() as other:
        await other.execute(
            text(
                "INSERT INTO events (event_id, event_type, payload, occurred_at) "
                "VALUES (:e, 'phase', '{\"a\": 1}', :t)"
            ),
            {"e": EVENT, "t": dt.datetime.fromisoformat(T0)},
        )
        [job] = await enqueue(producer, [event(EVENT, {"a": 2})])
        worker = make_worker()
        running = asyncio.create_task(worker.main())

        await until(
            lambda: waiting_on_lock(engine, "INSERT INTO events"),
            "the worker's insert to wait for the other transaction",
        )
        await other.commit()
    try:
        await running
    finally:
        await worker.close()
    assert "differs in payload" in await conflict_of(job)
    assert await rows(engine, f"SELECT payload FROM events WHERE event_id = '{EVENT}'") == [
        ({"a": 1},)
    ]
