"""The benchmark scenarios, all on one workload: N score updates over K nodes.

Each returns a :class:`Result`; ratios are computed against the naive baseline of the same run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from pipeline.bench.harness import (
    Environment,
    Workers,
    drain,
    enqueue_held,
    environment,
    wait_until_up,
)
from pipeline.postgres import audit_settings
from pipeline.schema.audit import SCORE_COLUMNS
from pipeline.settings import Settings

Job = tuple[str, dict[str, Any]]


@dataclass
class Result:
    """One scenario's measurements."""

    name: str
    rows: int
    jobs: int
    seconds: float
    cpu_pct: float | None = None
    peak_rss_mb: float | None = None
    rss_first_quarter_mb: float | None = None
    rss_last_quarter_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Workload:
    """N updates over K nodes, grouped ``per_job`` to a job."""

    updates: int
    nodes: int
    per_job: int = 1
    seed: int = 7

    def jobs(self) -> list[Job]:
        rng = random.Random(self.seed)
        items = [
            {
                "node_id": f"n{rng.randrange(self.nodes)}",
                "rubric_score": i / self.updates,
                "ucb_score": float(i),
                "version": i + 1,
            }
            for i in range(self.updates)
        ]
        return [
            ("update_scores", {"project_id": "bench", "scores": items[i : i + self.per_job]})
            for i in range(0, len(items), self.per_job)
        ]


async def seed_nodes(env: Environment, nodes: int) -> None:
    """The project and its K nodes, written directly (the scenarios measure updates)."""
    conn = await asyncpg.connect(_plain(env.settings.database_url))  # type: ignore[no-untyped-call]
    try:
        await conn.execute("INSERT INTO projects (project_id, name) VALUES ('bench', 'bench')")
        await conn.execute(
            "INSERT INTO nodes (project_id, node_id, label) "
            "SELECT 'bench', 'n' || g, 'x' FROM generate_series(0, $1 - 1) g",
            nodes,
        )
        await conn.execute("ANALYZE nodes")  # a live table has statistics; a fresh one not yet
    finally:
        await conn.close()


def _plain(url: object) -> str:
    return make_url(str(url)).set(drivername="postgresql").render_as_string(hide_password=False)


