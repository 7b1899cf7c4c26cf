"""arq's features under the batch worker, batched: aborts of queued and running jobs, cron jobs,
``retry_jobs=False``, ``after_job_end``, ``queue_read_limit`` and arq's per-job log lines.

Plain arq jobs with arq's own serializer, so results are arq's exceptions (arq's own suite runs
against the batch worker too: ``tests/arq_suite``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from arq import Retry, cron, func
from arq.connections import ArqRedis, create_pool
from arq.constants import abort_jobs_ss, in_progress_key_prefix, result_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker

from pipeline.redis_queue import queue_redis
from pipeline.settings import Settings
from pipeline.worker.batch.claiming import BatchWorker
from pipeline.worker.service import PipelineWorker, worker_options
from tests.integration.helpers import count_claims, seed_tree, stop_worker


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[ArqRedis]:
    redis = await create_pool(queue_redis(settings), default_queue_name=settings.queue_name)
    yield redis
    await redis.aclose()


@pytest.fixture
def batch_worker(pool: ArqRedis, settings: Settings) -> Callable[..., BatchWorker]:
    def build(*functions: Any, **options: Any) -> BatchWorker:
        return BatchWorker(
            functions=list(functions),
            redis_pool=pool,
            queue_name=settings.queue_name,
            burst=options.pop("burst", True),
            poll_delay=options.pop("poll_delay", 0.05),
            handle_signals=False,
            **options,
        )

    return build


async def _sleeps(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(3600)


async def _answer(ctx: dict[str, Any], value: int = 42) -> int:
    return value


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "arq.worker"]


async def test_aborts_of_running_and_queued_jobs(
    pool: ArqRedis,
    batch_worker: Callable[..., BatchWorker],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="arq.worker")
    claims = count_claims(monkeypatch)
    jobs = [await pool.enqueue_job("sleeps", _job_id=f"job-{i}") for i in range(8)]
    assert all(jobs)
    worker = batch_worker(func(_sleeps, name="sleeps"), allow_abort_jobs=True, max_jobs=5)
    running = asyncio.create_task(worker.main())
    try:
        for _ in range(200):
            if len(worker.job_tasks) == 5:
                break
            await asyncio.sleep(0.01)
        assert sorted(worker.job_tasks) == [f"job-{i}" for i in range(5)]
        # What Job.abort() does, for all eight at once: five running, three queued.
        await pool.zadd(abort_jobs_ss, {f"job-{i}": timestamp_ms() for i in range(8)})
        for job in jobs:
            assert job is not None
            with pytest.raises(asyncio.CancelledError):
                await job.result(timeout=10, poll_delay=0.05)
        await asyncio.wait_for(running, 10)  # burst: it ends once the queue is empty
    finally:
        await stop_worker(worker, running)
    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (0, 8, 0)
    assert worker.aborting_tasks == set() and worker.job_tasks == {} and worker.tasks == {}
    assert claims == [5, 3]  # batched: one claim for the first five, one for the rest
    log = lines(caplog)
    assert sum(line.endswith(" aborted") for line in log) == 5
    assert sum(line.endswith(" aborted before start") for line in log) == 3
    assert not await pool.zcard(abort_jobs_ss) and not await pool.zcard(worker.queue_name)


async def test_an_abort_is_left_alone_unless_aborts_are_allowed(
    pool: ArqRedis, batch_worker: Callable[..., BatchWorker]
) -> None:
    job = await pool.enqueue_job("answer", _job_id="kept")
    assert job is not None
    await pool.zadd(abort_jobs_ss, {"kept": timestamp_ms()})
    worker = batch_worker(func(_answer, name="answer"))
    await worker.main()
    assert await job.result(timeout=1) == 42


calls: list[str] = []


async def _tick(ctx: dict[str, Any]) -> str:
    calls.append(ctx["job_id"])
    return "tick"


async def test_a_cron_job_runs_and_keeps_its_in_progress_key(
    pool: ArqRedis, batch_worker: Callable[..., BatchWorker], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="arq.worker")
    calls.clear()
    worker = batch_worker(cron_jobs=[cron(_tick, name="tick", run_at_startup=True)])
    await worker.main()
    await worker.close()
    assert len(calls) == 1 and calls[0].startswith("tick:")
    assert worker.jobs_complete == 1
    # arq keeps a cron job's in-progress key a while, so another worker does not run it again
    assert 0 < await pool.pttl(in_progress_key_prefix + calls[0]) <= 60_000
    assert not await pool.zcard(worker.queue_name)
    assert any(line.endswith("← tick ● 'tick'") for line in lines(caplog)), lines(caplog)


async def _retries(ctx: dict[str, Any]) -> None:
    raise Retry(defer=1)


async def test_retry_jobs_false_fails_what_would_run_again(
    pool: ArqRedis, batch_worker: Callable[..., BatchWorker]
) -> None:
    job = await pool.enqueue_job("retries")
    assert job is not None
    worker = batch_worker(func(_retries, name="retries"), retry_jobs=False)
    await worker.main()
    await worker.close()
    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (0, 1, 0)
    with pytest.raises(Retry):
        await job.result(timeout=1)


async def test_after_job_end_sees_the_ending_in_redis(
    pool: ArqRedis, batch_worker: Callable[..., BatchWorker]
) -> None:
    seen: list[tuple[str, int, int]] = []

    async def after(ctx: dict[str, Any]) -> None:
        job_id = ctx["job_id"]
        seen.append(
            (
                job_id,
                await pool.exists(result_key_prefix + job_id),
                await pool.exists(in_progress_key_prefix + job_id),
            )
        )

    for i in range(20):
        await pool.enqueue_job("answer", i, _job_id=f"job-{i}")
    worker = batch_worker(func(_answer, name="answer"), after_job_end=after)
    await worker.main()
    await worker.close()
    assert sorted(seen) == sorted((f"job-{i}", 1, 0) for i in range(20))


@pytest.mark.parametrize("worker_class", [Worker, BatchWorker])
async def test_queue_read_limit_caps_a_poll(
    pool: ArqRedis, settings: Settings, worker_class: type[Worker]
) -> None:
    """As in arq, the limit caps the ids a poll looks at, running ones included."""
    release, hold = asyncio.Event(), asyncio.Event()

    async def waits(ctx: dict[str, Any]) -> None:
        await (release if ctx["job_id"] < "job-3" else hold).wait()

    for i in range(10):
        await pool.enqueue_job("waits", _job_id=f"job-{i}")
    worker = worker_class(
        functions=[func(waits, name="waits")],
        redis_pool=pool,
        queue_name=settings.queue_name,
        queue_read_limit=3,
        max_jobs=10,
        handle_signals=False,
    )
    try:
        await worker._poll_iteration()
        assert sorted(worker.tasks) == ["job-0", "job-1", "job-2"]
        await worker._poll_iteration()  # the first three ids are running: nothing new
        assert len(worker.tasks) == 3
        release.set()
        for _ in range(100):
            if await pool.zcard(settings.queue_name) == 7:
                break
            await asyncio.sleep(0.01)
        await worker._poll_iteration()
        assert sorted(worker.tasks) == ["job-3", "job-4", "job-5"]
    finally:
        release.set()
        hold.set()
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        await worker.close()


class _Unlucky(Exception):
    def extra(self) -> dict[str, str]:
        return {"why": "unlucky"}


async def _fails(ctx: dict[str, Any]) -> None:
    raise _Unlucky("no luck")


async def _retried(ctx: dict[str, Any]) -> int:
    if ctx["job_try"] == 1:
        raise Retry(defer=0.01)
    return 7


@pytest.mark.parametrize("log_results", [True, False])
async def test_arq_log_lines(
    pool: ArqRedis,
    batch_worker: Callable[..., BatchWorker],
    caplog: pytest.LogCaptureFixture,
    log_results: bool,
) -> None:
    caplog.set_level(logging.INFO, logger="arq.worker")
    await pool.enqueue_job("answer", 5, _job_id="ok")
    await pool.enqueue_job("fails", _job_id="bad")
    await pool.enqueue_job("retried", _job_id="again")
    await pool.enqueue_job("missing", _job_id="lost")
    functions = [
        func(_answer, name="answer"),
        func(_fails, name="fails"),
        func(_retried, name="retried"),
    ]
    worker = batch_worker(*functions, log_results=log_results)
    await worker.main()
    await worker.close()
    log = lines(caplog)
    shown = "5" if log_results else ""
    for expected in (
        "→ ok:answer(5)",
        f"← ok:answer ● {shown}",
        "→ bad:fails()",
        "! bad:fails failed, _Unlucky: no luck",
        "→ again:retried()",
        "↻ again:retried retrying job in 0.01s",
        "→ again:retried() try=2",
        f"← again:retried ● {'7' if log_results else ''}",
    ):
        assert any(line.strip().endswith(expected.strip()) for line in log), (expected, log)
    assert "job lost, function 'missing' not found" in log
    failure = next(r for r in caplog.records if "bad:fails failed" in r.getMessage())
    assert failure.levelno == logging.ERROR and failure.exc_info is not None
    assert failure.__dict__["extra"] == {"why": "unlucky"}


@pytest.mark.parametrize("log_jobs", [False, True])
async def test_the_pipeline_worker_writes_job_lines_only_when_asked(
    producer: ArqRedis,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    log_jobs: bool,
) -> None:
    caplog.set_level(logging.INFO, logger="arq.worker")
    await seed_tree(producer, "p", ["a"])
    options = worker_options(settings.model_copy(update={"log_jobs": log_jobs}))
    options["ctx"]["configure_logging"] = False
    worker: Worker = PipelineWorker(**options, burst=True, handle_signals=False)
    try:
        await worker.main()
    finally:
        await worker.close()
    started = [line for line in lines(caplog) if "→ " in line]
    assert len(started) == (2 if log_jobs else 0), lines(caplog)
