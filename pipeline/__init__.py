"""pipeline: the write path producers hand their writes to.

Producers use :func:`create_pool`, :class:`PipelineClient` or :class:`CoalescingClient`; ``arq
pipeline.WorkerSettings`` runs the worker. Every name here is loaded on first use (PEP 562), so
importing one part (the producer client, the read repository) never loads another (the worker, the
write path).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.errors import JobFailed, PipelineError
    from pipeline.producer.client import PipelineClient, create_pool
    from pipeline.producer.coalescing import CoalescingClient
    from pipeline.receipts import Receipt
    from pipeline.serialization import UNDELIVERABLE
    from pipeline.worker.service import WorkerSettings

_EXPORTS = {
    "create_pool": "pipeline.producer.client",
    "PipelineClient": "pipeline.producer.client",
    "CoalescingClient": "pipeline.producer.coalescing",
    "Receipt": "pipeline.receipts",
    "JobFailed": "pipeline.errors",
    "PipelineError": "pipeline.errors",
    "UNDELIVERABLE": "pipeline.serialization",
    "WorkerSettings": "pipeline.worker.service",
}
__all__ = [
    "UNDELIVERABLE",
    "CoalescingClient",
    "JobFailed",
    "PipelineClient",
    "PipelineError",
    "Receipt",
    "WorkerSettings",
    "create_pool",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    return getattr(import_module(module), name)
