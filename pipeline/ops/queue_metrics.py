"""Metrics from the queue's side: what Redis and the dead-letter store hold, read when scraped.

Every worker exports them beside its own metrics, and ``pipeline exporter`` exports them with no
worker running, so an outage of every worker still shows (and pages: the queue ages). They live
in a registry of their own, :data:`QUEUE_REGISTRY`, filled from the last :func:`sample`.

Per function counts need each job's function, which only its body names: the sampler reads the
first bytes of the bodies of the ``scan_limit`` oldest jobs (``GETRANGE``, pipelined), and keeps
each id's function, so a later scrape reads only the jobs new since. Jobs past the limit are
counted by state under ``function="unscanned"``: the totals per state are always exact.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter as Tally
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgpack
import redis.asyncio as aioredis
from arq.constants import in_progress_key_prefix, job_key_prefix
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.ops import pause, status

QUEUE_REGISTRY = CollectorRegistry()
STATES = ("due", "deferred", "in_progress")
UNSCANNED = "unscanned"
UNKNOWN = "unknown"
#: Bytes of a job's body read for its function: arq writes ``t`` and ``f`` first.
HEAD_BYTES = 320
_UNRESOLVED = text(
    "SELECT function, error_class, count(*) FROM dead_letters GROUP BY function, error_class"
)


@dataclass(slots=True)
class QueueSample:
    """One reading of the queue and the dead-letter store (NaN or empty where a source failed)."""

    depth: float = math.nan
    jobs: dict[tuple[str, str], int] = field(default_factory=dict)
    oldest_due_age_s: float = math.nan
    paused: float = math.nan
    workers_seen: float = math.nan
    unresolved: dict[tuple[str, str], int] = field(default_factory=dict)
    up: dict[str, int] = field(default_factory=lambda: {"redis": 0, "postgres": 0})


def function_of(head: bytes) -> str:
    """The function a job's body names, read from its first bytes (msgpack, as arq lays it out);
    ``unknown`` for a body that is not such a job."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(head)
    try:
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key == "f":
                value = unpacker.unpack()
                return value if isinstance(value, str) and value else UNKNOWN
            unpacker.skip()
    except Exception:  # cut short, or not msgpack at all: the function cannot be told
        return UNKNOWN
    return UNKNOWN


