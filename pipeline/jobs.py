"""The arq job functions: validate, hand rows to the coalescer, and turn each outcome into what
arq should do with the job (complete it, retry it later, or fail it and keep a dead letter)."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from arq import Retry
from arq.typing import WorkerCoroutine
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline import dead_letters, metrics
from pipeline.coalescer import Coalescer, Receipt
from pipeline.errors import (
    DataError,
    InvalidPayload,
    MissingReference,
    PipelineError,
    TransientError,
    classify,
)
from pipeline.kinds.base import Row, WriteKind
from pipeline.serialization import OVERSIZED
from pipeline.settings import Settings

log = structlog.get_logger("pipeline.jobs")


class JobRunner:
    """Runs one write job; shared by all job functions of a worker process (kept in ``ctx``)."""

    def __init__(self, settings: Settings, engine: AsyncEngine, coalescer: Coalescer) -> None:
        self.settings = settings
        self.engine = engine
        self.coalescer = coalescer
        # How long a job waits for its commit: a little less than arq's job timeout.
        self.commit_wait_s = max(settings.job_timeout_s * 0.5, settings.job_timeout_s - 1.0)

    async def run(
        self,
        kind: WriteKind[Any],
        ctx: dict[str, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Receipt:
        """Validate, write and settle one job, and count what became of it."""
        metrics.IN_FLIGHT.count += 1
        try:
            receipt = await self._run(kind, ctx, args, kwargs)
        except Exception as exc:
            metrics.job_finished(kind.name, _outcome(exc))
            raise
        finally:
            metrics.IN_FLIGHT.count -= 1
        metrics.job_finished(kind.name, "completed")
        return receipt

    async def _run(
        self,
        kind: WriteKind[Any],
        ctx: dict[str, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Receipt:
        try:
            payload = self._validate(kind, args, kwargs)
            rows = self._rows(kind, ctx, payload)
            urgent = kind.urgent(payload)
            # A waiting job keeps its rows and its raw arguments (for a dead letter), not a third
            # copy of its items (bench scenario 4's peak RSS: 477-508 MB with it, 395-399 without).
            del payload
        except InvalidPayload as exc:
            await self._dead_letter(kind, ctx, kwargs, exc)
            raise
        try:
            async with asyncio.timeout(self.commit_wait_s):  # no extra task, unlike wait_for
                receipt = await self.coalescer.submit(
                    ctx["job_id"], kind.name, kind.target, rows, urgent=urgent
                )
        except TimeoutError as exc:
            # arq fails a job that reaches its timeout and never retries it; hand it back first.
            raise Retry(defer=self._delay(TransientError(), ctx["job_try"])) from exc
        except (MissingReference, TransientError) as exc:
            if ctx["job_try"] < self.settings.max_tries:
                raise Retry(defer=self._delay(exc, ctx["job_try"])) from exc
            await self._dead_letter(kind, ctx, kwargs, exc)
            raise
        except DataError as exc:
            await self._dead_letter(kind, ctx, kwargs, exc)
            raise
        await dead_letters.resolve(self.engine, ctx["job_id"])
        return receipt

    def _validate(self, kind: WriteKind[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if OVERSIZED in kwargs:
            raise InvalidPayload(
                f"{kind.name}: the job is {kwargs[OVERSIZED]} bytes; "
                f"at most {self.settings.job_max_bytes}"
            )
        if args:
            raise InvalidPayload(
                f"{kind.name} takes keyword arguments only, got {len(args)} positional"
            )
        return kind.parse(kwargs)

    def _rows(self, kind: WriteKind[Any], ctx: dict[str, Any], payload: Any) -> list[Row]:
        rows = kind.rows(payload, int(ctx["enqueue_time"].timestamp() * 1000) * 1000)
        if len(rows) > self.settings.job_max_items:
            raise InvalidPayload(
                f"{kind.name}: {len(rows)} items in one job; at most {self.settings.job_max_items}"
            )
        return rows

    def _delay(self, error: PipelineError, job_try: int) -> float:
        """Seconds before arq runs the job again, doubling from the failure's first delay."""
        first = (
            self.settings.reference_retry_delay_s
            if isinstance(error, MissingReference)
            else self.settings.transient_retry_delay_s
        )
        return min(first * 2.0 ** (int(job_try) - 1), 60.0)

    async def _dead_letter(
        self,
        kind: WriteKind[Any],
        ctx: dict[str, Any],
        kwargs: dict[str, Any],
        error: PipelineError,
    ) -> None:
        log.warning(
            "job dead-lettered",
            job_id=ctx["job_id"],
            function=kind.name,
            tries=ctx["job_try"],
            error=type(error).__name__,
            reason=str(error),
        )
        record = {
            "job_id": ctx["job_id"],
            "function": kind.name,
            "error": error,
            "tries": ctx["job_try"],
        }
        try:
            await dead_letters.keep(self.engine, payload=kwargs, **record)
        except Exception as exc:  # the record must not be lost: let arq run the job again
            log.warning("dead letter not recorded, job will run again", error=repr(classify(exc)))
            raise Retry(defer=self._delay(TransientError(), ctx["job_try"])) from exc
        metrics.dead_lettered(kind.name, type(error).__name__)


def _outcome(error: Exception) -> str:
    """What became of a job that raised ``error``. ``_run`` re-raises a pipeline error only once
    the job is dead-lettered (and raises ``Retry`` when even that failed)."""
    if isinstance(error, Retry):
        return "retried"
    if isinstance(error, InvalidPayload):
        return "invalid"
    if isinstance(error, PipelineError):
        return "dead_lettered"
    return "failed"


def job_function(kind: WriteKind[Any]) -> WorkerCoroutine:
    """The arq coroutine of a write kind, named after it."""
    metrics.declare_kind(kind.name)

    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Receipt:
        runner: JobRunner = ctx["pipeline"]
        return await runner.run(kind, ctx, args, kwargs)

    run.__name__ = run.__qualname__ = kind.name
    run.__doc__ = f"arq job ``{kind.name}``: {kind.payload.__doc__}"
    return run
