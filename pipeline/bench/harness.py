"""What every benchmark scenario needs: a fresh database and queue, worker processes, a way to
fill the queue fast, and measurements of the worker (wall time, CPU, peak RSS)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from arq.connections import ArqRedis
from sqlalchemy.engine import make_url

from pipeline.cli.migrate import upgrade
from pipeline.producer.client import create_pool, idle
from pipeline.settings import Settings

WORKERS = {
    "naive": ["-m", "arq", "pipeline.bench.naive.NaiveWorkerSettings"],
    "noop": ["-m", "arq", "pipeline.bench.noop.NoopWorkerSettings"],
    "pipeline": ["-m", "pipeline", "worker"],
    "pipeline-arq": [
        *("-m", "arq", "pipeline.WorkerSettings"),
        *("--custom-log-dict", "pipeline.logs.ARQ_LOGGING"),
    ],
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    """CPU seconds and peak RSS of a set of processes, read from /proc."""

    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    rss_series: list[float] = field(default_factory=list)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Workers:
    """Worker processes of one kind, started for one scenario and measured while they run."""

    def __init__(self, kind: str, count: int, env: dict[str, str], log: Path) -> None:
        self._log = log.open("ab")
        self.procs = [
            subprocess.Popen(  # noqa: S603 - our own interpreter, our own modules
                [sys.executable, *WORKERS[kind]],
                env=env,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            for _ in range(count)
        ]
        self.sample = Sample()
        self._cpu_start = 0.0

    def start_measuring(self) -> None:
        """From now on, CPU time counts."""
        self._cpu_start = sum(_cpu_s(p.pid) for p in self.procs)

    def observe(self) -> None:
        """Record the RSS of the processes now (their sum)."""
        rss = sum(_rss_mb(p.pid) for p in self.procs if p.poll() is None)
        self.sample.rss_series.append(rss)
        self.sample.peak_rss_mb = max(self.sample.peak_rss_mb, rss)

    def stop_measuring(self) -> None:
        """CPU time used since :meth:`start_measuring`."""
        self.sample.cpu_s = sum(_cpu_s(p.pid) for p in self.procs) - self._cpu_start

    def stop(self) -> None:
        """SIGTERM every process and wait for it."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=60)
        self._log.close()


@dataclass
class Environment:
    """A fresh database and queue for one scenario."""

    settings: Settings
    redis: ArqRedis
    env: dict[str, str]
    log: Path


async def _create_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)  # type: ignore[no-untyped-call]
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)  # type: ignore[no-untyped-call]
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@asynccontextmanager
async def environment(base: Settings, log: Path) -> AsyncIterator[Environment]:
    """A new migrated database and an empty queue, removed afterwards."""
    url = make_url(str(base.database_url))
    name = f"pipeline_bench_{uuid.uuid4().hex[:8]}"
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False
    )
    await _create_database(admin, name)
    database_url = url.set(database=name).render_as_string(hide_password=False)
    await asyncio.to_thread(upgrade, database_url, create=False, configure_logging=False)
    settings = base.model_copy(
        update={"database_url": database_url, "queue_name": f"pipeline:bench:{name}"}
    )
    redis = await create_pool(settings=settings)
    env = {
        **os.environ,
        "PIPELINE_DATABASE_URL": database_url,
        "PIPELINE_REDIS_URL": str(settings.redis_url),
        "PIPELINE_QUEUE_NAME": settings.queue_name,
        "PIPELINE_LOG_FORMAT": "json",
        "PIPELINE_LOG_LEVEL": "WARNING",
    }
    try:
        yield Environment(settings, redis, env, log)
    finally:
        await redis.aclose()
        await _drop_database(admin, name)


HELD_S = 3600  # jobs wait this far in the future until the workers are up


async def enqueue_held(
    redis: ArqRedis, jobs: Sequence[tuple[str, dict[str, Any]]], concurrency: int = 64
) -> None:
    """Enqueue every job (``concurrency`` at a time), due only when :func:`release` says so."""
    held = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=HELD_S)
    pending = list(reversed(jobs))

    async def producer() -> None:
        while pending:
            function, kwargs = pending.pop()
            await redis.enqueue_job(function, _defer_until=held, **kwargs)

    await asyncio.gather(*(producer() for _ in range(concurrency)))


async def release(redis: ArqRedis, queue: str) -> None:
    """Make every held job due now, in one command."""
    members = await redis.zrange(queue, 0, -1)
    if members:
        now = time.time() * 1000
        await redis.zadd(queue, dict.fromkeys(members, now), xx=True)


async def wait_until_up(redis: ArqRedis, queue: str, timeout_s: float = 30) -> None:
    """Wait for a worker on ``queue`` to check in (arq's health-check key), and a moment more."""
    deadline = time.perf_counter() + timeout_s
    while not await redis.exists(f"{queue}:health-check"):
        if time.perf_counter() > deadline:
            raise TimeoutError("no worker came up")
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # the other workers of a pool start at the same time


async def drain(env: Environment, workers: Workers, timeout_s: float) -> float:
    """Release the held jobs and run the workers until the queue is empty; the seconds it took."""
    redis, queue = env.redis, env.settings.queue_name
    await wait_until_up(redis, queue)
    workers.start_measuring()
    started = time.perf_counter()
    await release(redis, queue)
    deadline = started + timeout_s
    while not await idle(redis, queue):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the queue did not drain within {timeout_s:.0f} s")
        workers.observe()
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - started
    workers.stop_measuring()
    return elapsed
