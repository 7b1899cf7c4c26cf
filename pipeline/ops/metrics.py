"""Prometheus metrics of the worker: every definition in one place, each named ``pipeline_…``.

The worker runs thousands of jobs a second, so the per-job path costs one increment of a cached
label child, one observation of the enqueue-to-commit histogram, and a plain integer for the
in-flight count. Everything else is recorded once per
flushed batch, or read when Prometheus scrapes (in-flight jobs). The metrics live
in their own registry (:data:`REGISTRY`, with the process collector for CPU and memory), so what
the endpoint serves is exactly what this module defines.

Counters and histograms are per process and start at zero; dashboards use ``rate``/``increase``
and sum over workers. Queue depth is the same queue seen from every worker: take ``max``.
"""

from __future__ import annotations

import functools
import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

from pipeline.ops.flushes import FlushReport

# ``*_created`` series (a timestamp per label child) double what a scrape carries and no
# dashboard of ours reads them; this is process-wide, and the worker owns its process.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

#: What became of a job, as ``pipeline_jobs_total`` counts it. ``failed`` is an error the
#: pipeline did not expect (a bug): arq records it as failed and does not run the job again.
OUTCOMES = ("completed", "retried", "dead_lettered", "invalid", "failed")

JOBS = Counter(
    "pipeline_jobs_total",
    "Jobs this worker finished running, by kind and outcome "
    "(completed, retried, dead_lettered, invalid, failed).",
    ["kind", "outcome"],
    registry=REGISTRY,
)
JOBS_IN_FLIGHT = Gauge(
    "pipeline_jobs_in_flight",
    "Jobs running in this worker now (validating, waiting for their batch, settling).",
    registry=REGISTRY,
)
ROWS_WRITTEN = Counter(
    "pipeline_rows_written_total",
    "Rows committed, by kind (a job that failed, even in part, counts when its rerun commits).",
    ["kind"],
    registry=REGISTRY,
)
BATCH_ROWS = Histogram(
    "pipeline_batch_rows",
    "Rows per flushed batch.",
    buckets=(
        1,
        2,
        5,
        10,
        20,
        50,
        100,
        200,
        500,
        1000,
        2000,
        5000,
        10000,
        20000,
        50000,
        100000,
        200000,
    ),
    registry=REGISTRY,
)
BATCH_JOBS = Histogram(
    "pipeline_batch_jobs",
    "Jobs per flushed batch.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
    registry=REGISTRY,
)
FLUSH_DURATION = Histogram(
    "pipeline_flush_duration_seconds",
    "Time to flush one batch: its transactions, in-worker retries and bisection included.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
BATCH_RETRIES = Counter(
    "pipeline_batch_retries_total",
    "In-worker retries of a batch after a transient database error.",
    registry=REGISTRY,
)
FLUSH_FAILURES = Counter(
    "pipeline_flush_failures_total",
    "Jobs whose rows a flush did not commit, by reason (the error class; the job is retried or "
    "dead-lettered).",
    ["reason"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "pipeline_dead_letters_total",
    "Jobs dead-lettered, by kind and reason (the error class).",
    ["kind", "reason"],
    registry=REGISTRY,
)
ENQUEUE_TO_COMMIT = Histogram(
    "pipeline_enqueue_to_commit_seconds",
    "Time from a job's enqueue to the commit of its rows (waiting in the queue, retries and "
    "the batch's transaction included).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
    registry=REGISTRY,
)
LAST_FLUSH = Gauge(
    "pipeline_last_flush_timestamp_seconds",
    "Unix time of the last flush that committed rows.",
    registry=REGISTRY,
)
DATABASE_REACHABLE = Gauge(
    "pipeline_database_reachable",
    "1 while this worker reaches PostgreSQL; 0 while it holds its writes and takes no jobs "
    "because PostgreSQL does not answer.",
    registry=REGISTRY,
)


class InFlight:
    """Jobs running in this process. A plain integer, read only when scraped: a gauge updated
    twice per job would take a lock twice per job for a value nobody reads in between."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


IN_FLIGHT = InFlight()
JOBS_IN_FLIGHT.set_function(lambda: IN_FLIGHT.count)


@functools.cache
def _job_counter(kind: str, outcome: str) -> Counter:
    # Looking a label child up takes a lock and validates the labels; the cache skips both.
    return JOBS.labels(kind=kind, outcome=outcome)


def declare_kind(kind: str) -> None:
    """Create a kind's job and row series at zero, so the first job shows in ``rate``."""
    for outcome in OUTCOMES:
        _job_counter(kind, outcome)
    ROWS_WRITTEN.labels(kind=kind)


def job_finished(kind: str, outcome: str) -> None:
    """Count one job run (one call per job: the only metric on the per-job path)."""
    _job_counter(kind, outcome).inc()


def committed(enqueue_ms: int) -> None:
    """Record how long a job took from its enqueue (Unix ms) to the commit of its rows, now."""
    ENQUEUE_TO_COMMIT.observe(max(time.time() - enqueue_ms / 1000, 0.0))


def dead_lettered(kind: str, reason: str) -> None:
    """Count a dead letter once it is recorded."""
    DEAD_LETTERS.labels(kind=kind, reason=reason).inc()


def flushed(report: FlushReport) -> None:
    """Record one flush."""
    BATCH_ROWS.observe(report.rows)
    BATCH_JOBS.observe(report.jobs)
    FLUSH_DURATION.observe(report.duration_ms / 1000)
    if report.retries:
        BATCH_RETRIES.inc(report.retries)
    for kind, rows in report.written.items():
        ROWS_WRITTEN.labels(kind=kind).inc(rows)
    for reason, jobs in report.failures.items():
        FLUSH_FAILURES.labels(reason=reason).inc(jobs)
    if report.batch_id is not None:
        LAST_FLUSH.set(time.time())


def metric_names() -> set[str]:
    """Every sample name the worker's endpoint exports (``_total``, ``_bucket``, ``_sum``…
    included): its own registry's, the queue's and the read side's."""
    from pipeline.ops.queue_metrics import QUEUE_REGISTRY
    from pipeline.reads.metrics import READ_METRICS

    names: set[str] = set()
    families = (*REGISTRY.collect(), *QUEUE_REGISTRY.collect(), *READ_METRICS.collect())
    for family in families:
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
        }.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names