async def drained_by(
    name: str, kind: str, workload: Workload, base: Settings, log: Path, *, workers: int = 1
) -> Result:
    """Fill the queue with the workload, then time ``workers`` processes of ``kind`` draining it."""
    async with environment(base, log) as env:
        await seed_nodes(env, workload.nodes)
        jobs = workload.jobs()
        await enqueue_held(env.redis, jobs)
        pool = Workers(kind, workers, env.env, log)
        try:
            seconds = await drain(env, pool, timeout_s=900)
        finally:
            pool.stop()
        series = pool.sample.rss_series
        quarter = max(len(series) // 4, 1)
        return Result(
            name,
            workload.updates,
            len(jobs),
            seconds,
            cpu_pct=100 * pool.sample.cpu_s / seconds,
            peak_rss_mb=pool.sample.peak_rss_mb,
            rss_first_quarter_mb=statistics.fmean(series[:quarter]) if series else None,
            rss_last_quarter_mb=statistics.fmean(series[-quarter:]) if series else None,
        )


# It sets updated_at as the pipeline's own statements do (no row trigger then runs for it).
_UNNEST = """
    INSERT INTO nodes AS t (project_id, node_id, label, ucb_score, ucb_score_version)
    SELECT 'bench', n, 'x', s, v FROM unnest($1::text[], $2::float8[], $3::int8[]) AS u(n, s, v)
    ON CONFLICT (project_id, node_id) DO UPDATE
    SET ucb_score = EXCLUDED.ucb_score, ucb_score_version = EXCLUDED.ucb_score_version,
        updated_at = now()
    WHERE t.ucb_score_version < EXCLUDED.ucb_score_version
"""


def _batches(workload: Workload, size: int) -> list[list[tuple[str, float, int]]]:
    latest: dict[str, tuple[str, float, int]] = {}
    batches = []
    for _, kwargs in workload.jobs():
        for item in kwargs["scores"]:
            latest[item["node_id"]] = (item["node_id"], item["ucb_score"], item["version"])
            if len(latest) == size:
                batches.append(sorted(latest.values()))
                latest = {}
    if latest:
        batches.append(sorted(latest.values()))
    return batches


async def ceiling(
    name: str, workload: Workload, base: Settings, log: Path, *, copy: bool
) -> Result:
    """No queue at all: sorted batches of 5,000 straight into PostgreSQL, one connection."""
    async with environment(base, log) as env:
        await seed_nodes(env, workload.nodes)
        batches = _batches(workload, 5000)
        # Audited as the pipeline's score batches are: the ceiling is their statements without
        # a queue, and it updates scores only.
        audit = audit_settings(env.settings, SCORE_COLUMNS)
        conn = await asyncpg.connect(  # type: ignore[no-untyped-call]
            _plain(env.settings.database_url), server_settings=audit
        )
        try:
            started = time.perf_counter()
            for batch in batches:
                async with conn.transaction():
                    if copy:
                        await conn.execute(
                            "CREATE TEMP TABLE IF NOT EXISTS staging "
                            "(n text, s float8, v int8) ON COMMIT DELETE ROWS"
                        )
                        await conn.copy_records_to_table("staging", records=batch)
                        await conn.execute(
                            _UNNEST.replace(
                                "unnest($1::text[], $2::float8[], $3::int8[]) AS u(n, s, v)",
                                "staging AS u(n, s, v)",
                            )
                        )
                    else:
                        await conn.execute(_UNNEST, *map(list, zip(*batch, strict=True)))
            seconds = time.perf_counter() - started
        finally:
            await conn.close()
        rows = sum(len(b) for b in batches)
        return Result(name, rows, len(batches), seconds, extra={"batch": 5000})


async def latency(name: str, base: Settings, log: Path, *, rate: int, seconds: float) -> Result:
    """Enqueue one write per job at a steady ``rate`` for ``seconds``; enqueue→commit latency.

    The first second is a warm-up (connections, prepared statements) and is not counted.
    """
    async with environment(base, log) as env:
        await seed_nodes(env, 1000)
        pool = Workers("pipeline", 1, env.env, log)
        try:
            await wait_until_up(env.redis, env.settings.queue_name)
            warmup = rate
            total = int(rate * seconds) + warmup
            jobs, started = [], time.perf_counter()
            for i in range(total):
                due = started + i / rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                jobs.append(
                    await env.redis.enqueue_job(
                        "update_scores",
                        project_id="bench",
                        scores=[
                            {"node_id": f"n{i % 1000}", "ucb_score": float(i), "version": i + 1}
                        ],
                    )
                )
            waits = []
            for job in jobs[warmup:]:
                assert job is not None
                receipt = await job.result(timeout=60, poll_delay=0.05)
                info = await job.info()
                assert info is not None
                committed = dt.datetime.fromisoformat(receipt["committed_at"])
                waits.append((committed - info.enqueue_time).total_seconds() * 1000)
        finally:
            pool.stop()
        cuts = statistics.quantiles(waits, n=100)
        return Result(
            name,
            len(waits),
            len(waits),
            seconds,
            extra={
                "p50_ms": round(cuts[49], 2),
                "p95_ms": round(cuts[94], 2),
                "p99_ms": round(cuts[98], 2),
                "rate": rate,
            },
        )


async def coalesced(
    name: str, workload: Workload, base: Settings, log: Path, *, producers: int = 1000
) -> Result:
    """Many concurrent single-write calls through :class:`CoalescingClient`, timed from the
    first call until every write is committed."""
    from pipeline.producer.client import PipelineClient, idle
    from pipeline.producer.coalescing import CoalescingClient

    async with environment(base, log) as env:
        await seed_nodes(env, workload.nodes)
        items = [job[1]["scores"][0] for job in Workload(workload.updates, workload.nodes).jobs()]
        pool = Workers("pipeline", 1, env.env, log)
        try:
            await wait_until_up(env.redis, env.settings.queue_name)
            client = CoalescingClient(PipelineClient(env.redis), max_items=500, linger_s=0.005)
            pool.start_measuring()
            started = time.perf_counter()

            async def produce(share: list[dict[str, Any]]) -> None:
                for item in share:
                    await client.write("update_scores", item, project_id="bench")

            await asyncio.gather(*(produce(items[i::producers]) for i in range(producers)))
            await client.flush()
            enqueued_s = time.perf_counter() - started
            while not await idle(env.redis, env.settings.queue_name):
                pool.observe()
                await asyncio.sleep(0.02)
            seconds = time.perf_counter() - started
            pool.stop_measuring()
            jobs = client.jobs_enqueued
        finally:
            pool.stop()
        return Result(
            name,
            workload.updates,
            jobs,
            seconds,
            cpu_pct=100 * pool.sample.cpu_s / seconds,
            peak_rss_mb=pool.sample.peak_rss_mb,
            extra={
                "producers": producers,
                "max_items": 500,
                "linger_ms": 5,
                "all_enqueued_after_s": round(enqueued_s, 3),
            },
        )
