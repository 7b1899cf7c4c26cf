"""Small helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import Job, serialize_job
from arq.utils import timestamp_ms
from arq.worker import Worker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.errors import JobFailed
from pipeline.worker.batch.claiming import BatchWorker, ClaimedJob


async def seed_tree(producer: ArqRedis, project: str, node_ids: list[str]) -> None:
    """Enqueue a project and a flat tree: one root with ``node_ids`` as children."""
    await producer.enqueue_job("upsert_project", project_id=project, name=project)
    nodes = [{"node_id": "root", "label": "root"}]
    nodes += [{"node_id": n, "parent_id": "root", "label": n} for n in node_ids]
    await producer.enqueue_job("insert_nodes", project_id=project, nodes=nodes)


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    """All rows of a query."""
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    """The single value of a query."""
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one()


async def results(jobs: list[Job]) -> list[Any]:
    """The results of finished jobs (raises the first failure)."""
    return [await job.result(timeout=5) for job in jobs]


async def redeliver(redis: ArqRedis, job: Job, queue: str) -> None:
    """Queue a finished job again exactly as arq re-delivers it: same id, same enqueue time."""
    info = await job.result_info()
    assert info is not None
    data = serialize_job(
        info.function,
        tuple(info.args),
        info.kwargs,
        None,
        int(info.enqueue_time.timestamp() * 1000),
        serializer=redis.job_serializer,
    )
    await redis.set(job_key_prefix + job.job_id, data)
    await redis.zadd(queue, {job.job_id: timestamp_ms()})


async def stop_worker(worker: Worker, running: asyncio.Task[None]) -> None:
    """Stop a background worker the way it stops itself: in burst mode it returns once the queue
    is empty (cancelling it could cut a Redis pipeline short and leave it unclosed)."""
    worker.burst = True
    await asyncio.wait_for(running, timeout=60)


class Proxy:
    """A TCP proxy to PostgreSQL that the test can take down and bring back on the same port."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.links: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 5432)
        self.links.update({writer, up_writer})
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for link in self.links:
            link.close()
        await self.server.wait_closed()


async def failure(job: Any) -> JobFailed:
    """The failure a producer sees when it awaits the job."""
    with pytest.raises(JobFailed) as caught:
        await job.result(timeout=5)
    return caught.value


def count_claims(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of jobs each claim of every batch worker took, from now on."""
    claims: list[int] = []
    claim = BatchWorker.claim

    async def counted(self: BatchWorker, want: int) -> list[ClaimedJob]:
        got = await claim(self, want)
        if got:
            claims.append(len(got))
        return got

    monkeypatch.setattr(BatchWorker, "claim", counted)
    return claims
