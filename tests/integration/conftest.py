"""Fixtures for tests that run a real arq worker (burst mode) against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.worker import Worker

from pipeline import cli, create_pool
from pipeline.settings import Settings, get_settings
from pipeline.worker.service import PipelineWorker, worker_options
from tests.integration.helpers import Proxy
from tests.logging_state import logging_restored


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    """Settings pointing at this test's database and Redis, with short retry delays."""
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        queue_name=f"pipeline:test:{uuid.uuid4().hex[:8]}",
        max_tries=4,
        retry_wait_s=1.0,
        reference_retry_delay_s=0.01,
        transient_retry_delay_s=0.02,
        retry_max_delay_s=0.05,
        database_probe_interval_s=0.05,
        transient_backoff_s=0.01,
        poll_delay_s=0.005,
    )


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[ArqRedis]:
    """A producer's pool, made by ``pipeline.create_pool``."""
    pool = await create_pool(settings=settings)
    yield pool
    await pool.aclose()


@pytest.fixture
async def make_worker(settings: Settings) -> AsyncIterator[Callable[..., Worker]]:
    """Build burst-mode arq workers with the pipeline's options; closed after the test."""
    workers: list[Worker] = []

    def make(settings_overrides: dict[str, Any] | None = None, **overrides: Any) -> Worker:
        options = worker_options(settings.model_copy(update=settings_overrides or {}))
        options["ctx"]["configure_logging"] = False
        options.update({"burst": True, "handle_signals": False, **overrides})
        worker = PipelineWorker(**options)
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        await worker.close()


WORKERS = {"arq": Worker, "pipeline": PipelineWorker}


@pytest.fixture(params=sorted(WORKERS))
def mode(request: pytest.FixtureRequest) -> str:
    """Stock arq's ``Worker`` or the pipeline's batch worker: a test that takes this runs twice."""
    return str(request.param)


@pytest.fixture
async def worker_of(settings: Settings, mode: str) -> AsyncIterator[Callable[..., Worker]]:
    """Build workers of the test's mode with the pipeline's options (settings overridden by
    keyword); closed after the test."""
    made: list[Worker] = []

    def make(*, burst: bool = True, **overrides: Any) -> Worker:
        # stock arq stays stock: start-up would otherwise make it claim in batches
        overrides.setdefault("batch_claims", mode == "pipeline")
        options = worker_options(settings.model_copy(update=overrides))
        options["ctx"]["configure_logging"] = False
        options.update({"burst": burst, "handle_signals": False})
        worker = WORKERS[mode](**options)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        await worker.close()


@pytest.fixture
async def run_worker(make_worker: Callable[..., Worker]) -> Callable[..., Any]:
    """Drain the queue with one burst worker and return it (for its counters)."""

    async def run(**overrides: Any) -> Worker:
        worker = make_worker(**overrides)
        await worker.main()
        await worker.close()  # its engine's connections go now, not at the end of the test
        return worker

    return run


@pytest.fixture
def run_cli(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[..., Any]]:
    """Run ``pipeline …`` in a thread (it runs its own event loop) against this test's services:
    (exit code, out, err)."""
    monkeypatch.setenv("PIPELINE_DATABASE_URL", str(settings.database_url))
    monkeypatch.setenv("PIPELINE_REDIS_URL", str(settings.redis_url))
    monkeypatch.setenv("PIPELINE_QUEUE_NAME", settings.queue_name)
    get_settings.cache_clear()

    async def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            # the command's log handler writes to this capture: gone before a worker logs again
            with logging_restored():
                code = await asyncio.to_thread(cli.main, list(args))
        except SystemExit as exc:  # argparse refusing an argument
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    get_settings.cache_clear()


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    """A proxy to PostgreSQL the test can take down and bring back on the same port."""
    proxy = Proxy()
    await proxy.up()
    yield proxy
    if proxy.server is not None and proxy.server.is_serving():
        await proxy.down()


@pytest.fixture(params=["batch", "arq"])
def drain(
    request: pytest.FixtureRequest, run_worker: Callable[..., Any], settings: Settings
) -> Callable[[], Any]:
    """Run the queue empty with ``pipeline worker``'s worker, or with stock arq's: a test that
    takes this runs twice."""

    async def stock() -> Worker:
        options = worker_options(settings.model_copy(update={"batch_claims": False}))
        options["ctx"]["configure_logging"] = False
        worker = Worker(**{**options, "burst": True, "handle_signals": False})
        try:
            await worker.main()
        finally:
            await worker.close()
        return worker

    return run_worker if request.param == "batch" else stock
