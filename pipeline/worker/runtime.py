"""What a worker's start-up builds and its job functions use, kept in arq's ``ctx`` under one
key (``ctx["pipeline"]``) and read back with its type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from pipeline.ops.endpoint import Endpoint
    from pipeline.settings import Settings
    from pipeline.worker.coalescer import Coalescer
    from pipeline.worker.gate import DatabaseGate
    from pipeline.worker.jobs import JobRunner

KEY = "pipeline"


@dataclass(slots=True)
class Runtime:
    """A worker process's job runner (with its settings, engine, gate and coalescer), and its
    endpoint once open."""

    jobs: JobRunner
    endpoint: Endpoint | None = None

    @property
    def settings(self) -> Settings:
        return self.jobs.settings

    @property
    def engine(self) -> AsyncEngine:
        return self.jobs.engine

    @property
    def gate(self) -> DatabaseGate:
        return self.jobs.gate

    @property
    def coalescer(self) -> Coalescer:
        return self.jobs.coalescer


def runtime(ctx: dict[str, Any]) -> Runtime:
    """The worker's runtime; a job run by a worker whose start-up did not build it fails here."""
    found = ctx.get(KEY)
    if not isinstance(found, Runtime):
        raise RuntimeError(
            "no pipeline runtime in this worker's ctx: run it with `pipeline worker` or "
            "`arq pipeline.WorkerSettings` (their on_startup builds it)"
        )
    return found


def runtime_or_none(ctx: dict[str, Any]) -> Runtime | None:
    """The worker's runtime, None before start-up built it (or when it failed)."""
    found = ctx.get(KEY)
    return found if isinstance(found, Runtime) else None
