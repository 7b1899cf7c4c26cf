"""pipeline: the write path producers hand their writes to.

Producers use :func:`create_pool` (or :class:`PipelineClient`); ``arq pipeline.WorkerSettings``
runs the worker. ``WorkerSettings`` is loaded lazily so that importing the producer side does not
load the worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.client import PipelineClient, Receipt, create_pool
from pipeline.errors import JobFailed, PipelineError

if TYPE_CHECKING:
    from pipeline.worker import WorkerSettings

__all__ = [
    "JobFailed",
    "PipelineClient",
    "PipelineError",
    "Receipt",
    "WorkerSettings",
    "create_pool",
]


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        from pipeline.worker import WorkerSettings

        return WorkerSettings
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
