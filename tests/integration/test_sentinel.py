"""Redis Sentinel: producers and workers find the queue's Redis through a real Sentinel process
(``redis-server --sentinel``), and follow it when it promotes a replica after the primary dies;
a producer's enqueue_job waits the failover out."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from pipeline import create_pool
from pipeline.producer.enqueue import RetryingRedis
from pipeline.redis_queue import close_sentinels, queue_redis
from pipeline.settings import Settings
from pipeline.worker.service import PipelineWorker, worker_options
from tests.integration.helpers import scalar, stop_worker


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _redis_server() -> str:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed to run a Sentinel (it comes with Redis)"
    return binary


def _wait_for(check: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except redis.ConnectionError:
            pass
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def sentinel(tmp_path: Path, redis_url: str) -> Iterator[str]:
    """A Sentinel on a free port, monitoring the test's Redis as ``mymaster``."""
    binary = _redis_server()
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
        _wait_for(
            lambda: bool(client.sentinel_get_master_addr_by_name("mymaster")),
            "the Sentinel did not come up",
            seconds=10,
        )
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


@dataclass
class ReplicatedRedis:
    """A primary, its replica and a Sentinel watching them, each a process of its own."""

    primary: subprocess.Popen[bytes]
    primary_port: int
    replica_port: int
    sentinel: str

    def primary_now(self) -> int:
        """The port of the primary the Sentinel names now."""
        client = redis.Redis(port=int(self.sentinel.split(":")[1]))
        try:
            return int(client.sentinel_get_master_addr_by_name("mymaster")[1])
        finally:
            client.close()


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[ReplicatedRedis]:
    """A primary and a replica of its own, and a Sentinel that fails over after 0.5 s of silence."""
    binary = _redis_server()
    primary_port, replica_port, sentinel_port = _free_port(), _free_port(), _free_port()
    log = (tmp_path / "redis.log").open("wb")
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    processes = [
        subprocess.Popen([binary, "--port", str(primary_port), *common], stdout=log, stderr=log),
        subprocess.Popen(
            [binary, "--port", str(replica_port), "--replicaof", "127.0.0.1", str(primary_port)]
            + common,
            stdout=log,
            stderr=log,
        ),
    ]
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor mymaster 127.0.0.1 {primary_port} 1\n"
        "sentinel down-after-milliseconds mymaster 500\n"
        "sentinel failover-timeout mymaster 5000\n"
    )
    processes.append(subprocess.Popen([binary, str(config), "--sentinel"], stdout=log, stderr=log))
    try:
        replica = redis.Redis(port=replica_port)
        watcher = redis.Redis(port=sentinel_port)
        _wait_for(
            lambda: replica.info("replication")["master_link_status"] == "up",
            "the replica did not sync with the primary",
        )
        _wait_for(
            lambda: bool(watcher.sentinel_slaves("mymaster")),
            "the Sentinel did not find the replica",
        )
        replica.close()
        watcher.close()
        yield ReplicatedRedis(
            processes[0], primary_port, replica_port, f"127.0.0.1:{sentinel_port}"
        )
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)
        log.close()


async def test_worker_and_producer_follow_a_failover(
    replicated: ReplicatedRedis,
    settings: Settings,
    engine: Any,
    make_worker: Callable[..., Any],
) -> None:
    through = {"redis_sentinels": [replicated.sentinel], "redis_url": "redis://127.0.0.1/0"}
    producer = await create_pool(settings=settings.model_copy(update=through))

    async def enqueue_and_wait(prefix: str, total: int) -> None:
        for i in range(50):
            await producer.enqueue_job("upsert_project", project_id=f"{prefix}{i}", name=prefix)
        for _ in range(600):
            if await scalar(engine, "SELECT count(*) FROM projects") == total:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{total} projects were not written within 30 s")

    worker = make_worker(settings_overrides=through, burst=False)
    running = asyncio.create_task(worker.main())
    try:
        await enqueue_and_wait("before", 50)
        replicated.primary.kill()  # SIGKILL: the Sentinel sees silence and promotes the replica
        replicated.primary.wait(timeout=10)
        for _ in range(600):
            if await asyncio.to_thread(replicated.primary_now) == replicated.replica_port:
                break
            await asyncio.sleep(0.05)
        assert replicated.primary_now() == replicated.replica_port, "no failover within 30 s"
        await enqueue_and_wait("after", 100)
    finally:
        await stop_worker(worker, running)
        await producer.aclose()
        await close_sentinels(producer)
    assert await scalar(engine, "SELECT count(*) FROM projects WHERE name = 'after'") == 50


async def test_a_producer_rides_through_a_failover_without_retry_code(
    replicated: ReplicatedRedis, settings: Settings
) -> None:
    through = {"redis_sentinels": [replicated.sentinel], "redis_url": "redis://127.0.0.1/0"}
    producer = await create_pool(settings=settings.model_copy(update=through))
    assert isinstance(producer, RetryingRedis)
    try:
        before = [
            await producer.enqueue_job("upsert_project", project_id=f"before{i}", name="b")
            for i in range(20)
        ]
        # What the replica has not received when its primary dies is Redis's loss, not the
        # producer's: let it catch up first.
        primary, replica = (
            redis.Redis(port=replicated.primary_port),
            redis.Redis(port=replicated.replica_port),
        )
        offset = primary.info("replication")["master_repl_offset"]
        _wait_for(
            lambda: replica.info("replication")["slave_repl_offset"] >= offset,
            "the replica did not catch up",
        )
        primary.close()
        replicated.primary.kill()
        replicated.primary.wait(timeout=10)
        # The first of these wait out the failover (about two seconds with no primary).
        after = [
            await producer.enqueue_job("upsert_project", project_id=f"after{i}", name="a")
            for i in range(20)
        ]
        assert replicated.primary_now() == replicated.replica_port
        jobs = [job.job_id for job in before + after if job is not None]
        assert len(jobs) == 40
        queued = {member.decode() for member in replica.zrange(settings.queue_name, 0, -1)}
        assert queued == set(jobs)
        replica.close()
    finally:
        await producer.aclose()
        await close_sentinels(producer)