class QueueSampler:
    """Reads the queue of one Redis and the dead letters of one PostgreSQL, for the collector."""

    def __init__(
        self,
        redis: aioredis.Redis,
        engine: AsyncEngine | None,
        queue_name: str,
        *,
        scan_limit: int = 10_000,
        timeout_s: float = 2.0,
    ) -> None:
        self.redis = redis
        self.engine = engine
        self.queue_name = queue_name
        self.scan_limit = scan_limit
        self.timeout_s = timeout_s
        self._functions: dict[bytes, str] = {}

    async def sample(self) -> QueueSample:
        """Read both sources at once, each within ``timeout_s``; publish it to the collector."""
        reading = QueueSample()
        await asyncio.gather(self._queue(reading), self._dead_letters(reading))
        COLLECTOR.latest = reading
        return reading

    async def _queue(self, reading: QueueSample) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._read_queue(reading)
        except Exception:  # unreachable or timed out: the gauges stay unknown (NaN), not zero
            return
        reading.up["redis"] = 1

    async def _read_queue(self, reading: QueueSample) -> None:
        now = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zcard(self.queue_name)
            pipe.zcount(self.queue_name, "-inf", now)
            pipe.zrange(self.queue_name, 0, self.scan_limit - 1, withscores=True)
            pipe.exists(pause.pause_key(self.queue_name))
            pipe.zcount(status.index_key(self.queue_name), now - status.WORKER_TTL_S * 1000, "+inf")
            depth, due_or_running, entries, is_paused, seen = await pipe.execute()
        running, functions = await self._look_at([job_id for job_id, _ in entries])
        tally: Tally[tuple[str, str]] = Tally()
        oldest: float | None = None
        for job_id, score in entries:
            state = _state(job_id in running, score, now)
            tally[functions[job_id], state] += 1
            if state == "due" and oldest is None:
                oldest = score
        scanned_due = sum(n for (_, state), n in tally.items() if state != "deferred")
        scanned_deferred = sum(n for (_, state), n in tally.items() if state == "deferred")
        if due_or_running > scanned_due:  # past the scan, jobs in progress count as due
            tally[UNSCANNED, "due"] += due_or_running - scanned_due
        if depth - due_or_running > scanned_deferred:
            tally[UNSCANNED, "deferred"] += depth - due_or_running - scanned_deferred
        # Set only once everything is read: a reading cut short leaves every gauge unknown.
        reading.depth = depth
        reading.jobs = dict(tally)
        reading.oldest_due_age_s = 0.0 if oldest is None else max(now - oldest, 0) / 1000
        reading.paused = 1.0 if is_paused else 0.0
        reading.workers_seen = seen

    async def _look_at(self, job_ids: list[bytes]) -> tuple[set[bytes], dict[bytes, str]]:
        """Which jobs are in progress, and each job's function, in one round trip: the bodies
        of ids not seen before are read (a job gone meanwhile is ``unknown``), and ids no longer
        in the queue are forgotten."""
        wanted = [job_id for job_id in job_ids if job_id not in self._functions]
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(in_progress_key_prefix.encode() + job_id)
            for job_id in wanted:
                pipe.getrange(job_key_prefix.encode() + job_id, 0, HEAD_BYTES - 1)
            answers = await pipe.execute()
        running = {job_id for job_id, held in zip(job_ids, answers, strict=False) if held}
        for job_id, head in zip(wanted, answers[len(job_ids) :], strict=True):
            if head:
                self._functions[job_id] = function_of(head)
        known = {job_id: self._functions.get(job_id, UNKNOWN) for job_id in job_ids}
        self._functions = {job_id: f for job_id, f in known.items() if f != UNKNOWN}
        return running, known

    async def _dead_letters(self, reading: QueueSample) -> None:
        if self.engine is None:
            return
        try:
            async with asyncio.timeout(self.timeout_s), self.engine.connect() as conn:
                rows = (await conn.execute(_UNRESOLVED)).all()
        except Exception:  # unreachable, unmigrated or timed out
            return
        reading.unresolved = {(function, reason): int(n) for function, reason, n in rows}
        reading.up["postgres"] = 1


def _state(running: bool, score: float, now: int) -> str:
    if running:
        return "in_progress"
    return "due" if score <= now else "deferred"


class QueueCollector(Collector):
    """Serves the latest :class:`QueueSample`."""

    def __init__(self) -> None:
        self.latest: QueueSample | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The queue's gauges, from the latest sample."""
        reading = self.latest or QueueSample()  # before the first scrape: every value unknown
        yield GaugeMetricFamily(
            "pipeline_queue_depth",
            "Jobs in the arq queue (due, deferred and in progress), read from Redis when "
            "scraped; NaN if Redis did not answer.",
            value=reading.depth,
        )
        jobs = GaugeMetricFamily(
            "pipeline_queue_jobs",
            "Jobs in the queue by function and state (due, deferred, in_progress); jobs past "
            "the scan limit count under function unscanned.",
            labels=["function", "state"],
        )
        for (function, state), n in sorted(reading.jobs.items()):
            jobs.add_metric([function, state], n)
        yield jobs
        yield GaugeMetricFamily(
            "pipeline_queue_oldest_due_age_seconds",
            "How long the oldest due job not in progress has waited (0: none due).",
            value=reading.oldest_due_age_s,
        )
        yield GaugeMetricFamily(
            "pipeline_paused",
            "1 while the queue is paused (pipeline pause), 0 while workers consume it.",
            value=reading.paused,
        )
        yield GaugeMetricFamily(
            "pipeline_workers_seen",
            "Workers of the queue that published a running status in the last minute.",
            value=reading.workers_seen,
        )
        unresolved = GaugeMetricFamily(
            "pipeline_dead_letters_unresolved",
            "Dead letters in the store now, by job function and reason (the error class).",
            labels=["function", "reason"],
        )
        for (function, reason), n in sorted(reading.unresolved.items()):
            unresolved.add_metric([function, reason], n)
        yield unresolved
        up = GaugeMetricFamily(
            "pipeline_source_up",
            "1 if the last scrape read this source (redis, postgres), 0 if it did not answer.",
            labels=["source"],
        )
        for source, value in sorted(reading.up.items()):
            up.add_metric([source], value)
        yield up


COLLECTOR = QueueCollector()
QUEUE_REGISTRY.register(COLLECTOR)
