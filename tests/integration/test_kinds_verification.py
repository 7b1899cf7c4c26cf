"""The verification, training, checkpoint and health kinds through plain enqueue_job and a real
worker: round trips, re-delivery, validation, concurrent activation, and the audit log."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.worker import Worker
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline import JobFailed
from pipeline.kinds.verification import CLAIMS
from pipeline.settings import Settings
from tests.integration.helpers import redeliver, rows, scalar


def uid(n: int) -> str:
    return str(uuid.UUID(int=n))


async def test_claims_verifications_consensus_round_trip_and_audit(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine, settings: Settings
) -> None:
    jobs = [
        await producer.enqueue_job(
            "upsert_claims",
            claims=[
                {
                    "external_id": "c1",
                    "content": "Water boils at 100C",
                    "claim_type": "fact",
                    "source": "wiki",
                    "metadata": {"lang": "en"},
                    "version": 1,
                }
            ],
            actor="ingest",
        ),
        await producer.enqueue_job(
            "record_verifications",
            results=[
                {
                    "result_id": uid(1),
                    "claim_id": "c1",
                    "framework": "empirical",
                    "result": {"valid": True},
                    "confidence": 0.9,
                    "evidence": {"src": ["a"]},
                    "processing_time_ms": 12,
                    "model_version": "m1",
                },
                {
                    "result_id": uid(2),
                    "claim_id": "c1",
                    "framework": "logical",
                    "result": {"valid": True},
                    "confidence": 0.7,
                },
            ],
        ),
        await producer.enqueue_job(
            "record_consensus",
            decisions=[
                {
                    "claim_id": "c1",
                    "consensus_result": {"valid": True},
                    "participating_frameworks": ["empirical", "logical"],
                    "consensus_type": "majority",
                    "consensus_confidence": 0.8,
                    "version": 1,
                }
            ],
            actor="consensus-svc",
        ),
    ]
    worker = await run_worker()
    assert worker.jobs_failed == 0
    assert await rows(
        engine, "SELECT external_id, content, claim_type, source, metadata FROM claims"
    ) == [("c1", "Water boils at 100C", "fact", "wiki", {"lang": "en"})]
    assert await rows(
        engine,
        "SELECT framework, result, confidence, evidence, processing_time_ms, model_version "
        "FROM verification_results ORDER BY framework",
    ) == [
        ("empirical", {"valid": True}, 0.9, {"src": ["a"]}, 12, "m1"),
        ("logical", {"valid": True}, 0.7, {}, None, None),
    ]
    assert await rows(
        engine,
        "SELECT participating_frameworks, consensus_type, consensus_confidence "
        "FROM consensus_decisions",
    ) == [(["empirical", "logical"], "majority", 0.8)]

    # A newer claim version and an older decision: the first applies (and is audited), the
    # second does not (and is not).
    await producer.enqueue_job(
        "upsert_claims",
        claims=[{"external_id": "c1", "content": "Water boils at 100C at sea level", "version": 2}],
        actor="editor",
    )
    await producer.enqueue_job(
        "record_consensus",
        decisions=[
            {
                "claim_id": "c1",
                "consensus_result": {"valid": False},
                "participating_frameworks": ["logical"],
                "consensus_type": "single",
                "consensus_confidence": 0.1,
                "version": 0,
            }
        ],
    )
    for job in jobs:  # re-delivered appends and upserts change nothing
        await redeliver(producer, job, settings.queue_name)
    worker = await run_worker()
    assert worker.jobs_failed == 0
    assert await scalar(engine, "SELECT count(*) FROM verification_results") == 2
    assert await scalar(engine, "SELECT consensus_type FROM consensus_decisions") == "majority"
    trail = await rows(
        engine,
        "SELECT entity_type, entity_id, action, changes, actor, application FROM audit_log "
        "ORDER BY id",
    )
    # One row per row written, by the trigger; the verifications' jobs named no actor.
    assert sorted((t[0], t[1], t[2], t[4]) for t in trail) == sorted(
        [
            ("claim", "c1", "insert", "ingest"),
            ("verification", "00000000-0000-0000-0000-000000000001", "insert", None),
            ("verification", "00000000-0000-0000-0000-000000000002", "insert", None),
            ("consensus", "c1", "insert", "consensus-svc"),
            ("claim", "c1", "update", "editor"),
        ]
    )
    assert {t[5] for t in trail} == {"pipeline"}
    inserted, updated = (t[3] for t in trail if t[0] == "claim")
    assert inserted.keys() == {"after"}
    assert inserted["after"]["content"] == "Water boils at 100C"
    # An update holds the changed columns only, before and after.
    assert updated == {
        "before": {
            "content": "Water boils at 100C",
            "claim_type": "fact",
            "source": "wiki",
            "metadata": {"lang": "en"},
            "version": 1,
        },
        "after": {
            "content": "Water boils at 100C at sea level",
            "claim_type": None,
            "source": None,
            "metadata": {},
            "version": 2,
        },
    }


async def test_audit_rows_commit_and_roll_back_with_their_mutation(engine: AsyncEngine) -> None:
    rows_ = CLAIMS.merged_rows([("c9", "text", None, None, "{}", 5, "tester")])
    async with engine.connect() as conn:
        transaction = await conn.begin()
        await CLAIMS.write(conn, rows_)
        seen = await conn.exec_driver_sql(
            "SELECT (SELECT count(*) FROM claims), (SELECT count(*) FROM audit_log)"
        )
        assert seen.one() == (1, 1)
        await transaction.rollback()
    assert await rows(
        engine, "SELECT (SELECT count(*) FROM claims), (SELECT count(*) FROM audit_log)"
    ) == [(0, 0)]


async def test_a_confidence_out_of_range_is_rejected_alone(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine
) -> None:
    good = [
        await producer.enqueue_job(
            "record_verifications",
            results=[
                {
                    "result_id": uid(i),
                    "claim_id": f"c{i}",
                    "framework": "f",
                    "result": {},
                    "confidence": i / 20,
                }
            ],
        )
        for i in range(20)
    ]
    bad = await producer.enqueue_job(
        "record_verifications",
        results=[
            {
                "result_id": uid(99),
                "claim_id": "c",
                "framework": "f",
                "result": {},
                "confidence": 1.5,
            }
        ],
    )
    worker = await run_worker()
    assert worker.jobs_complete == 20 and worker.jobs_failed == 1
    assert [(await job.result(timeout=5))["rows"] for job in good] == [1] * 20
    with pytest.raises(JobFailed) as failed:
        await bad.result(timeout=5)
    assert failed.value.kind == "InvalidPayload"
    assert failed.value.message == (
        "record_verifications: results.0.confidence: Input should be less than or equal to 1"
    )
    assert await rows(engine, "SELECT function, error_class FROM dead_letters") == [
        ("record_verifications", "InvalidPayload")
    ]
    assert await scalar(engine, "SELECT count(*) FROM verification_results") == 20


async def test_training_data_is_recorded_and_marked_used_once(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine
) -> None:
    items = [
        {
            "id": uid(i),
            "framework": "empirical" if i % 2 else "logical",
            "claim_text": f"t{i}",
            "validity": bool(i % 3),
            "confidence": 0.5,
            "evidence": {"i": i},
        }
        for i in range(10)
    ]
    await producer.enqueue_job("record_training_data", items=items)
    await run_worker()
    first = await producer.enqueue_job(
        "mark_training_used", training_batch_id="b1", ids=[uid(i) for i in range(5)]
    )
    await run_worker()
    # A later batch claims overlapping rows: those already used stay in b1.
    await producer.enqueue_job(
        "mark_training_used", training_batch_id="b2", ids=[uid(i) for i in range(3, 8)]
    )
    missing = await producer.enqueue_job(
        "mark_training_used", training_batch_id="b3", ids=[uid(42)]
    )
    worker = await run_worker()
    assert (await first.result(timeout=5))["rows"] == 5
    assert worker.jobs_failed == 1
    with pytest.raises(JobFailed, match="do not exist yet"):
        await missing.result(timeout=5)
    assert await rows(
        engine,
        "SELECT training_batch_id, count(*) FROM training_data GROUP BY 1 ORDER BY 1 NULLS LAST",
    ) == [("b1", 5), ("b2", 3), (None, 2)]
    assert await scalar(engine, "SELECT count(*) FROM training_data WHERE used_in_training") == 8


async def test_heartbeats_only_move_forward(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine
) -> None:
    await producer.enqueue_job(
        "heartbeat",
        service="verifier",
        instance_id="i1",
        status="ok",
        at="2026-01-01T00:00:10+00:00",
    )
    await producer.enqueue_job(
        "heartbeat",
        service="verifier",
        instance_id="i1",
        status="old",
        at="2026-01-01T00:00:05+00:00",
    )
    await producer.enqueue_job(
        "heartbeat", service="verifier", instance_id="i2", status="ok", metadata={"load": 0.3}
    )
    worker = await run_worker()
    assert worker.jobs_failed == 0
    state = await rows(
        engine,
        "SELECT instance_id, status, last_heartbeat, metadata FROM service_health ORDER BY 1",
    )
    assert (state[0][0], state[0][1], state[0][2].isoformat()) == (
        "i1",
        "ok",
        "2026-01-01T00:00:10+00:00",
    )
    assert (state[1][1], state[1][3]) == ("ok", {"load": 0.3})


async def test_activating_checkpoints_concurrently_leaves_the_newest_active(
    producer: ArqRedis, make_worker: Callable[..., Worker], engine: AsyncEngine
) -> None:
    for framework in ("vision", None):
        for v in range(5):
            await producer.enqueue_job(
                "register_checkpoint",
                model_name="m",
                version=f"{framework}-v{v}",
                checkpoint_path=f"/ckpt/{v}",
                framework=framework,
                metrics={"acc": v / 10},
            )
    await make_worker().main()
    rng = random.Random(5)
    newest: dict[str | None, tuple[int, str]] = {}
    for activation in rng.sample(range(1, 100_000), 300):
        framework = rng.choice(["vision", None])
        version = f"{framework}-v{rng.randrange(5)}"
        newest[framework] = max(newest.get(framework, (0, "")), (activation, version))
        await producer.enqueue_job(
            "activate_checkpoint",
            model_name="m",
            version=version,
            framework=framework,
            activation_version=activation,
            actor="trainer",
        )
    # Two workers at once, each taking a few jobs at a time: their transactions race.
    first, second = make_worker(max_jobs=20), make_worker(max_jobs=20)
    await asyncio.gather(first.main(), second.main())
    assert first.jobs_failed == second.jobs_failed == 0
    assert first.jobs_complete > 0 and second.jobs_complete > 0
    active = await rows(
        engine,
        "SELECT framework, version, activation_version FROM model_checkpoints "
        "WHERE is_active ORDER BY framework NULLS LAST",
    )
    assert active == [
        ("vision", newest["vision"][1], newest["vision"][0]),
        (None, newest[None][1], newest[None][0]),
    ]
    # Each activation that took effect is audited with its job's actor; the deactivations it
    # caused name no actor (their rows are other checkpoints).
    audits = await rows(
        engine,
        "SELECT entity_id, actor, changes->'after'->>'is_active' FROM audit_log "
        "WHERE entity_type = 'model_checkpoint' AND action = 'update'",
    )
    assert {(a[1], a[2]) for a in audits} == {("trainer", "true"), (None, "false")}
    for framework in ("vision", None):
        assert ("m/" + newest[framework][1], "trainer", "true") in audits
