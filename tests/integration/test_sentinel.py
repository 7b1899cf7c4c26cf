"""Redis Sentinel: producers and workers find the queue's Redis through a real Sentinel process
(``redis-server --sentinel``) that watches the test's Redis."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pipeline import create_pool
from pipeline.db import close_sentinels, queue_redis
from pipeline.settings import Settings
from pipeline.worker import PipelineWorker, worker_options
from tests.integration.helpers import scalar


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def sentinel(tmp_path: Path, redis_url: str) -> Iterator[str]:
    """A Sentinel on a free port, monitoring the test's Redis as ``mymaster``."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed to run a Sentinel (it comes with Redis)"
    port = _free_port()
    target = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor mymaster {target['host']} {target['port']} 1\n"
    )
    log = (tmp_path / "sentinel.log").open("wb")
    process = subprocess.Popen([binary, str(config), "--sentinel"], stdout=log, stderr=log)
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.sentinel_get_master_addr_by_name("mymaster"):
                    break
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the Sentinel did not come up"
            time.sleep(0.05)
        client.close()
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def test_a_sentinel_address_must_be_host_and_port() -> None:
    settings = Settings(redis_sentinels=["127.0.0.1"])
    with pytest.raises(ValueError, match="host:port"):
        queue_redis(settings)


async def test_producer_and_worker_find_redis_through_sentinel(
    sentinel: str, settings: Settings, engine: Any, make_worker: Callable[..., Any]
) -> None:
    through = settings.model_copy(update={"redis_sentinels": [sentinel]})
    config = queue_redis(through)
    assert config.sentinel and config.host == [("127.0.0.1", int(sentinel.split(":")[1]))]

    producer = await create_pool(settings=through)
    try:
        job = await producer.enqueue_job("upsert_project", project_id="s", name="sentinel")
        assert job is not None
        options = worker_options(through)
        options["ctx"]["configure_logging"] = False
        worker = PipelineWorker(**{**options, "burst": True, "handle_signals": False})
        try:
            await worker.main()
        finally:
            await worker.close()
        assert (await job.result(timeout=5))["rows"] == 1
    finally:
        await producer.aclose()
        await close_sentinels(producer)
    assert await scalar(engine, "SELECT name FROM projects WHERE project_id = 's'") == "sentinel"
