"""``arq pipeline.WorkerSettings`` builds a stock arq ``Worker``; its start-up makes that worker a
``PipelineWorker`` (batched claims) unless ``batch_claims`` is off."""

from __future__ import annotations

from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.jobs import Job
from arq.worker import Worker

from pipeline.settings import Settings
from pipeline.worker.service import PipelineWorker, worker_options
from tests.integration.helpers import count_claims, seed_tree


def stock_worker(settings: Settings, **overrides: Any) -> Worker:
    """What arq's command builds: ``Worker`` of the settings' options."""
    options = worker_options(settings.model_copy(update=overrides))
    options["ctx"]["configure_logging"] = False
    return Worker(**{**options, "burst": True, "handle_signals": False})


async def enqueue(producer: ArqRedis, count: int) -> list[Job]:
    await seed_tree(producer, "p", ["a"])
    jobs = []
    for version in range(1, count + 1):
        job = await producer.enqueue_job(
            "update_scores",
            project_id="p",
            scores=[{"node_id": "a", "version": version, "rubric_score": 0.5}],
        )
        assert job is not None
        jobs.append(job)
    return jobs


async def test_the_arq_command_claims_in_batches(
    producer: ArqRedis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = count_claims(monkeypatch)
    jobs = await enqueue(producer, 300)
    worker = stock_worker(settings)
    try:
        await worker.main()
    finally:
        await worker.close()
    assert type(worker) is PipelineWorker
    assert worker.jobs_complete == 302 and worker.jobs_failed == 0
    assert max(claims) > 50, claims  # many jobs a claim, not one at a time
    for job in jobs:
        assert (await job.result(timeout=5))["rows"] == 1


async def test_batch_claims_off_keeps_stock_arq(producer: ArqRedis, settings: Settings) -> None:
    jobs = await enqueue(producer, 20)
    worker = stock_worker(settings, batch_claims=False)
    try:
        await worker.main()
    finally:
        await worker.close()
    assert type(worker) is Worker and worker.jobs_complete == 22
    assert (await jobs[-1].result(timeout=5))["rows"] == 1
