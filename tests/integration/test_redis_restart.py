"""Producers ride through a Redis restart: a private ``redis-server`` (append-only file on, so
the queue survives) is stopped or killed while producers with no retry code of their own
enqueue, then started again; afterwards every write is in the queue exactly once.

The restarted server loads its data slowly on purpose (``key-load-delay``), so the producers
also meet it while it answers ``LOADING``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
import redis.asyncio as aioredis
from arq.constants import job_key_prefix

from pipeline import PipelineClient, create_pool
from pipeline.producer.coalescing import CoalescingClient
from pipeline.producer.enqueue import RetryingRedis
from pipeline.settings import Settings

WRITES = 150  # per producer
# Loaded at 1 ms each after a restart: five seconds of LOADING, more than the longest pause
# (2 s) between redis-py's own reconnection attempts, so producers surely meet it.
FILLER_KEYS = 5_000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateRedis:
    """A ``redis-server`` of the test's own, on a free port, with its data in ``directory``."""

    def __init__(self, directory: Path, *options: str) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed for this test (it comes with Redis)"
        directory.mkdir(exist_ok=True)
        self.port = _free_port()
        self.argv = [
            binary,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory)),
            *("--save", "", *options),
        ]
        self.log = (directory / "redis.log").open("ab")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, stdout=self.log, stderr=self.log)

    def stop(self, *, kill: bool) -> None:
        """SIGTERM (Redis writes its append-only file and exits) or SIGKILL."""
        assert self.process is not None
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=30)
        self.process = None

    def close(self) -> None:
        if self.process is not None:
            self.stop(kill=True)
        self.log.close()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def command(self, *args: str) -> Any:
        """Run one command on a connection of its own."""
        client = self.client()
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    async def wait_until(self, check: Callable[[dict[str, Any]], bool], what: str) -> None:
        """Until ``check`` holds for the server's INFO replication (30 s at most)."""
        client = self.client()
        try:
            for _ in range(600):
                with contextlib.suppress(redis.ConnectionError, redis.ResponseError):
                    if check(client.info("replication")):
                        return
                await asyncio.sleep(0.05)
            raise AssertionError(what)
        finally:
            client.close()


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    """A private Redis with an append-only file and filler keys, so that a restarted server
    takes seconds to load."""
    server = PrivateRedis(
        tmp_path,
        *("--appendonly", "yes", "--appendfsync", "always", "--key-load-delay", "1000"),
    )
    server.start()
    try:
        await server.wait_until(lambda info: info["role"] == "master", "Redis did not start")
        client = aioredis.Redis(port=server.port)
        async with client.pipeline(transaction=False) as pipe:
            for i in range(FILLER_KEYS):  # one SET each: the delay is per command loaded
                pipe.set(f"filler:{i}", "x")
            await pipe.execute()
        await client.aclose()
        yield server
    finally:
        server.close()


async def _produce(
    pool: RetryingRedis, client: PipelineClient, coalescing: CoalescingClient, done: list[int]
) -> dict[str, list[str]]:
    """Three producers, none with retry code: plain enqueue_job, the typed client, the
    coalescing client. Each writes WRITES distinct items; ``done[0]`` counts progress."""

    async def plain() -> list[str]:
        ids = []
        for i in range(WRITES):
            job = await pool.enqueue_job("upsert_project", project_id=f"plain-{i}", name="plain")
            assert job is not None
            ids.append(job.job_id)
            done[0] += 1
            await asyncio.sleep(0.005)
        return ids

    async def typed() -> list[str]:
        ids = []
        for i in range(WRITES):
            job = await client.enqueue("upsert_project", project_id=f"typed-{i}", name="typed")
            ids.append(job.job_id)
            await asyncio.sleep(0.005)
        return ids

    async def coalesced() -> list[str]:
        for i in range(WRITES):
            await coalescing.write(
                "update_scores", {"node_id": f"n-{i}", "ucb_score": 1.0}, project_id="p"
            )
            await asyncio.sleep(0.005)
        return []

    plain_ids, typed_ids, _ = await asyncio.gather(plain(), typed(), coalesced())
    return {"plain": plain_ids, "typed": typed_ids}


def _queued_jobs(server: PrivateRedis, queue: str) -> dict[str, dict[str, Any]]:
    """Every job in the queue: its id and its decoded job."""
    client = server.client()
    try:
        ids = [member.decode() for member in client.zrange(queue, 0, -1)]
        assert len(ids) == len(set(ids))
        return {
            job_id: msgpack.unpackb(client.get(job_key_prefix + job_id), strict_map_key=False)
            for job_id in ids
        }
    finally:
        client.close()


