"""Prometheus metrics of the read side, in a registry of their own: :data:`READ_METRICS`.

The worker's endpoint serves them beside its own. A producer process that reads serves them
with ``prometheus_client.start_http_server(port, registry=READ_METRICS)`` (or adds
``READ_METRICS`` to an exposition it already has: a registry is a collector).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

READ_METRICS = CollectorRegistry()

READ_SECONDS = Histogram(
    "pipeline_read_duration_seconds",
    "Time of one read of a read repository (all its statements, retry included), by query.",
    ["query"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=READ_METRICS,
)
READ_RETRIES = Counter(
    "pipeline_read_retries_total",
    "Reads run again on a fresh connection after theirs was found dropped, by query.",
    ["query"],
    registry=READ_METRICS,
)
READ_ERRORS = Counter(
    "pipeline_read_errors_total",
    "Reads that raised (after their retry, if any), by query and exception class.",
    ["query", "error"],
    registry=READ_METRICS,
)


class PoolCollector(Collector):
    """The size and use of every watched engine's connection pool, read at scrape time."""

    def __init__(self) -> None:
        self._engines: weakref.WeakKeyDictionary[AsyncEngine, str] = weakref.WeakKeyDictionary()

    def watch(self, engine: AsyncEngine, role: str) -> None:
        """Export ``engine``'s pool as ``role`` (``read``, ``write``) for as long as it lives."""
        self._engines[engine] = role

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One gauge family per figure, labelled by role and database (host/name, no secret)."""
        labels = ["role", "database"]
        families = {
            "size": GaugeMetricFamily(
                "pipeline_db_pool_size", "Connections the pool keeps (pool_size).", labels=labels
            ),
            "checked_out": GaugeMetricFamily(
                "pipeline_db_pool_checked_out", "Connections in use now.", labels=labels
            ),
            "idle": GaugeMetricFamily(
                "pipeline_db_pool_idle", "Open connections waiting in the pool.", labels=labels
            ),
            "overflow": GaugeMetricFamily(
                "pipeline_db_pool_overflow",
                "Connections open beyond pool_size now (negative: not all opened yet).",
                labels=labels,
            ),
        }
        for engine, role in list(self._engines.items()):
            pool = engine.sync_engine.pool
            if not isinstance(pool, QueuePool):
                continue
            url = engine.url
            values = [role, f"{url.host}:{url.port or 5432}/{url.database}"]
            families["size"].add_metric(values, pool.size())
            families["checked_out"].add_metric(values, pool.checkedout())
            families["idle"].add_metric(values, pool.checkedin())
            families["overflow"].add_metric(values, pool.overflow())
        yield from families.values()


POOLS = PoolCollector()
READ_METRICS.register(POOLS)
