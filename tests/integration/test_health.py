"""Readiness: fails while PostgreSQL (or Redis) is unreachable, recovers by itself."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from arq.worker import Worker
from sqlalchemy.engine import make_url

from pipeline.ops.readiness import readiness
from pipeline.settings import Settings
from tests.integration.helpers import Proxy, stop_worker


async def test_readiness_flips_while_postgres_is_unreachable_and_recovers(
    proxy: Proxy, settings: Settings, database_url: str
) -> None:
    through_proxy = (
        make_url(database_url).set(port=proxy.port).render_as_string(hide_password=False)
    )
    settings = settings.model_copy(update={"database_url": through_proxy})
    assert [c.error for c in await readiness(settings)] == [None, None]

    await proxy.down()
    postgres, redis = await readiness(settings)
    assert postgres.error is not None and redis.error is None

    await proxy.up()  # the same port again
    assert [c.error for c in await readiness(settings)] == [None, None]


def test_the_cli_exit_code_and_no_password_in_its_output(settings: Settings) -> None:
    def ready(**env: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pipeline", "ready"]
        return subprocess.run(
            command, env={**os.environ, **env}, capture_output=True, text=True, timeout=30
        )

    live = ready(
        PIPELINE_DATABASE_URL=str(settings.database_url), PIPELINE_REDIS_URL=str(settings.redis_url)
    )
    assert live.returncode == 0, live.stdout + live.stderr
    assert live.stdout.count(": ok") == 2

    down = ready(
        PIPELINE_DATABASE_URL="postgresql://svc:s3cret@127.0.0.1:1/x",
        PIPELINE_REDIS_URL="redis://:hunter2@127.0.0.1:2/0",
    )
    assert down.returncode == 1
    assert down.stdout.count("unreachable") == 2
    assert "s3cret" not in down.stdout + down.stderr and "hunter2" not in down.stdout + down.stderr


async def test_arq_check_sees_a_live_pipeline_worker(
    settings: Settings, make_worker: Callable[..., Worker]
) -> None:
    """Liveness: ``arq --check pipeline.WorkerSettings`` passes while a worker (here the batch
    worker) polls the queue, and fails once it has shut down."""
    env = {
        **os.environ,
        "PIPELINE_REDIS_URL": str(settings.redis_url),
        "PIPELINE_QUEUE_NAME": settings.queue_name,
    }
    arq = [str(Path(sys.executable).with_name("arq")), "--check", "pipeline.WorkerSettings"]

    def check() -> int:
        return subprocess.run(arq, env=env, capture_output=True, timeout=60).returncode

    assert await asyncio.to_thread(check) == 1  # no worker yet
    worker = make_worker(burst=False)
    running = asyncio.create_task(worker.main())
    try:
        for _ in range(100):
            if worker._pool is not None and await worker.pool.exists(worker.health_check_key):
                break
            await asyncio.sleep(0.05)
        assert await asyncio.to_thread(check) == 0
    finally:
        await stop_worker(worker, running)
        await worker.close()
    assert await asyncio.to_thread(check) == 1