def _assert_each_write_queued_once(
    server: PrivateRedis, queue: str, returned: dict[str, list[str]]
) -> None:
    """Every write of the producers is in the queue once, under the id its producer was given."""
    jobs = _queued_jobs(server, queue)
    by_kind: dict[str, list[str]] = {"plain": [], "typed": []}
    nodes: Counter[str] = Counter()
    for job_id, job in jobs.items():
        if job["f"] == "upsert_project":
            by_kind[job["k"]["name"]].append(job_id)
        else:
            assert job["f"] == "update_scores"
            nodes.update(score["node_id"] for score in job["k"]["scores"])
    for kind in ("plain", "typed"):
        assert sorted(by_kind[kind]) == sorted(returned[kind])  # the ids producers were given
        names = sorted(jobs[job_id]["k"]["project_id"] for job_id in by_kind[kind])
        assert names == sorted(f"{kind}-{i}" for i in range(WRITES))  # none lost, none twice
    assert nodes == Counter(f"n-{i}" for i in range(WRITES))


@pytest.mark.parametrize("kill", [False, True], ids=["restart", "sigkill"])
async def test_every_enqueue_lands_exactly_once_across_a_restart(
    private_redis: PrivateRedis, kill: bool
) -> None:
    settings = Settings(redis_url=private_redis.url, queue_name="pipeline:restart")
    pool = await create_pool(settings=settings)
    assert isinstance(pool, RetryingRedis)
    client = PipelineClient(pool)
    coalescing = CoalescingClient(client, max_items=20, linger_s=0.002)
    done = [0]
    producing = asyncio.create_task(_produce(pool, client, coalescing, done))
    try:
        while done[0] < WRITES // 3:
            assert not producing.done(), producing
            await asyncio.sleep(0.01)
        await asyncio.to_thread(private_redis.stop, kill=kill)
        await asyncio.sleep(0.5)  # producers meet a refused connection first
        private_redis.start()
        returned = await asyncio.wait_for(producing, timeout=90)
        await coalescing.flush()
    finally:
        await client.close()

    _assert_each_write_queued_once(private_redis, settings.queue_name, returned)
    errors = private_redis.command("INFO", "errorstats")
    assert int(errors["errorstat_LOADING"]["count"]) > 0  # producers met the server loading
    assert sum(pool.enqueue_retries.values()) > 0


async def test_every_enqueue_lands_exactly_once_while_the_primary_is_read_only(
    tmp_path: Path,
) -> None:
    """A failover and back (Redis's coordinated FAILOVER: no write is lost in the switch): for
    a while the server the producers know is a read-only replica."""
    primary = PrivateRedis(tmp_path / "a", "--appendonly", "no")
    primary.start()
    await primary.wait_until(lambda info: info["role"] == "master", "Redis did not start")
    replica = PrivateRedis(
        tmp_path / "b", "--appendonly", "no", "--replicaof", "127.0.0.1", str(primary.port)
    )
    replica.start()
    settings = Settings(redis_url=primary.url, queue_name="pipeline:failover")
    pool = await create_pool(settings=settings)
    client = PipelineClient(pool)
    coalescing = CoalescingClient(client, max_items=20, linger_s=0.002)
    try:
        await replica.wait_until(lambda i: i["master_link_status"] == "up", "replica not synced")
        done = [0]
        producing = asyncio.create_task(_produce(pool, client, coalescing, done))
        while done[0] < WRITES // 3:
            assert not producing.done(), producing
            await asyncio.sleep(0.01)
        primary.command("FAILOVER")
        await primary.wait_until(lambda info: info["role"] == "slave", "no failover")
        await primary.wait_until(lambda i: i["master_link_status"] == "up", "no resync")
        await asyncio.sleep(0.5)  # producers meet a read-only server
        replica.command("FAILOVER")
        await primary.wait_until(lambda info: info["role"] == "master", "no failover back")
        returned = await asyncio.wait_for(producing, timeout=90)
        await coalescing.flush()
        _assert_each_write_queued_once(primary, settings.queue_name, returned)
        assert pool.enqueue_retries["ReadOnlyError"] > 0
    finally:
        await client.close()
        replica.close()
        primary.close()
